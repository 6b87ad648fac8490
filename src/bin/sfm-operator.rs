//! `sfm-operator`: the controller for MigrationDatabase and MigrationKey.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use sfm_migration::{crd, operator, telemetry};

#[derive(Parser)]
#[command(version, about = "SFM migration operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds,
    /// Run the controllers against the cluster of the current kubeconfig or service account.
    Run {
        /// Admin connection URI of the default PostgreSQL server, for MigrationDatabases without
        /// `spec.server` (in a cluster: from a Secret, through the environment).
        #[arg(long, env = "SFM_DEFAULT_ADMIN_URL", hide_env_values = true)]
        default_admin_url: Option<String>,
        /// The migration API's namespace, where the migrators' connection Secrets are written.
        #[arg(long, env = "SFM_API_NAMESPACE", default_value = "sfm-system")]
        api_namespace: String,
        /// Seconds between looks at an unchanged object.
        #[arg(long, env = "SFM_RESYNC_SECONDS", default_value_t = 300)]
        resync_seconds: u64,
        /// Reconcile only this namespace's objects (default: all namespaces).
        #[arg(long, env = "SFM_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// Serve /metrics, /healthz and /readyz here, e.g. 0.0.0.0:8080 (default: not served).
        #[arg(long, env = "SFM_METRICS_ADDRESS")]
        metrics_address: Option<std::net::SocketAddr>,
        /// Elect a leader on a Lease, so that only one replica reconciles. Turn off only for a single
        /// replica that is sure to be alone.
        #[arg(long, env = "SFM_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// The namespace of the leader Lease (in a cluster: the operator's own, from POD_NAMESPACE).
        #[arg(long, env = "POD_NAMESPACE", default_value = "sfm-system")]
        leader_election_namespace: String,
        /// The name of the leader Lease.
        #[arg(
            long,
            env = "SFM_LEADER_ELECTION_LEASE",
            default_value = "sfm-operator"
        )]
        leader_election_lease: String,
        /// Reconciliations at once per controller (each database reconcile holds two PostgreSQL
        /// connections to its server).
        #[arg(long, env = "SFM_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Seconds a Lease must stay unrenewed before a standby takes it over.
        #[arg(long, default_value_t = 15)]
        lease_duration_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", crd::crds_yaml()?),
        Command::Run {
            default_admin_url,
            api_namespace,
            resync_seconds,
            watch_namespace,
            metrics_address,
            leader_election,
            leader_election_namespace,
            leader_election_lease,
            lease_duration_seconds,
            concurrency,
        } => {
            sfm_migration::tls::install_crypto_provider();
            telemetry::init_logging();
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration found")?;
            let config = operator::Config {
                default_admin_uri: default_admin_url,
                api_namespace,
                resync: Duration::from_secs(resync_seconds),
                watch_namespace,
                metrics_address,
                concurrency,
                leader_election: leader_election.then(|| {
                    let lease_duration = Duration::from_secs(lease_duration_seconds.max(3));
                    operator::LeaderElectionConfig {
                        namespace: leader_election_namespace,
                        lease_name: leader_election_lease,
                        identity: operator::leader::default_identity(),
                        timings: operator::leader::Timings {
                            lease_duration,
                            renew_deadline: lease_duration * 2 / 3,
                            retry_period: lease_duration / 7,
                        },
                    }
                }),
            };
            operator::run(client, config).await?;
        }
    }
    Ok(())
}
