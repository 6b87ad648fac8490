//! Unit tests of [`super`].

use super::*;
use crate::format::index::IndexEntry;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0e7b_fd89_ff43_4c5a_a9e2_0000_0000_0000 + n)
}

/// A folder with `ExportData.dat`, the given patients (folder, id) and a matching index.
fn export_folder(patients: &[(u32, Uuid)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(ORGANISATION_FILE_NAME), b"x").unwrap();
    let mut entries = Vec::new();
    for &(folder, patient) in patients {
        let folder_path = dir.path().join(format!("Patients{folder}"));
        fs::create_dir_all(&folder_path).unwrap();
        fs::write(folder_path.join(patient_file_name(patient)), b"x").unwrap();
        entries.push(IndexEntry::patient(folder, patient));
    }
    fs::write(
        dir.path().join(INDEX_FILE_NAME),
        crate::format::index::write_index(&entries),
    )
    .unwrap();
    dir
}

#[test]
fn patient_locations_fill_folders_of_16000() {
    let patient = id(1);
    assert_eq!(patient_location(0, patient).folder, "Patients0");
    assert_eq!(patient_location(15_999, patient).folder, "Patients0");
    assert_eq!(patient_location(16_000, patient).folder, "Patients1");
    let location = patient_location(32_000, patient);
    assert_eq!(
        location.index_path(),
        format!("Patients2\\{}.pat", patient.as_hyphenated())
    );
}

#[test]
fn a_consistent_folder_has_no_problems() {
    let dir = export_folder(&[(0, id(1)), (0, id(2)), (1, id(3))]);
    fs::create_dir(dir.path().join("Reports")).unwrap();
    fs::write(dir.path().join("Reports").join("r.rpt"), b"x").unwrap();
    fs::write(dir.path().join("upload.ledger"), b"x").unwrap();
    let layout = scan(dir.path()).unwrap();
    assert_eq!(layout.problems, []);
    assert_eq!(layout.patients.len(), 3);
    assert_eq!(layout.reports.len(), 1);
    assert_eq!(layout.index.unwrap().entries.len(), 3);
}

#[test]
fn every_problem_is_listed() {
    let dir = export_folder(&[(0, id(1)), (2, id(2))]);
    fs::remove_file(dir.path().join(ORGANISATION_FILE_NAME)).unwrap();
    // On disk but not indexed, in a folder that also holds a stray file.
    fs::write(
        dir.path().join("Patients0").join(patient_file_name(id(7))),
        b"x",
    )
    .unwrap();
    fs::write(dir.path().join("Patients0").join("notes.txt"), b"x").unwrap();
    // Indexed but deleted.
    fs::remove_file(dir.path().join("Patients2").join(patient_file_name(id(2)))).unwrap();
    // The same patient twice.
    fs::write(
        dir.path().join("Patients2").join(patient_file_name(id(1))),
        b"x",
    )
    .unwrap();
    fs::write(dir.path().join("stray.bin"), b"x").unwrap();
    let layout = scan(dir.path()).unwrap();
    let problems = &layout.problems;
    assert!(
        problems.contains(&LayoutProblem::MissingOrganisationFile),
        "{problems:?}"
    );
    assert!(problems.contains(&LayoutProblem::FolderGap { missing: 1 }));
    assert!(problems.contains(&LayoutProblem::UnexpectedEntry {
        path: "stray.bin".into()
    }));
    assert!(problems.contains(&LayoutProblem::BadPatientFileName {
        path: "Patients0\\notes.txt".into()
    }));
    assert!(problems.contains(&LayoutProblem::FileNotIndexed {
        path: format!("Patients0\\{}", patient_file_name(id(7)))
    }));
    assert!(problems.contains(&LayoutProblem::IndexedFileMissing {
        path: format!("Patients2\\{}", patient_file_name(id(2)))
    }));
    assert!(problems.contains(&LayoutProblem::DuplicatePatient {
        first: format!("Patients0\\{}", patient_file_name(id(1))),
        second: format!("Patients2\\{}", patient_file_name(id(1))),
    }));
    assert_eq!(problems.len(), 7, "{problems:?}");
}

#[test]
fn an_invalid_index_is_reported_line_by_line() {
    let dir = export_folder(&[(0, id(1))]);
    fs::write(
        dir.path().join(INDEX_FILE_NAME),
        "..\\x.pat\r\nPatients0\\y.pat\r\n",
    )
    .unwrap();
    let layout = scan(dir.path()).unwrap();
    let lines: Vec<usize> = layout
        .problems
        .iter()
        .filter_map(|p| match p {
            LayoutProblem::IndexLine(line) => Some(line.line),
            _ => None,
        })
        .collect();
    assert_eq!(lines, [1, 2]);
    assert!(layout.index.is_none());
}

#[test]
fn a_folder_over_16000_is_too_full() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("Patients0");
    fs::create_dir(&folder).unwrap();
    for n in 0..=MAX_PATIENTS_PER_FOLDER as u128 {
        fs::write(folder.join(patient_file_name(id(n))), b"").unwrap();
    }
    let layout = scan(dir.path()).unwrap();
    assert!(layout.problems.contains(&LayoutProblem::FolderTooFull {
        folder: "Patients0".into(),
        count: MAX_PATIENTS_PER_FOLDER + 1
    }));
}

#[cfg(unix)]
#[test]
fn symbolic_links_are_not_followed() {
    let dir = export_folder(&[(0, id(1))]);
    std::os::unix::fs::symlink("/etc", dir.path().join("Patients1")).unwrap();
    let layout = scan(dir.path()).unwrap();
    assert!(layout.problems.contains(&LayoutProblem::NotRegular {
        path: "Patients1".into()
    }));
}

#[test]
fn report_folders_hold_what_nhns_uploader_sends_from_them() {
    let dir = export_folder(&[(0, id(1))]);
    let reports = dir.path().join("Reports0");
    fs::create_dir(&reports).unwrap();
    for name in ["a.rpt", "b.dat", "c.pat", "d.XPS"] {
        fs::write(reports.join(name), b"x").unwrap();
    }
    fs::write(reports.join("notes.txt"), b"x").unwrap();
    fs::write(reports.join(".rpt"), b"x").unwrap();
    let layout = scan(dir.path()).unwrap();
    assert_eq!(layout.reports.len(), 4);
    assert_eq!(
        layout.problems,
        [
            LayoutProblem::UnexpectedEntry {
                path: "Reports0\\.rpt".into()
            },
            LayoutProblem::UnexpectedEntry {
                path: "Reports0\\notes.txt".into()
            },
        ]
    );
}

#[test]
fn a_report_and_its_rapportfil_meet_by_id() {
    let id = "d86e6322-9c1b-42d9-aebc-1d03207c8942";
    let (folder, file) = report_location(id);
    assert_eq!(format!("{folder}\\{file}"), format!("Reports0\\{id}.rpt"));
    // NHN's sample names its one report so.
    assert_eq!(report_document(id), format!("Reports0\\{id}.xps"));
    assert_eq!(report_id(&report_document(id)), report_id(&file));
    assert_eq!(report_id("Reports\\D86E6322.dat"), "d86e6322");
    let named = [
        "Reports0\\a.xps",
        "Reports0\\b.xps",
        "Reports0\\c.xps",
        "Reports1\\d.xps",
    ];
    // Uploaded by NHN's uploader (file name only), by our client (a path), or found by the
    // document the zip held.
    let uploaded = ["a.rpt", "Reports0\\B.rpt", "c.xps"];
    assert_eq!(reports_never_uploaded(named, uploaded), ["Reports1\\d.xps"]);
}
