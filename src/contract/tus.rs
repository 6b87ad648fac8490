//! The tus 1.0 side of the contract: versions, extensions, the `Upload-Metadata` encoding and its keys,
//! the file types, checksums, upload ids and the HTTP-date format of `Upload-Expires`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ContractError;

/// The one tus protocol version spoken (`Tus-Resumable`, `Tus-Version`).
pub const TUS_VERSION: &str = "1.0.0";
/// The tus extensions the API implements, as `Tus-Extension` lists them.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// The checksum algorithms the API verifies, as `Tus-Checksum-Algorithm` lists them. sha256 is what
/// our client sends; sha1 is there because the tus checksum extension requires every server to accept
/// it and common tus clients send it.
pub const TUS_CHECKSUM_ALGORITHMS: &str = "sha256,sha1";
/// `Content-Type` of every tus `PATCH` (and of a creation-with-upload `POST` that carries data).
pub const CONTENT_TYPE_OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// The only `contentType` metadata value accepted: the files are encrypted envelopes.
pub const CONTENT_TYPE_OCTET_STREAM: &str = "application/octet-stream";

/// Metadata key: the file's path relative to the export folder, exactly as `Index.txt` writes it
/// (`Patients0\<guid>.pat`), or `ExportData.dat` for the organisation file. `verify` matches manifest
/// paths against it.
pub const METADATA_NAME: &str = "name";
/// Metadata key: always `application/octet-stream` when present.
pub const METADATA_CONTENT_TYPE: &str = "contentType";
/// Metadata key: the [`FileType`].
pub const METADATA_FILE_TYPE: &str = "FileType";
/// Metadata key: NHN's uploader's upload session, one random GUID per export folder (the same for every
/// file and every resumed run). Not a credential: the API records it in the audit trail of each file.
pub const METADATA_SESSION_ID: &str = "SessionId";
/// The `FileType` value NHN's uploader gives a file that is neither the organisation file nor under a
/// `Patients*` or `Reports*` folder. Such a file is accepted and recorded as rejected
/// (`file-type-unknown`): it is not part of an FM export the API can store.
pub const FILE_TYPE_UNKNOWN: &str = "Unknown";
/// Every metadata key the API reads; others are ignored.
pub const METADATA_KEYS: &[&str] = &[
    METADATA_NAME,
    METADATA_CONTENT_TYPE,
    METADATA_FILE_TYPE,
    METADATA_SESSION_ID,
];

/// Longest `Upload-Metadata` header accepted, in bytes.
pub const MAX_UPLOAD_METADATA_BYTES: usize = 8 * 1024;
/// Most pairs accepted in one `Upload-Metadata` header.
pub const MAX_UPLOAD_METADATA_PAIRS: usize = 32;
/// Longest metadata key accepted, in bytes.
pub const MAX_UPLOAD_METADATA_KEY_BYTES: usize = 64;
/// Longest `name` value accepted, in bytes of UTF-8.
pub const MAX_UPLOAD_NAME_BYTES: usize = 1024;

/// What a file of the export is, sent as the `FileType` metadata value and as `fileType` in the
/// manifest. Our names (`ExportData`, `Patient`, `Report`) and NHN's uploader's enum names
/// (`OrganizationFile`, `PatientFile`, `ReportFile`) are both accepted, ignoring ASCII case; any other
/// value is refused with 400 `metadata-invalid` (NHN's `Unknown` is read by [`CreationMetadata`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    /// The organisation file `ExportData.dat` (`ExportImport`: institution, users, local drugs).
    ExportData,
    /// One patient, `Patients<N>\<guid>.pat` (`PasientExport`).
    Patient,
    /// One report, `Reports\<name>.rpt`.
    Report,
}

impl FileType {
    /// Every file type, in upload order (the organisation file first).
    pub const ALL: [FileType; 3] = [FileType::ExportData, FileType::Patient, FileType::Report];

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::ExportData => "ExportData",
            FileType::Patient => "Patient",
            FileType::Report => "Report",
        }
    }

    /// The name NHN's uploader (`SFM.Importer`) sends for this type.
    pub fn nhn_name(self) -> &'static str {
        match self {
            FileType::ExportData => "OrganizationFile",
            FileType::Patient => "PatientFile",
            FileType::Report => "ReportFile",
        }
    }

    /// Whether an upload's `name` fits this type: the organisation file is a `.dat`, a patient a
    /// `.pat`; a report is any file NHN's uploader sends from a `Reports*` folder (`.rpt`, `.dat`,
    /// `.pat`) or that `ExportData.xml` names (`.xps`). The name is a relative path (our client) or a
    /// bare file name (NHN's uploader).
    pub fn accepts_name(self, name: &str) -> bool {
        let Some((_, extension)) = name.rsplit_once('.') else {
            return false;
        };
        let fits = |wanted: &[&str]| wanted.iter().any(|w| extension.eq_ignore_ascii_case(w));
        match self {
            FileType::ExportData => fits(&["dat"]),
            FileType::Patient => fits(&["pat"]),
            FileType::Report => fits(&["rpt", "dat", "pat", "xps"]),
        }
    }

    /// The file extension (without the dot) the export gives files of this type.
    pub fn extension(self) -> &'static str {
        match self {
            FileType::ExportData => "dat",
            FileType::Patient => "pat",
            FileType::Report => "rpt",
        }
    }

    /// The file type a path's extension implies (ignoring ASCII case), if any.
    pub fn from_path(path: &str) -> Option<FileType> {
        let (_, extension) = path.rsplit_once('.')?;
        FileType::ALL
            .into_iter()
            .find(|t| extension.eq_ignore_ascii_case(t.extension()))
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FileType {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileType::ALL
            .into_iter()
            .find(|t| s.eq_ignore_ascii_case(t.as_str()) || s.eq_ignore_ascii_case(t.nhn_name()))
            .ok_or(ContractError::FileTypeUnknown)
    }
}

impl serde::Serialize for FileType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for FileType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

/// Encodes tus `Upload-Metadata`: `key base64(value)` pairs joined by commas, values in standard
/// padded base64 (an empty value is sent as the key alone). Keys must follow the rules
/// [`decode_upload_metadata`] enforces; this function is for our own constant keys.
pub fn encode_upload_metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            if value.is_empty() {
                (*key).to_owned()
            } else {
                format!("{key} {}", STANDARD.encode(value.as_bytes()))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes tus `Upload-Metadata` strictly: at most [`MAX_UPLOAD_METADATA_BYTES`] and
/// [`MAX_UPLOAD_METADATA_PAIRS`]; pairs separated by commas (spaces around a pair are tolerated, an
/// empty pair is not); keys 1 to [`MAX_UPLOAD_METADATA_KEY_BYTES`] printable ASCII characters without
/// spaces or commas, each key once; values standard base64 with padding, or absent (empty value).
/// An empty header is zero pairs.
pub fn decode_upload_metadata(header: &str) -> Result<Vec<(String, Vec<u8>)>, ContractError> {
    if header.len() > MAX_UPLOAD_METADATA_BYTES {
        return Err(ContractError::MetadataTooLong {
            len: header.len(),
            max: MAX_UPLOAD_METADATA_BYTES,
        });
    }
    if header.trim_matches(' ').is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    for (index, pair) in header.split(',').enumerate() {
        if index >= MAX_UPLOAD_METADATA_PAIRS {
            return Err(ContractError::MetadataTooManyPairs {
                max: MAX_UPLOAD_METADATA_PAIRS,
            });
        }
        let pair = pair.trim_matches(' ');
        if pair.is_empty() {
            return Err(ContractError::MetadataEmptyPair { index });
        }
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        let key_ok = !key.is_empty()
            && key.len() <= MAX_UPLOAD_METADATA_KEY_BYTES
            && key.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !key_ok {
            return Err(ContractError::MetadataInvalidKey {
                index,
                max: MAX_UPLOAD_METADATA_KEY_BYTES,
            });
        }
        let value = STANDARD
            .decode(encoded)
            .map_err(|_| ContractError::MetadataInvalidValue { index })?;
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(ContractError::MetadataDuplicateKey { index });
        }
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// What the API needs from the metadata of a creation `POST /files`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationMetadata {
    /// The `name` value: the path as `Index.txt` writes it (our client) or the bare file name (NHN's
    /// uploader).
    pub name: String,
    /// The `FileType` value; `None` for NHN's `Unknown`.
    pub file_type: Option<FileType>,
    /// The `SessionId` value (NHN's uploader's upload session), when present.
    pub session: Option<Uuid>,
}

impl CreationMetadata {
    /// Reads decoded metadata pairs: `name` (non-empty UTF-8 of at most [`MAX_UPLOAD_NAME_BYTES`]
    /// without control characters) and `FileType` are required; `contentType`, when present, must be
    /// `application/octet-stream`; `SessionId`, when present, must be a GUID (a migration key there
    /// is refused and not kept: keys travel in `Sfm-Migration-Key`). Other keys are ignored.
    pub fn from_pairs(pairs: &[(String, Vec<u8>)]) -> Result<Self, ContractError> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        };
        let text = |key: &'static str, value: &[u8]| {
            std::str::from_utf8(value).map(str::to_owned).map_err(|_| {
                ContractError::MetadataValue {
                    key,
                    reason: "not UTF-8",
                }
            })
        };

        let name = text(
            METADATA_NAME,
            get(METADATA_NAME).ok_or(ContractError::MetadataMissing { key: METADATA_NAME })?,
        )?;
        if name.is_empty() || name.len() > MAX_UPLOAD_NAME_BYTES {
            return Err(ContractError::MetadataValue {
                key: METADATA_NAME,
                reason: "empty or too long",
            });
        }
        if name.chars().any(char::is_control) {
            return Err(ContractError::MetadataValue {
                key: METADATA_NAME,
                reason: "contains control characters",
            });
        }

        let file_type = text(
            METADATA_FILE_TYPE,
            get(METADATA_FILE_TYPE).ok_or(ContractError::MetadataMissing {
                key: METADATA_FILE_TYPE,
            })?,
        )?;
        let file_type = if file_type.eq_ignore_ascii_case(FILE_TYPE_UNKNOWN) {
            None
        } else {
            let file_type = file_type.parse::<FileType>()?;
            if !file_type.accepts_name(&name) {
                return Err(ContractError::MetadataValue {
                    key: METADATA_NAME,
                    reason: "its extension does not fit FileType (.dat for the organisation file, .pat for a patient, .rpt, .dat, .pat or .xps for a report)",
                });
            }
            Some(file_type)
        };

        if let Some(content_type) = get(METADATA_CONTENT_TYPE)
            && content_type != CONTENT_TYPE_OCTET_STREAM.as_bytes()
        {
            return Err(ContractError::MetadataValue {
                key: METADATA_CONTENT_TYPE,
                reason: "must be application/octet-stream",
            });
        }

        let session = match get(METADATA_SESSION_ID) {
            None => None,
            Some(value) => Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| Uuid::parse_str(v).ok())
                    .ok_or(ContractError::MetadataValue {
                        key: METADATA_SESSION_ID,
                        reason: "must be the upload session's GUID (a migration key travels in Sfm-Migration-Key, never in metadata)",
                    })?,
            ),
        };

        Ok(CreationMetadata {
            name,
            file_type,
            session,
        })
    }
}

/// A tus checksum algorithm of [`TUS_CHECKSUM_ALGORITHMS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha256,
    Sha1,
}

impl ChecksumAlgorithm {
    /// The name as `Upload-Checksum` and `Tus-Checksum-Algorithm` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Sha1 => "sha1",
        }
    }

    fn algorithm(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            ChecksumAlgorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            ChecksumAlgorithm::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    /// A streaming digest context, for a body that arrives in chunks.
    pub fn context(self) -> aws_lc_rs::digest::Context {
        aws_lc_rs::digest::Context::new(self.algorithm())
    }
}

/// The `Upload-Checksum` header: the digest of one request's body (not of the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

impl UploadChecksum {
    /// The checksum of `body` with `algorithm`.
    pub fn of(algorithm: ChecksumAlgorithm, body: &[u8]) -> Self {
        let mut context = algorithm.context();
        context.update(body);
        UploadChecksum {
            algorithm,
            digest: context.finish().as_ref().to_vec(),
        }
    }

    /// Parses `<algorithm> <base64 digest>`: a known algorithm, standard padded base64 of exactly the
    /// algorithm's digest length.
    pub fn parse(header: &str) -> Result<Self, ContractError> {
        let (name, encoded) = header
            .split_once(' ')
            .ok_or(ContractError::ChecksumMalformed)?;
        let algorithm = match name {
            "sha256" => ChecksumAlgorithm::Sha256,
            "sha1" => ChecksumAlgorithm::Sha1,
            _ => return Err(ContractError::ChecksumAlgorithmUnsupported),
        };
        let digest = STANDARD
            .decode(encoded)
            .map_err(|_| ContractError::ChecksumMalformed)?;
        if digest.len() != algorithm.algorithm().output_len() {
            return Err(ContractError::ChecksumMalformed);
        }
        Ok(UploadChecksum { algorithm, digest })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!(
            "{} {}",
            self.algorithm.as_str(),
            STANDARD.encode(&self.digest)
        )
    }

    /// Whether a finished digest of the body equals this checksum.
    pub fn matches(&self, computed: &[u8]) -> bool {
        self.digest == computed
    }
}

/// The id of one upload, as it appears in `Location` and `/files/{id}`. Opaque to clients: they store
/// the `Location` URL and use it as it is. Inside, it names the MigrationDatabase (by its UID) so any
/// replica of the API can route a `PATCH` to the right staging database without shared memory, plus a
/// random upload UUID (122 random bits: the id is also what keeps uploads of different sessions apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId {
    /// The MigrationDatabase's `metadata.uid`.
    pub database: Uuid,
    /// Random per upload.
    pub upload: Uuid,
}

impl UploadId {
    /// A fresh id for an upload into `database`.
    pub fn new_random(database: Uuid) -> Self {
        UploadId {
            database,
            upload: Uuid::new_v4(),
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database.simple(), self.upload.simple())
    }
}

impl FromStr for UploadId {
    type Err = ContractError;

    /// Exactly `<32 lowercase hex>.<32 lowercase hex>`, the form [`fmt::Display`] writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (database, upload) = s.split_once('.').ok_or(ContractError::UploadIdMalformed)?;
        let part = |p: &str| {
            if p.len() == 32
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                Uuid::try_parse(p).map_err(|_| ContractError::UploadIdMalformed)
            } else {
                Err(ContractError::UploadIdMalformed)
            }
        };
        Ok(UploadId {
            database: part(database)?,
            upload: part(upload)?,
        })
    }
}

/// What became of a complete upload, in the `Sfm-Ingest-State` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestState {
    /// Complete, not yet ingested (backlog, or the API restarted); ask again with `HEAD`.
    Pending,
    /// Decrypted, checked and written to the staging database.
    Stored,
    /// Refused; `Sfm-Rejection-Code` says why, and the status lists it.
    Rejected,
}

impl IngestState {
    pub const ALL: [IngestState; 3] = [
        IngestState::Pending,
        IngestState::Stored,
        IngestState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IngestState::Pending => "pending",
            IngestState::Stored => "stored",
            IngestState::Rejected => "rejected",
        }
    }
}

impl FromStr for IngestState {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IngestState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or(ContractError::IngestStateUnknown)
    }
}

/// Formats an HTTP-date (IMF-fixdate, RFC 9110), the format of `Upload-Expires`.
pub fn format_http_date(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Parses an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn parse_http_date(value: &str) -> Result<DateTime<Utc>, ContractError> {
    if !value.ends_with(" GMT") {
        return Err(ContractError::HttpDateInvalid);
    }
    DateTime::parse_from_rfc2822(value)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| ContractError::HttpDateInvalid)
}

/// Reads `Retry-After` as the API sends it: whole seconds. `None` for anything else (an HTTP-date, or
/// garbage), in which case the client falls back to its own backoff.
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
#[path = "tus_tests.rs"]
mod tests;
