//! The Kubernetes API of the platform: the `MigrationDatabase` and `MigrationKey` custom resources
//! (group `sfm.nhn.no`, version `v1alpha1`, category `sfm`), their conditions, and the generated CRDs.
//!
//! Doc comments on the fields become the descriptions `kubectl explain` shows. Rules the API server can
//! check itself (formats, immutability, versions that only move forward) are CEL rules here, so bad
//! objects are refused at `kubectl apply` time instead of failing later in a reconcile.
//!
//! Who writes what: the operator owns every status field except `status.migration`; the migration API
//! owns `status.migration` under its own field manager and writes nothing else. Nothing in a spec or a
//! status may hold a password, a key or personal data.

pub mod apply;
pub mod conditions;
pub mod database;
pub mod key;

pub use apply::apply_status;
pub use conditions::{ConditionType, set_condition};
pub use database::{
    Activation, ActivationMode, DatabaseCoordinates, HelseIdUploads, LastPass, MigrationDatabase,
    MigrationDatabaseSpec, MigrationDatabaseStatus, MigrationProgress, NetworkPolicySettings,
    Organisation, Phase, ReclaimPolicy, RecordCounts, SchemaCheck, SecretKeyRef, ServerRef,
    StoredManifest, TokenPolicy, ValidationPolicy,
};
pub use key::{KeyPhase, MigrationKey, MigrationKeySpec, MigrationKeyStatus};

use kube::CustomResourceExt;

/// The API group of both kinds.
pub const GROUP: &str = "sfm.nhn.no";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// The CRD manifests as one multi-document YAML stream, in a fixed order (what `sfm-operator crds`
/// prints and what `crds/` holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [MigrationDatabase::crd(), MigrationKey::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
