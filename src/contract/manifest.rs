//! The manifest of step 33: the client's list of every file it read from the export folder, sent to
//! `POST /api/v1/verify`, and its digest, which the validation record stores and an operator's manual
//! approval (`spec.activation.approvedDigest`) binds to. The digest's canonical form is part of the
//! contract and must never change for `manifestVersion` 1.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use super::problem::{ManifestMismatches, RejectedFile};
use super::tus::FileType;
use super::{ContractError, sha256_hex};

/// The only manifest version.
pub const MANIFEST_VERSION: u32 = 1;
/// Most files one manifest may list (about 60 folders of 16,000 patients).
pub const MAX_MANIFEST_FILES: usize = 1_000_000;
/// Largest verify body the API reads, in bytes (about 130 bytes per file).
pub const MAX_MANIFEST_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Longest path, in bytes of UTF-8.
pub const MAX_PATH_BYTES: usize = 1024;
/// Most entries each list of [`ManifestMismatches`] carries; the counts are always complete.
pub const MAX_MISMATCHES_LISTED: usize = 1000;

/// The organisation file's path in the export folder.
const ORGANISATION_PATH: &str = "ExportData.dat";

/// The body of `POST /api/v1/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub manifest_version: u32,
    /// Every file of the export, the organisation file included, in any order.
    pub files: Vec<ManifestFile>,
}

/// One file of the export as the client read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestFile {
    /// The path relative to the export folder exactly as `Index.txt` writes it (backslashes,
    /// `Patients0\<guid>.pat`), or `ExportData.dat`; also the `name` metadata of its upload.
    pub path: String,
    /// The file's type; must match the path's extension.
    pub file_type: FileType,
    /// Size in bytes of the file as uploaded (the encrypted envelope).
    pub size: u64,
    /// Lowercase hex SHA-256 of the file as uploaded.
    pub sha256: String,
}

impl Manifest {
    /// A version-1 manifest of `files`.
    pub fn new(files: Vec<ManifestFile>) -> Self {
        Manifest {
            manifest_version: MANIFEST_VERSION,
            files,
        }
    }

    /// The canonical text the digest is taken over: one line per file,
    /// `path TAB fileType TAB size TAB sha256 LF`, size in decimal, sha256 in lowercase hex, lines
    /// sorted by their bytes (so by path first). The order of `files` does not matter.
    pub fn canonical_text(&self) -> String {
        let mut lines: Vec<String> = self
            .files
            .iter()
            .map(|f| {
                format!(
                    "{}\t{}\t{}\t{}\n",
                    f.path,
                    f.file_type.as_str(),
                    f.size,
                    f.sha256.to_ascii_lowercase()
                )
            })
            .collect();
        lines.sort_unstable();
        lines.concat()
    }

    /// Lowercase hex SHA-256 of [`Manifest::canonical_text`] in UTF-8: the validated digest.
    pub fn digest(&self) -> String {
        sha256_hex(self.canonical_text().as_bytes())
    }

    /// Checks what the canonical form relies on and what the API must not accept: version 1; 1 to
    /// [`MAX_MANIFEST_FILES`] files; safe relative paths with backslashes (no `/`, `:`, control
    /// characters, empty, `.` or `..` components), each once ignoring ASCII case (Windows folders
    /// are case-insensitive); a file type the name fits ([`FileType::accepts_name`]); sha256 as 64 lowercase hex digits;
    /// exactly one organisation file, `ExportData.dat`.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.manifest_version != MANIFEST_VERSION {
            return Err(ContractError::ManifestVersionUnsupported {
                version: self.manifest_version,
            });
        }
        if self.files.is_empty() {
            return Err(ContractError::ManifestEmpty);
        }
        if self.files.len() > MAX_MANIFEST_FILES {
            return Err(ContractError::ManifestTooManyFiles {
                max: MAX_MANIFEST_FILES,
            });
        }
        let mut seen = HashSet::with_capacity(self.files.len());
        let mut organisation_files = 0;
        for (index, file) in self.files.iter().enumerate() {
            check_path(&file.path)
                .map_err(|reason| ContractError::ManifestPathInvalid { index, reason })?;
            if !seen.insert(file.path.to_ascii_lowercase()) {
                return Err(ContractError::ManifestDuplicatePath { index });
            }
            if !file.file_type.accepts_name(&file.path) {
                return Err(ContractError::ManifestFileTypeMismatch { index });
            }
            if file.file_type == FileType::ExportData {
                if file.path != ORGANISATION_PATH {
                    return Err(ContractError::ManifestPathInvalid {
                        index,
                        reason: "the organisation file must be ExportData.dat at the top",
                    });
                }
                organisation_files += 1;
            }
            let hex_ok = file.sha256.len() == 64
                && file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(ContractError::ManifestSha256Invalid { index });
            }
        }
        if organisation_files != 1 {
            return Err(ContractError::ManifestOrganisationFile {
                found: organisation_files,
            });
        }
        Ok(())
    }
}

fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err("empty or longer than 1024 bytes");
    }
    if path.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    if path.contains('/') {
        return Err("uses / instead of \\");
    }
    if path.contains(':') {
        return Err("contains a drive or stream separator");
    }
    if path
        .split('\\')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("has an empty, . or .. component, or is not relative");
    }
    Ok(())
}

/// The 200 body of `POST /api/v1/verify`: the stored files match the manifest exactly and the
/// validation record now holds `digest`. Verifying the same manifest again returns the same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Always true (a mismatch is a 409 problem).
    pub validated: bool,
    /// [`Manifest::digest`] of the manifest that matched.
    pub digest: String,
    /// When the validation record was written.
    pub validated_at: DateTime<Utc>,
    /// Files in the manifest.
    pub files: u64,
    /// Users stored from the organisation file.
    pub users: u64,
    /// Patients stored.
    pub patients: u64,
    /// Reports stored.
    pub reports: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ProblemCode;

    fn file(path: &str, file_type: FileType, size: u64, fill: char) -> ManifestFile {
        ManifestFile {
            path: path.to_owned(),
            file_type,
            size,
            sha256: fill.to_string().repeat(64),
        }
    }

    fn sample() -> Manifest {
        Manifest::new(vec![
            file("ExportData.dat", FileType::ExportData, 2048, 'a'),
            file(
                "Patients0\\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat",
                FileType::Patient,
                4096,
                'b',
            ),
            file("Reports\\monthly.rpt", FileType::Report, 100, 'c'),
        ])
    }

    #[test]
    fn canonical_text_is_sorted_tab_separated_lines() {
        assert_eq!(
            sample().canonical_text(),
            format!(
                "ExportData.dat\tExportData\t2048\t{}\n\
                 Patients0\\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat\tPatient\t4096\t{}\n\
                 Reports\\monthly.rpt\tReport\t100\t{}\n",
                "a".repeat(64),
                "b".repeat(64),
                "c".repeat(64)
            )
        );
        assert_eq!(
            sample().digest(),
            sha256_hex(sample().canonical_text().as_bytes())
        );
    }

    #[test]
    fn digest_does_not_depend_on_order() {
        let mut reversed = sample();
        reversed.files.reverse();
        assert_eq!(reversed.digest(), sample().digest());
        let mut rotated = sample();
        rotated.files.rotate_left(1);
        assert_eq!(rotated.digest(), sample().digest());
    }

    #[test]
    fn digest_changes_when_any_field_changes() {
        let base = sample().digest();
        let changes: [fn(&mut ManifestFile); 4] = [
            |f| f.path.push('x'),
            |f| {
                f.file_type = if f.file_type == FileType::Patient {
                    FileType::Report
                } else {
                    FileType::Patient
                }
            },
            |f| f.size += 1,
            |f| f.sha256.replace_range(0..1, "0"),
        ];
        for change in changes {
            for index in 0..3 {
                let mut changed = sample();
                change(&mut changed.files[index]);
                assert_ne!(changed.digest(), base, "file {index}");
            }
        }
        let mut fewer = sample();
        fewer.files.pop();
        assert_ne!(fewer.digest(), base);
    }

    #[test]
    fn sample_validates_and_serialises_in_camel_case() {
        sample().validate().unwrap();
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["manifestVersion"], 1);
        assert_eq!(json["files"][1]["fileType"], "Patient");
        let back: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
        assert!(
            serde_json::from_str::<Manifest>(r#"{"manifestVersion":1,"files":[],"extra":1}"#)
                .is_err()
        );
    }

    /// A named way to break a manifest.
    type Breakage = (&'static str, fn(&mut Manifest));

    #[test]
    fn validation_rejects_what_would_make_the_digest_ambiguous_or_unsafe() {
        let broken: [Breakage; 16] = [
            ("version", |m| m.manifest_version = 2),
            ("empty", |m| m.files.clear()),
            ("tab in path", |m| {
                m.files[1].path = "Patients0\\a\tb.pat".into()
            }),
            ("newline", |m| {
                m.files[1].path = "Patients0\\a\nb.pat".into()
            }),
            ("slash", |m| m.files[1].path = "Patients0/a.pat".into()),
            ("absolute", |m| {
                m.files[1].path = "\\Patients0\\a.pat".into()
            }),
            ("drive", |m| m.files[1].path = "C:\\a.pat".into()),
            ("dotdot", |m| {
                m.files[1].path = "Patients0\\..\\a.pat".into()
            }),
            ("double sep", |m| {
                m.files[1].path = "Patients0\\\\a.pat".into()
            }),
            ("type vs ext", |m| {
                m.files[1].file_type = FileType::ExportData
            }),
            ("patient named as report", |m| {
                m.files[1].path = "Patients0\\a.rpt".into()
            }),
            ("uppercase hex", |m| m.files[1].sha256 = "B".repeat(64)),
            ("short hex", |m| m.files[1].sha256 = "b".repeat(63)),
            ("duplicate ignoring case", |m| {
                let mut copy = m.files[1].clone();
                copy.path = copy.path.to_uppercase().replace(".PAT", ".pat");
                m.files.push(copy);
            }),
            ("no organisation file", |m| {
                m.files.remove(0);
            }),
            ("organisation file elsewhere", |m| {
                m.files[0].path = "Sub\\ExportData.dat".into()
            }),
        ];
        for (why, change) in broken {
            let mut manifest = sample();
            change(&mut manifest);
            let error = manifest.validate().expect_err(why);
            assert_eq!(error.problem_code(), ProblemCode::ManifestInvalid, "{why}");
        }
    }

    #[test]
    fn mismatches_serialise_in_camel_case() {
        let mismatches = ManifestMismatches {
            digest_mismatch: vec!["Patients0\\a.pat".into()],
            rejected: vec![RejectedFile {
                path: "Patients0\\b.pat".into(),
                code: ProblemCode::XmlDoctype,
            }],
            ..ManifestMismatches::default()
        };
        assert!(!mismatches.is_empty());
        assert!(ManifestMismatches::default().is_empty());
        let json = serde_json::to_value(&mismatches).unwrap();
        assert_eq!(json["digestMismatch"][0], "Patients0\\a.pat");
        assert_eq!(json["rejected"][0]["code"], "xml-doctype");
    }
}
