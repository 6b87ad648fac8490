//! The activation rule of DESIGN section 3, as a pure function of the database and the validation
//! record read from PostgreSQL: what a database in staging waits for, or that it switches now.

use crate::crd::{ActivationMode, MigrationDatabase};
use crate::postgres::provision::ValidationRecord;

/// What the activation rule decides for a database in staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActivationDecision {
    /// No validation record in PostgreSQL yet.
    NotValidated,
    /// The status claims a digest that the record in PostgreSQL does not hold.
    DigestMismatch,
    /// Validated; waiting for the client's activation request.
    AwaitingRequest,
    /// Manual activation: waiting for `spec.activation.approvedDigest` to equal the validated digest.
    AwaitingApproval,
    /// Every condition holds: switch.
    Switch,
}

/// DESIGN section 3, "Activation, defined once": (1) a validation record exists in the database,
/// (2) `status.migration.validatedDigest` equals its digest, (3) activation was requested, (4) the
/// mode is Automatic, or Manual with an approval of exactly that digest.
pub fn activation_decision(
    db: &MigrationDatabase,
    record: Option<&ValidationRecord>,
) -> ActivationDecision {
    let Some(record) = record else {
        return ActivationDecision::NotValidated;
    };
    let claimed = db
        .status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .and_then(|m| m.validated_digest.as_deref());
    if claimed != Some(record.manifest_digest.as_str()) {
        return ActivationDecision::DigestMismatch;
    }
    if !record.activation_requested {
        return ActivationDecision::AwaitingRequest;
    }
    match db.spec.activation.mode {
        ActivationMode::Automatic => ActivationDecision::Switch,
        ActivationMode::Manual
            if db.spec.activation.approved_digest.as_deref()
                == Some(record.manifest_digest.as_str()) =>
        {
            ActivationDecision::Switch
        }
        ActivationMode::Manual => ActivationDecision::AwaitingApproval,
    }
}
