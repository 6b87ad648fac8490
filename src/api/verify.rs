//! The end of a migration: verify (step 33: the validation record, written only for an exact match
//! of the client's manifest with what is stored, nothing pending) and activate (step 34: the
//! request the operator's activation rule waits for). Both decide on the database read fresh, and
//! write `status.migration` at once, since the operator's rule reads `validatedDigest`.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::sync::Arc;

use super::auth::Session;
use super::error::database;
use super::progress::{count, kind_file_type, session, write_status};
use super::{ApiError, AppState, switch};
use crate::contract::{
    self, ActivateResponse, FileType, MAX_MANIFEST_BODY_BYTES, MAX_MISMATCHES_LISTED, Manifest,
    ManifestMismatches, ProblemCode, RejectedFile, VerifyResponse,
};
use crate::format::layout::reports_never_uploaded;
use crate::format::xml::{XmlLimits, parse_organisation};

/// `POST /api/v1/verify`: exact manifest match → validation record and `validatedDigest`.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let session = session(&state, &method, &headers, contract::PATH_VERIFY).await?;
    switch::ensure_open(&session.database)?;
    // Decided on the database as it is now, not as cached (a verify is rare, one read is cheap):
    // once the operator wrote `Activating`, any manifest is answered with the end of the migration.
    switch::refuse_if_closed(&state, &session.database).await?;
    let verified = verify_in_session(&state, &session, body).await;
    switch::explain(&state, &session.database, verified).await
}

/// The verify once the key and the database are known.
async fn verify_in_session(
    state: &AppState,
    session: &Session,
    body: Body,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, MAX_MANIFEST_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(ProblemCode::UploadTooLarge).detail("the manifest is over 256 MiB")
        })?;
    let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(ProblemCode::ManifestInvalid).detail(format!(
            "the body is not a manifest (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    manifest.validate()?;
    let digest = manifest.digest();

    let mut tx = session
        .pool
        .begin()
        .await
        .map_err(|e| database("begin the verify", e))?;
    // Nothing is stored or uploaded while the comparison runs: every write takes ROW EXCLUSIVE on
    // uploads, stored files and rejections as it begins (`guard::begin`), so a SHARE lock on
    // uploads and rejections waits for those in flight and holds back the next. (Not on stored
    // files: a SHARE lock needs UPDATE or DELETE there, which the migrator does not have, the
    // audit trail being append-only.)
    sqlx::query("LOCK TABLE sfm.uploads, sfm.rejections IN SHARE MODE")
        .execute(&mut *tx)
        .await
        .map_err(|e| database("lock for the verify", e))?;
    let existing: Option<String> =
        sqlx::query_scalar("SELECT encode(manifest_sha256, 'hex') FROM sfm.validation")
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| database("read the validation record", e))?;
    if let Some(existing) = existing {
        drop(tx);
        if existing != digest {
            return Err(ApiError::new(ProblemCode::MigrationValidated)
                .detail("the migration is validated with another manifest"));
        }
        write_status(state, &session.database, &session.pool).await?;
        return verify_response(session, &manifest, &digest).await;
    }

    let stored = sqlx::query(
        "SELECT DISTINCT ON (lower(file_name)) file_name, kind, size_bytes, encode(sha256, 'hex') AS sha256
         FROM sfm.stored_files ORDER BY lower(file_name), stored_at DESC",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database("read the stored files", e))?;
    let stored: HashMap<String, (String, FileType, u64, String)> = stored
        .iter()
        .map(|r| {
            let name: String = r.get("file_name");
            let kind: String = r.get("kind");
            let size: i64 = r.get("size_bytes");
            (
                name.to_ascii_lowercase(),
                (name, kind_file_type(&kind), count(size), r.get("sha256")),
            )
        })
        .collect();
    let rejected = sqlx::query(
        "SELECT DISTINCT ON (lower(file_name)) file_name, reason_code FROM sfm.rejections WHERE NOT resolved ORDER BY lower(file_name), id DESC",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database("read the rejections", e))?;
    let rejected: HashMap<String, (String, ProblemCode)> = rejected
        .iter()
        .map(|r| {
            let name: String = r.get("file_name");
            let code: String = r.get("reason_code");
            (
                name.to_ascii_lowercase(),
                (
                    name,
                    ProblemCode::from_reason_code(&code).unwrap_or(ProblemCode::Internal),
                ),
            )
        })
        .collect();
    let pending = sqlx::query(
        "SELECT file_name, bool_and(state <> 'complete') AS only_open FROM sfm.uploads
         WHERE state = 'complete' OR (state IN ('created', 'receiving') AND expires_at > now())
         GROUP BY file_name",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database("read the pending uploads", e))?;
    // A validation must never be followed by a file stored after it. An upload complete but not
    // ingested yet is pending, named in the manifest or not: its ingest may store it. An open
    // upload is pending when the manifest lists its file and that file is not stored as listed:
    // the client is still sending it. Any other open upload is a leftover (an uploader killed
    // after a creation and before it wrote the upload's URL down starts that file anew; or a file
    // outside the export): it is deleted with the validation, in this transaction, so nothing can
    // come of it.
    let pending: HashMap<String, (String, bool)> = pending
        .iter()
        .map(|r| {
            let name: String = r.get("file_name");
            (name.to_ascii_lowercase(), (name, r.get("only_open")))
        })
        .collect();
    let mut leftovers: Vec<String> = Vec::new();

    let mut mismatches = ManifestMismatches::default();
    let mut listed = HashSet::new();
    let push = |list: &mut Vec<String>, path: &str, truncated: &mut bool| {
        if list.len() < MAX_MISMATCHES_LISTED {
            list.push(path.to_owned());
        } else {
            *truncated = true;
        }
    };
    let stored_as_listed = |key: &str, file: &contract::ManifestFile| {
        stored
            .get(key)
            .is_some_and(|(name, file_type, size, sha256)| {
                *name == file.path
                    && *file_type == file.file_type
                    && *size == file.size
                    && *sha256 == file.sha256
            })
    };
    for file in &manifest.files {
        let key = file.path.to_ascii_lowercase();
        listed.insert(key.clone());
        if let Some((name, true)) = pending.get(&key)
            && stored_as_listed(&key, file)
        {
            leftovers.push(name.clone());
        } else if pending.contains_key(&key) {
            push(
                &mut mismatches.pending,
                &file.path,
                &mut mismatches.truncated,
            );
        } else if let Some((_, code)) = rejected.get(&key) {
            if mismatches.rejected.len() < MAX_MISMATCHES_LISTED {
                mismatches.rejected.push(RejectedFile {
                    path: file.path.clone(),
                    code: *code,
                });
            } else {
                mismatches.truncated = true;
            }
        } else if let Some((name, file_type, size, sha256)) = stored.get(&key) {
            if *name != file.path
                || *file_type != file.file_type
                || *size != file.size
                || *sha256 != file.sha256
            {
                push(
                    &mut mismatches.digest_mismatch,
                    &file.path,
                    &mut mismatches.truncated,
                );
            }
        } else {
            push(
                &mut mismatches.missing,
                &file.path,
                &mut mismatches.truncated,
            );
        }
    }
    // A report `ExportData.xml` names (`RapportFil`) but no stored file holds is missing as well.
    let xml_limits = state.config.limits.format.xml.clone();
    for path in reports_not_stored(&mut tx, xml_limits).await? {
        push(&mut mismatches.missing, &path, &mut mismatches.truncated);
    }
    for (key, (name, only_open)) in &pending {
        if listed.contains(key) {
            continue;
        }
        if *only_open {
            leftovers.push(name.clone());
        } else {
            push(&mut mismatches.pending, name, &mut mismatches.truncated);
        }
    }
    for (key, (name, ..)) in &stored {
        if !listed.contains(key) && !pending.contains_key(key) {
            push(&mut mismatches.extra, name, &mut mismatches.truncated);
        }
    }
    for (key, (name, code)) in &rejected {
        // A file NHN's uploader sent as `Unknown` (outside the export's folders) that the manifest
        // does not name was never part of the export: it neither blocks nor counts.
        if !listed.contains(key) && *code != ProblemCode::FileTypeUnknown {
            if mismatches.rejected.len() < MAX_MISMATCHES_LISTED {
                mismatches.rejected.push(RejectedFile {
                    path: name.clone(),
                    code: *code,
                });
            } else {
                mismatches.truncated = true;
            }
        }
    }
    if !mismatches.is_empty() {
        drop(tx);
        let mut error = ApiError::new(ProblemCode::ManifestMismatch).detail(format!(
            "{} missing, {} extra, {} with another digest, {} rejected, {} pending",
            mismatches.missing.len(),
            mismatches.extra.len(),
            mismatches.digest_mismatch.len(),
            mismatches.rejected.len(),
            mismatches.pending.len()
        ));
        error.problem.mismatches = Some(mismatches);
        return Err(error);
    }

    sqlx::query(
        "DELETE FROM sfm.uploads WHERE state IN ('created', 'receiving') AND file_name = ANY($1)",
    )
    .bind(&leftovers)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("delete the leftover uploads", e))?;
    if !leftovers.is_empty() {
        tracing::info!(database = %session.database_name(), leftovers = leftovers.len(), "open uploads of files stored as listed deleted with the validation");
    }
    let patients_expected = manifest
        .files
        .iter()
        .filter(|f| f.file_type == FileType::Patient)
        .count() as i32;
    let digest_bytes =
        hex::decode(&digest).map_err(|e| ApiError::internal("decode the digest", e))?;
    sqlx::query(
        "INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored, patients_expected, patients_stored, files_rejected, migration_key_id, helseid_client_id)
         SELECT $1, u.n, u.n, $2, (SELECT count(*) FROM sfm.patients)::int, 0, $3, $4 FROM (SELECT count(*)::int AS n FROM sfm.users) u",
    )
    .bind(digest_bytes)
    .bind(patients_expected)
    .bind(&session.key_id)
    .bind(&session.helseid_client)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("write the validation record", e))?;
    tx.commit()
        .await
        .map_err(|e| database("commit the validation record", e))?;
    tracing::info!(database = %session.database_name(), %digest, files = manifest.files.len(), "migration validated");
    write_status(state, &session.database, &session.pool).await?;
    verify_response(session, &manifest, &digest).await
}

/// The `RapportFil` paths of the stored organisation file whose report no stored report file holds
/// (matched by id, see [`reports_never_uploaded`]).
async fn reports_not_stored(
    tx: &mut sqlx::PgConnection,
    limits: XmlLimits,
) -> Result<Vec<String>, ApiError> {
    let organisation: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT content FROM sfm.documents WHERE kind = 'organisation_data' ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| database("read the organisation file", e))?;
    let Some(organisation) = organisation else {
        return Ok(Vec::new());
    };
    let uploaded: Vec<String> = sqlx::query_scalar(
        "SELECT file_name FROM sfm.stored_files WHERE kind = 'report'
         UNION SELECT entry_name FROM sfm.documents WHERE kind = 'report'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database("read the stored reports", e))?;
    // The stored document parses as it did at ingest; XML work runs on a blocking thread.
    let named = tokio::task::spawn_blocking(move || {
        parse_organisation(&organisation, &limits)
            .map(|parsed| parsed.value.reports.into_iter().map(|r| r.file).collect())
    })
    .await
    .map_err(|e| ApiError::internal("read the organisation file", e))?
    .map_err(|e| ApiError::internal("read the organisation file", e))?;
    let named: Vec<String> = named;
    Ok(reports_never_uploaded(
        named.iter().map(String::as_str),
        uploaded.iter().map(String::as_str),
    ))
}

async fn verify_response(
    session: &Session,
    manifest: &Manifest,
    digest: &str,
) -> Result<Response, ApiError> {
    let row = sqlx::query(
        "SELECT validated_at, users_stored, patients_stored, (SELECT count(*) FROM sfm.stored_files WHERE kind = 'report') AS reports FROM sfm.validation",
    )
    .fetch_one(&session.pool)
    .await
    .map_err(|e| database("read the validation record", e))?;
    let validated_at: DateTime<Utc> = row.get("validated_at");
    Ok(axum::Json(VerifyResponse {
        validated: true,
        digest: digest.to_owned(),
        validated_at,
        files: manifest.files.len() as u64,
        users: count(row.get::<i32, _>("users_stored").into()),
        patients: count(row.get::<i32, _>("patients_stored").into()),
        reports: count(row.get("reports")),
    })
    .into_response())
}

/// `POST /api/v1/activate`: records the request; the operator switches under its rule.
pub async fn activate(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = session(&state, &method, &headers, contract::PATH_ACTIVATE).await?;
    // Decided on the database as it is now, not as cached: once the operator wrote `Activating`
    // the request is recorded and the migrator is being closed.
    switch::refuse_if_closed(&state, &session.database).await?;
    let at: Result<Option<DateTime<Utc>>, ApiError> = sqlx::query_scalar(
        "UPDATE sfm.validation SET activation_requested_at = COALESCE(activation_requested_at, greatest(now(), validated_at)) RETURNING activation_requested_at",
    )
    .fetch_optional(&session.pool)
    .await
    .map_err(|e| database("record the activation request", e));
    let at = switch::explain(&state, &session.database, at).await?;
    let at = at.ok_or_else(|| {
        ApiError::new(ProblemCode::NotValidated).detail("verify the manifest first")
    })?;
    tracing::info!(database = %session.database_name(), "activation requested");
    // The request is recorded, and that row is what the operator's rule reads: the answer is 202
    // whatever becomes of the status write, which only shows the request and wakes the operator.
    // A pass already under way may read the row first, write `Activating` and revoke the migrator;
    // the write's read then fails. The flush loop writes the status later, or finds the switch.
    if let Err(error) = write_status(&state, &session.database, &session.pool).await {
        tracing::info!(
            database = %session.database_name(),
            code = %error.code(),
            "activation recorded; status.migration left to the next flush"
        );
        state.mark_dirty(session.uid);
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(ActivateResponse {
            activation_requested_at: at,
        }),
    )
        .into_response())
}
