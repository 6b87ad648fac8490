//! Who may write into which staging database, and who may read its progress.
//!
//! The migration key is found by its key id in the MigrationKeys' status ([`super::directory::Directory`]), its SHA-256
//! compared with `status.digest` in constant time, and its rules applied ([`super::keys`]): phase,
//! expiry, and the database whose UID it was issued for. The migrator's pool for that database
//! comes from the directory. A HelseID token is checked when the database's policy asks for one.
//!
//! From the moment the operator writes phase `Activating` (before it closes the migrator) until the
//! end, a database has no usable migrator: `status` and `key-check` are then answered from the
//! MigrationDatabase's status ([`Reader::FromStatus`], decided by [`read_answer`]) and every write
//! is refused with `migration-operational` ([`super::switch`]), whatever the keys' phases are at that
//! instant.

use std::sync::Arc;

use axum::http::{HeaderMap, Method};

use kube::ResourceExt;
use sqlx::PgPool;
use uuid::Uuid;

use super::directory::database_uid;
use super::keys::{ReadAnswer, check_key_usable, issued_for, key_id_of, read_answer};
use super::uploader::{self, Purpose};
use super::{ApiError, AppState, keys, switch};
use crate::contract::{MigrationKeyToken, ProblemCode};
use crate::crd::{MigrationDatabase, MigrationKey};

/// An authenticated request for one database.
#[derive(Clone)]
pub struct Session {
    pub database: Arc<MigrationDatabase>,
    pub uid: Uuid,
    /// The key id (never the key); [`uploader::NO_KEY`] for a session of a HelseID token alone.
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
pub use crate::helseid::verify::RequestFacts;

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

/// Who reads `status` or `key-check`, and from where.
pub enum Reader {
    /// A database in staging: a full session with the migrator's pool.
    Live {
        session: Session,
        /// The key presented; `None` for a HelseID token alone.
        key: Option<Arc<MigrationKey>>,
    },
    /// A database being switched or operational: the answer comes from its status.
    FromStatus {
        key: Option<Arc<MigrationKey>>,
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
    let token = checked_token(state, &database, request).await?;
    if answer == ReadAnswer::FromStatus {
        return Ok(Reader::FromStatus {
            key: Some(key),
            database,
        });
    }
    live_reader(state, database, key_id_of(&key), Some(key), token).await
}

/// A checked HelseID token: its client, and the `jti` of its DPoP proof.
struct CheckedToken {
    client: String,
    proof: Option<String>,
}

/// The pool of a database this request is served for (which counts as this replica's activity),
/// with the request's DPoP proof recorded in that database, where every replica sees it: a proof
/// used before, here or at another replica, is refused.
async fn request_pool(
    state: &AppState,
    database: &MigrationDatabase,
    uid: Uuid,
    token: Option<&CheckedToken>,
) -> Result<PgPool, ApiError> {
    state.note_activity(uid);
    let pool = state.directory.pool(database).await?;
    if let Some(jti) = token.and_then(|t| t.proof.as_deref()) {
        record_proof(&pool, jti).await?;
    }
    Ok(pool)
}

/// Records a DPoP proof's `jti` in the staging database; a `jti` recorded before is a replay.
async fn record_proof(pool: &PgPool, jti: &str) -> Result<(), ApiError> {
    let recorded =
        sqlx::query("INSERT INTO sfm.dpop_proofs (jti) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(jti)
            .execute(pool)
            .await;
    match recorded {
        Ok(done) if done.rows_affected() == 1 => Ok(()),
        Ok(_) => Err(crate::helseid::verify::TokenError::InvalidProof(
            "it was used before (jti replay)",
        )
        .into()),
        // A database the operator has not passed since the table came (it makes it on every
        // pass): this replica's own memory of proofs still refuses a replay at it.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => Ok(()),
        Err(error) => Err(super::error::database("record the DPoP proof", error)),
    }
}

/// A reader of a database in staging through the migrator's pool, or of its status should the pool
/// be refused because the database was switched after it was read.
async fn live_reader(
    state: &AppState,
    database: Arc<MigrationDatabase>,
    key_id: String,
    key: Option<Arc<MigrationKey>>,
    token: Option<CheckedToken>,
) -> Result<Reader, ApiError> {
    let uid = database_uid(&database)
        .ok_or_else(|| ApiError::internal("read the database uid", "no uid"))?;
    match request_pool(state, &database, uid, token.as_ref()).await {
        Ok(pool) => Ok(Reader::Live {
            session: Session {
                database,
                uid,
                key_id,
                helseid_client: token.map(|t| t.client),
                pool,
            },
            key,
        }),
        Err(error) if error.code() == ProblemCode::TokenInvalid => Err(error),
        Err(error) => match switch::closed_meanwhile(state, &database).await {
            Some(database) => Ok(Reader::FromStatus { key, database }),
            None => Err(error),
        },
    }
}

/// The reader of `status`: by the key sent, else by the HelseID token alone ([`uploader`]).
pub async fn reader(state: &AppState, request: &RequestFacts<'_>) -> Result<Reader, ApiError> {
    match keys::header_key(request.headers)? {
        Some(token) => reader_for_token(state, &token, request).await,
        None => {
            let (database, token) = tokenholder(state, request, Purpose::Read).await?;
            if switch::ensure_open(&database).is_err() {
                return Ok(Reader::FromStatus {
                    key: None,
                    database,
                });
            }
            live_reader(
                state,
                database,
                uploader::NO_KEY.to_owned(),
                None,
                Some(token),
            )
            .await
        }
    }
}

/// A session from the request: by the key sent, else by the HelseID token alone ([`uploader`]).
pub async fn session(state: &AppState, request: &RequestFacts<'_>) -> Result<Session, ApiError> {
    match keys::header_key(request.headers)? {
        Some(token) => session_for_token(state, &token, request).await,
        None => {
            let (database, token) = tokenholder(state, request, Purpose::Write).await?;
            let uid = database_uid(&database)
                .ok_or_else(|| ApiError::internal("read the database uid", "no uid"))?;
            let pool = request_pool(state, &database, uid, Some(&token)).await?;
            Ok(Session {
                database,
                uid,
                key_id: uploader::NO_KEY.to_owned(),
                helseid_client: Some(token.client),
                pool,
            })
        }
    }
}

/// The database a request without a key is for, and its HelseID client: chosen by the token's
/// claims ([`uploader::choose`]), then the token checked in full against that database's policy
/// (for DPoP this consumes the proof, so it runs once per request).
async fn tokenholder(
    state: &AppState,
    request: &RequestFacts<'_>,
    purpose: Purpose,
) -> Result<(Arc<MigrationDatabase>, CheckedToken), ApiError> {
    let facts = uploader::token_facts(request.headers)?;
    let databases = state.directory.databases().await?;
    let database = uploader::choose(&databases, &facts, &state.config.trusted_issuers, purpose)?;
    // The chosen database has a policy naming the token's issuer ([`uploader::accepts`]), which
    // `choose` found trusted.
    let token = checked_token(state, &database, request)
        .await
        .inspect_err(|_| {
            state.metrics.auth_failures.inc();
        })?
        .ok_or_else(|| {
            ApiError::internal("read the token policy", "a chosen database has no policy")
        })?;
    // The claims that chose the database are now verified; the client id is checked again on them.
    let verified = uploader::TokenFacts {
        client_id: Some(token.client.clone()),
        ..facts
    };
    if !uploader::accepts(&database, &verified) {
        return Err(ApiError::new(ProblemCode::UploaderNoDatabase));
    }
    Ok((database, token))
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
            && let Err(refusal) = switch::ensure_open(&database)
        {
            return Err(refusal);
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
    let (key, database) = writer(state, token).await?;
    finish_session(state, database, key_id_of(&key), request).await
}

/// The key presented for a write, usable, and the database it was issued for.
async fn writer(
    state: &AppState,
    token: &MigrationKeyToken,
) -> Result<(Arc<MigrationKey>, Arc<MigrationDatabase>), ApiError> {
    let key = matched_key(state, token).await?;
    usable_for_writing(state, &key).await?;
    let database = key_database(state, &key).await?;
    Ok((key, database))
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
    let (key, database) = writer(state, token).await?;
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
    // An upload made with a HelseID token alone has no key that could stop; the session is already
    // authenticated for its database.
    if creator_key_id == session.key_id || creator_key_id == uploader::NO_KEY {
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
    let token = checked_token(state, &database, request).await?;
    let pool = request_pool(state, &database, uid, token.as_ref()).await?;
    Ok(Session {
        database,
        uid,
        key_id,
        helseid_client: token.map(|t| t.client),
        pool,
    })
}

/// The request's HelseID token, checked when the database requires one (for DPoP this consumes the
/// proof, so it runs once per request).
async fn checked_token(
    state: &AppState,
    database: &MigrationDatabase,
    request: &RequestFacts<'_>,
) -> Result<Option<CheckedToken>, ApiError> {
    match &database.spec.validation.helse_id {
        None => Ok(None),
        Some(policy) => {
            trusted_issuer(state, &policy.issuer)?;
            let (client, proof) = state
                .helseid
                .check_request_with_proof(
                    policy,
                    &database.spec.organisation.organisation_number,
                    request,
                )
                .await?;
            Ok(Some(CheckedToken { client, proof }))
        }
    }
}

/// A database may name only an issuer the API's own configuration trusts: otherwise whoever may
/// edit a MigrationDatabase could point the API at an identity provider of their own (and have it
/// fetch any URL). Checked before anything is fetched.
fn trusted_issuer(state: &AppState, issuer: &str) -> Result<(), ApiError> {
    if state.config.trusted_issuers.iter().any(|t| t == issuer) {
        return Ok(());
    }
    Err(ApiError::new(ProblemCode::TokenInvalid).detail(
        "the database names a HelseID issuer this migration API does not trust; an NHN operator adds it to the API's trusted issuers (chart value api.trustedIssuers)",
    ))
}

/// The base URL clients reach this API at.
pub fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// What the request looked like, for the token checks: method, the URL as the client saw it, headers.
pub fn request_facts<'a>(
    state: &AppState,
    method: &'a Method,
    headers: &'a HeaderMap,
    path: &str,
) -> RequestFacts<'a> {
    RequestFacts {
        method,
        url: format!("{}{path}", base_url(state, headers)),
        headers,
    }
}
