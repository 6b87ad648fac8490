//! Prometheus metrics of the API: counts and durations only, never a file name, an identifier or a key.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;
use crate::contract::IngestState;

pub struct Metrics {
    registry: Registry,
    pub uploads_created: Counter,
    pub uploads_completed: Counter,
    pub bytes_received: Counter,
    pub files_stored: Counter,
    pub files_rejected: Counter,
    pub busy: Counter,
    pub auth_failures: Counter,
    pub status_writes: Counter,
    pub ingest_seconds: Histogram,
    /// Upload requests (tus creation, PATCH) holding one of the replica's request slots; set when
    /// scraped. Next to `busy`, it shows how close a replica is to refusing.
    pub upload_requests_in_flight: Gauge,
    /// Requests this replica made to the Kubernetes API server (counted by [`counted_kube_client`]):
    /// what strangers' requests must not drive up.
    pub kubernetes_requests: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sfm_api");
        let metrics = Metrics {
            uploads_created: Counter::default(),
            uploads_completed: Counter::default(),
            bytes_received: Counter::default(),
            files_stored: Counter::default(),
            files_rejected: Counter::default(),
            busy: Counter::default(),
            auth_failures: Counter::default(),
            status_writes: Counter::default(),
            ingest_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            upload_requests_in_flight: Gauge::default(),
            kubernetes_requests: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "uploads_created",
            "tus uploads created",
            metrics.uploads_created.clone(),
        );
        registry.register(
            "uploads_completed",
            "tus uploads that received their last byte",
            metrics.uploads_completed.clone(),
        );
        registry.register(
            "received_bytes",
            "bytes appended to uploads",
            metrics.bytes_received.clone(),
        );
        registry.register(
            "files_stored",
            "files ingested and stored",
            metrics.files_stored.clone(),
        );
        registry.register(
            "files_rejected",
            "files whose content was rejected",
            metrics.files_rejected.clone(),
        );
        registry.register(
            "busy",
            "requests refused with 503 busy (backpressure)",
            metrics.busy.clone(),
        );
        registry.register(
            "key_failures",
            "requests with a wrong migration key",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "status_writes",
            "status.migration patches",
            metrics.status_writes.clone(),
        );
        registry.register(
            "ingest_seconds",
            "time to decrypt, check and store one file",
            metrics.ingest_seconds.clone(),
        );
        registry.register(
            "upload_requests_in_flight",
            "upload requests holding a request slot (at most --max-inflight-requests)",
            metrics.upload_requests_in_flight.clone(),
        );
        registry.register(
            "kubernetes_requests",
            "requests made to the Kubernetes API server (LIST, WATCH, GET, PATCH)",
            metrics.kubernetes_requests.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn observe_ingest(&self, state: IngestState, took: Duration) {
        match state {
            IngestState::Stored => self.files_stored.inc(),
            IngestState::Rejected => self.files_rejected.inc(),
            IngestState::Pending => 0,
        };
        self.ingest_seconds.observe(took.as_secs_f64());
    }
}

/// A Kubernetes client whose every request counts in `requests` (the API's
/// [`Metrics::kubernetes_requests`]).
pub fn counted_kube_client(config: kube::Config, requests: Counter) -> kube::Result<kube::Client> {
    let count = tower::util::MapRequestLayer::new(
        move |request: axum::http::Request<kube::client::Body>| {
            requests.inc();
            request
        },
    );
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /metrics`.
pub async fn serve(State(state): State<Arc<AppState>>) -> Response {
    let slots = state.config.limits.max_inflight_requests;
    let free = state.request_slots.available_permits();
    state
        .metrics
        .upload_requests_in_flight
        .set(i64::try_from(slots.saturating_sub(free)).unwrap_or(i64::MAX));
    let mut text = String::new();
    if encode(&mut text, &state.metrics.registry).is_err() {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
