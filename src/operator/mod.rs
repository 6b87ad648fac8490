//! `sfm-operator run`: reconciles MigrationDatabases into PostgreSQL databases in staging mode, issues
//! MigrationKeys, and switches a database to operational mode under the activation rule of DESIGN
//! section 3.
//!
//! A database's pass is [`database`] (the reconcile flow), with [`activation`] (the activation rule,
//! pure), [`quiet`] (which wake-ups need a pass), [`credentials`], [`status`] (status and Events) and
//! [`cleanup`]; [`key`] issues the keys; [`children`] builds what the operator creates, named by
//! [`crate::names`]. It never imports the migration API, nor the API it.
//!
//! The operator owns every status field except `status.migration` (the migration API's); its status
//! patches are server-side applies that never include it. It never puts a password or a key into a
//! spec, a status, a log line or an Event: passwords live in Secrets and reach PostgreSQL as SCRAM
//! verifiers only.

pub mod activation;
pub mod children;
pub mod cleanup;
pub mod credentials;
pub mod database;
pub mod key;
pub mod leader;
pub mod metrics;
pub mod quiet;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::crd::{MigrationDatabase, MigrationKey, Phase};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = crate::names::MANAGER;
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
    /// Only this namespace's MigrationDatabases and MigrationKeys (all namespaces when `None`).
    pub watch_namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (not served when `None`).
    pub metrics_address: Option<SocketAddr>,
    /// Leader election on a Lease (off only for a single replica that knows it is alone).
    pub leader_election: Option<LeaderElectionConfig>,
    /// Reconciliations running at once per controller. Each database reconcile holds two PostgreSQL
    /// connections, so this bounds what the operator takes of a server's `max_connections`.
    pub concurrency: u16,
}

/// Where the leader Lease lives and who this candidate is.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub timings: leader::Timings,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Arc<metrics::Metrics>,
    /// The key controller's cache of MigrationKeys (the watched namespaces), read by the database
    /// reconcile instead of listing keys on every pass. Writes still go to the API server.
    pub keys: Store<MigrationKey>,
    /// Turns true once `keys` holds the first full list. Waited on here, not with the store's own
    /// `wait_until_ready`: that wakes only the last of several waiters (its future keeps one
    /// waker), so of two reconciles started together one waited for ever.
    pub keys_ready: tokio::sync::watch::Receiver<bool>,
    /// Databases whose last pass succeeded, with what they looked like: see [`quiet::QuietPasses`].
    pub quiet: quiet::QuietPasses,
    /// `--concurrency` passes of each controller at a time (so at most 2 x concurrency + 1 sessions
    /// on a PostgreSQL server). Bounded here rather than by kube-runtime's own concurrency setting:
    /// with that at 8 and 120 databases applied at once, 11 to 24 of them were never reconciled at
    /// all (found by the onboarding-wave test; unbounded, every one was). A wake-up waiting here
    /// costs a parked task.
    pub database_passes: tokio::sync::Semaphore,
    pub key_passes: tokio::sync::Semaphore,
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
    /// An object of the name the operator would use exists without this object's UID label: it
    /// was not made for this object, and is neither adopted nor changed.
    #[error(
        "{kind} {name} already exists but was not made for this object (name collision); the operator does not adopt it: remove it or rename it"
    )]
    NameCollision { kind: String, name: String },
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Provision(e) => e.reason(),
            Error::Config { reason, .. } => reason,
            Error::Key(_) => "KeyGenerationFailed",
            Error::NameCollision { .. } => "NameCollision",
        }
    }

    /// Whether the failure is a busy or unreachable server (or API server), not the object.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Provision(e) => e.is_transient(),
            Error::Kube(_) => true,
            _ => false,
        }
    }
}

/// The longest wait before the next pass after a transient failure, or of a database in the middle
/// of its switch: a database must not sit `Activating` for minutes because PostgreSQL refused
/// connections during a busy moment.
pub const TRANSIENT_BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(30);

/// The wait before the next pass after `error`: the object's exponential backoff, capped at
/// [`TRANSIENT_BACKOFF_CAP`] when the server was only busy or the switch is half done.
pub fn next_pass_after(
    backoff: std::time::Duration,
    transient: bool,
    phase: Option<crate::crd::Phase>,
) -> std::time::Duration {
    if transient || phase == Some(crate::crd::Phase::Activating) {
        backoff.min(TRANSIENT_BACKOFF_CAP)
    } else {
        backoff
    }
}

/// Serves metrics and health, waits for the leader Lease (when elected), then runs both controllers
/// until the process is told to stop. Losing the Lease ends the process with an error, so that a
/// restarted process stands by again and no two operators ever reconcile at once.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    if let Some(address) = config.metrics_address {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(%address, "serving /metrics, /healthz and /readyz");
        let router = metrics::router(metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the metrics server stopped");
            }
        });
    }
    let version = client.apiserver_version().await?;
    tracing::info!(kubernetes = %version.git_version, "reached the API server");
    metrics.set_ready();

    let mut election = config.leader_election.as_ref().map(|le| {
        leader::LeaderElection::new(
            Api::namespaced(client.clone(), &le.namespace),
            &le.lease_name,
            &le.identity,
            le.timings.clone(),
        )
    });
    if let Some(election) = election.as_mut() {
        tokio::select! {
            () = election.acquire() => {}
            () = shutdown_signal() => return Ok(()),
        }
    }
    metrics.set_leader(true);

    let controllers = run_controllers(client, config, metrics.clone());
    let controllers = async {
        tokio::select! {
            () = controllers => {}
            () = async {
                shutdown_signal().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "reconciles still running after the stop signal; stopping them (every step is idempotent and the next leader resumes it)"
                );
            }
        }
    };
    match election {
        None => {
            controllers.await;
            Ok(())
        }
        Some(mut election) => {
            tokio::select! {
                () = controllers => {
                    election.release().await;
                    Ok(())
                }
                reason = election.hold() => {
                    metrics.set_leader(false);
                    anyhow::bail!("stopped leading ({reason}); exiting so that only one operator reconciles")
                }
            }
        }
    }
}

/// How long reconciles in flight may run on after SIGTERM. A reconcile stuck on a slow PostgreSQL
/// server must not hold the process past the Pod's grace period (30 s in the chart), after which it
/// would be killed without giving up its Lease; stopping mid-reconcile is safe, as every step is.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The key of an object in the per-object failure counts (memory only, never a metric label).
fn object_key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

async fn reconcile_database(
    db: Arc<MigrationDatabase>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let _pass = ctx.database_passes.acquire().await;
    let started = Instant::now();
    tracing::debug!(database = %db.name_any(), "wake-up");
    let result = database::reconcile(db.clone(), ctx.clone()).await;
    let failure = result.as_ref().err().map(finalizer_reason);
    tracing::debug!(
        database = %db.name_any(),
        millis = started.elapsed().as_millis() as u64,
        failure,
        next = ?result.as_ref().ok(),
        "wake-up done"
    );
    ctx.metrics
        .reconciled("database", &object_key(db.as_ref()), started, failure);
    result
}

fn database_error_policy(
    db: Arc<MigrationDatabase>,
    error: &kube::runtime::finalizer::Error<Error>,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(database = %db.name_any(), namespace = ?db.namespace(), %error, "reconcile failed");
    let transient = match error {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_transient(),
        _ => true,
    };
    let phase = db.status.as_ref().and_then(|s| s.phase);
    Action::requeue(next_pass_after(
        ctx.metrics.backoff(&object_key(db.as_ref())),
        transient,
        phase,
    ))
}

async fn reconcile_key(key: Arc<MigrationKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _pass = ctx.key_passes.acquire().await;
    let started = Instant::now();
    let result = key::reconcile(key.clone(), ctx.clone()).await;
    let failure = result.as_ref().err().map(Error::reason);
    ctx.metrics
        .reconciled("key", &object_key(key.as_ref()), started, failure);
    result
}

fn key_error_policy(key: Arc<MigrationKey>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(key = %key.name_any(), namespace = ?key.namespace(), %error, "key reconcile failed");
    Action::requeue(ctx.metrics.backoff(&object_key(key.as_ref())))
}

fn finalizer_reason(error: &kube::runtime::finalizer::Error<Error>) -> &'static str {
    use kube::runtime::finalizer::Error as F;
    match error {
        F::ApplyFailed(error) | F::CleanupFailed(error) => error.reason(),
        F::AddFinalizer(_) | F::RemoveFinalizer(_) => "FinalizerUpdateFailed",
        F::UnnamedObject | F::InvalidFinalizer => "InvalidObject",
    }
}

/// A watch that yields the objects changed or deleted after its first complete listing.
///
/// A restarted operator lists every database, and each gets its pass from that (a quiet one when
/// `status.lastPass` says nothing changed). Listing the databases' Secrets and keys as well would
/// wake each database two or three times more, and a wake-up with a version already seen means a
/// full pass (PostgreSQL sessions): 1,000 databases would cost thousands of sessions to find
/// nothing to do. So the objects of the first listing pass nothing on. Everything after it does,
/// the objects of a later relisting (after a watch expired) included: a change may hide in them.
/// Drift that happened while no operator ran is repaired by the resync.
fn changes_after_start<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    use kube::runtime::WatchStreamExt as _;
    let mut listed = false;
    events.default_backoff().filter_map(move |event| {
        let object = match event {
            Ok(watcher::Event::Init) => None,
            Ok(watcher::Event::InitDone) => {
                listed = true;
                None
            }
            Ok(watcher::Event::InitApply(object)) => listed.then_some(Ok(object)),
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => Some(Ok(object)),
            Err(error) => Some(Err(error)),
        };
        std::future::ready(object)
    })
}

async fn run_controllers(client: Client, config: Config, metrics: Arc<metrics::Metrics>) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let namespace = config.watch_namespace.clone();
    // No concurrency limit in kube-runtime (see `Context::database_passes` for why): the passes
    // are bounded by the context's semaphores.
    let controller_config = kube::runtime::controller::Config::default();
    let passes = usize::from(config.concurrency.max(1));
    let databases: Api<MigrationDatabase> = scoped(&client, &namespace);
    let databases_for_keys = databases.clone();
    let keys: Api<MigrationKey> = scoped(&client, &namespace);
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, &namespace);
    let owned = || watcher::Config::default().labels(crate::names::MANAGED_BY_SELECTOR);

    // The key controller's cache serves both controllers: the mapper below and the database
    // reconcile (its active key, the keys to expire at the switch).
    let key_controller = Controller::new(keys.clone(), watcher::Config::default());
    let key_cache = key_controller.store();
    let (keys_listed, keys_ready) = tokio::sync::watch::channel(false);
    let key_store = key_cache.clone();
    // The key controller itself waits on the same store, and the store wakes only one waiter (see
    // `Context::keys_ready`): so this asks again every 100 ms instead of waiting to be woken. A
    // sender dropped without sending tells the reconciles that the cache will never fill.
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_millis(100), key_store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    keys_listed.send_replace(true);
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
    });
    let context = Arc::new(Context {
        client: client.clone(),
        config,
        recorder,
        metrics,
        keys: key_cache.clone(),
        keys_ready,
        quiet: Default::default(),
        database_passes: tokio::sync::Semaphore::new(passes),
        key_passes: tokio::sync::Semaphore::new(passes),
    });

    // Keys change a database's active key; status changes of a database (the migration API's
    // `status.migration`) must wake it too, so no generation-only predicate is used.
    let database_controller = Controller::new(databases, watcher::Config::default());
    let database_cache = database_controller.store();
    let database_controller = database_controller
        .with_config(controller_config.clone())
        // The Secrets, keys and admin Secrets that exist when the operator starts wake no database
        // (each database is passed from its own listing); every later change does.
        // Secrets are watched by their metadata only: the operator never holds another Secret's
        // data, and of its own only what it reads by name when a pass needs it.
        .owns_stream(changes_after_start(watcher(secrets.clone(), owned())))
        // A fixed admin Secret (created, or its URI corrected) wakes the databases that name it at
        // once, rather than at their next backoff.
        .watches_stream(
            changes_after_start(watcher(secrets.clone(), watcher::Config::default())),
            move |secret: PartialObjectMeta<Secret>| {
                let (namespace, name) = (secret.namespace(), secret.name_any());
                database_cache
                    .state()
                    .into_iter()
                    .filter(|db| {
                        db.namespace() == namespace
                            && db
                                .spec
                                .server
                                .as_ref()
                                .is_some_and(|server| server.admin_secret_ref.name == name)
                    })
                    .map(|db| ObjectRef::from_obj(db.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(
            changes_after_start(watcher(keys.clone(), watcher::Config::default())),
            |key: MigrationKey| {
                key.namespace()
                    .map(|ns| ObjectRef::new(&key.spec.database_ref).within(&ns))
            },
        )
        .shutdown_on_signal()
        .run(reconcile_database, database_error_policy, context.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "database reconcile did not finish");
            }
        });

    // A key waiting for its database (Pending) must wake when the database appears, and every key
    // when its database changes phase (Operational expires them), so database changes map to the
    // keys that name it, looked up in the key controller's own cache. Only changes a key's phase
    // depends on pass (see [`DatabaseChanges`]): not every status write of the database (the
    // migration API's progress, once a second while it receives) re-reconciles its keys.
    let changes = DatabaseChanges::default();
    let key_controller = key_controller
        .with_config(controller_config)
        .owns(secrets, owned())
        .watches(
            databases_for_keys,
            watcher::Config::default(),
            move |db: MigrationDatabase| {
                if !changes.matters(&db) {
                    return Vec::new();
                }
                let (namespace, name) = (db.namespace(), db.name_any());
                key_cache
                    .state()
                    .into_iter()
                    .filter(|key| key.namespace() == namespace && key.spec.database_ref == name)
                    .map(|key| ObjectRef::from_obj(key.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile_key, key_error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "key reconcile did not finish");
            }
        });

    tracing::info!("sfm-operator reconciling");
    futures::join!(database_controller, key_controller);
}

/// What of a MigrationDatabase its keys' phases depend on, remembered per database, so that the
/// database→keys mapper passes only the changes that matter: a database seen for the first time
/// (created, or after a restart), a new UID under the same name (recreated), a new phase, and
/// deletion. A database being deleted (deletion timestamp) or without the operator's finalizer
/// always passes and is not remembered, so its final delete event passes too; that keeps the
/// memory to live, finalised databases.
#[derive(Default)]
pub struct DatabaseChanges {
    seen: std::sync::Mutex<std::collections::HashMap<DatabaseId, KeyRelevant>>,
}

/// Namespace and name of a MigrationDatabase.
type DatabaseId = (String, String);
/// What of a MigrationDatabase its keys depend on: its UID and phase.
type KeyRelevant = (String, Option<Phase>);

impl DatabaseChanges {
    /// Whether this observation of `db` must wake its keys (and remembers it).
    pub fn matters(&self, db: &MigrationDatabase) -> bool {
        let id = (db.namespace().unwrap_or_default(), db.name_any());
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let finalised = db.finalizers().iter().any(|f| f == FINALIZER);
        if db.metadata.deletion_timestamp.is_some() || !finalised {
            seen.remove(&id);
            return true;
        }
        let now = (
            db.uid().unwrap_or_default(),
            db.status.as_ref().and_then(|s| s.phase),
        );
        seen.insert(id, now.clone()) != Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MigrationDatabaseStatus, Phase};

    /// A busy server (the onboarding wave's "too many clients") is retried within half a minute, as
    /// is a database half-way through its switch; any other failure backs off as it grows. A
    /// validated database that meets a busy server is not `ProvisioningFailed`.
    #[test]
    fn busy_servers_and_half_done_switches_are_retried_soon_and_named_for_what_they_are() {
        use crate::postgres::provision::{ProvisionError, server_busy};
        use std::time::Duration;
        let long = Duration::from_secs(256);
        let table = [
            (true, Some(Phase::Staging), Duration::from_secs(30)),
            (false, Some(Phase::Activating), Duration::from_secs(30)),
            (false, Some(Phase::Staging), long),
            (false, None, long),
        ];
        for (transient, phase, expected) in table {
            assert_eq!(
                next_pass_after(long, transient, phase),
                expected,
                "{transient} {phase:?}"
            );
        }
        assert_eq!(
            next_pass_after(Duration::from_secs(4), true, None),
            Duration::from_secs(4)
        );
        for busy in ["53300", "53200", "57P03", "08006"] {
            assert!(server_busy(busy), "{busy}");
        }
        for not_busy in ["42501", "23505", "28P01", "57P01"] {
            assert!(!server_busy(not_busy), "{not_busy}");
        }
        let busy = Error::Provision(ProvisionError::ServerBusy("too many clients".into()));
        assert!(busy.is_transient());
        assert_eq!(busy.reason(), "ServerBusy");
        let refused = Error::Provision(ProvisionError::Database("permission denied".into()));
        assert!(!refused.is_transient());
        assert_eq!(
            database::failure_reason(&refused, Some(Phase::Validated)),
            "ReconcileFailed"
        );
        assert_eq!(
            database::failure_reason(&refused, Some(Phase::Provisioning)),
            "ProvisioningFailed"
        );
    }

    fn database(uid: &str, phase: Option<Phase>, finalised: bool) -> MigrationDatabase {
        let spec = serde_json::from_value(serde_json::json!({
            "organisation": {"name": "Test", "organisationNumber": "974600951", "helseIdClientId": "c"},
            "dataModelVersion": 4,
        }))
        .unwrap();
        let mut db = MigrationDatabase::new("db", spec);
        db.metadata.namespace = Some("ns".into());
        db.metadata.uid = Some(uid.into());
        if finalised {
            db.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        db.status = Some(MigrationDatabaseStatus {
            phase,
            ..Default::default()
        });
        db
    }

    #[test]
    fn keys_wake_for_a_new_database_a_new_uid_a_new_phase_and_deletion_only() {
        let changes = DatabaseChanges::default();
        let staging = database("u1", Some(Phase::Staging), true);
        assert!(changes.matters(&staging), "first seen");
        assert!(
            !changes.matters(&staging),
            "the same again (a resync or relist)"
        );
        let mut progress = staging.clone();
        progress.status.as_mut().unwrap().phase_reason = Some("Migrating".into());
        progress.metadata.resource_version = Some("42".into());
        assert!(
            !changes.matters(&progress),
            "a status write of the same phase"
        );
        assert!(changes.matters(&database("u1", Some(Phase::Validated), true)));
        assert!(changes.matters(&database("u1", Some(Phase::Activating), true)));
        assert!(changes.matters(&database("u1", Some(Phase::Operational), true)));
        assert!(!changes.matters(&database("u1", Some(Phase::Operational), true)));
        assert!(
            changes.matters(&database("u2", Some(Phase::Operational), true)),
            "recreated under the same name"
        );
        let mut deleting = database("u2", Some(Phase::Operational), true);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(changes.matters(&deleting));
        assert!(
            changes.matters(&deleting),
            "every event of a deletion passes"
        );
        let unfinalised = database("u3", None, false);
        assert!(changes.matters(&unfinalised));
        assert!(
            changes.matters(&unfinalised),
            "not yet finalised: always passes"
        );
        assert!(
            changes.seen.lock().unwrap().is_empty(),
            "nothing kept of either"
        );
    }
}
