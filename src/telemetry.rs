//! Structured logging, set up once per process by the binaries.
//!
//! Log lines carry identifiers of Kubernetes objects and uploads only, never personal data or secrets.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Structured logs on stderr: JSON when `SFM_LOG_FORMAT=json` (in a cluster), readable text otherwise.
/// The level comes from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("SFM_LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        let _ = registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init();
    } else {
        let _ = registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init();
    }
}
