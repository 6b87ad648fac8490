//! The migration API's view of the cluster: MigrationKeys and MigrationDatabases from short caches,
//! and one bounded connection pool per staging database, opened from the migrator's Secret in the
//! API's own namespace. It reads; it never decides who may do what (that is [`super::auth`]) and
//! never writes to the cluster.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions as _, PgPool};
use uuid::Uuid;

use super::{ApiError, Limits, keys, switch};
use crate::contract::ProblemCode;
use crate::crd::{MigrationDatabase, MigrationKey};
use crate::names::{self, ChildNames};

/// How long a looked-up key or database list is reused. Short, so a revoked or superseded key stops
/// working within seconds on every replica.
const CACHE_FOR: Duration = Duration::from_secs(2);

/// How old the list of databases must be before a lookup that found nothing takes it again: bounds
/// the listing that unknown upload ids or keys of deleted databases can cause.
const MISS_RELIST_AFTER: Duration = Duration::from_millis(200);

/// A looked-up key (or its absence) and when it was looked up.
type CachedKey = (Instant, Option<Arc<MigrationKey>>);

/// Finds keys, databases and their connection pools, with short caches.
pub struct Directory {
    kube: Client,
    namespace: String,
    max_connections: u32,
    keys: Mutex<HashMap<String, CachedKey>>,
    databases: tokio::sync::Mutex<Option<(Instant, Vec<Arc<MigrationDatabase>>)>>,
    pools: tokio::sync::Mutex<HashMap<Uuid, PgPool>>,
}

impl Directory {
    pub fn new(kube: Client, namespace: &str, limits: &Limits) -> Self {
        Directory {
            kube,
            namespace: namespace.to_owned(),
            max_connections: limits.max_connections_per_database,
            keys: Mutex::new(HashMap::new()),
            databases: tokio::sync::Mutex::new(None),
            pools: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The MigrationKey with this key id, by the label `sfm.nhn.no/key-id` when the operator set it,
    /// else by `status.keyId`.
    pub async fn key(&self, key_id: &str) -> Result<Option<Arc<MigrationKey>>, ApiError> {
        if let Some((at, key)) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key_id)
            // An absence is trusted for less long: the key may have been issued a moment ago.
            && at.elapsed() < if key.is_some() { CACHE_FOR } else { MISS_RELIST_AFTER }
        {
            return Ok(key.clone());
        }
        let api: Api<MigrationKey> = Api::all(self.kube.clone());
        let by_label = api
            .list(&ListParams::default().labels(&format!("{}={key_id}", names::LABEL_KEY_ID)))
            .await
            .map_err(|e| ApiError::internal("look up the migration key", e))?;
        let mut found = by_label
            .items
            .into_iter()
            .find(|k| keys::status_key_id(k) == Some(key_id));
        if found.is_none() {
            let all = api
                .list(&ListParams::default())
                .await
                .map_err(|e| ApiError::internal("look up the migration key", e))?;
            found = all
                .items
                .into_iter()
                .find(|k| keys::status_key_id(k) == Some(key_id));
        }
        let found = found.map(Arc::new);
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id.to_owned(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Every MigrationDatabase of the cluster (cached briefly).
    pub async fn databases(&self) -> Result<Vec<Arc<MigrationDatabase>>, ApiError> {
        self.databases_younger_than(CACHE_FOR).await
    }

    /// The list of databases, taken again unless the cached one is younger than `age`.
    async fn databases_younger_than(
        &self,
        age: Duration,
    ) -> Result<Vec<Arc<MigrationDatabase>>, ApiError> {
        let mut cache = self.databases.lock().await;
        if let Some((at, list)) = cache.as_ref()
            && at.elapsed() < age
        {
            return Ok(list.clone());
        }
        let api: Api<MigrationDatabase> = Api::all(self.kube.clone());
        let list: Vec<Arc<MigrationDatabase>> = api
            .list(&ListParams::default())
            .await
            .map_err(|e| ApiError::internal("list the migration databases", e))?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        *cache = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// The first database the cached list has that `wanted` accepts. A miss is not trusted: the
    /// database may have been created after the list was taken (a key issued a second ago names
    /// it), so the list is taken again, at most once per [`MISS_RELIST_AFTER`].
    async fn find_database(
        &self,
        wanted: impl Fn(&MigrationDatabase) -> bool,
    ) -> Result<Option<Arc<MigrationDatabase>>, ApiError> {
        if let Some(found) = self.databases().await?.into_iter().find(|db| wanted(db)) {
            return Ok(Some(found));
        }
        Ok(self
            .databases_younger_than(MISS_RELIST_AFTER)
            .await?
            .into_iter()
            .find(|db| wanted(db)))
    }

    pub async fn database_by_uid(
        &self,
        uid: Uuid,
    ) -> Result<Option<Arc<MigrationDatabase>>, ApiError> {
        self.find_database(|db| database_uid(db) == Some(uid)).await
    }

    pub async fn database_by_name(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<MigrationDatabase>>, ApiError> {
        self.find_database(|db| {
            db.namespace().as_deref() == Some(namespace) && db.name_any() == name
        })
        .await
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

    /// The bounded pool of the database's migrator, from its Secret in the API's namespace. Refused
    /// (`migration-operational`, and any pool dropped) once the database is `Activating` or
    /// `Operational`: its migrator is being closed or is closed.
    pub async fn pool(&self, db: &MigrationDatabase) -> Result<PgPool, ApiError> {
        let uid = database_uid(db)
            .ok_or_else(|| ApiError::internal("read the database uid", "no uid"))?;
        if let Err(refusal) = switch::ensure_open(db) {
            self.forget_pool(uid).await;
            return Err(refusal);
        }
        let mut pools = self.pools.lock().await;
        if let Some(pool) = pools.get(&uid) {
            return Ok(pool.clone());
        }
        let uri = self.migrator_uri(db).await?.ok_or_else(|| {
            ApiError::new(ProblemCode::MigrationOperational).detail(
                "the database has no migrator connection: it is not in staging (operational, or not provisioned yet)",
            )
        })?;
        let options = sqlx::postgres::PgConnectOptions::from_str(&uri)
            .map_err(|_| {
                ApiError::internal(
                    "read the migrator Secret",
                    "the uri is not a PostgreSQL URI",
                )
            })?
            .application_name(super::FIELD_MANAGER)
            // Statement text stays out of the logs (slow-statement warnings would print it).
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        pools.insert(uid, pool.clone());
        Ok(pool)
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

    /// Forgets a database's pool (its migrator was closed or its password changed).
    pub async fn forget_pool(&self, uid: Uuid) {
        if let Some(pool) = self.pools.lock().await.remove(&uid) {
            pool.close().await;
        }
    }
}

pub fn database_uid(db: &MigrationDatabase) -> Option<Uuid> {
    db.uid().and_then(|uid| Uuid::parse_str(&uid).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Directory whose API server answers every list with `lists[n]` for the n-th request (the
    /// last one repeated), counting the requests.
    fn directory_listing(
        lists: Vec<Vec<serde_json::Value>>,
    ) -> (Directory, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let service = tower::service_fn(move |_: axum::http::Request<kube::client::Body>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let items = lists[n.min(lists.len() - 1)].clone();
            async move {
                let list = serde_json::json!({
                    "apiVersion": "sfm.nhn.no/v1alpha1",
                    "kind": "MigrationDatabaseList",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                });
                let body = kube::client::Body::from(serde_json::to_vec(&list).unwrap());
                Ok::<_, std::convert::Infallible>(axum::http::Response::new(body))
            }
        });
        let client = Client::new(service, "default");
        let directory = Directory::new(client, "sfm", &crate::api::Limits::default());
        (directory, requests)
    }

    fn example_database(uid: &str) -> serde_json::Value {
        let mut db: serde_json::Value =
            serde_yaml::from_str(include_str!("../../examples/10-migrationdatabase.yaml")).unwrap();
        db["metadata"]["uid"] = uid.into();
        db
    }

    /// A database created after the cached list was taken (a key issued a second ago names it) is
    /// found, not answered `key-unknown` until the cache expires: a miss takes the list again.
    #[tokio::test]
    async fn a_database_created_after_the_list_was_cached_is_found() {
        use std::sync::atomic::Ordering;
        let uid = "5f0c6c4e-2a7e-4a57-9d7e-0d3f2b8e8c11";
        let (directory, requests) = directory_listing(vec![vec![], vec![example_database(uid)]]);
        assert!(directory.databases().await.unwrap().is_empty());
        // Within the cache's life (2 s), past the bound on listing again after a miss.
        tokio::time::sleep(MISS_RELIST_AFTER).await;
        let found = directory
            .database_by_name("sfm-organisations", "legekontoret-fjordby")
            .await
            .unwrap()
            .expect("found after listing again");
        assert_eq!(found.name_any(), "legekontoret-fjordby");
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        let by_uid = directory
            .database_by_uid(Uuid::parse_str(uid).unwrap())
            .await
            .unwrap();
        assert!(by_uid.is_some());
        // A database that does not exist stays unknown.
        assert!(
            directory
                .database_by_name("sfm-organisations", "another")
                .await
                .unwrap()
                .is_none()
        );
    }
}
