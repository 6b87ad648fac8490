//! Who may write into which staging database.
//!
//! The migration key is found by its key id in the MigrationKeys' status (cluster-wide list and get
//! of MigrationKeys; the API never reads a Secret outside its own namespace), its SHA-256 compared
//! with `status.digest` in constant time, its phase and expiry checked here, not only by the
//! operator. Its `databaseRef` names the MigrationDatabase, and the key works only for the database
//! of that name whose UID it was issued for (`status.databaseUid`). The migrator's connection Secret
//! in the API's own namespace (named after the database's UID, [`crate::names`]) gives one bounded
//! pool per database, and is used only when its UID label is that database's.
//! A HelseID token is checked when the database's policy asks for one.
//!
//! From the moment the operator writes phase `Activating` (before it closes the migrator) until the
//! end, a database has no usable migrator: `status` and `key-check` are then answered from the
//! MigrationDatabase's status ([`Reader::FromStatus`], decided by [`read_answer`]) and every write
//! is refused with `migration-operational`, whatever the keys' phases are at that instant.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions as _, PgPool};
use uuid::Uuid;

use super::{ApiError, AppState, Limits};
use crate::contract::{self, MigrationKeyToken, ProblemCode};
use crate::crd::{KeyPhase, MigrationDatabase, MigrationKey, Phase};
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

/// An authenticated request for one database.
#[derive(Clone)]
pub struct Session {
    pub database: Arc<MigrationDatabase>,
    pub uid: Uuid,
    /// The key id (never the key).
    pub key_id: String,
    /// The HelseID client, when the database required a token.
    pub helseid_client: Option<String>,
    pub pool: PgPool,
}

impl Session {
    /// `<namespace>/<name>` of the database.
    pub fn database_name(&self) -> String {
        format!(
            "{}/{}",
            self.database.namespace().unwrap_or_default(),
            self.database.name_any()
        )
    }
}

/// What the request looked like, for the HelseID checks (DPoP binds a proof to method and URL).
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub url: String,
    pub headers: &'a HeaderMap,
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
            .find(|k| status_key_id(k) == Some(key_id));
        if found.is_none() {
            let all = api
                .list(&ListParams::default())
                .await
                .map_err(|e| ApiError::internal("look up the migration key", e))?;
            found = all
                .items
                .into_iter()
                .find(|k| status_key_id(k) == Some(key_id));
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
        if is_switched(db) {
            self.forget_pool(uid).await;
            return Err(switched_refusal(db));
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

fn status_key_id(key: &MigrationKey) -> Option<&str> {
    key.status.as_ref().and_then(|s| s.key_id.as_deref())
}

/// The key from `Sfm-Migration-Key`, if sent.
pub fn header_key(headers: &HeaderMap) -> Result<Option<MigrationKeyToken>, ApiError> {
    match headers.get(contract::HEADER_MIGRATION_KEY) {
        None => Ok(None),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::new(ProblemCode::KeyMalformed).detail("the key header is not ASCII")
            })?;
            Ok(Some(MigrationKeyToken::from_str(text.trim())?))
        }
    }
}

/// Whether a key (already matched, or named by an upload) still works: phase Active, not expired.
/// These answers come only after the secret matched, so they tell nothing to a stranger.
pub fn check_key_usable(
    key: &MigrationKey,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let status = key.status.as_ref();
    match status.and_then(|s| s.phase) {
        Some(KeyPhase::Active) => {}
        Some(KeyPhase::Superseded) => return Err(ApiError::new(ProblemCode::KeySuperseded)),
        Some(KeyPhase::Expired) => return Err(ApiError::new(ProblemCode::KeyExpired)),
        Some(KeyPhase::Revoked) => return Err(ApiError::new(ProblemCode::KeyRevoked)),
        Some(KeyPhase::Pending) | None => {
            return Err(ApiError::new(ProblemCode::KeyUnknown).detail("the key is not issued yet"));
        }
    }
    if key.spec.revoked {
        return Err(ApiError::new(ProblemCode::KeyRevoked));
    }
    let expires = status
        .and_then(|s| s.expires_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    match expires {
        Some(at) if at > now => Ok(()),
        _ => Err(ApiError::new(ProblemCode::KeyExpired)),
    }
}

/// The key's expiry, for key-check.
pub fn key_expires_at(key: &MigrationKey) -> Option<chrono::DateTime<chrono::Utc>> {
    key.status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Finds a presented key by its id and compares its digest (constant time); nothing else.
async fn matched_key(
    state: &AppState,
    token: &MigrationKeyToken,
) -> Result<Arc<MigrationKey>, ApiError> {
    let key = state
        .directory
        .key(token.key_id())
        .await?
        .ok_or_else(|| ApiError::new(ProblemCode::KeyUnknown))?;
    let digest = key
        .status
        .as_ref()
        .and_then(|s| s.digest.as_deref())
        .unwrap_or("");
    if !token.matches_digest(digest) {
        state.metrics.auth_failures.inc();
        return Err(ApiError::new(ProblemCode::KeyWrong));
    }
    Ok(key)
}

/// Whether the database is being switched to operational mode or is operational: from the moment
/// the operator writes `Activating` (before it closes the migrator) on, its migrator is not to be
/// used and its keys only read.
pub fn is_switched(db: &MigrationDatabase) -> bool {
    matches!(
        db.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Activating | Phase::Operational)
    )
}

/// The refusal of a write (or of the migrator's connection) for a database past staging.
pub fn switched_refusal(db: &MigrationDatabase) -> ApiError {
    let detail = match db.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Activating) => {
            "the database is being switched to operational mode; the migration is over"
        }
        Some(Phase::Deleting) => "the database is being deleted; the migration is over",
        _ => "the database is operational; the migration is over",
    };
    ApiError::new(ProblemCode::MigrationOperational).detail(detail)
}

/// Refuses (`migration-operational`) when the database, read fresh from the API server rather
/// than from the cache, is being switched or is operational.
pub async fn refuse_if_switched(
    state: &AppState,
    database: &MigrationDatabase,
) -> Result<(), ApiError> {
    match switched_meanwhile(state, database).await {
        Some(now) => Err(switched_refusal(&now)),
        None => Ok(()),
    }
}

/// A write's result, with a failure the switch explains: the request read the database's phase
/// from the cache, and if the operator has since written `Activating` (and closed the migrator,
/// which is what broke the write, or the write found the validation record that precedes every
/// switch), the answer is the end of the migration (`migration-operational`), not a server error or
/// `migration-validated`. Other failures pass through unchanged.
pub async fn or_switched<T>(
    state: &AppState,
    database: &MigrationDatabase,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match result {
        Err(error)
            if matches!(
                error.code(),
                ProblemCode::Internal | ProblemCode::Busy | ProblemCode::MigrationValidated
            ) =>
        {
            let fresh = read_again(state, database).await;
            match fresh {
                Some(now) if is_switched(&now) => Err(switched_refusal(&now)),
                _ => {
                    tracing::info!(
                        code = %error.code(),
                        cached_phase = ?database.status.as_ref().and_then(|s| s.phase),
                        fresh_phase = ?fresh.as_ref().and_then(|db| db.status.as_ref()).and_then(|s| s.phase),
                        "a write failed and the switch does not explain it"
                    );
                    Err(error)
                }
            }
        }
        other => other,
    }
}

/// How `status` and `key-check` are answered, for a key whose secret matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAnswer {
    /// From the staging database through the migrator's pool: the database is in staging.
    Live,
    /// From the MigrationDatabase's status, without a database connection: the database is
    /// `Activating` or `Operational`, so its migrator is being closed or closed.
    FromStatus,
}

/// The read decision for a matched key and the phase of its database (`None` when the database
/// has no phase yet or does not exist). In staging a key must be usable (Active, within its time to
/// live). While `Activating` and once `Operational` the answer comes from the status, and the key
/// may also be expired (the switch expires every key of the database, and its time to live may run
/// out meanwhile); it may never be revoked, superseded or not yet issued. The HelseID token, when the
/// database requires one, is checked by the caller either way.
pub fn read_answer(
    key: &MigrationKey,
    database_phase: Option<Phase>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ReadAnswer, ApiError> {
    let switched = matches!(database_phase, Some(Phase::Activating | Phase::Operational));
    match check_key_usable(key, now) {
        Ok(()) if switched => Ok(ReadAnswer::FromStatus),
        Ok(()) => Ok(ReadAnswer::Live),
        Err(error) if switched && error.code() == ProblemCode::KeyExpired => {
            if key.spec.revoked {
                Err(ApiError::new(ProblemCode::KeyRevoked))
            } else {
                Ok(ReadAnswer::FromStatus)
            }
        }
        Err(error) => Err(error),
    }
}

/// Who reads `status` or `key-check`, and from where.
pub enum Reader {
    /// A database in staging: a full session with the migrator's pool.
    Live {
        session: Session,
        key: Arc<MigrationKey>,
    },
    /// A database being switched or operational: the answer comes from its status.
    FromStatus {
        key: Arc<MigrationKey>,
        database: Arc<MigrationDatabase>,
    },
}

/// Authenticates a reader of `status` or `key-check`: key (digest), the key's database read fresh
/// (so `Activating` is seen as soon as the operator wrote it), [`read_answer`], the HelseID token
/// when required, then the migrator's pool for a database in staging. Should the pool be refused
/// because the database was switched after it was read, the answer comes from its status.
pub async fn reader_for_token(
    state: &AppState,
    token: &MigrationKeyToken,
    request: &RequestFacts<'_>,
) -> Result<Reader, ApiError> {
    let key = matched_key(state, token).await?;
    let namespace = key.namespace().unwrap_or_default();
    let database = state
        .directory
        .fresh_database(&namespace, &key.spec.database_ref)
        .await?;
    let database = issued_for(&key, database)?;
    let phase = database.status.as_ref().and_then(|s| s.phase);
    let answer = read_answer(&key, phase, chrono::Utc::now())?;
    let helseid_client = helseid_client(state, &database, request).await?;
    if answer == ReadAnswer::FromStatus {
        return Ok(Reader::FromStatus { key, database });
    }
    let uid = database_uid(&database)
        .ok_or_else(|| ApiError::internal("read the database uid", "no uid"))?;
    match state.directory.pool(&database).await {
        Ok(pool) => Ok(Reader::Live {
            session: Session {
                database,
                uid,
                key_id: key_id_of(&key),
                helseid_client,
                pool,
            },
            key,
        }),
        Err(error) => match switched_meanwhile(state, &database).await {
            Some(database) => Ok(Reader::FromStatus { key, database }),
            None => Err(error),
        },
    }
}

/// After a read through the migrator failed: the database read again from the API server, if it is
/// now being switched or operational. The operator writes `Activating` before it closes the
/// migrator, so a failure caused by the switch is always followed by a read that shows it.
pub async fn switched_meanwhile(
    state: &AppState,
    database: &MigrationDatabase,
) -> Option<Arc<MigrationDatabase>> {
    read_again(state, database)
        .await
        .filter(|fresh| is_switched(fresh))
}

/// The database read from the API server now, if it is still the same object (same UID).
async fn read_again(
    state: &AppState,
    database: &MigrationDatabase,
) -> Option<Arc<MigrationDatabase>> {
    state
        .directory
        .fresh_database(
            &database.namespace().unwrap_or_default(),
            &database.name_any(),
        )
        .await
        .ok()
        .flatten()
        .filter(|fresh| database_uid(fresh) == database_uid(database))
}

fn key_id_of(key: &MigrationKey) -> String {
    key.status
        .as_ref()
        .and_then(|s| s.key_id.clone())
        .unwrap_or_default()
}

/// The database a key fills: the one of its `databaseRef` whose UID the key was issued for.
pub async fn key_database(
    state: &AppState,
    key: &MigrationKey,
) -> Result<Arc<MigrationDatabase>, ApiError> {
    let namespace = key.namespace().unwrap_or_default();
    let database = state
        .directory
        .database_by_name(&namespace, &key.spec.database_ref)
        .await?;
    issued_for(key, database)
}

/// The key's database if the key was issued for it (its UID), else `key-unknown`: a database of
/// the key's `databaseRef` created after the key's own was deleted is another database.
fn issued_for(
    key: &MigrationKey,
    database: Option<Arc<MigrationDatabase>>,
) -> Result<Arc<MigrationDatabase>, ApiError> {
    let database = database.ok_or_else(|| {
        ApiError::new(ProblemCode::KeyUnknown).detail("the key's database does not exist")
    })?;
    let bound = key.status.as_ref().and_then(|s| s.database_uid.as_deref());
    match (bound, database.uid()) {
        (Some(bound), Some(uid)) if bound == uid => Ok(database),
        (None, _) => {
            Err(ApiError::new(ProblemCode::KeyUnknown).detail("the key is not issued yet"))
        }
        _ => Err(ApiError::new(ProblemCode::KeyUnknown)
            .detail("the key was issued for a database that no longer exists")),
    }
}

/// [`check_key_usable`] for a write. The switch expires every key of the database: a write with
/// such a key is refused for what it is, the end of the migration (the contract's
/// `migration-operational`), not for the key. That is decided on the database read fresh: the key
/// may be seen expired before the cached database shows `Activating`.
async fn usable_for_writing(state: &AppState, key: &MigrationKey) -> Result<(), ApiError> {
    let Err(error) = check_key_usable(key, chrono::Utc::now()) else {
        return Ok(());
    };
    if error.code() == ProblemCode::KeyExpired && !key.spec.revoked {
        let namespace = key.namespace().unwrap_or_default();
        if let Ok(database) = state
            .directory
            .fresh_database(&namespace, &key.spec.database_ref)
            .await
            && let Ok(database) = issued_for(key, database)
            && is_switched(&database)
        {
            return Err(switched_refusal(&database));
        }
    }
    Err(error)
}

/// A full session from a presented key: key, database, HelseID token when required, pool.
pub async fn session_for_token(
    state: &AppState,
    token: &MigrationKeyToken,
    request: &RequestFacts<'_>,
) -> Result<Session, ApiError> {
    let key = matched_key(state, token).await?;
    usable_for_writing(state, &key).await?;
    let database = key_database(state, &key).await?;
    finish_session(state, database, key_id_of(&key), request).await
}

/// A session for an existing upload of the database with this UID. The upload's URL is no
/// credential: the key sent now must be usable and that database's (`key-wrong-database`
/// otherwise), and the HelseID token, when the database requires one, is checked as for any write.
pub async fn session_for_upload(
    state: &AppState,
    token: &MigrationKeyToken,
    upload_database: Uuid,
    request: &RequestFacts<'_>,
) -> Result<Session, ApiError> {
    let key = matched_key(state, token).await?;
    usable_for_writing(state, &key).await?;
    let database = key_database(state, &key).await?;
    if database_uid(&database) != Some(upload_database) {
        // Told apart only for a caller whose key matched: an upload of another database that
        // exists, or none at all.
        return Err(
            match state.directory.database_by_uid(upload_database).await? {
                Some(_) => ApiError::new(ProblemCode::KeyWrongDatabase),
                None => ApiError::new(ProblemCode::UploadNotFound),
            },
        );
    }
    finish_session(state, database, key_id_of(&key), request).await
}

/// The key that created an upload must still be usable for the upload to go on: a superseded,
/// revoked or expired key's uploads stop with it.
pub async fn check_upload_creator(
    state: &AppState,
    session: &Session,
    creator_key_id: &str,
) -> Result<(), ApiError> {
    if creator_key_id == session.key_id {
        return Ok(());
    }
    let key = state.directory.key(creator_key_id).await?.ok_or_else(|| {
        ApiError::new(ProblemCode::KeyUnknown)
            .detail("the key that created this upload no longer exists")
    })?;
    usable_for_writing(state, &key).await?;
    let key_db = key_database(state, &key).await?;
    if database_uid(&key_db) != Some(session.uid) {
        return Err(ApiError::new(ProblemCode::KeyWrongDatabase));
    }
    Ok(())
}

async fn finish_session(
    state: &AppState,
    database: Arc<MigrationDatabase>,
    key_id: String,
    request: &RequestFacts<'_>,
) -> Result<Session, ApiError> {
    let uid = database_uid(&database)
        .ok_or_else(|| ApiError::internal("read the database uid", "no uid"))?;
    let helseid_client = helseid_client(state, &database, request).await?;
    let pool = state.directory.pool(&database).await?;
    Ok(Session {
        database,
        uid,
        key_id,
        helseid_client,
        pool,
    })
}

/// The HelseID client of the request's token, when the database requires one (checked here; for
/// DPoP this consumes the proof, so it runs once per request).
async fn helseid_client(
    state: &AppState,
    database: &MigrationDatabase,
    request: &RequestFacts<'_>,
) -> Result<Option<String>, ApiError> {
    match &database.spec.validation.helse_id {
        None => Ok(None),
        Some(policy) => Ok(Some(
            state
                .helseid
                .check_request(
                    policy,
                    &database.spec.organisation.organisation_number,
                    request,
                )
                .await?,
        )),
    }
}

/// Refuses writes once the database is activating or operational (or being deleted):
/// `migration-operational`, with a detail that names the phase.
pub fn ensure_writable(db: &MigrationDatabase) -> Result<(), ApiError> {
    match db.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Activating | Phase::Operational | Phase::Deleting) => Err(switched_refusal(db)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MigrationKeySpec, MigrationKeyStatus};

    fn key(phase: KeyPhase, revoked: bool, expires_in_hours: i64) -> MigrationKey {
        let now = chrono::Utc::now();
        let mut key = MigrationKey::new(
            "k",
            MigrationKeySpec {
                database_ref: "db".into(),
                time_to_live: "2h".into(),
                description: None,
                revoked,
            },
        );
        key.status = Some(MigrationKeyStatus {
            phase: Some(phase),
            key_id: Some("abcdefgh".into()),
            digest: Some("00".repeat(32)),
            expires_at: Some((now + chrono::Duration::hours(expires_in_hours)).to_rfc3339()),
            ..Default::default()
        });
        key
    }

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

    fn answer(key: &MigrationKey, phase: Option<Phase>) -> Result<ReadAnswer, ProblemCode> {
        read_answer(key, phase, chrono::Utc::now()).map_err(|e| e.code())
    }

    const STAGING: [Option<Phase>; 6] = [
        None,
        Some(Phase::Pending),
        Some(Phase::Provisioning),
        Some(Phase::Staging),
        Some(Phase::Migrating),
        Some(Phase::Validated),
    ];
    const SWITCHED: [Option<Phase>; 2] = [Some(Phase::Activating), Some(Phase::Operational)];

    /// Asserts each (key phase, revoked, hours left to live) answers `expected` in every phase given.
    fn expect(
        phases: &[Option<Phase>],
        cases: &[(KeyPhase, bool, i64, Result<ReadAnswer, ProblemCode>)],
    ) {
        for phase in phases {
            for (key_phase, revoked, hours, expected) in cases {
                assert_eq!(
                    answer(&key(*key_phase, *revoked, *hours), *phase),
                    *expected,
                    "{key_phase:?} revoked={revoked} hours={hours} in {phase:?}"
                );
            }
        }
    }

    #[test]
    fn in_staging_a_usable_key_reads_live_and_any_other_key_is_refused_for_its_fault() {
        expect(
            &STAGING,
            &[
                (KeyPhase::Active, false, 1, Ok(ReadAnswer::Live)),
                (KeyPhase::Expired, false, 1, Err(ProblemCode::KeyExpired)),
                // Past its time to live.
                (KeyPhase::Active, false, -1, Err(ProblemCode::KeyExpired)),
                (
                    KeyPhase::Superseded,
                    false,
                    1,
                    Err(ProblemCode::KeySuperseded),
                ),
                (KeyPhase::Revoked, true, 1, Err(ProblemCode::KeyRevoked)),
            ],
        );
    }

    #[test]
    fn while_activating_and_once_operational_an_active_or_expired_key_reads_the_status() {
        for phase in SWITCHED {
            for key in [
                key(KeyPhase::Active, false, 1),
                key(KeyPhase::Expired, false, 1),
                key(KeyPhase::Active, false, -1),
                key(KeyPhase::Expired, false, -1),
            ] {
                assert_eq!(answer(&key, phase), Ok(ReadAnswer::FromStatus), "{phase:?}");
            }
        }
    }

    #[test]
    fn a_revoked_superseded_or_unissued_key_never_reads_even_after_the_switch() {
        expect(
            &SWITCHED,
            &[
                (KeyPhase::Revoked, true, 1, Err(ProblemCode::KeyRevoked)),
                // Expired by the switch, but revoked in its spec: still revoked.
                (KeyPhase::Expired, true, 1, Err(ProblemCode::KeyRevoked)),
                (KeyPhase::Active, true, 1, Err(ProblemCode::KeyRevoked)),
                (
                    KeyPhase::Superseded,
                    false,
                    1,
                    Err(ProblemCode::KeySuperseded),
                ),
                (KeyPhase::Pending, false, 1, Err(ProblemCode::KeyUnknown)),
            ],
        );
    }

    #[test]
    fn failed_and_deleting_databases_are_not_read_from_their_status() {
        for phase in [Some(Phase::Failed), Some(Phase::Deleting)] {
            assert_eq!(
                answer(&key(KeyPhase::Active, false, 1), phase),
                Ok(ReadAnswer::Live)
            );
            assert_eq!(
                answer(&key(KeyPhase::Expired, false, 1), phase),
                Err(ProblemCode::KeyExpired)
            );
        }
    }
}
