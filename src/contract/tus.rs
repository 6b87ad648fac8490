//! The tus 1.0 side of the contract: versions, extensions, the `Upload-Metadata` encoding and its keys,
//! the file types, checksums, upload ids and the HTTP-date format of `Upload-Expires`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ContractError;
use super::key::MigrationKeyToken;

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
/// Metadata key: the migration key, for NHN's unchanged uploader that cannot send `Sfm-Migration-Key`.
/// A secret: the API never stores, logs or echoes it.
pub const METADATA_SESSION_ID: &str = "SessionId";
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
/// manifest. Values are compared ignoring ASCII case; any other value is refused with 400
/// `metadata-invalid`.
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
            .find(|t| s.eq_ignore_ascii_case(t.as_str()))
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
///
/// `Debug` shows whether a session key was present, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CreationMetadata {
    /// The `name` value (the path as `Index.txt` writes it).
    pub name: String,
    /// The `FileType` value.
    pub file_type: FileType,
    /// The `SessionId` value, parsed as a migration key, when present.
    pub session_key: Option<MigrationKeyToken>,
}

impl CreationMetadata {
    /// Reads decoded metadata pairs: `name` (non-empty UTF-8 of at most [`MAX_UPLOAD_NAME_BYTES`]
    /// without control characters) and `FileType` are required; `contentType`, when present, must be
    /// `application/octet-stream`; `SessionId`, when present, must be a well-formed migration key.
    /// Other keys are ignored.
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
        )?
        .parse::<FileType>()?;

        if let Some(content_type) = get(METADATA_CONTENT_TYPE)
            && content_type != CONTENT_TYPE_OCTET_STREAM.as_bytes()
        {
            return Err(ContractError::MetadataValue {
                key: METADATA_CONTENT_TYPE,
                reason: "must be application/octet-stream",
            });
        }

        let session_key = match get(METADATA_SESSION_ID) {
            None => None,
            Some(value) => Some(text(METADATA_SESSION_ID, value)?.parse::<MigrationKeyToken>()?),
        };

        Ok(CreationMetadata {
            name,
            file_type,
            session_key,
        })
    }
}

impl fmt::Debug for CreationMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreationMetadata")
            .field("name", &self.name)
            .field("file_type", &self.file_type)
            .field(
                "session_key",
                &self.session_key.as_ref().map(|_| "<present>"),
            )
            .finish()
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(header: &str) -> Vec<(String, String)> {
        decode_upload_metadata(header)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn metadata_as_nhn_uploader_sends_it() {
        let header = encode_upload_metadata(&[
            (
                METADATA_NAME,
                "Patients0\\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat",
            ),
            (METADATA_CONTENT_TYPE, CONTENT_TYPE_OCTET_STREAM),
            (METADATA_FILE_TYPE, "Patient"),
        ]);
        assert_eq!(
            header,
            "name UGF0aWVudHMwXDBlN2JmZDg5LWZmNDMtNGM1YS1hOWUyLTFhZjQ2YWUzMzY3Mi5wYXQ=,\
             contentType YXBwbGljYXRpb24vb2N0ZXQtc3RyZWFt,FileType UGF0aWVudA=="
        );
        let pairs = decode_upload_metadata(&header).unwrap();
        let metadata = CreationMetadata::from_pairs(&pairs).unwrap();
        assert_eq!(metadata.file_type, FileType::Patient);
        assert_eq!(
            metadata.name,
            "Patients0\\0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.pat"
        );
        assert!(metadata.session_key.is_none());
    }

    #[test]
    fn metadata_tolerates_spaces_around_pairs_and_empty_values() {
        assert_eq!(
            decoded(" a YQ== , b,c "),
            vec![
                ("a".into(), "a".into()),
                ("b".into(), String::new()),
                ("c".into(), String::new())
            ]
        );
        assert_eq!(decoded(""), vec![]);
        assert_eq!(encode_upload_metadata(&[("b", "")]), "b");
    }

    #[test]
    fn metadata_rejects_malformed_headers() {
        let cases: &[(&str, &str)] = &[
            ("a YQ==,,b YQ==", "empty pair"),
            ("a YQ==,", "trailing comma"),
            ("a YQ", "unpadded base64"),
            ("a YQ=!", "not base64"),
            ("a YQ== YQ==", "two values"),
            ("a YQ==,a Yg==", "duplicate key"),
            ("ä YQ==", "non-ASCII key"),
            ("a\tb YQ==", "control character in key"),
            ("a_-_b YQ==,a_-_b", "duplicate key without value"),
            ("a YR==", "non-canonical base64 trailing bits"),
        ];
        for (header, why) in cases {
            assert!(
                decode_upload_metadata(header).is_err(),
                "{why}: {header:?} must be rejected"
            );
        }
        let long_key = "k".repeat(MAX_UPLOAD_METADATA_KEY_BYTES + 1);
        assert!(matches!(
            decode_upload_metadata(&long_key),
            Err(ContractError::MetadataInvalidKey { .. })
        ));
    }

    #[test]
    fn metadata_is_bounded() {
        let many = (0..=MAX_UPLOAD_METADATA_PAIRS)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(
            decode_upload_metadata(&many),
            Err(ContractError::MetadataTooManyPairs { .. })
        ));
        let exactly = (0..MAX_UPLOAD_METADATA_PAIRS)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            decode_upload_metadata(&exactly).unwrap().len(),
            MAX_UPLOAD_METADATA_PAIRS
        );
        let huge = format!(
            "a {}",
            STANDARD.encode(vec![0u8; MAX_UPLOAD_METADATA_BYTES])
        );
        assert!(matches!(
            decode_upload_metadata(&huge),
            Err(ContractError::MetadataTooLong { .. })
        ));
    }

    #[test]
    fn creation_metadata_requires_name_and_a_known_file_type() {
        let pairs = |header: &str| decode_upload_metadata(header).unwrap();
        let missing_type = pairs(&encode_upload_metadata(&[(
            METADATA_NAME,
            "ExportData.dat",
        )]));
        assert_eq!(
            CreationMetadata::from_pairs(&missing_type),
            Err(ContractError::MetadataMissing {
                key: METADATA_FILE_TYPE
            })
        );
        let unknown_type = pairs(&encode_upload_metadata(&[
            (METADATA_NAME, "ExportData.dat"),
            (METADATA_FILE_TYPE, "Organisation"),
        ]));
        let error = CreationMetadata::from_pairs(&unknown_type).unwrap_err();
        assert_eq!(error, ContractError::FileTypeUnknown);
        assert_eq!(error.problem_code().http_status(), 400);
        let wrong_content_type = pairs(&encode_upload_metadata(&[
            (METADATA_NAME, "ExportData.dat"),
            (METADATA_FILE_TYPE, "ExportData"),
            (METADATA_CONTENT_TYPE, "text/xml"),
        ]));
        assert!(CreationMetadata::from_pairs(&wrong_content_type).is_err());
        let control = pairs(&encode_upload_metadata(&[
            (METADATA_NAME, "a\nb.pat"),
            (METADATA_FILE_TYPE, "Patient"),
        ]));
        assert!(CreationMetadata::from_pairs(&control).is_err());
    }

    #[test]
    fn session_id_carries_the_key_and_debug_hides_it() {
        let token = MigrationKeyToken::generate().unwrap();
        let secret_text = token.expose();
        let header = encode_upload_metadata(&[
            (METADATA_NAME, "ExportData.dat"),
            (METADATA_FILE_TYPE, "exportdata"),
            (METADATA_SESSION_ID, &secret_text),
        ]);
        let metadata =
            CreationMetadata::from_pairs(&decode_upload_metadata(&header).unwrap()).unwrap();
        assert_eq!(metadata.file_type, FileType::ExportData);
        assert_eq!(metadata.session_key.as_ref(), Some(&token));
        let debug = format!("{metadata:?}");
        let secret_part = secret_text.rsplit_once('_').unwrap().1;
        assert!(!debug.contains(secret_part), "{debug}");

        let bad_key = encode_upload_metadata(&[
            (METADATA_NAME, "ExportData.dat"),
            (METADATA_FILE_TYPE, "ExportData"),
            (METADATA_SESSION_ID, "not-a-key"),
        ]);
        let error =
            CreationMetadata::from_pairs(&decode_upload_metadata(&bad_key).unwrap()).unwrap_err();
        assert_eq!(error.problem_code().as_str(), "key-malformed");
    }

    #[test]
    fn file_types_parse_ignoring_case_and_follow_extensions() {
        for t in FileType::ALL {
            assert_eq!(t.as_str().parse::<FileType>().unwrap(), t);
            assert_eq!(t.as_str().to_uppercase().parse::<FileType>().unwrap(), t);
        }
        assert!("Patients".parse::<FileType>().is_err());
        assert!("".parse::<FileType>().is_err());
        assert_eq!(
            FileType::from_path("ExportData.dat"),
            Some(FileType::ExportData)
        );
        assert_eq!(
            FileType::from_path("Patients3\\x.PAT"),
            Some(FileType::Patient)
        );
        assert_eq!(
            FileType::from_path("Reports\\r.rpt"),
            Some(FileType::Report)
        );
        assert_eq!(FileType::from_path("Index.txt"), None);
        assert_eq!(
            serde_json::to_string(&FileType::Patient).unwrap(),
            "\"Patient\""
        );
        assert!(serde_json::from_str::<FileType>("\"Bogus\"").is_err());
    }

    #[test]
    fn checksum_round_trip_and_rejections() {
        let sum = UploadChecksum::of(ChecksumAlgorithm::Sha256, b"abc");
        assert_eq!(
            sum.to_header(),
            "sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(UploadChecksum::parse(&sum.to_header()).unwrap(), sum);
        let sha1 = UploadChecksum::parse("sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=").unwrap();
        assert!(
            sha1.matches(
                UploadChecksum::of(ChecksumAlgorithm::Sha1, b"abc")
                    .digest
                    .as_slice()
            )
        );
        assert_eq!(
            UploadChecksum::parse("md5 kAFQmDzST7DWlj99KOF/cg=="),
            Err(ContractError::ChecksumAlgorithmUnsupported)
        );
        assert_eq!(
            UploadChecksum::parse("sha256 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="),
            Err(ContractError::ChecksumMalformed),
            "a sha1-length digest under sha256"
        );
        assert_eq!(
            UploadChecksum::parse("sha256"),
            Err(ContractError::ChecksumMalformed)
        );
    }

    #[test]
    fn upload_id_round_trip_and_strictness() {
        let database = Uuid::new_v4();
        let id = UploadId::new_random(database);
        let text = id.to_string();
        assert_eq!(text.len(), 65);
        assert_eq!(text.parse::<UploadId>().unwrap(), id);
        assert_eq!(text.parse::<UploadId>().unwrap().database, database);
        for bad in [
            "",
            "abc",
            &text.to_uppercase(),
            &text.replace('.', "-"),
            &format!("{text}x"),
            &format!("{}.{}", database.hyphenated(), id.upload.simple()),
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn http_dates_round_trip() {
        let at = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(at.to_rfc3339(), "1994-11-06T08:49:37+00:00");
        assert_eq!(format_http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(parse_http_date("1994-11-06T08:49:37Z").is_err());
        assert!(parse_http_date("Sun, 06 Nov 1994 08:49:37 +0100").is_err());
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        assert_eq!(parse_retry_after("5"), Some(5));
        assert_eq!(parse_retry_after(" 120 "), Some(120));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    proptest! {
        #[test]
        fn metadata_round_trips(
            pairs in proptest::collection::btree_map(
                "[!-+\\--~]{1,20}", any::<String>(), 0..MAX_UPLOAD_METADATA_PAIRS)
        ) {
            let borrowed: Vec<(&str, &str)> =
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let header = encode_upload_metadata(&borrowed);
            prop_assume!(header.len() <= MAX_UPLOAD_METADATA_BYTES);
            let decoded = decode_upload_metadata(&header).unwrap();
            let expected: Vec<(String, Vec<u8>)> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn metadata_decoder_never_panics(header in "\\PC{0,200}") {
            let _ = decode_upload_metadata(&header);
        }
    }
}
