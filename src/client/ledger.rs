//! The upload ledger, `sfm-migrate.ledger` in the export folder (NHN's uploader keeps a `.ledger`
//! there too, and the folder check tolerates it): one JSON line per event, appended with a single
//! write, so an interrupt or a crash loses at most the line being written, which is
//! ignored on reading. The last line for a file wins.
//!
//! A line records the file's `name` (its `Index.txt` path), size, modification time and SHA-256, the
//! upload URL the API gave it, and its state: `created` (resumable at the URL), then `stored`,
//! `rejected` (with the code) or `pending` (complete, not yet ingested). Lines hold paths (GUIDs),
//! digests and URLs, never personal data or keys. Every line names the database it was sent to, so a
//! ledger from another database's migration is not mistaken for this one's.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::{Outcome, io_failure};

/// The ledger's file name in the export folder.
pub const LEDGER_FILE: &str = "sfm-migrate.ledger";

/// Where a file's upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LedgerState {
    /// Created at `url`; not complete.
    Created,
    /// Complete, not yet ingested.
    Pending,
    /// Stored by the API.
    Stored,
    /// Rejected by the API (`code`).
    Rejected,
}

impl LedgerState {
    /// Whether the file's bytes were completely sent.
    pub fn is_complete(self) -> bool {
        !matches!(self, LedgerState::Created)
    }
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub database: String,
    pub name: String,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch: with `size`, how a changed file is noticed
    /// without reading it again.
    pub mtime_ns: u128,
    pub sha256: String,
    pub url: String,
    pub state: LedgerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Size and modification time of a file, as the ledger records them.
pub fn fingerprint(path: &Path) -> std::io::Result<(u64, u128)> {
    let metadata = std::fs::metadata(path)?;
    let mtime = metadata
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((metadata.len(), mtime))
}

/// The open ledger: the latest entry per file (for this database), and the file to append to.
pub struct Ledger {
    path: PathBuf,
    database: String,
    entries: Mutex<HashMap<String, LedgerEntry>>,
    file: Mutex<File>,
}

impl Ledger {
    /// Opens (or creates) the ledger in `folder`, keeping the entries of `database`.
    pub fn open(folder: &Path, database: &str) -> Outcome<Self> {
        let path = folder.join(LEDGER_FILE);
        let mut entries = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                for line in bytes.split(|&b| b == b'\n') {
                    // A torn last line (crash mid-write) or foreign text is skipped.
                    if let Ok(entry) = serde_json::from_slice::<LedgerEntry>(line)
                        && entry.database == database
                    {
                        entries.insert(entry.name.clone(), entry);
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_failure("read the ledger", &path, &error)),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_failure("write the ledger", &path, &e))?;
        // A torn last line must not glue onto the next record.
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 0 {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.last() != Some(&b'\n') {
                file.write_all(b"\n")
                    .map_err(|e| io_failure("write the ledger", &path, &e))?;
            }
        }
        Ok(Ledger {
            path,
            database: database.to_owned(),
            entries: Mutex::new(entries),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Flushes the ledger to the disk.
    pub fn sync(&self) {
        if let Ok(file) = self.file.lock() {
            let _ = file.sync_all();
        }
    }

    /// The latest entry for `name`.
    pub fn get(&self, name: &str) -> Option<LedgerEntry> {
        self.entries.lock().ok()?.get(name).cloned()
    }

    /// Every latest entry.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Appends `entry` with one `write` (so a killed process loses nothing it recorded; only a power
    /// loss can, and a re-sent file is stored once by the API) and makes it the latest for its file.
    pub fn record(&self, mut entry: LedgerEntry) -> Outcome<()> {
        entry.database = self.database.clone();
        let mut line = serde_json::to_vec(&entry).expect("a ledger entry serialises");
        line.push(b'\n');
        {
            let mut file = self
                .file
                .lock()
                .map_err(|_| super::Failure::new("The ledger lock is poisoned.", "run again"))?;
            file.write_all(&line)
                .map_err(|e| io_failure("write the ledger", &self.path, &e))?;
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(entry.name.clone(), entry);
        }
        Ok(())
    }
}
