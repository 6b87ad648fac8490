//! `sfm-operator run`: reconciles MigrationDatabases into PostgreSQL databases in staging mode, issues
//! MigrationKeys, and switches a database to operational mode under the activation rule of DESIGN
//! section 3.
//!
//! The operator owns every status field except `status.migration` (the migration API's); its status
//! patches are server-side applies that never include it. It never puts a password or a key into a
//! spec, a status, a log line or an Event: passwords live in Secrets and reach PostgreSQL as SCRAM
//! verifiers only.

pub mod children;
pub mod database;
pub mod key;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::crd::{MigrationDatabase, MigrationKey};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "sfm-operator";
/// The finalizer that makes deletion honour the reclaim policy.
pub const FINALIZER: &str = "sfm.nhn.no/cleanup";

/// How the operator is configured (flags or environment of `sfm-operator run`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The admin connection URI of the default PostgreSQL server (for MigrationDatabases without
    /// `spec.server`). Never logged.
    pub default_admin_uri: Option<String>,
    /// The namespace of the migration API, where the migrators' connection Secrets go.
    pub api_namespace: String,
    /// How often a healthy object is looked at again even without a change.
    pub resync: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
}

/// Errors of one reconcile; each becomes a condition message, an Event and a retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Provision(#[from] crate::postgres::provision::ProvisionError),
    #[error("{message}")]
    Config {
        reason: &'static str,
        message: String,
    },
    #[error("the migration key could not be generated: {0}")]
    Key(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Provision(e) => e.reason(),
            Error::Config { reason, .. } => reason,
            Error::Key(_) => "KeyGenerationFailed",
        }
    }
}

/// Runs both controllers until the process is told to stop.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let context = Arc::new(Context {
        client: client.clone(),
        config,
        recorder,
    });
    let databases: Api<MigrationDatabase> = Api::all(client.clone());
    let keys: Api<MigrationKey> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::all(client.clone());

    // Keys change a database's active key; status changes of a database (the migration API's
    // `status.migration`) must wake it too, so no generation-only predicate is used.
    let database_controller = Controller::new(databases.clone(), watcher::Config::default())
        .owns(
            secrets.clone(),
            watcher::Config::default().labels(children::MANAGED_BY_SELECTOR),
        )
        .watches(
            keys.clone(),
            watcher::Config::default(),
            |key: MigrationKey| {
                key.namespace().map(|ns| {
                    kube::runtime::reflector::ObjectRef::new(&key.spec.database_ref).within(&ns)
                })
            },
        )
        .shutdown_on_signal()
        .run(database::reconcile, database::error_policy, context.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "database reconcile did not finish");
            }
        });

    let key_controller = Controller::new(keys, watcher::Config::default())
        .owns(
            secrets,
            watcher::Config::default().labels(children::MANAGED_BY_SELECTOR),
        )
        .watches(
            databases,
            watcher::Config::default(),
            |db: MigrationDatabase| {
                // A database going operational expires its keys.
                let _ = db;
                None::<kube::runtime::reflector::ObjectRef<MigrationKey>>
            },
        )
        .shutdown_on_signal()
        .run(key::reconcile, key::error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "key reconcile did not finish");
            }
        });

    tracing::info!("sfm-operator started");
    futures::join!(database_controller, key_controller);
    Ok(())
}

/// Exponential backoff per object, from 2 s up to 5 minutes, from the number of failures so far.
pub fn backoff(failures: u32) -> Action {
    let seconds = 2u64.saturating_pow(failures.min(8)).min(300);
    Action::requeue(Duration::from_secs(seconds))
}
