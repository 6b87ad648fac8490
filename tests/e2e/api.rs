//! The migration API against the real control plane and PostgreSQL: the operator provisions a
//! MigrationDatabase and a MigrationKey, the API runs as a process, NHN's sample organisation and
//! patient are put in the envelope and uploaded by `tuspy` (a tus client from PyPI) or by hand in
//! chunks, and the rows, the counts in the CR status, verify, activate, hostile input, keys that must
//! not work, two replicas with a `kill -9` between chunks and in the middle of an ingest, upload
//! expiry and its sweep, and the absence of personal data and secrets in logs and status are checked.
//!
//! Every test starts from a [`Fixture`] (the samples, a provisioned database with its key, a runtime
//! and an HTTP client) and starts the API processes it needs with [`Fixture::api`].

use super::cluster::*;
use super::processes::*;
use crate::samples::*;
use futures::StreamExt as _;
use reqwest::{Method, RequestBuilder};
use sqlx::Connection as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

use sfm_migration::contract::{self, ChecksumAlgorithm, Manifest, ManifestFile, UploadChecksum};
use sfm_migration::format::archive::{ArchiveLimits, read_archive, write_archive};
use sfm_migration::format::envelope::{self, RecipientCertificate, generate_demo_key_pair};
use sfm_migration::format::patient_file::{
    FormatLimits, read_organisation_file, read_patient_file,
};

/// The MigrationDatabase of every test.
const DB: &str = "sample";

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
            organisation_zip: organisation_zip(),
            patient_zip: patient_zip(),
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

    /// The sample patient under the Id `guid`, with `from` replaced by `to` in `PatientData.xml`
    /// (nothing when `from` is empty), in the envelope.
    fn patient_as(&self, guid: &str, from: &str, to: &str) -> Vec<u8> {
        self.encrypt(&patient_zip_replacing(&[(PATIENT_GUID, guid), (from, to)]))
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

/// The status code of the API's health check.
async fn healthz(client: &reqwest::Client, base: &str) -> u16 {
    client
        .get(format!("{base}{}", contract::PATH_HEALTHZ))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn database_yaml(ns: &str, name: &str, schema_check: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  organisation:\n    name: Sample Legekontor\n    organisationNumber: \"{SAMPLE_ORGANISATION_NUMBER}\"\n    helseIdClientId: sample-sfm\n  dataModelVersion: 4\n  reclaimPolicy: Delete\n  validation:\n    allowSyntheticIdentities: false\n    schemaCheck: {schema_check}\n"
    )
}

fn key_yaml(ns: &str, name: &str, db: &str, time_to_live: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  databaseRef: {db}\n  timeToLive: {time_to_live}\n"
    )
}

/// Applies a MigrationDatabase, waits until it is Ready and returns its migrator's URI.
fn provision_database(ns: &str, name: &str, yaml: &str) -> String {
    kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    let mdb = format!("mdb/{name}");
    kubectl_ok(
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &mdb,
            WAIT_TIMEOUT,
        ],
        None,
    );
    let migrator = jsonpath(ns, &mdb, "{.status.database.migratorSecret}");
    let (api_ns, migrator_name) = migrator.split_once('/').unwrap();
    secret_field(api_ns, migrator_name, "uri")
}

/// Applies a MigrationKey for `db`, waits until it is Active and returns the key.
fn issue_key(ns: &str, name: &str, db: &str, time_to_live: &str) -> String {
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&key_yaml(ns, name, db, time_to_live)),
    );
    let mkey = format!("mkey/{name}");
    assert!(
        eventually(PATIENCE, || jsonpath(ns, &mkey, "{.status.phase}")
            == "Active"),
        "{mkey} did not become Active"
    );
    secret_field(ns, &jsonpath(ns, &mkey, "{.status.secretName}"), "key")
}

/// One test's world: NHN's samples under a fresh key pair (and their envelopes, encrypted once), the
/// MigrationDatabase `sample` with its key `key-1`, provisioned by the test's own operator in a
/// namespace of its own, a tokio runtime and an HTTP client. Dropped, it stops the operator and
/// deletes the namespace; the test's API processes ([`Api`]) are its own locals, dropped first.
struct Fixture {
    samples: Samples,
    /// `ExportData.dat` in the envelope.
    organisation: Vec<u8>,
    /// The sample patient in the envelope.
    patient: Vec<u8>,
    operator: Process,
    ns: TestNamespace,
    /// Where this test's API runs and the operator puts the migrator's Secret.
    api_ns: TestNamespace,
    /// The migration key of `key-1` (`sfmk_<keyId>_<secret>`).
    key: String,
    /// The migrator's URI of the staging database.
    migrator_uri: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// One `sfm-migration-api serve` process of a test, on 127.0.0.1:`port`; killed when dropped.
struct Api {
    process: Process,
    port: u16,
    base: String,
}

impl Api {
    /// The URL of an upload (given by any replica's `Location`) on this process.
    fn file(&self, url: &str) -> String {
        format!("{}/files/{}", self.base, upload_id(url))
    }
}

/// The opaque upload id: the last segment of its URL.
fn upload_id(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// The upload's row id in `sfm.uploads`: the random half of the upload id
/// (`<database uid>.<uuid>`, both 32 hex digits).
fn row_id(url: &str) -> Uuid {
    Uuid::parse_str(upload_id(url).split_once('.').unwrap().1).unwrap()
}

impl Fixture {
    /// The database with the given schema check (`Lenient` or `Strict`).
    fn new(prefix: &str, schema_check: &str) -> Fixture {
        Fixture::with_database(prefix, |ns| database_yaml(ns, DB, schema_check))
    }

    /// The database as `yaml(namespace)` describes it.
    fn with_database(prefix: &str, yaml: impl FnOnce(&str) -> String) -> Fixture {
        install_crds();
        // Its own API namespace: an API process serves (and its recovery loop ingests for) every
        // database whose migrator Secret it can read; another test's API, with another decryption
        // key, must not claim this test's uploads.
        let api_ns = TestNamespace::new(&format!("{prefix}-api"));
        let ns = TestNamespace::new(prefix);
        let operator = start_operator(&ns.name, &api_ns.name, &format!("operator-{}", ns.name));
        let migrator_uri = provision_database(&ns.name, DB, &yaml(&ns.name));
        let key = issue_key(&ns.name, "key-1", DB, "2h");
        let samples = Samples::new();
        Fixture {
            organisation: samples.encrypt(&samples.organisation_zip),
            patient: samples.encrypt(&samples.patient_zip),
            samples,
            operator,
            ns,
            api_ns,
            key,
            migrator_uri,
            runtime: tokio::runtime::Runtime::new().unwrap(),
            client: http(),
        }
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    /// A field of the MigrationDatabase, by jsonpath.
    fn status(&self, path: &str) -> String {
        jsonpath(self.ns(), &format!("mdb/{DB}"), path)
    }

    /// Waits until a field of the MigrationDatabase reads `expected`.
    fn wait_for_status(&self, path: &str, expected: &str) {
        assert!(
            eventually(PATIENCE, || self.status(path) == expected),
            "{path} is {:?}, not {expected:?}",
            self.status(path)
        );
    }

    /// The API on a free port, waiting up to 30 s for an ingest, with `extra` flags; `name` names its
    /// log (with the namespace).
    fn api(&self, name: &str, extra: &[&str]) -> Api {
        self.api_on(free_port(), name, extra)
    }

    /// As [`Fixture::api`] on a given port (a restart after a kill).
    fn api_on(&self, port: u16, name: &str, extra: &[&str]) -> Api {
        self.api_with(&self.samples.key_file, port, name, extra)
    }

    /// As [`Fixture::api_on`] with another decryption key.
    fn api_with(&self, key_file: &Path, port: u16, name: &str, extra: &[&str]) -> Api {
        let mut args = vec!["--ingest-wait-seconds", "30"];
        args.extend_from_slice(extra);
        let log_name = format!("{name}-{}", self.ns());
        Api {
            process: start_api(&self.api_ns.name, key_file, port, &log_name, &args),
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Uploads `data` with tuspy and this test's key; returns tuspy's JSON line.
    fn tuspy(
        &self,
        api: &Api,
        data: &[u8],
        name: &str,
        file_type: &str,
        chunk: usize,
        session_id: bool,
    ) -> serde_json::Value {
        let file = self.samples.write(&name.replace('\\', "_"), data);
        tuspy(
            &api.base, &self.key, &file, name, file_type, chunk, session_id,
        )
    }

    /// The report the sample organisation file names, as `Reports0\<id>.rpt` (a zip holding
    /// `<id>.xps`), encrypted: its name and bytes.
    fn report(&self) -> (String, Vec<u8>) {
        let report = raw_zip(&[(&format!("{REPORT_ID}.xps"), b"PK synthetic XPS".as_slice())]);
        (
            format!("Reports0\\{REPORT_ID}.rpt"),
            self.samples.encrypt(&report),
        )
    }

    /// Uploads the organisation file with tuspy, asserts that it was stored and returns its URL.
    fn store_organisation(&self, api: &Api, chunk: usize, session_id: bool) -> String {
        let result = self.tuspy(
            api,
            &self.organisation,
            "ExportData.dat",
            "ExportData",
            chunk,
            session_id,
        );
        assert_eq!(result["ingestState"], "stored", "{result}");
        result["url"].as_str().unwrap().to_owned()
    }

    /// Creates an upload with this test's key; returns its URL (`Location`).
    async fn create(&self, base: &str, name: &str, file_type: &str, length: usize) -> String {
        new_upload(&self.client, base, &self.key, name, file_type, length).await
    }

    async fn patch(&self, url: &str, offset: usize, body: &[u8]) -> reqwest::Response {
        patch(&self.client, &self.key, url, offset, body).await
    }

    /// Creates an upload and sends all of `data` in one PATCH; returns the upload's URL and the
    /// PATCH's answer.
    async fn upload_whole(
        &self,
        base: &str,
        name: &str,
        file_type: &str,
        data: &[u8],
    ) -> (String, reqwest::Response) {
        let url = self.create(base, name, file_type, data.len()).await;
        let response = self.patch(&url, 0, data).await;
        (url, response)
    }

    /// The sample patient under the Id `guid` with `from` replaced by `to` ([`Samples::patient_as`]),
    /// uploaded whole as `Patients0\<guid>.pat`; returns the PATCH's answer.
    async fn upload_patient_as(
        &self,
        base: &str,
        guid: &str,
        from: &str,
        to: &str,
    ) -> reqwest::Response {
        let file = self.samples.patient_as(guid, from, to);
        let name = format!("Patients0\\{guid}.pat");
        self.upload_whole(base, &name, "Patient", &file).await.1
    }

    /// A request to the API with this test's key in `Sfm-Migration-Key`.
    fn with_key(&self, method: Method, url: String) -> RequestBuilder {
        self.client
            .request(method, url)
            .header("sfm-migration-key", &self.key)
    }

    /// `GET /api/v1/status` of the API at `base`.
    /// `POST /api/v1/verify` with this test's key and `manifest`.
    async fn verify(&self, base: &str, manifest: &Manifest) -> reqwest::Response {
        self.with_key(Method::POST, format!("{base}{}", contract::PATH_VERIFY))
            .json(manifest)
            .send()
            .await
            .unwrap()
    }

    async fn api_status(&self, base: &str) -> contract::MigrationStatus {
        self.with_key(Method::GET, format!("{base}{}", contract::PATH_STATUS))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A tus HEAD with the `Sfm-Migration-Key` header `key`.
    async fn head(&self, url: &str, key: &str) -> reqwest::Response {
        self.client
            .head(url)
            .header("tus-resumable", "1.0.0")
            .header("sfm-migration-key", key)
            .send()
            .await
            .unwrap()
    }

    /// One number from the staging database, as the migrator sees it.
    async fn count(&self, sql: &'static str) -> i64 {
        self.scalar(sql).await
    }

    /// One value from the staging database, as the migrator sees it.
    async fn scalar<T>(&self, sql: &'static str) -> T
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        scalar_at(&self.migrator_uri, sql).await
    }

    /// A superuser session on the staging database (the test server's admin URL with the staging
    /// database's name): for what the migrator may not do or see, such as locks, other sessions in
    /// `pg_stat_activity`, or moving `expires_at`.
    async fn admin(&self) -> sqlx::PgConnection {
        let staging = url::Url::parse(&self.migrator_uri).unwrap();
        let mut admin = url::Url::parse(&admin_url()).unwrap();
        admin.set_path(staging.path());
        sqlx::PgConnection::connect(admin.as_str()).await.unwrap()
    }

    /// An upload's state; `None` once it is gone.
    async fn upload_state(&self, url: &str) -> Option<String> {
        self.upload_row(url).await.map(|(state, ..)| state)
    }

    /// An upload's row: its state, offset and number of chunks; `None` once it is gone.
    async fn upload_row(&self, url: &str) -> Option<(String, i64, i64)> {
        let mut connection = sqlx::PgConnection::connect(&self.migrator_uri)
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT u.state, u.upload_offset, (SELECT count(*) FROM sfm.upload_chunks c WHERE c.upload_id = u.id)
             FROM sfm.uploads u WHERE u.id = $1",
        )
        .bind(row_id(url))
        .fetch_optional(&mut connection)
        .await
        .unwrap()
    }

    /// Moves an upload's `expires_at` to `ago` (an SQL interval) before now, as the admin.
    async fn expire(&self, url: &str, ago: &str) {
        let done =
            sqlx::query("UPDATE sfm.uploads SET expires_at = now() - $2::interval WHERE id = $1")
                .bind(row_id(url))
                .bind(ago)
                .execute(&mut self.admin().await)
                .await
                .unwrap();
        assert_eq!(done.rows_affected(), 1, "no upload {url}");
    }

    /// Waits until the upload's state is `state`.
    async fn wait_for_upload(&self, url: &str, state: &str) {
        let reached =
            eventually_async(|| async { self.upload_state(url).await.as_deref() == Some(state) })
                .await;
        assert!(
            reached,
            "the upload is {:?}, not {state}",
            self.upload_row(url).await
        );
    }

    /// The organisation stored, the sample patient left `complete` by a replica killed in the middle
    /// of its ingest, and a replica whose decryption key is another one, which has tried the upload
    /// and left it (the grace): the upload's URL and that replica.
    fn patient_held_back_by_a_replica_without_the_key(&self) -> (String, Api) {
        let mut apis = [self.api("api-a", &[])];
        self.store_organisation(&apis[0], 65536, false);
        let patient = &self.patient;
        let url = self.run(async {
            let url = self
                .create(&apis[0].base, &patient_name(), "Patient", patient.len())
                .await;
            let (first, last) = patient.split_at(patient.len() / 2);
            assert_eq!(self.patch(&url, 0, first).await.status(), 204);
            self.kill_mid_ingest(&mut apis, 0, &url, first.len(), last)
                .await;
            url
        });
        let other = generate_demo_key_pair(2048, "SFM migrering").unwrap();
        let other_key = self
            .samples
            .write("other.key.pem", other.private_key_pem.as_bytes());
        let keyless = self.api_with(&other_key, free_port(), "api-other-key", &[]);
        assert!(
            eventually(PATIENCE, || keyless
                .process
                .log_text()
                .contains("cannot decrypt an upload left complete")),
            "the replica without the key did not try the upload:\n{}",
            keyless.process.log_text()
        );
        (url, keyless)
    }

    /// Sends the last chunk of an upload to `apis[via]` and kills (SIGKILL) the API process that is
    /// then ingesting the upload, in the middle of its ingest; returns that process's index.
    ///
    /// Mid-ingest by construction, not by timing: an admin session holds `sfm.documents` in SHARE
    /// mode, so whichever ingest claims the upload (the completing PATCH's, or a recovery loop's)
    /// stops when it comes to the patient's documents, with its transaction open, the upload's row
    /// lock held and the stored file, patient and its rows written but not committed. The test finds
    /// that session in `pg_stat_activity` (exactly one API session waits for the lock) and the
    /// process that owns its connection (by the session's client port), checks what is visible
    /// meanwhile (the upload `complete`, nothing of it stored), kills that process, then releases the
    /// lock and waits until PostgreSQL has ended the dead ingest's session (its transaction aborts;
    /// it cannot commit: the client that would send COMMIT is gone).
    async fn kill_mid_ingest(
        &self,
        apis: &mut [Api],
        via: usize,
        url: &str,
        offset: usize,
        last: &[u8],
    ) -> usize {
        let upload = row_id(url);
        let mut holder = self.admin().await;
        let mut hold = holder.begin().await.unwrap();
        sqlx::query("LOCK TABLE sfm.documents IN SHARE MODE")
            .execute(&mut *hold)
            .await
            .unwrap();
        let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *hold)
            .await
            .unwrap();

        let completing = tokio::spawn(
            patch_request(&self.client, &self.key, &apis[via].file(url), offset)
                .header(
                    "upload-checksum",
                    UploadChecksum::of(ChecksumAlgorithm::Sha256, last).to_header(),
                )
                .body(last.to_vec())
                .send(),
        );

        let mut watch = self.admin().await;
        let deadline = Instant::now() + PATIENCE;
        let (backend, client_port, query, wrote) = loop {
            let waiting: Vec<(i32, Option<i32>, Option<String>, bool)> = sqlx::query_as(
                "SELECT pid, client_port, query, backend_xid IS NOT NULL FROM pg_stat_activity
                 WHERE application_name = 'sfm-migration-api' AND $1 = ANY (pg_blocking_pids(pid))",
            )
            .bind(holder_pid)
            .fetch_all(&mut watch)
            .await
            .unwrap();
            match waiting.as_slice() {
                [] => {
                    assert!(
                        Instant::now() < deadline,
                        "no ingest came to wait for sfm.documents"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                [one] => break one.clone(),
                more => panic!("several API sessions wait for sfm.documents: {more:?}"),
            }
        };
        let query = query.unwrap_or_default();
        // The patient's earlier documents are deleted (a re-export replaces them), then its new
        // ones inserted: either waits.
        assert!(
            query.contains("sfm.documents"),
            "the waiting session is not at the documents: {query}"
        );
        assert!(wrote, "the ingest has written nothing yet");
        let client_port = u16::try_from(client_port.expect("the API connects over TCP")).unwrap();
        let server_port = server_port(&mut watch).await;
        let owner = apis
            .iter()
            .position(|api| api.process.has_session_port(client_port, server_port))
            .expect("the waiting ingest is one of the test's API processes");
        // The upload is complete (committed before the ingest began) and claimed: its row lock is
        // held, so a recovery loop skips it. Nothing of it is visible as stored.
        let claimable: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM sfm.uploads WHERE id = $1 AND state = 'complete' FOR UPDATE SKIP LOCKED",
        )
        .bind(upload)
        .fetch_optional(&mut watch)
        .await
        .unwrap();
        assert_eq!(claimable, None, "the ingest does not hold the upload");
        assert_eq!(self.upload_state(url).await.as_deref(), Some("complete"));

        apis[owner].process.kill();

        // The completing PATCH: cut off when its own process was killed (unless it had stopped
        // waiting already), `pending` when another replica's recovery loop had the claim.
        match completing.await.unwrap() {
            Err(_) => assert_eq!(owner, via, "the PATCH failed on a replica that lives"),
            Ok(response) => {
                assert_eq!(response.status(), 204);
                assert_eq!(header(&response, "sfm-ingest-state"), "pending");
            }
        }
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sfm.stored_files WHERE upload_id = $1 OR sha256 = (SELECT sha256 FROM sfm.uploads WHERE id = $1)",
        )
        .bind(upload)
        .fetch_one(&mut watch)
        .await
        .unwrap();
        assert_eq!(
            stored, 0,
            "a file of the upload is stored before the ingest committed"
        );

        hold.rollback().await.unwrap();
        let ended = eventually_async(|| async {
            // The pid and the client's port: a new session of another test could reuse the pid.
            let alive: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND client_port = $2",
            )
            .bind(backend)
            .bind(i32::from(client_port))
            .fetch_one(&mut self.admin().await)
            .await
            .unwrap();
            alive == 0
        })
        .await;
        assert!(ended, "the killed API's ingest session lives on");
        owner
    }
}

/// Polls `check` until it returns true or [`PATIENCE`] passes; returns whether it became true.
async fn eventually_async<F: Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `POST /api/v1/key-check` with `key`: the answer's status and problem code.
async fn key_check(client: &reqwest::Client, base: &str, key: &str) -> (u16, String) {
    let response = client
        .post(format!("{base}{}", contract::PATH_KEY_CHECK))
        .header("sfm-migration-key", key)
        .send()
        .await
        .unwrap();
    problem(response).await
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

/// One value read on a fresh connection to `uri` (a database as the role in the URL sees it).
async fn scalar_at<T>(uri: &str, sql: &'static str) -> T
where
    T: Send + Unpin,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let mut connection = sqlx::PgConnection::connect(uri).await.unwrap();
    sqlx::query_scalar(sql)
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    sfm_migration::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// A response header that must be there.
fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers()))
        .to_str()
        .unwrap()
}

/// The status and the problem code of an answer (its body when it is no problem document).
async fn problem(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let code = serde_json::from_str::<contract::Problem>(&body)
        .map(|p| p.code.as_str().to_owned())
        .unwrap_or(body);
    (status, code)
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
fn patch_request(client: &reqwest::Client, key: &str, url: &str, offset: usize) -> RequestBuilder {
    client
        .patch(url)
        .header("tus-resumable", "1.0.0")
        .header("sfm-migration-key", key)
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

/// Creates an upload, asserts 201 and returns its URL (`Location`).
async fn new_upload(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
    file_type: &str,
    length: usize,
) -> String {
    let response = create_upload(client, base, key, name, file_type, length).await;
    assert_eq!(response.status(), 201, "creating {name}");
    header(&response, "location").to_owned()
}

/// A tus PATCH with a SHA-256 `Upload-Checksum` of the body.
async fn patch(
    client: &reqwest::Client,
    key: &str,
    url: &str,
    offset: usize,
    body: &[u8],
) -> reqwest::Response {
    patch_request(client, key, url, offset)
        .header(
            "upload-checksum",
            UploadChecksum::of(ChecksumAlgorithm::Sha256, body).to_header(),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// A request with `Tus-Resumable: 1.0.0` and the key (HEAD and DELETE; the upload's URL alone
/// authorises nothing).
async fn tus(client: &reqwest::Client, key: &str, method: Method, url: &str) -> reqwest::Response {
    client
        .request(method, url)
        .header("tus-resumable", "1.0.0")
        .header("sfm-migration-key", key)
        .send()
        .await
        .unwrap()
}

/// Request headers and the answer they must get: status and problem code.
type Expectation<'a> = (Vec<(&'a str, &'a str)>, (u16, &'a str));

/// A request with exactly these headers and body; its status and problem code ([`problem`]).
async fn exactly(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut request = client.request(method, url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    problem(request.send().await.unwrap()).await
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

/// Lenient: the sample organisation and patient end up as rows with the counts in status, the patient
/// with a deviation naming `Brukere`; verify and activate reach Operational; nothing personal leaks.
#[test]
fn sample_export_over_tus_is_stored_verified_and_activated() {
    let fx = Fixture::new("api-lenient", "Lenient");
    let api = fx.api("api", &[]);
    let base = &api.base;
    let (organisation, patient) = (&fx.organisation, &fx.patient);
    let patient_name = patient_name();

    fx.run(async {
        // A patient before the organisation is refused at creation.
        let early = create_upload(
            &fx.client,
            base,
            &fx.key,
            &patient_name,
            "Patient",
            patient.len(),
        )
        .await;
        assert_eq!(problem(early).await, (409, "organisation-missing".into()));
    });

    // The organisation file by tuspy with an upload-session GUID in SessionId (as NHN's uploader
    // sends) and the key in the header of every request, the patient without SessionId; 4 KiB chunks.
    fx.store_organisation(&api, 4096, true);
    let result = fx.tuspy(&api, patient, &patient_name, "Patient", 4096, false);
    assert_eq!(result["ingestState"], "stored", "{result}");
    // The same file again stores one patient.
    let again = fx.tuspy(&api, patient, &patient_name, "Patient", 65536, false);
    assert_eq!(again["ingestState"], "stored", "{again}");

    fx.run(async {
        assert_eq!(fx.count("SELECT count(*) FROM sfm.users").await, 7);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        assert!(fx.count("SELECT count(*) FROM sfm.treatments").await > 0);
        assert!(fx.count("SELECT count(*) FROM sfm.messages").await > 0);
        assert!(fx.count("SELECT count(*) FROM sfm.documents WHERE kind = 'message'").await > 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.documents WHERE kind = 'patient_data'").await, 1);
        assert!(fx.count("SELECT count(*) FROM sfm.deviations WHERE path LIKE '%Brukere%'").await > 0, "the lenient patient carries a Brukere deviation");
        assert_eq!(fx.count("SELECT count(*) FROM sfm.stored_files WHERE migration_key_id <> '' AND received_at IS NOT NULL").await, 2);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.upload_chunks").await, 0);
    });
    fx.wait_for_status("{.status.migration.patients.stored}", "1");
    assert_eq!(fx.status("{.status.migration.users.stored}"), "7");
    assert_eq!(fx.status("{.status.migration.organisationStored}"), "true");
    let mdb = format!("mdb/{DB}");
    let managers = kubectl_ok(
        &[
            "-n",
            fx.ns(),
            "get",
            &mdb,
            "--show-managed-fields",
            "-o",
            "json",
        ],
        None,
    );
    assert!(managers.contains("\"manager\": \"sfm-migration-api\""));

    // NHN's organisation file names one report (`RapportFil` `Reports0\<id>.xps`): until a report
    // file holding it is stored, verify lists it as missing, though the manifest matches what is
    // stored. It travels as `Reports0\<id>.rpt`, a zip holding `<id>.xps`.
    let (report_name, report) = fx.report();
    fx.run(async {
        let manifest = Manifest::new(vec![
            manifest_entry(
                "ExportData.dat",
                contract::FileType::ExportData,
                organisation,
            ),
            manifest_entry(&patient_name, contract::FileType::Patient, patient),
        ]);
        let response = fx.verify(base, &manifest).await;
        assert_eq!(response.status(), 409);
        let mismatch: contract::Problem = response.json().await.unwrap();
        assert_eq!(
            mismatch.mismatches.unwrap().missing,
            vec![format!("Reports0\\{REPORT_ID}.xps")]
        );
    });
    let result = fx.tuspy(&api, &report, &report_name, "Report", 65536, false);
    assert_eq!(result["ingestState"], "stored", "{result}");

    fx.run(async {
        let activate = format!("{base}{}", contract::PATH_ACTIVATE);
        let manifest_with = |patient_file: &[u8]| {
            Manifest::new(vec![
                manifest_entry(
                    "ExportData.dat",
                    contract::FileType::ExportData,
                    organisation,
                ),
                manifest_entry(&patient_name, contract::FileType::Patient, patient_file),
                manifest_entry(&report_name, contract::FileType::Report, &report),
            ])
        };
        // A manifest that lacks nothing but names another digest is a mismatch; the right one validates.
        let mut wrong = manifest_with(organisation);
        wrong.files[1].size = patient.len() as u64;
        let response = fx.verify(base, &wrong).await;
        assert_eq!(response.status(), 409);
        let mismatch: contract::Problem = response.json().await.unwrap();
        assert_eq!(mismatch.code, contract::ProblemCode::ManifestMismatch);
        assert_eq!(
            mismatch.mismatches.unwrap().digest_mismatch,
            vec![patient_name.clone()]
        );

        // Activation before validation is refused.
        let response = fx
            .with_key(Method::POST, activate.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 409);

        let manifest = manifest_with(patient);
        let response = fx.verify(base, &manifest).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let verified: contract::VerifyResponse = response.json().await.unwrap();
        assert_eq!(verified.digest, manifest.digest());
        assert_eq!(verified.patients, 1);
        assert_eq!(
            fx.status("{.status.migration.validatedDigest}"),
            manifest.digest()
        );

        // Validated: no more uploads.
        let refused =
            create_upload(&fx.client, base, &fx.key, "Patients0\\x.pat", "Patient", 10).await;
        assert_eq!(problem(refused).await, (409, "migration-validated".into()));

        let status = fx.api_status(base).await;
        assert_eq!(status.patients.stored, 1);
        assert_eq!(
            status.validated_digest.as_deref(),
            Some(manifest.digest().as_str())
        );

        let response = fx.with_key(Method::POST, activate).send().await.unwrap();
        assert_eq!(response.status(), 202);
    });
    kubectl_ok(
        &[
            "-n",
            fx.ns(),
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
    let log = api.process.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the API was refused something under the chart's RBAC: {log}"
    );
    let everything = [
        log,
        fx.operator.log_text(),
        metrics,
        kubectl_ok(&["-n", fx.ns(), "get", "mdb,mkey", "-o", "yaml"], None),
        kubectl_ok(&["-n", fx.ns(), "get", "events", "-o", "yaml"], None),
    ]
    .join("\n");
    let password = fx
        .migrator_uri
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let secret_part = fx.key.splitn(3, '_').nth(2).unwrap().to_owned();
    for value in fx
        .samples
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

/// The report the sample organisation file names.
const REPORT_ID: &str = "d86e6322-9c1b-42d9-aebc-1d03207c8942";

/// The operator may act on an activation request before the API has shown it in the status: a pass
/// that reads the validation record just after the request commits switches at once and revokes the
/// migrator, so the API's own status write fails. Here a trigger revokes a table the status read
/// needs in the request's own transaction, the worst moment. The request is still accepted (202)
/// and, once the migrator may read again, the database switches.
#[test]
fn an_activation_is_accepted_when_its_status_write_fails_after_the_request_is_recorded() {
    let fx = Fixture::new("api-activate", "Lenient");
    let api = fx.api("api", &[]);
    fx.store_organisation(&api, 65536, false);
    let (report_name, report) = fx.report();
    let result = fx.tuspy(&api, &report, &report_name, "Report", 65536, false);
    assert_eq!(result["ingestState"], "stored", "{result}");
    let base = api.base.clone();
    fx.run(async {
        let manifest = Manifest::new(vec![
            manifest_entry(
                "ExportData.dat",
                contract::FileType::ExportData,
                &fx.organisation,
            ),
            manifest_entry(&report_name, contract::FileType::Report, &report),
        ]);
        let response = fx.verify(&base, &manifest).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    });
    fx.wait_for_status(
        "{.status.conditions[?(@.type=='Validated')].status}",
        "True",
    );
    fx.run(async {
        let mut admin = fx.admin().await;
        for statement in [
            "CREATE FUNCTION revoke_at_request() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
             BEGIN EXECUTE format('REVOKE SELECT ON sfm.rejections FROM %I', session_user); RETURN NULL; END $$",
            "CREATE TRIGGER revoke_at_request AFTER UPDATE ON sfm.validation
             FOR EACH STATEMENT EXECUTE FUNCTION revoke_at_request()",
        ] {
            sqlx::query(statement).execute(&mut admin).await.unwrap();
        }
        let response = fx
            .with_key(Method::POST, format!("{base}{}", contract::PATH_ACTIVATE))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let accepted: contract::ActivateResponse = response.json().await.unwrap();
        let recorded: chrono::DateTime<chrono::Utc> =
            fx.scalar("SELECT activation_requested_at FROM sfm.validation").await;
        assert_eq!(accepted.activation_requested_at, recorded);
        // The status could not be read: not shown, and the operator not woken.
        assert_eq!(fx.status("{.status.migration.activationRequestedAt}"), "");
        let migrator = url::Url::parse(&fx.migrator_uri).unwrap();
        for statement in [
            "DROP TRIGGER revoke_at_request ON sfm.validation".to_owned(),
            "DROP FUNCTION revoke_at_request()".to_owned(),
            format!("GRANT SELECT ON sfm.rejections TO \"{}\"", migrator.username()),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    });
    fx.wait_for_status("{.status.phase}", "Operational");
}

/// Strict: the 2021 sample patient (`Brukere` where the XSD has `InVib`) is rejected with a reason.
#[test]
fn strict_schema_check_rejects_the_sample_patient() {
    let fx = Fixture::new("api-strict", "Strict");
    let api = fx.api("api", &[]);
    fx.store_organisation(&api, 8192, false);
    let result = fx.tuspy(&api, &fx.patient, &patient_name(), "Patient", 8192, false);
    assert_eq!(result["ingestState"], "rejected", "{result}");
    assert_eq!(result["rejectionCode"], "xml-schema");
    fx.run(async {
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.rejections WHERE reason_code = 'xml_schema' AND message LIKE '%Brukere%'").await, 1);
    });
    fx.wait_for_status("{.status.migration.patients.rejected}", "1");
}

/// Two API processes; the PATCHes of one upload alternate between them, one is killed with SIGKILL
/// between chunks and started again: the upload completes, nothing is lost or stored twice. Then the
/// same person under another Id is stored and flagged, and an HPR number no user has is rejected
/// until a new organisation file gives a user that number.
#[test]
fn two_replicas_share_an_upload_across_a_kill() {
    let fx = Fixture::new("api-replicas", "Lenient");
    let mut apis = [fx.api("api-a", &[]), fx.api("api-b", &[])];
    fx.store_organisation(&apis[0], 65536, false);
    let patient = &fx.patient;
    fx.run(async {
        let url = fx
            .create(&apis[0].base, &patient_name(), "Patient", patient.len())
            .await;
        let chunks: Vec<&[u8]> = patient.chunks(patient.len() / 6 + 1).collect();
        let mut offset = 0;
        for (index, chunk) in chunks.iter().enumerate() {
            if index == 3 {
                // A crash between chunks: the next PATCH for A goes to a fresh process on the same port.
                apis[0].process.kill();
                apis[0] = fx.api_on(apis[0].port, "api-a2", &[]);
            }
            let target = apis[index % 2].file(&url);
            // A stale PATCH (the previous offset) is refused and changes nothing.
            if index > 0 {
                let previous = chunks[index - 1];
                let stale = fx.patch(&target, offset - previous.len(), previous).await;
                assert_eq!(stale.status(), 409);
            }
            let response = fx.patch(&target, offset, chunk).await;
            assert_eq!(
                response.status(),
                204,
                "chunk {index}: {:?}",
                response.text().await
            );
            offset += chunk.len();
            assert_eq!(header(&response, "upload-offset"), offset.to_string());
            if index == chunks.len() - 1 {
                assert_eq!(header(&response, "sfm-ingest-state"), "stored");
            }
        }
        let head = fx.head(&apis[1].file(&url), &fx.key).await;
        assert_eq!(header(&head, "upload-offset"), patient.len().to_string());
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.stored_files WHERE kind = 'patient'")
                .await,
            1
        );
        // The stored file is byte for byte what was sent.
        let digest: String = fx
            .scalar("SELECT encode(sha256, 'hex') FROM sfm.stored_files WHERE kind = 'patient'")
            .await;
        assert_eq!(digest, contract::sha256_hex(patient));

        // The same person under another Id is stored and flagged; an HPR number no user has is rejected.
        let twin_guid = "1056e3cc-38fc-4e3c-8cd0-1c831db782d4";
        let r = fx.upload_patient_as(&apis[1].base, twin_guid, "", "").await;
        assert_eq!(header(&r, "sfm-ingest-state"), "stored");
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.deviations WHERE message LIKE '%same person%'")
                .await,
            1
        );

        // A patient naming HPR number 999999999, sent to the first replica.
        let stranger = || {
            fx.upload_patient_as(
                &apis[0].base,
                "2a4e3c9e-38fc-4e3c-8cd0-1c831db782d4",
                "<Hpr>222200082</Hpr>",
                "<Hpr>999999999</Hpr>",
            )
        };
        let r = stranger().await;
        assert_eq!(header(&r, "sfm-ingest-state"), "rejected");
        assert_eq!(header(&r, "sfm-rejection-code"), "data-quality-hpr-unknown");
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 2);

        // A new organisation file gives that user the HPR number: the replica that refused the
        // patient (and read the users for it) stores it now, and the rejection is resolved.
        let entries = read_archive(&fx.samples.organisation_zip, &ArchiveLimits::default())
            .unwrap()
            .entries;
        let xml = String::from_utf8(entries[0].data.clone()).unwrap();
        assert_eq!(xml.matches("<Id>222200082</Id>").count(), 1);
        let renumbered = xml.replace("<Id>222200082</Id>", "<Id>999999999</Id>");
        let organisation = zip_entries(&[(entries[0].name.clone(), renumbered.into_bytes())]);
        let (_, r) = fx
            .upload_whole(
                &apis[1].base,
                "ExportData.dat",
                "ExportData",
                &fx.samples.encrypt(&organisation),
            )
            .await;
        assert_eq!(header(&r, "sfm-ingest-state"), "stored");
        let r = stranger().await;
        assert_eq!(header(&r, "sfm-ingest-state"), "stored");
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 3);
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.rejections WHERE NOT resolved")
                .await,
            0
        );
    });
}

/// Hostile and malformed input: each gets a clear problem (or a recorded rejection) and nothing is
/// stored; the server keeps serving.
#[test]
fn bad_input_gets_a_clear_problem_and_stores_nothing() {
    let fx = Fixture::new("api-bad", "Lenient");
    let api = fx.api("api", &["--max-upload-bytes", "2000000"]);
    let base = &api.base;
    let organisation = &fx.organisation;
    fx.run(async {
        let client = &fx.client;
        let key = &fx.key;

        // Keys: wrong secret, malformed, unknown id.
        // `sfmk_<keyId>_<secret>`: the secret may itself contain `_` (base64url), so split from the left.
        let mut parts = key.splitn(3, '_');
        let (scheme, key_id) = (parts.next().unwrap(), parts.next().unwrap());
        let wrong = format!("{scheme}_{key_id}_{}", "A".repeat(43));
        let unknown = format!("sfmk_unknownkey1_{}", "A".repeat(43));
        for (presented, expected) in [
            (wrong.as_str(), "key-wrong"),
            ("sfmk_nope", "key-malformed"),
            (unknown.as_str(), "key-unknown"),
        ] {
            let r =
                create_upload(client, base, presented, "ExportData.dat", "ExportData", 10).await;
            assert_eq!(problem(r).await, (401, expected.into()));
        }

        // Creation requests with exactly these headers: no key, the key in the header and a key
        // in SessionId (a GUID goes there, never a key), tus headers, Upload-Length and Upload-Metadata.
        let files = format!("{base}/files");
        let tus_1 = ("tus-resumable", "1.0.0");
        let keyed = ("sfm-migration-key", key.as_str());
        let ten = ("upload-length", "10");
        let export_data = contract::encode_upload_metadata(&[
            ("name", "ExportData.dat"),
            ("FileType", "ExportData"),
        ]);
        let session_differs = contract::encode_upload_metadata(&[
            ("name", "ExportData.dat"),
            ("FileType", "ExportData"),
            ("SessionId", &wrong),
        ]);
        let mut creations: Vec<Expectation> = vec![
            (
                vec![tus_1, ten, ("upload-metadata", &export_data)],
                (401, "key-missing"),
            ),
            (
                vec![tus_1, ten, keyed, ("upload-metadata", &session_differs)],
                (400, "metadata-invalid"),
            ),
            (vec![ten, keyed], (412, "tus-version-unsupported")),
            (vec![tus_1, keyed], (400, "header-invalid")),
            (
                vec![tus_1, keyed, ("upload-length", "-1")],
                (400, "header-invalid"),
            ),
            (
                vec![tus_1, keyed, ("upload-length", "ten")],
                (400, "header-invalid"),
            ),
        ];
        let too_many = format!(
            "{export_data},{}",
            (0..31)
                .map(|i| format!("k{i} eA=="))
                .collect::<Vec<_>>()
                .join(",")
        );
        let too_large = format!(
            "{export_data},pad {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                vec![b'x'; contract::MAX_UPLOAD_METADATA_BYTES]
            )
        );
        let long_key = format!("{export_data},{} eA==", "k".repeat(65));
        for metadata in [
            "name",
            "name ZZZ",
            "name RXhwb3J0RGF0YS5kYXQ=,name RXhwb3J0RGF0YS5kYXQ=",
            "name RXhwb3J0RGF0YS5kYXQ=,FileType T3JnYW5pc2F0aW9u",
            // ExportData.dat sent as a Patient.
            "name RXhwb3J0RGF0YS5kYXQ=,FileType UGF0aWVudA==",
            too_many.as_str(),
            too_large.as_str(),
            long_key.as_str(),
        ] {
            creations.push((
                vec![tus_1, ten, keyed, ("upload-metadata", metadata)],
                (400, "metadata-invalid"),
            ));
        }
        for (headers, (status, code)) in &creations {
            assert_eq!(
                exactly(client, Method::POST, &files, headers, b"").await,
                (*status, code.to_string()),
                "{:.200}",
                format!("{headers:?}")
            );
        }
        let r = create_upload(client, base, key, "ExportData.dat", "ExportData", 3_000_000).await;
        assert_eq!(problem(r).await, (413, "upload-too-large".into()));

        // Unknown uploads: of an unknown database, malformed, and (below) of this database.
        let nowhere = format!("{base}/files/{}.{}", "0".repeat(32), "1".repeat(32));
        for url in [nowhere.as_str(), &format!("{base}/files/not-an-id")] {
            assert_eq!(
                tus(client, key, Method::HEAD, url).await.status(),
                404,
                "{url}"
            );
        }
        let r = fx.patch(&nowhere, 0, b"x").await;
        assert_eq!(problem(r).await, (404, "upload-not-found".into()));
        let r = tus(client, key, Method::DELETE, &nowhere).await;
        assert_eq!(problem(r).await, (404, "upload-not-found".into()));

        // A patient before the organisation.
        let r = create_upload(client, base, key, &patient_name(), "Patient", 10).await;
        assert_eq!(problem(r).await, (409, "organisation-missing".into()));

        // Offsets, sizes, checksums, content type and headers on a real upload.
        let url = fx
            .create(base, "ExportData.dat", "ExportData", organisation.len())
            .await;
        let id = upload_id(&url);
        let (database_uid, _) = id.split_once('.').unwrap();
        let unknown_here = format!("{base}/files/{database_uid}.{}", "2".repeat(32));
        let r = fx.patch(&unknown_here, 0, b"x").await;
        assert_eq!(problem(r).await, (404, "upload-not-found".into()));
        let r = fx.patch(&url, 5, &organisation[..10]).await;
        assert_eq!(problem(r).await, (409, "upload-offset-mismatch".into()));
        let mut too_long = organisation.clone();
        too_long.push(0);
        let r = fx.patch(&url, 0, &too_long).await;
        assert_eq!(problem(r).await, (413, "upload-too-large".into()));
        let octets = ("content-type", "application/offset+octet-stream");
        let at_0 = ("upload-offset", "0");
        let auth = ("sfm-migration-key", key.as_str());
        let other = UploadChecksum::of(ChecksumAlgorithm::Sha256, b"other").to_header();
        let patches: [Expectation; 6] = [
            (
                vec![tus_1, auth, octets, at_0, ("upload-checksum", &other)],
                (460, "checksum-mismatch"),
            ),
            (
                vec![
                    tus_1,
                    auth,
                    octets,
                    at_0,
                    ("upload-checksum", "md5 XUFAKrxLKna5cZ2REBfFkg=="),
                ],
                (400, "checksum-algorithm-unsupported"),
            ),
            (
                vec![tus_1, auth, ("content-type", "text/plain"), at_0],
                (415, "content-type-invalid"),
            ),
            (vec![tus_1, auth, octets], (400, "header-invalid")),
            (
                vec![("tus-resumable", "0.2.2"), auth, octets, at_0],
                (412, "tus-version-unsupported"),
            ),
            // The upload's URL is no credential: without a key nothing is looked at.
            (vec![tus_1, octets, at_0], (401, "key-missing")),
        ];
        for (headers, (status, code)) in &patches {
            assert_eq!(
                exactly(client, Method::PATCH, &url, headers, &organisation[..100]).await,
                (*status, code.to_string()),
                "{headers:?}"
            );
        }
        let head = tus(client, key, Method::HEAD, &url).await;
        assert_eq!(header(&head, "upload-offset"), "0");
        // Termination, then the id is unknown.
        let r = tus(client, key, Method::DELETE, &url).await;
        assert_eq!(r.status(), 204);
        let r = tus(client, key, Method::HEAD, &url).await;
        assert_eq!(r.status(), 404);

        // Hostile files: each is uploaded completely and rejected with its reason.
        let entries = read_archive(&fx.samples.organisation_zip, &ArchiveLimits::default())
            .unwrap()
            .entries;
        let xml = String::from_utf8(entries[0].data.clone()).unwrap();
        let changed = |change: &dyn Fn(&mut Vec<u8>)| {
            let mut file = organisation.clone();
            change(&mut file);
            file
        };
        let doctype = xml.replacen("?>", "?><!DOCTYPE x [<!ENTITY e \"boom\">]>", 1);
        let deep = xml.replacen(
            "<Brukere>",
            &format!("<Brukere>{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000)),
            1,
        );
        let bomb = write_archive(&[("ExportData.xml", vec![b' '; 1_900_000].as_slice())]).unwrap();
        let encrypt_zip =
            |entries: &[(&str, &[u8])]| fx.samples.encrypt(&write_archive(entries).unwrap());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "flipped",
                changed(&|f| {
                    let at = f.len() / 2;
                    f[at] ^= 0x40
                }),
                "envelope-undecryptable",
            ),
            (
                // The last byte of the next-to-last ciphertext block flips the padding byte of the
                // last block: the same answer as any other garbage (no padding oracle).
                "bad padding",
                changed(&|f| {
                    let at = f.len() - 17;
                    f[at] ^= 0x40
                }),
                "envelope-undecryptable",
            ),
            (
                "a whole block short",
                organisation[..organisation.len() - 16].to_vec(),
                "envelope-undecryptable",
            ),
            (
                "truncated",
                organisation[..organisation.len() - 7].to_vec(),
                "envelope-malformed",
            ),
            (
                "foreign key",
                envelope::encrypt(
                    &fx.samples.organisation_zip,
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
                changed(&|f| f[0..4].copy_from_slice(&u32::MAX.to_le_bytes())),
                "envelope-malformed",
            ),
            (
                "IV of 15 bytes",
                changed(&|f| f[4..8].copy_from_slice(&15u32.to_le_bytes())),
                "envelope-malformed",
            ),
            (
                "extension length implausible",
                changed(&|f| f[8..12].copy_from_slice(&u32::MAX.to_le_bytes())),
                "envelope-malformed",
            ),
            (
                "traversal",
                fx.samples
                    .encrypt(&raw_zip(&[("../ExportData.xml", xml.as_bytes())])),
                "archive-path",
            ),
            (
                "absolute",
                fx.samples
                    .encrypt(&raw_zip(&[("/etc/ExportData.xml", xml.as_bytes())])),
                "archive-path",
            ),
            (
                "doctype",
                encrypt_zip(&[("ExportData.xml", doctype.as_bytes())]),
                "xml-doctype",
            ),
            (
                "deep",
                encrypt_zip(&[("ExportData.xml", deep.as_bytes())]),
                "xml-malformed",
            ),
            ("ratio bomb", fx.samples.encrypt(&bomb), "archive-limits"),
            (
                "many entries",
                encrypt_zip(
                    &(0..2_500)
                        .map(|i| (format!("{i}.xml"), b"x".as_slice()))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|(n, d)| (n.as_str(), *d))
                        .collect::<Vec<_>>(),
                ),
                "archive-limits",
            ),
        ];
        let mut rejected = String::new();
        for (what, file, expected) in cases {
            let (url, r) = fx
                .upload_whole(base, "ExportData.dat", "ExportData", &file)
                .await;
            assert_eq!(r.status(), 204, "{what}");
            assert_eq!(header(&r, "sfm-ingest-state"), "rejected", "{what}");
            assert_eq!(header(&r, "sfm-rejection-code"), expected, "{what}");
            rejected = url;
        }
        assert_eq!(fx.count("SELECT count(*) FROM sfm.stored_files").await, 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.users").await, 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.rejections").await, 14);
        // A complete upload (rejected or not) cannot be terminated.
        let r = tus(client, key, Method::DELETE, &rejected).await;
        assert_eq!(problem(r).await, (409, "upload-complete".into()));

        // Still serving.
        let r = client
            .get(format!("{base}{}", contract::PATH_PRODUCT_VERSION))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let log = api.process.log_text();
    assert!(!log.contains(fx.key.splitn(3, '_').nth(2).unwrap()));
}

/// Keys that must not reach an upload, each answered 403 after the secret matched, with nothing
/// stored: another database's key (`key-wrong-database` on HEAD, PATCH and DELETE of this database's
/// upload, which stays intact), a superseded key (`key-superseded` on creation and on the upload it
/// created), and an expired key (`timeToLive: 90s`; `key-expired` on creation and on the upload it
/// created while it was valid).
#[test]
fn keys_of_another_database_superseded_or_expired_are_refused() {
    let fx = Fixture::new("api-keys", "Lenient");
    let api = fx.api("api", &[]);
    let base = &api.base;
    let ns = fx.ns();
    let other_uri = provision_database(ns, "other", &database_yaml(ns, "other", "Lenient"));
    let other_key = issue_key(ns, "other-1", "other", "2h");
    let organisation = &fx.organisation;
    let mut secrets = vec![fx.key.clone(), other_key.clone()];
    fx.run(async {
        let client = &fx.client;
        // Another database's key cannot touch this database's upload.
        let url = fx
            .create(base, "ExportData.dat", "ExportData", organisation.len())
            .await;
        let r = fx.head(&url, &other_key).await;
        // HEAD has no body: the refusal's code is in the API's log.
        assert_eq!(r.status(), 403, "{}", api.process.log_text());
        let tus_1 = ("tus-resumable", "1.0.0");
        let other = ("sfm-migration-key", other_key.as_str());
        let octets = ("content-type", "application/offset+octet-stream");
        // The upload's URL alone opens nothing: without a key HEAD, PATCH and DELETE get 401.
        for (method, headers, body) in [
            (Method::HEAD, vec![tus_1], b"".as_slice()),
            (
                Method::PATCH,
                vec![tus_1, octets, ("upload-offset", "0")],
                organisation.as_slice(),
            ),
            (Method::DELETE, vec![tus_1], b"".as_slice()),
        ] {
            let (status, code) = exactly(client, method.clone(), &url, &headers, body).await;
            assert_eq!(status, 401, "{method}");
            if method != Method::HEAD {
                assert_eq!(code, "key-missing", "{method}");
            }
        }
        for (method, headers, body) in [
            (
                Method::PATCH,
                vec![tus_1, other, octets, ("upload-offset", "0")],
                organisation.as_slice(),
            ),
            (Method::DELETE, vec![tus_1, other], b"".as_slice()),
        ] {
            assert_eq!(
                exactly(client, method.clone(), &url, &headers, body).await,
                (403, "key-wrong-database".into()),
                "{method}"
            );
        }
        let head = fx.head(&url, &fx.key).await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "upload-offset"), "0");

        // A superseded key stops working, also on the upload it created.
        let key_2 = issue_key(ns, "key-2", DB, "2h");
        assert!(eventually(PATIENCE, || jsonpath(
            ns,
            "mkey/key-1",
            "{.status.phase}"
        ) == "Superseded"));
        // The API sees it through its watch, a moment after kubectl does: asked until it answers.
        let superseded = eventually_async(|| async {
            key_check(client, base, &fx.key).await == (403, "key-superseded".into())
        })
        .await;
        assert!(superseded, "key-1 was not refused as superseded");
        let r = fx.patch(&url, 0, organisation).await;
        assert_eq!(problem(r).await, (403, "key-superseded".into()));
        let r = create_upload(client, base, &fx.key, "ExportData.dat", "ExportData", 10).await;
        assert_eq!(problem(r).await, (403, "key-superseded".into()));

        // An expired key: usable until its time to live runs out, then refused, also on its upload.
        let short = issue_key(ns, "key-3", DB, "90s");
        let url = new_upload(
            client,
            base,
            &short,
            "ExportData.dat",
            "ExportData",
            organisation.len(),
        )
        .await;
        let r = patch(client, &short, &url, 0, &organisation[..1000]).await;
        assert_eq!(r.status(), 204);
        let expired = eventually_async(|| async {
            key_check(client, base, &short).await == (403, "key-expired".into())
        })
        .await;
        assert!(expired, "key-3 did not expire");
        let r = create_upload(client, base, &short, "ExportData.dat", "ExportData", 10).await;
        assert_eq!(problem(r).await, (403, "key-expired".into()));
        let r = patch(client, &short, &url, 1000, &organisation[1000..]).await;
        assert_eq!(problem(r).await, (403, "key-expired".into()));
        let r = fx.head(&url, &short).await;
        assert_eq!(r.status(), 403);

        assert_eq!(fx.count("SELECT count(*) FROM sfm.stored_files").await, 0);
        assert_eq!(
            scalar_at::<i64>(&other_uri, "SELECT count(*) FROM sfm.stored_files").await,
            0
        );
        assert_eq!(
            scalar_at::<i64>(&other_uri, "SELECT count(*) FROM sfm.uploads").await,
            0
        );
        secrets.extend([key_2, short]);
    });
    let log = api.process.log_text();
    for key in secrets {
        assert!(!log.contains(key.splitn(3, '_').nth(2).unwrap()));
    }
}

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

    // The issuer's address first: the database's policy names it.
    let issuer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    issuer_listener.set_nonblocking(true).unwrap();
    let issuer_url = format!("http://{}", issuer_listener.local_addr().unwrap());
    let fx = Fixture::with_database("api-helseid", |ns| {
        database_yaml(ns, DB, "Lenient").replace(
            "    schemaCheck: Lenient\n",
            &format!("    schemaCheck: Lenient\n    helseId:\n      issuer: {issuer_url}\n      audience: nhn:sfm-migration\n      requiredScope: nhn:sfm-migration/upload\n"),
        )
    });
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
    fx.runtime.spawn(async move {
        axum::serve(
            tokio::net::TcpListener::from_std(issuer_listener).unwrap(),
            sfm_migration::helseid::issuer::router(issuer),
        )
        .await
        .unwrap()
    });
    let api = fx.api(
        "api",
        &["--trusted-issuer", &issuer_url, "--allow-http-issuers"],
    );
    let key_check = format!("{}{}", api.base, contract::PATH_KEY_CHECK);
    let key = fx.key.clone();

    fx.run(async {
        let http = http();
        let r = http.post(&key_check).header("sfm-migration-key", &key).send().await.unwrap();
        assert_eq!(r.status(), 401);
        // RFC 6750 section 3: without a token, the challenge names no error.
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer realm=\"sfm\", DPoP realm=\"sfm\""), "{challenge}");
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
        // RFC 9449 section 7.1: a refused proof says so in the challenge.
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains("error=\"invalid_dpop_proof\""), "{challenge}");
        assert!(r.text().await.unwrap().contains("token-invalid"));
        // A token as Bearer where it is bound to a DPoP key: invalid_token.
        let r = http.post(&key_check).header("sfm-migration-key", &key).header("authorization", format!("Bearer {token}")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains("Bearer realm=\"sfm\", error=\"invalid_token\""), "{challenge}");
    });
}

/// Backpressure: with one request slot, a second upload request (and a status read) while a slow PATCH is in flight (the
/// API's `sfm_api_upload_requests_in_flight` says 1) gets 503 `busy` with `Retry-After`; once the
/// PATCH is done the server serves again.
#[test]
fn a_busy_api_answers_503_with_retry_after() {
    let fx = Fixture::new("api-busy", "Lenient");
    let api = fx.api("api", &["--max-inflight-requests", "1"]);
    let base = &api.base;
    let organisation = &fx.organisation;
    fx.run(async {
        let url = fx
            .create(base, "ExportData.dat", "ExportData", organisation.len())
            .await;
        let (first, rest) = organisation.split_at(1000);
        let (first, rest) = (
            bytes::Bytes::copy_from_slice(first),
            bytes::Bytes::copy_from_slice(rest),
        );
        // The rest of the body is held back until the busy answer has been checked.
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let slow = futures::stream::iter(vec![Ok::<_, std::io::Error>(first)]).chain(
            futures::stream::once(async move {
                held.await.ok();
                Ok(rest)
            }),
        );
        let in_flight = tokio::spawn(
            patch_request(&fx.client, &fx.key, &url, 0)
                .body(reqwest::Body::wrap_stream(slow))
                .send(),
        );
        // The slow PATCH holds the only slot once the API counts it in flight.
        let in_flight_metric = "sfm_api_upload_requests_in_flight 1";
        let mut waited = 0;
        while !fx
            .client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains(in_flight_metric)
        {
            assert!(waited < 600, "the slow PATCH never took its slot");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        let busy = create_request(
            &reqwest::Client::new(),
            base,
            &fx.key,
            "ExportData.dat",
            "ExportData",
            10,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(busy.status(), 503);
        assert!(contract::parse_retry_after(header(&busy, "retry-after")).is_some());
        assert!(busy.text().await.unwrap().contains("\"busy\""));
        // Every request that reaches the cluster or a staging database takes a slot, reads too.
        let status = fx
            .client
            .get(format!("{base}{}", contract::PATH_STATUS))
            .header("sfm-migration-key", &fx.key)
            .send()
            .await
            .unwrap();
        assert_eq!(status.status(), 503);
        assert!(contract::parse_retry_after(header(&status, "retry-after")).is_some());
        // What is answered from memory takes none.
        assert_eq!(healthz(&fx.client, base).await, 200);
        release.send(()).unwrap();
        let done = in_flight.await.unwrap().unwrap();
        assert_eq!(done.status(), 204);
        assert_eq!(header(&done, "sfm-ingest-state"), "stored");
    });
}

/// A crash in the middle of an ingest, with two replicas: the one ingesting the upload is killed with
/// SIGKILL while its ingest transaction is open (claimed, stored file and patient rows written, not
/// committed; see [`Fixture::kill_mid_ingest`], which makes this certain rather than likely). The
/// other replica's recovery loop then ingests the upload: it ends `ingested`, exactly one stored file
/// (byte for byte what was sent, naming this upload) and one patient, no rejection, no chunks left,
/// `HEAD` says `stored`, and status (API and CR) counts one patient received and stored.
#[test]
fn a_replica_killed_mid_ingest_leaves_the_upload_to_the_other() {
    let fx = Fixture::new("api-crash", "Lenient");
    let mut apis = [fx.api("api-a", &[]), fx.api("api-b", &[])];
    fx.store_organisation(&apis[0], 65536, false);
    let patient = &fx.patient;
    let survivor = fx.run(async {
        // Five chunks alternating between the replicas; the sixth, the last, to A.
        let url = fx
            .create(&apis[1].base, &patient_name(), "Patient", patient.len())
            .await;
        let chunks: Vec<&[u8]> = patient.chunks(patient.len() / 6 + 1).collect();
        let (last, first) = chunks.split_last().unwrap();
        let mut offset = 0;
        for (index, chunk) in first.iter().enumerate() {
            let r = fx.patch(&apis[index % 2].file(&url), offset, chunk).await;
            assert_eq!(r.status(), 204, "chunk {index}");
            offset += chunk.len();
        }
        let killed = fx.kill_mid_ingest(&mut apis, 0, &url, offset, last).await;
        let survivor = 1 - killed;

        fx.wait_for_upload(&url, "ingested").await;
        assert_eq!(
            fx.upload_row(&url).await,
            Some(("ingested".to_owned(), patient.len() as i64, 0))
        );
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.stored_files WHERE kind = 'patient'")
                .await,
            1
        );
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.rejections").await, 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.upload_chunks").await, 0);
        let mut connection = sqlx::PgConnection::connect(&fx.migrator_uri).await.unwrap();
        let (digest, upload): (String, Option<Uuid>) = sqlx::query_as(
            "SELECT encode(sha256, 'hex'), upload_id FROM sfm.stored_files WHERE kind = 'patient'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(digest, contract::sha256_hex(patient));
        assert_eq!(upload, Some(row_id(&url)));

        let head = fx.head(&apis[survivor].file(&url), &fx.key).await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "sfm-ingest-state"), "stored");
        assert_eq!(header(&head, "upload-offset"), patient.len().to_string());
        let status = fx.api_status(&apis[survivor].base).await;
        assert_eq!(
            (
                status.patients.received,
                status.patients.stored,
                status.patients.rejected
            ),
            (1, 1, 0)
        );
        survivor
    });
    assert!(
        apis[survivor]
            .process
            .log_text()
            .contains("ingesting an upload left complete"),
        "the survivor's recovery loop did not take the upload"
    );
    fx.wait_for_status("{.status.migration.patients.stored}", "1");
    assert_eq!(fx.status("{.status.migration.patients.received}"), "1");
    assert_eq!(fx.status("{.status.migration.patients.rejected}"), "0");
    assert_eq!(fx.status("{.status.migration.users.stored}"), "7");
}

/// Replicas whose decryption keys differ (a key rollout half done): an upload left complete by a
/// replica killed mid-ingest is tried by the recovery loop of a replica that holds only another key.
/// It cannot decrypt the file and leaves it: the upload stays `complete`, no rejection is recorded,
/// nothing is stored. A replica with the right key, started after, ingests it: one patient, no
/// rejection.
#[test]
fn a_replica_without_the_key_leaves_an_upload_to_one_that_has_it() {
    let fx = Fixture::new("api-keyless", "Lenient");
    let (url, _keyless) = fx.patient_held_back_by_a_replica_without_the_key();
    fx.run(async {
        // Two more rounds of its recovery loop (every 5 s) change nothing.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(fx.upload_state(&url).await.as_deref(), Some("complete"));
        assert_eq!(fx.count("SELECT count(*) FROM sfm.rejections").await, 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 0);
    });

    let keyed = fx.api("api-b", &[]);
    fx.run(async {
        fx.wait_for_upload(&url, "ingested").await;
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.rejections").await, 0);
    });
    assert!(
        keyed
            .process
            .log_text()
            .contains("ingesting an upload left complete")
    );
}

/// tus expiration, and the sweep of the recovery loop. A PATCH to an upload past its `expires_at`
/// (moved a minute back by SQL) gets 410 `upload-expired` and stores nothing, although it carries the
/// last bytes; HEAD says 410 too. Unfinished uploads (created, and receiving with a chunk) more than
/// an hour past expiry are deleted with their chunks; the one expired a minute ago stays (the grace
/// hour), and so do complete, ingested and rejected uploads however old. The complete one is left by
/// killing the only API in the middle of its ingest; the API started again sweeps, then ingests it
/// (the single-replica variant of the crash).
#[test]
fn expired_uploads_get_410_and_only_unfinished_ones_are_swept() {
    let fx = Fixture::new("api-expiry", "Lenient");
    let mut apis = [fx.api("api", &[])];
    let organisation = fx.store_organisation(&apis[0], 65536, false);
    let patient = &fx.patient;
    let base = apis[0].base.clone();
    let name = |n: u32| format!("Patients0\\{n:08}-0000-4000-8000-000000000000.pat");
    let (created, receiving, rejected, late, complete) = fx.run(async {
        let created = fx.create(&base, &name(1), "Patient", patient.len()).await;
        let receiving = fx.create(&base, &name(2), "Patient", patient.len()).await;
        assert_eq!(
            fx.patch(&receiving, 0, &patient[..1000]).await.status(),
            204
        );
        let truncated = &patient[..patient.len() - 7];
        let (rejected, r) = fx.upload_whole(&base, &name(3), "Patient", truncated).await;
        assert_eq!(header(&r, "sfm-rejection-code"), "envelope-malformed");

        // Expired a minute ago: the last 100 bytes would complete it, and get 410.
        let late = fx
            .create(&base, &patient_name(), "Patient", patient.len())
            .await;
        let (head, tail) = patient.split_at(patient.len() - 100);
        assert_eq!(fx.patch(&late, 0, head).await.status(), 204);
        fx.expire(&late, "1 minute").await;
        let r = fx.patch(&late, head.len(), tail).await;
        assert_eq!(problem(r).await, (410, "upload-expired".into()));
        let r = fx.head(&late, &fx.key).await;
        assert_eq!(r.status(), 410);
        assert_eq!(
            fx.upload_row(&late).await,
            Some(("receiving".to_owned(), head.len() as i64, 1))
        );
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 0);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.stored_files").await, 1);

        // Complete but not ingested: the only API dies in the middle of the ingest.
        let complete = fx
            .create(&base, &patient_name(), "Patient", patient.len())
            .await;
        let (first, last) = patient.split_at(patient.len() / 2);
        assert_eq!(fx.patch(&complete, 0, first).await.status(), 204);
        fx.kill_mid_ingest(&mut apis, 0, &complete, first.len(), last)
            .await;
        (created, receiving, rejected, late, complete)
    });

    // No API runs: every upload but `late` more than an hour past its expiry.
    fx.run(async {
        for url in [&created, &receiving, &rejected, &complete, &organisation] {
            fx.expire(url, "2 hours").await;
        }
        let states = [
            (&created, "created"),
            (&receiving, "receiving"),
            (&rejected, "rejected"),
            (&late, "receiving"),
            (&complete, "complete"),
            (&organisation, "ingested"),
        ];
        for (url, state) in states {
            assert_eq!(fx.upload_state(url).await.as_deref(), Some(state));
        }
    });
    let restarted = fx.api_on(apis[0].port, "api-restarted", &[]);
    fx.run(async {
        let swept = eventually_async(|| async {
            fx.upload_state(&created).await.is_none() && fx.upload_state(&receiving).await.is_none()
        })
        .await;
        assert!(swept, "the unfinished uploads were not swept");
        // The same DELETE left everything else; the complete upload is still there (it may be
        // ingested by now, since the same loop takes it next).
        assert_eq!(
            fx.upload_row(&late).await,
            Some(("receiving".to_owned(), (patient.len() - 100) as i64, 1))
        );
        let complete_state = fx.upload_state(&complete).await;
        assert!(
            matches!(complete_state.as_deref(), Some("complete" | "ingested")),
            "{complete_state:?}"
        );
        for (url, state) in [(&organisation, "ingested"), (&rejected, "rejected")] {
            assert_eq!(fx.upload_state(url).await.as_deref(), Some(state));
        }
        // The swept uploads' chunks went with them: only the late upload's one chunk is left, until
        // the complete upload is ingested.
        fx.wait_for_upload(&complete, "ingested").await;
        assert_eq!(fx.count("SELECT count(*) FROM sfm.upload_chunks").await, 1);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        assert_eq!(fx.count("SELECT count(*) FROM sfm.stored_files").await, 2);
        let r = fx.head(&restarted.file(&created), &fx.key).await;
        assert_eq!(r.status(), 404);
        let r = fx.head(&restarted.file(&late), &fx.key).await;
        assert_eq!(r.status(), 410);
    });
    assert!(
        restarted
            .process
            .log_text()
            .contains("ingesting an upload left complete")
    );
}

/// A file sent whole in its POST (creation-with-upload, as `sfm-migrate` sends every file up to its
/// chunk size) is created, ingested and recorded in one transaction: the 201 says `stored` or
/// `rejected`, no chunk is kept, the same bytes again store nothing twice, and a body that fails its
/// checksum creates nothing. A body short of `Upload-Length` still takes the resumable path.
#[test]
fn a_file_sent_whole_in_its_post_is_stored_before_the_answer() {
    let fx = Fixture::new("api-whole", "Lenient");
    let api = fx.api("api", &[]);
    fx.store_organisation(&api, 8192, false);
    let whole = |name: &str, data: &[u8], checksum_of: &[u8]| {
        create_request(&fx.client, &api.base, &fx.key, name, "Patient", data.len())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-checksum",
                UploadChecksum::of(ChecksumAlgorithm::Sha256, checksum_of).to_header(),
            )
            .body(data.to_vec())
            .send()
    };
    fx.run(async {
        let name = patient_name();
        let length = fx.patient.len();
        let uploads_before = fx.count("SELECT count(*) FROM sfm.uploads").await;

        // A body that does not match its checksum: 460, and no upload exists.
        let response = whole(&name, &fx.patient, b"something else").await.unwrap();
        assert_eq!(problem(response).await, (460, "checksum-mismatch".into()));
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.uploads").await,
            uploads_before
        );

        // The whole file: stored by the time the 201 comes, without a chunk.
        let response = whole(&name, &fx.patient, &fx.patient).await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "upload-offset"), length.to_string());
        assert_eq!(header(&response, "sfm-ingest-state"), "stored");
        let url = header(&response, "location").to_owned();
        assert_eq!(
            fx.upload_row(&url).await,
            Some(("ingested".into(), length as i64, 0))
        );
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        let head = fx.head(&url, &fx.key).await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "sfm-ingest-state"), "stored");

        // The same bytes again: stored, once.
        let response = whole(&name, &fx.patient, &fx.patient).await.unwrap();
        assert_eq!(header(&response, "sfm-ingest-state"), "stored");
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.stored_files WHERE kind = 'patient'")
                .await,
            1
        );

        // Undecryptable content sent whole: 201 with the rejection, recorded, nothing stored.
        let mut damaged = fx.patient.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x5a;
        let other = "Patients0\\0a3c1d0e-2f4b-4c5d-8e6f-7a8b9c0d1e2f.pat";
        let response = whole(other, &damaged, &damaged).await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "sfm-ingest-state"), "rejected");
        assert_eq!(
            header(&response, "sfm-rejection-code"),
            "envelope-undecryptable"
        );
        let url = header(&response, "location").to_owned();
        assert_eq!(fx.upload_state(&url).await.as_deref(), Some("rejected"));
        assert_eq!(
            fx.count(
                "SELECT count(*) FROM sfm.rejections WHERE reason_code = 'envelope_undecryptable'"
            )
            .await,
            1
        );
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 1);

        // A body one byte short of Upload-Length is kept as the first chunk of a resumable upload.
        let response = create_request(&fx.client, &api.base, &fx.key, other, "Patient", length)
            .header("content-type", "application/offset+octet-stream")
            .body(fx.patient[..length - 1].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "upload-offset"), (length - 1).to_string());
        let url = header(&response, "location").to_owned();
        assert_eq!(
            fx.upload_row(&url).await,
            Some(("receiving".into(), length as i64 - 1, 1))
        );
    });
    fx.wait_for_status("{.status.migration.patients.stored}", "1");
}

/// Nothing is stored after the migration is validated. A patient left `complete` by a replica killed
/// mid-ingest and held back by a replica without its decryption key (the grace), and an open
/// upload, neither named in the manifest: verify treats the complete one as pending (its ingest may
/// store it) and writes no validation record; the open one is no reason to wait (it would be deleted
/// with a validation). Then a validation record is written the way a replica of the previous release wrote it
/// (it looked only at the files its manifest named): the replica with the key, started now, does
/// not store the held-back patient (its upload is closed as `migration-validated`), the open upload
/// takes no more bytes, no stored file is newer than the record, and the database's own trigger
/// refuses an insert by the migrator outright.
#[test]
fn nothing_is_stored_after_the_migration_is_validated() {
    let fx = Fixture::new("api-validated", "Lenient");
    let (held, keyless) = fx.patient_held_back_by_a_replica_without_the_key();
    let base = keyless.base.clone();
    let organisation = &fx.organisation;
    let open = fx.run(async {
        let guid = Uuid::new_v4().to_string();
        let second_name = format!("Patients0\\{guid}.pat");
        let second = fx.samples.patient_as(&guid, "", "");
        let open = fx
            .create(&base, &second_name, "Patient", second.len())
            .await;
        assert_eq!(fx.patch(&open, 0, &second[..1000]).await.status(), 204);

        // Verify: the complete upload is pending, though the manifest does not name it.
        let manifest = Manifest::new(vec![manifest_entry(
            "ExportData.dat",
            contract::FileType::ExportData,
            organisation,
        )]);
        let response = fx.verify(&base, &manifest).await;
        assert_eq!(response.status(), 409);
        let refused: contract::Problem = response.json().await.unwrap();
        assert_eq!(refused.code, contract::ProblemCode::ManifestMismatch);
        let pending = refused.mismatches.unwrap().pending;
        assert_eq!(pending, vec![patient_name()]);
        assert!(!pending.contains(&second_name));
        assert_eq!(fx.count("SELECT count(*) FROM sfm.validation").await, 0);
        (open, second)
    });
    drop(keyless);
    let (open, second) = open;
    fx.run(async {
        // A validation record as the previous release's verify wrote it, with both uploads about.
        sqlx::query(
            "INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored, patients_expected, patients_stored, files_rejected, migration_key_id)
             VALUES (sha256('manifest'), 7, 7, 0, 0, 0, 'previous-release')",
        )
        .execute(&mut fx.admin().await)
        .await
        .unwrap();
    });

    // Only now a replica that can decrypt the held-back patient: its recovery loop takes it.
    let keyed = fx.api("api-b", &[]);
    fx.run(async {

        let r = fx.patch(&keyed.file(&open), 1000, &second[1000..]).await;
        assert_eq!(problem(r).await, (409, "migration-validated".into()));
        assert_eq!(
            fx.upload_row(&open).await,
            Some(("receiving".to_owned(), 1000, 1))
        );
        fx.wait_for_upload(&held, "rejected").await;
        assert!(
            keyed
                .process
                .log_text()
                .contains("ingesting an upload left complete")
        );
        assert_eq!(fx.count("SELECT count(*) FROM sfm.patients").await, 0);
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.rejections WHERE reason_code = 'migration_validated'")
                .await,
            1
        );
        assert_eq!(
            fx.count(
                "SELECT count(*) FROM sfm.stored_files WHERE stored_at >= (SELECT validated_at FROM sfm.validation)"
            )
            .await,
            0
        );
        // The backstop in the database itself: the migrator cannot insert data any more.
        let mut migrator = sqlx::PgConnection::connect(&fx.migrator_uri).await.unwrap();
        let refused = sqlx::query(
            "INSERT INTO sfm.stored_files (kind, file_name, size_bytes, sha256, migration_key_id, received_at)
             VALUES ('report', 'x', 1, sha256('x'), 'k', now())",
        )
        .execute(&mut migrator)
        .await
        .unwrap_err();
        let code = refused
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("SFM01"), "{refused}");
    });
}

/// The API's own count of requests it made to the Kubernetes API server.
async fn kubernetes_requests(client: &reqwest::Client, base: &str) -> u64 {
    let text = client
        .get(format!("{base}{}", contract::PATH_METRICS))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("sfm_api_kubernetes_requests_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("sfm_api_kubernetes_requests_total is exported")
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 1,000 requests with random, well-formed keys of ids nobody issued (creations and key checks)
/// cost no call to the Kubernetes API server: keys and databases come from watch-backed stores. The
/// API's memory does not grow with them, and the real key still works afterwards.
#[test]
fn unknown_keys_cost_no_call_to_the_kubernetes_api_server() {
    let fx = Fixture::new("api-unknown-keys", "Lenient");
    let api = fx.api("api", &[]);
    let base = api.base.clone();
    let client = &fx.client;
    fx.run(async {
        // The stores are filled (one LIST and one WATCH each) by the first request.
        let warm = client
            .post(format!("{base}{}", contract::PATH_KEY_CHECK))
            .header(contract::HEADER_MIGRATION_KEY, &fx.key)
            .send()
            .await
            .unwrap();
        assert_eq!(warm.status().as_u16(), 200);
        let before = kubernetes_requests(client, &base).await;
        let memory_before = resident_kib(api.process.child.id());
        let refused = futures::stream::iter(0..1000)
            .map(|i| {
                let base = base.clone();
                async move {
                    let key = contract::MigrationKeyToken::generate().unwrap().expose();
                    let response = if i % 2 == 0 {
                        create_upload(client, &base, &key, "ExportData.dat", "ExportData", 10).await
                    } else {
                        client
                            .post(format!("{base}{}", contract::PATH_KEY_CHECK))
                            .header(contract::HEADER_MIGRATION_KEY, key)
                            .send()
                            .await
                            .unwrap()
                    };
                    problem(response).await
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        assert!(
            refused
                .iter()
                .all(|answer| *answer == (401, "key-unknown".to_owned())),
            "{:?}",
            refused
                .iter()
                .find(|a| **a != (401, "key-unknown".to_owned()))
        );
        let after = kubernetes_requests(client, &base).await;
        // Nothing of the 1,000; a status flush or a watch reconnect of the API's own may fall in.
        assert!(
            after - before <= 3,
            "{} Kubernetes requests",
            after - before
        );
        let memory_after = resident_kib(api.process.child.id());
        assert!(
            memory_after < memory_before + 32 * 1024,
            "resident memory grew from {memory_before} KiB to {memory_after} KiB"
        );
        let again = client
            .post(format!("{base}{}", contract::PATH_KEY_CHECK))
            .header(contract::HEADER_MIGRATION_KEY, &fx.key)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status().as_u16(), 200);
    });
}

/// A memory cgroup of `bytes` holding `pid`, for as long as the value lives (best effort: `None`
/// where the machine gives no writable cgroup v1 memory controller).
struct MemoryCgroup {
    path: PathBuf,
}

impl MemoryCgroup {
    fn holding(pid: u32, bytes: u64) -> Option<MemoryCgroup> {
        let path = PathBuf::from(format!("/sys/fs/cgroup/memory/sfm-e2e-{pid}"));
        std::fs::create_dir(&path).ok()?;
        let cgroup = MemoryCgroup { path };
        std::fs::write(cgroup.path.join("memory.limit_in_bytes"), bytes.to_string()).ok()?;
        std::fs::write(cgroup.path.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(cgroup)
    }

    fn times_at_limit(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.failcnt"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its process is gone by now (the API is dropped first); an empty cgroup can be removed.
        for _ in 0..20 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An API given the chart's memory limit (1 GiB, as the chart passes it from the container's
/// resources; the process also runs in a memory cgroup of that size where the machine has one)
/// fits its largest upload to it: a 500 MiB upload is refused at its creation with a clear answer,
/// nothing of it is kept, and the process serves on with little memory; an upload of the largest
/// size it accepts is created.
#[test]
fn a_500_mib_upload_is_refused_by_an_api_fitted_to_its_memory_limit() {
    const GIB: u64 = 1 << 30;
    let fx = Fixture::new("api-memory", "Lenient");
    let api = fx.api("api", &["--memory-limit-bytes", &GIB.to_string()]);
    let cgroup = MemoryCgroup::holding(api.process.child.id(), GIB);
    if cgroup.is_none() {
        eprintln!("no writable memory cgroup here: the limit is only the one given to the API");
    }
    let base = api.base.clone();
    fx.run(async {
        let huge = create_upload(
            &fx.client,
            &base,
            &fx.key,
            "ExportData.dat",
            "ExportData",
            500 << 20,
        )
        .await;
        let (status, code) = problem(huge).await;
        assert_eq!((status, code.as_str()), (413, "upload-too-large"));
        // 1 GiB among 4 ingests: 32 MiB is the largest upload.
        let over = create_upload(
            &fx.client,
            &base,
            &fx.key,
            "ExportData.dat",
            "ExportData",
            (32 << 20) + 1,
        )
        .await;
        assert_eq!(problem(over).await.0, 413);
        let largest = create_upload(
            &fx.client,
            &base,
            &fx.key,
            "ExportData.dat",
            "ExportData",
            32 << 20,
        )
        .await;
        assert_eq!(largest.status().as_u16(), 201);
        let options = fx
            .client
            .request(Method::OPTIONS, format!("{base}/files"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&options, "tus-max-size"), (32u64 << 20).to_string());
        assert_eq!(
            fx.count("SELECT count(*) FROM sfm.uploads WHERE declared_length > 33554432")
                .await,
            0
        );
        assert_eq!(healthz(&fx.client, &base).await, 200);
    });
    assert!(resident_kib(api.process.child.id()) < 256 * 1024);
    if let Some(cgroup) = &cgroup {
        assert_eq!(cgroup.times_at_limit(), 0, "the API met its memory limit");
    }
    drop(api);
    drop(cgroup);
}

/// Staging databases waiting for their uploads hold no connection of an API replica: with 200 of
/// them Ready and nothing pending, the replica's connections to them stay at a handful (its
/// recovery loop scans a database it does not serve rarely, spread out, and closes the connection
/// after), where one pool per database used to keep one connection each.
#[test]
fn idle_staging_databases_hold_no_connections_of_the_api() {
    const DATABASES: usize = 200;
    let fx = Fixture::new("api-idle", "Lenient");
    let manifests: Vec<String> = (1..DATABASES)
        .map(|i| database_yaml(fx.ns(), &format!("idle-{i}"), "Lenient"))
        .collect();
    kubectl_ok(&["apply", "-f", "-"], Some(&manifests.join("\n---\n")));
    wait_all_ready(fx.ns());
    let databases: Vec<String> = jsonpath(fx.ns(), "mdb", "{.items[*].status.database.name}")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(databases.len(), DATABASES);
    let _api = fx.api("api", &[]);
    // Three scan periods of the recovery loop.
    std::thread::sleep(Duration::from_secs(16));
    let connections = fx.run(async {
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sfm-migration-api' AND datname = ANY($1)",
        )
        .bind(&databases)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    });
    assert!(
        connections <= 3,
        "{connections} connections of the API to {DATABASES} idle staging databases"
    );
}

/// A broken document that puts an 11-digit number where the XML parser stops (`&<number>;` in the
/// patient's family name): the file is rejected with a reason, and the number is in nothing anyone
/// can read: the upload's answer, the status answer, `status.migration`, the stored rejection, the
/// API's and the operator's logs, the Events.
#[test]
fn a_number_where_the_parser_stops_reaches_no_answer_status_table_or_log() {
    let fx = Fixture::new("api-entity", "Lenient");
    let api = fx.api("api", &[]);
    fx.store_organisation(&api, 8192, false);
    let number = "13097248022";
    let family = read_patient_file(&fx.samples.patient_zip, &FormatLimits::default())
        .unwrap()
        .patient
        .demographics
        .family_name;
    let guid = Uuid::new_v4().to_string();
    let seen = fx.run(async {
        let response = fx
            .upload_patient_as(&api.base, &guid, &family, &format!("&{number};"))
            .await;
        assert_eq!(header(&response, "sfm-ingest-state"), "rejected");
        let headers = format!("{:?}", response.headers());
        let answer = format!("{headers}\n{}", response.text().await.unwrap());
        let status = fx
            .with_key(
                Method::GET,
                format!("{}{}", api.base, contract::PATH_STATUS),
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let stored: String = fx
            .scalar("SELECT coalesce(string_agg(message, ' | '), '') FROM sfm.rejections")
            .await;
        assert!(!stored.is_empty(), "no rejection was recorded");
        [answer, status, stored].join("\n")
    });
    fx.wait_for_status("{.status.migration.patients.rejected}", "1");
    let everything = [
        seen,
        api.process.log_text(),
        fx.operator.log_text(),
        kubectl_ok(&["-n", fx.ns(), "get", "mdb,events", "-o", "yaml"], None),
    ]
    .join("\n");
    assert!(
        !everything.contains(number),
        "the number from the document leaked into an answer, the status, a table or a log"
    );
}
