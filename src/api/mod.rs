//! `sfm-migration-api`: accepts the encrypted FM export over tus 1.0, decrypts, checks and stores each
//! file in its organisation's staging database, and reports progress in the MigrationDatabase's
//! `status.migration` (DESIGN sections 3, 5 and 6; the wire contract is [`crate::contract`]).
//! `docs/architecture.md` draws how a request flows through these files.
//!
//! - Who: [`auth`] (sessions: the key from the request, its database, the HelseID token), on
//!   [`keys`] (the key's rules, pure), [`directory`] (the cluster's keys and databases from short
//!   caches, and one bounded pool per staging database from the migrator's Secret, used only when it
//!   is labelled for that database) and [`switch`] (the switch window: no writes from `Activating`
//!   on, one pure decision).
//! - Who, without a key: [`uploader`] (NHN's own uploader sends a HelseID token alone; the one
//!   database that opted in for its organisation, client and issuer).
//! - Upload: [`tus`] speaks the protocol at `/files` and `/v2/files` ([`tus_request`]: its headers
//!   and bodies);
//!   [`uploads`] stores uploads and chunks in the staging database, so any replica serves any
//!   request and uploads survive restarts.
//! - Store: [`ingest`], one completed file in one transaction (decrypt, unzip, parse, check,
//!   store); [`guard`], what every write checks inside its transaction (the database's owner, no
//!   validation yet); [`recovery`], uploads left complete after a crash.
//! - Progress: [`progress`] (key-check, status, the batched `status.migration` under
//!   [`FIELD_MANAGER`]) and [`verify`] (verify and activate).
//!
//! It must never log, count or echo personal data (names, fødselsnummer, HPR numbers), a migration
//! key, a token or a password: log lines name databases, upload ids, key ids and problem codes only.

pub mod auth;
pub mod directory;
pub mod error;
pub mod guard;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod progress;
pub mod recovery;
pub mod switch;
pub mod tus;
pub mod tus_request;
pub mod uploader;
pub mod uploads;
pub mod verify;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::contract::{self, ProblemCode, ProductVersion};
use crate::format::envelope::DecryptionKeys;
use crate::format::patient_file::FormatLimits;

pub use error::ApiError;

/// The field manager of every status write the API makes; it owns `status.migration` only.
pub const FIELD_MANAGER: &str = "sfm-migration-api";

/// Limits that protect PostgreSQL, memory and the process (flags of `sfm-migration-api serve`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest `Upload-Length` accepted (`Tus-Max-Size`).
    pub max_upload_bytes: u64,
    /// Largest body of one `PATCH`.
    pub max_chunk_bytes: usize,
    /// Files decrypted, parsed and stored at the same time by this process.
    pub max_concurrent_ingests: usize,
    /// Connections of this process to one staging database.
    pub max_connections_per_database: u32,
    /// Connections of this process to all staging databases together (at least
    /// `max_connections_per_database`): its share of PostgreSQL's `max_connections`, which every
    /// replica and the operator share.
    pub max_connections: u32,
    /// Requests served at the same time (all but health, metrics and other answers from memory);
    /// beyond it, 503 `busy`.
    pub max_inflight_requests: usize,
    /// How long an unfinished upload lives (tus expiration).
    pub upload_ttl: Duration,
    /// How long a completing `PATCH` of a patient waits for its ingest before answering `pending`.
    pub ingest_wait: Duration,
    /// Seconds a client is told to wait in `Retry-After`.
    pub retry_after_seconds: u64,
    /// Zip and XML limits of every file.
    pub format: FormatLimits,
}

impl Limits {
    /// These limits fitted to a replica's memory: every file is held whole while it is ingested
    /// (its bytes, the decrypted archive, the unpacked XML), by up to `max_concurrent_ingests` at
    /// once, so a file larger than its share could take the process down, and a recovery loop
    /// retrying it would take it down again. Each ingest may use an eighth of the memory divided
    /// among the ingests for its upload and a quarter for the unpacked archive; the limits given are
    /// kept where they are lower.
    pub fn fitted_to_memory(mut self, memory_bytes: u64) -> Self {
        let share = memory_bytes / self.max_concurrent_ingests.max(1) as u64;
        let upload = (share / 8).max(1024 * 1024);
        self.max_upload_bytes = self.max_upload_bytes.min(upload);
        self.max_chunk_bytes = self
            .max_chunk_bytes
            .min(usize::try_from(self.max_upload_bytes).unwrap_or(usize::MAX));
        let unpacked = (share / 4).max(4 * 1024 * 1024);
        let archive = &mut self.format.archive;
        archive.max_total_bytes = archive.max_total_bytes.min(unpacked);
        archive.max_entry_bytes = archive.max_entry_bytes.min(unpacked);
        self
    }
}

/// The memory this process may use: its cgroup's limit (v2, then v1), when it has one.
pub fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // "max" does not parse; v1 says "no limit" with a number near 2^63.
    .find(|limit| *limit < (1 << 60))
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 512 * 1024 * 1024,
            max_chunk_bytes: 64 * 1024 * 1024,
            max_concurrent_ingests: 4,
            max_connections_per_database: 8,
            max_connections: 64,
            max_inflight_requests: 64,
            upload_ttl: Duration::from_secs(24 * 3600),
            ingest_wait: Duration::from_secs(60),
            retry_after_seconds: 2,
            format: FormatLimits::default(),
        }
    }
}

/// How the API is configured.
pub struct Config {
    /// The API's own namespace: the only one whose Secrets it reads (the migrators' connections).
    pub namespace: String,
    /// The private keys of the "SFM migrering" certificate(s); several during a rotation.
    pub decryption_keys: DecryptionKeys,
    /// The base URL clients reach the API at, for `Location`; without it, taken from `Host`.
    pub public_url: Option<String>,
    /// The HelseID issuers whose tokens may stand in for a migration key ([`uploader`]); empty, no
    /// request without a key is accepted.
    pub trusted_issuers: Vec<String>,
    pub limits: Limits,
}

/// Shared by every request.
pub struct AppState {
    pub config: Config,
    pub kube: kube::Client,
    pub directory: directory::Directory,
    pub ingest_slots: Arc<Semaphore>,
    pub request_slots: Arc<Semaphore>,
    pub metrics: metrics::Metrics,
    pub helseid: crate::helseid::verify::Verifier,
    /// Databases (UIDs) whose `status.migration` must be written at the next flush.
    pub dirty: Mutex<HashSet<uuid::Uuid>>,
    /// When this replica last served a request for each database: the recovery loop scans those
    /// often and the others rarely ([`recovery`]).
    pub activity: Mutex<std::collections::HashMap<uuid::Uuid, std::time::Instant>>,
    /// The users' HPR numbers per database, read once per organisation file.
    pub known_users: ingest::KnownUsers,
}

impl AppState {
    pub fn new(config: Config, kube: kube::Client) -> Arc<Self> {
        Self::with_metrics(config, kube, metrics::Metrics::new())
    }

    /// As [`AppState::new`], with metrics made before (the Kubernetes client counts its requests in
    /// them, [`metrics::counted_kube_client`]). Starts watching the cluster: needs a tokio runtime.
    pub fn with_metrics(
        config: Config,
        kube: kube::Client,
        metrics: metrics::Metrics,
    ) -> Arc<Self> {
        let limits = config.limits.clone();
        Arc::new(AppState {
            directory: directory::Directory::new(kube.clone(), &config.namespace, &limits),
            ingest_slots: Arc::new(Semaphore::new(limits.max_concurrent_ingests)),
            request_slots: Arc::new(Semaphore::new(limits.max_inflight_requests)),
            metrics,
            helseid: crate::helseid::verify::Verifier::new(),
            dirty: Mutex::new(HashSet::new()),
            activity: Mutex::new(std::collections::HashMap::new()),
            known_users: ingest::KnownUsers::default(),
            config,
            kube,
        })
    }

    /// Marks a database's status for the next batched write.
    pub fn mark_dirty(&self, database: uuid::Uuid) {
        self.note_activity(database);
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database);
    }

    /// Records that this replica serves a request for the database now.
    pub fn note_activity(&self, database: uuid::Uuid) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database, std::time::Instant::now());
    }

    /// Whether this replica served a request for the database within `within`; forgets the
    /// database once it has been idle for longer. Only this database's entry is looked at: the
    /// recovery loop asks for every database on every tick.
    pub fn recently_active(&self, database: uuid::Uuid, within: Duration) -> bool {
        let mut activity = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        match activity.get(&database) {
            Some(at) if at.elapsed() < within => true,
            Some(_) => {
                activity.remove(&database);
                false
            }
            None => false,
        }
    }

    /// A `busy` problem with the configured `Retry-After`.
    pub fn busy(&self, why: &str) -> ApiError {
        self.metrics.busy.inc();
        ApiError::new(ProblemCode::Busy)
            .detail(why)
            .retry_after(self.config.limits.retry_after_seconds)
    }
}

/// Every route of the contract.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            contract::PATH_FILES,
            post(tus::create).options(tus::options),
        )
        .route(
            contract::PATH_FILE,
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate),
        )
        .route(
            contract::PATH_FILES_V2,
            post(tus::create).options(tus::options),
        )
        .route(
            contract::PATH_FILE_V2,
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate),
        )
        .route(contract::PATH_PRODUCT_VERSION, get(product_version))
        .route(contract::PATH_KEY_CHECK, post(progress::key_check))
        .route(contract::PATH_STATUS, get(progress::status))
        .route(contract::PATH_VERIFY, post(verify::verify))
        .route(contract::PATH_ACTIVATE, post(verify::activate))
        .route(contract::PATH_OPENAPI, get(openapi))
        .route(contract::PATH_HEALTHZ, get(healthz))
        .route(contract::PATH_READYZ, get(readyz))
        .route(contract::PATH_METRICS, get(metrics::serve))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_slot,
        ))
        .with_state(state)
}

/// Every request that may reach the cluster's objects or a staging database takes one of the
/// replica's request slots for as long as it runs (a `PATCH` body included); with none free it is
/// answered at once: 503 `busy` with `Retry-After`, and the connection closed (the body may be
/// unread). Health, readiness, metrics, the OpenAPI document, the product version and tus `OPTIONS`
/// are answered from memory and take none.
async fn request_slot(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from_memory = request.method() == axum::http::Method::OPTIONS
        || [
            contract::PATH_HEALTHZ,
            contract::PATH_READYZ,
            contract::PATH_METRICS,
            contract::PATH_OPENAPI,
            contract::PATH_PRODUCT_VERSION,
        ]
        .contains(&request.uri().path());
    if from_memory {
        return next.run(request).await;
    }
    let Ok(_slot) = state.request_slots.clone().try_acquire_owned() else {
        return state
            .busy("this API replica serves as many requests as it allows")
            .header("connection", "close")
            .into_response();
    };
    next.run(request).await
}

/// `GET /api/sfmProductVersion`: JSON for a client that asks for it (`Accept: application/json`,
/// as `sfm-migrate` does), else the plain version text: NHN's uploader shows the body as it is in its
/// window title ("Sentral forskrivningsmodul - <body>").
async fn product_version(headers: axum::http::HeaderMap) -> Response {
    let version = ProductVersion::new(env!("CARGO_PKG_VERSION"));
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"));
    if wants_json {
        axum::Json(version).into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            version.product_version,
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        contract::OPENAPI_YAML,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.kube.apiserver_version().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Kubernetes API is not reachable",
        )
            .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ProblemCode::NotFound)
}

/// Serves the API on `listen` until the process is stopped, with the background work: batched status
/// writes, recovery of completed-but-not-ingested uploads after a crash, and the expiry sweep.
pub async fn serve(state: Arc<AppState>, listen: SocketAddr) -> anyhow::Result<()> {
    // NHN's XSD compiled before the first upload: a libxml2 missing from the image fails here.
    tokio::task::spawn_blocking(crate::format::xml::compile_xsd).await??;
    tokio::spawn(progress::flush_loop(state.clone()));
    tokio::spawn(recovery::recovery_loop(state.clone()));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, namespace = %state.config.namespace, keys = state.config.decryption_keys.len(), "migration API listening");
    serve_router(listener, router(state)).await
}

/// Serves `app` on every connection of `listener`, HTTP/1.1 or HTTP/2. On HTTP/1.1 header names
/// are written title-cased (`Upload-Offset`, `Tus-Resumable`, `Location`): HTTP says they are
/// case-insensitive, but NHN's uploader looks `Upload-Offset` up case-sensitively and takes a
/// lower-case `upload-offset` for a failed upload. (`axum::serve` offers no such setting.)
pub async fn serve_router(listener: tokio::net::TcpListener, app: Router) -> anyhow::Result<()> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().title_case_headers(true);
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let builder = builder.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod limits_tests {
    #[test]
    fn limits_are_fitted_to_the_memory_of_the_chart() {
        let limits = super::Limits::default().fitted_to_memory(1 << 30);
        // 1 GiB among 4 ingests: 32 MiB uploads, 64 MiB unpacked per file.
        assert_eq!(limits.max_upload_bytes, 32 << 20);
        assert_eq!(limits.max_chunk_bytes, 32 << 20);
        assert_eq!(limits.format.archive.max_total_bytes, 64 << 20);
        // A generous machine keeps the configured limits.
        let big = super::Limits::default().fitted_to_memory(64 << 30);
        assert_eq!(
            big.max_upload_bytes,
            super::Limits::default().max_upload_bytes
        );
    }
}
