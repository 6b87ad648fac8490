//! The wire contract between the migration client `sfm-migrate` and the migration API
//! `sfm-migration-api`: every path, header name, tus metadata key, JSON body and error code the two
//! exchange, written down once here and once in `docs/openapi.yaml` (the test
//! `tests/contract_openapi.rs` proves the two agree; `docs/wire-contract.md` is the human summary).
//!
//! Both sides use these names instead of string literals, so neither can drift from the other or from
//! the document. The module holds data and pure functions only: no I/O, no HTTP library types.
//!
//! It must never put a migration key, a token or personal data into an error message or `Debug`
//! output: errors name positions and limits, never the offending value.

mod key;
mod manifest;
mod messages;
mod problem;
mod tus;

pub use key::{KEY_PREFIX, MigrationKeyToken};
pub use manifest::{
    MANIFEST_VERSION, MAX_MANIFEST_BODY_BYTES, MAX_MANIFEST_FILES, MAX_MISMATCHES_LISTED,
    MAX_PATH_BYTES, Manifest, ManifestFile, ManifestMismatches, RejectedFile, VerifyResponse,
};
pub use messages::{
    API_VERSION, ActivateResponse, Counts, KeyCheckResponse, MAX_REJECTIONS_LISTED, MigrationPhase,
    MigrationStatus, ProductVersion, Rejection, StoredFiles,
};
pub use problem::{PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX, Problem, ProblemCode};
pub use tus::{
    CONTENT_TYPE_OCTET_STREAM, CONTENT_TYPE_OFFSET_OCTET_STREAM, ChecksumAlgorithm,
    CreationMetadata, FILE_TYPE_UNKNOWN, FileType, IngestState, MAX_UPLOAD_METADATA_BYTES,
    MAX_UPLOAD_METADATA_KEY_BYTES, MAX_UPLOAD_METADATA_PAIRS, MAX_UPLOAD_NAME_BYTES,
    METADATA_CONTENT_TYPE, METADATA_FILE_TYPE, METADATA_KEYS, METADATA_NAME, METADATA_SESSION_ID,
    TUS_CHECKSUM_ALGORITHMS, TUS_EXTENSIONS, TUS_VERSION, UploadChecksum, UploadId,
    decode_upload_metadata, encode_upload_metadata, format_http_date, parse_http_date,
    parse_retry_after,
};

/// The OpenAPI 3.1 document of the migration API, served at [`PATH_OPENAPI`]. Embedded so the served
/// document is always the one this binary was built and tested against.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

// ---------------------------------------------------------------------------------------------------
// Paths. Templates use `{id}`, as OpenAPI does (and as axum 0.8 routes do).
// ---------------------------------------------------------------------------------------------------

/// tus creation endpoint: `OPTIONS` (capabilities) and `POST` (creation, creation-with-upload).
pub const PATH_FILES: &str = "/files";
/// One tus upload: `HEAD` (offset), `PATCH` (append), `DELETE` (termination).
pub const PATH_FILE: &str = "/files/{id}";
/// The same tus endpoint where NHN's 2026 uploader sends DPoP uploads (`UploadV2API`).
pub const PATH_FILES_V2: &str = "/v2/files";
/// One tus upload under [`PATH_FILES_V2`].
pub const PATH_FILE_V2: &str = "/v2/files/{id}";
/// Asked first by NHN's own uploader; unauthenticated.
pub const PATH_PRODUCT_VERSION: &str = "/api/sfmProductVersion";
/// Step 11: the client checks its migration key.
pub const PATH_KEY_CHECK: &str = "/api/v1/key-check";
/// Migration progress, polled by the client until the phase is `Operational`.
pub const PATH_STATUS: &str = "/api/v1/status";
/// Step 33: the client sends its manifest; an exact match records the validation.
pub const PATH_VERIFY: &str = "/api/v1/verify";
/// Step 34: the client asks for operational mode.
pub const PATH_ACTIVATE: &str = "/api/v1/activate";
/// This contract as OpenAPI YAML ([`OPENAPI_YAML`]).
pub const PATH_OPENAPI: &str = "/api/openapi.yaml";
/// Liveness: the process answers.
pub const PATH_HEALTHZ: &str = "/healthz";
/// Readiness: the API can reach what it needs (Kubernetes API, its key material).
pub const PATH_READYZ: &str = "/readyz";
/// Prometheus text exposition.
pub const PATH_METRICS: &str = "/metrics";

/// Every path of the API, in the order the OpenAPI document lists them.
pub const PATHS: &[&str] = &[
    PATH_FILES,
    PATH_FILE,
    PATH_FILES_V2,
    PATH_FILE_V2,
    PATH_PRODUCT_VERSION,
    PATH_KEY_CHECK,
    PATH_STATUS,
    PATH_VERIFY,
    PATH_ACTIVATE,
    PATH_OPENAPI,
    PATH_HEALTHZ,
    PATH_READYZ,
    PATH_METRICS,
];

/// Fills the `{id}` of [`PATH_FILE`]; upload ids contain only URL-safe characters.
pub fn file_path(upload_id: &str) -> String {
    format!("{PATH_FILES}/{upload_id}")
}

/// The tus collection a request path is under: [`PATH_FILES_V2`] for `/v2/files...`, else
/// [`PATH_FILES`]. An upload's `Location` stays under the collection it was created at.
pub fn files_collection(request_path: &str) -> &'static str {
    if request_path.starts_with(PATH_FILES_V2) {
        PATH_FILES_V2
    } else {
        PATH_FILES
    }
}

// ---------------------------------------------------------------------------------------------------
// Header names. Lowercase, as HTTP/2 sends them and as `http::HeaderName::from_static` requires;
// HTTP/1.1 peers (NHN's .NET uploader included) compare header names case-insensitively.
// ---------------------------------------------------------------------------------------------------

/// tus: protocol version of the request or response (`1.0.0`); required on every tus request but
/// `OPTIONS`.
pub const HEADER_TUS_RESUMABLE: &str = "tus-resumable";
/// tus: versions the server supports (on `OPTIONS` and on 412).
pub const HEADER_TUS_VERSION: &str = "tus-version";
/// tus: extensions the server supports ([`TUS_EXTENSIONS`]).
pub const HEADER_TUS_EXTENSION: &str = "tus-extension";
/// tus: largest `Upload-Length` the server accepts, in bytes.
pub const HEADER_TUS_MAX_SIZE: &str = "tus-max-size";
/// tus checksum extension: algorithms the server verifies ([`TUS_CHECKSUM_ALGORITHMS`]).
pub const HEADER_TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
/// tus: bytes received so far.
pub const HEADER_UPLOAD_OFFSET: &str = "upload-offset";
/// tus: total size of the upload in bytes; required at creation (no deferred length).
pub const HEADER_UPLOAD_LENGTH: &str = "upload-length";
/// tus: `key base64value` pairs, comma-separated ([`encode_upload_metadata`]).
pub const HEADER_UPLOAD_METADATA: &str = "upload-metadata";
/// tus expiration extension: when an incomplete upload is discarded (HTTP-date).
pub const HEADER_UPLOAD_EXPIRES: &str = "upload-expires";
/// tus checksum extension: `<algorithm> <base64 digest>` of the body of this request.
pub const HEADER_UPLOAD_CHECKSUM: &str = "upload-checksum";
/// Standard: the URL of a created upload.
pub const HEADER_LOCATION: &str = "location";
/// Standard; tus requires `no-store` on `HEAD` responses.
pub const HEADER_CACHE_CONTROL: &str = "cache-control";
/// Standard: seconds to wait before retrying (on 429 and 503, and on `organisation-missing` while the
/// organisation file is being ingested).
pub const HEADER_RETRY_AFTER: &str = "retry-after";
/// The migration key `sfmk_<keyId>_<secret>` ([`MigrationKeyToken`]).
pub const HEADER_MIGRATION_KEY: &str = "sfm-migration-key";
/// HelseID access token: `Bearer <jwt>` or `DPoP <jwt>`.
pub const HEADER_AUTHORIZATION: &str = "authorization";
/// RFC 9449 DPoP proof JWT, sent with `Authorization: DPoP`.
pub const HEADER_DPOP: &str = "dpop";
/// RFC 9449: the nonce the next DPoP proof must carry.
pub const HEADER_DPOP_NONCE: &str = "dpop-nonce";
/// On 401: which authentication is expected (`Bearer`, `DPoP`, with `error="use_dpop_nonce"` when a
/// nonce is required).
pub const HEADER_WWW_AUTHENTICATE: &str = "www-authenticate";
/// On `HEAD` and the completing `PATCH` of `/files/{id}`: what became of a complete upload
/// ([`IngestState`]).
pub const HEADER_INGEST_STATE: &str = "sfm-ingest-state";
/// With `Sfm-Ingest-State: rejected`: the [`ProblemCode`] of the rejection.
pub const HEADER_REJECTION_CODE: &str = "sfm-rejection-code";

/// Every header name the contract uses, for tests and for CORS-style allow lists.
pub const HEADERS: &[&str] = &[
    HEADER_TUS_RESUMABLE,
    HEADER_TUS_VERSION,
    HEADER_TUS_EXTENSION,
    HEADER_TUS_MAX_SIZE,
    HEADER_TUS_CHECKSUM_ALGORITHM,
    HEADER_UPLOAD_OFFSET,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_METADATA,
    HEADER_UPLOAD_EXPIRES,
    HEADER_UPLOAD_CHECKSUM,
    HEADER_LOCATION,
    HEADER_CACHE_CONTROL,
    HEADER_RETRY_AFTER,
    HEADER_MIGRATION_KEY,
    HEADER_AUTHORIZATION,
    HEADER_DPOP,
    HEADER_DPOP_NONCE,
    HEADER_WWW_AUTHENTICATE,
    HEADER_INGEST_STATE,
    HEADER_REJECTION_CODE,
];

/// `Authorization` scheme for a plain HelseID access token.
pub const AUTH_SCHEME_BEARER: &str = "Bearer";
/// `Authorization` scheme for a DPoP-bound HelseID access token (RFC 9449).
pub const AUTH_SCHEME_DPOP: &str = "DPoP";
/// `WWW-Authenticate` challenge scheme on a 401 for a missing or refused migration key (RFC 9110
/// requires a challenge on every 401).
pub const AUTH_SCHEME_MIGRATION_KEY: &str = "SfmMigrationKey";
/// RFC 9449 error in `WWW-Authenticate` when the proof must carry the nonce from `DPoP-Nonce`.
pub const DPOP_ERROR_USE_NONCE: &str = "use_dpop_nonce";

/// Why a value of the wire contract was refused. Messages name positions and limits, never the value
/// itself (it may be a key, a token or carry personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("Upload-Metadata is {len} bytes, more than the {max} allowed")]
    MetadataTooLong { len: usize, max: usize },
    #[error("Upload-Metadata has more than {max} pairs")]
    MetadataTooManyPairs { max: usize },
    #[error("Upload-Metadata pair {index} is empty (a stray comma)")]
    MetadataEmptyPair { index: usize },
    #[error(
        "Upload-Metadata pair {index} has an invalid key: keys are 1 to {max} printable ASCII characters without spaces or commas"
    )]
    MetadataInvalidKey { index: usize, max: usize },
    #[error("Upload-Metadata pair {index} has a value that is not standard padded base64")]
    MetadataInvalidValue { index: usize },
    #[error("Upload-Metadata pair {index} repeats an earlier key")]
    MetadataDuplicateKey { index: usize },
    #[error("Upload-Metadata lacks the required key {key}")]
    MetadataMissing { key: &'static str },
    #[error("Upload-Metadata value of {key} is not acceptable: {reason}")]
    MetadataValue {
        key: &'static str,
        reason: &'static str,
    },
    #[error(
        "unknown FileType: expected OrganizationFile, PatientFile, ReportFile or Unknown (or ExportData, Patient, Report)"
    )]
    FileTypeUnknown,
    #[error("Upload-Checksum must read `<algorithm> <base64 digest>`")]
    ChecksumMalformed,
    #[error("Upload-Checksum names an algorithm this server does not support (sha256, sha1)")]
    ChecksumAlgorithmUnsupported,
    #[error("upload id is malformed")]
    UploadIdMalformed,
    #[error("migration key is malformed: {reason}")]
    KeyMalformed { reason: &'static str },
    #[error("manifestVersion {version} is not supported (expected 1)")]
    ManifestVersionUnsupported { version: u32 },
    #[error("manifest lists no files")]
    ManifestEmpty,
    #[error("manifest lists more than {max} files")]
    ManifestTooManyFiles { max: usize },
    #[error("manifest entry {index} has an invalid path: {reason}")]
    ManifestPathInvalid { index: usize, reason: &'static str },
    #[error(
        "manifest entry {index} repeats the path of an earlier entry (compared case-insensitively)"
    )]
    ManifestDuplicatePath { index: usize },
    #[error("manifest entry {index} has a sha256 that is not 64 lowercase hex digits")]
    ManifestSha256Invalid { index: usize },
    #[error("manifest entry {index} has a fileType that does not match its file extension")]
    ManifestFileTypeMismatch { index: usize },
    #[error("manifest must list the organisation file ExportData.dat exactly once, found {found}")]
    ManifestOrganisationFile { found: usize },
    #[error("unknown problem code")]
    ProblemCodeUnknown,
    #[error("unknown migration phase")]
    PhaseUnknown,
    #[error("unknown ingest state")]
    IngestStateUnknown,
    #[error("not an HTTP-date (IMF-fixdate)")]
    HttpDateInvalid,
    #[error("the system random generator failed")]
    Random,
}

impl ContractError {
    /// The problem code the API answers with when a request fails on this error.
    pub fn problem_code(&self) -> ProblemCode {
        match self {
            ContractError::MetadataTooLong { .. }
            | ContractError::MetadataTooManyPairs { .. }
            | ContractError::MetadataEmptyPair { .. }
            | ContractError::MetadataInvalidKey { .. }
            | ContractError::MetadataInvalidValue { .. }
            | ContractError::MetadataDuplicateKey { .. }
            | ContractError::MetadataMissing { .. }
            | ContractError::MetadataValue { .. }
            | ContractError::FileTypeUnknown => ProblemCode::MetadataInvalid,
            ContractError::ChecksumMalformed => ProblemCode::HeaderInvalid,
            ContractError::ChecksumAlgorithmUnsupported => {
                ProblemCode::ChecksumAlgorithmUnsupported
            }
            ContractError::UploadIdMalformed => ProblemCode::UploadNotFound,
            ContractError::KeyMalformed { .. } => ProblemCode::KeyMalformed,
            ContractError::ManifestVersionUnsupported { .. }
            | ContractError::ManifestEmpty
            | ContractError::ManifestTooManyFiles { .. }
            | ContractError::ManifestPathInvalid { .. }
            | ContractError::ManifestDuplicatePath { .. }
            | ContractError::ManifestSha256Invalid { .. }
            | ContractError::ManifestFileTypeMismatch { .. }
            | ContractError::ManifestOrganisationFile { .. } => ProblemCode::ManifestInvalid,
            ContractError::ProblemCodeUnknown
            | ContractError::PhaseUnknown
            | ContractError::IngestStateUnknown
            | ContractError::HttpDateInvalid => ProblemCode::HeaderInvalid,
            ContractError::Random => ProblemCode::Internal,
        }
    }
}

/// Lowercase hex SHA-256 of `data`: the one digest format of the contract (file digests in the
/// manifest, the manifest digest, key digests).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Compares two digests (or any two secrets' derivations) in constant time with respect to their
/// content, so a caller that compares a presented key's digest with a stored one leaks nothing about
/// where they differ. Lengths are not secret (every digest here is 64 hex characters).
pub fn digests_equal(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_headers_are_unique() {
        let mut paths = PATHS.to_vec();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), PATHS.len());
        let mut headers = HEADERS.to_vec();
        headers.sort_unstable();
        headers.dedup();
        assert_eq!(headers.len(), HEADERS.len());
    }

    #[test]
    fn header_names_are_lowercase_tokens() {
        for name in HEADERS {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name} must be a lowercase token"
            );
        }
    }

    #[test]
    fn file_path_fills_the_template() {
        assert_eq!(file_path("abc.def"), "/files/abc.def");
        assert_eq!(PATH_FILE.replace("{id}", "abc.def"), file_path("abc.def"));
    }

    #[test]
    fn sha256_hex_is_lowercase_and_known() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digests_equal_compares_content() {
        assert!(digests_equal("ab12", "ab12"));
        assert!(!digests_equal("ab12", "ab13"));
        assert!(!digests_equal("ab12", "ab1"));
    }
}
