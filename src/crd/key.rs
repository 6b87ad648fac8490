//! `MigrationKey`: the unique key (step 5 of NHN's process) the data controller's client uses to fill
//! one staging database. The plaintext lives only in a Secret owned by the MigrationKey; the status
//! holds its SHA-256 digest, safe to publish for a 256-bit secret.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A migration key for one MigrationDatabase. The newest key of a database supersedes older ones;
/// keys expire after their time to live, and all keys stop working when the database is operational.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sfm.nhn.no",
    version = "v1alpha1",
    kind = "MigrationKey",
    plural = "migrationkeys",
    shortname = "mkey",
    category = "sfm",
    namespaced,
    status = "MigrationKeyStatus",
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".spec.databaseRef"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.keyId"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationKeySpec {
    /// The name of the MigrationDatabase in the same namespace that this key fills. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("databaseRef is immutable"))]
    pub database_ref: String,

    /// How long the key works after it is issued, as a duration such as `72h` or `30m`
    /// (at least 1 minute, at most 90 days). Defaults to `168h`.
    #[serde(default = "default_time_to_live")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('2160h')").message("timeToLive must be a duration between 1m and 2160h"))]
    pub time_to_live: String,

    /// What the key is for, for the people who read `kubectl get mkey`. No personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub description: Option<String>,

    /// Set to true to revoke the key at once. Cannot be undone.
    #[serde(default)]
    #[x_kube(validation = Rule::new("oldSelf == false || self == true").message("a revoked key stays revoked"))]
    pub revoked: bool,
}

fn default_time_to_live() -> String {
    "168h".to_owned()
}

/// The key's state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPhase {
    /// Waiting for its database, or for the key Secret to be written.
    Pending,
    /// The one key that works for its database.
    Active,
    /// A newer key of the same database replaced it.
    Superseded,
    /// Its time to live ran out, or the database went operational.
    Expired,
    /// Revoked by an operator.
    Revoked,
}

/// What the operator observed and issued.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationKeyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<KeyPhase>,
    /// Why the key is in its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The public part of the key (`sfmk_<keyId>_...`), also the label the API finds it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `metadata.uid` of the MigrationDatabase this key was issued for, bound when the key is first
    /// issued and never changed: the key never works for another database, not even one created
    /// later under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_uid: Option<String>,
    /// Lowercase hex SHA-256 of the whole key string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The Secret (owned by this MigrationKey) holding the key under `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
