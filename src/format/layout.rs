//! The export folder's layout: `ExportData.dat` (organisation), `Index.txt`, `Patients0` ..
//! `Patients<k>` with at most 16,000 `.pat` files each, and `Reports0` (or `Reports`, `Reports<N>`)
//! with the report files.
//!
//! Reports, from what NHN publishes: `ExportData.xml` names each report's document in `RapportFil`
//! as `Reports0\<id>.xps` (NHN's sample); NHN's uploader sends only `.dat`, `.pat` and `.rpt` files,
//! those under a folder starting with `Reports` as `ReportFile`, and names each by its file name
//! alone. So a report travels as `Reports0\<id>.rpt`, an envelope around a zip holding `<id>.xps`
//! (every file of an export is a zip in the envelope), and a report file and its `RapportFil` are
//! matched by the id, [`report_id`]. A `Reports` folder may hold `.rpt`, and also `.dat`, `.pat`
//! or `.xps` files, which the API takes as reports too.
//!
//! [`scan`] lists what is there and checks the layout rules, collecting every problem instead of
//! stopping at the first, so `sfm-migrate check` can show a data controller the whole picture. It
//! only reads directory entries and `Index.txt`; it never opens, decrypts or changes an export
//! file, and never follows symbolic links. The helpers at the top tell the exporter where file
//! number `n` goes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::index::{
    INDEX_FILE_NAME, Index, IndexError, IndexLineProblem, ORGANISATION_FILE_NAME, folder_number,
    parse_index, patient_file_id,
};

/// Most `.pat` files one `Patients<N>` folder may hold (NHN's rule).
pub const MAX_PATIENTS_PER_FOLDER: usize = 16_000;
/// Prefix of the patient folders.
pub const PATIENT_FOLDER_PREFIX: &str = "Patients";
/// The reports folder's prefix: `Reports`, `Reports0`, `Reports<N>` are report folders.
pub const REPORT_FOLDER: &str = "Reports";
/// The report folder NHN's `RapportFil` names and the exporter writes.
pub const FIRST_REPORT_FOLDER: &str = "Reports0";
/// The extensions of report files in a report folder: `.rpt` as exporters write them, and what else
/// NHN's uploader sends from there (`.dat`, `.pat`) or the API takes as a report (`.xps`).
pub const REPORT_EXTENSIONS: [&str; 4] = ["rpt", "dat", "pat", "xps"];

/// The file a report with this id travels in: `Reports0\<id>.rpt` (folder, file).
pub fn report_location(id: &str) -> (String, String) {
    (FIRST_REPORT_FOLDER.to_owned(), format!("{id}.rpt"))
}

/// What `RapportFil` names for a report with this id: its document, `Reports0\<id>.xps`, which the
/// report file's zip holds as `<id>.xps`.
pub fn report_document(id: &str) -> String {
    format!("{FIRST_REPORT_FOLDER}\\{id}.xps")
}

/// The report a path names, by the id both sides share: the file name after the last `\` or `/`,
/// without its extension, lower-cased. `Reports0\ABC.xps`, `abc.rpt` and `Reports\abc.dat` name
/// the same report.
pub fn report_id(path: &str) -> String {
    let file = path.rsplit(['\\', '/']).next().unwrap_or(path);
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    stem.to_lowercase()
}

/// The `RapportFil` paths among `named` whose report is in none of `uploaded` (report file names or
/// the names of the documents they held), in the order given.
pub fn reports_never_uploaded<'a>(
    named: impl IntoIterator<Item = &'a str>,
    uploaded: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let uploaded: HashSet<String> = uploaded.into_iter().map(report_id).collect();
    named
        .into_iter()
        .filter(|path| !uploaded.contains(&report_id(path)))
        .map(str::to_owned)
        .collect()
}
/// Largest `Index.txt` read (about a million lines; a real one has one line per patient).
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// Where a patient file goes in the export folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientLocation {
    /// Folder name, `Patients<N>`.
    pub folder: String,
    /// File name, `<guid>.pat`.
    pub file: String,
}

impl PatientLocation {
    /// The path as `Index.txt` writes it (`Patients0\<guid>.pat`).
    pub fn index_path(&self) -> String {
        format!("{}\\{}", self.folder, self.file)
    }

    /// The path relative to the export folder, with the platform's separators.
    pub fn relative_path(&self) -> PathBuf {
        Path::new(&self.folder).join(&self.file)
    }
}

/// The folder for the `n`th patient (0-based): 16,000 per folder.
pub fn patient_folder(n: usize) -> String {
    format!("{PATIENT_FOLDER_PREFIX}{}", n / MAX_PATIENTS_PER_FOLDER)
}

/// The file name for a patient: its GUID, lower-case and hyphenated, with `.pat`.
pub fn patient_file_name(id: Uuid) -> String {
    format!("{}.pat", id.as_hyphenated())
}

/// Folder and file for the `n`th patient (0-based) with id `id`.
pub fn patient_location(n: usize, id: Uuid) -> PatientLocation {
    PatientLocation {
        folder: patient_folder(n),
        file: patient_file_name(id),
    }
}

/// One patient file found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientFileRef {
    /// The number of its `Patients<N>` folder.
    pub folder: u32,
    /// The GUID from its name.
    pub id: Uuid,
    /// Its full path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

impl PatientFileRef {
    /// The path as `Index.txt` would write it.
    pub fn index_path(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{PATIENT_FOLDER_PREFIX}{}\\{file}", self.folder)
    }
}

/// What [`scan`] found, with every problem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportLayout {
    /// The scanned folder.
    pub root: PathBuf,
    /// `ExportData.dat`, when present.
    pub organisation_file: Option<PathBuf>,
    /// `Index.txt`, when present and valid.
    pub index: Option<Index>,
    /// Patient files, ordered by folder number, then name.
    pub patients: Vec<PatientFileRef>,
    /// Report files (see [`REPORT_EXTENSIONS`]), ordered by path.
    pub reports: Vec<PathBuf>,
    /// Every rule the folder breaks; empty when the layout is valid.
    pub problems: Vec<LayoutProblem>,
}

impl ExportLayout {
    /// True when no rule is broken.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One broken layout rule. Paths are relative to the export folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutProblem {
    /// No `ExportData.dat`.
    MissingOrganisationFile,
    /// No `Index.txt`.
    MissingIndex,
    /// `Index.txt` is not UTF-8.
    IndexNotUtf8,
    /// `Index.txt` is larger than [`MAX_INDEX_BYTES`].
    IndexTooLarge {
        /// Its size.
        size: u64,
    },
    /// A line of `Index.txt` is refused.
    IndexLine(IndexLineProblem),
    /// `Patients<missing>` is absent although a higher-numbered folder exists.
    FolderGap {
        /// The missing number.
        missing: u32,
    },
    /// A patient folder holds more than [`MAX_PATIENTS_PER_FOLDER`] files.
    FolderTooFull {
        /// The folder.
        folder: String,
        /// How many `.pat` files it holds.
        count: usize,
    },
    /// `Index.txt` names a file that is not there.
    IndexedFileMissing {
        /// The path as the index writes it.
        path: String,
    },
    /// A `.pat` file that `Index.txt` does not name.
    FileNotIndexed {
        /// The path as the index would write it.
        path: String,
    },
    /// A file in a patient folder not named `<guid>.pat`.
    BadPatientFileName {
        /// The path.
        path: String,
    },
    /// The same patient GUID in two folders.
    DuplicatePatient {
        /// The first path.
        first: String,
        /// The second path.
        second: String,
    },
    /// A file or folder that has no place in an export.
    UnexpectedEntry {
        /// The path.
        path: String,
    },
    /// A symbolic link or other special file where a regular file or folder belongs.
    NotRegular {
        /// The path.
        path: String,
    },
    /// A subfolder or `Index.txt` could not be read.
    Unreadable {
        /// The path.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
}

impl fmt::Display for LayoutProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingOrganisationFile => write!(f, "{ORGANISATION_FILE_NAME} is missing"),
            Self::MissingIndex => write!(f, "{INDEX_FILE_NAME} is missing"),
            Self::IndexNotUtf8 => write!(f, "{INDEX_FILE_NAME} is not UTF-8 text"),
            Self::IndexTooLarge { size } => write!(
                f,
                "{INDEX_FILE_NAME} is {size} bytes; at most {MAX_INDEX_BYTES} are read"
            ),
            Self::IndexLine(problem) => write!(f, "{INDEX_FILE_NAME} {problem}"),
            Self::FolderGap { missing } => write!(
                f,
                "folder {PATIENT_FOLDER_PREFIX}{missing} is missing although higher-numbered ones exist"
            ),
            Self::FolderTooFull { folder, count } => write!(
                f,
                "folder {folder} holds {count} patient files; at most {MAX_PATIENTS_PER_FOLDER} are allowed"
            ),
            Self::IndexedFileMissing { path } => {
                write!(f, "{INDEX_FILE_NAME} names {path}, which does not exist")
            }
            Self::FileNotIndexed { path } => write!(f, "{path} is not listed in {INDEX_FILE_NAME}"),
            Self::BadPatientFileName { path } => {
                write!(f, "{path} is not a patient file name (<guid>.pat)")
            }
            Self::DuplicatePatient { first, second } => {
                write!(f, "{first} and {second} are the same patient")
            }
            Self::UnexpectedEntry { path } => {
                write!(f, "{path} does not belong in an export folder")
            }
            Self::NotRegular { path } => {
                write!(
                    f,
                    "{path} is a symbolic link or special file, not a regular file or folder"
                )
            }
            Self::Unreadable { path, reason } => write!(f, "cannot read {path}: {reason}"),
        }
    }
}

/// The folder itself cannot be read; every other problem is a [`LayoutProblem`].
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The export folder could not be listed.
    #[error("cannot read the export folder {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// The path is not a folder.
    #[error("{path} is not a folder")]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
}

/// Lists the export folder and checks the layout rules.
pub fn scan(folder: &Path) -> Result<ExportLayout, LayoutError> {
    let io_error = |source| LayoutError::Io {
        path: folder.to_owned(),
        source,
    };
    let metadata = fs::metadata(folder).map_err(io_error)?;
    if !metadata.is_dir() {
        return Err(LayoutError::NotAFolder {
            path: folder.to_owned(),
        });
    }
    let mut layout = ExportLayout {
        root: folder.to_owned(),
        ..ExportLayout::default()
    };
    let mut patient_folders: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let mut report_folders: Vec<PathBuf> = Vec::new();
    let mut index_path = None;

    for (name, path, kind) in sorted_entries(folder).map_err(io_error)? {
        let shown = name.clone();
        match (name.as_str(), kind) {
            (ORGANISATION_FILE_NAME, EntryKind::File) => layout.organisation_file = Some(path),
            (INDEX_FILE_NAME, EntryKind::File) => index_path = Some(path),
            (_, EntryKind::Folder) if numbered(&name, PATIENT_FOLDER_PREFIX).is_some() => {
                let number = numbered(&name, PATIENT_FOLDER_PREFIX).unwrap_or_default();
                patient_folders.insert(number, path);
            }
            (_, EntryKind::Folder)
                if name == REPORT_FOLDER || numbered(&name, REPORT_FOLDER).is_some() =>
            {
                report_folders.push(path);
            }
            // NHN's uploader keeps its ledger in the export folder.
            (_, EntryKind::File) if name.ends_with(".ledger") => {}
            (_, EntryKind::Other) => layout
                .problems
                .push(LayoutProblem::NotRegular { path: shown }),
            _ => layout
                .problems
                .push(LayoutProblem::UnexpectedEntry { path: shown }),
        }
    }

    if layout.organisation_file.is_none() {
        layout.problems.push(LayoutProblem::MissingOrganisationFile);
    }
    match index_path {
        None => layout.problems.push(LayoutProblem::MissingIndex),
        Some(path) => match read_index(&path) {
            Ok(index) => layout.index = Some(index),
            Err(problems) => layout.problems.extend(problems),
        },
    }

    if let Some(&highest) = patient_folders.keys().next_back() {
        for missing in (0..highest).filter(|n| !patient_folders.contains_key(n)) {
            layout.problems.push(LayoutProblem::FolderGap { missing });
        }
    }
    let mut seen_ids: HashMap<Uuid, String> = HashMap::new();
    for (&number, path) in &patient_folders {
        scan_patient_folder(number, path, &mut layout, &mut seen_ids);
    }
    for path in &report_folders {
        scan_report_folder(folder, path, &mut layout);
    }
    layout.reports.sort();

    if let Some(index) = &layout.index {
        let problems = compare_with_index(index, &layout);
        layout.problems.extend(problems);
    }
    Ok(layout)
}

/// Every indexed file must exist; every patient file on disk must be indexed.
fn compare_with_index(index: &Index, layout: &ExportLayout) -> Vec<LayoutProblem> {
    let on_disk: HashSet<String> = layout
        .patients
        .iter()
        .map(|p| p.index_path().to_lowercase())
        .chain(
            layout
                .reports
                .iter()
                .map(|r| windows_path(&layout.root, r).to_lowercase()),
        )
        .chain(
            layout
                .organisation_file
                .iter()
                .map(|_| ORGANISATION_FILE_NAME.to_lowercase()),
        )
        .collect();
    let indexed: HashSet<String> = index
        .entries
        .iter()
        .map(|e| e.path.to_lowercase())
        .collect();
    let mut problems: Vec<LayoutProblem> = index
        .entries
        .iter()
        .filter(|e| !on_disk.contains(&e.path.to_lowercase()))
        .map(|e| LayoutProblem::IndexedFileMissing {
            path: e.path.clone(),
        })
        .collect();
    problems.extend(
        layout
            .patients
            .iter()
            .map(PatientFileRef::index_path)
            .filter(|p| !indexed.contains(&p.to_lowercase()))
            .map(|path| LayoutProblem::FileNotIndexed { path }),
    );
    problems
}

fn scan_patient_folder(
    number: u32,
    path: &Path,
    layout: &mut ExportLayout,
    seen_ids: &mut HashMap<Uuid, String>,
) {
    let folder_name = format!("{PATIENT_FOLDER_PREFIX}{number}");
    let entries = match sorted_entries(path) {
        Ok(entries) => entries,
        Err(e) => {
            layout.problems.push(LayoutProblem::Unreadable {
                path: folder_name,
                reason: e.to_string(),
            });
            return;
        }
    };
    let mut count = 0;
    for (name, file_path, kind) in entries {
        let shown = format!("{folder_name}\\{name}");
        match kind {
            EntryKind::File => {}
            EntryKind::Folder => {
                layout
                    .problems
                    .push(LayoutProblem::UnexpectedEntry { path: shown });
                continue;
            }
            EntryKind::Other => {
                layout
                    .problems
                    .push(LayoutProblem::NotRegular { path: shown });
                continue;
            }
        }
        let Some(id) = patient_file_id(&name) else {
            layout
                .problems
                .push(LayoutProblem::BadPatientFileName { path: shown });
            continue;
        };
        count += 1;
        if let Some(first) = seen_ids.get(&id) {
            layout.problems.push(LayoutProblem::DuplicatePatient {
                first: first.clone(),
                second: shown,
            });
            continue;
        }
        seen_ids.insert(id, shown);
        let size = fs::symlink_metadata(&file_path)
            .map(|m| m.len())
            .unwrap_or(0);
        layout.patients.push(PatientFileRef {
            folder: number,
            id,
            path: file_path,
            size,
        });
    }
    if count > MAX_PATIENTS_PER_FOLDER {
        layout.problems.push(LayoutProblem::FolderTooFull {
            folder: folder_name,
            count,
        });
    }
}

fn scan_report_folder(root: &Path, path: &Path, layout: &mut ExportLayout) {
    let folder_name = windows_path(root, path);
    let entries = match sorted_entries(path) {
        Ok(entries) => entries,
        Err(e) => {
            layout.problems.push(LayoutProblem::Unreadable {
                path: folder_name,
                reason: e.to_string(),
            });
            return;
        }
    };
    for (name, file_path, kind) in entries {
        let shown = format!("{folder_name}\\{name}");
        match kind {
            EntryKind::File if is_report_file(&name) => {
                layout.reports.push(file_path);
            }
            EntryKind::Other => layout
                .problems
                .push(LayoutProblem::NotRegular { path: shown }),
            _ => layout
                .problems
                .push(LayoutProblem::UnexpectedEntry { path: shown }),
        }
    }
}

fn is_report_file(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(stem, extension)| {
        !stem.is_empty()
            && REPORT_EXTENSIONS
                .iter()
                .any(|e| extension.eq_ignore_ascii_case(e))
    })
}

fn read_index(path: &Path) -> Result<Index, Vec<LayoutProblem>> {
    let unreadable = |e: io::Error| {
        vec![LayoutProblem::Unreadable {
            path: INDEX_FILE_NAME.into(),
            reason: e.to_string(),
        }]
    };
    let size = fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_INDEX_BYTES {
        return Err(vec![LayoutProblem::IndexTooLarge { size }]);
    }
    let bytes = fs::read(path).map_err(unreadable)?;
    parse_index(&bytes).map_err(|e| match e {
        IndexError::NotUtf8 => vec![LayoutProblem::IndexNotUtf8],
        IndexError::InvalidLines(lines) => {
            lines.into_iter().map(LayoutProblem::IndexLine).collect()
        }
    })
}

/// `Patients<N>` → `Some(N)` with canonical numbering (no leading zeros).
fn numbered(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix).and_then(folder_number)
}

/// A path below `root` written as the index would write it.
fn windows_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("\\")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryKind {
    File,
    Folder,
    Other,
}

/// The entries of a folder sorted by name, without following symbolic links. Names that are not
/// UTF-8 are shown lossily (they can never match a valid name).
fn sorted_entries(folder: &Path) -> io::Result<Vec<(String, PathBuf, EntryKind)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(folder)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        let kind = if file_type.is_file() {
            EntryKind::File
        } else if file_type.is_dir() {
            EntryKind::Folder
        } else {
            EntryKind::Other
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push((name, entry.path(), kind));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
