//! The migration client's local parts: the key store (several keys, one active, mode 0600), the
//! ledger (resume after a crash, torn lines, other databases), `check` on broken exports, and, as a
//! narrow unit test, the tus client against a small in-test tus server that misbehaves on purpose
//! (busy with Retry-After, a PATCH that lands half its body and fails), and the wait for the switch
//! after `activate` against a scripted status. The real end-to-end proof against the real API is
//! `tests/e2e/flow.rs`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sfm_migration::client::api::{ApiClient, Auth};
use sfm_migration::client::check::{CheckOptions, check_export};
use sfm_migration::client::config::KeyStore;
use sfm_migration::client::ledger::{LEDGER_FILE, Ledger, LedgerEntry, LedgerState};
use sfm_migration::client::tus::RetryPolicy;
use sfm_migration::client::upload::{UploadOptions, upload};
use sfm_migration::client::workflow::{delete_export, manifest};
use sfm_migration::contract::{self, MigrationKeyToken};
use sfm_migration::export::{ExportOptions, write_export};
use sfm_migration::format::envelope::{RecipientCertificate, generate_demo_key_pair};

fn key() -> String {
    MigrationKeyToken::generate().unwrap().expose()
}

fn small_export(dir: &Path, patients: usize) -> PathBuf {
    sfm_migration::tls::install_crypto_provider();
    let pair = generate_demo_key_pair(2048, "SFM migrering").unwrap();
    let certificate = RecipientCertificate::from_pem(pair.certificate_pem.as_bytes()).unwrap();
    let out = dir.join("export");
    let options = ExportOptions {
        patients,
        users: 6,
        reports: 1,
        mean_patient_bytes: 8 * 1024,
        spread: 0.5,
        seed: 7,
        patients_per_folder: 4,
        threads: 2,
        ..ExportOptions::default()
    };
    write_export(&options, &certificate, &out, &|_| {}).unwrap();
    out
}

#[test]
fn key_store_holds_several_keys_one_active_readable_by_the_user_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let mut store = KeyStore::load(&config).unwrap();
    assert!(store.active_key().is_err(), "no key yet");
    let (first, second) = (key(), key());
    store.add("oslo", &first, None, false).unwrap();
    store
        .add("bergen", &second, Some("https://api".into()), false)
        .unwrap();
    assert_eq!(
        store.active.as_deref(),
        Some("oslo"),
        "the first key is active"
    );
    // Refusals change nothing.
    assert!(store.add("oslo", &key(), None, false).is_err(), "same name");
    assert!(store.add("again", &first, None, false).is_err(), "same key");
    assert!(store.add("bad", "sfmk_short_x", None, false).is_err());
    assert!(store.add("white space", &key(), None, false).is_err());
    assert_eq!(store.keys.len(), 2);
    store.use_key("bergen").unwrap();
    assert!(store.use_key("nowhere").is_err());
    store.save(&config).unwrap();

    let file = config.join("keys.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let loaded = KeyStore::load(&config).unwrap();
    assert_eq!(loaded, store);
    assert_eq!(loaded.active_key().unwrap().key, second);
    assert_eq!(
        loaded.active_key().unwrap().api.as_deref(),
        Some("https://api")
    );
    // Debug never shows the secret.
    assert!(!format!("{loaded:?}").contains(&second));

    let mut loaded = loaded;
    loaded.remove("bergen").unwrap();
    assert!(
        loaded.active_key().is_err(),
        "removing the active key leaves none active"
    );
    assert!(loaded.remove("bergen").is_err());

    // A key store others can read is refused with advice.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = KeyStore::load(&config).unwrap_err();
    assert!(refused.what.contains("other users"), "{refused}");
    assert!(refused.next.contains("chmod 600"));
}

#[test]
fn ledger_survives_a_torn_line_and_ignores_other_databases() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |name: &str, state| LedgerEntry {
        database: String::new(),
        name: name.into(),
        size: 10,
        mtime_ns: 1,
        sha256: "a".repeat(64),
        url: "http://x/files/1".into(),
        state,
        code: None,
    };
    {
        let ledger = Ledger::open(dir.path(), "ns/a").unwrap();
        ledger
            .record(entry("ExportData.dat", LedgerState::Created))
            .unwrap();
        ledger
            .record(entry("ExportData.dat", LedgerState::Stored))
            .unwrap();
        ledger
            .record(entry("Patients0\\x.pat", LedgerState::Created))
            .unwrap();
    }
    {
        let ledger = Ledger::open(dir.path(), "ns/b").unwrap();
        ledger
            .record(entry("Patients0\\y.pat", LedgerState::Stored))
            .unwrap();
    }
    // A crash mid-write leaves half a line.
    let path = dir.path().join(LEDGER_FILE);
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"database\":\"ns/a\",\"name\":\"Patients0\\\\x.pat\",\"si");
    std::fs::write(&path, text).unwrap();

    let ledger = Ledger::open(dir.path(), "ns/a").unwrap();
    assert_eq!(
        ledger.get("ExportData.dat").unwrap().state,
        LedgerState::Stored
    );
    assert_eq!(
        ledger.get("Patients0\\x.pat").unwrap().state,
        LedgerState::Created
    );
    assert!(
        ledger.get("Patients0\\y.pat").is_none(),
        "another database's entry"
    );
    // Writing after the torn line starts on a fresh line.
    ledger
        .record(entry("Patients0\\x.pat", LedgerState::Stored))
        .unwrap();
    let again = Ledger::open(dir.path(), "ns/a").unwrap();
    assert_eq!(
        again.get("Patients0\\x.pat").unwrap().state,
        LedgerState::Stored
    );
    // The folder check tolerates the ledger.
    assert!(LEDGER_FILE.ends_with(".ledger"));
}

#[test]
fn check_reports_every_problem_of_a_broken_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = small_export(dir.path(), 9);
    let good = check_export(&out, &CheckOptions::default()).unwrap();
    assert!(good.is_ok(), "{good}");
    assert_eq!(good.files.len(), 1 + 9 + 1);
    assert_eq!(
        good.files[0].name, "ExportData.dat",
        "organisation file first"
    );
    assert!(good.files.iter().any(|f| f.name.starts_with("Reports0\\")));

    // Right certificate size passes, another fails with a clear line.
    let wrong_size = CheckOptions {
        certificate_bits: Some(4096),
        ..CheckOptions::default()
    };
    let report = check_export(&out, &wrong_size).unwrap();
    assert_eq!(report.problems.len(), 11, "{report}");
    assert!(report.problems[0].contains("wrong certificate"));

    // Break it: no organisation file, a patient missing from the index, one truncated, one empty,
    // one indexed file gone.
    std::fs::remove_file(out.join("ExportData.dat")).unwrap();
    let patients: Vec<_> = good
        .files
        .iter()
        .filter(|f| f.name.starts_with("Patients"))
        .collect();
    let data = std::fs::read(&patients[0].path).unwrap();
    std::fs::write(&patients[0].path, &data[..200]).unwrap();
    std::fs::write(&patients[1].path, b"").unwrap();
    std::fs::remove_file(&patients[2].path).unwrap();
    std::fs::copy(
        &patients[3].path,
        patients[3]
            .path
            .parent()
            .unwrap()
            .join("0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat"),
    )
    .unwrap();
    let report = check_export(&out, &CheckOptions::default()).unwrap();
    assert!(!report.is_ok());
    let text = report.to_string();
    for expected in [
        "ExportData.dat is missing",
        "does not exist",
        "is not listed in Index.txt",
        "is empty",
        "is not an encrypted export file",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("organisation file: MISSING"));
    assert!(report.failure().next.contains("EPJ"));

    // A folder that is not there is one clear failure.
    let missing = check_export(&dir.path().join("nope"), &CheckOptions::default()).unwrap_err();
    assert!(missing.what.contains("Cannot read the export folder"));
}

// ------------------------------------------------------------------------------------------------
// A small tus server, for the tus client's unit test only.
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Upload {
    name: String,
    length: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct Server {
    uploads: Mutex<HashMap<String, Upload>>,
    completed: Mutex<HashMap<String, usize>>,
    next_id: AtomicUsize,
    posts: AtomicUsize,
    busy_answers: AtomicUsize,
    with_body: AtomicUsize,
    torn_patches: AtomicUsize,
    missing_checksums: AtomicUsize,
    /// Answer the first POST with 503 busy.
    busy_first: AtomicBool,
    /// Land half of the first PATCH, then fail it.
    tear_first_patch: AtomicBool,
    /// The one migration key it accepts.
    key: String,
}

fn problem(code: contract::ProblemCode, retry_after: Option<u64>) -> Response {
    let mut response = (
        StatusCode::from_u16(code.http_status()).unwrap(),
        [("content-type", contract::PROBLEM_CONTENT_TYPE)],
        serde_json::to_string(&contract::Problem::new(code)).unwrap(),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}

fn authorised(server: &Server, headers: &HeaderMap) -> bool {
    headers
        .get(contract::HEADER_MIGRATION_KEY)
        .and_then(|v| v.to_str().ok())
        == Some(server.key.as_str())
}

async fn key_check(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if !authorised(&server, &headers) {
        return problem(contract::ProblemCode::KeyWrong, None);
    }
    axum::Json(contract::KeyCheckResponse {
        key_id: "test".into(),
        database: "test/db".into(),
        expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        phase: contract::MigrationPhase::Staging,
        token_required: false,
        organisation_stored: false,
    })
    .into_response()
}

async fn create(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&server, &headers) {
        return problem(contract::ProblemCode::KeyWrong, None);
    }
    server.posts.fetch_add(1, Ordering::SeqCst);
    if server.busy_first.swap(false, Ordering::SeqCst) {
        server.busy_answers.fetch_add(1, Ordering::SeqCst);
        return problem(contract::ProblemCode::Busy, Some(1));
    }
    let length: u64 = headers[contract::HEADER_UPLOAD_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let metadata = contract::decode_upload_metadata(
        headers[contract::HEADER_UPLOAD_METADATA].to_str().unwrap(),
    )
    .unwrap();
    let name = metadata
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .unwrap();
    assert!(metadata.iter().any(|(k, _)| k == "FileType"));
    let id = format!("u{}", server.next_id.fetch_add(1, Ordering::SeqCst));
    // creation-with-upload: the body, when there is one, is the first chunk.
    if !body.is_empty() {
        server.with_body.fetch_add(1, Ordering::SeqCst);
    }
    let complete = !body.is_empty() && body.len() as u64 == length;
    if complete {
        *server
            .completed
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default() += 1;
    }
    let offset = body.len();
    server.uploads.lock().unwrap().insert(
        id.clone(),
        Upload {
            name,
            length,
            data: body.to_vec(),
        },
    );
    let mut response = (
        StatusCode::CREATED,
        [
            ("location", format!("/files/{id}")),
            ("tus-resumable", "1.0.0".into()),
            ("upload-offset", offset.to_string()),
        ],
    )
        .into_response();
    if complete {
        response
            .headers_mut()
            .insert(contract::HEADER_INGEST_STATE, "stored".parse().unwrap());
    }
    response
}

async fn head(
    State(server): State<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&server, &headers) {
        return problem(contract::ProblemCode::KeyWrong, None);
    }
    let uploads = server.uploads.lock().unwrap();
    let Some(upload) = uploads.get(&id) else {
        return problem(contract::ProblemCode::UploadNotFound, None);
    };
    let mut response = (
        StatusCode::OK,
        [
            ("upload-offset", upload.data.len().to_string()),
            ("upload-length", upload.length.to_string()),
            ("cache-control", "no-store".into()),
        ],
    )
        .into_response();
    if upload.data.len() as u64 == upload.length {
        response
            .headers_mut()
            .insert(contract::HEADER_INGEST_STATE, "stored".parse().unwrap());
    }
    response
}

async fn patch(
    State(server): State<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&server, &headers) {
        return problem(contract::ProblemCode::KeyWrong, None);
    }
    let offset: usize = headers[contract::HEADER_UPLOAD_OFFSET]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    match headers.get(contract::HEADER_UPLOAD_CHECKSUM) {
        None => {
            server.missing_checksums.fetch_add(1, Ordering::SeqCst);
        }
        Some(value) => {
            let checksum = contract::UploadChecksum::parse(value.to_str().unwrap()).unwrap();
            let computed = contract::UploadChecksum::of(checksum.algorithm, &body);
            if computed != checksum {
                return problem(contract::ProblemCode::ChecksumMismatch, None);
            }
        }
    }
    let mut uploads = server.uploads.lock().unwrap();
    let Some(upload) = uploads.get_mut(&id) else {
        return problem(contract::ProblemCode::UploadNotFound, None);
    };
    if offset != upload.data.len() {
        return problem(contract::ProblemCode::UploadOffsetMismatch, None);
    }
    if server.tear_first_patch.swap(false, Ordering::SeqCst) {
        // Half the body lands, then the connection "breaks".
        upload.data.extend_from_slice(&body[..body.len() / 2]);
        server.torn_patches.fetch_add(1, Ordering::SeqCst);
        return problem(contract::ProblemCode::Internal, None);
    }
    upload.data.extend_from_slice(&body);
    let mut response = (
        StatusCode::NO_CONTENT,
        [("upload-offset", upload.data.len().to_string())],
    )
        .into_response();
    if upload.data.len() as u64 == upload.length {
        *server
            .completed
            .lock()
            .unwrap()
            .entry(upload.name.clone())
            .or_default() += 1;
        response
            .headers_mut()
            .insert(contract::HEADER_INGEST_STATE, "stored".parse().unwrap());
    }
    response
}

async fn start_server(server: Arc<Server>) -> String {
    let app = Router::new()
        .route(
            contract::PATH_PRODUCT_VERSION,
            get(|| async { axum::Json(contract::ProductVersion::new("test")) }),
        )
        .route(contract::PATH_KEY_CHECK, post(key_check))
        .route(contract::PATH_FILES, post(create))
        .route(contract::PATH_FILE, axum::routing::head(head).patch(patch))
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_client_resumes_retries_and_never_sends_a_file_twice() {
    let dir = tempfile::tempdir().unwrap();
    let out = small_export(dir.path(), 11);
    let report = check_export(&out, &CheckOptions::default()).unwrap();
    let server = Arc::new(Server {
        key: key(),
        ..Server::default()
    });
    server.busy_first.store(true, Ordering::SeqCst);
    server.tear_first_patch.store(true, Ordering::SeqCst);
    let base = start_server(server.clone()).await;
    let api = ApiClient::new(&base, Auth::new(Some(server.key.clone()), None).unwrap(), 4).unwrap();
    let ledger = Ledger::open(&out, "test/db").unwrap();
    let options = UploadOptions {
        workers: 4,
        quiet: true,
        // Small chunks: several PATCHes per file (files that fit in one go use creation-with-upload).
        chunk_size: 1024,
        retry: RetryPolicy {
            base_delay: std::time::Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        ..UploadOptions::default()
    };

    // First run, stopped ("Ctrl-C") once a few files are in.
    let cancel = AtomicBool::new(false);
    let watcher = {
        let server = server.clone();
        async move {
            loop {
                if server.completed.lock().unwrap().len() >= 4 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    };
    let (first, ()) = tokio::join!(upload(&api, &report, &ledger, &options, &cancel), async {
        watcher.await;
        cancel.store(true, Ordering::SeqCst);
    });
    let first = first.unwrap();
    assert!(first.cancelled);
    assert!(
        first.sent >= 4 && first.sent < report.files.len(),
        "{first}"
    );
    assert_eq!(
        server.busy_answers.load(Ordering::SeqCst),
        1,
        "busy was retried"
    );
    assert_eq!(server.torn_patches.load(Ordering::SeqCst), 1);

    // Second run (a new process would open the ledger again): completes the rest.
    let ledger = Ledger::open(&out, "test/db").unwrap();
    let cancel = AtomicBool::new(false);
    let second = upload(&api, &report, &ledger, &options, &cancel)
        .await
        .unwrap();
    assert!(!second.cancelled);
    assert_eq!(second.skipped, first.sent);
    assert_eq!(first.sent + second.sent, report.files.len());
    assert!(second.failed.is_empty() && second.rejected.is_empty());

    // Third run: nothing is sent again.
    let posts = server.posts.load(Ordering::SeqCst);
    let third = upload(&api, &report, &ledger, &options, &cancel)
        .await
        .unwrap();
    assert_eq!(third.sent, 0);
    assert_eq!(third.bytes_sent, 0);
    assert_eq!(third.skipped, report.files.len());
    assert_eq!(server.posts.load(Ordering::SeqCst), posts);

    // Every file arrived exactly once, byte for byte, with checksums on every PATCH; the torn PATCH
    // was resumed at the server's offset.
    let completed = server.completed.lock().unwrap().clone();
    assert_eq!(completed.len(), report.files.len());
    assert!(completed.values().all(|&n| n == 1), "{completed:?}");
    assert_eq!(server.missing_checksums.load(Ordering::SeqCst), 0);
    // With whole files in one request (the default chunk size), creation-with-upload sends each file
    // in its POST.
    let small = UploadOptions {
        chunk_size: 8 * 1024 * 1024,
        ..options.clone()
    };
    let fresh = Ledger::open(&out, "test/other-db").unwrap();
    let whole = upload(&api, &report, &fresh, &small, &cancel)
        .await
        .unwrap();
    assert_eq!(whole.sent, report.files.len());
    assert_eq!(
        server.with_body.load(Ordering::SeqCst),
        report.files.len(),
        "every file went in its creation request"
    );
    {
        let uploads = server.uploads.lock().unwrap();
        for file in &report.files {
            let data = std::fs::read(&file.path).unwrap();
            assert!(
                uploads
                    .values()
                    .any(|u| u.name == file.name && u.data == data),
                "{} arrived intact",
                file.name
            );
        }
    }

    // The manifest takes the digests from the ledger and matches the files.
    let manifest = manifest(&report, Some(&ledger)).unwrap();
    manifest.validate().unwrap();
    for (entry, file) in manifest.files.iter().zip(&report.files) {
        assert_eq!(
            entry.sha256,
            contract::sha256_hex(&std::fs::read(&file.path).unwrap())
        );
    }

    // Deleting the export removes exactly its files and leaves everything else.
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    let deleted = delete_export(&out, &report).unwrap();
    assert_eq!(deleted, report.files.len() + 1);
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["notes.txt".to_owned(), LEDGER_FILE.to_owned()]);

    // A wrong key is one clear failure, not a retry loop.
    let wrong = ApiClient::new(&base, Auth::new(Some(key()), None).unwrap(), 1).unwrap();
    let failure = sfm_migration::client::workflow::key_check(&wrong)
        .await
        .unwrap_err();
    assert!(
        failure.what.contains("does not know your migration key"),
        "{failure}"
    );
    sfm_migration::client::workflow::key_check(&api)
        .await
        .unwrap();
}

/// What the scripted API answers to one `GET status`.
#[derive(Clone, Copy, Debug)]
enum StatusStep {
    Phase(contract::MigrationPhase),
    /// 503 `busy` with `Retry-After: 1`.
    Busy,
    Problem(contract::ProblemCode),
}

/// A migration API that answers `status` from a script (the last step repeats) and `activate` with
/// 202 or a problem.
struct SwitchServer {
    steps: Mutex<std::collections::VecDeque<StatusStep>>,
    activate: Option<contract::ProblemCode>,
    status_calls: AtomicUsize,
    activate_calls: AtomicUsize,
}

fn migration_status(phase: contract::MigrationPhase) -> contract::MigrationStatus {
    contract::MigrationStatus {
        database: "test/db".into(),
        phase,
        phase_reason: None,
        started_at: None,
        organisation_stored: true,
        users: contract::Counts::default(),
        patients: contract::Counts::default(),
        reports: contract::Counts::default(),
        expected_patients: None,
        rejections: Vec::new(),
        rejections_truncated: false,
        validated_digest: None,
        validated_at: None,
        activation_requested_at: None,
        stored: None,
    }
}

async fn scripted_status(State(server): State<Arc<SwitchServer>>) -> Response {
    server.status_calls.fetch_add(1, Ordering::SeqCst);
    let step = {
        let mut steps = server.steps.lock().unwrap();
        if steps.len() > 1 {
            steps.pop_front().unwrap()
        } else {
            *steps.front().unwrap()
        }
    };
    match step {
        StatusStep::Phase(phase) => axum::Json(migration_status(phase)).into_response(),
        StatusStep::Busy => problem(contract::ProblemCode::Busy, Some(1)),
        StatusStep::Problem(code) => problem(code, None),
    }
}

async fn scripted_activate(State(server): State<Arc<SwitchServer>>) -> Response {
    server.activate_calls.fetch_add(1, Ordering::SeqCst);
    match server.activate {
        Some(code) => problem(code, None),
        None => (
            StatusCode::ACCEPTED,
            axum::Json(contract::ActivateResponse {
                activation_requested_at: chrono::Utc::now(),
            }),
        )
            .into_response(),
    }
}

async fn switch_server(
    steps: &[StatusStep],
    activate: Option<contract::ProblemCode>,
) -> (Arc<SwitchServer>, ApiClient) {
    let server = Arc::new(SwitchServer {
        steps: Mutex::new(steps.iter().copied().collect()),
        activate,
        status_calls: AtomicUsize::new(0),
        activate_calls: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route(contract::PATH_STATUS, get(scripted_status))
        .route(contract::PATH_ACTIVATE, post(scripted_activate))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let api = ApiClient::new(
        &format!("http://{address}"),
        Auth::new(Some(key()), None).unwrap(),
        1,
    )
    .unwrap();
    (server, api)
}

/// `activate` waits through `Activating` to `Operational`, asking again after a transient `busy`
/// (honouring `Retry-After`); a switch already begun (`migration-operational` on activate) is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_waits_through_activating_and_retries_only_transient_failures() {
    use contract::MigrationPhase::{Activating, Operational, Validated};
    use sfm_migration::client::workflow::activate_and_wait;
    let timeout = std::time::Duration::from_secs(60);

    let (server, api) = switch_server(
        &[
            StatusStep::Busy,
            StatusStep::Phase(Validated),
            StatusStep::Phase(Activating),
            StatusStep::Busy,
            StatusStep::Phase(Activating),
            StatusStep::Phase(Operational),
        ],
        None,
    )
    .await;
    activate_and_wait(&api, timeout).await.unwrap();
    assert_eq!(server.activate_calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.status_calls.load(Ordering::SeqCst), 6);

    let (server, api) = switch_server(
        &[
            StatusStep::Phase(Activating),
            StatusStep::Phase(Operational),
        ],
        Some(contract::ProblemCode::MigrationOperational),
    )
    .await;
    activate_and_wait(&api, timeout).await.unwrap();
    assert_eq!(server.activate_calls.load(Ordering::SeqCst), 1);

    // Already operational: nothing is asked for.
    let (server, api) = switch_server(&[StatusStep::Phase(Operational)], None).await;
    activate_and_wait(&api, timeout).await.unwrap();
    assert_eq!(server.activate_calls.load(Ordering::SeqCst), 0);
}

/// Any other failure while waiting is the end, with its own sentence: `key-expired` is not taken
/// for the switch any more, and nothing is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_stops_at_the_first_failure_that_is_not_transient() {
    use contract::MigrationPhase::{Activating, Validated};
    use sfm_migration::client::workflow::activate_and_wait;
    let timeout = std::time::Duration::from_secs(60);

    for code in [
        contract::ProblemCode::KeyExpired,
        contract::ProblemCode::KeyRevoked,
        contract::ProblemCode::MigrationOperational,
    ] {
        let (server, api) = switch_server(
            &[
                StatusStep::Phase(Validated),
                StatusStep::Phase(Activating),
                StatusStep::Problem(code),
                StatusStep::Phase(contract::MigrationPhase::Operational),
            ],
            None,
        )
        .await;
        let failure = activate_and_wait(&api, timeout).await.unwrap_err();
        assert_eq!(
            server.status_calls.load(Ordering::SeqCst),
            3,
            "{code}: asked again"
        );
        assert!(
            failure.what.ends_with('.') && !failure.next.is_empty(),
            "{code}: {failure:?}"
        );
        if code == contract::ProblemCode::KeyExpired {
            assert!(failure.what.contains("expired"), "{failure:?}");
        }
    }

    // Activation refused for a reason other than the switch having begun.
    let (_, api) = switch_server(
        &[StatusStep::Phase(Validated)],
        Some(contract::ProblemCode::NotValidated),
    )
    .await;
    let failure = activate_and_wait(&api, timeout).await.unwrap_err();
    assert!(failure.what.contains("not verified"), "{failure:?}");
}
