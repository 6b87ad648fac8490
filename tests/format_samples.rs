//! The FM export format against NHN's real sample files, and against hostile input: zip bombs,
//! path traversal, DOCTYPEs and entity expansion, deep nesting, and patient files whose message
//! files do not match their `Meldinger` list.
//!
//! Expected counts come from counting tags in the raw XML here, independently of the parser.

#[path = "common/samples.rs"]
mod samples;

use samples::*;
use std::io::{Cursor, Read, Write};

use sfm_migration::format::archive::{
    ArchiveError, ArchiveLimits, UnsafeNameReason, read_archive, write_archive,
};
use sfm_migration::format::index::{IndexEntryKind, parse_index};
use sfm_migration::format::patient_file::{
    FormatError, FormatLimits, PATIENT_DOCUMENT, read_organisation_file, read_patient_file,
};
use sfm_migration::format::xml::{MessageKind, XmlError};
use sfm_migration::model::TreatmentKind;

const NS: &str = "http://www.kith.no/xmlstds/eresept/forskrivningsmodul/export/2019-11-13";

/// One file of a zip, read with the zip crate directly (not with the code under test).
fn raw_entry(zip: &[u8], name: &str) -> String {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    let mut text = String::new();
    archive
        .by_name(name)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// A zip written with the zip crate directly, so names the exporter would refuse can be made.
fn raw_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A zip holding only a `PatientData.xml` with this content.
fn patient_document_zip(xml: &str) -> Vec<u8> {
    write_archive(&[(PATIENT_DOCUMENT, xml.as_bytes())]).unwrap()
}

fn minimal_patient(body: &str) -> String {
    format!(
        r#"<PasientExport xmlns="{NS}"><Id>{PATIENT_GUID}</Id><DemografiskInfo><FamilyName>A</FamilyName><GivenName>B</GivenName><Ident><Id>1</Id><TypeId V="XXX" S="2.16.578.1.12.4.1.1.8116" DN="Annet"/></Ident></DemografiskInfo>{body}</PasientExport>"#
    )
}

// ---- the real samples ----

#[test]
fn the_organisation_sample_parses_without_deviations() {
    let zip = organisation_zip();
    let xml = raw_entry(&zip, "ExportData.xml");
    let file = read_organisation_file(&zip, &FormatLimits::default()).unwrap();
    // xmllint --schema FmSfmExportImportFormatDefinition.xsd: "ExportData.xml validates".
    assert_eq!(file.deviations, []);
    let organisation = &file.organisation;
    assert_eq!(organisation.users.len(), count(&xml, "<Helseperson>"));
    assert_eq!(organisation.users.len(), 7);
    assert_eq!(
        organisation.institutions.len(),
        count(&xml, "<Institusjon>")
    );
    assert_eq!(organisation.local_drugs, count(&xml, "<LokaltLegemiddel>"));
    assert_eq!(
        organisation.local_compounded_drugs,
        count(&xml, "<LokaltMagistreltLegemiddel>")
    );
    assert_eq!(organisation.reports.len(), count(&xml, "<Rapport>"));
    // Each inbox item has exactly one LegeBrukerId (inbox items also hold a `Melding` text child,
    // so `<Melding>` cannot be counted).
    assert_eq!(organisation.inbox_items, count(&xml, "<LegeBrukerId>"));
    assert_eq!(organisation.inbox_items, 939);

    let users_with_hpr = organisation
        .users
        .iter()
        .filter(|u| u.hpr_number().is_some())
        .count();
    assert_eq!(users_with_hpr, count(&xml, r#"<TypeId V="HPR""#));
    let institution = &organisation.institutions[0];
    let org_number = institution.organisation_number().unwrap();
    assert!(xml.contains(&format!("<Id>{org_number}</Id><TypeId V=\"ENH\"")));
    let her_id = institution.her_id().unwrap();
    assert!(xml.contains(&format!("<Id>{her_id}</Id><TypeId V=\"HER\"")));
    assert_eq!(file.documents.len(), 1);
}

#[test]
fn the_patient_sample_parses_with_its_known_deviations() {
    let zip = patient_zip();
    let xml = raw_entry(&zip, PATIENT_DOCUMENT);
    let file = read_patient_file(&zip, &FormatLimits::default()).unwrap();
    let patient = &file.patient;
    assert_eq!(patient.id.to_string(), PATIENT_GUID);
    let fnr = patient.demographics.national_id().unwrap();
    assert!(xml.contains(&format!("<Id>{fnr}</Id><TypeId V=\"FNR\"")));
    assert_eq!(
        patient.demographics.identifiers.len(),
        count(&xml, "<Ident>")
    );

    assert_eq!(patient.messages.len(), count(&xml, "<Melding>"));
    assert_eq!(patient.messages.len(), 113);
    assert_eq!(file.messages.len(), 113);
    assert_eq!(file.documents.len(), 114);
    let msg_heads = file
        .messages
        .iter()
        .filter(|m| m.info.kind == MessageKind::MsgHead);
    let msg_head_files = file
        .documents
        .iter()
        .filter(|d| String::from_utf8_lossy(&d.data).contains("<MsgHead"))
        .count();
    assert_eq!(msg_heads.count(), msg_head_files);

    assert_eq!(patient.allergies.len(), count(&xml, "<Legemiddelreaksjon>"));
    let of_kind = |kind| patient.treatments.iter().filter(|t| t.kind == kind).count();
    assert_eq!(
        of_kind(TreatmentKind::Drug),
        count(&xml, "<Legemiddelbehandling>")
    );
    assert_eq!(of_kind(TreatmentKind::Drug), 15);
    assert_eq!(
        of_kind(TreatmentKind::Vaccine),
        count(&xml, "<VaksineBehandling>")
    );
    let prescriptions: usize = patient
        .treatments
        .iter()
        .map(|t| t.prescriptions.len())
        .sum();
    assert_eq!(prescriptions, count(&xml, "<Prescription>"));
    assert_eq!(
        patient.multidose_doctor.as_ref().map(|d| d.hpr_id.as_str()),
        xml.split("<MultidoseAnsvarligLege><HprId>")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
    );

    // The sample fails strict XSD validation exactly as xmllint says: 80 errors, the first per
    // element: 67 times "Element 'Brukere': This element is not expected. Expected is ( InVib )" and
    // 13 times "Element 'Korrespondance': ... Expected is ( Id )".
    assert_eq!(file.deviations.len(), 80, "{:#?}", file.deviations);
    let brukere: Vec<_> = file
        .deviations
        .iter()
        .filter(|d| d.message == "This element is not expected. Expected is ( InVib ).")
        .collect();
    assert_eq!(
        brukere.len(),
        count(&xml, "<Prescription>") - count(&xml, "<InVib>")
    );
    assert!(brukere.iter().all(|d| {
        d.path_pattern() == "PasientExport/Behandlinger/Legemiddelbehandling/Prescription/Brukere"
            || d.path_pattern()
                == "PasientExport/Behandlinger/VaksineBehandling/Prescription/Brukere"
    }));
    let without_id = file
        .deviations
        .iter()
        .filter(|d| {
            d.path.ends_with("/Korrespondance")
                && d.message == "This element is not expected. Expected is ( Id )."
        })
        .count();
    assert_eq!(
        without_id,
        count(&xml, "<Melding>") - count(&xml, "<Melding><Id>")
    );
    assert_eq!(
        patient.messages.iter().filter(|m| m.id.is_none()).count(),
        without_id
    );
}

#[test]
fn the_patient_refers_only_to_users_of_the_organisation() {
    let organisation = read_organisation_file(&organisation_zip(), &FormatLimits::default())
        .unwrap()
        .organisation;
    let patient = read_patient_file(&patient_zip(), &FormatLimits::default())
        .unwrap()
        .patient;
    let hpr_numbers: Vec<&str> = organisation
        .users
        .iter()
        .filter_map(|u| u.hpr_number())
        .collect();
    let user_ids: Vec<&str> = organisation.users.iter().map(|u| u.id.as_str()).collect();
    assert!(!patient.referenced_hpr_numbers().is_empty());
    for hpr in patient.referenced_hpr_numbers() {
        assert!(hpr_numbers.contains(&hpr), "an HPR number is not a user's");
    }
    for id in patient.referenced_user_ids() {
        assert!(user_ids.contains(&id), "a user id is not a user's");
    }
}

#[test]
fn debug_of_parsed_samples_shows_no_personal_data() {
    let zip = patient_zip();
    let xml = raw_entry(&zip, PATIENT_DOCUMENT);
    let file = read_patient_file(&zip, &FormatLimits::default()).unwrap();
    let printed = format!("{file:?}");
    let family_name = xml
        .split("<FamilyName>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap();
    let fnr = file.patient.demographics.national_id().unwrap();
    assert!(!printed.contains(family_name));
    assert!(!printed.contains(fnr));
    let organisation = read_organisation_file(&organisation_zip(), &FormatLimits::default())
        .unwrap()
        .organisation;
    let printed = format!("{organisation:?}");
    for user in &organisation.users {
        for number in user.hpr_number().into_iter().chain(user.national_id()) {
            assert!(!printed.contains(number));
        }
    }
}

#[test]
fn the_real_index_round_trips_byte_for_byte() {
    let bytes = sample("Index.txt");
    let index = parse_index(&bytes).unwrap();
    assert_eq!(
        index.entries.len(),
        count(&String::from_utf8_lossy(&bytes), "\r\n")
    );
    assert!(
        index
            .entries
            .iter()
            .all(|e| matches!(e.kind, IndexEntryKind::Patient { folder: 0, .. }))
    );
    assert_eq!(
        index.entries[0].path,
        format!("Patients0\\{PATIENT_GUID}.pat")
    );
    assert_eq!(index.to_text().as_bytes(), bytes.as_slice());
}

#[test]
fn both_samples_survive_the_envelope() {
    use sfm_migration::format::envelope::{
        DEFAULT_EXTENSION, DecryptionKeys, RecipientCertificate, encrypt, generate_demo_key_pair,
    };
    let pair = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let certificate = RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap();
    let keys = DecryptionKeys::from_pkcs8_pem(&[pair.private_key_pem.as_bytes()]).unwrap();
    let limits = FormatLimits::default();

    let organisation = organisation_zip();
    let envelope = encrypt(&organisation, &certificate, DEFAULT_EXTENSION).unwrap();
    let decrypted = keys.decrypt(&envelope).unwrap();
    assert_eq!(decrypted.extension, "zip");
    assert_eq!(
        read_organisation_file(&decrypted.content, &limits).unwrap(),
        read_organisation_file(&organisation, &limits).unwrap()
    );

    let patient = patient_zip();
    let envelope = encrypt(&patient, &certificate, DEFAULT_EXTENSION).unwrap();
    let decrypted = keys.decrypt(&envelope).unwrap();
    let through_envelope = read_patient_file(&decrypted.content, &limits).unwrap();
    assert_eq!(
        through_envelope,
        read_patient_file(&patient, &limits).unwrap()
    );
    assert_eq!(through_envelope.patient.id.to_string(), PATIENT_GUID);
}

// ---- hostile zips ----

#[test]
fn a_zip_bomb_is_stopped_by_the_ratio_limit() {
    // 8 MiB of zeros deflate to about 8 KiB: a ratio near 1000.
    let bomb = write_archive(&[("PatientData.xml", &vec![0u8; 8 << 20])]).unwrap();
    assert!(bomb.len() < 64 * 1024);
    assert!(matches!(
        read_archive(&bomb, &ArchiveLimits::default()),
        Err(ArchiveError::RatioTooHigh { limit: 200, .. })
    ));
    assert!(matches!(
        read_patient_file(&bomb, &FormatLimits::default()),
        Err(FormatError::Archive(ArchiveError::RatioTooHigh { .. }))
    ));
}

/// Limits under which only the size limits can trip.
fn size_only_limits() -> ArchiveLimits {
    ArchiveLimits {
        max_entry_bytes: 1 << 20,
        max_total_bytes: 3 << 20,
        max_ratio: u64::MAX,
        ..ArchiveLimits::default()
    }
}

#[test]
fn entry_and_total_size_limits_hold() {
    let big = vec![b'x'; (1 << 20) + 1];
    let zip = write_archive(&[("a.xml", &big)]).unwrap();
    assert!(matches!(
        read_archive(&zip, &size_only_limits()),
        Err(ArchiveError::EntryTooLarge { limit, .. }) if limit == 1 << 20
    ));
    let part = vec![b'x'; 900 * 1024];
    let zip = write_archive(&[
        ("a.xml", &part),
        ("b.xml", &part),
        ("c.xml", &part),
        ("d.xml", &part),
    ])
    .unwrap();
    assert!(matches!(
        read_archive(&zip, &size_only_limits()),
        Err(ArchiveError::TotalTooLarge { limit }) if limit == 3 << 20
    ));
}

/// Overwrites the uncompressed size of the first entry in its local header and in the central
/// directory, as a zip bomb that lies about its size would.
fn lie_about_size(zip: &mut [u8], declared: u32) {
    let local = zip.windows(4).position(|w| w == b"PK\x03\x04").unwrap();
    zip[local + 22..local + 26].copy_from_slice(&declared.to_le_bytes());
    let central = zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    zip[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
}

#[test]
fn sizes_are_counted_while_inflating_not_taken_from_headers() {
    let mut bomb = write_archive(&[("a.xml", &vec![b'x'; 2 << 20])]).unwrap();
    lie_about_size(&mut bomb, 10);
    assert!(matches!(
        read_archive(&bomb, &size_only_limits()),
        Err(ArchiveError::EntryTooLarge { .. })
    ));
    let mut small_lie = write_archive(&[("a.xml", &[b'x'; 100])]).unwrap();
    lie_about_size(&mut small_lie, 10);
    assert!(matches!(
        read_archive(&small_lie, &ArchiveLimits::default()),
        Err(ArchiveError::SizeMismatch {
            declared: 10,
            actual: 100,
            ..
        })
    ));
}

#[test]
fn too_many_entries_are_refused_before_inflating() {
    let names: Vec<String> = (0..2_001).map(|n| format!("{n}.xml")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let zip = write_archive(&entries).unwrap();
    assert!(matches!(
        read_archive(&zip, &ArchiveLimits::default()),
        Err(ArchiveError::TooManyEntries {
            count: 2_001,
            limit: 2_000
        })
    ));
}

#[test]
fn names_that_leave_the_folder_are_refused() {
    let cases = [
        ("../PatientData.xml", UnsafeNameReason::ParentDirectory),
        ("a/../../b.xml", UnsafeNameReason::ParentDirectory),
        ("..\\b.xml", UnsafeNameReason::ParentDirectory),
        ("/etc/passwd", UnsafeNameReason::Absolute),
        ("\\Windows\\win.ini", UnsafeNameReason::Absolute),
        ("C:\\Windows\\win.ini", UnsafeNameReason::DriveOrStream),
        ("a.xml:stream", UnsafeNameReason::DriveOrStream),
        ("a\0.xml", UnsafeNameReason::Nul),
        ("a//b.xml", UnsafeNameReason::EmptySegment),
        ("./a.xml", UnsafeNameReason::CurrentDirectory),
        ("a.xml.", UnsafeNameReason::TrailingDotOrSpace),
    ];
    for (name, expected) in cases {
        let zip = raw_zip(&[(name, b"<a/>")]);
        match read_archive(&zip, &ArchiveLimits::default()) {
            Err(ArchiveError::UnsafeName { reason, .. }) => {
                assert_eq!(reason, expected, "{name:?}")
            }
            other => panic!("{name:?} gave {other:?}"),
        }
        assert!(
            write_archive(&[(name, b"<a/>")]).is_err(),
            "{name:?} was written"
        );
    }
}

#[test]
fn duplicate_and_directory_tricks_are_refused() {
    let mut zip = raw_zip(&[("a.xml", b"one"), ("b.xml", b"two")]);
    // Rename b.xml to a.xml in the local header and the central directory.
    for at in (0..zip.len() - 5).rev() {
        if &zip[at..at + 5] == b"b.xml" {
            zip[at] = b'a';
        }
    }
    assert!(matches!(
        read_archive(&zip, &ArchiveLimits::default()),
        Err(ArchiveError::DuplicateName { .. })
    ));
    let case_clash = raw_zip(&[("A.xml", b"one"), ("a.XML", b"two")]);
    assert!(matches!(
        read_archive(&case_clash, &ArchiveLimits::default()),
        Err(ArchiveError::DuplicateName { .. })
    ));
    let only_directories = raw_zip(&[("dir/", b"")]);
    assert!(matches!(
        read_archive(&only_directories, &ArchiveLimits::default()),
        Err(ArchiveError::Empty)
    ));
    let directory_with_data = raw_zip(&[("dir/", b"data")]);
    assert!(matches!(
        read_archive(&directory_with_data, &ArchiveLimits::default()),
        Err(ArchiveError::UnsupportedEntry { .. })
    ));
    let long_name = "a".repeat(300);
    assert!(matches!(
        read_archive(&raw_zip(&[(&long_name, b"x")]), &ArchiveLimits::default()),
        Err(ArchiveError::NameTooLong { len: 300, .. })
    ));
    assert!(matches!(
        read_archive(b"not a zip at all", &ArchiveLimits::default()),
        Err(ArchiveError::Malformed(_))
    ));
}

// ---- hostile XML ----

fn xml_error(result: Result<impl std::fmt::Debug, FormatError>) -> (String, XmlError) {
    match result {
        Err(FormatError::Xml { document, source }) => (document, source),
        other => panic!("expected an XML error, got {other:?}"),
    }
}

#[test]
fn a_doctype_is_refused_before_parsing() {
    let limits = FormatLimits::default();
    let internal = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE PasientExport [<!ENTITY x \"y\">]>{}",
        minimal_patient("")
    );
    let external = format!(
        "\u{feff}<!-- export --><!DOCTYPE PasientExport SYSTEM \"file:///etc/passwd\">{}",
        minimal_patient("")
    );
    for xml in [internal, external] {
        let (document, error) = xml_error(read_patient_file(&patient_document_zip(&xml), &limits));
        assert_eq!(document, PATIENT_DOCUMENT);
        assert!(matches!(error, XmlError::Doctype), "{error:?}");
    }
}

#[test]
fn a_billion_laughs_is_refused() {
    let mut entities = String::from("<!ENTITY lol0 \"lol\">");
    for level in 1..10 {
        let previous = format!("&lol{};", level - 1).repeat(10);
        entities.push_str(&format!("<!ENTITY lol{level} \"{previous}\">"));
    }
    let xml = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [{entities}]>{}",
        minimal_patient("<UstrukturertHistorikk>&lol9;</UstrukturertHistorikk>")
    );
    let (_, error) = xml_error(read_patient_file(
        &patient_document_zip(&xml),
        &FormatLimits::default(),
    ));
    assert!(matches!(error, XmlError::Doctype), "{error:?}");
}

#[test]
fn a_doctype_in_a_message_file_is_refused_and_named() {
    let mut poisoned = String::new();
    let zip = patient_zip_with(|entries| {
        let (name, data) = entries
            .iter_mut()
            .find(|(name, _)| name != PATIENT_DOCUMENT)
            .unwrap();
        poisoned = name.clone();
        let text = String::from_utf8_lossy(data).into_owned();
        let at = text
            .find("<MsgHead")
            .or_else(|| text.find("<AppRec"))
            .unwrap();
        *data = format!(
            "{}<!DOCTYPE x [<!ENTITY e \"e\">]>{}",
            &text[..at],
            &text[at..]
        )
        .into_bytes();
    });
    let (document, error) = xml_error(read_patient_file(&zip, &FormatLimits::default()));
    assert_eq!(document, poisoned);
    assert!(matches!(error, XmlError::Doctype), "{error:?}");
}

#[test]
fn nesting_10000_deep_is_refused() {
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    let xml = minimal_patient(&format!(
        "<UstrukturertHistorikk>{deep}</UstrukturertHistorikk>"
    ));
    let (_, error) = xml_error(read_patient_file(
        &patient_document_zip(&xml),
        &FormatLimits::default(),
    ));
    assert!(
        matches!(error, XmlError::TooDeep { limit: 64 }),
        "{error:?}"
    );

    let zip = patient_zip_with(|entries| {
        let (_, data) = entries
            .iter_mut()
            .find(|(name, _)| name != PATIENT_DOCUMENT)
            .unwrap();
        let text = String::from_utf8_lossy(data).into_owned();
        let at = text.rfind("</").unwrap();
        *data = format!("{}{deep}{}", &text[..at], &text[at..]).into_bytes();
    });
    let (_, error) = xml_error(read_patient_file(&zip, &FormatLimits::default()));
    assert!(matches!(error, XmlError::TooDeep { .. }), "{error:?}");
}

#[test]
fn a_missing_message_file_is_its_own_error() {
    let mut removed = String::new();
    let zip = patient_zip_with(|entries| {
        let at = entries
            .iter()
            .position(|(name, _)| name != PATIENT_DOCUMENT)
            .unwrap();
        removed = entries.remove(at).0;
    });
    match read_patient_file(&zip, &FormatLimits::default()) {
        Err(FormatError::MissingMessageFiles { names }) => assert_eq!(names, [removed]),
        other => panic!("expected missing message files, got {other:?}"),
    }
}

#[test]
fn unexplained_entries_and_a_missing_document_are_refused() {
    let zip = patient_zip_with(|entries| entries.push(("extra.xml".into(), b"<a/>".to_vec())));
    match read_patient_file(&zip, &FormatLimits::default()) {
        Err(FormatError::UnexpectedEntries { names }) => assert_eq!(names, ["extra.xml"]),
        other => panic!("expected unexpected entries, got {other:?}"),
    }
    let zip = patient_zip_with(|entries| entries.retain(|(name, _)| name != PATIENT_DOCUMENT));
    assert!(matches!(
        read_patient_file(&zip, &FormatLimits::default()),
        Err(FormatError::MissingDocument(PATIENT_DOCUMENT))
    ));
    let organisation_with_extra = write_archive(&[
        (
            "ExportData.xml",
            raw_entry(&organisation_zip(), "ExportData.xml").as_bytes(),
        ),
        ("notes.txt", b"x"),
    ])
    .unwrap();
    assert!(matches!(
        read_organisation_file(&organisation_with_extra, &FormatLimits::default()),
        Err(FormatError::UnexpectedEntries { .. })
    ));
}

#[test]
fn errors_never_quote_document_text() {
    // A broken patient whose text holds a national identity number: the error names positions
    // and markup only.
    let xml = minimal_patient("").replace("<Id>1</Id>", "<Id>09010557876</Id>")
        + "<trailing>09010557876</trailing>";
    let error = read_patient_file(&patient_document_zip(&xml), &FormatLimits::default())
        .unwrap_err()
        .to_string();
    assert!(!error.contains("09010557876"), "{error}");
}

/// The XSD check runs on many threads at once (the API's blocking pool): one compiled schema, one
/// libxml2 context per thread, and every thread's verdict is the one a single thread gives.
#[test]
fn threads_validating_at_once_agree_with_one() {
    let limits = FormatLimits::default();
    let zip = patient_zip();
    let expected = read_patient_file(&zip, &limits).unwrap().deviations;
    assert_eq!(expected.len(), 80);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    (0..5)
                        .map(|_| read_patient_file(&zip, &limits).unwrap().deviations)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            for deviations in worker.join().unwrap() {
                assert_eq!(deviations, expected);
            }
        }
    });
}
