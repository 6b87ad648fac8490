//! The API's per-file pipeline: NHN's samples in the envelope through `ingest::prepare` (decrypt,
//! unzip, parse, the XSD check, the data quality checks that need no database) under lenient and
//! strict policies, each check's refusal with its code, and (against a real PostgreSQL, as
//! `hack/postgres.sh` starts it) the XSD corpus of issue #16 through `prepare` and `store`, the two
//! steps of the API's ingest.

#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/samples.rs"]
mod samples;
#[path = "common/xsd_corpus.rs"]
mod xsd_corpus;

use samples::*;
use sfm_migration::api::ingest::{Claimed, Prepared, Refusal, digest, prepare, store};
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
    // Every kind of departure, where and why (libxml2's reason), with how often it occurs.
    for kind in [
        "13 x PasientExport/Meldinger/Melding/Korrespondance: This element is not expected. Expected is ( Id ).",
        "66 x PasientExport/Behandlinger/Legemiddelbehandling/Prescription/Brukere: This element is not expected. Expected is ( InVib ).",
        "; PasientExport/Behandlinger/VaksineBehandling/Prescription/Brukere: This element is not expected. Expected is ( InVib ).",
    ] {
        assert!(rejection.message.contains(kind), "{}", rejection.message);
    }
    assert!(
        rejection
            .message
            .starts_with("80 departure(s) from NHN's XSD")
    );
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

fn strict() -> ValidationPolicy {
    ValidationPolicy {
        schema_check: SchemaCheck::Strict,
        ..lenient()
    }
}

/// The sample patient's files with `PatientData.xml` replaced by `xml` under the Id `guid`.
fn patient_zip_of(xml: &str, guid: &str) -> Vec<u8> {
    let xml = xml.replace(PATIENT_GUID, guid);
    patient_zip_with(|entries| {
        for (name, data) in entries.iter_mut() {
            if name == PATIENT_DOCUMENT {
                *data = xml.clone().into_bytes();
            }
        }
    })
}

/// Values the corpus plants and names and numbers of the sample: none may reach a refusal.
const PLANTED: &[&str] = &[
    "three",
    "99999999999",
    "1,5",
    "nei",
    "2021-02-30",
    "yesterday",
    "kanskje",
    "Helskog",
    "Sunniva",
    PATIENT_FNR,
];

fn claimed(name: &str, file_type: FileType, data: &[u8]) -> Claimed {
    Claimed {
        file_name: name.to_owned(),
        file_type: file_type.as_str().to_owned(),
        migration_key_id: "key1".into(),
        helseid_client_id: None,
        sha256: digest(data),
        size: data.len() as i64,
        completed_at: chrono::Utc::now(),
    }
}

/// `prepare` and `store` in one transaction, as the API's ingest runs them; the deviations recorded
/// for the file.
async fn ingest(
    pool: &sqlx::PgPool,
    keys: &Keys,
    db: &MigrationDatabase,
    file_type: FileType,
    name: &str,
    zip: &[u8],
) -> Result<i64, Refusal> {
    let file = envelope::encrypt(zip, &keys.recipient, "zip").unwrap();
    let prepared = prepare(
        &keys.keys,
        &file,
        file_type,
        name,
        &FormatLimits::default(),
        db,
    )?;
    let users = sfm_migration::api::ingest::KnownUsers::default();
    let mut tx = pool.begin().await.unwrap();
    let written = postgres::guard_read(&mut tx).await;
    store(
        &mut tx,
        db,
        None,
        &claimed(name, file_type, &file),
        prepared,
        written,
        &users,
    )
    .await
    .unwrap()?;
    tx.commit().await.unwrap();
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM sfm.deviations d JOIN sfm.stored_files f ON f.id = d.stored_file_id
          WHERE f.file_name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap())
}

/// A new database at the latest schema with the sample organisation file stored (its users are the
/// ones a patient's HPR numbers must name).
async fn organisation_stored(pool: &sqlx::PgPool, keys: &Keys, db: &MigrationDatabase) {
    sfm_migration::postgres::migrate_to(pool, sfm_migration::postgres::latest_version())
        .await
        .unwrap();
    let org = ingest(
        pool,
        keys,
        db,
        FileType::ExportData,
        "ExportData.dat",
        &organisation_zip(),
    )
    .await;
    assert_eq!(org, Ok(0), "the organisation file validates");
}

fn assert_strict_refusal(refusal: &Refusal, reason: &str, root: &str) {
    assert_eq!(
        refusal.code,
        ProblemCode::XmlSchema,
        "{reason}: {refusal:?}"
    );
    assert!(
        refusal.message.contains(&format!("{root}/")),
        "{reason}: the refusal names a path: {}",
        refusal.message
    );
    for value in PLANTED {
        assert!(
            !refusal.message.contains(value),
            "{reason}: `{value}` leaked into {}",
            refusal.message
        );
    }
}

/// Issue #16: every variant of the corpus (each rejected by `xmllint --schema` for its own reason,
/// see tests/export_xsd.rs) is refused by a Strict database, naming where and why, and stored with
/// its deviations by a Lenient one; the unchanged files are stored by both without deviations.
#[test]
fn xsd_departures_are_refused_strict_and_stored_lenient() {
    let keys = keys();
    let lenient_db = database(SAMPLE_ORGANISATION_NUMBER, lenient());
    let strict_db = database(SAMPLE_ORGANISATION_NUMBER, strict());
    let variants = xsd_corpus::invalid_variants();
    let patient = xsd_corpus::mended_patient_xml();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Patients: one database per policy; each file under its own Id.
        for db in [&lenient_db, &strict_db] {
            let (keys, variants, patient) = (&keys, &variants, &patient);
            postgres::with_database(|test| async move {
                organisation_stored(&test.pool, keys, db).await;
                let guid = uuid::Uuid::new_v4().to_string();
                let name = format!("Patients0\\{guid}.pat");
                let unchanged = ingest(
                    &test.pool,
                    keys,
                    db,
                    FileType::Patient,
                    &name,
                    &patient_zip_of(patient, &guid),
                )
                .await;
                assert_eq!(
                    unchanged,
                    Ok(0),
                    "the unchanged patient is stored without deviations"
                );
                let strict = db.spec.validation.schema_check == SchemaCheck::Strict;
                let mut stored = 1;
                for variant in variants
                    .iter()
                    .filter(|v| v.kind == xsd_corpus::Kind::Patient)
                {
                    let guid = uuid::Uuid::new_v4().to_string();
                    let name = format!("Patients0\\{guid}.pat");
                    let outcome = ingest(
                        &test.pool,
                        keys,
                        db,
                        FileType::Patient,
                        &name,
                        &patient_zip_of(&variant.xml, &guid),
                    )
                    .await;
                    if strict {
                        assert_strict_refusal(
                            &outcome.unwrap_err(),
                            variant.reason,
                            "PasientExport",
                        );
                    } else {
                        let deviations =
                            outcome.unwrap_or_else(|r| panic!("{}: {r:?}", variant.reason));
                        assert!(
                            deviations > 0,
                            "{}: stored with its deviations",
                            variant.reason
                        );
                        stored += 1;
                    }
                }
                let patients: i64 = sqlx::query_scalar("SELECT count(*) FROM sfm.patients")
                    .fetch_one(&test.pool)
                    .await
                    .unwrap();
                assert_eq!(patients, stored);
            })
            .await;
        }
        // Organisation files: each in a database of its own.
        for variant in variants
            .iter()
            .filter(|v| v.kind == xsd_corpus::Kind::Organisation)
        {
            let zip = zip_entries(&[("ExportData.xml".into(), variant.xml.clone().into_bytes())]);
            for db in [&lenient_db, &strict_db] {
                let (keys, zip) = (&keys, &zip);
                postgres::with_database(|test| async move {
                    sfm_migration::postgres::migrate_to(
                        &test.pool,
                        sfm_migration::postgres::latest_version(),
                    )
                    .await
                    .unwrap();
                    let outcome = ingest(
                        &test.pool,
                        keys,
                        db,
                        FileType::ExportData,
                        "ExportData.dat",
                        zip,
                    )
                    .await;
                    if db.spec.validation.schema_check == SchemaCheck::Strict {
                        assert_strict_refusal(
                            &outcome.unwrap_err(),
                            variant.reason,
                            "ExportImport",
                        );
                    } else {
                        assert!(
                            outcome.unwrap() > 0,
                            "{}: stored with its deviations",
                            variant.reason
                        );
                    }
                })
                .await;
            }
        }
    });
}

/// Not well-formed XML is refused whatever the policy: an element name that starts with a digit
/// (which the streaming parser let through) is refused by libxml2, without quoting it.
#[test]
fn not_well_formed_xml_is_refused_in_both_modes() {
    let keys = keys();
    let guid = uuid::Uuid::new_v4().to_string();
    let xml = xsd_corpus::mended_patient_xml().replacen(
        "<Behandlinger>",
        "<01019912345/><Behandlinger>",
        1,
    );
    let zip = patient_zip_of(&xml, &guid);
    for policy in [lenient(), strict()] {
        let db = database(SAMPLE_ORGANISATION_NUMBER, policy);
        let refusal = run(
            &keys,
            &zip,
            FileType::Patient,
            &format!("Patients0\\{guid}.pat"),
            &db,
        )
        .err()
        .expect("refused");
        assert_eq!(refusal.code, ProblemCode::XmlMalformed, "{refusal:?}");
        assert!(
            refusal.message.contains("not well-formed"),
            "{}",
            refusal.message
        );
        assert!(
            !refusal.message.contains("01019912345"),
            "{}",
            refusal.message
        );
    }
}

/// What a database holds of its patients, without the ids it generated: each row of the patient
/// tables and each patient document (name, kind, digest, size and its message's FM id) as text.
async fn patient_rows(pool: &sqlx::PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT row(fm_id, family_name, middle_name, given_name, sex_code, date_of_birth, gp_hpr,
                    multidose_hpr, plo_her_id, source_file_name)::text FROM sfm.patients",
        "SELECT row(type_code, type_system, value)::text FROM sfm.patient_identifiers",
        "SELECT row(fm_id, group_id, head_of_history, last_updated_on, registered_by, discarded,
                    deleted_reason, deleted_by)::text FROM sfm.allergies",
        "SELECT row(kind, lib_id, started_on, prescription_id)::text FROM sfm.treatments",
        "SELECT row(fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at,
                    file_name)::text FROM sfm.messages",
        "SELECT row(d.kind, d.entry_name, d.size_bytes, octet_length(d.content),
                    encode(d.sha256, 'hex'), encode(sha256(d.content), 'hex'), m.fm_id)::text
           FROM sfm.documents d LEFT JOIN sfm.messages m ON m.id = d.message_id
          WHERE d.patient_id IS NOT NULL",
    ] {
        let mut table: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .fetch_all(pool)
            .await
            .unwrap();
        table.sort();
        rows.push(format!("{} rows", table.len()));
        rows.extend(table);
    }
    rows
}

/// A re-export of a patient (same Id, same file name, other content) replaces what the first
/// version stored: the database then holds exactly what the new version alone would give, nothing
/// of the old version's rows is left, and the audit trail keeps both files.
#[test]
fn a_changed_patient_sent_again_replaces_its_rows() {
    let keys = keys();
    let db = database(SAMPLE_ORGANISATION_NUMBER, lenient());
    let first = xsd_corpus::mended_patient_xml();
    let vaccine = first.find("<VaksineBehandling>").expect("a vaccine");
    let end = first.find("</VaksineBehandling>").unwrap() + "</VaksineBehandling>".len();
    // The second version: the vaccine is gone and a medicine started on another day.
    let mut second = format!("{}{}", &first[..vaccine], &first[end..]);
    let started = second.find("<DatoOppstart>").expect("a start date");
    second.replace_range(
        started..started + "<DatoOppstart>2000-01-01".len(),
        "<DatoOppstart>2000-01-01",
    );
    assert_ne!(second, first);
    let name = patient_name();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (keys, db, name) = (&keys, &db, name.as_str());
    // The patient rows after ingesting these versions in turn into a new database; None when
    // PostgreSQL tests are skipped.
    let stored = |versions: Vec<String>| async move {
        let mut rows = None;
        postgres::with_database(|test| {
            let rows = &mut rows;
            async move {
                organisation_stored(&test.pool, keys, db).await;
                for xml in &versions {
                    let zip = patient_zip_of(xml, PATIENT_GUID);
                    let outcome = ingest(&test.pool, keys, db, FileType::Patient, name, &zip).await;
                    assert_eq!(outcome, Ok(0), "stored without deviations");
                }
                let files: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sfm.stored_files WHERE kind = 'patient'",
                )
                .fetch_one(&test.pool)
                .await
                .unwrap();
                assert_eq!(files, versions.len() as i64, "each file in the audit trail");
                *rows = Some(patient_rows(&test.pool).await);
            }
        })
        .await;
        rows
    };
    runtime.block_on(async {
        let Some(resent) = stored(vec![first.clone(), second.clone()]).await else {
            return;
        };
        let alone = stored(vec![second.clone()]).await.unwrap();
        let original = stored(vec![first.clone()]).await.unwrap();
        assert_eq!(resent, alone, "the re-export left other rows than its own");
        assert_ne!(resent, original);
        assert_eq!(resent[0], "1 rows", "one patient");
        assert!(!resent.iter().any(|row| row.starts_with("(vaccine,")));
        assert!(original.iter().any(|row| row.starts_with("(vaccine,")));
    });
}
