//! `sfm-export` writes NHN's real format: every file decrypts with the `openssl` command line alone,
//! unzips with `unzip`, and its XML validates against NHN's XSD with `xmllint --schema`; our own parsers
//! read it back without deviations; the index matches the folders; identities are valid synthetic
//! ones and every referenced HPR number is a user's; the same seed gives the same plaintext.

#[path = "common/samples.rs"]
mod samples;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sfm_migration::export::{ExportOptions, patient_zip, write_export};
use sfm_migration::format::envelope::{
    DecryptionKeys, RecipientCertificate, generate_demo_key_pair, parse_header,
};
use sfm_migration::format::layout::{reports_never_uploaded, scan};
use sfm_migration::format::patient_file::{read_organisation_file, read_patient_file};
use sfm_migration::ident::NationalId;

/// NHN's XSD, from the one place that knows where NHN's reference files are.
fn xsd() -> PathBuf {
    samples::sample_path("FmSfmExportImportFormatDefinition.xsd")
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Decrypts one envelope with the openssl command line alone: RSA-OAEP (SHA-512, MGF1 SHA-512) for
/// the content key, then AES-256-CBC. Only the byte offsets come from the header parser.
fn openssl_decrypt(work: &Path, key_pem: &Path, file: &Path) -> Vec<u8> {
    let data = std::fs::read(file).unwrap();
    let header = parse_header(&data).expect("well-formed envelope header");
    let key_end = 12 + header.encrypted_key_len as usize;
    std::fs::write(work.join("ek.bin"), &data[12..key_end]).unwrap();
    let iv = hex::encode(&data[key_end..key_end + 16]);
    std::fs::write(work.join("ct.bin"), &data[header.content_offset..]).unwrap();
    let key = run(
        work,
        "openssl",
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            key_pem.to_str().unwrap(),
            "-in",
            "ek.bin",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha512",
            "-pkeyopt",
            "rsa_mgf1_md:sha512",
        ],
    );
    assert_eq!(key.len(), 32, "the content key is AES-256");
    run(
        work,
        "openssl",
        &[
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &hex::encode(&key),
            "-iv",
            &iv,
            "-in",
            "ct.bin",
        ],
    )
}

fn options(seed: u64, threads: usize) -> ExportOptions {
    ExportOptions {
        patients: 23,
        users: 12,
        reports: 2,
        mean_patient_bytes: 24 * 1024,
        spread: 0.6,
        seed,
        organisation_number: Some("974600951".into()),
        her_id: Some("8139412".into()),
        patients_per_folder: 10,
        threads,
    }
}

#[test]
fn export_decrypts_with_openssl_and_validates_against_nhn_xsd() {
    sfm_migration::tls::install_crypto_provider();
    let xsd = xsd();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let pair = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let key_pem = work.join("key.pem");
    std::fs::write(&key_pem, &pair.private_key_pem).unwrap();
    let certificate = RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap();
    let out = work.join("export");
    let opts = options(42, 3);
    let summary = write_export(&opts, &certificate, &out, &|_| {}).unwrap();
    assert_eq!(summary.patients, 23);

    // Layout: 23 patients at 10 per folder is Patients0..2; the index names exactly those files.
    let layout = scan(&out).unwrap();
    assert!(layout.is_valid(), "layout problems: {:?}", layout.problems);
    assert_eq!(layout.patients.len(), 23);
    assert_eq!(layout.reports.len(), 2);
    let index_text = std::fs::read(out.join("Index.txt")).unwrap();
    assert!(index_text.windows(2).filter(|w| w == b"\r\n").count() == 23);
    assert!(
        !index_text
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
    );
    let index = layout.index.as_ref().unwrap();
    let indexed: BTreeSet<String> = index.entries.iter().map(|e| e.path.clone()).collect();
    let on_disk: BTreeSet<String> = layout.patients.iter().map(|p| p.index_path()).collect();
    assert_eq!(indexed, on_disk);
    assert!(indexed.iter().all(|p| p.contains('\\')));
    for folder in 0..3 {
        let count = std::fs::read_dir(out.join(format!("Patients{folder}")))
            .unwrap()
            .count();
        assert_eq!(count, if folder < 2 { 10 } else { 3 });
    }

    // Organisation file: openssl decrypts, unzip unpacks, xmllint validates.
    let org_dir = work.join("org");
    std::fs::create_dir(&org_dir).unwrap();
    let org_zip = openssl_decrypt(work, &key_pem, &out.join("ExportData.dat"));
    std::fs::write(org_dir.join("org.zip"), &org_zip).unwrap();
    run(&org_dir, "unzip", &["-q", "org.zip"]);
    run(
        &org_dir,
        "xmllint",
        &[
            "--noout",
            "--schema",
            xsd.to_str().unwrap(),
            "ExportData.xml",
        ],
    );
    let org = read_organisation_file(&org_zip, &Default::default()).unwrap();
    assert!(org.deviations.is_empty(), "{:?}", org.deviations);
    assert_eq!(org.organisation.users.len(), 12);
    assert_eq!(
        org.organisation.institutions[0].organisation_number(),
        Some("974600951")
    );
    assert_eq!(org.organisation.reports.len(), 2);
    // Reports as NHN's sample names them (`RapportFil` `Reports0\<id>.xps`), each travelling as
    // `Reports0\<id>.rpt`, a zip holding `<id>.xps`: every named report is in a file.
    let report_files: Vec<String> = layout
        .reports
        .iter()
        .map(|p| {
            p.strip_prefix(&out)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('/', "\\")
        })
        .collect();
    for report in &org.organisation.reports {
        assert_eq!(report.file, format!("Reports0\\{}.xps", report.id));
        assert!(report_files.contains(&format!("Reports0\\{}.rpt", report.id)));
    }
    assert_eq!(
        reports_never_uploaded(
            org.organisation.reports.iter().map(|r| r.file.as_str()),
            report_files.iter().map(String::as_str)
        ),
        Vec::<String>::new()
    );
    let user_hprs: BTreeSet<String> = org
        .organisation
        .users
        .iter()
        .filter_map(|u| u.hpr_number().map(str::to_owned))
        .collect();
    assert!(user_hprs.len() >= 9, "doctors and nurses carry HPR numbers");
    for user in &org.organisation.users {
        let id = NationalId::parse(user.national_id().expect("users have an FNR")).unwrap();
        assert!(id.synthetic);
    }

    // Every patient: openssl, unzip, xmllint, and our parser.
    let keys = DecryptionKeys::from_pkcs8_pem(&[pair.private_key_pem.as_bytes()]).unwrap();
    let mut patient_documents = Vec::new();
    let mut sizes = Vec::new();
    for (n, patient) in layout.patients.iter().enumerate() {
        let dir = work.join(format!("p{n}"));
        std::fs::create_dir(&dir).unwrap();
        let zip = openssl_decrypt(work, &key_pem, &patient.path);
        assert_eq!(
            keys.decrypt(&std::fs::read(&patient.path).unwrap())
                .unwrap()
                .content,
            zip,
            "our decryption and openssl's agree"
        );
        std::fs::write(dir.join("p.zip"), &zip).unwrap();
        run(&dir, "unzip", &["-q", "p.zip"]);
        patient_documents.push(dir.join("PatientData.xml"));
        let file = read_patient_file(&zip, &Default::default()).unwrap();
        assert!(file.deviations.is_empty(), "{:?}", file.deviations);
        assert_eq!(
            file.patient.id, patient.id,
            "the file is named by the patient id"
        );
        assert!(!file.messages.is_empty());
        let fnr = file.patient.demographics.national_id().unwrap();
        assert!(NationalId::parse(fnr).unwrap().synthetic);
        for hpr in file.patient.referenced_hpr_numbers() {
            assert!(user_hprs.contains(hpr), "a referenced HPR is a user's");
        }
        assert!(!file.patient.referenced_hpr_numbers().is_empty());
        sizes.push(file.documents.iter().map(|d| d.data.len()).sum::<usize>());
    }
    let mut args = vec!["--noout", "--schema", xsd.to_str().unwrap()];
    let paths: Vec<String> = patient_documents
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    run(work, "xmllint", &args);
    // Reports decrypt too, each to a zip holding the document its name promises.
    for report in &layout.reports {
        let zip = openssl_decrypt(work, &key_pem, report);
        let archive =
            sfm_migration::format::archive::read_archive(&zip, &Default::default()).unwrap();
        let stem = report.file_stem().unwrap().to_str().unwrap();
        assert!(archive.get(&format!("{stem}.xps")).is_some());
    }

    // Sizes follow the mean and the spread.
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    assert!(
        (16 * 1024..=34 * 1024).contains(&mean),
        "mean XML {mean} bytes"
    );
    assert!(sizes.iter().max() > sizes.iter().min());

    // Same seed: the same plaintext, whatever the thread count; another seed: different data.
    let again = work.join("again");
    write_export(&options(42, 1), &certificate, &again, &|_| {}).unwrap();
    assert_eq!(
        std::fs::read(out.join("Index.txt")).unwrap(),
        std::fs::read(again.join("Index.txt")).unwrap()
    );
    for relative in [
        "ExportData.dat",
        &layout.patients[7].index_path().replace('\\', "/"),
    ] {
        let first = keys
            .decrypt(&std::fs::read(out.join(relative)).unwrap())
            .unwrap();
        let second = keys
            .decrypt(&std::fs::read(again.join(relative)).unwrap())
            .unwrap();
        assert_eq!(first.content, second.content, "{relative}");
        assert_ne!(
            std::fs::read(out.join(relative)).unwrap(),
            std::fs::read(again.join(relative)).unwrap(),
            "each envelope has a fresh content key and IV"
        );
    }
    let org_model = sfm_migration::export::organisation(&options(42, 1)).unwrap();
    let other = sfm_migration::export::organisation(&options(43, 1)).unwrap();
    assert_ne!(
        patient_zip(&options(42, 1), &org_model, 3).unwrap().0,
        patient_zip(&options(43, 1), &other, 3).unwrap().0
    );

    // A folder that already holds an export is refused and left as it was.
    let before = std::fs::read(out.join("Index.txt")).unwrap();
    assert!(write_export(&opts, &certificate, &out, &|_| {}).is_err());
    assert_eq!(before, std::fs::read(out.join("Index.txt")).unwrap());
}

#[path = "common/xsd_corpus.rs"]
mod xsd_corpus;

/// Our verdict on a document: libxml2 under NHN's XSD through the parsers the API runs. `true`
/// where it validates (no deviation).
fn our_verdict(kind: xsd_corpus::Kind, xml: &[u8]) -> bool {
    use sfm_migration::format::xml::{XmlLimits, parse_organisation, parse_patient};
    let limits = XmlLimits::default();
    match kind {
        xsd_corpus::Kind::Patient => parse_patient(xml, &limits).unwrap().deviations.is_empty(),
        xsd_corpus::Kind::Organisation => parse_organisation(xml, &limits)
            .unwrap()
            .deviations
            .is_empty(),
    }
}

/// The corpus of issue #16: the mended sample patient and NHN's organisation file validate, every
/// variant departs for its own reason, and on each our verdict is xmllint's.
#[test]
fn on_the_corpus_our_verdict_is_xmllints() {
    use xsd_corpus::{Kind, invalid_variants, mended_patient_xml, organisation_xml};
    let tmp = tempfile::tempdir().unwrap();
    let mut documents = vec![
        ("unchanged patient", Kind::Patient, mended_patient_xml()),
        (
            "unchanged organisation",
            Kind::Organisation,
            organisation_xml(),
        ),
    ];
    let variants = invalid_variants();
    let reasons: BTreeSet<&str> = variants.iter().map(|v| v.reason).collect();
    assert_eq!(reasons.len(), variants.len(), "one reason per variant");
    assert!(variants.len() >= 16);
    documents.extend(variants.into_iter().map(|v| (v.reason, v.kind, v.xml)));
    let files: Vec<PathBuf> = documents
        .iter()
        .enumerate()
        .map(|(n, (_, _, xml))| {
            let path = tmp.path().join(format!("document{n}.xml"));
            std::fs::write(&path, xml).unwrap();
            path
        })
        .collect();
    let xmllint = xsd_corpus::xmllint_verdicts(&xsd(), &files);
    for ((reason, kind, xml), xmllint) in documents.iter().zip(xmllint) {
        let expected = reason.starts_with("unchanged");
        assert_eq!(xmllint, expected, "xmllint on {reason}");
        assert_eq!(our_verdict(*kind, xml.as_bytes()), xmllint, "{reason}");
    }
}

/// Every document NHN's XSD covers in an export of 200 patients: our verdict is xmllint's (both
/// accept them all).
#[test]
fn on_an_export_of_200_patients_our_verdict_is_xmllints() {
    sfm_migration::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let pair = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let certificate = RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap();
    let keys = DecryptionKeys::from_pkcs8_pem(&[pair.private_key_pem.as_bytes()]).unwrap();
    let out = tmp.path().join("export");
    let opts = ExportOptions {
        patients: 200,
        patients_per_folder: 100,
        mean_patient_bytes: 12 * 1024,
        ..options(7, 2)
    };
    write_export(&opts, &certificate, &out, &|_| {}).unwrap();
    let layout = scan(&out).unwrap();
    assert_eq!(layout.patients.len(), 200);
    let mut documents = Vec::new();
    let plain = |path: &Path| keys.decrypt(&std::fs::read(path).unwrap()).unwrap().content;
    let read = |zip: &[u8], name: &str| {
        sfm_migration::format::archive::read_archive(zip, &Default::default())
            .unwrap()
            .get(name)
            .unwrap()
            .data
            .clone()
    };
    documents.push((
        xsd_corpus::Kind::Organisation,
        read(&plain(&out.join("ExportData.dat")), "ExportData.xml"),
    ));
    for patient in &layout.patients {
        documents.push((
            xsd_corpus::Kind::Patient,
            read(&plain(&patient.path), "PatientData.xml"),
        ));
    }
    let files: Vec<PathBuf> = documents
        .iter()
        .enumerate()
        .map(|(n, (_, xml))| {
            let path = tmp.path().join(format!("document{n}.xml"));
            std::fs::write(&path, xml).unwrap();
            path
        })
        .collect();
    let xmllint = xsd_corpus::xmllint_verdicts(&xsd(), &files);
    assert_eq!(xmllint.len(), 201);
    for ((kind, xml), xmllint) in documents.iter().zip(xmllint) {
        assert!(xmllint, "xmllint accepts what sfm-export writes");
        assert_eq!(our_verdict(*kind, xml), xmllint);
    }
}
