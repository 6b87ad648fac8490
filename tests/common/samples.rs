//! NHN's real sample files for the tests that read them (found by `hack/nhn-reference.sh`, the one
//! place that knows where they come from), and the sample patient rewritten: under another Id, with a
//! value changed, or with its files changed, zipped again. One place for what the format, ingest, API,
//! XSD, envelope and benchmark tests share.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use sfm_migration::format::archive::{ArchiveLimits, read_archive, write_archive};
use sfm_migration::format::patient_file::PATIENT_DOCUMENT;

/// The Id of NHN's sample patient (its file is `<Id>.zip` in the samples).
pub const PATIENT_GUID: &str = "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672";
/// The organisation number in NHN's sample organisation file (`Institusjon`, ENH).
pub const SAMPLE_ORGANISATION_NUMBER: &str = "100100614";

/// The folder with NHN's reference files: `SFM_FORMAT_DIR` (which `make test` sets from
/// `hack/nhn-reference.sh`), else what that script says. Without the files the script's one
/// sentence says what is missing and how to provide it.
pub fn reference_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SFM_FORMAT_DIR").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/nhn-reference.sh");
        let output = Command::new(script)
            .output()
            .map_err(|e| format!("{script}: {e}"))?;
        if output.status.success() {
            Ok(PathBuf::from(
                String::from_utf8_lossy(&output.stdout).trim(),
            ))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    })
    .clone()
    .unwrap_or_else(|sentence| panic!("{sentence}"))
}

/// The path of one of NHN's reference files, by name.
pub fn sample_path(name: &str) -> PathBuf {
    reference_dir().join(name)
}

/// One of NHN's sample files, by name.
pub fn sample(name: &str) -> Vec<u8> {
    let path = sample_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The sample organisation file (`ExportData`), zipped as NHN ships it.
pub fn organisation_zip() -> Vec<u8> {
    sample("ExportData.zip")
}

/// The sample patient file, zipped as NHN ships it.
pub fn patient_zip() -> Vec<u8> {
    sample(&format!("{PATIENT_GUID}.zip"))
}

/// The sample patient's path as `Index.txt` writes it.
pub fn patient_name() -> String {
    format!("Patients0\\{PATIENT_GUID}.pat")
}

/// Files zipped with the code under test's writer.
pub fn zip_entries(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    write_archive(&borrowed).unwrap()
}

/// The sample patient's files, changed by `change`, zipped again.
pub fn patient_zip_with(change: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut entries: Vec<(String, Vec<u8>)> =
        read_archive(&patient_zip(), &ArchiveLimits::default())
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.name, e.data))
            .collect();
    change(&mut entries);
    zip_entries(&entries)
}

/// The sample patient with each `(from, to)` replaced in `PatientData.xml`, in order (a pair with
/// an empty `from` is skipped), zipped again. `(PATIENT_GUID, id)` gives the patient another Id.
pub fn patient_zip_replacing(replacements: &[(&str, &str)]) -> Vec<u8> {
    patient_zip_with(|entries| {
        for (name, data) in entries.iter_mut() {
            if name == PATIENT_DOCUMENT {
                let mut text = String::from_utf8(std::mem::take(data)).unwrap();
                for (from, to) in replacements.iter().filter(|(from, _)| !from.is_empty()) {
                    text = text.replace(from, to);
                }
                *data = text.into_bytes();
            }
        }
    })
}
