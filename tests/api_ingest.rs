//! The API's per-file pipeline without a database: NHN's samples in the envelope through
//! `ingest::prepare` (decrypt, unzip, parse, the data quality checks that need no database) under
//! lenient and strict policies, and each check's refusal with its code.

#[path = "common/samples.rs"]
mod samples;

use samples::*;
use sfm_migration::api::ingest::{Prepared, Refusal, prepare};
use sfm_migration::contract::{FileType, ProblemCode};
use sfm_migration::crd::{
    MigrationDatabase, MigrationDatabaseSpec, Organisation, SchemaCheck, ValidationPolicy,
};
use sfm_migration::format::envelope::{
    self, DecryptionKeys, RecipientCertificate, generate_demo_key_pair,
};
use sfm_migration::format::patient_file::{FormatLimits, PATIENT_DOCUMENT};
use sfm_migration::ident::synthetic_fodselsnummer;

const PATIENT_FNR: &str = "09010557876";

fn database(organisation_number: &str, validation: ValidationPolicy) -> MigrationDatabase {
    MigrationDatabase::new(
        "test",
        MigrationDatabaseSpec {
            organisation: Organisation {
                name: "Test".into(),
                organisation_number: organisation_number.into(),
                her_id: None,
                helse_id_client_id: "test".into(),
            },
            data_model_version: 4,
            server: None,
            activation: Default::default(),
            reclaim_policy: Default::default(),
            network_policy: Default::default(),
            validation,
            helse_id_uploads: None,
        },
    )
}

struct Keys {
    keys: DecryptionKeys,
    recipient: RecipientCertificate,
}

fn keys() -> Keys {
    let pair = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    Keys {
        keys: DecryptionKeys::from_pkcs8_pem(&[pair.private_key_pem.as_bytes()]).unwrap(),
        recipient: RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap(),
    }
}

fn run(
    keys: &Keys,
    zip: &[u8],
    file_type: FileType,
    name: &str,
    db: &MigrationDatabase,
) -> Result<Prepared, Refusal> {
    let file = envelope::encrypt(zip, &keys.recipient, "zip").unwrap();
    prepare(
        &keys.keys,
        &file,
        file_type,
        name,
        &FormatLimits::default(),
        db,
    )
}

fn lenient() -> ValidationPolicy {
    ValidationPolicy::default()
}

#[test]
fn the_samples_pass_lenient_and_the_patient_fails_strict_naming_brukere() {
    let keys = keys();
    let db = database("100100614", lenient());
    let organisation = run(
        &keys,
        &organisation_zip(),
        FileType::ExportData,
        "ExportData.dat",
        &db,
    )
    .unwrap();
    assert!(
        matches!(organisation, Prepared::Organisation(ref f) if f.organisation.users.len() == 7)
    );
    let patient = run(
        &keys,
        &patient_zip(),
        FileType::Patient,
        &patient_name(),
        &db,
    )
    .unwrap();
    let Prepared::Patient(file) = patient else {
        panic!("not a patient")
    };
    assert!(file.deviations.iter().any(|d| d.path.contains("Brukere")));

    let strict = database(
        "100100614",
        ValidationPolicy {
            schema_check: SchemaCheck::Strict,
            ..lenient()
        },
    );
    let rejection = run(
        &keys,
        &patient_zip(),
        FileType::Patient,
        &patient_name(),
        &strict,
    )
    .err()
    .unwrap();
    assert_eq!(rejection.code, ProblemCode::XmlSchema);
    assert!(
        rejection.message.contains("Brukere"),
        "{}",
        rejection.message
    );
    assert!(!rejection.message.contains(PATIENT_FNR));
}

#[test]
fn data_quality_checks_refuse_with_their_codes() {
    let keys = keys();
    let db = database("100100614", lenient());
    let other_organisation = database("974760673", lenient());
    let code = |result: Result<Prepared, Refusal>| result.err().map(|r| r.code);

    assert_eq!(
        code(run(
            &keys,
            &organisation_zip(),
            FileType::ExportData,
            "ExportData.dat",
            &other_organisation
        )),
        Some(ProblemCode::DataQualityOrganisationMismatch)
    );
    // The patient's Id must be the file's name.
    assert_eq!(
        code(run(
            &keys,
            &patient_zip(),
            FileType::Patient,
            "Patients0\\1056e3cc-38fc-4e3c-8cd0-1c831db782d4.pat",
            &db
        )),
        Some(ProblemCode::DataQualityIdentifier)
    );
    // A fødselsnummer with a wrong check digit.
    let broken = format!(
        "{}{}",
        &PATIENT_FNR[..10],
        (PATIENT_FNR.as_bytes()[10] - b'0' + 1) % 10
    );
    assert_eq!(
        code(run(
            &keys,
            &patient_zip_replacing(&[(PATIENT_FNR, &broken)]),
            FileType::Patient,
            &patient_name(),
            &db
        )),
        Some(ProblemCode::DataQualityIdentifier)
    );
    // A synthetic identity: refused unless the database allows them.
    let birth = chrono::NaiveDate::from_ymd_opt(2005, 1, 9).unwrap();
    let synthetic = (0..1000)
        .find_map(|i| synthetic_fodselsnummer(birth, i))
        .unwrap();
    let zip = patient_zip_replacing(&[(PATIENT_FNR, &synthetic)]);
    assert_eq!(
        code(run(&keys, &zip, FileType::Patient, &patient_name(), &db)),
        Some(ProblemCode::DataQualitySyntheticIdentity)
    );
    let allowing = database(
        "100100614",
        ValidationPolicy {
            allow_synthetic_identities: true,
            ..lenient()
        },
    );
    assert!(run(&keys, &zip, FileType::Patient, &patient_name(), &allowing).is_ok());
    // A message file that Meldinger names is missing from the zip.
    let missing = patient_zip_with(|entries| {
        let index = entries
            .iter()
            .position(|(n, _)| n != PATIENT_DOCUMENT)
            .unwrap();
        entries.remove(index);
    });
    assert_eq!(
        code(run(
            &keys,
            &missing,
            FileType::Patient,
            &patient_name(),
            &db
        )),
        Some(ProblemCode::ArchiveContent)
    );
    // An organisation file sent as a patient.
    assert_eq!(
        code(run(
            &keys,
            &organisation_zip(),
            FileType::Patient,
            &patient_name(),
            &db
        )),
        Some(ProblemCode::ArchiveContent)
    );
    // Encrypted to someone else.
    let other = self::keys();
    let file = envelope::encrypt(&organisation_zip(), &other.recipient, "zip").unwrap();
    assert_eq!(
        prepare(
            &keys.keys,
            &file,
            FileType::ExportData,
            "ExportData.dat",
            &FormatLimits::default(),
            &db
        )
        .err()
        .map(|r| r.code),
        Some(ProblemCode::EnvelopeUndecryptable)
    );
}
