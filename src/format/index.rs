//! `Index.txt`: the list of files in an export folder, one relative Windows path per line with CRLF
//! endings, e.g. `Patients0\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat`.
//!
//! NHN's real index lists only patient files; reports (`Reports\<name>.rpt`, also `ReportsN\`) and
//! the organisation file (`ExportData.dat`) are accepted too, since the format description names
//! them as part of the folder. Parsing tolerates LF endings, a UTF-8 byte order mark and blank lines;
//! anything that could point outside the export folder is refused. Writing always produces CRLF and
//! backslashes, as NHN's tools expect.
//!
//! Paths in errors are escaped and truncated; the index holds GUIDs, never personal data, but a
//! hostile file could hold anything.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

/// The index's file name in the export folder.
pub const INDEX_FILE_NAME: &str = "Index.txt";
/// The organisation file's name in the export folder.
pub const ORGANISATION_FILE_NAME: &str = "ExportData.dat";

/// A parsed `Index.txt`, lines in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// One entry per non-blank line.
    pub entries: Vec<IndexEntry>,
}

impl Index {
    /// The text of the index as NHN writes it: one path per line, each ending in CRLF.
    pub fn to_text(&self) -> String {
        write_index(&self.entries)
    }

    /// The patient entries.
    pub fn patients(&self) -> impl Iterator<Item = (&IndexEntry, u32, Uuid)> {
        self.entries.iter().filter_map(|entry| match entry.kind {
            IndexEntryKind::Patient { folder, id } => Some((entry, folder, id)),
            _ => None,
        })
    }
}

/// One line of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The path exactly as written (backslashes), so writing it back reproduces the file.
    pub path: String,
    /// What the path names.
    pub kind: IndexEntryKind,
}

impl IndexEntry {
    /// The entry for patient `id` in folder `Patients<folder>`.
    pub fn patient(folder: u32, id: Uuid) -> Self {
        Self {
            path: format!("Patients{folder}\\{}.pat", id.as_hyphenated()),
            kind: IndexEntryKind::Patient { folder, id },
        }
    }

    /// The path relative to the export folder, with the platform's separators.
    pub fn relative_path(&self) -> PathBuf {
        self.path.split('\\').collect()
    }
}

/// What an index line names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexEntryKind {
    /// `ExportData.dat`.
    Organisation,
    /// `Patients<folder>\<id>.pat`.
    Patient {
        /// The number after `Patients`.
        folder: u32,
        /// The patient's GUID from the file name.
        id: Uuid,
    },
    /// `Reports\<name>.rpt` or `Reports<folder>\<name>.rpt`.
    Report {
        /// The number after `Reports`, if any.
        folder: Option<u32>,
        /// The file name.
        name: String,
    },
}

/// Why one line of an index is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexLineReason {
    /// Has a `..` or `.` segment.
    DotSegment,
    /// Starts with a separator or holds `:` (a drive letter).
    Absolute,
    /// Has an empty segment (`Patients0\\x.pat`).
    EmptySegment,
    /// Uses `/`; the format uses Windows separators only.
    ForwardSlash,
    /// Holds a control character or NUL.
    ControlCharacter,
    /// Leading or trailing spaces.
    Whitespace,
    /// Names a patient file whose name is not `<guid>.pat`.
    BadPatientFileName,
    /// Not `ExportData.dat`, `Patients<N>\<guid>.pat` or `Reports[<N>]\<name>.rpt`.
    UnknownPath,
    /// The same path (ignoring case) appeared earlier.
    Duplicate {
        /// The line it first appeared on.
        first_line: usize,
    },
}

impl fmt::Display for IndexLineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DotSegment => f.write_str("it has a '.' or '..' segment"),
            Self::Absolute => f.write_str("it is an absolute path"),
            Self::EmptySegment => f.write_str("it has an empty path segment"),
            Self::ForwardSlash => f.write_str("it uses '/'; the index uses '\\' only"),
            Self::ControlCharacter => f.write_str("it holds a control character"),
            Self::Whitespace => f.write_str("it has leading or trailing spaces"),
            Self::BadPatientFileName => f.write_str("a patient file must be named <guid>.pat"),
            Self::UnknownPath => f.write_str(
                "it is not ExportData.dat, Patients<N>\\<guid>.pat or Reports[<N>]\\<name>.rpt",
            ),
            Self::Duplicate { first_line } => write!(f, "it repeats line {first_line}"),
        }
    }
}

/// One refused line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLineProblem {
    /// 1-based line number.
    pub line: usize,
    /// The line, escaped and truncated.
    pub text: String,
    /// What is wrong.
    pub reason: IndexLineReason,
}

impl fmt::Display for IndexLineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} {}: {}", self.line, self.text, self.reason)
    }
}

/// Why an index is refused.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Not UTF-8.
    #[error("Index.txt is not UTF-8 text")]
    NotUtf8,
    /// Some lines are refused; all of them are listed so a check can print every one.
    #[error("Index.txt has {} invalid line(s), the first: {}", .0.len(), .0[0])]
    InvalidLines(Vec<IndexLineProblem>),
}

/// Parses `Index.txt`.
pub fn parse_index(bytes: &[u8]) -> Result<Index, IndexError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| IndexError::NotUtf8)?;
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (number, line) in text.split('\n').enumerate() {
        let line_number = number + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let problem = |reason| IndexLineProblem {
            line: line_number,
            text: shown(line),
            reason,
        };
        match parse_line(line) {
            Ok(kind) => match seen.entry(line.to_lowercase()) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    problems.push(problem(IndexLineReason::Duplicate {
                        first_line: *first.get(),
                    }));
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(line_number);
                    entries.push(IndexEntry {
                        path: line.to_owned(),
                        kind,
                    });
                }
            },
            Err(reason) => problems.push(problem(reason)),
        }
    }
    if problems.is_empty() {
        Ok(Index { entries })
    } else {
        Err(IndexError::InvalidLines(problems))
    }
}

/// Writes index text: each path followed by CRLF.
pub fn write_index(entries: &[IndexEntry]) -> String {
    let mut text = String::with_capacity(entries.len() * 52);
    for entry in entries {
        text.push_str(&entry.path);
        text.push_str("\r\n");
    }
    text
}

fn parse_line(line: &str) -> Result<IndexEntryKind, IndexLineReason> {
    if line.chars().any(char::is_control) {
        return Err(IndexLineReason::ControlCharacter);
    }
    if line.trim() != line {
        return Err(IndexLineReason::Whitespace);
    }
    if line.starts_with('\\') || line.starts_with('/') || line.contains(':') {
        return Err(IndexLineReason::Absolute);
    }
    if line.contains('/') {
        return Err(IndexLineReason::ForwardSlash);
    }
    let segments: Vec<&str> = line.split('\\').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(IndexLineReason::EmptySegment);
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(IndexLineReason::DotSegment);
    }
    match segments.as_slice() {
        [ORGANISATION_FILE_NAME] => Ok(IndexEntryKind::Organisation),
        [folder, file] => {
            if let Some(number) = folder.strip_prefix("Patients").and_then(folder_number) {
                let id = patient_file_id(file).ok_or(IndexLineReason::BadPatientFileName)?;
                Ok(IndexEntryKind::Patient { folder: number, id })
            } else if let Some(number) = folder.strip_prefix("Reports").and_then(|rest| {
                if rest.is_empty() {
                    Some(None)
                } else {
                    folder_number(rest).map(Some)
                }
            }) {
                match file.strip_suffix(".rpt") {
                    Some(stem) if !stem.is_empty() && !stem.ends_with(['.', ' ']) => {
                        Ok(IndexEntryKind::Report {
                            folder: number,
                            name: (*file).to_owned(),
                        })
                    }
                    _ => Err(IndexLineReason::UnknownPath),
                }
            } else {
                Err(IndexLineReason::UnknownPath)
            }
        }
        _ => Err(IndexLineReason::UnknownPath),
    }
}

/// The number in a folder name such as `Patients12`: decimal digits, no leading zero.
pub fn folder_number(digits: &str) -> Option<u32> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical { digits.parse().ok() } else { None }
}

/// The patient id in a file name `<guid>.pat` (hyphenated GUID, either case).
pub fn patient_file_id(file_name: &str) -> Option<Uuid> {
    let stem = file_name.strip_suffix(".pat")?;
    if stem.len() != 36 {
        return None;
    }
    Uuid::try_parse(stem).ok()
}

fn shown(line: &str) -> String {
    const MAX: usize = 80;
    let mut text: String = line.chars().take(MAX).collect();
    if line.chars().count() > MAX {
        text.push('…');
    }
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(text: &str) -> Vec<IndexLineReason> {
        match parse_index(text.as_bytes()) {
            Err(IndexError::InvalidLines(problems)) => {
                problems.into_iter().map(|p| p.reason).collect()
            }
            other => panic!("expected invalid lines, got {other:?}"),
        }
    }

    const ID: &str = "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672";

    #[test]
    fn accepts_patients_reports_and_organisation_with_lf_and_bom() {
        let text = format!(
            "\u{feff}Patients0\\{ID}.pat\nReports\\a.rpt\nReports3\\b.rpt\r\nExportData.dat\n\n"
        );
        let index = parse_index(text.as_bytes()).unwrap();
        assert_eq!(index.entries.len(), 4);
        assert_eq!(
            index.entries[0].kind,
            IndexEntryKind::Patient {
                folder: 0,
                id: ID.parse().unwrap()
            }
        );
        assert_eq!(
            index.entries[2].kind,
            IndexEntryKind::Report {
                folder: Some(3),
                name: "b.rpt".into()
            }
        );
        assert_eq!(index.entries[3].kind, IndexEntryKind::Organisation);
        assert_eq!(
            index.to_text(),
            format!(
                "Patients0\\{ID}.pat\r\nReports\\a.rpt\r\nReports3\\b.rpt\r\nExportData.dat\r\n"
            )
        );
    }

    #[test]
    fn refuses_paths_that_leave_the_folder() {
        assert_eq!(
            reasons(&format!("..\\Patients0\\{ID}.pat")),
            [IndexLineReason::DotSegment]
        );
        assert_eq!(
            reasons(&format!("Patients0\\..\\{ID}.pat")),
            [IndexLineReason::DotSegment]
        );
        assert_eq!(
            reasons(&format!("\\Patients0\\{ID}.pat")),
            [IndexLineReason::Absolute]
        );
        assert_eq!(
            reasons(&format!("C:\\Patients0\\{ID}.pat")),
            [IndexLineReason::Absolute]
        );
        assert_eq!(
            reasons(&format!("/etc/{ID}.pat")),
            [IndexLineReason::Absolute]
        );
        assert_eq!(
            reasons(&format!("Patients0/{ID}.pat")),
            [IndexLineReason::ForwardSlash]
        );
        assert_eq!(
            reasons(&format!("Patients0\\\\{ID}.pat")),
            [IndexLineReason::EmptySegment]
        );
    }

    #[test]
    fn refuses_unknown_shapes_and_reports_every_bad_line() {
        let text = format!(
            "Patients0\\{ID}.pat\r\nPatients01\\{ID}.pat\r\nPatients0\\x.pat\r\nNotes\\a.txt\r\npatients0\\{ID}.pat\r\n PATIENTS\r\n"
        );
        assert_eq!(
            reasons(&text),
            [
                IndexLineReason::UnknownPath,
                IndexLineReason::BadPatientFileName,
                IndexLineReason::UnknownPath,
                IndexLineReason::UnknownPath,
                IndexLineReason::Whitespace,
            ]
        );
        let duplicate = format!(
            "Patients0\\{ID}.pat\r\nPatients0\\{}.pat\r\n",
            ID.to_uppercase()
        );
        assert_eq!(
            reasons(&duplicate),
            [IndexLineReason::Duplicate { first_line: 1 }]
        );
    }

    #[test]
    fn patient_entry_writes_the_windows_path() {
        let entry = IndexEntry::patient(2, ID.parse().unwrap());
        assert_eq!(entry.path, format!("Patients2\\{ID}.pat"));
        assert_eq!(
            entry.relative_path(),
            PathBuf::from("Patients2").join(format!("{ID}.pat"))
        );
    }
}
