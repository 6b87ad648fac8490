//! The migration API's view of the cluster: MigrationKeys and MigrationDatabases from watch-backed
//! stores (one LIST at start, then a WATCH; a lookup is a search in memory, so an unknown key costs
//! no call to the Kubernetes API server whatever a stranger sends), and one bounded connection pool
//! per staging database, opened from the migrator's Secret in the API's own namespace. It reads; it
//! never decides who may do what (that is [`super::auth`]) and never writes to the cluster.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::{ApiError, Limits, keys, switch};
use crate::contract::ProblemCode;
use crate::crd::{MigrationDatabase, MigrationKey};
use crate::names::{self, ChildNames};

/// How long a request waits for the stores' first LIST after the API started before it is told to
/// come back (503 `busy`).
const STORES_READY_WITHIN: Duration = Duration::from_secs(10);

/// Finds keys, databases and their connection pools.
pub struct Directory {
    kube: Client,
    namespace: String,
    /// Connections of one database's pool.
    max_connections: u32,
    keys: Store<MigrationKey>,
    databases: Store<MigrationDatabase>,
    /// True once both stores hold the cluster's objects. Requests wait on this, not on the stores'
    /// own `wait_until_ready`, which wakes only the last of several waiters: of the requests that
    /// arrived together right after a start, all but one waited out the timeout.
    listed: tokio::sync::watch::Receiver<bool>,
    pools: tokio::sync::Mutex<HashMap<Uuid, Pooled>>,
    /// Every PostgreSQL connection this replica may hold, whatever the database: a pool reserves
    /// `max_connections` of them for as long as it is open, a one-off look one. PostgreSQL's own
    /// `max_connections` is shared by every replica and the operator; this is each replica's share.
    budget: Arc<Semaphore>,
}

/// A database's pool and the connections it may open, reserved from the replica's budget and given
/// back only once the pool is closed (when this is dropped after [`PgPool::close`]).
struct Pooled {
    pool: PgPool,
    _reserved: OwnedSemaphorePermit,
    last_used: Instant,
}

impl Pooled {
    /// No connection of the pool is out and no request asked for it lately: closing it takes
    /// nothing from anyone.
    fn idle_since(&self, before: Instant) -> bool {
        self.last_used < before && self.pool.size() as usize == self.pool.num_idle()
    }
}

/// A connection of no pool, with its share of the budget (see [`Directory::connect_once`]).
pub struct OnceConnection {
    pub connection: PgConnection,
    _reserved: OwnedSemaphorePermit,
}

/// How long a pool must have been asked for nothing before another database may take its share of
/// the budget.
const IDLE_BEFORE_CLOSING: Duration = Duration::from_secs(2);
/// How long a request for a database without a pool waits for a share of the budget before it is
/// told to come back (503 `busy`).
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Keeps `writer` in step with every object of `api` (LIST, then WATCH, with backoff on errors),
/// for as long as the process runs.
fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    tokio::spawn(async move {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|event| {
                if let Err(error) = event {
                    tracing::warn!(%kind, %error, "watching the cluster failed; retrying");
                }
                std::future::ready(())
            })
            .await;
    });
}

impl Directory {
    /// Starts watching MigrationKeys and MigrationDatabases (needs a tokio runtime).
    pub fn new(kube: Client, namespace: &str, limits: &Limits) -> Self {
        let (keys, key_writer) = reflector::store();
        let (databases, database_writer) = reflector::store();
        reflect(Api::<MigrationKey>::all(kube.clone()), key_writer);
        reflect(Api::<MigrationDatabase>::all(kube.clone()), database_writer);
        let (announce, listed) = tokio::sync::watch::channel(false);
        let (key_store, database_store) = (keys.clone(), databases.clone());
        tokio::spawn(async move {
            if key_store.wait_until_ready().await.is_ok()
                && database_store.wait_until_ready().await.is_ok()
            {
                announce.send_replace(true);
            }
        });
        Directory {
            kube,
            namespace: namespace.to_owned(),
            max_connections: limits.max_connections_per_database,
            keys,
            databases,
            listed,
            pools: tokio::sync::Mutex::new(HashMap::new()),
            budget: Arc::new(Semaphore::new(limits.max_connections as usize)),
        }
    }

    /// Waits until both stores hold the cluster's objects (right after start only).
    async fn ready(&self) -> Result<(), ApiError> {
        let mut listed = self.listed.clone();
        match tokio::time::timeout(STORES_READY_WITHIN, listed.wait_for(|listed| *listed)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::new(ProblemCode::Busy)
                .detail("the migration API is still reading the cluster's keys and databases")
                .retry_after(2)),
        }
    }

    /// The MigrationKey with this key id (`status.keyId`).
    pub async fn key(&self, key_id: &str) -> Result<Option<Arc<MigrationKey>>, ApiError> {
        self.ready().await?;
        Ok(self
            .keys
            .find(|key| keys::status_key_id(key) == Some(key_id)))
    }

    /// Every MigrationDatabase of the cluster.
    pub async fn databases(&self) -> Result<Vec<Arc<MigrationDatabase>>, ApiError> {
        self.ready().await?;
        Ok(self.databases.state())
    }

    pub async fn database_by_uid(
        &self,
        uid: Uuid,
    ) -> Result<Option<Arc<MigrationDatabase>>, ApiError> {
        self.ready().await?;
        Ok(self.databases.find(|db| database_uid(db) == Some(uid)))
    }

    pub async fn database_by_name(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<MigrationDatabase>>, ApiError> {
        self.ready().await?;
        Ok(self
            .databases
            .find(|db| db.namespace().as_deref() == Some(namespace) && db.name_any() == name))
    }

    /// One MigrationDatabase read from the API server now, not from the cache: what `status`,
    /// `key-check` and `activate` decide on, so they see `Activating` as soon as the operator wrote it.
    pub async fn fresh_database(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<MigrationDatabase>>, ApiError> {
        let api: Api<MigrationDatabase> = Api::namespaced(self.kube.clone(), namespace);
        Ok(api
            .get_opt(name)
            .await
            .map_err(|e| ApiError::internal("read the migration database", e))?
            .map(Arc::new))
    }

    /// Whether the operator gave this API the database's migrator: its status names the migrator's
    /// Secret in this API's namespace (an operator configured for another API namespace, as in a
    /// cluster with more than one API, puts it elsewhere). Told from the status alone, so looking
    /// costs no call to the Kubernetes API server.
    pub fn serves(&self, db: &MigrationDatabase) -> bool {
        db.status
            .as_ref()
            .and_then(|s| s.database.as_ref())
            .and_then(|d| d.migrator_secret.as_deref())
            .and_then(|secret| secret.split_once('/'))
            .is_some_and(|(namespace, _)| namespace == self.namespace)
    }

    /// The bounded pool of the database's migrator, from its Secret in the API's namespace. Refused
    /// (`migration-operational`, and any pool dropped) once the database is `Activating` or
    /// `Operational`: its migrator is being closed or is closed. A new pool takes its connections
    /// from the replica's budget: when that is spent, pools nobody is using are closed to make room,
    /// and when none is, the request is told to come back (503 `busy`, `Retry-After`).
    pub async fn pool(&self, db: &MigrationDatabase) -> Result<PgPool, ApiError> {
        let uid = database_uid(db)
            .ok_or_else(|| ApiError::internal("read the database uid", "no uid"))?;
        if let Err(refusal) = switch::ensure_open(db) {
            self.forget_pool(uid).await;
            return Err(refusal);
        }
        let reserved = {
            let mut pools = self.pools.lock().await;
            if let Some(pooled) = pools.get_mut(&uid) {
                pooled.last_used = Instant::now();
                return Ok(pooled.pool.clone());
            }
            self.budget
                .clone()
                .try_acquire_many_owned(self.max_connections)
                .ok()
        };
        let reserved = match reserved {
            Some(reserved) => reserved,
            None => self.reserve_after_closing_unused().await?,
        };
        // The Secret is read while no lock is held: a slow read holds up this database's first
        // request, not every other database's.
        let options = self.migrator_options(db).await?;
        let mut pools = self.pools.lock().await;
        if let Some(pooled) = pools.get_mut(&uid) {
            // Made by another request meanwhile; the share reserved here goes back.
            pooled.last_used = Instant::now();
            return Ok(pooled.pool.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        pools.insert(
            uid,
            Pooled {
                pool: pool.clone(),
                _reserved: reserved,
                last_used: Instant::now(),
            },
        );
        Ok(pool)
    }

    /// A new pool's share of the budget when none is free: the pools nobody has used for
    /// [`IDLE_BEFORE_CLOSING`] are closed, and the share is waited for (at most [`BUDGET_WAIT`],
    /// then `busy`).
    async fn reserve_after_closing_unused(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let unused = {
            let mut pools = self.pools.lock().await;
            // A monotonic clock younger than IDLE_BEFORE_CLOSING (a machine just booted): no pool
            // has been idle that long.
            let unused: Vec<Uuid> = match Instant::now().checked_sub(IDLE_BEFORE_CLOSING) {
                Some(before) => pools
                    .iter()
                    .filter(|(_, pooled)| pooled.idle_since(before))
                    .map(|(uid, _)| *uid)
                    .collect(),
                None => Vec::new(),
            };
            unused
                .iter()
                .filter_map(|uid| pools.remove(uid))
                .collect::<Vec<_>>()
        };
        for pooled in unused {
            pooled.pool.close().await;
        }
        tokio::time::timeout(
            BUDGET_WAIT,
            self.budget.clone().acquire_many_owned(self.max_connections),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(ProblemCode::Busy)
                .detail("every database connection of this API replica is in use")
                .retry_after(2)
        })
    }

    /// One connection of the database's migrator, of no pool, with one connection's share of the
    /// budget (none free: `busy`): for a look that must not keep a connection open afterwards (the
    /// recovery loop's scan of a database this replica does not serve). Closed by the caller.
    pub async fn connect_once(&self, db: &MigrationDatabase) -> Result<OnceConnection, ApiError> {
        switch::ensure_open(db)?;
        let reserved = self.budget.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(ProblemCode::Busy)
                .detail("every database connection of this API replica is in use")
        })?;
        let options = self.migrator_options(db).await?;
        let connection = PgConnection::connect_with(&options)
            .await
            .map_err(|e| super::error::database("connect to the staging database", e))?;
        Ok(OnceConnection {
            connection,
            _reserved: reserved,
        })
    }

    /// How to connect as the database's migrator.
    async fn migrator_options(&self, db: &MigrationDatabase) -> Result<PgConnectOptions, ApiError> {
        let uri = self.migrator_uri(db).await?.ok_or_else(|| {
            ApiError::new(ProblemCode::MigrationOperational).detail(
                "the database has no migrator connection: it is not in staging (operational, or not provisioned yet)",
            )
        })?;
        Ok(PgConnectOptions::from_str(&uri)
            .map_err(|_| {
                ApiError::internal(
                    "read the migrator Secret",
                    "the uri is not a PostgreSQL URI",
                )
            })?
            .application_name(super::FIELD_MANAGER)
            // Statement text stays out of the logs (slow-statement warnings would print it).
            .disable_statement_logging())
    }

    /// The migrator's connection URI from its Secret in the API's namespace: under the UID-based
    /// name, or under the name releases before it used until the operator has moved it. Either is
    /// used only when its UID label is this database's: a Secret made for another database (or
    /// by anyone else) never opens a connection for this one.
    async fn migrator_uri(&self, db: &MigrationDatabase) -> Result<Option<String>, ApiError> {
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &self.namespace);
        let uid = db.uid().unwrap_or_default();
        let child = ChildNames::of(db);
        for name in [&child.migrator_secret, &child.legacy_migrator_secret] {
            let secret = secrets
                .get_opt(name)
                .await
                .map_err(|e| ApiError::internal("read the migrator Secret", e))?;
            match secret {
                Some(secret) if names::owned_by(&secret.metadata, &uid) => {
                    return Ok(names::secret_field(&secret, names::SECRET_FIELD_URI));
                }
                Some(_) => tracing::warn!(
                    secret = %name,
                    "a Secret under a migrator's name was not made for its database; not used"
                ),
                None => {}
            }
        }
        Ok(None)
    }

    /// Closes the pools of every database not in `keep` (it left staging, or is gone).
    pub async fn forget_pools_except(&self, keep: &std::collections::HashSet<Uuid>) {
        let dropped: Vec<Pooled> = {
            let mut pools = self.pools.lock().await;
            let gone: Vec<Uuid> = pools
                .keys()
                .filter(|uid| !keep.contains(uid))
                .copied()
                .collect();
            gone.iter().filter_map(|uid| pools.remove(uid)).collect()
        };
        for pooled in dropped {
            pooled.pool.close().await;
        }
    }

    /// Forgets a database's pool (its migrator was closed or its password changed).
    pub async fn forget_pool(&self, uid: Uuid) {
        let removed = self.pools.lock().await.remove(&uid);
        if let Some(pooled) = removed {
            pooled.pool.close().await;
        }
    }
}

pub fn database_uid(db: &MigrationDatabase) -> Option<Uuid> {
    db.uid().and_then(|uid| Uuid::parse_str(&uid).ok())
}
