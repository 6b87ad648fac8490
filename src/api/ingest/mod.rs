//! One completed upload into the staging database, in one transaction: decrypt (every key of a
//! rotation), unzip within limits, parse, check the data quality, and store the organisation with its
//! users, or a patient with identifiers, allergies, treatments and messages, plus the raw documents;
//! or record a rejection with its reason. The same file twice (same SHA-256) stores once; the same
//! patient in a re-export replaces its rows.
//!
//! The claim is the row lock: `SELECT ... FOR UPDATE SKIP LOCKED` on a `complete` upload. A replica
//! that dies mid-ingest loses its transaction and the lock; the upload is `complete` again and the
//! recovery loop of any replica takes it.
//!
//! Refusal messages name element paths, positions and limits, never values from the file.

mod checks;
mod file;
mod known_users;
mod patient_rows;
mod rejection;
mod store;

pub use checks::{Prepared, check_organisation, check_patient, prepare};
pub use file::{Claimed, digest};
pub use known_users::KnownUsers;
pub use rejection::{Refusal, archive_rejection, envelope_rejection, format_rejection};
pub use store::store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use axum::body::Bytes;

use super::auth::Session;
use super::error::database;
use super::guard::{Writable, check_creation};
use super::uploads::{NewUpload, UploadState};
use super::{ApiError, AppState};
use crate::contract::{FileType, IngestState, ProblemCode};
use crate::crd::MigrationDatabase;

pub type Outcome = (IngestState, Option<ProblemCode>);

/// Who ingests a complete upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingester {
    /// The request that received the last byte.
    Request,
    /// A replica's recovery loop, for an upload left complete.
    Recovery,
}

/// How long a recovery loop leaves a file it cannot decrypt for the other replicas before it
/// records the rejection: longer than a rolling update, so a replica that does not hold the new
/// decryption key yet (or still) never rejects a file another replica can read.
pub const RECOVERY_DECRYPTION_GRACE: Duration = Duration::from_secs(15 * 60);

/// The largest file (as uploaded, encrypted) checked on the request's own task. A usual patient
/// file is 10-20 KB and takes about a millisecond to check; handing it to the blocking pool and
/// back cost two thread switches, about 9% of the API's CPU per patient (docs/performance.md).
/// A larger file goes to the blocking pool, so that no runtime worker is held for long: 64 KiB
/// is about 450 KB of XML, 5 ms of work.
const CHECKED_ON_TASK_BYTES: usize = 64 * 1024;

/// Whether a recovery loop leaves this refusal unrecorded for now: only `envelope-undecryptable`
/// (the one refusal that depends on the replica's keys, not on the file) and only within
/// [`RECOVERY_DECRYPTION_GRACE`] of the upload's completion.
pub fn defer_refusal(
    by: Ingester,
    code: ProblemCode,
    completed_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    by == Ingester::Recovery
        && code == ProblemCode::EnvelopeUndecryptable
        && (now - completed_at)
            .to_std()
            .map_or(true, |age| age < RECOVERY_DECRYPTION_GRACE)
}

/// Ingests one complete upload if no other replica holds it. `None`: another replica is at it (or,
/// in recovery, this replica cannot decrypt it and leaves it, see [`defer_refusal`]).
pub async fn ingest_upload(
    state: Arc<AppState>,
    session: Session,
    upload: Uuid,
    by: Ingester,
) -> Result<Option<Outcome>, ApiError> {
    let _slot = ingest_slot(&state).await?;
    let started = Instant::now();
    let mut tx = super::guard::begin(&session.pool).await?;
    let row = sqlx::query(
        "SELECT file_name, file_type, migration_key_id, helseid_client_id, sha256, declared_length, completed_at
         FROM sfm.uploads WHERE id = $1 AND state = 'complete' FOR UPDATE SKIP LOCKED",
    )
    .bind(upload)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| database("claim the upload", e))?;
    let Some(row) = row else {
        drop(tx);
        return current_outcome(&session, upload).await;
    };
    let claimed = Claimed {
        file_name: row.get("file_name"),
        file_type: row.get("file_type"),
        migration_key_id: row.get("migration_key_id"),
        helseid_client_id: row.get("helseid_client_id"),
        sha256: row.get("sha256"),
        size: row.get("declared_length"),
        completed_at: row.get("completed_at"),
    };
    let chunks: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM sfm.upload_chunks WHERE upload_id = $1 ORDER BY chunk_offset",
    )
    .bind(upload)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database("read the upload", e))?;
    let data = Bytes::from(chunks.concat());

    // Nothing is stored once the migration is validated: the upload is closed as refused for that.
    let checked = match super::guard::checked(&mut tx, session.uid).await {
        Err(error) if error.code() == ProblemCode::MigrationValidated => Ok(Err(Refusal::new(
            ProblemCode::MigrationValidated,
            "the migration was validated before this file was stored; nothing is stored after the validation",
        ))),
        Err(error) => Err(error),
        Ok(found) => {
            check_and_store(&state, &session, &mut tx, found, upload, &claimed, data).await
        }
    };
    let outcome = match checked? {
        Ok(()) => {
            close_upload(&mut tx, upload, UploadState::Ingested).await?;
            (IngestState::Stored, None)
        }
        Err(rejection)
            if defer_refusal(by, rejection.code, claimed.completed_at, chrono::Utc::now()) =>
        {
            tx.rollback()
                .await
                .map_err(|e| database("undo the ingest", e))?;
            tracing::warn!(
                database = %session.database_name(),
                "this replica cannot decrypt an upload left complete; left for a replica that holds its key"
            );
            tracing::debug!(%upload, "left for another replica");
            return Ok(None);
        }
        Err(rejection) => {
            tx = start_over(tx, &session).await?;
            let still: Option<String> = sqlx::query_scalar(
                "SELECT state FROM sfm.uploads WHERE id = $1 AND state = 'complete' FOR UPDATE SKIP LOCKED",
            )
            .bind(upload)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| database("claim the upload", e))?;
            if still.is_none() {
                drop(tx);
                return current_outcome(&session, upload).await;
            }
            record_rejection(&mut tx, upload, &claimed, &rejection).await?;
            (IngestState::Rejected, Some(rejection.code))
        }
    };
    tx.commit()
        .await
        .map_err(|e| database("commit the ingest", e))?;
    ingested(&state, &session, upload, &claimed, outcome, started);
    Ok(Some(outcome))
}

/// A file that came whole in its creation request (tus creation-with-upload, as `sfm-migrate` sends
/// every file that fits in one chunk): the upload row, the ingest and its outcome are written in one
/// transaction, and no chunk is stored. Nothing is acknowledged before the commit, so if this replica
/// dies mid-way the client sends the file again, and the same bytes are stored once.
pub async fn ingest_whole(
    state: Arc<AppState>,
    session: Session,
    new: NewUpload,
    data: Bytes,
) -> Result<Outcome, ApiError> {
    let _slot = ingest_slot(&state).await?;
    let started = Instant::now();
    let claimed = Claimed {
        file_name: new.file_name.clone(),
        file_type: new
            .file_type
            .map_or(crate::contract::FILE_TYPE_UNKNOWN, FileType::as_str)
            .to_owned(),
        migration_key_id: session.key_id.clone(),
        helseid_client_id: session.helseid_client.clone(),
        sha256: digest(&data),
        size: data.len() as i64,
        completed_at: chrono::Utc::now(),
    };
    let mut tx = super::guard::begin(&session.pool).await?;
    let found = check_creation(&mut tx, &state, &session, new.file_type).await?;
    new.insert(
        &mut tx,
        &session,
        Some((UploadState::Ingested, &claimed.sha256)),
    )
    .await?;
    let outcome =
        match check_and_store(&state, &session, &mut tx, found, new.id, &claimed, data).await? {
            Ok(()) => (IngestState::Stored, None),
            Err(rejection) => {
                tx = start_over(tx, &session).await?;
                new.insert(
                    &mut tx,
                    &session,
                    Some((UploadState::Rejected, &claimed.sha256)),
                )
                .await?;
                insert_rejection(&mut tx, new.id, &claimed, &rejection).await?;
                (IngestState::Rejected, Some(rejection.code))
            }
        };
    tx.commit()
        .await
        .map_err(|e| database("commit the ingest", e))?;
    ingested(&state, &session, new.id, &claimed, outcome, started);
    Ok(outcome)
}

/// A `PATCH` that brings a whole file at once, from offset 0 to its length (NHN's uploader sends
/// every file of up to 512 KiB that way, after its creation and a `HEAD`): the file is ingested in
/// the transaction that would have stored it as a chunk, and the upload closed with its outcome. No
/// chunk is written, read back and deleted. Nothing is acknowledged before the commit: if this
/// replica dies mid-way the upload is still open at offset 0, and the client's `HEAD` and `PATCH`
/// send the file again.
pub async fn ingest_in_place(
    state: Arc<AppState>,
    session: Session,
    upload: Uuid,
    data: Bytes,
) -> Result<Outcome, ApiError> {
    let _slot = ingest_slot(&state).await?;
    let started = Instant::now();
    let mut tx = super::guard::begin(&session.pool).await?;
    let row = open_at_start(&mut tx, upload, data.len()).await?;
    let found = super::guard::checked(&mut tx, session.uid).await?;
    let claimed = Claimed {
        file_name: row.file_name.clone(),
        file_type: row.file_type.clone(),
        migration_key_id: row.migration_key_id.clone(),
        helseid_client_id: session.helseid_client.clone(),
        sha256: digest(&data),
        size: data.len() as i64,
        completed_at: chrono::Utc::now(),
    };
    let outcome =
        match check_and_store(&state, &session, &mut tx, found, upload, &claimed, data).await? {
            Ok(()) => {
                finish_in_place(&mut tx, upload, &claimed, UploadState::Ingested).await?;
                (IngestState::Stored, None)
            }
            Err(rejection) => {
                tx = start_over(tx, &session).await?;
                open_at_start(&mut tx, upload, claimed.size as usize).await?;
                finish_in_place(&mut tx, upload, &claimed, UploadState::Rejected).await?;
                insert_rejection(&mut tx, upload, &claimed, &rejection).await?;
                (IngestState::Rejected, Some(rejection.code))
            }
        };
    tx.commit()
        .await
        .map_err(|e| database("commit the ingest", e))?;
    ingested(&state, &session, upload, &claimed, outcome, started);
    Ok(outcome)
}

/// The upload's row under its lock, if it is still open at offset 0 for a body of `length` bytes
/// that completes it; `upload-offset-mismatch` otherwise (another request got there first).
async fn open_at_start(
    tx: &mut PgConnection,
    upload: Uuid,
    length: usize,
) -> Result<super::uploads::UploadRow, ApiError> {
    let row = super::uploads::lock(tx, upload).await?;
    if !UploadState::of(&row.state).is_open()
        || row.upload_offset != 0
        || row.declared_length != length as i64
    {
        return Err(ApiError::new(ProblemCode::UploadOffsetMismatch)
            .detail("the upload moved on meanwhile; HEAD and resume from there")
            .header(
                crate::contract::HEADER_UPLOAD_OFFSET,
                row.upload_offset.to_string(),
            ));
    }
    Ok(row)
}

/// Closes an upload ingested in place: all of it received, its digest, its outcome.
async fn finish_in_place(
    tx: &mut PgConnection,
    upload: Uuid,
    claimed: &Claimed,
    outcome: UploadState,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE sfm.uploads SET upload_offset = declared_length, state = $2, sha256 = $3, completed_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(upload)
    .bind(outcome.as_str())
    .bind(&claimed.sha256)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("close the upload", e))?;
    Ok(())
}

/// Ingests are CPU work and hold a database connection: a bounded number run at once.
async fn ingest_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .ingest_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal("wait for an ingest slot", e))
}

/// Undoes whatever `store` wrote and begins a clean transaction for recording the rejection.
async fn start_over(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    session: &Session,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
    tx.rollback()
        .await
        .map_err(|e| database("undo the ingest", e))?;
    super::guard::begin(&session.pool).await
}

/// Checks one file and stores it in `tx`, where the guard read `found`. `Ok(Err(_))`: refused; the
/// caller rolls `tx` back and records the rejection. The same bytes stored before count as stored.
/// Either way a stored file resolves the rejections recorded earlier under its name.
async fn check_and_store(
    state: &Arc<AppState>,
    session: &Session,
    tx: &mut PgConnection,
    found: Writable,
    upload: Uuid,
    claimed: &Claimed,
    data: Bytes,
) -> Result<Result<(), Refusal>, ApiError> {
    let already: Option<i64> =
        sqlx::query_scalar("SELECT id FROM sfm.stored_files WHERE sha256 = $1")
            .bind(&claimed.sha256)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| database("look for the same file", e))?;
    if already.is_some() {
        resolve_earlier_rejections(tx, &claimed.file_name).await?;
        return Ok(Ok(()));
    }
    let Ok(file_type) = claimed.file_type.parse::<FileType>() else {
        return Ok(Err(Refusal::new(
            ProblemCode::FileTypeUnknown,
            "the uploader sent this file as FileType Unknown: it is not ExportData.dat and not in a Patients or Reports folder, so it is not part of an FM export",
        )));
    };
    let check = move |state: &AppState, db: &MigrationDatabase, name: &str, data: &[u8]| {
        prepare(
            &state.config.decryption_keys,
            data,
            file_type,
            name,
            &state.config.limits.format,
            db,
        )
    };
    // A patient-sized file is checked on the request's own task, borrowing what it needs; a larger
    // one goes to the blocking pool (which needs owned handles) so no runtime worker is held long.
    let prepared = if data.len() <= CHECKED_ON_TASK_BYTES {
        check(state, &session.database, &claimed.file_name, &data)
    } else {
        let (state, db, name) = (
            state.clone(),
            session.database.clone(),
            claimed.file_name.clone(),
        );
        tokio::task::spawn_blocking(move || check(&state, &db, &name, &data))
            .await
            .map_err(|e| ApiError::internal("run the ingest", e))?
    };
    match prepared {
        Err(rejection) => Ok(Err(rejection)),
        Ok(prepared) => {
            let users = &state.known_users;
            store(
                tx,
                &session.database,
                Some(upload),
                claimed,
                prepared,
                found,
                users,
            )
            .await
        }
    }
}

/// After the commit: metrics, the status batcher, and one log line (no personal data).
fn ingested(
    state: &AppState,
    session: &Session,
    upload: Uuid,
    claimed: &Claimed,
    outcome: Outcome,
    started: Instant,
) {
    state.metrics.observe_ingest(outcome.0, started.elapsed());
    state.mark_dirty(session.uid);
    tracing::debug!(%upload, "file ingested");
    tracing::info!(
        database = %session.database_name(),
        file_type = %claimed.file_type,
        result = outcome.0.as_str(),
        code = outcome.1.map(|c| c.as_str()).unwrap_or(""),
        millis = started.elapsed().as_millis() as u64,
        "file ingested"
    );
}

/// What became of an upload another replica (or an earlier request) ingested.
async fn current_outcome(session: &Session, upload: Uuid) -> Result<Option<Outcome>, ApiError> {
    let row = sqlx::query(
        "SELECT u.state, (SELECT reason_code FROM sfm.rejections r WHERE r.upload_id = u.id ORDER BY r.id DESC LIMIT 1) AS code
         FROM sfm.uploads u WHERE u.id = $1",
    )
    .bind(upload)
    .fetch_optional(&session.pool)
    .await
    .map_err(|e| database("read the upload", e))?;
    Ok(row.and_then(|row| {
        let state: String = row.get("state");
        let code: Option<String> = row.get("code");
        match UploadState::of(&state) {
            UploadState::Ingested => Some((IngestState::Stored, None)),
            UploadState::Rejected => Some((
                IngestState::Rejected,
                code.and_then(|c| ProblemCode::from_reason_code(&c)),
            )),
            _ => None,
        }
    }))
}

/// Marks a claimed upload `ingested` or `rejected` and drops its bytes: they are stored (or refused)
/// by now.
async fn close_upload(
    tx: &mut PgConnection,
    upload: Uuid,
    state: UploadState,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE sfm.uploads SET state = $2, updated_at = now() WHERE id = $1")
        .bind(upload)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| database("mark the upload done", e))?;
    sqlx::query("DELETE FROM sfm.upload_chunks WHERE upload_id = $1")
        .bind(upload)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("drop the upload's chunks", e))?;
    Ok(())
}

/// A file stored under a name resolves the rejections recorded earlier for that name (a file stored
/// now does it in [`store`]'s own statement).
async fn resolve_earlier_rejections(
    tx: &mut PgConnection,
    file_name: &str,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE sfm.rejections SET resolved = true, resolved_at = now() WHERE file_name = $1 AND NOT resolved")
        .bind(file_name)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("resolve earlier rejections", e))?;
    Ok(())
}

async fn record_rejection(
    tx: &mut PgConnection,
    upload: Uuid,
    claimed: &Claimed,
    rejection: &Refusal,
) -> Result<(), ApiError> {
    insert_rejection(tx, upload, claimed, rejection).await?;
    close_upload(tx, upload, UploadState::Rejected).await
}

async fn insert_rejection(
    tx: &mut PgConnection,
    upload: Uuid,
    claimed: &Claimed,
    rejection: &Refusal,
) -> Result<(), ApiError> {
    let message: String = rejection.message.chars().take(2000).collect();
    sqlx::query(
        "INSERT INTO sfm.rejections (upload_id, file_name, sha256, reason_code, message, migration_key_id, helseid_client_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(upload)
    .bind(&claimed.file_name)
    .bind(&claimed.sha256)
    .bind(rejection.code.reason_code())
    .bind(message)
    .bind(&claimed.migration_key_id)
    .bind(&claimed.helseid_client_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("record the rejection", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recovery_defers_and_only_an_undecryptable_file_within_the_grace() {
        let now = chrono::Utc::now();
        let fresh = now - chrono::Duration::minutes(1);
        let old = now - chrono::Duration::minutes(16);
        let undecryptable = ProblemCode::EnvelopeUndecryptable;
        assert!(defer_refusal(Ingester::Recovery, undecryptable, fresh, now));
        // Past the grace every replica has had its chance: the refusal is recorded.
        assert!(!defer_refusal(Ingester::Recovery, undecryptable, old, now));
        // The request that received the last byte records at once: the client is waiting.
        assert!(!defer_refusal(Ingester::Request, undecryptable, fresh, now));
        // A refusal that depends on the file, not on the replica's keys, is recorded at once.
        for code in [
            ProblemCode::EnvelopeMalformed,
            ProblemCode::ArchiveLimits,
            ProblemCode::DataQualityHprUnknown,
        ] {
            assert!(
                !defer_refusal(Ingester::Recovery, code, fresh, now),
                "{code:?}"
            );
        }
        // A completion stamped in the future (clock skew between replicas) is within the grace.
        let ahead = now + chrono::Duration::minutes(1);
        assert!(defer_refusal(Ingester::Recovery, undecryptable, ahead, now));
    }
}
