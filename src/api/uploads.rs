//! Upload storage, as the tus handler and the ingest use it: one row of `sfm.uploads` per upload in
//! its organisation's staging database, its bytes in `sfm.upload_chunks`, the row lock that
//! serialises appends landing on different replicas, and the upload's states. No HTTP here (that is
//! [`super::tus`]); every function runs on the caller's connection or transaction.

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use uuid::Uuid;

use super::ApiError;
use super::auth::Session;
use super::error::database;
use crate::contract::{FileType, ProblemCode};

/// Where an upload stands (`sfm.uploads.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadState {
    /// Created, no byte yet.
    Created,
    /// Some bytes received.
    Receiving,
    /// Every byte received; waiting for (or in) its ingest.
    Complete,
    /// Stored.
    Ingested,
    /// Refused, with a recorded rejection.
    Rejected,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Created => "created",
            UploadState::Receiving => "receiving",
            UploadState::Complete => "complete",
            UploadState::Ingested => "ingested",
            UploadState::Rejected => "rejected",
        }
    }

    /// The state a row holds (the table's CHECK allows only these five; anything else reads as
    /// rejected, which takes no bytes and stores nothing).
    pub fn of(text: &str) -> UploadState {
        match text {
            "created" => UploadState::Created,
            "receiving" => UploadState::Receiving,
            "complete" => UploadState::Complete,
            "ingested" => UploadState::Ingested,
            _ => UploadState::Rejected,
        }
    }

    /// Still taking bytes.
    pub fn is_open(self) -> bool {
        matches!(self, UploadState::Created | UploadState::Receiving)
    }
}

/// One row of `sfm.uploads`.
#[derive(sqlx::FromRow, Debug)]
pub struct UploadRow {
    pub id: Uuid,
    pub file_name: String,
    pub file_type: String,
    pub declared_length: i64,
    pub upload_offset: i64,
    pub state: String,
    pub migration_key_id: String,
    pub expires_at: DateTime<Utc>,
    pub metadata: serde_json::Value,
}

/// `SELECT <every column of UploadRow> FROM sfm.uploads <tail>`, as one static string.
macro_rules! select_upload {
    ($tail:literal) => {
        concat!(
            "SELECT id, file_name, file_type, declared_length, upload_offset, state, migration_key_id, expires_at, metadata FROM sfm.uploads ",
            $tail
        )
    };
}

/// The metadata key under which an upload keeps NHN's uploader's `SessionId` (a GUID), the audit
/// trail's link between the files of one export folder. Not `SessionId` itself: the schema refuses
/// that key in `metadata`, from when it could carry a migration key.
pub const METADATA_UPLOAD_SESSION: &str = "uploadSession";

/// An upload about to be created: its row in `sfm.uploads`.
pub struct NewUpload {
    pub id: Uuid,
    pub file_name: String,
    /// `None` for NHN's `Unknown` (recorded as rejected once complete).
    pub file_type: Option<FileType>,
    pub length: u64,
    pub expires_at: DateTime<Utc>,
    /// The tus metadata kept: `name`, `FileType`, `contentType` and the upload session.
    pub metadata: serde_json::Value,
}

impl NewUpload {
    /// Inserts the row: open (`created`), or, for a file that came whole, already finished in
    /// `state` (`ingested` or `rejected`) with the SHA-256 of its bytes.
    pub async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        session: &Session,
        finished: Option<(UploadState, &[u8])>,
    ) -> Result<(), ApiError> {
        let length = i64::try_from(self.length).unwrap_or(i64::MAX);
        let (upload_state, offset, sha256) = match finished {
            None => (UploadState::Created.as_str(), 0, None),
            Some((upload_state, sha256)) => (upload_state.as_str(), length, Some(sha256)),
        };
        sqlx::query(
            "INSERT INTO sfm.uploads (id, file_name, file_type, declared_length, metadata, migration_key_id, helseid_client_id,
                                      expires_at, state, upload_offset, sha256, completed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $11::bytea IS NULL THEN NULL ELSE now() END)",
        )
        .bind(self.id)
        .bind(&self.file_name)
        .bind(
            self.file_type
                .map_or(crate::contract::FILE_TYPE_UNKNOWN, FileType::as_str),
        )
        .bind(length)
        .bind(&self.metadata)
        .bind(&session.key_id)
        .bind(&session.helseid_client)
        .bind(self.expires_at)
        .bind(upload_state)
        .bind(offset)
        .bind(sha256)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("create the upload", e))?;
        Ok(())
    }
}

/// The upload's row.
pub async fn fetch(pool: &sqlx::PgPool, upload: Uuid) -> Result<UploadRow, ApiError> {
    sqlx::query_as::<_, UploadRow>(select_upload!("WHERE id = $1"))
        .bind(upload)
        .fetch_optional(pool)
        .await
        .map_err(|e| database("read the upload", e))?
        .ok_or_else(|| ApiError::new(ProblemCode::UploadNotFound))
}

/// The upload's row, locked for this transaction (`FOR UPDATE`): appends to one upload serialise.
pub async fn lock(tx: &mut sqlx::PgConnection, upload: Uuid) -> Result<UploadRow, ApiError> {
    sqlx::query_as::<_, UploadRow>(select_upload!("WHERE id = $1 FOR UPDATE"))
        .bind(upload)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| database("lock the upload", e))?
        .ok_or_else(|| ApiError::new(ProblemCode::UploadNotFound))
}

/// Stores one body at `offset` (nothing for an empty body).
pub async fn add_chunk(
    tx: &mut sqlx::PgConnection,
    upload: Uuid,
    offset: u64,
    body: &[u8],
) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sfm.upload_chunks (upload_id, chunk_offset, data) VALUES ($1, $2, $3)",
    )
    .bind(upload)
    .bind(offset as i64)
    .bind(body)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("store the chunk", e))?;
    Ok(())
}

/// The last byte arrived: the file's SHA-256 over its chunks, read one at a time, and the upload
/// `complete`.
pub async fn complete(
    tx: &mut sqlx::PgConnection,
    upload: Uuid,
    length: u64,
) -> Result<(), ApiError> {
    // One chunk in memory at a time: the digest is fed as the rows arrive.
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut total = 0u64;
    {
        let mut chunks = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT data FROM sfm.upload_chunks WHERE upload_id = $1 ORDER BY chunk_offset",
        )
        .bind(upload)
        .fetch(&mut *tx);
        while let Some(chunk) = chunks
            .try_next()
            .await
            .map_err(|e| database("read the chunks", e))?
        {
            digest.update(&chunk);
            total += chunk.len() as u64;
        }
    }
    if total != length {
        return Err(ApiError::internal(
            "assemble the upload",
            "the stored chunks do not add up to the offset",
        ));
    }
    sqlx::query(
        "UPDATE sfm.uploads SET upload_offset = $2, state = 'complete', sha256 = $3, completed_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(upload)
    .bind(length as i64)
    .bind(digest.finish().as_ref())
    .execute(&mut *tx)
    .await
    .map_err(|e| database("complete the upload", e))?;
    Ok(())
}

/// More bytes arrived, not the last.
pub async fn advance(
    tx: &mut sqlx::PgConnection,
    upload: Uuid,
    offset: u64,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE sfm.uploads SET upload_offset = $2, state = 'receiving', updated_at = now() WHERE id = $1",
    )
    .bind(upload)
    .bind(offset as i64)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("advance the offset", e))?;
    Ok(())
}

/// Deletes an unfinished upload with its chunks; a finished one is `upload-complete`.
pub async fn terminate(tx: &mut sqlx::PgConnection, upload: Uuid) -> Result<(), ApiError> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT state FROM sfm.uploads WHERE id = $1 FOR UPDATE")
            .bind(upload)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| database("lock the upload", e))?;
    match current.as_deref().map(UploadState::of) {
        None => return Err(ApiError::new(ProblemCode::UploadNotFound)),
        Some(state) if !state.is_open() => return Err(ApiError::new(ProblemCode::UploadComplete)),
        _ => {}
    }
    sqlx::query("DELETE FROM sfm.uploads WHERE id = $1")
        .bind(upload)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("terminate the upload", e))?;
    Ok(())
}
