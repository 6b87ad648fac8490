//! The pieces of a tus request the handlers in [`super::tus`] share: the protocol's headers read
//! and written (in their canonical spelling), checksums, and the body read within its limits.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::ApiError;
use crate::contract::{self, ProblemCode, UploadChecksum, encode_upload_metadata};

pub(super) fn tus_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(contract::HEADER_TUS_RESUMABLE),
        HeaderValue::from_static(contract::TUS_VERSION),
    );
    headers
}

pub(super) fn put(headers: &mut HeaderMap, name: &'static str, value: impl AsRef<str>) {
    if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

pub(super) fn require_tus(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(contract::HEADER_TUS_RESUMABLE) {
        Some(v) if v.as_bytes() == contract::TUS_VERSION.as_bytes() => Ok(()),
        _ => Err(ApiError::new(ProblemCode::TusVersionUnsupported)
            .header(contract::HEADER_TUS_VERSION, contract::TUS_VERSION)),
    }
}

pub(super) fn header_u64(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(ProblemCode::HeaderInvalid)
                    .detail(format!("{name} must be a non-negative decimal integer"))
            }),
    }
}

pub(super) fn content_type_is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(contract::CONTENT_TYPE_OFFSET_OCTET_STREAM)
        })
        .unwrap_or(false)
}

/// Reads a request body of at most `limit` bytes; more is 413 `upload-too-large`.
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    max_chunk: usize,
) -> Result<Bytes, ApiError> {
    if let Some(length) = header_u64(headers, "content-length")?
        && length > limit
    {
        return Err(
            ApiError::new(ProblemCode::UploadTooLarge).detail("the body goes past Upload-Length")
        );
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX).min(max_chunk);
    // A body that trickles in would hold its request slot (and its memory) for as long as the
    // sender likes.
    tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, cap))
        .await
        .map_err(|_| {
            ApiError::new(ProblemCode::RequestTimeout).detail(format!(
                "the body did not arrive within {} seconds; send smaller chunks",
                BODY_READ_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|_| {
            ApiError::new(ProblemCode::UploadTooLarge).detail(
                "the body goes past Upload-Length or the largest request this server accepts, or it was cut off",
            )
        })
}

/// The longest a request body may take to arrive.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub(super) fn parse_checksum(headers: &HeaderMap) -> Result<Option<UploadChecksum>, ApiError> {
    match headers.get(contract::HEADER_UPLOAD_CHECKSUM) {
        None => Ok(None),
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                ApiError::new(ProblemCode::HeaderInvalid).detail("Upload-Checksum is not ASCII")
            })?;
            Ok(Some(UploadChecksum::parse(text)?))
        }
    }
}

pub(super) fn verify_checksum(checksum: &UploadChecksum, body: &[u8]) -> Result<(), ApiError> {
    let mut context = checksum.algorithm.context();
    context.update(body);
    if checksum.matches(context.finish().as_ref()) {
        Ok(())
    } else {
        Err(ApiError::new(ProblemCode::ChecksumMismatch)
            .detail("the body does not match Upload-Checksum; nothing of it was kept"))
    }
}

pub(super) fn echo_metadata(metadata: &serde_json::Value) -> String {
    let pairs: Vec<(&str, &str)> = [
        contract::METADATA_NAME,
        contract::METADATA_CONTENT_TYPE,
        contract::METADATA_FILE_TYPE,
    ]
    .into_iter()
    .filter_map(|key| metadata.get(key).and_then(|v| v.as_str()).map(|v| (key, v)))
    .collect();
    encode_upload_metadata(&pairs)
}
