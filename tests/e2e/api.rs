//! The migration API against the real control plane and PostgreSQL: the operator provisions a
//! MigrationDatabase and a MigrationKey, the API runs as a process, NHN's sample organisation and
//! patient are put in the envelope and uploaded by `tuspy` (a tus client from PyPI) in small chunks,
//! and the rows, the counts in the CR status, verify, activate, hostile input, two replicas with a
//! `kill -9`, and the absence of personal data and secrets in logs and status are checked.

use super::cluster::*;
use super::processes::*;
use futures::StreamExt as _;
use reqwest::RequestBuilder;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sfm_migration::contract::{self, ChecksumAlgorithm, Manifest, ManifestFile, UploadChecksum};
use sfm_migration::format::archive::{ArchiveLimits, read_archive, write_archive};
use sfm_migration::format::envelope::{self, RecipientCertificate, generate_demo_key_pair};
use sfm_migration::format::patient_file::{
    FormatLimits, read_organisation_file, read_patient_file,
};

/// The API's namespace: the operator writes the migrators' Secrets there. Shared by every test (and
/// the operator test), so concurrently running operators agree on the migrator passwords.
const API_NS: &str = "sfm-system";
/// The organisation number in NHN's sample organisation file (`Institusjon`, ENH).
const SAMPLE_ORGANISATION_NUMBER: &str = "100100614";
const PATIENT_GUID: &str = "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672";

fn sample(name: &str) -> Vec<u8> {
    let candidates = [
        std::env::var("SFM_FORMAT_DIR").unwrap_or_default(),
        format!("{}/../shared/sfm-format", env!("CARGO_MANIFEST_DIR")),
        "/work/shared/sfm-format".to_owned(),
    ];
    for dir in candidates.iter().filter(|d| !d.is_empty()) {
        if let Ok(data) = std::fs::read(Path::new(dir).join(name)) {
            return data;
        }
    }
    panic!("NHN's sample {name} is not found (set SFM_FORMAT_DIR)");
}

/// What the tests encrypt and send.
struct Samples {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    recipient: RecipientCertificate,
    organisation_zip: Vec<u8>,
    patient_zip: Vec<u8>,
}

impl Samples {
    fn new() -> Samples {
        let dir = tempfile::tempdir().unwrap();
        let pair = generate_demo_key_pair(2048, "SFM migrering").unwrap();
        let key_file = dir.path().join("sfm-migrering.key.pem");
        std::fs::write(&key_file, &pair.private_key_pem).unwrap();
        Samples {
            recipient: RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap(),
            key_file,
            dir,
            organisation_zip: sample("ExportData.zip"),
            patient_zip: sample(&format!("{PATIENT_GUID}.zip")),
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        envelope::encrypt(plain, &self.recipient, envelope::DEFAULT_EXTENSION).unwrap()
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    /// Every value of the fixtures that must never leave the database: national identity numbers,
    /// HPR numbers and names of users and the patient.
    fn personal_data(&self) -> Vec<String> {
        let organisation =
            read_organisation_file(&self.organisation_zip, &FormatLimits::default()).unwrap();
        let patient = read_patient_file(&self.patient_zip, &FormatLimits::default()).unwrap();
        let mut values = Vec::new();
        for user in &organisation.organisation.users {
            values.extend(user.identifiers.iter().map(|i| i.value.clone()));
            values.extend(user.family_name.clone());
            values.extend(user.given_name.clone());
        }
        let demographics = &patient.patient.demographics;
        values.extend(demographics.identifiers.iter().map(|i| i.value.clone()));
        values.push(demographics.family_name.clone());
        values.push(demographics.given_name.clone());
        values.extend(
            patient
                .patient
                .referenced_hpr_numbers()
                .into_iter()
                .map(str::to_owned),
        );
        values.retain(|v| v.len() >= 4);
        values.sort();
        values.dedup();
        values
    }
}

/// One MigrationDatabase with its key, provisioned by the operator.
struct Migration {
    operator: Process,
    ns: TestNamespace,
    db: String,
    key: String,
    migrator_uri: String,
}

fn database_yaml(ns: &str, name: &str, schema_check: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  organisation:\n    name: Sample Legekontor\n    organisationNumber: \"{SAMPLE_ORGANISATION_NUMBER}\"\n    helseIdClientId: sample-sfm\n  dataModelVersion: 4\n  reclaimPolicy: Delete\n  validation:\n    allowSyntheticIdentities: false\n    schemaCheck: {schema_check}\n"
    )
}

fn key_yaml(ns: &str, name: &str, db: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  databaseRef: {db}\n  timeToLive: 2h\n"
    )
}

fn provision(prefix: &str, schema_check: &str) -> Migration {
    install_crds();
    kubectl(&["create", "namespace", API_NS], None);
    let ns = TestNamespace::new(prefix);
    let operator = start_operator(&ns.name, API_NS, &format!("operator-{}", ns.name));
    let db = "sample";
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&database_yaml(&ns.name, db, schema_check)),
    );
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&key_yaml(&ns.name, "key-1", db)),
    );
    kubectl_ok(
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Ready",
            &format!("mdb/{db}"),
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert!(eventually(PATIENCE, || jsonpath(
        &ns.name,
        "mkey/key-1",
        "{.status.phase}"
    ) == "Active"));
    let secret = jsonpath(&ns.name, "mkey/key-1", "{.status.secretName}");
    let key = secret_field(&ns.name, &secret, "key");
    let migrator = jsonpath(
        &ns.name,
        &format!("mdb/{db}"),
        "{.status.database.migratorSecret}",
    );
    let (api_ns, migrator_name) = migrator.split_once('/').unwrap();
    let migrator_uri = secret_field(api_ns, migrator_name, "uri");
    Migration {
        operator,
        ns,
        db: db.to_owned(),
        key,
        migrator_uri,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The API for a test's samples, waiting up to 30 s for an ingest lock.
fn start_sample_api(samples: &Samples, port: u16, log_name: &str, extra: &[&str]) -> Process {
    let mut args = vec!["--ingest-wait-seconds", "30"];
    args.extend_from_slice(extra);
    start_api(API_NS, &samples.key_file, port, log_name, &args)
}

/// Uploads with tuspy; returns its JSON line.
fn tuspy(
    base: &str,
    key: &str,
    file: &Path,
    name: &str,
    file_type: &str,
    chunk: usize,
    session_id: bool,
) -> serde_json::Value {
    let script = repo_path("tests/fixtures/api/tus_upload.py");
    let chunk = chunk.to_string();
    let file = file.display().to_string();
    let url = format!("{base}{}", contract::PATH_FILES);
    let mut args = vec![
        script.as_str(),
        "--url",
        &url,
        "--file",
        &file,
        "--name",
        name,
        "--file-type",
        file_type,
        "--chunk-size",
        &chunk,
    ];
    if session_id {
        args.push("--session-id");
    }
    let out = std::process::Command::new("python3")
        .args(&args)
        .env("SFM_MIGRATION_KEY", key)
        .output()
        .expect("python3 runs (hack/install-deps.sh installs tuspy)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "tuspy printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("tuspy: {stdout} {}", String::from_utf8_lossy(&out.stderr)))
}

fn manifest_entry(path: &str, file_type: contract::FileType, data: &[u8]) -> ManifestFile {
    ManifestFile {
        path: path.to_owned(),
        file_type,
        size: data.len() as u64,
        sha256: contract::sha256_hex(data),
    }
}

async fn query_i64(uri: &str, sql: &'static str) -> i64 {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(uri).await.unwrap();
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    sfm_migration::telemetry::install_crypto_provider();
    reqwest::Client::new()
}

/// Lenient: the sample organisation and patient end up as rows with the counts in status, the patient
/// with a deviation naming `Brukere`; verify and activate reach Operational; nothing personal leaks.
#[test]
fn sample_export_over_tus_is_stored_verified_and_activated() {
    let samples = Samples::new();
    let migration = provision("api-lenient", "Lenient");
    let ns = migration.ns.name.clone();
    let mdb = format!("mdb/{}", migration.db);
    let port = free_port();
    let api = start_sample_api(&samples, port, &format!("api-{ns}"), &[]);
    let base = format!("http://127.0.0.1:{port}");

    let organisation = samples.encrypt(&samples.organisation_zip);
    let patient = samples.encrypt(&samples.patient_zip);
    let organisation_file = samples.write("ExportData.dat", &organisation);
    let patient_file = samples.write("patient.pat", &patient);
    let patient_name = format!("Patients0\\{PATIENT_GUID}.pat");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = http();
        // A patient before the organisation is refused at creation.
        let early = create_request(
            &client,
            &base,
            &migration.key,
            &patient_name,
            "Patient",
            patient.len(),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(early.status(), 409);
        assert!(early.text().await.unwrap().contains("organisation-missing"));
    });

    // The organisation file by tuspy with the key in SessionId (as NHN's uploader sends it), the
    // patient with the header; 4 KiB chunks.
    let result = tuspy(
        &base,
        &migration.key,
        &organisation_file,
        "ExportData.dat",
        "ExportData",
        4096,
        true,
    );
    assert_eq!(result["ingestState"], "stored", "{result}");
    let result = tuspy(
        &base,
        &migration.key,
        &patient_file,
        &patient_name,
        "Patient",
        4096,
        false,
    );
    assert_eq!(result["ingestState"], "stored", "{result}");
    // The same file again stores one patient.
    let again = tuspy(
        &base,
        &migration.key,
        &patient_file,
        &patient_name,
        "Patient",
        65536,
        false,
    );
    assert_eq!(again["ingestState"], "stored", "{again}");

    runtime.block_on(async {
        let uri = &migration.migrator_uri;
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.users").await, 7);
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.patients").await, 1);
        assert!(query_i64(uri, "SELECT count(*) FROM sfm.treatments").await > 0);
        assert!(query_i64(uri, "SELECT count(*) FROM sfm.messages").await > 0);
        assert!(query_i64(uri, "SELECT count(*) FROM sfm.documents WHERE kind = 'message'").await > 0);
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.documents WHERE kind = 'patient_data'").await, 1);
        assert!(query_i64(uri, "SELECT count(*) FROM sfm.deviations WHERE path LIKE '%Brukere%'").await > 0, "the lenient patient carries a Brukere deviation");
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.stored_files WHERE migration_key_id <> '' AND received_at IS NOT NULL").await, 2);
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.upload_chunks").await, 0);
    });
    assert!(eventually(PATIENCE, || jsonpath(
        &ns,
        &mdb,
        "{.status.migration.patients.stored}"
    ) == "1"));
    assert_eq!(jsonpath(&ns, &mdb, "{.status.migration.users.stored}"), "7");
    assert_eq!(
        jsonpath(&ns, &mdb, "{.status.migration.organisationStored}"),
        "true"
    );
    let managers = kubectl_ok(
        &[
            "-n",
            &ns,
            "get",
            &mdb,
            "--show-managed-fields",
            "-o",
            "json",
        ],
        None,
    );
    assert!(managers.contains("\"manager\": \"sfm-migration-api\""));

    runtime.block_on(async {
        let client = http();
        // A manifest that lacks nothing but names another digest is a mismatch; the right one validates.
        let mut wrong = Manifest::new(vec![
            manifest_entry(
                "ExportData.dat",
                contract::FileType::ExportData,
                &organisation,
            ),
            manifest_entry(&patient_name, contract::FileType::Patient, &organisation),
        ]);
        wrong.files[1].size = patient.len() as u64;
        let response = client
            .post(format!("{base}{}", contract::PATH_VERIFY))
            .header("sfm-migration-key", &migration.key)
            .json(&wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 409);
        let problem: contract::Problem = response.json().await.unwrap();
        assert_eq!(problem.code, contract::ProblemCode::ManifestMismatch);
        assert_eq!(
            problem.mismatches.unwrap().digest_mismatch,
            vec![patient_name.clone()]
        );

        // Activation before validation is refused.
        let response = client
            .post(format!("{base}{}", contract::PATH_ACTIVATE))
            .header("sfm-migration-key", &migration.key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 409);

        let manifest = Manifest::new(vec![
            manifest_entry(
                "ExportData.dat",
                contract::FileType::ExportData,
                &organisation,
            ),
            manifest_entry(&patient_name, contract::FileType::Patient, &patient),
        ]);
        let response = client
            .post(format!("{base}{}", contract::PATH_VERIFY))
            .header("sfm-migration-key", &migration.key)
            .json(&manifest)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let verified: contract::VerifyResponse = response.json().await.unwrap();
        assert_eq!(verified.digest, manifest.digest());
        assert_eq!(verified.patients, 1);
        assert_eq!(
            jsonpath(&ns, &mdb, "{.status.migration.validatedDigest}"),
            manifest.digest()
        );

        // Validated: no more uploads.
        let refused = create_request(
            &client,
            &base,
            &migration.key,
            "Patients0\\x.pat",
            "Patient",
            10,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(refused.status(), 409);
        assert!(
            refused
                .text()
                .await
                .unwrap()
                .contains("migration-validated")
        );

        let status: contract::MigrationStatus = client
            .get(format!("{base}{}", contract::PATH_STATUS))
            .header("sfm-migration-key", &migration.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status.patients.stored, 1);
        assert_eq!(
            status.validated_digest.as_deref(),
            Some(manifest.digest().as_str())
        );

        let response = client
            .post(format!("{base}{}", contract::PATH_ACTIVATE))
            .header("sfm-migration-key", &migration.key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    });
    kubectl_ok(
        &[
            "-n",
            &ns,
            "wait",
            "--for=condition=Operational",
            &mdb,
            WAIT_TIMEOUT,
        ],
        None,
    );

    // Nothing personal and no secret in the logs, Events, metrics or status.
    let metrics = std::process::Command::new("curl")
        .args(["-fsS", &format!("{base}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(metrics.contains("sfm_api_files_stored_total"));
    // The chart's RBAC was enough for the whole migration.
    assert!(
        !api.log_text().to_lowercase().contains("forbidden"),
        "the API was refused something under the chart's RBAC: {}",
        api.log_text()
    );
    let everything = [
        api.log_text(),
        migration.operator.log_text(),
        metrics,
        kubectl_ok(&["-n", &ns, "get", "mdb,mkey", "-o", "yaml"], None),
        kubectl_ok(&["-n", &ns, "get", "events", "-o", "yaml"], None),
    ]
    .join("\n");
    let password = migration
        .migrator_uri
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let secret_part = migration.key.rsplit_once('_').unwrap().1.to_owned();
    for value in samples
        .personal_data()
        .into_iter()
        .chain([secret_part, password])
    {
        assert!(
            !everything.contains(&value),
            "a fixture value or secret leaked into logs, metrics or status"
        );
    }
}

/// Strict: the 2021 sample patient (`Brukere` where the XSD has `InVib`) is rejected with a reason.
#[test]
fn strict_schema_check_rejects_the_sample_patient() {
    let samples = Samples::new();
    let migration = provision("api-strict", "Strict");
    let ns = migration.ns.name.clone();
    let port = free_port();
    let _api = start_sample_api(&samples, port, &format!("api-{ns}"), &[]);
    let base = format!("http://127.0.0.1:{port}");
    let organisation_file = samples.write(
        "ExportData.dat",
        &samples.encrypt(&samples.organisation_zip),
    );
    let patient_file = samples.write("patient.pat", &samples.encrypt(&samples.patient_zip));
    let patient_name = format!("Patients0\\{PATIENT_GUID}.pat");
    assert_eq!(
        tuspy(
            &base,
            &migration.key,
            &organisation_file,
            "ExportData.dat",
            "ExportData",
            8192,
            false
        )["ingestState"],
        "stored"
    );
    let result = tuspy(
        &base,
        &migration.key,
        &patient_file,
        &patient_name,
        "Patient",
        8192,
        false,
    );
    assert_eq!(result["ingestState"], "rejected", "{result}");
    assert_eq!(result["rejectionCode"], "xml-schema");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        assert_eq!(query_i64(&migration.migrator_uri, "SELECT count(*) FROM sfm.patients").await, 0);
        assert_eq!(query_i64(&migration.migrator_uri, "SELECT count(*) FROM sfm.rejections WHERE reason_code = 'xml_schema' AND message LIKE '%Brukere%'").await, 1);
    });
    assert!(eventually(PATIENCE, || jsonpath(
        &ns,
        "mdb/sample",
        "{.status.migration.patients.rejected}"
    ) == "1"));
}

/// POST /files with the tus version, the length and the key; no metadata.
fn tus_post(client: &reqwest::Client, base: &str, key: &str, length: usize) -> RequestBuilder {
    client
        .post(format!("{base}/files"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .header("sfm-migration-key", key)
}

/// The tus creation request for one file with its name and FileType in the metadata.
fn create_request(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
    file_type: &str,
    length: usize,
) -> RequestBuilder {
    tus_post(client, base, key, length).header(
        "upload-metadata",
        contract::encode_upload_metadata(&[("name", name), ("FileType", file_type)]),
    )
}

/// A tus PATCH at `offset`, without checksum or body.
fn patch_request(client: &reqwest::Client, url: &str, offset: usize) -> RequestBuilder {
    client
        .patch(url)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string())
}

async fn create_upload(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
    file_type: &str,
    length: usize,
) -> reqwest::Response {
    create_request(client, base, key, name, file_type, length)
        .send()
        .await
        .unwrap()
}

async fn patch(
    client: &reqwest::Client,
    url: &str,
    offset: usize,
    body: &[u8],
) -> reqwest::Response {
    patch_request(client, url, offset)
        .header(
            "upload-checksum",
            UploadChecksum::of(ChecksumAlgorithm::Sha256, body).to_header(),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Two API processes; the PATCHes of one upload alternate between them, one is killed with SIGKILL
/// between chunks and started again: the upload completes, nothing is lost or stored twice.
#[test]
fn two_replicas_share_an_upload_across_a_kill() {
    let samples = Samples::new();
    let migration = provision("api-replicas", "Lenient");
    let ns = migration.ns.name.clone();
    let (port_a, port_b) = (free_port(), free_port());
    let mut api_a = start_sample_api(&samples, port_a, &format!("api-a-{ns}"), &[]);
    let _api_b = start_sample_api(&samples, port_b, &format!("api-b-{ns}"), &[]);
    let (a, b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let organisation_file = samples.write(
        "ExportData.dat",
        &samples.encrypt(&samples.organisation_zip),
    );
    assert_eq!(
        tuspy(
            &a,
            &migration.key,
            &organisation_file,
            "ExportData.dat",
            "ExportData",
            65536,
            false
        )["ingestState"],
        "stored"
    );
    let patient = samples.encrypt(&samples.patient_zip);
    let name = format!("Patients0\\{PATIENT_GUID}.pat");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = http();
        let created =
            create_upload(&client, &a, &migration.key, &name, "Patient", patient.len()).await;
        assert_eq!(created.status(), 201);
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let id = location.rsplit('/').next().unwrap().to_owned();
        let chunks: Vec<&[u8]> = patient.chunks(patient.len() / 6 + 1).collect();
        let mut offset = 0;
        for (index, chunk) in chunks.iter().enumerate() {
            let base = if index % 2 == 0 { &a } else { &b };
            if index == 3 {
                // A crash between chunks: the next PATCH for A goes to a fresh process on the same port.
                api_a.kill();
                api_a = start_sample_api(&samples, port_a, &format!("api-a2-{ns}"), &[]);
            }
            // A stale PATCH (the previous offset) is refused and changes nothing.
            if index > 0 {
                let stale = patch(
                    &client,
                    &format!("{base}/files/{id}"),
                    offset - chunks[index - 1].len(),
                    chunks[index - 1],
                )
                .await;
                assert_eq!(stale.status(), 409);
            }
            let response = patch(&client, &format!("{base}/files/{id}"), offset, chunk).await;
            assert_eq!(
                response.status(),
                204,
                "chunk {index}: {:?}",
                response.text().await
            );
            offset += chunk.len();
            assert_eq!(
                response.headers()["upload-offset"].to_str().unwrap(),
                offset.to_string()
            );
            if index == chunks.len() - 1 {
                assert_eq!(
                    response.headers()["sfm-ingest-state"].to_str().unwrap(),
                    "stored"
                );
            }
        }
        let head = client
            .head(format!("{b}/files/{id}"))
            .header("tus-resumable", "1.0.0")
            .header("sfm-migration-key", &migration.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.headers()["upload-offset"].to_str().unwrap(),
            patient.len().to_string()
        );
        let uri = &migration.migrator_uri;
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.patients").await, 1);
        assert_eq!(
            query_i64(
                uri,
                "SELECT count(*) FROM sfm.stored_files WHERE kind = 'patient'"
            )
            .await,
            1
        );
        // The stored file is byte for byte what was sent.
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(uri).await.unwrap();
        let digest: String = sqlx::query_scalar(
            "SELECT encode(sha256, 'hex') FROM sfm.stored_files WHERE kind = 'patient'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(digest, contract::sha256_hex(&patient));

        // The same person under another Id is stored and flagged; an HPR number no user has is rejected.
        let entries = read_archive(&samples.patient_zip, &ArchiveLimits::default())
            .unwrap()
            .entries;
        let with = |guid: &str, from: &str, to: &str| {
            let renamed: Vec<(String, Vec<u8>)> = entries
                .iter()
                .map(|e| {
                    let data = if e.name == "PatientData.xml" {
                        String::from_utf8(e.data.clone())
                            .unwrap()
                            .replace(PATIENT_GUID, guid)
                            .replace(from, to)
                            .into_bytes()
                    } else {
                        e.data.clone()
                    };
                    (e.name.clone(), data)
                })
                .collect();
            let borrowed: Vec<(&str, &[u8])> = renamed
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            samples.encrypt(&write_archive(&borrowed).unwrap())
        };
        let twin_guid = "1056e3cc-38fc-4e3c-8cd0-1c831db782d4";
        let twin = with(twin_guid, "", "");
        let name = format!("Patients0\\{twin_guid}.pat");
        let created =
            create_upload(&client, &b, &migration.key, &name, "Patient", twin.len()).await;
        let url = created.headers()["location"].to_str().unwrap().to_owned();
        let r = patch(&client, &url, 0, &twin).await;
        assert_eq!(r.headers()["sfm-ingest-state"].to_str().unwrap(), "stored");
        assert_eq!(
            query_i64(
                uri,
                "SELECT count(*) FROM sfm.deviations WHERE message LIKE '%same person%'"
            )
            .await,
            1
        );

        let stranger_guid = "2a4e3c9e-38fc-4e3c-8cd0-1c831db782d4";
        let stranger = with(
            stranger_guid,
            "<Hpr>222200082</Hpr>",
            "<Hpr>999999999</Hpr>",
        );
        let name = format!("Patients0\\{stranger_guid}.pat");
        let created = create_upload(
            &client,
            &a,
            &migration.key,
            &name,
            "Patient",
            stranger.len(),
        )
        .await;
        let url = created.headers()["location"].to_str().unwrap().to_owned();
        let r = patch(&client, &url, 0, &stranger).await;
        assert_eq!(
            r.headers()["sfm-ingest-state"].to_str().unwrap(),
            "rejected"
        );
        assert_eq!(
            r.headers()["sfm-rejection-code"].to_str().unwrap(),
            "data-quality-hpr-unknown"
        );
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.patients").await, 2);
    });
    drop(api_a);
}

/// Hostile and malformed input: each gets a clear problem (or a recorded rejection) and nothing is
/// stored; the server keeps serving.
#[test]
fn bad_input_gets_a_clear_problem_and_stores_nothing() {
    let samples = Samples::new();
    let migration = provision("api-bad", "Lenient");
    let ns = migration.ns.name.clone();
    let port = free_port();
    let api = start_sample_api(
        &samples,
        port,
        &format!("api-{ns}"),
        &["--max-upload-bytes", "2000000"],
    );
    let base = format!("http://127.0.0.1:{port}");
    let organisation = samples.encrypt(&samples.organisation_zip);
    let patient_name = format!("Patients0\\{PATIENT_GUID}.pat");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = http();
        let key = &migration.key;
        let code = |body: String| {
            serde_json::from_str::<contract::Problem>(&body)
                .map(|p| p.code.as_str().to_owned())
                .unwrap_or(body)
        };

        // Keys: wrong secret, malformed, unknown id, missing.
        let (prefix, _) = key.rsplit_once('_').unwrap();
        let wrong = format!("{prefix}_{}", "A".repeat(43));
        let r = create_upload(&client, &base, &wrong, "ExportData.dat", "ExportData", 10).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (401, "key-wrong".into())
        );
        let r = create_upload(
            &client,
            &base,
            "sfmk_nope",
            "ExportData.dat",
            "ExportData",
            10,
        )
        .await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (401, "key-malformed".into())
        );
        let unknown = format!("sfmk_unknownkey1_{}", "A".repeat(43));
        let r = create_upload(&client, &base, &unknown, "ExportData.dat", "ExportData", 10).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (401, "key-unknown".into())
        );

        // tus headers and metadata.
        let r = client
            .post(format!("{base}/files"))
            .header("upload-length", "10")
            .header("sfm-migration-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 412);
        for metadata in [
            "name",
            "name ZZZ",
            "name RXhwb3J0RGF0YS5kYXQ=,name RXhwb3J0RGF0YS5kYXQ=",
            "name RXhwb3J0RGF0YS5kYXQ=,FileType T3JnYW5pc2F0aW9u",
        ] {
            let r = tus_post(&client, &base, key, 10)
                .header("upload-metadata", metadata)
                .send()
                .await
                .unwrap();
            assert_eq!(
                (r.status().as_u16(), code(r.text().await.unwrap())),
                (400, "metadata-invalid".into()),
                "{metadata}"
            );
        }
        let r = create_upload(
            &client,
            &base,
            key,
            "ExportData.dat",
            "ExportData",
            3_000_000,
        )
        .await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (413, "upload-too-large".into())
        );
        let r = client
            .head(format!(
                "{base}/files/{}.{}",
                "0".repeat(32),
                "1".repeat(32)
            ))
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = client
            .head(format!("{base}/files/not-an-id"))
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        // A patient before the organisation.
        let r = create_upload(&client, &base, key, &patient_name, "Patient", 10).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (409, "organisation-missing".into())
        );

        // Offsets, sizes, checksums, content type on a real upload.
        let r = create_upload(
            &client,
            &base,
            key,
            "ExportData.dat",
            "ExportData",
            organisation.len(),
        )
        .await;
        assert_eq!(r.status(), 201);
        let url = r.headers()["location"].to_str().unwrap().to_owned();
        let r = patch(&client, &url, 5, &organisation[..10]).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (409, "upload-offset-mismatch".into())
        );
        let mut too_long = organisation.clone();
        too_long.push(0);
        let r = patch(&client, &url, 0, &too_long).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (413, "upload-too-large".into())
        );
        let r = patch_request(&client, &url, 0)
            .header(
                "upload-checksum",
                UploadChecksum::of(ChecksumAlgorithm::Sha256, b"other").to_header(),
            )
            .body(organisation[..100].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 460);
        let r = client
            .patch(&url)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "text/plain")
            .header("upload-offset", "0")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415);
        let head = client
            .head(&url)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(head.headers()["upload-offset"].to_str().unwrap(), "0");
        // Termination, then the id is unknown.
        let r = client
            .delete(&url)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = client
            .head(&url)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        // Hostile files: each is uploaded completely and rejected with its reason.
        let entries = read_archive(&samples.organisation_zip, &ArchiveLimits::default())
            .unwrap()
            .entries;
        let xml = String::from_utf8(entries[0].data.clone()).unwrap();
        let mut flipped = organisation.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x40;
        let doctype = xml.replacen("?>", "?><!DOCTYPE x [<!ENTITY e \"boom\">]>", 1);
        let deep = xml.replacen(
            "<Brukere>",
            &format!("<Brukere>{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000)),
            1,
        );
        let bomb = write_archive(&[("ExportData.xml", vec![b' '; 1_900_000].as_slice())]).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("flipped", flipped, "envelope-undecryptable"),
            (
                "truncated",
                organisation[..organisation.len() - 7].to_vec(),
                "envelope-malformed",
            ),
            (
                "foreign key",
                envelope::encrypt(
                    &samples.organisation_zip,
                    &RecipientCertificate::from_pem(
                        generate_demo_key_pair(2048, "other")
                            .unwrap()
                            .certificate_pem
                            .as_bytes(),
                    )
                    .unwrap(),
                    "zip",
                )
                .unwrap(),
                "envelope-undecryptable",
            ),
            (
                "header past the end",
                {
                    let mut f = organisation.clone();
                    f[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    f
                },
                "envelope-malformed",
            ),
            (
                "traversal",
                samples.encrypt(&raw_zip(&[("../ExportData.xml", xml.as_bytes())])),
                "archive-path",
            ),
            (
                "absolute",
                samples.encrypt(&raw_zip(&[("/etc/ExportData.xml", xml.as_bytes())])),
                "archive-path",
            ),
            (
                "doctype",
                samples.encrypt(&write_archive(&[("ExportData.xml", doctype.as_bytes())]).unwrap()),
                "xml-doctype",
            ),
            (
                "deep",
                samples.encrypt(&write_archive(&[("ExportData.xml", deep.as_bytes())]).unwrap()),
                "xml-malformed",
            ),
            ("ratio bomb", samples.encrypt(&bomb), "archive-limits"),
            (
                "many entries",
                samples.encrypt(
                    &write_archive(
                        &(0..2_500)
                            .map(|i| (format!("{i}.xml"), b"x".as_slice()))
                            .collect::<Vec<_>>()
                            .iter()
                            .map(|(n, d)| (n.as_str(), *d))
                            .collect::<Vec<_>>(),
                    )
                    .unwrap(),
                ),
                "archive-limits",
            ),
        ];
        for (what, file, expected) in cases {
            let r = create_upload(
                &client,
                &base,
                key,
                "ExportData.dat",
                "ExportData",
                file.len(),
            )
            .await;
            assert_eq!(r.status(), 201, "{what}");
            let url = r.headers()["location"].to_str().unwrap().to_owned();
            let r = patch(&client, &url, 0, &file).await;
            assert_eq!(r.status(), 204, "{what}");
            assert_eq!(
                r.headers()["sfm-ingest-state"].to_str().unwrap(),
                "rejected",
                "{what}"
            );
            assert_eq!(
                r.headers()["sfm-rejection-code"].to_str().unwrap(),
                expected,
                "{what}"
            );
        }
        let uri = &migration.migrator_uri;
        assert_eq!(
            query_i64(uri, "SELECT count(*) FROM sfm.stored_files").await,
            0
        );
        assert_eq!(query_i64(uri, "SELECT count(*) FROM sfm.users").await, 0);
        assert_eq!(
            query_i64(uri, "SELECT count(*) FROM sfm.rejections").await,
            10
        );

        // A key of another database cannot touch this database's upload; a superseded key stops working.
        let r = create_upload(
            &client,
            &base,
            key,
            "ExportData.dat",
            "ExportData",
            organisation.len(),
        )
        .await;
        let url = r.headers()["location"].to_str().unwrap().to_owned();
        kubectl_ok(
            &["apply", "-f", "-"],
            Some(&key_yaml(&ns, "key-2", "sample")),
        );
        assert!(eventually(PATIENCE, || jsonpath(
            &ns,
            "mkey/key-1",
            "{.status.phase}"
        ) == "Superseded"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = patch(&client, &url, 0, &organisation).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (403, "key-superseded".into())
        );
        let r = create_upload(&client, &base, key, "ExportData.dat", "ExportData", 10).await;
        assert_eq!(
            (r.status().as_u16(), code(r.text().await.unwrap())),
            (403, "key-superseded".into())
        );
        assert_eq!(
            query_i64(uri, "SELECT count(*) FROM sfm.stored_files").await,
            0
        );
        // Still serving.
        let r = client
            .get(format!("{base}{}", contract::PATH_PRODUCT_VERSION))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let log = api.log_text();
    assert!(!log.contains(migration.key.rsplit_once('_').unwrap().1));
}

/// A zip written with the zip crate directly, so names the exporter would refuse can be made.
fn raw_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A database whose policy requires a HelseID token: the API refuses the key alone, accepts a
/// DPoP-bound token from the local issuer (client assertion, nonce) with a proof for the request, and
/// refuses the replayed proof.
#[test]
fn helseid_token_is_required_when_the_database_asks_for_it() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use sfm_migration::helseid::issuer::{Issuer, IssuerConfig, RegisteredClient};
    use sfm_migration::helseid::verify::access_token_hash;

    let es256 = || {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        (key, jwk)
    };
    let proof = |key: &EncodingKey,
                 jwk: &Jwk,
                 method: &str,
                 url: &str,
                 token: Option<&str>,
                 nonce: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(jwk.clone());
        let mut claims = serde_json::json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": method, "htu": url, "iat": chrono::Utc::now().timestamp()});
        if let Some(token) = token {
            claims["ath"] = access_token_hash(token).into();
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        encode(&header, &claims, key).unwrap()
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer_listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let issuer_url = format!("http://{}", issuer_listener.local_addr().unwrap());
    let (client_key, client_jwk) = es256();
    let issuer = Issuer::new(IssuerConfig {
        issuer_url: issuer_url.clone(),
        audience: "nhn:sfm-migration".into(),
        clients: vec![RegisteredClient {
            client_id: "sample-sfm".into(),
            jwks: JwkSet {
                keys: vec![client_jwk],
            },
            organisation_number: SAMPLE_ORGANISATION_NUMBER.into(),
            child_organisation_number: None,
            scopes: vec!["nhn:sfm-migration/upload".into()],
        }],
        token_lifetime: Duration::from_secs(600),
    })
    .unwrap();
    let token_endpoint = issuer.token_endpoint();
    runtime.spawn(async move {
        axum::serve(
            issuer_listener,
            sfm_migration::helseid::issuer::router(issuer),
        )
        .await
        .unwrap()
    });

    install_crds();
    kubectl(&["create", "namespace", API_NS], None);
    let ns = TestNamespace::new("api-helseid");
    let _operator = start_operator(&ns.name, API_NS, &format!("operator-{}", ns.name));
    let yaml = database_yaml(&ns.name, "sample", "Lenient").replace(
        "    schemaCheck: Lenient\n",
        &format!("    schemaCheck: Lenient\n    helseId:\n      issuer: {issuer_url}\n      audience: nhn:sfm-migration\n      requiredScope: nhn:sfm-migration/upload\n"),
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&key_yaml(&ns.name, "key-1", "sample")),
    );
    kubectl_ok(
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Ready",
            "mdb/sample",
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert!(eventually(PATIENCE, || jsonpath(
        &ns.name,
        "mkey/key-1",
        "{.status.phase}"
    ) == "Active"));
    let key = secret_field(
        &ns.name,
        &jsonpath(&ns.name, "mkey/key-1", "{.status.secretName}"),
        "key",
    );
    let samples = Samples::new();
    let port = free_port();
    let _api = start_sample_api(&samples, port, &format!("api-{}", ns.name), &[]);
    let key_check = format!("http://127.0.0.1:{port}{}", contract::PATH_KEY_CHECK);

    runtime.block_on(async {
        let http = http();
        let r = http.post(&key_check).header("sfm-migration-key", &key).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        assert!(r.text().await.unwrap().contains("token-required"));

        let (dpop_key, dpop_jwk) = es256();
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(sfm_migration::helseid::CLIENT_ASSERTION_TYP.into());
        let assertion = |jti: &str| encode(&header, &serde_json::json!({"iss": "sample-sfm", "sub": "sample-sfm", "aud": token_endpoint, "iat": now, "exp": now + 60, "jti": jti}), &client_key).unwrap();
        let form = |assertion: String| {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            s.append_pair("grant_type", "client_credentials");
            s.append_pair("client_id", "sample-sfm");
            s.append_pair("client_assertion_type", sfm_migration::helseid::CLIENT_ASSERTION_TYPE);
            s.append_pair("client_assertion", &assertion);
            s.finish()
        };
        let first = http.post(&token_endpoint).header("content-type", "application/x-www-form-urlencoded").header("dpop", proof(&dpop_key, &dpop_jwk, "POST", &token_endpoint, None, None)).body(form(assertion("a1"))).send().await.unwrap();
        assert_eq!(first.status(), 400);
        let nonce = first.headers()["dpop-nonce"].to_str().unwrap().to_owned();
        let second = http.post(&token_endpoint).header("content-type", "application/x-www-form-urlencoded").header("dpop", proof(&dpop_key, &dpop_jwk, "POST", &token_endpoint, None, Some(&nonce))).body(form(assertion("a2"))).send().await.unwrap();
        let body: serde_json::Value = second.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap().to_owned();

        let request_proof = proof(&dpop_key, &dpop_jwk, "POST", &key_check, Some(&token), None);
        let r = http.post(&key_check).header("sfm-migration-key", &key).header("authorization", format!("DPoP {token}")).header("dpop", &request_proof).send().await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let r = http.post(&key_check).header("sfm-migration-key", &key).header("authorization", format!("DPoP {token}")).header("dpop", &request_proof).send().await.unwrap();
        assert_eq!(r.status(), 401, "a replayed proof must be refused");
        assert!(r.text().await.unwrap().contains("token-invalid"));
    });
}

/// Backpressure: with one request slot, a second upload request while a slow PATCH is in flight gets
/// 503 `busy` with `Retry-After`; once the PATCH is done the server serves again.
#[test]
fn a_busy_api_answers_503_with_retry_after() {
    let samples = Samples::new();
    let migration = provision("api-busy", "Lenient");
    let ns = migration.ns.name.clone();
    let port = free_port();
    let _api = start_sample_api(
        &samples,
        port,
        &format!("api-{ns}"),
        &["--max-inflight-requests", "1"],
    );
    let base = format!("http://127.0.0.1:{port}");
    let organisation = samples.encrypt(&samples.organisation_zip);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = http();
        let created = create_upload(
            &client,
            &base,
            &migration.key,
            "ExportData.dat",
            "ExportData",
            organisation.len(),
        )
        .await;
        assert_eq!(created.status(), 201);
        let url = created.headers()["location"].to_str().unwrap().to_owned();
        let (first, rest) = organisation.split_at(1000);
        let (first, rest) = (
            bytes::Bytes::copy_from_slice(first),
            bytes::Bytes::copy_from_slice(rest),
        );
        let slow = futures::stream::iter(vec![Ok::<_, std::io::Error>(first)]).chain(
            futures::stream::once(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(rest)
            }),
        );
        let slow_client = client.clone();
        let slow_url = url.clone();
        let in_flight = tokio::spawn(async move {
            patch_request(&slow_client, &slow_url, 0)
                .body(reqwest::Body::wrap_stream(slow))
                .send()
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = create_request(
            &reqwest::Client::new(),
            &base,
            &migration.key,
            "ExportData.dat",
            "ExportData",
            10,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(busy.status(), 503);
        assert!(
            contract::parse_retry_after(busy.headers()["retry-after"].to_str().unwrap()).is_some()
        );
        assert!(busy.text().await.unwrap().contains("\"busy\""));
        let done = in_flight.await.unwrap();
        assert_eq!(done.status(), 204);
        assert_eq!(
            done.headers()["sfm-ingest-state"].to_str().unwrap(),
            "stored"
        );
    });
}
