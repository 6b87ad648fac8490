//! Progress of a migration: key-check (step 11), status, and `status.migration` of the
//! MigrationDatabase (verify and activate, the end of it, are [`super::verify`]).
//!
//! The staging database is the source of truth: `status.migration` is recomputed from it and written
//! whole by a server-side apply under the field manager `sfm-migration-api`, which owns that block
//! and nothing else. Writes are batched (at most one per database per second per replica), except
//! after verify and activate, which write at once because the operator's activation rule reads
//! `validatedDigest`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use kube::{Api, ResourceExt};
use sqlx::Row;

use super::auth::{self, Reader, Session};
use super::error::database;
use super::{ApiError, AppState, FIELD_MANAGER};
use super::{guard, keys, switch};
use crate::contract::{
    self, Counts, FileType, KeyCheckResponse, MAX_REJECTIONS_LISTED, Manifest, ManifestFile,
    MigrationPhase, MigrationStatus, ProblemCode, Rejection, StoredFiles,
};
use crate::crd::{
    MigrationDatabase, MigrationDatabaseStatus, MigrationProgress, RecordCounts, StoredManifest,
    apply_status,
};

/// The session of verify and activate: by the key sent, or by a HelseID token alone for a database
/// that accepts uploads without a key.
pub(super) async fn session(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
) -> Result<Session, ApiError> {
    let request = auth::request_facts(state, method, headers, path);
    auth::session(state, &request).await
}

fn phase_of(db: &MigrationDatabase) -> MigrationPhase {
    db.status
        .as_ref()
        .and_then(|s| s.phase)
        .and_then(|p| format!("{p:?}").parse().ok())
        .unwrap_or(MigrationPhase::Pending)
}

/// The reader of key-check: the key is what it checks.
async fn key_reader(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
) -> Result<(Reader, Arc<crate::crd::MigrationKey>), ApiError> {
    let token = keys::header_key(headers)?.ok_or_else(|| ApiError::new(ProblemCode::KeyMissing))?;
    let request = auth::request_facts(state, method, headers, path);
    let reader = auth::reader_for_token(state, &token, &request).await?;
    let key = match &reader {
        Reader::Live { key, .. } | Reader::FromStatus { key, .. } => key.clone(),
    }
    .ok_or_else(|| ApiError::internal("read the key", "a key reader without its key"))?;
    Ok((reader, key))
}

/// `POST /api/v1/key-check`. In staging the organisation flag comes from the staging database; while
/// the database is `Activating` and once it is `Operational`, everything comes from the
/// MigrationDatabase's status, without a database connection (see [`keys::read_answer`]).
pub async fn key_check(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (reader, key) = key_reader(&state, &method, &headers, contract::PATH_KEY_CHECK).await?;
    let (db, organisation_stored) = match reader {
        Reader::FromStatus { database: db, .. } => {
            let stored = organisation_stored_in_status(&db);
            (db, stored)
        }
        Reader::Live { session, .. } => {
            let stored = guard::organisation_stored(&session.pool).await;
            match stored {
                Ok(stored) => (session.database, stored),
                Err(error) => match switch::closed_meanwhile(&state, &session.database).await {
                    Some(db) => {
                        let stored = organisation_stored_in_status(&db);
                        (db, stored)
                    }
                    None => return Err(error),
                },
            }
        }
    };
    Ok(axum::Json(KeyCheckResponse {
        key_id: key
            .status
            .as_ref()
            .and_then(|s| s.key_id.clone())
            .unwrap_or_default(),
        database: format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any()),
        expires_at: keys::key_expires_at(&key).unwrap_or_else(Utc::now),
        phase: phase_of(&db),
        token_required: db.spec.validation.helse_id.is_some(),
        organisation_stored,
    })
    .into_response())
}

fn organisation_stored_in_status(db: &MigrationDatabase) -> bool {
    db.status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .is_some_and(|m| m.organisation_stored)
}

/// `GET /api/v1/status`. In staging it is read from the staging database; while the database is
/// `Activating` and once it is `Operational`, from the MigrationDatabase's status (the API's last
/// write of `status.migration`, at activate, is the final one), without a database connection, so
/// the client sees the switch through to its end.
pub async fn status(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = auth::request_facts(&state, &method, &headers, contract::PATH_STATUS);
    let session = match auth::reader(&state, &request).await? {
        Reader::FromStatus { database, .. } => {
            return Ok(axum::Json(status_from_resource(&database)).into_response());
        }
        Reader::Live { session, .. } => session,
    };
    let read = async {
        let mut connection = session
            .pool
            .acquire()
            .await
            .map_err(|e| database("read the progress", e))?;
        read_status(&mut connection, &session.database).await
    };
    match read.await {
        Ok(status) => Ok(axum::Json(status).into_response()),
        // The operator closed the migrator after this request read the phase: it wrote
        // `Activating` first, so the database read again says so.
        Err(error) => match switch::closed_meanwhile(&state, &session.database).await {
            Some(database) => Ok(axum::Json(status_from_resource(&database)).into_response()),
            None => Err(error),
        },
    }
}

/// The migration's final state as the MigrationDatabase's status holds it (written by this API).
fn status_from_resource(db: &MigrationDatabase) -> MigrationStatus {
    let progress = db
        .status
        .as_ref()
        .and_then(|s| s.migration.clone())
        .unwrap_or_default();
    let counts = |c: &crate::crd::RecordCounts| Counts {
        received: u64::try_from(c.received).unwrap_or(0),
        stored: u64::try_from(c.stored).unwrap_or(0),
        rejected: u64::try_from(c.rejected).unwrap_or(0),
    };
    let time = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    MigrationStatus {
        database: format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any()),
        phase: phase_of(db),
        phase_reason: db.status.as_ref().and_then(|s| s.phase_reason.clone()),
        started_at: None,
        organisation_stored: progress.organisation_stored,
        users: counts(&progress.users),
        patients: counts(&progress.patients),
        reports: counts(&progress.reports),
        expected_patients: progress
            .expected_patients
            .and_then(|n| u64::try_from(n).ok()),
        rejections: Vec::new(),
        rejections_truncated: false,
        validated_digest: progress.validated_digest.clone(),
        validated_at: time(&progress.validated_at),
        activation_requested_at: time(&progress.activation_requested_at),
        stored: progress.stored.as_ref().map(|s| StoredFiles {
            files: u64::try_from(s.files).unwrap_or(0),
            digest: s.digest.clone(),
        }),
    }
}

pub(super) fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The migration's progress, from the staging database.
pub async fn read_status(
    connection: &mut sqlx::PgConnection,
    db: &MigrationDatabase,
) -> Result<MigrationStatus, ApiError> {
    let row = sqlx::query(
        "SELECT
           EXISTS (SELECT 1 FROM sfm.stored_files WHERE kind = 'organisation') AS organisation_stored,
           (SELECT count(*) FROM sfm.users) AS users,
           (SELECT min(created_at) FROM sfm.uploads) AS started_at,
           (SELECT count(DISTINCT file_name) FROM sfm.uploads WHERE file_type = 'Patient' AND state IN ('complete', 'ingested', 'rejected')) AS patients_received,
           (SELECT count(*) FROM sfm.patients) AS patients_stored,
           (SELECT count(DISTINCT file_name) FROM sfm.rejections WHERE NOT resolved AND lower(file_name) LIKE '%.pat') AS patients_rejected,
           (SELECT count(DISTINCT file_name) FROM sfm.uploads WHERE file_type = 'Report' AND state IN ('complete', 'ingested', 'rejected')) AS reports_received,
           (SELECT count(DISTINCT file_name) FROM sfm.stored_files WHERE kind = 'report') AS reports_stored,
           (SELECT count(DISTINCT file_name) FROM sfm.rejections WHERE NOT resolved AND lower(file_name) LIKE '%.rpt') AS reports_rejected,
           (SELECT count(DISTINCT file_name) FROM sfm.rejections WHERE NOT resolved AND lower(file_name) LIKE '%.dat') AS organisation_rejected",
    )
    .fetch_one(&mut *connection)
    .await
    .map_err(|e| database("read the progress", e))?;
    let validation = sqlx::query(
        "SELECT encode(manifest_sha256, 'hex') AS digest, validated_at, activation_requested_at, patients_expected FROM sfm.validation",
    )
    .fetch_optional(&mut *connection)
    .await
    .map_err(|e| database("read the validation record", e))?;
    let rejections_rows = sqlx::query(
        "SELECT file_name, reason_code, message, rejected_at FROM sfm.rejections WHERE NOT resolved ORDER BY id LIMIT $1",
    )
    .bind((MAX_REJECTIONS_LISTED + 1) as i64)
    .fetch_all(&mut *connection)
    .await
    .map_err(|e| database("read the rejections", e))?;
    let mut rejections: Vec<Rejection> = rejections_rows
        .iter()
        .map(|r| {
            let file: String = r.get("file_name");
            let code: String = r.get("reason_code");
            Rejection {
                file_type: FileType::from_path(&file).unwrap_or(FileType::Patient),
                file,
                code: ProblemCode::from_reason_code(&code).unwrap_or(ProblemCode::Internal),
                message: r.get("message"),
                rejected_at: r.get("rejected_at"),
            }
        })
        .collect();
    let truncated = rejections.len() > MAX_REJECTIONS_LISTED;
    rejections.truncate(MAX_REJECTIONS_LISTED);
    let users = count(row.get("users"));
    Ok(MigrationStatus {
        database: format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any()),
        phase: phase_of(db),
        phase_reason: db.status.as_ref().and_then(|s| s.phase_reason.clone()),
        started_at: row.get("started_at"),
        organisation_stored: row.get("organisation_stored"),
        users: Counts {
            received: users,
            stored: users,
            rejected: count(row.get("organisation_rejected")),
        },
        patients: Counts {
            received: count(row.get("patients_received")),
            stored: count(row.get("patients_stored")),
            rejected: count(row.get("patients_rejected")),
        },
        reports: Counts {
            received: count(row.get("reports_received")),
            stored: count(row.get("reports_stored")),
            rejected: count(row.get("reports_rejected")),
        },
        expected_patients: validation
            .as_ref()
            .map(|v| count(v.get::<i32, _>("patients_expected").into())),
        rejections,
        rejections_truncated: truncated,
        validated_digest: validation.as_ref().map(|v| v.get("digest")),
        validated_at: validation.as_ref().map(|v| v.get("validated_at")),
        activation_requested_at: validation
            .as_ref()
            .and_then(|v| v.get("activation_requested_at")),
        stored: stored_files(connection).await?,
    })
}

/// The API's own manifest of the stored files: every stored file once, the latest under its name, as
/// verify compares them. Not while a completed upload waits for its ingest (its ingest marks the
/// status for another write). Open uploads do not hold it back: they store nothing until they
/// complete, and an uploader killed after a creation leaves one open that nobody will finish.
async fn stored_files(
    connection: &mut sqlx::PgConnection,
) -> Result<Option<StoredFiles>, ApiError> {
    let busy: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sfm.uploads WHERE state = 'complete')")
            .fetch_one(&mut *connection)
            .await
            .map_err(|e| database("look for open uploads", e))?;
    if busy {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT DISTINCT ON (lower(file_name)) file_name, kind, size_bytes, encode(sha256, 'hex') AS sha256
         FROM sfm.stored_files ORDER BY lower(file_name), stored_at DESC",
    )
    .fetch_all(&mut *connection)
    .await
    .map_err(|e| database("read the stored files", e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let files: Vec<ManifestFile> = rows
        .iter()
        .map(|r| ManifestFile {
            path: r.get("file_name"),
            file_type: kind_file_type(r.get("kind")),
            size: count(r.get("size_bytes")),
            sha256: r.get("sha256"),
        })
        .collect();
    let manifest = Manifest::new(files);
    Ok(Some(StoredFiles {
        files: manifest.files.len() as u64,
        digest: manifest.digest(),
    }))
}

/// The file type of a `sfm.stored_files.kind`.
pub(super) fn kind_file_type(kind: &str) -> FileType {
    match kind {
        "organisation" => FileType::ExportData,
        "report" => FileType::Report,
        _ => FileType::Patient,
    }
}

/// `status.migration` as the CRD has it: counts, no personal data, the key id as the session.
pub fn migration_block(status: &MigrationStatus, key_id: Option<&str>) -> MigrationProgress {
    let counts = |c: &Counts| RecordCounts {
        received: c.received as i64,
        stored: c.stored as i64,
        rejected: c.rejected as i64,
    };
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    MigrationProgress {
        session: key_id.map(str::to_owned),
        organisation_stored: status.organisation_stored,
        users: counts(&status.users),
        patients: counts(&status.patients),
        reports: counts(&status.reports),
        expected_patients: status.expected_patients.map(|n| n as i64),
        validated_digest: status.validated_digest.clone(),
        validated_at: status.validated_at.map(at),
        activation_requested_at: status.activation_requested_at.map(at),
        stored: status.stored.as_ref().map(|s| StoredManifest {
            files: s.files as i64,
            digest: s.digest.clone(),
        }),
    }
}

/// The advisory lock, in a staging database, that orders the writes of its `status.migration`.
const STATUS_WRITE_LOCK: &str = "sfm-migration-api/status.migration";

/// Writes `status.migration` of one database, recomputed from its staging database.
pub async fn write_status(
    state: &AppState,
    db: &MigrationDatabase,
    pool: &sqlx::PgPool,
) -> Result<(), ApiError> {
    // The writers of one database (this replica's flush loop, verify and activate, the other
    // replicas) take turns under a lock in its staging database, each reading its snapshot after the
    // previous one's write reached the API server. Without it a progress write read just before a
    // verify committed could land after the verify's own write and take `validatedDigest` away
    // again (the operator then reports ValidationDigestMismatch until the next write).
    let mut turn = pool
        .begin()
        .await
        .map_err(|e| database("begin the status write", e))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(STATUS_WRITE_LOCK)
        .execute(&mut *turn)
        .await
        .map_err(|e| database("wait for the turn to write the status", e))?;
    let status = read_status(&mut turn, db).await?;
    let key_id = db.status.as_ref().and_then(|s| s.active_key.clone());
    let api: Api<MigrationDatabase> =
        Api::namespaced(state.kube.clone(), &db.namespace().unwrap_or_default());
    // The API's own part of the status, and nothing else: the operator owns every other field.
    let status = MigrationDatabaseStatus {
        migration: Some(migration_block(&status, key_id.as_deref())),
        ..Default::default()
    };
    apply_status(&api, &db.name_any(), FIELD_MANAGER, &status)
        .await
        .map_err(|e| ApiError::internal("write status.migration", e))?;
    turn.commit()
        .await
        .map_err(|e| database("end the status write", e))?;
    state.metrics.status_writes.inc();
    Ok(())
}

/// Writes the status of every database marked dirty, at most once a second each, and never more
/// than about 5% of the time: the counts are recomputed from the staging database, which takes longer
/// as it fills (close to a second at 80,000 patients), so a database whose last refresh took `d` waits
/// `20 × d` (at most a minute) before the next one.
pub async fn flush_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut not_before: std::collections::HashMap<uuid::Uuid, tokio::time::Instant> =
        Default::default();
    loop {
        interval.tick().await;
        // A pause that has passed holds nothing back: forget it, so the map stays as small as the
        // set of databases written in the last minute.
        let tick = tokio::time::Instant::now();
        not_before.retain(|_, at| *at > tick);
        let dirty: HashSet<uuid::Uuid> =
            std::mem::take(&mut *state.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        for uid in dirty {
            let now = tokio::time::Instant::now();
            if not_before.get(&uid).is_some_and(|at| now < *at) {
                state.mark_dirty(uid);
                continue;
            }
            let result = async {
                let db = state
                    .directory
                    .database_by_uid(uid)
                    .await?
                    .ok_or_else(|| ApiError::new(ProblemCode::NotFound))?;
                let pool = state.directory.pool(&db).await?;
                match write_status(&state, &db, &pool).await {
                    // The operator closed the migrator after the cache last saw the database (it
                    // writes `Activating` first): nothing more to write, and nothing to retry.
                    Err(error) => match switch::closed_meanwhile(&state, &db).await {
                        Some(_) => {
                            state.directory.forget_pool(uid).await;
                            Err(ApiError::new(ProblemCode::MigrationOperational))
                        }
                        None => Err(error),
                    },
                    written => written,
                }
            }
            .await;
            // Half a tick early, so a 1 s pause is not rounded up to the next tick.
            let pause = refresh_pause(now.elapsed()) - Duration::from_millis(500);
            not_before.insert(uid, now + pause);
            // A database past staging has no migrator to recompute `status.migration` from: it
            // keeps the last one written (at activate, unless the operator switched before that
            // write, when it lacks the activation request; the phase says the rest).
            match result.map_err(|error| error.code()) {
                Ok(()) | Err(ProblemCode::NotFound | ProblemCode::MigrationOperational) => {}
                // Every connection of the replica's budget is in use (a wave): the next tick.
                Err(ProblemCode::Busy) => state.mark_dirty(uid),
                Err(code) => {
                    tracing::warn!(database_uid = %uid, %code, "status.migration not written; retrying");
                    state.mark_dirty(uid);
                }
            }
        }
    }
}

/// How long after a refresh that took `took` the next one of the same database may start.
fn refresh_pause(took: Duration) -> Duration {
    (took * 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn refreshes_of_a_big_database_are_spaced_by_their_cost() {
        assert_eq!(
            super::refresh_pause(Duration::from_millis(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            super::refresh_pause(Duration::from_millis(900)),
            Duration::from_secs(18)
        );
        assert_eq!(
            super::refresh_pause(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
    }
}
