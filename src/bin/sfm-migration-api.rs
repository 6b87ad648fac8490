//! `sfm-migration-api`: `serve` runs the migration API; `dev-issuer` runs a local HelseID-like issuer
//! for the demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use sfm_migration::api::{self, AppState, Config, Limits};
use sfm_migration::format::envelope::DecryptionKeys;
use sfm_migration::telemetry;

/// mimalloc rather than glibc's malloc: the ingest allocates and frees a whole patient's model and
/// documents per file, from many threads (docs/performance.md, "The ingest path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. With them, the first touch of fresh allocator
/// memory zeroes a whole 2 MiB page; the ingest takes fresh pages all the time (a file's decrypted
/// zip, its documents, the statement buffers), and that zeroing was 6.6% of the API's CPU in the
/// flow's profile. Without them, 3-4% less API CPU per patient (docs/performance.md). This is what
/// mimalloc's own `MIMALLOC_ALLOW_THP=0` does; done here so no deployment has to remember it.
#[cfg(target_os = "linux")]
fn without_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE reads no memory of ours; it sets a flag on this process's memory
    // map that later page faults read. A failure (an old kernel) leaves THP as it was.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(not(target_os = "linux"))]
fn without_transparent_huge_pages() {}

#[derive(Parser)]
#[command(version, about = "SFM migration API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the migration API (kubeconfig from the environment or the service account).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "SFM_API_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The API's own namespace, where the migrators' connection Secrets are.
        #[arg(long, env = "SFM_API_NAMESPACE", default_value = "sfm-system")]
        namespace: String,
        /// PEM files with the private key(s) of the "SFM migrering" certificate; repeat (or separate
        /// with commas) during a rotation.
        #[arg(
            long = "decryption-key",
            env = "SFM_DECRYPTION_KEYS",
            value_delimiter = ',',
            required = true
        )]
        decryption_keys: Vec<PathBuf>,
        /// The URL clients reach the API at (for `Location`, and the URL DPoP proofs must name);
        /// required with --trusted-issuer. Without it, `Location` is built from the Host header.
        #[arg(long, env = "SFM_PUBLIC_URL")]
        public_url: Option<String>,
        /// HelseID issuers (`iss`) this API trusts: the only ones a MigrationDatabase's
        /// `validation.helseId.issuer` may name, and whose tokens may stand in for a migration key
        /// for databases that opt in with `spec.helseIdUploads` (NHN's own uploader); repeat or
        /// separate with commas. `https://` only (see --allow-http-issuers).
        #[arg(
            long = "trusted-issuer",
            env = "SFM_TRUSTED_ISSUERS",
            value_delimiter = ','
        )]
        trusted_issuers: Vec<String>,
        /// Development and tests only: accept `http://` trusted issuers (a local issuer).
        #[arg(long, env = "SFM_ALLOW_HTTP_ISSUERS")]
        allow_http_issuers: bool,
        /// Largest upload in bytes (Tus-Max-Size).
        #[arg(long, env = "SFM_MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
        max_upload_bytes: u64,
        /// Files ingested at the same time by this process.
        #[arg(long, env = "SFM_MAX_CONCURRENT_INGESTS", default_value_t = 4)]
        max_concurrent_ingests: usize,
        /// Connections of this process to one staging database.
        #[arg(long, env = "SFM_MAX_CONNECTIONS_PER_DATABASE", default_value_t = 8)]
        max_connections_per_database: u32,
        /// Connections of this process to all staging databases together: its share of PostgreSQL's
        /// max_connections (shared by every replica and the operator). A database without a pool
        /// waits for pools nobody uses to close; beyond that, 503 with Retry-After.
        #[arg(long, env = "SFM_MAX_CONNECTIONS", default_value_t = 64)]
        max_connections: u32,
        /// Requests served at the same time (health, metrics and the product version aside);
        /// beyond it, 503 with Retry-After.
        #[arg(long, env = "SFM_MAX_INFLIGHT_REQUESTS", default_value_t = 64)]
        max_inflight_requests: usize,
        /// Hours an unfinished upload lives.
        #[arg(long, env = "SFM_UPLOAD_TTL_HOURS", default_value_t = 24)]
        upload_ttl_hours: u64,
        /// Seconds a completing PATCH waits for its ingest before answering `pending`.
        #[arg(long, env = "SFM_INGEST_WAIT_SECONDS", default_value_t = 60)]
        ingest_wait_seconds: u64,
        /// The memory this process may use, in bytes (the chart passes the container's limit);
        /// default: its cgroup's limit. The largest upload and the unpacked archive of each file
        /// are fitted to it, so no file can exhaust it.
        #[arg(long, env = "SFM_MEMORY_LIMIT_BYTES")]
        memory_limit_bytes: Option<u64>,
    },
    /// Run a local issuer that behaves like HelseID (discovery, JWKS, client credentials with a
    /// private_key_jwt client assertion, DPoP with nonces), for the demo. Never for production:
    /// production builds leave it out (`--no-default-features`).
    #[cfg(feature = "dev-issuer")]
    DevIssuer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// The issuer URL (`iss`); default: http://<listen>.
        #[arg(long)]
        issuer_url: Option<String>,
        /// The audience (`aud`) of issued tokens.
        #[arg(long, default_value = "nhn:sfm-migration")]
        audience: String,
        /// The client id allowed to ask for tokens.
        #[arg(long)]
        client_id: String,
        /// A JSON file with the client's public key(s): a JWK or a JWK set.
        #[arg(long)]
        client_jwks: PathBuf,
        /// The organisation number the tokens carry (`orgnr_parent`).
        #[arg(long)]
        organisation_number: String,
        /// Scopes the client may get (repeat or separate with commas).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "nhn:sfm-migration/upload"
        )]
        scope: Vec<String>,
        /// Seconds an access token lives.
        #[arg(long, default_value_t = 600)]
        token_lifetime_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    without_transparent_huge_pages();
    match Cli::parse().command {
        Command::Serve {
            listen,
            namespace,
            decryption_keys,
            public_url,
            trusted_issuers,
            allow_http_issuers,
            max_upload_bytes,
            max_concurrent_ingests,
            max_connections_per_database,
            max_connections,
            max_inflight_requests,
            upload_ttl_hours,
            ingest_wait_seconds,
            memory_limit_bytes,
        } => {
            sfm_migration::tls::install_crypto_provider();
            telemetry::init_logging();
            if let Some(plain) = trusted_issuers
                .iter()
                .find(|i| !i.starts_with("https://") && !allow_http_issuers)
            {
                anyhow::bail!(
                    "the trusted issuer {plain} is not https://: tokens would be checked against keys fetched in the clear (--allow-http-issuers is for development only)"
                );
            }
            if max_connections < max_connections_per_database.max(1) {
                anyhow::bail!(
                    "--max-connections ({max_connections}) is below --max-connections-per-database ({max_connections_per_database}): no database could ever be served"
                );
            }
            if !trusted_issuers.is_empty() && public_url.is_none() {
                anyhow::bail!(
                    "--public-url is needed with --trusted-issuer: a DPoP proof names the URL its client used, and only the URL the API is configured with can be checked against (a Host header is the sender's to choose)"
                );
            }
            let keys = DecryptionKeys::from_pem_files(&decryption_keys)
                .context("the decryption keys cannot be loaded")?;
            let metrics = api::metrics::Metrics::new();
            let kube_config = kube::Config::infer()
                .await
                .context("no Kubernetes configuration found")?;
            let kube =
                api::metrics::counted_kube_client(kube_config, metrics.kubernetes_requests.clone())
                    .context("the Kubernetes client cannot be made")?;
            let limits = Limits {
                max_upload_bytes,
                max_concurrent_ingests: max_concurrent_ingests.max(1),
                max_connections_per_database: max_connections_per_database.max(1),
                max_connections,
                max_inflight_requests: max_inflight_requests.max(1),
                upload_ttl: Duration::from_secs(upload_ttl_hours.max(1) * 3600),
                ingest_wait: Duration::from_secs(ingest_wait_seconds),
                ..Limits::default()
            };
            let limits = match memory_limit_bytes.or_else(api::cgroup_memory_limit) {
                Some(memory) => {
                    let fitted = limits.fitted_to_memory(memory);
                    tracing::info!(
                        memory,
                        max_upload_bytes = fitted.max_upload_bytes,
                        max_unpacked_bytes = fitted.format.archive.max_total_bytes,
                        "limits fitted to the memory limit"
                    );
                    fitted
                }
                None => limits,
            };
            let state = AppState::with_metrics(
                Config {
                    namespace,
                    decryption_keys: keys,
                    public_url,
                    trusted_issuers,
                    limits,
                },
                kube,
                metrics,
            );
            api::serve(state, listen).await?;
        }
        #[cfg(feature = "dev-issuer")]
        Command::DevIssuer {
            listen,
            issuer_url,
            audience,
            client_id,
            client_jwks,
            organisation_number,
            scope,
            token_lifetime_seconds,
        } => {
            sfm_migration::tls::install_crypto_provider();
            telemetry::init_logging();
            let text = std::fs::read_to_string(&client_jwks)
                .with_context(|| format!("cannot read {}", client_jwks.display()))?;
            let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .or_else(|_| {
                    serde_json::from_str::<jsonwebtoken::jwk::Jwk>(&text)
                        .map(|jwk| jsonwebtoken::jwk::JwkSet { keys: vec![jwk] })
                })
                .context("the client key file is neither a JWK nor a JWK set")?;
            let issuer = sfm_migration::helseid::issuer::Issuer::new(
                sfm_migration::helseid::issuer::IssuerConfig {
                    issuer_url: issuer_url.unwrap_or_else(|| format!("http://{listen}")),
                    audience,
                    clients: vec![sfm_migration::helseid::issuer::RegisteredClient {
                        client_id,
                        jwks,
                        organisation_number,
                        child_organisation_number: None,
                        scopes: scope,
                    }],
                    token_lifetime: Duration::from_secs(token_lifetime_seconds),
                },
            )?;
            sfm_migration::helseid::issuer::serve(issuer, listen).await?;
        }
    }
    Ok(())
}
