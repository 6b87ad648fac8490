//! Status and Events of a MigrationDatabase: one typed server-side apply of the operator's part of
//! the status (never `status.migration`), with conditions merged by type, and Events.

use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::{Context, Error, FIELD_MANAGER};
use crate::crd::conditions::{ConditionType, set_condition};
use crate::crd::{
    DatabaseCoordinates, LastPass, MigrationDatabase, MigrationDatabaseStatus, Phase, apply_status,
};

/// One condition to set: type, status, reason, message.
pub(super) struct Cond(ConditionType, bool, String, String);

pub(super) fn cond(type_: ConditionType, status: bool, reason: &str, message: &str) -> Cond {
    Cond(type_, status, reason.to_owned(), message.to_owned())
}

/// What a status write records besides the phase and the conditions. The default, nothing, is what
/// every write before the end of a successful pass records.
#[derive(Default)]
pub(super) struct StatusParts {
    /// Where the database is; `None` keeps what the status records.
    pub coordinates: Option<DatabaseCoordinates>,
    /// The key in use; `None` leaves it out of the apply, which takes it away.
    pub active_key: Option<String>,
    /// Only the last write of a successful pass records it; every other write takes it away.
    pub last_pass: Option<LastPass>,
}

/// One server-side apply of the operator's status fields. Never includes `status.migration`.
pub(super) async fn patch_status(
    ctx: &Context,
    db: &MigrationDatabase,
    phase: Phase,
    reason: &str,
    conditions: Vec<Cond>,
    parts: StatusParts,
) -> Result<(), Error> {
    let StatusParts {
        coordinates,
        active_key,
        last_pass,
    } = parts;
    let now = jiff::Timestamp::now();
    let mut merged = db
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    for Cond(type_, status, reason, message) in conditions {
        set_condition(
            &mut merged,
            type_,
            status,
            &reason,
            &message,
            db.metadata.generation,
            now,
        );
    }
    let previous = db.status.as_ref();
    let status = MigrationDatabaseStatus {
        phase: Some(phase),
        phase_reason: Some(reason.to_owned()),
        conditions: merged,
        observed_generation: db.metadata.generation,
        database: coordinates.or_else(|| previous.and_then(|s| s.database.clone())),
        active_key,
        // `status.migration` is the migration API's: never part of the operator's apply.
        migration: None,
        // Only the last write of a successful pass records it; every other write takes it away.
        last_pass,
    };
    let api: Api<MigrationDatabase> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    apply_status(&api, &db.name_any(), FIELD_MANAGER, &status).await?;
    Ok(())
}

pub(super) async fn publish(
    ctx: &Context,
    db: &MigrationDatabase,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &db.object_ref(&())).await {
        tracing::warn!(%error, "could not publish an Event");
    }
}
