//! The operator's Prometheus metrics and its health endpoints, served on one address
//! (`--metrics-address`): `/metrics`, `/healthz` (the process runs) and `/readyz` (it reached the API
//! server and either leads or stands by).
//!
//! Labels carry only the controller, the result and the reason code of a failure: never a namespace or
//! object name (an organisation's name is not personal data, but a label per object would not scale and
//! names are chosen by people), never a password, key or identity number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: &'static str,
    reason: &'static str,
}

/// Everything the operator measures, plus the per-object failure counts that drive its backoff.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    leader: Gauge,
    ready: AtomicBool,
    /// Consecutive failures per object (`kind/namespace/name`), reset by a success.
    consecutive_failures: Mutex<HashMap<String, u32>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sfm_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "Reconciliations finished, by controller and result",
            reconciles.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciliations, by controller and reason code",
            failures.clone(),
        );
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            durations.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process holds the leader Lease and reconciles, else 0",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            durations,
            leader,
            ready: AtomicBool::new(false),
            consecutive_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a finished reconciliation of `object` (`kind/namespace/name`, kept in memory only).
    pub fn reconciled(
        &self,
        controller: &'static str,
        object: &str,
        started: Instant,
        failure: Option<&'static str>,
    ) {
        let result = if failure.is_some() {
            "error"
        } else {
            "success"
        };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.durations
            .get_or_create(&ControllerLabel { controller })
            .observe(started.elapsed().as_secs_f64());
        let mut counts = self.consecutive_failures.lock().unwrap();
        match failure {
            Some(reason) => {
                self.failures
                    .get_or_create(&FailureLabels { controller, reason })
                    .inc();
                *counts.entry(object.to_string()).or_default() += 1;
            }
            None => {
                counts.remove(object);
            }
        }
    }

    /// How long to wait before retrying `object` after a failure: exponential in its consecutive
    /// failures (2 s, 4 s, 8 s ... up to 5 minutes), with up to 10% jitter so that many objects failing
    /// for one cause (a server down) do not retry in lockstep.
    pub fn backoff(&self, object: &str) -> Duration {
        let failures = self
            .consecutive_failures
            .lock()
            .unwrap()
            .get(object)
            .copied()
            .unwrap_or(1);
        backoff_for(failures, rand::random::<f64>())
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The backoff after `failures` consecutive failures, `jitter` in [0, 1).
pub fn backoff_for(failures: u32, jitter: f64) -> Duration {
    let base = 2u64.saturating_pow(failures.clamp(1, 9)).min(300) as f64;
    Duration::from_secs_f64(base * (1.0 + jitter.clamp(0.0, 1.0) / 10.0))
}

/// The router of `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: std::sync::Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_ready))
        .with_state(metrics)
}

async fn serve_metrics(State(metrics): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn serve_ready(State(metrics): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        let seconds: Vec<u64> = (1..=10).map(|n| backoff_for(n, 0.0).as_secs()).collect();
        assert_eq!(seconds, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_for(0, 0.0), Duration::from_secs(2));
        let jittered = backoff_for(3, 0.99);
        assert!(jittered > Duration::from_secs(8) && jittered < Duration::from_secs_f64(8.8));
    }

    #[test]
    fn failures_count_per_object_and_a_success_resets_them() {
        let metrics = Metrics::new();
        let now = Instant::now();
        for _ in 0..3 {
            metrics.reconciled(
                "database",
                "MigrationDatabase/a/x",
                now,
                Some("AdminSecretMissing"),
            );
        }
        metrics.reconciled(
            "database",
            "MigrationDatabase/a/y",
            now,
            Some("AdminSecretMissing"),
        );
        assert_eq!(backoff_for(3, 0.0), Duration::from_secs(8));
        assert!(metrics.backoff("MigrationDatabase/a/x") >= Duration::from_secs(8));
        assert!(metrics.backoff("MigrationDatabase/a/y") < Duration::from_secs(3));
        metrics.reconciled("database", "MigrationDatabase/a/x", now, None);
        assert!(metrics.backoff("MigrationDatabase/a/x") < Duration::from_secs(3));

        let text = metrics.encode();
        assert!(text.contains(
            r#"sfm_operator_reconcile_failures_total{controller="database",reason="AdminSecretMissing"} 4"#
        ), "{text}");
        assert!(
            text.contains(
                r#"sfm_operator_reconciliations_total{controller="database",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("MigrationDatabase/a/x"),
            "object names must not become labels"
        );
    }
}
