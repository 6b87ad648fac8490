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
        } => {
            telemetry::install_crypto_provider();
            telemetry::init_logging();
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration found")?;
            let config = operator::Config {
                default_admin_uri: default_admin_url,
                api_namespace,
                resync: Duration::from_secs(resync_seconds),
            };
            operator::run(client, config).await?;
        }
    }
    Ok(())
}
