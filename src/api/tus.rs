//! tus 1.0 at `/files` and `/v2/files` (where NHN's 2026 uploader sends DPoP uploads): core,
//! creation, creation-with-upload, termination, checksum and expiration. NHN's uploader is served
//! unchanged (`../shared/sfm-format/nhn-uploader.md`): a HelseID token without a key
//! ([`super::uploader`]), its `FileType` names, a `SessionId` GUID recorded with each upload,
//! zero-length files completed by their `POST`, `Location` under the collection the upload was made
//! at, and the tus headers spelled in their canonical case (the server writes HTTP/1.1 header names
//! title-cased, [`super::serve`]).
//!
//! The protocol handler keeps no state of its own: every upload is a row of `sfm.uploads` in its
//! organisation's staging database with its bytes in `sfm.upload_chunks`. A `PATCH` checks the offset
//! and appends under the row's lock (`SELECT ... FOR UPDATE`), so appends landing on different
//! replicas serialise and none is lost or stored twice. The upload id names the database, so any
//! replica finds it. The completing `PATCH` hands the file to [`super::ingest`].
//!
//! A file that comes whole in its `POST` (creation-with-upload, the usual case for a patient file)
//! skips the chunk table: [`super::ingest::ingest_whole`] writes the upload row, the ingest and its
//! outcome in one transaction, so there is nothing to resume and nothing acknowledged before it is
//! stored.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use uuid::Uuid;

use super::auth::{self, Session};
use super::error::database;
use super::guard::check_creation;
use super::ingest;
use super::switch;
use super::tus_request::{
    content_type_is_offset_stream, echo_metadata, header_u64, parse_checksum, put, read_body,
    require_tus, tus_headers, verify_checksum,
};
use super::uploads::{self, NewUpload, UploadRow, UploadState};
use super::{ApiError, AppState, guard, keys};
use crate::contract::{
    self, CreationMetadata, FileType, IngestState, ProblemCode, UploadChecksum, UploadId,
    decode_upload_metadata, format_http_date,
};

/// `OPTIONS /files`: what this server speaks. Public.
pub async fn options(State(state): State<Arc<AppState>>) -> Response {
    let mut headers = tus_headers();
    put(
        &mut headers,
        contract::HEADER_TUS_VERSION,
        contract::TUS_VERSION,
    );
    put(
        &mut headers,
        contract::HEADER_TUS_EXTENSION,
        contract::TUS_EXTENSIONS,
    );
    put(
        &mut headers,
        contract::HEADER_TUS_MAX_SIZE,
        state.config.limits.max_upload_bytes.to_string(),
    );
    put(
        &mut headers,
        contract::HEADER_TUS_CHECKSUM_ALGORITHM,
        contract::TUS_CHECKSUM_ALGORITHMS,
    );
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// A refused request may leave its body unread: the connection is closed after the answer so the
/// client does not send its next request into the rest of that body.
fn close_on_error(result: Result<Response, ApiError>) -> Result<Response, ApiError> {
    result.map_err(|error| error.header("connection", "close"))
}

/// `POST /files`: creation (and creation-with-upload).
pub async fn create(
    state: State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    close_on_error(create_upload(state, method, uri, headers, body).await)
}

async fn create_upload(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    let length = header_u64(&headers, contract::HEADER_UPLOAD_LENGTH)?.ok_or_else(|| {
        ApiError::new(ProblemCode::HeaderInvalid)
            .detail("Upload-Length is required (deferred length is not offered)")
    })?;
    if length > state.config.limits.max_upload_bytes {
        return Err(ApiError::new(ProblemCode::UploadTooLarge).detail(format!(
            "Upload-Length is over Tus-Max-Size ({} bytes)",
            state.config.limits.max_upload_bytes
        )));
    }
    let metadata_header = match headers.get(contract::HEADER_UPLOAD_METADATA) {
        None => "",
        Some(v) => v.to_str().map_err(|_| {
            ApiError::new(ProblemCode::MetadataInvalid).detail("Upload-Metadata is not ASCII")
        })?,
    };
    let pairs = decode_upload_metadata(metadata_header)?;
    let metadata = CreationMetadata::from_pairs(&pairs)?;

    let collection = contract::files_collection(uri.path());
    let request = auth::request_facts(&state, &method, &headers, collection);
    let session = auth::session(&state, &request).await?;
    switch::ensure_open(&session.database)?;
    let database = session.database.clone();
    let created = create_in_session(
        &state, &headers, collection, session, metadata, length, body,
    )
    .await;
    switch::explain(&state, &database, created).await
}

/// The creation once the key and the database are known: the upload row, and for a body that is
/// the whole file, the ingest in the same transaction.
async fn create_in_session(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    collection: &str,
    session: Session,
    metadata: CreationMetadata,
    length: u64,
    body: Body,
) -> Result<Response, ApiError> {
    let has_body = content_type_is_offset_stream(headers);
    let initial = if has_body {
        read_body(body, headers, length, state.config.limits.max_chunk_bytes).await?
    } else {
        Bytes::new()
    };
    let checksum = parse_checksum(headers)?;

    let expires_at = Utc::now()
        + chrono::Duration::from_std(state.config.limits.upload_ttl)
            .unwrap_or(chrono::Duration::hours(24));
    let mut kept = serde_json::json!({
        contract::METADATA_NAME: metadata.name,
        contract::METADATA_FILE_TYPE: file_type_text(metadata.file_type),
        contract::METADATA_CONTENT_TYPE: contract::CONTENT_TYPE_OCTET_STREAM,
    });
    if let Some(upload_session) = metadata.session {
        kept[uploads::METADATA_UPLOAD_SESSION] = upload_session.to_string().into();
    }
    let new = NewUpload {
        id: Uuid::new_v4(),
        file_name: metadata.name.clone(),
        file_type: metadata.file_type,
        length,
        expires_at,
        metadata: kept,
    };
    let upload = new.id;
    // NHN's uploader never sends data with its creation: a zero-length file is complete with it.
    let whole = has_body && initial.len() as u64 == length && length > 0;
    if whole && let Some(checksum) = &checksum {
        verify_checksum(checksum, &initial)?;
    }
    let mut whole_outcome = None;
    if whole {
        // The usual case for a patient file: it came whole in its creation request. The upload row,
        // the ingest and its outcome go in one transaction and no chunk is stored; if this replica
        // dies before the commit, nothing was acknowledged and the client sends the file again.
        whole_outcome =
            Some(ingest::ingest_whole(state.clone(), session.clone(), new, initial.clone()).await?);
    } else {
        let mut tx = guard::begin(&session.pool).await?;
        check_creation(&mut tx, state, &session, metadata.file_type).await?;
        new.insert(&mut tx, &session, None).await?;
        tx.commit()
            .await
            .map_err(|e| database("create the upload", e))?;
    }
    state.metrics.uploads_created.inc();
    state.mark_dirty(session.uid);
    // The upload's id stays out of info-level lines: with the database's UID it makes the upload's
    // URL (which alone opens nothing, but is nobody's business).
    tracing::info!(database = %session.database_name(), file_type = %file_type_text(metadata.file_type), key_id = %session.key_id, "upload created");
    tracing::debug!(%upload, "upload created");

    let id = UploadId {
        database: session.uid,
        upload,
    };
    let mut response_headers = tus_headers();
    put(
        &mut response_headers,
        contract::HEADER_LOCATION,
        format!("{}{collection}/{id}", auth::base_url(state, headers)),
    );
    put(
        &mut response_headers,
        contract::HEADER_UPLOAD_EXPIRES,
        format_http_date(expires_at),
    );
    let mut offset = 0;
    if let Some((ingest_state, code)) = whole_outcome {
        state.metrics.bytes_received.inc_by(length);
        state.metrics.uploads_completed.inc();
        offset = length;
        put(
            &mut response_headers,
            contract::HEADER_INGEST_STATE,
            ingest_state.as_str(),
        );
        if let Some(code) = code {
            put(
                &mut response_headers,
                contract::HEADER_REJECTION_CODE,
                code.as_str(),
            );
        }
    } else if (has_body && !initial.is_empty()) || length == 0 {
        let outcome = append(state, &session, upload, 0, initial, checksum).await?;
        offset = outcome.offset;
        if outcome.completed {
            finish(
                state,
                &session,
                upload,
                &metadata_file_type(&outcome.row),
                &mut response_headers,
            )
            .await;
        }
    }
    put(
        &mut response_headers,
        contract::HEADER_UPLOAD_OFFSET,
        offset.to_string(),
    );
    Ok((StatusCode::CREATED, response_headers).into_response())
}

fn metadata_file_type(row: &UploadRow) -> Option<FileType> {
    row.file_type.parse().ok()
}

/// The `FileType` as kept with the upload: ours, or NHN's `Unknown`.
fn file_type_text(file_type: Option<FileType>) -> &'static str {
    file_type.map_or(contract::FILE_TYPE_UNKNOWN, FileType::as_str)
}

/// The session allowed to touch an upload, authenticated before anything of the upload is read: the
/// key sent with this request, or the HelseID token alone for a database that accepts that (never
/// the upload's URL alone), for the upload's database.
async fn upload_session(
    state: &AppState,
    id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Session, UploadRow), ApiError> {
    let id: UploadId = id
        .parse()
        .map_err(|_| ApiError::new(ProblemCode::UploadNotFound))?;
    let path = format!("{}/{id}", contract::files_collection(uri.path()));
    let request = auth::request_facts(state, method, headers, &path);
    let session = match keys::header_key(headers)? {
        Some(token) => auth::session_for_upload(state, &token, id.database, &request).await?,
        None => {
            let session = auth::session(state, &request).await?;
            // The token's database, and no other: an upload of another database is as good as
            // none to this caller.
            if session.uid != id.database {
                return Err(ApiError::new(ProblemCode::UploadNotFound));
            }
            session
        }
    };
    let row = switch::explain(
        state,
        &session.database,
        uploads::fetch(&session.pool, id.upload).await,
    )
    .await?;
    auth::check_upload_creator(state, &session, &row.migration_key_id).await?;
    Ok((session, row))
}

/// `HEAD /files/{id}`: where the upload stands.
pub async fn head(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    let (session, row) = upload_session(&state, &id, &method, &uri, &headers).await?;
    if UploadState::of(&row.state).is_open() && row.expires_at <= Utc::now() {
        return Err(ApiError::new(ProblemCode::UploadExpired));
    }
    let mut response = tus_headers();
    put(
        &mut response,
        contract::HEADER_UPLOAD_OFFSET,
        row.upload_offset.to_string(),
    );
    put(
        &mut response,
        contract::HEADER_UPLOAD_LENGTH,
        row.declared_length.to_string(),
    );
    put(&mut response, contract::HEADER_CACHE_CONTROL, "no-store");
    put(
        &mut response,
        contract::HEADER_UPLOAD_EXPIRES,
        format_http_date(row.expires_at),
    );
    put(
        &mut response,
        contract::HEADER_UPLOAD_METADATA,
        echo_metadata(&row.metadata),
    );
    ingest_state_headers(&session, &row, &mut response).await?;
    Ok((StatusCode::OK, response).into_response())
}

async fn ingest_state_headers(
    session: &Session,
    row: &UploadRow,
    response: &mut HeaderMap,
) -> Result<(), ApiError> {
    let state = match UploadState::of(&row.state) {
        UploadState::Complete => IngestState::Pending,
        UploadState::Ingested => IngestState::Stored,
        UploadState::Rejected => IngestState::Rejected,
        _ => return Ok(()),
    };
    put(response, contract::HEADER_INGEST_STATE, state.as_str());
    if state == IngestState::Rejected {
        let code: Option<String> = sqlx::query_scalar(
            "SELECT reason_code FROM sfm.rejections WHERE upload_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(row.id)
        .fetch_optional(&session.pool)
        .await
        .map_err(|e| database("read the rejection", e))?;
        if let Some(code) = code {
            put(
                response,
                contract::HEADER_REJECTION_CODE,
                ProblemCode::from_reason_code(&code)
                    .unwrap_or(ProblemCode::Internal)
                    .as_str(),
            );
        }
    }
    Ok(())
}

/// `PATCH /files/{id}`: appends at the server's offset, under the row lock.
pub async fn patch(
    state: State<Arc<AppState>>,
    id: Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    close_on_error(append_request(state, id, method, uri, headers, body).await)
}

async fn append_request(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    if !content_type_is_offset_stream(&headers) {
        return Err(ApiError::new(ProblemCode::ContentTypeInvalid)
            .detail("PATCH needs Content-Type: application/offset+octet-stream"));
    }
    let offset = header_u64(&headers, contract::HEADER_UPLOAD_OFFSET)?.ok_or_else(|| {
        ApiError::new(ProblemCode::HeaderInvalid).detail("Upload-Offset is required")
    })?;
    let checksum = parse_checksum(&headers)?;
    let (session, row) = upload_session(&state, &id, &method, &uri, &headers).await?;
    switch::ensure_open(&session.database)?;
    let database = session.database.clone();
    let appended = append_in_session(&state, &headers, &session, row, offset, checksum, body).await;
    switch::explain(&state, &database, appended).await
}

/// The append once the upload and its session are known.
async fn append_in_session(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    session: &Session,
    row: UploadRow,
    offset: u64,
    checksum: Option<UploadChecksum>,
    body: Body,
) -> Result<Response, ApiError> {
    if UploadState::of(&row.state).is_open() && row.expires_at <= Utc::now() {
        return Err(ApiError::new(ProblemCode::UploadExpired));
    }
    // The offset is checked again under the row lock; checking it first answers a stale PATCH with
    // 409 before its body is read.
    if UploadState::of(&row.state).is_open() && offset != row.upload_offset as u64 {
        // Drain (bounded) so the connection stays usable for the client's next request.
        let _ = axum::body::to_bytes(body, state.config.limits.max_chunk_bytes).await;
        return Err(ApiError::new(ProblemCode::UploadOffsetMismatch)
            .detail(format!(
                "the server holds {} bytes; HEAD and resume from there",
                row.upload_offset
            ))
            .header(
                contract::HEADER_UPLOAD_OFFSET,
                row.upload_offset.to_string(),
            ));
    }
    let remaining = (row.declared_length - row.upload_offset).max(0) as u64;
    let body = read_body(
        body,
        headers,
        remaining,
        state.config.limits.max_chunk_bytes,
    )
    .await?;
    if UploadState::of(&row.state).is_open()
        && offset == 0
        && !body.is_empty()
        && body.len() as u64 == row.declared_length as u64
    {
        return whole_in_one_patch(state, session, &row, body, checksum).await;
    }
    let outcome = append(state, session, row.id, offset, body, checksum).await?;
    let mut response = tus_headers();
    put(
        &mut response,
        contract::HEADER_UPLOAD_OFFSET,
        outcome.offset.to_string(),
    );
    put(
        &mut response,
        contract::HEADER_UPLOAD_EXPIRES,
        format_http_date(outcome.row.expires_at),
    );
    if outcome.completed {
        finish(
            state,
            session,
            row.id,
            &metadata_file_type(&outcome.row),
            &mut response,
        )
        .await;
    } else if !UploadState::of(&outcome.row.state).is_open() {
        ingest_state_headers(session, &outcome.row, &mut response).await?;
    }
    Ok((StatusCode::NO_CONTENT, response).into_response())
}

/// A `PATCH` with the whole file, from offset 0: ingested in place, no chunk stored
/// ([`ingest::ingest_in_place`]); answered like any completing `PATCH`.
async fn whole_in_one_patch(
    state: &Arc<AppState>,
    session: &Session,
    row: &UploadRow,
    body: Bytes,
    checksum: Option<UploadChecksum>,
) -> Result<Response, ApiError> {
    if let Some(checksum) = &checksum {
        verify_checksum(checksum, &body)?;
    }
    let length = body.len() as u64;
    let (ingest_state, code) =
        ingest::ingest_in_place(state.clone(), session.clone(), row.id, body).await?;
    state.metrics.bytes_received.inc_by(length);
    state.metrics.uploads_completed.inc();
    let mut response = tus_headers();
    put(
        &mut response,
        contract::HEADER_UPLOAD_OFFSET,
        length.to_string(),
    );
    put(
        &mut response,
        contract::HEADER_UPLOAD_EXPIRES,
        format_http_date(row.expires_at),
    );
    put(
        &mut response,
        contract::HEADER_INGEST_STATE,
        ingest_state.as_str(),
    );
    if let Some(code) = code {
        put(
            &mut response,
            contract::HEADER_REJECTION_CODE,
            code.as_str(),
        );
    }
    Ok((StatusCode::NO_CONTENT, response).into_response())
}

/// What one append did.
struct Appended {
    offset: u64,
    /// This append received the last byte.
    completed: bool,
    row: UploadRow,
}

/// Checks and appends one body at `offset` in one transaction under the upload's row lock; when the
/// last byte arrives, the file's SHA-256 is computed and the upload marked complete.
async fn append(
    state: &AppState,
    session: &Session,
    upload: Uuid,
    offset: u64,
    body: Bytes,
    checksum: Option<UploadChecksum>,
) -> Result<Appended, ApiError> {
    if let Some(checksum) = &checksum {
        verify_checksum(checksum, &body)?;
    }
    let mut tx = guard::begin(&session.pool).await?;
    let row = uploads::lock(&mut tx, upload).await?;
    let server_offset = row.upload_offset as u64;
    if !UploadState::of(&row.state).is_open() {
        if offset == server_offset && body.is_empty() {
            return Ok(Appended {
                offset: server_offset,
                completed: false,
                row,
            });
        }
        return Err(ApiError::new(ProblemCode::UploadOffsetMismatch)
            .detail("the upload is already complete")
            .header(contract::HEADER_UPLOAD_OFFSET, server_offset.to_string()));
    }
    if row.expires_at <= Utc::now() {
        return Err(ApiError::new(ProblemCode::UploadExpired));
    }
    if offset != server_offset {
        return Err(ApiError::new(ProblemCode::UploadOffsetMismatch)
            .detail(format!(
                "the server holds {server_offset} bytes; HEAD and resume from there"
            ))
            .header(contract::HEADER_UPLOAD_OFFSET, server_offset.to_string()));
    }
    let new_offset = server_offset + body.len() as u64;
    if new_offset > row.declared_length as u64 {
        return Err(
            ApiError::new(ProblemCode::UploadTooLarge).detail("the body goes past Upload-Length")
        );
    }
    guard::checked(&mut tx, session.uid).await?;
    uploads::add_chunk(&mut tx, upload, server_offset, &body).await?;
    let completed = new_offset == row.declared_length as u64;
    if completed {
        uploads::complete(&mut tx, upload, new_offset).await?;
    } else {
        uploads::advance(&mut tx, upload, new_offset).await?;
    }
    tx.commit()
        .await
        .map_err(|e| database("commit the append", e))?;
    state.metrics.bytes_received.inc_by(body.len() as u64);
    if completed {
        state.metrics.uploads_completed.inc();
        state.mark_dirty(session.uid);
    }
    let row = UploadRow {
        upload_offset: new_offset as i64,
        state: if completed {
            UploadState::Complete
        } else {
            UploadState::Receiving
        }
        .as_str()
        .to_owned(),
        ..row
    };
    Ok(Appended {
        offset: new_offset,
        completed,
        row,
    })
}

/// After the last byte: ingest now and say how it went. The organisation file always waits for its
/// ingest; other files wait up to the configured time, then answer `pending` (the ingest goes on).
async fn finish(
    state: &Arc<AppState>,
    session: &Session,
    upload: Uuid,
    file_type: &Option<FileType>,
    response: &mut HeaderMap,
) {
    let task = tokio::spawn(ingest::ingest_upload(
        state.clone(),
        session.clone(),
        upload,
        ingest::Ingester::Request,
    ));
    let outcome = if *file_type == Some(FileType::ExportData) {
        task.await.ok()
    } else {
        tokio::time::timeout(state.config.limits.ingest_wait, task)
            .await
            .ok()
            .and_then(|r| r.ok())
    };
    let (ingest_state, code) = match outcome {
        Some(Ok(Some(result))) => result,
        _ => (IngestState::Pending, None),
    };
    put(
        response,
        contract::HEADER_INGEST_STATE,
        ingest_state.as_str(),
    );
    if let Some(code) = code {
        put(response, contract::HEADER_REJECTION_CODE, code.as_str());
    }
}

/// `DELETE /files/{id}`: termination of an unfinished upload.
pub async fn terminate(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    let (session, row) = upload_session(&state, &id, &method, &uri, &headers).await?;
    let terminated = terminate_in_session(&state, &session, &row).await;
    switch::explain(&state, &session.database, terminated).await
}

/// The termination once the upload and its session are known.
async fn terminate_in_session(
    state: &AppState,
    session: &Session,
    row: &UploadRow,
) -> Result<Response, ApiError> {
    let mut tx = session
        .pool
        .begin()
        .await
        .map_err(|e| database("begin the termination", e))?;
    uploads::terminate(&mut tx, row.id).await?;
    tx.commit()
        .await
        .map_err(|e| database("terminate the upload", e))?;
    state.mark_dirty(session.uid);
    Ok((StatusCode::NO_CONTENT, tus_headers()).into_response())
}
