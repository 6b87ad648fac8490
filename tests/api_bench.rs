//! Benchmark of the migration API's ingest path (run by `hack/bench-api.sh`; ignored in `cargo test`).
//! Prints files/s and MB/s (of encrypted input) for each stage alone (RSA unwrap, AES, unzip, parse
//! and check, insert) and for the whole ingest path, and names the slowest stage. Figures only: it
//! asserts nothing about time.
//!
//! Input: N copies of NHN's sample patient (each with its own GUID), in the envelope, with a 2048-bit
//! key (`SFM_BENCH_KEY_BITS=4096` for the other size); `SFM_BENCH_FILES` sets N (default 200).
//! `SFM_BENCH_INPUT=export`: N patients of the flow benchmark's generator instead (`sfm-export`,
//! ~`SFM_BENCH_SIZE_KB` KB of XML each, default 100), so that the stages compare with
//! `hack/bench-flow.sh`'s end-to-end figures.

#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/samples.rs"]
mod samples;
#[path = "common/xsd_corpus.rs"]
mod xsd_corpus;

use samples::*;

use std::time::{Duration, Instant};

use sfm_migration::api::ingest::{Claimed, check_patient, prepare, store};
use sfm_migration::contract::FileType;
use sfm_migration::crd::{
    MigrationDatabase, MigrationDatabaseSpec, Organisation, SchemaCheck, ValidationPolicy,
};
use sfm_migration::export;
use sfm_migration::format::archive::read_archive;
use sfm_migration::format::envelope::{
    self, DecryptionKeys, RecipientCertificate, decrypt_content, generate_demo_key_pair,
};
use sfm_migration::format::patient_file::{FormatLimits, PATIENT_DOCUMENT, read_patient_file};
use sfm_migration::format::xml::{parse_message, parse_patient, xsd_departures};

fn database() -> MigrationDatabase {
    database_with(ValidationPolicy::default())
}

fn database_with(validation: ValidationPolicy) -> MigrationDatabase {
    MigrationDatabase::new(
        "bench",
        MigrationDatabaseSpec {
            organisation: Organisation {
                name: "Bench".into(),
                organisation_number: "100100614".into(),
                her_id: None,
                helse_id_client_id: "bench".into(),
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

fn claimed(name: &str, file_type: FileType, data: &[u8]) -> Claimed {
    Claimed {
        file_name: name.to_owned(),
        file_type: file_type.as_str().to_owned(),
        migration_key_id: "benchkey1".into(),
        helseid_client_id: None,
        sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
            .as_ref()
            .to_vec(),
        size: data.len() as i64,
        completed_at: chrono::Utc::now(),
    }
}

struct Stage {
    name: &'static str,
    took: Duration,
}

#[test]
#[ignore = "a benchmark: run by hack/bench-api.sh"]
fn ingest_path_per_stage() {
    let files: usize = std::env::var("SFM_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bits: usize = std::env::var("SFM_BENCH_KEY_BITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let pair = generate_demo_key_pair(bits, "SFM migrering").unwrap();
    let recipient = RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap();
    let keys = DecryptionKeys::from_pkcs8_pem(&[pair.private_key_pem.as_bytes()]).unwrap();
    let limits = FormatLimits::default();
    let generated = std::env::var("SFM_BENCH_INPUT").is_ok_and(|v| v == "export");
    // The generator's identities are synthetic (Test-Norge): its patients go to a database that
    // allows them, as the flow benchmark's does.
    let db = if generated {
        database_with(ValidationPolicy {
            allow_synthetic_identities: true,
            ..ValidationPolicy::default()
        })
    } else {
        database()
    };

    let (organisation, inputs): (Vec<u8>, Vec<(String, Vec<u8>)>) = if generated {
        let options = export::ExportOptions {
            patients: files,
            mean_patient_bytes: std::env::var("SFM_BENCH_SIZE_KB")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(100)
                * 1024,
            organisation_number: Some(db.spec.organisation.organisation_number.clone()),
            ..export::ExportOptions::default()
        };
        let org = export::organisation(&options).unwrap();
        let organisation = export::organisation_zip(&options, &org).unwrap();
        let inputs = (0..files)
            .map(|n| {
                let (zip, _) = export::patient_zip(&options, &org, n).unwrap();
                let guid = export::patient_id(options.seed, n);
                (
                    format!("Patients0\\{guid}.pat"),
                    envelope::encrypt(&zip, &recipient, "zip").unwrap(),
                )
            })
            .collect();
        (
            envelope::encrypt(&organisation, &recipient, "zip").unwrap(),
            inputs,
        )
    } else {
        let inputs = (0..files)
            .map(|_| {
                let guid = uuid::Uuid::new_v4().to_string();
                let zip = patient_zip_replacing(&[(PATIENT_GUID, &guid)]);
                (
                    format!("Patients0\\{guid}.pat"),
                    envelope::encrypt(&zip, &recipient, "zip").unwrap(),
                )
            })
            .collect();
        (
            envelope::encrypt(&organisation_zip(), &recipient, "zip").unwrap(),
            inputs,
        )
    };
    let megabytes = inputs.iter().map(|(_, d)| d.len()).sum::<usize>() as f64 / 1e6;

    let mut stages = Vec::new();
    let start = Instant::now();
    let unwrapped: Vec<_> = inputs
        .iter()
        .map(|(_, d)| keys.unwrap_key(d).unwrap())
        .collect();
    stages.push(Stage {
        name: "RSA unwrap",
        took: start.elapsed(),
    });

    let start = Instant::now();
    let plains: Vec<Vec<u8>> = inputs
        .iter()
        .zip(&unwrapped)
        .map(|((_, d), (header, key))| decrypt_content(header, key, d).unwrap())
        .collect();
    stages.push(Stage {
        name: "AES-256-CBC",
        took: start.elapsed(),
    });

    let start = Instant::now();
    let archives: Vec<_> = plains
        .iter()
        .map(|p| read_archive(p, &limits.archive).unwrap())
        .collect();
    stages.push(Stage {
        name: "unzip",
        took: start.elapsed(),
    });

    let patient_files: Vec<_> = plains
        .iter()
        .map(|p| read_patient_file(p, &limits).unwrap())
        .collect();
    let start = Instant::now();
    for ((name, _), archive) in inputs.iter().zip(&archives) {
        for entry in &archive.entries {
            if entry.name == PATIENT_DOCUMENT {
                parse_patient(&entry.data, &limits.xml).unwrap();
            } else {
                parse_message(&entry.data, &limits.xml).unwrap();
            }
        }
        let _ = name;
    }
    for ((name, _), file) in inputs.iter().zip(&patient_files) {
        check_patient(file, &db.spec.validation, name).unwrap();
    }
    stages.push(Stage {
        name: "parse and check",
        took: start.elapsed(),
    });

    let xsd = xsd_cost(files.min(100), &keys, &recipient, &limits);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (insert, whole) = runtime.block_on(async {
        let mut insert = Duration::ZERO;
        let mut whole = Duration::ZERO;
        for round in 0..2 {
            let keys = &keys;
            let limits = &limits;
            let db = &db;
            let inputs = &inputs;
            let organisation = &organisation;
            let mut patient_files = Some(patient_files.clone());
            let took = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
            let took_inside = took.clone();
            postgres::with_database(|test| async move {
                sfm_migration::postgres::migrate_to(
                    &test.pool,
                    sfm_migration::postgres::latest_version(),
                )
                .await
                .unwrap();
                let mut connection = test.pool.acquire().await.unwrap();
                // As the API holds it: the users' HPR numbers read once per organisation file.
                let users = sfm_migration::api::ingest::KnownUsers::default();
                let org = prepare(
                    keys,
                    organisation,
                    FileType::ExportData,
                    "ExportData.dat",
                    limits,
                    db,
                )
                .unwrap();
                let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
                let written = postgres::guard_read(&mut tx).await;
                store(
                    &mut tx,
                    db,
                    None,
                    &claimed("ExportData.dat", FileType::ExportData, organisation),
                    org,
                    written,
                    &users,
                )
                .await
                .unwrap()
                .unwrap();
                tx.commit().await.unwrap();
                let start = Instant::now();
                let prepared_files = patient_files.take().unwrap();
                for (index, (name, data)) in inputs.iter().enumerate() {
                    let prepared = if round == 0 {
                        sfm_migration::api::ingest::Prepared::Patient(Box::new(
                            prepared_files[index].clone(),
                        ))
                    } else {
                        prepare(keys, data, FileType::Patient, name, limits, db).unwrap()
                    };
                    let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
                    let written = postgres::guard_read(&mut tx).await;
                    store(
                        &mut tx,
                        db,
                        None,
                        &claimed(name, FileType::Patient, data),
                        prepared,
                        written,
                        &users,
                    )
                    .await
                    .unwrap()
                    .unwrap();
                    tx.commit().await.unwrap();
                }
                *took_inside.lock().unwrap() = start.elapsed();
                let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sfm.patients")
                    .fetch_one(&test.pool)
                    .await
                    .unwrap();
                assert_eq!(stored as usize, inputs.len());
            })
            .await;
            let took = *took.lock().unwrap();
            if round == 0 {
                insert = took;
            } else {
                whole = took;
            }
        }
        (insert, whole)
    });
    stages.push(Stage {
        name: "insert (one transaction per file)",
        took: insert,
    });

    println!(
        "\nmigration API ingest benchmark: {files} patient files ({}), {megabytes:.1} MB encrypted, RSA-{bits}, one core per stage",
        if generated {
            "the flow's generator"
        } else {
            "NHN's sample patient"
        }
    );
    println!(
        "{:<36} {:>10} {:>10} {:>10}",
        "stage", "seconds", "files/s", "MB/s"
    );
    for stage in &stages {
        let s = stage.took.as_secs_f64();
        println!(
            "{:<36} {:>10.3} {:>10.1} {:>10.1}",
            stage.name,
            s,
            files as f64 / s,
            megabytes / s
        );
    }
    let s = whole.as_secs_f64();
    println!(
        "{:<36} {:>10.3} {:>10.1} {:>10.1}",
        "whole ingest path (decrypt..insert)",
        s,
        files as f64 / s,
        megabytes / s
    );
    let slowest = stages.iter().max_by_key(|s| s.took).unwrap();
    println!("slowest stage: {}", slowest.name);
    println!("\nXSD validation (libxml2, NHN's XSD), milliseconds per 100 KB of XML, one core:");
    for (what, ms) in xsd {
        println!("  {what:<58} {ms:>8.2}");
    }
}

/// The validator's cost per 100 KB patient: alone on a valid patient (the mended NHN sample) and on
/// NHN's 2021 sample as it is (80 departures, each recorded), and `prepare` (decrypt to data-quality
/// checks) of the valid patient under a Lenient and a Strict database.
fn xsd_cost(
    files: usize,
    keys: &DecryptionKeys,
    recipient: &RecipientCertificate,
    limits: &FormatLimits,
) -> Vec<(&'static str, f64)> {
    let valid = xsd_corpus::mended_patient_xml().into_bytes();
    let drifted = read_archive(&patient_zip(), &limits.archive)
        .unwrap()
        .get(PATIENT_DOCUMENT)
        .unwrap()
        .data
        .clone();
    let per_100_kb = |took: Duration, bytes: usize| took.as_secs_f64() * 1e3 / (bytes as f64 / 1e5);
    let mut figures = Vec::new();
    for (what, xml) in [
        ("validation alone, a valid patient", &valid),
        (
            "validation alone, the 2021 sample (80 departures)",
            &drifted,
        ),
    ] {
        assert_eq!(
            xsd_departures(xml, &limits.xml).unwrap().is_empty(),
            xml == &valid
        );
        let start = Instant::now();
        for _ in 0..files {
            xsd_departures(xml, &limits.xml).unwrap();
        }
        figures.push((what, per_100_kb(start.elapsed(), xml.len() * files)));
    }
    let guid = uuid::Uuid::new_v4().to_string();
    let name = format!("Patients0\\{guid}.pat");
    let zip = patient_zip_with(|entries| {
        for (entry, data) in entries.iter_mut() {
            if entry == PATIENT_DOCUMENT {
                *data = String::from_utf8(valid.clone())
                    .unwrap()
                    .replace(PATIENT_GUID, &guid)
                    .into_bytes();
            }
        }
    });
    let file = envelope::encrypt(&zip, recipient, "zip").unwrap();
    // prepare reads every document of the file (the patient and its 113 message files): per 100 KB
    // of them all.
    let xml_bytes = read_archive(&zip, &limits.archive).unwrap().total_bytes() as usize;
    for (what, check) in [
        (
            "prepare (decrypt..checks), all XML of the file, Lenient",
            SchemaCheck::Lenient,
        ),
        (
            "prepare (decrypt..checks), all XML of the file, Strict",
            SchemaCheck::Strict,
        ),
    ] {
        let db = database_with(ValidationPolicy {
            schema_check: check,
            ..ValidationPolicy::default()
        });
        let start = Instant::now();
        for _ in 0..files {
            prepare(keys, &file, FileType::Patient, &name, limits, &db).unwrap();
        }
        figures.push((what, per_100_kb(start.elapsed(), xml_bytes * files)));
    }
    figures
}
