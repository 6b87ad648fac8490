//! `sfm-migrate check <folder>` (NHN step 20): validates the export before anything is sent. The
//! organisation file is there; `Index.txt` and the folders agree; every `.dat`/`.pat`/`.rpt` file is
//! non-empty, not oversized and starts with a well-formed envelope header (and, when the certificate
//! is given, one made for that certificate's key size). Nothing is decrypted: the client has no key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::contract::FileType;
use crate::format::envelope::parse_header;
use crate::format::index::{INDEX_FILE_NAME, ORGANISATION_FILE_NAME};
use crate::format::layout::{ExportLayout, scan};

use super::{Failure, Outcome};

/// Default largest file accepted: the API's default `Tus-Max-Size` (the API has the final word).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// One file of the export to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    /// The path as `Index.txt` writes it (backslashes), also the upload's `name`.
    pub name: String,
    pub file_type: FileType,
    pub path: PathBuf,
    pub size: u64,
}

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub folder: PathBuf,
    /// Every file to upload: the organisation file first, then patients, then reports.
    pub files: Vec<ExportFile>,
    /// Every problem, one readable line each.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn count(&self, file_type: FileType) -> usize {
        self.files
            .iter()
            .filter(|f| f.file_type == file_type)
            .count()
    }

    /// The failure to report when the check found problems.
    pub fn failure(&self) -> Failure {
        Failure::new(
            format!(
                "The export in {} has {} problem(s), so nothing was sent.",
                self.folder.display(),
                self.problems.len()
            ),
            "ask your EPJ supplier for a new, complete export into an empty folder (the list above says what is wrong)",
        )
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Export folder {}", self.folder.display())?;
        writeln!(
            f,
            "  organisation file: {}",
            if self.count(FileType::ExportData) == 1 {
                "present"
            } else {
                "MISSING"
            }
        )?;
        writeln!(f, "  patient files:     {}", self.count(FileType::Patient))?;
        writeln!(f, "  report files:      {}", self.count(FileType::Report))?;
        writeln!(
            f,
            "  total size:        {:.1} MB",
            self.total_bytes() as f64 / 1e6
        )?;
        if self.problems.is_empty() {
            writeln!(f, "  result:            OK, ready to upload")
        } else {
            writeln!(f, "  result:            {} problem(s)", self.problems.len())?;
            const SHOWN: usize = 50;
            for problem in self.problems.iter().take(SHOWN) {
                writeln!(f, "    - {problem}")?;
            }
            if self.problems.len() > SHOWN {
                writeln!(f, "    ... and {} more", self.problems.len() - SHOWN)?;
            }
            Ok(())
        }
    }
}

/// Options of the check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub max_file_bytes: u64,
    /// The RSA key size (bits) of the "SFM migrering" certificate, when known.
    pub certificate_bits: Option<usize>,
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            certificate_bits: None,
            threads: 4,
        }
    }
}

/// The files of a scanned layout, organisation file first.
pub fn export_files(layout: &ExportLayout) -> Vec<ExportFile> {
    let mut files = Vec::with_capacity(layout.patients.len() + layout.reports.len() + 1);
    if let Some(path) = &layout.organisation_file {
        files.push(ExportFile {
            name: ORGANISATION_FILE_NAME.to_owned(),
            file_type: FileType::ExportData,
            size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            path: path.clone(),
        });
    }
    for patient in &layout.patients {
        files.push(ExportFile {
            name: patient.index_path(),
            file_type: FileType::Patient,
            path: patient.path.clone(),
            size: patient.size,
        });
    }
    for report in &layout.reports {
        let relative = report.strip_prefix(&layout.root).unwrap_or(report);
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("\\");
        files.push(ExportFile {
            name,
            file_type: FileType::Report,
            size: std::fs::metadata(report).map(|m| m.len()).unwrap_or(0),
            path: report.clone(),
        });
    }
    files
}

/// Checks one file's size and envelope header.
fn check_file(file: &ExportFile, options: &CheckOptions) -> Option<String> {
    if file.size == 0 {
        return Some(format!("{} is empty", file.name));
    }
    if file.size > options.max_file_bytes {
        return Some(format!(
            "{} is {} bytes, more than the {} allowed",
            file.name, file.size, options.max_file_bytes
        ));
    }
    let data = match std::fs::read(&file.path) {
        Ok(data) => data,
        Err(error) => return Some(format!("{} cannot be read: {error}", file.name)),
    };
    match parse_header(&data) {
        Err(error) => Some(format!(
            "{} is not an encrypted export file: {error}",
            file.name
        )),
        Ok(header) => match options.certificate_bits {
            Some(bits) if header.encrypted_key_len as usize * 8 != bits => Some(format!(
                "{} was encrypted to a {}-bit key, but the SFM migration certificate has {bits} bits (wrong certificate)",
                file.name,
                header.encrypted_key_len * 8
            )),
            _ => None,
        },
    }
}

/// Runs the whole check. Fails only when the folder itself cannot be read; everything else is a
/// problem in the report.
pub fn check_export(folder: &Path, options: &CheckOptions) -> Outcome<CheckReport> {
    let layout = scan(folder).map_err(|error| {
        Failure::new(
            format!("Cannot read the export folder: {error}."),
            "give the path of the folder your EPJ exported into (it holds ExportData.dat and Index.txt)",
        )
    })?;
    let mut problems: Vec<String> = layout.problems.iter().map(|p| p.to_string()).collect();
    if layout.index.is_none() && !problems.iter().any(|p| p.contains(INDEX_FILE_NAME)) {
        problems.push(format!("{INDEX_FILE_NAME} could not be read"));
    }
    let files = export_files(&layout);
    let next = AtomicUsize::new(0);
    let found: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..options.threads.clamp(1, 64) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = files.get(i) else { break };
                    if let Some(problem) = check_file(file, options)
                        && let Ok(mut found) = found.lock()
                    {
                        found.push((i, problem));
                    }
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap_or_default();
    found.sort();
    problems.extend(found.into_iter().map(|(_, p)| p));
    Ok(CheckReport {
        folder: folder.to_owned(),
        files,
        problems,
    })
}
