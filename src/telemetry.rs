//! Process-wide set-up shared by the binaries: the rustls crypto provider and structured logging.
//!
//! Log lines carry identifiers of Kubernetes objects and uploads only, never personal data or secrets.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs aws-lc-rs as the one rustls crypto provider of the process. Call before any TLS client
/// (kube, sqlx, reqwest) is built; calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

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
