//! `MigrationDatabase`: one health organisation's SFM database, from staging (only the migration API
//! may write) to operational (the organisation's HelseID client gets access).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One health organisation's SFM database, provisioned by the operator in staging mode and switched
/// to operational mode once its migration is validated and activation is requested.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sfm.nhn.no",
    version = "v1alpha1",
    kind = "MigrationDatabase",
    plural = "migrationdatabases",
    shortname = "mdb",
    category = "sfm",
    namespaced,
    status = "MigrationDatabaseStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Organisation","type":"string","jsonPath":".spec.organisation.name"}"#,
    printcolumn = r#"{"name":"Patients","type":"integer","jsonPath":".status.migration.patients.stored"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.phaseReason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 63").message("a MigrationDatabase name is at most 63 characters: its children and the SFM application's pods carry it as a label value"),
    validation = Rule::new("!has(self.spec.helseIdUploads) || (has(self.spec.validation) && has(self.spec.validation.helseId))").message("helseIdUploads needs validation.helseId: the issuer, audience and scope a token without a migration key must satisfy"),
    validation = Rule::new("!has(self.spec.helseIdUploads) || (has(self.spec.activation) && has(self.spec.activation.mode) && self.spec.activation.mode == 'Manual')").message("helseIdUploads needs activation.mode Manual: nobody holding a migration key vouches for such a migration, so an NHN operator approves its digest")
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationDatabaseSpec {
    /// The health organisation whose history is migrated into this database.
    pub organisation: Organisation,

    /// The SFM data model version the database is created at. The schema is applied by the
    /// operator's embedded, versioned migrations; it may move forward, never back.
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("dataModelVersion can move forward, never back"))]
    pub data_model_version: i64,

    /// The PostgreSQL server the database lives on. Empty means the operator's configured default
    /// server. Cannot be changed once set: the data does not move with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("server is immutable"))]
    pub server: Option<ServerRef>,

    /// How the switch to operational mode is approved.
    #[serde(default)]
    pub activation: Activation,

    /// What happens to the database and its roles when this object is deleted. `Retain` (the
    /// default, since this is health data) keeps them and locks the migrator; `Delete` drops them.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// The per-database NetworkPolicy that keeps SFM application pods away from the database server
    /// until the database is operational.
    #[serde(default)]
    pub network_policy: NetworkPolicySettings,

    /// How strictly the migration API checks what is uploaded into this database.
    #[serde(default)]
    pub validation: ValidationPolicy,

    /// Uploads with a HelseID access token and no migration key: what NHN's own uploader
    /// (`SFM.Importer`) sends. Absent (the default), every upload needs the database's migration key.
    /// Present, the migration API takes a request without a key for this database when the token
    /// passes `validation.helseId`, comes from an issuer the API itself trusts, names this
    /// organisation's number and, when `clientId` is set, that client; and this is the only writable
    /// database that accepts such a token. Requires `validation.helseId` and `activation.mode: Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helse_id_uploads: Option<HelseIdUploads>,
}

/// Who may upload without a migration key.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HelseIdUploads {
    /// The HelseID client that may upload (the EPJ's export client, which is not necessarily
    /// `organisation.helseIdClientId`, the client that gets access once operational). Empty: any
    /// client whose token names this organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[A-Za-z0-9._:/-]+$"))]
    pub client_id: Option<String>,

    /// Accept `Authorization: Bearer` tokens too (the uploader's 2022 and 2024 versions send no
    /// other). Off by default: only DPoP-bound tokens with a proof per request.
    #[serde(default)]
    pub allow_bearer: bool,
}

/// The health organisation (dataansvarlig) the database belongs to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Organisation {
    /// The organisation's name as shown to NHN operators.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,

    /// The organisation number (organisasjonsnummer) from Enhetsregisteret: nine digits, the last a
    /// mod-11 check digit. Immutable.
    #[schemars(length(min = 9, max = 9), regex(pattern = r"^[0-9]{9}$"))]
    #[x_kube(
        validation = Rule::new("(11 - (3*int(self.substring(0,1)) + 2*int(self.substring(1,2)) + 7*int(self.substring(2,3)) + 6*int(self.substring(3,4)) + 5*int(self.substring(4,5)) + 4*int(self.substring(5,6)) + 3*int(self.substring(6,7)) + 2*int(self.substring(7,8))) % 11) % 11 == int(self.substring(8,9))").message("organisationNumber has a wrong mod-11 check digit"),
        validation = Rule::new("self == oldSelf").message("organisationNumber is immutable")
    )]
    pub organisation_number: String,

    /// The organisation's HER-id in the Adresseregister, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 12), regex(pattern = r"^[0-9]{1,12}$"))]
    pub her_id: Option<String>,

    /// The HelseID client id that gets access to the database once it is operational.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[A-Za-z0-9._:/-]+$"))]
    pub helse_id_client_id: String,
}

/// Where the database lives.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerRef {
    /// A Secret in this namespace holding an admin connection URI for an existing PostgreSQL server
    /// (a role with CREATEDB and CREATEROLE).
    pub admin_secret_ref: SecretKeyRef,
}

/// A key of a Secret in the object's own namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding a `postgres://` URI. Defaults to `uri`.
    #[serde(default = "default_uri_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_uri_key() -> String {
    "uri".to_owned()
}

/// How activation is approved.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Manual' || !has(self.approvedDigest)").message("approvedDigest is only used with mode Manual"))]
pub struct Activation {
    /// `Automatic`: switch as soon as the migration is validated and activation is requested.
    /// `Manual`: also wait until `approvedDigest` equals the validated manifest digest.
    #[serde(default)]
    pub mode: ActivationMode,

    /// With `Manual`, the validated manifest digest (`status.migration.validatedDigest`) an NHN
    /// operator approves. An approval binds to exactly what was validated: any other digest blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 64), regex(pattern = r"^[0-9a-f]{64}$"))]
    pub approved_digest: Option<String>,
}

/// How activation is approved.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ActivationMode {
    #[default]
    Automatic,
    Manual,
}

/// What happens to the database when its MigrationDatabase is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReclaimPolicy {
    /// Keep the database, its roles and their Secrets; lock the migrator.
    #[default]
    Retain,
    /// Drop the database and its roles.
    Delete,
}

/// The per-database NetworkPolicy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Whether the operator manages the per-database NetworkPolicy.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// The CIDR of the PostgreSQL server, for an external server. SFM application pods of this
    /// database are denied egress to it while in staging and allowed once operational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 43))]
    pub server_cidr: Option<String>,

    /// The PostgreSQL port the policy opens once operational. Defaults to 5432.
    #[serde(default = "default_postgres_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub server_port: i32,
}

impl Default for NetworkPolicySettings {
    fn default() -> Self {
        NetworkPolicySettings {
            enabled: true,
            server_cidr: None,
            server_port: default_postgres_port(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_postgres_port() -> i32 {
    5432
}

/// How strictly uploads are checked.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ValidationPolicy {
    /// Accept synthetic test identities (Test-Norge/Tenor, month + 80). Never in production.
    #[serde(default)]
    pub allow_synthetic_identities: bool,

    /// `Lenient` stores files that depart from NHN's XSD (FmSfmExportImportFormatDefinition.xsd,
    /// applied by libxml2 to every ExportData.xml and PatientData.xml) and records each deviation;
    /// `Strict` rejects them, naming each kind of departure. XML that is not well-formed is
    /// rejected in both.
    #[serde(default)]
    pub schema_check: SchemaCheck,

    /// Require a HelseID access token next to the migration key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helse_id: Option<TokenPolicy>,
}

/// Strictness of the XSD check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SchemaCheck {
    #[default]
    Lenient,
    Strict,
}

/// The HelseID access token the migration API requires.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicy {
    /// The token issuer (`iss`), e.g. `https://helseid-sts.nhn.no`: one of the issuers the migration
    /// API's configuration trusts (chart value `api.trustedIssuers`); any other is refused.
    #[schemars(length(min = 1, max = 500))]
    pub issuer: String,
    /// The audience (`aud`) the token must carry.
    #[schemars(length(min = 1, max = 200))]
    pub audience: String,
    /// A scope the token must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub required_scope: Option<String>,
    /// Accept only DPoP-bound tokens sent with a proof (`Authorization: DPoP`), never Bearer.
    #[serde(default)]
    pub require_dpop: bool,
}

/// The life of a MigrationDatabase, in order.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Pending,
    Provisioning,
    Staging,
    Migrating,
    Validated,
    Activating,
    Operational,
    Failed,
    Deleting,
}

/// What the operator and the migration API observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationDatabaseStatus {
    /// Where the database is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A CamelCase reason for the phase (see the troubleshooting guide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub phase_reason: Option<String>,
    /// `Ready`, `Validated` and `Operational`, in the standard Kubernetes shape. Operator only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the database is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseCoordinates>,
    /// The id of the MigrationKey that currently works for this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub active_key: Option<String>,
    /// Migration progress. Written by the migration API only, never by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationProgress>,
    /// The operator's last full pass that succeeded. Operator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<LastPass>,
}

/// What the operator's last successful full pass depended on, and when it ended: a restarted
/// operator does not repeat a pass that would find nothing to do (each costs PostgreSQL sessions)
/// until the resync is due.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastPass {
    /// A digest of the spec, metadata, keys and migration facts the pass acted on, and of the
    /// operator's build.
    #[schemars(length(max = 64))]
    pub digest: String,
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// Where the database is and the Secrets that reach it (never the passwords themselves).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCoordinates {
    pub host: String,
    pub port: i32,
    /// The PostgreSQL database name.
    pub name: String,
    /// The data model version the schema is at.
    pub data_model_version: i64,
    /// The Secret with the application role's credentials (published when operational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_secret: Option<String>,
    /// The Secret with the migrator's credentials, `namespace/name`, in the migration API's
    /// namespace (removed at activation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrator_secret: Option<String>,
}

/// Migration progress, owned by the migration API (field manager `sfm-migration-api`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationProgress {
    /// The upload session of the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Whether the organisation file is stored (patients are refused until it is).
    #[serde(default)]
    pub organisation_stored: bool,
    /// Users from the organisation file.
    #[serde(default)]
    pub users: RecordCounts,
    /// Patient files.
    #[serde(default)]
    pub patients: RecordCounts,
    /// Report files.
    #[serde(default)]
    pub reports: RecordCounts,
    /// The counts the client's manifest announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_patients: Option<i64>,
    /// The SHA-256 digest of the manifest the API validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_at: Option<String>,
    /// When the client asked for operational mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_requested_at: Option<String>,
    /// What the staging database holds, as a manifest the API computed itself (one line per stored
    /// file: name as uploaded, type, size, SHA-256; the manifest's canonical form). Shown once no
    /// upload is open; `sfm-migrate verify --against-index` compares it with the export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredManifest>,
}

/// The API's own manifest of the stored files.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StoredManifest {
    /// Stored files (the organisation file, patients and reports).
    pub files: i64,
    /// SHA-256 of the manifest's canonical text, lowercase hex: the digest an NHN operator approves
    /// in `spec.activation.approvedDigest` once verify confirmed it.
    pub digest: String,
}

/// Counts of one kind of record.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordCounts {
    #[serde(default)]
    pub received: i64,
    #[serde(default)]
    pub stored: i64,
    #[serde(default)]
    pub rejected: i64,
}
