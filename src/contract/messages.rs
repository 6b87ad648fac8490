//! The JSON bodies of the API's own endpoints (everything but tus and the manifest): product version,
//! key check, status and activation. Field names are camelCase on the wire.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ContractError;
use super::problem::ProblemCode;
use super::tus::{FileType, TUS_VERSION};

/// The version of this contract's `/api/v1` paths.
pub const API_VERSION: &str = "v1";
/// Most rejections `GET /api/v1/status` lists; the counts are always complete.
pub const MAX_REJECTIONS_LISTED: usize = 1000;

/// The body of `GET /api/sfmProductVersion`, which NHN's uploader asks first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductVersion {
    /// The API's build version (the crate version).
    pub product_version: String,
    /// [`API_VERSION`].
    pub api_version: String,
    /// [`TUS_VERSION`].
    pub tus_version: String,
}

impl ProductVersion {
    /// The version document of a build with `product_version`.
    pub fn new(product_version: impl Into<String>) -> Self {
        ProductVersion {
            product_version: product_version.into(),
            api_version: API_VERSION.to_owned(),
            tus_version: TUS_VERSION.to_owned(),
        }
    }
}

/// The phase of a MigrationDatabase, as its `status.phase` and the API's status report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationPhase {
    Pending,
    Provisioning,
    /// Provisioned, nothing uploaded yet.
    Staging,
    /// Uploads have begun.
    Migrating,
    /// `verify` matched; uploads are refused.
    Validated,
    /// Activation requested and under way.
    Activating,
    /// Switched: the organisation's HelseID client has access; keys no longer work for writes.
    Operational,
    Failed,
    Deleting,
}

impl MigrationPhase {
    pub const ALL: [MigrationPhase; 9] = [
        MigrationPhase::Pending,
        MigrationPhase::Provisioning,
        MigrationPhase::Staging,
        MigrationPhase::Migrating,
        MigrationPhase::Validated,
        MigrationPhase::Activating,
        MigrationPhase::Operational,
        MigrationPhase::Failed,
        MigrationPhase::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Pending => "Pending",
            MigrationPhase::Provisioning => "Provisioning",
            MigrationPhase::Staging => "Staging",
            MigrationPhase::Migrating => "Migrating",
            MigrationPhase::Validated => "Validated",
            MigrationPhase::Activating => "Activating",
            MigrationPhase::Operational => "Operational",
            MigrationPhase::Failed => "Failed",
            MigrationPhase::Deleting => "Deleting",
        }
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MigrationPhase {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MigrationPhase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == s)
            .ok_or(ContractError::PhaseUnknown)
    }
}

impl Serialize for MigrationPhase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MigrationPhase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

/// The 200 body of `POST /api/v1/key-check` (step 11): the key works, and for which database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyCheckResponse {
    /// The key's id (not secret).
    pub key_id: String,
    /// The MigrationDatabase it fills, `<namespace>/<name>`.
    pub database: String,
    /// When the key stops working.
    pub expires_at: DateTime<Utc>,
    /// The database's phase.
    pub phase: MigrationPhase,
    /// Whether the database's policy requires a HelseID token on every request.
    pub token_required: bool,
    /// Whether the organisation file is stored (patients are accepted only then).
    pub organisation_stored: bool,
}

/// Received, stored and rejected counts of one kind of record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Completely uploaded (users: read from the organisation file).
    pub received: u64,
    /// Written to the staging database (distinct: the same file twice counts once).
    pub stored: u64,
    /// Whose latest upload was rejected and not yet replaced by a stored one.
    pub rejected: u64,
}

/// A file whose latest upload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// The upload's `name` (the `Index.txt` path).
    pub file: String,
    /// Its `FileType`.
    pub file_type: FileType,
    /// Why, as a rejection code (`envelope-*`, `archive-*`, `xml-*`, `data-quality-*`).
    pub code: ProblemCode,
    /// What was wrong, for a human: positions and element names, never personal data.
    pub message: String,
    /// When it was rejected.
    pub rejected_at: DateTime<Utc>,
}

/// The body of `GET /api/v1/status`: the migration's progress, what the API also writes to
/// `status.migration` of the MigrationDatabase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The MigrationDatabase, `<namespace>/<name>`.
    pub database: String,
    /// Its phase; the client polls until `Operational` after `activate`.
    pub phase: MigrationPhase,
    /// Why the phase is what it is, when that needs saying (always with `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_reason: Option<String>,
    /// When the first upload of this migration arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Whether the organisation file (with the organisation's HelseID client) is stored.
    pub organisation_stored: bool,
    /// Users from the organisation file.
    pub users: Counts,
    /// Patient files.
    pub patients: Counts,
    /// Report files.
    pub reports: Counts,
    /// Patients the last verified manifest listed, once a verify was attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_patients: Option<u64>,
    /// Unresolved rejections, oldest first, at most [`MAX_REJECTIONS_LISTED`].
    pub rejections: Vec<Rejection>,
    /// Whether `rejections` was cut at [`MAX_REJECTIONS_LISTED`].
    pub rejections_truncated: bool,
    /// The manifest digest of the validation record, once verify matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_digest: Option<String>,
    /// When verify matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_at: Option<DateTime<Utc>>,
    /// When the client asked for operational mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_requested_at: Option<DateTime<Utc>>,
    /// The API's own manifest of what the staging database holds, once no upload is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredFiles>,
}

/// The manifest the API computes from the files it stored: every stored file once (the latest
/// under its name), as `name` was uploaded, in the manifest's canonical form ([`super::Manifest`]).
/// It equals the digest of a verify that matched, when the client's paths are the names uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredFiles {
    /// Files stored.
    pub files: u64,
    /// Lowercase hex SHA-256 of the canonical text.
    pub digest: String,
}

/// The 202 body of `POST /api/v1/activate`. Asking again returns the first request's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivateResponse {
    pub activation_requested_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_version_names_api_and_tus_versions() {
        let json = serde_json::to_value(ProductVersion::new("0.1.0")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"productVersion": "0.1.0", "apiVersion": "v1", "tusVersion": "1.0.0"})
        );
    }

    #[test]
    fn phases_round_trip_and_unknown_fails() {
        for phase in MigrationPhase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(
                serde_json::from_str::<MigrationPhase>(&json).unwrap(),
                phase
            );
        }
        assert!("operational".parse::<MigrationPhase>().is_err());
    }

    #[test]
    fn key_check_serialises_in_camel_case() {
        let at = DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = KeyCheckResponse {
            key_id: "abcd1234".into(),
            database: "tenant-a/oslo-gp".into(),
            expires_at: at,
            phase: MigrationPhase::Staging,
            token_required: true,
            organisation_stored: false,
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "keyId": "abcd1234",
                "database": "tenant-a/oslo-gp",
                "expiresAt": "2025-01-02T03:04:05Z",
                "phase": "Staging",
                "tokenRequired": true,
                "organisationStored": false
            })
        );
        assert_eq!(
            serde_json::from_value::<KeyCheckResponse>(json).unwrap(),
            body
        );
    }
}
