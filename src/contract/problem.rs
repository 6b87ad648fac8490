//! Error bodies: RFC 9457 `application/problem+json` with a stable machine `code`. The same codes name
//! the reasons a file's content is rejected (`envelope-*`, `archive-*`, `xml-*`, `data-quality-*`) in
//! the status' rejection list and the `Sfm-Rejection-Code` header.
//!
//! A problem's `detail` is for a human and must never quote personal data, a key or a token.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ContractError;

/// `Content-Type` of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// Prefix of a problem's `type`: a tag URI (RFC 4151) followed by the code. It names the problem; it is
/// not a link to dereference.
pub const PROBLEM_TYPE_PREFIX: &str = "tag:sfm.nhn.no,2025:problem:";

macro_rules! problem_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $status:literal, $title:literal; )*) => {
        /// The stable machine code of a problem. Clients branch on it; titles and details may change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ProblemCode {
            /// Every code, in the order of the OpenAPI document's `ProblemCode` enum.
            pub const ALL: &'static [ProblemCode] = &[ $( ProblemCode::$variant, )* ];

            /// The wire value.
            pub fn as_str(self) -> &'static str {
                match self { $( ProblemCode::$variant => $code, )* }
            }

            /// The HTTP status the API answers with. `busy` may also come as 429; file rejections
            /// (422) are normally reported through status and `Sfm-Rejection-Code`, not as a response.
            pub fn http_status(self) -> u16 {
                match self { $( ProblemCode::$variant => $status, )* }
            }

            /// A short, fixed English summary (the problem's `title`).
            pub fn title(self) -> &'static str {
                match self { $( ProblemCode::$variant => $title, )* }
            }
        }
    };
}

problem_codes! {
    /// No `Sfm-Migration-Key` was sent, and no HelseID token either (the credential of a database
    /// that accepts uploads without a key).
    KeyMissing = "key-missing", 401, "No migration key was sent";
    /// The key does not read `sfmk_<keyId>_<secret>`.
    KeyMalformed = "key-malformed", 401, "The migration key is malformed";
    /// No MigrationKey has this key id.
    KeyUnknown = "key-unknown", 401, "The migration key is unknown";
    /// The key id exists but the secret does not match its digest.
    KeyWrong = "key-wrong", 401, "The migration key is wrong";
    /// The key has passed its time to live.
    KeyExpired = "key-expired", 403, "The migration key has expired";
    /// A newer key for the same database replaced this one.
    KeySuperseded = "key-superseded", 403, "The migration key was replaced by a newer key";
    /// The operator revoked the key.
    KeyRevoked = "key-revoked", 403, "The migration key was revoked";
    /// The key belongs to another database than the upload it addresses.
    KeyWrongDatabase = "key-wrong-database", 403, "The migration key belongs to another database";
    /// The database's policy requires a HelseID access token and none was sent.
    TokenRequired = "token-required", 401, "A HelseID access token is required";
    /// The token failed a check (signature, algorithm, issuer, audience, expiry, DPoP proof).
    TokenInvalid = "token-invalid", 401, "The HelseID access token is not valid";
    /// The DPoP proof must carry the nonce sent in `DPoP-Nonce` (RFC 9449 `use_dpop_nonce`).
    DpopNonceRequired = "dpop-nonce-required", 401, "The DPoP proof must carry the server's nonce";
    /// A request without a migration key whose HelseID token no database accepts uploads from: none
    /// opted in for the token's organisation, client and issuer, or that database is not writable.
    UploaderNoDatabase = "uploader-no-database", 401, "No database accepts uploads with this HelseID token";
    /// A request without a migration key whose HelseID token more than one writable database accepts:
    /// the API does not guess which organisation database the files belong to.
    UploaderAmbiguous = "uploader-ambiguous", 409, "More than one database accepts uploads with this HelseID token";
    /// The token lacks the scope the migration API requires.
    TokenScopeMissing = "token-scope-missing", 403, "The HelseID access token lacks the required scope";
    /// The token's organisation number differs from the database's organisation.
    TokenOrganisationMismatch = "token-organisation-mismatch", 403, "The HelseID access token belongs to another organisation";
    /// `Tus-Resumable` is missing or names a version other than 1.0.0.
    TusVersionUnsupported = "tus-version-unsupported", 412, "The tus protocol version is not supported";
    /// A header is missing or malformed (`Upload-Length`, `Upload-Offset`, `Upload-Checksum`, ...).
    HeaderInvalid = "header-invalid", 400, "A request header is missing or malformed";
    /// `Upload-Metadata` is malformed, lacks `name` or `FileType`, or names an unknown `FileType`.
    MetadataInvalid = "metadata-invalid", 400, "The upload metadata is not valid";
    /// A `PATCH` without `Content-Type: application/offset+octet-stream`.
    ContentTypeInvalid = "content-type-invalid", 415, "The content type is not supported";
    /// No upload has this id (or it was terminated).
    UploadNotFound = "upload-not-found", 404, "The upload does not exist";
    /// The upload was not completed before `Upload-Expires`.
    UploadExpired = "upload-expired", 410, "The upload has expired";
    /// `Upload-Offset` differs from the bytes the server holds; `HEAD` tells the right offset.
    UploadOffsetMismatch = "upload-offset-mismatch", 409, "The upload offset does not match";
    /// `Upload-Length` exceeds `Tus-Max-Size`, or the data exceeds `Upload-Length`.
    UploadTooLarge = "upload-too-large", 413, "The upload is too large";
    /// Termination of an upload that is already complete (its file belongs to the migration now).
    UploadComplete = "upload-complete", 409, "The upload is complete and can no longer be terminated";
    /// `Upload-Checksum` names an algorithm not in `Tus-Checksum-Algorithm`.
    ChecksumAlgorithmUnsupported = "checksum-algorithm-unsupported", 400, "The checksum algorithm is not supported";
    /// The body does not match `Upload-Checksum`; nothing of it was kept (tus status 460).
    ChecksumMismatch = "checksum-mismatch", 460, "The checksum does not match";
    /// A patient or report before the organisation file was stored (comes with `Retry-After` while
    /// the organisation file is still being ingested).
    OrganisationMissing = "organisation-missing", 409, "The organisation file must be stored first";
    /// The migration is validated: no more uploads are accepted.
    MigrationValidated = "migration-validated", 409, "The migration is validated and accepts no more uploads";
    /// The database is operational (or activating): the migration is over.
    MigrationOperational = "migration-operational", 409, "The database is operational and the migration is over";
    /// The manifest body is not a valid manifest.
    ManifestInvalid = "manifest-invalid", 400, "The manifest is not valid";
    /// The stored files differ from the manifest; `mismatches` says how.
    ManifestMismatch = "manifest-mismatch", 409, "The stored files do not match the manifest";
    /// Activation asked for before a successful verify.
    NotValidated = "not-validated", 409, "The migration has not been validated";
    /// A request body did not arrive within the server's time (a body that trickles in would hold
    /// its request slot as long as the sender likes); send smaller chunks.
    RequestTimeout = "request-timeout", 408, "The request body did not arrive in time";
    /// The API is at its limit; retry after `Retry-After` seconds.
    Busy = "busy", 503, "The server is busy, retry later";
    /// No such path.
    NotFound = "not-found", 404, "Not found";
    /// An unexpected server error; the detail names no internals.
    Internal = "internal", 500, "Internal server error";
    /// The envelope's length fields are inconsistent or the file is truncated.
    EnvelopeMalformed = "envelope-malformed", 422, "The file's encryption envelope is malformed";
    /// No key of the API could decrypt the file, or the result is not a readable archive. These are
    /// deliberately one code: separate answers for bad padding and bad archive would make the API a
    /// padding oracle.
    EnvelopeUndecryptable = "envelope-undecryptable", 422, "The file cannot be decrypted";
    /// The archive exceeds the size, ratio or entry count limits (a zip bomb, or not an export).
    ArchiveLimits = "archive-limits", 422, "The file's archive exceeds the limits";
    /// An archive entry name is absolute or climbs out with `..`.
    ArchivePath = "archive-path", 422, "The file's archive has an unsafe entry name";
    /// The archive lacks the expected XML entry (`ExportData.xml`, `PatientData.xml`).
    ArchiveContent = "archive-content", 422, "The file's archive lacks the expected content";
    /// The XML has a DOCTYPE or entity declarations (refused before parsing).
    XmlDoctype = "xml-doctype", 422, "The XML declares a DOCTYPE";
    /// The XML is not well-formed.
    XmlMalformed = "xml-malformed", 422, "The XML is not well-formed";
    /// The XML breaks the schema and the database's policy is strict.
    XmlSchema = "xml-schema", 422, "The XML does not follow the schema";
    /// The root element does not match the `FileType` (an organisation file sent as a patient).
    XmlUnexpectedRoot = "xml-unexpected-root", 422, "The XML root element does not match the file type";
    /// A national identity number, D-number or organisation number fails its check digits.
    DataQualityIdentifier = "data-quality-identifier", 422, "An identifier fails its check digits";
    /// A synthetic test identity where the database's policy forbids them.
    DataQualitySyntheticIdentity = "data-quality-synthetic-identity", 422, "A synthetic test identity is not allowed";
    /// An HPR number referenced by the file belongs to no user of the organisation file.
    DataQualityHprUnknown = "data-quality-hpr-unknown", 422, "A referenced health professional is not a user of the organisation";
    /// The organisation file names another organisation than the database.
    DataQualityOrganisationMismatch = "data-quality-organisation-mismatch", 422, "The file belongs to another organisation";
    /// NHN's uploader sent the file as `FileType` `Unknown` (not `ExportData.dat`, not under
    /// `Patients*` or `Reports*`): not part of an FM export, so not stored.
    FileTypeUnknown = "file-type-unknown", 422, "The file is not part of an FM export";
    /// A value the import needs is missing or empty.
    DataQualityMissingField = "data-quality-missing-field", 422, "A required value is missing";
}

impl ProblemCode {
    /// Whether this code names a rejection of a file's content (recorded in status), rather than a
    /// refused request.
    pub fn is_rejection(self) -> bool {
        self.http_status() == 422
    }

    /// Whether a client should retry the same request later (after `Retry-After`).
    pub fn is_retryable(self) -> bool {
        matches!(self, ProblemCode::Busy | ProblemCode::OrganisationMissing)
    }

    /// The code as the staging database's `sfm.rejections.reason_code` keeps it
    /// (`envelope_undecryptable` for `envelope-undecryptable`).
    pub fn reason_code(self) -> String {
        self.as_str().replace('-', "_")
    }

    /// The code a stored `reason_code` names, if it names one.
    pub fn from_reason_code(reason_code: &str) -> Option<ProblemCode> {
        reason_code.replace('_', "-").parse().ok()
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProblemCode {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProblemCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == s)
            .ok_or(ContractError::ProblemCodeUnknown)
    }
}

impl Serialize for ProblemCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProblemCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

/// An RFC 9457 problem body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `tag:sfm.nhn.no,2025:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// [`ProblemCode::title`].
    pub title: String,
    /// The HTTP status of the response.
    pub status: u16,
    /// What happened in this case, for a human; never personal data or secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request path, when useful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The machine code.
    pub code: ProblemCode,
    /// With `manifest-mismatch`: how the stored files differ from the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatches: Option<ManifestMismatches>,
}

impl Problem {
    /// A problem with the code's type, title and status.
    pub fn new(code: ProblemCode) -> Self {
        Problem {
            type_uri: format!("{PROBLEM_TYPE_PREFIX}{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.http_status(),
            detail: None,
            instance: None,
            code,
            mismatches: None,
        }
    }

    /// Adds a human detail (no personal data, no secrets).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Overrides the status where the contract allows another (`busy` as 429).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

impl From<&ContractError> for Problem {
    fn from(error: &ContractError) -> Self {
        Problem::new(error.problem_code()).with_detail(error.to_string())
    }
}

/// With a `manifest-mismatch` problem: every way the stored files differ from the manifest. Each list
/// holds at most [`MAX_MISMATCHES_LISTED`](super::MAX_MISMATCHES_LISTED) paths; `truncated` says when one was cut.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestMismatches {
    /// In the manifest, never uploaded (or its upload is incomplete).
    pub missing: Vec<String>,
    /// Stored, but not in the manifest.
    pub extra: Vec<String>,
    /// Stored with another sha256, size or file type than the manifest says.
    pub digest_mismatch: Vec<String>,
    /// Its latest upload was rejected.
    pub rejected: Vec<RejectedFile>,
    /// Uploaded completely but not yet ingested: verify again later.
    pub pending: Vec<String>,
    /// Whether any list was cut at [`MAX_MISMATCHES_LISTED`](super::MAX_MISMATCHES_LISTED).
    pub truncated: bool,
}

impl ManifestMismatches {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.digest_mismatch.is_empty()
            && self.rejected.is_empty()
            && self.pending.is_empty()
    }
}

/// A file whose content was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedFile {
    pub path: String,
    pub code: ProblemCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_kebab_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ProblemCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
            assert_eq!(code.as_str().parse::<ProblemCode>().unwrap(), *code);
            assert!((400..=599).contains(&code.http_status()));
        }
        assert!("key-nonsense".parse::<ProblemCode>().is_err());
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ProblemCode::KeyUnknown.http_status(), 401);
        assert_eq!(ProblemCode::KeyExpired.http_status(), 403);
        assert_eq!(ProblemCode::UploadOffsetMismatch.http_status(), 409);
        assert_eq!(ProblemCode::ChecksumMismatch.http_status(), 460);
        assert_eq!(ProblemCode::TusVersionUnsupported.http_status(), 412);
        assert_eq!(ProblemCode::ManifestMismatch.http_status(), 409);
        assert_eq!(ProblemCode::Busy.http_status(), 503);
        assert!(ProblemCode::EnvelopeUndecryptable.is_rejection());
        assert!(ProblemCode::DataQualityHprUnknown.is_rejection());
        assert!(!ProblemCode::MetadataInvalid.is_rejection());
    }

    #[test]
    fn problem_serialises_as_rfc9457() {
        let problem = Problem::new(ProblemCode::KeyExpired).with_detail("The key expired.");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "tag:sfm.nhn.no,2025:problem:key-expired",
                "title": "The migration key has expired",
                "status": 403,
                "detail": "The key expired.",
                "code": "key-expired"
            })
        );
        let back: Problem = serde_json::from_value(json).unwrap();
        assert_eq!(back, problem);
    }

    #[test]
    fn contract_errors_map_to_problems_without_values() {
        let error = super::super::decode_upload_metadata("a YQ==,a Yg==").unwrap_err();
        let problem = Problem::from(&error);
        assert_eq!(problem.code, ProblemCode::MetadataInvalid);
        assert_eq!(problem.status, 400);
        assert!(!problem.detail.unwrap().contains("YQ=="));
    }
}
