//! `hack/nhn-reference.sh`, the one place that knows where NHN's reference files come from: it
//! prints a folder whose files are exactly the pinned ones, takes `SFM_FORMAT_DIR` only when it holds
//! them, and when nothing provides them (no variable, no shared folder, no download) it fails at once
//! with one sentence that says what is missing and how to provide it.

#[path = "common/samples.rs"]
mod samples;

use std::path::Path;
use std::process::{Command, Output};

const FILES: [&str; 4] = [
    "FmSfmExportImportFormatDefinition.xsd",
    "ExportData.zip",
    "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.zip",
    "Index.txt",
];

/// Runs a copy of the script from `root/hack/` (so `../shared` beside it is what the test makes of
/// it), with a cache of its own and only the given environment variables of the script's.
fn script_in(root: &Path, env: &[(&str, &str)]) -> Output {
    let hack = root.join("hack");
    std::fs::create_dir_all(&hack).unwrap();
    let script = hack.join("nhn-reference.sh");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/hack/nhn-reference.sh"),
        &script,
    )
    .unwrap();
    // Run by bash, not executed itself: a file just written can be held open for writing by a
    // child another test thread forks at that moment, and exec then fails with "Text file busy"
    // (seen in CI).
    let mut command = Command::new("bash");
    command.arg(&script);
    command
        .env_remove("SFM_FORMAT_DIR")
        .env_remove("SFM_REFERENCE_OFFLINE")
        .env("SFM_CACHE_DIR", root.join("cache"));
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn copy_reference_files(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in FILES {
        std::fs::copy(samples::sample_path(name), to.join(name)).unwrap();
    }
}

#[test]
fn nothing_provided_and_no_download_fails_at_once_with_one_sentence() {
    let root = tempfile::tempdir().unwrap();
    let checkout = root.path().join("checkout");
    let started = std::time::Instant::now();
    let out = script_in(&checkout, &[("SFM_REFERENCE_OFFLINE", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let text = stderr(&out);
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    assert!(
        text.contains("NHN's reference files are not here")
            && text.contains("set SFM_FORMAT_DIR")
            && text.contains("NorskHelsenett/SFM.tools"),
        "{text}"
    );
    assert!(started.elapsed().as_secs() < 10);
}

#[test]
fn an_empty_or_altered_sfm_format_dir_is_refused_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = script_in(
        &root.path().join("checkout"),
        &[("SFM_FORMAT_DIR", empty.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("FmSfmExportImportFormatDefinition.xsd is missing"),
        "{}",
        stderr(&out)
    );

    let altered = root.path().join("altered");
    copy_reference_files(&altered);
    let mut index = std::fs::read(altered.join("Index.txt")).unwrap();
    index.extend_from_slice(b"Patients0\\extra.pat\r\n");
    std::fs::write(altered.join("Index.txt"), index).unwrap();
    let out = script_in(
        &root.path().join("checkout"),
        &[("SFM_FORMAT_DIR", altered.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Index.txt differs from NHN's file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_pinned_files_are_found_in_sfm_format_dir_and_in_the_shared_folder() {
    let root = tempfile::tempdir().unwrap();
    let copy = root.path().join("copy");
    copy_reference_files(&copy);
    let out = script_in(
        &root.path().join("checkout"),
        &[("SFM_FORMAT_DIR", copy.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        copy.canonicalize().unwrap().to_str().unwrap()
    );

    // `../shared/sfm-format` beside the checkout, with downloading off: found without a variable.
    copy_reference_files(&root.path().join("shared/sfm-format"));
    let out = script_in(
        &root.path().join("checkout"),
        &[("SFM_REFERENCE_OFFLINE", "1")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .ends_with("shared/sfm-format")
    );
}

/// The migration API validates against the XSD compiled into it (`format::xml::SCHEMA`, kept beside
/// its code so the binary needs no file at run time): it is NHN's, byte for byte.
#[test]
fn the_xsd_the_api_compiles_in_is_nhns() {
    assert!(
        sfm_migration::format::xml::SCHEMA
            == samples::sample("FmSfmExportImportFormatDefinition.xsd").as_slice(),
        "src/format/xml/FmSfmExportImportFormatDefinition.xsd differs from NHN's pinned XSD"
    );
}
