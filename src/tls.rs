//! TLS for the whole process: aws-lc-rs as the one rustls crypto provider, shared by every TLS
//! client the crate builds (kube, sqlx, reqwest).

/// Installs aws-lc-rs as the process's rustls crypto provider. Call before any TLS client is built;
/// calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
