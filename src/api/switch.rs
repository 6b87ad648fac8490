//! The switch window, decided once. From the moment the operator writes `Activating` (before it
//! closes the migrator) a database takes no more writes: the migration is over. The same holds from
//! `Operational` on, and while it is `Deleting`. A request finds the database's phase in the
//! directory's cache, which may be a second behind the operator; where that matters (a write that
//! failed, verify, activate) the phase is read again from the API server, and the fresh phase wins.
//!
//! [`closed`] is that decision, a pure function of the two phases; everything else here only reads
//! the fresh phase or turns the decision into the answer (`migration-operational`).

use std::sync::Arc;

use kube::ResourceExt;

use super::{ApiError, AppState};
use crate::contract::ProblemCode;
use crate::crd::{MigrationDatabase, Phase};

/// The phase that ends writing, if the database is past staging: the fresh phase when one was
/// read (`Some`, possibly a database without a phase yet), else the cached one.
pub fn closed(cached: Option<Phase>, fresh: Option<Option<Phase>>) -> Option<Phase> {
    match fresh.unwrap_or(cached) {
        Some(phase @ (Phase::Activating | Phase::Operational | Phase::Deleting)) => Some(phase),
        _ => None,
    }
}

/// The answer to a write (or a request for the migrator's connection) once writing has ended.
pub fn refusal(phase: Phase) -> ApiError {
    let detail = match phase {
        Phase::Activating => {
            "the database is being switched to operational mode; the migration is over"
        }
        Phase::Deleting => "the database is being deleted; the migration is over",
        _ => "the database is operational; the migration is over",
    };
    ApiError::new(ProblemCode::MigrationOperational).detail(detail)
}

fn phase_of(db: &MigrationDatabase) -> Option<Phase> {
    db.status.as_ref().and_then(|s| s.phase)
}

/// Refuses when the cached database is past staging.
pub fn ensure_open(db: &MigrationDatabase) -> Result<(), ApiError> {
    match closed(phase_of(db), None) {
        Some(phase) => Err(refusal(phase)),
        None => Ok(()),
    }
}

/// The database read from the API server now, if it is still the same object (same UID).
async fn read_again(
    state: &AppState,
    database: &MigrationDatabase,
) -> Option<Arc<MigrationDatabase>> {
    state
        .directory
        .fresh_database(
            &database.namespace().unwrap_or_default(),
            &database.name_any(),
        )
        .await
        .ok()
        .flatten()
        .filter(|fresh| fresh.uid() == database.uid())
}

/// The database read fresh, if writing to it has ended since it was cached: what `status` and
/// `key-check` then answer from.
pub async fn closed_meanwhile(
    state: &AppState,
    database: &MigrationDatabase,
) -> Option<Arc<MigrationDatabase>> {
    read_again(state, database)
        .await
        .filter(|fresh| closed(None, Some(phase_of(fresh))).is_some())
}

/// Refuses when the database, read fresh, is past staging (verify and activate decide on this).
pub async fn refuse_if_closed(
    state: &AppState,
    database: &MigrationDatabase,
) -> Result<(), ApiError> {
    match closed_meanwhile(state, database).await {
        Some(fresh) => Err(refusal(phase_of(&fresh).unwrap_or(Phase::Operational))),
        None => Ok(()),
    }
}

/// A write's result, with a failure the switch explains: the request found the database in
/// staging in the cache, and if the operator has since written `Activating` (and closed the
/// migrator, which is what broke the write, or the write found the validation record that precedes
/// every switch), the answer is the end of the migration, not a server error or
/// `migration-validated`. Other failures pass through unchanged.
pub async fn explain<T>(
    state: &AppState,
    database: &MigrationDatabase,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let Err(error) = result else {
        return result;
    };
    if !matches!(
        error.code(),
        ProblemCode::Internal | ProblemCode::Busy | ProblemCode::MigrationValidated
    ) {
        return Err(error);
    }
    let fresh = read_again(state, database).await.map(|db| phase_of(&db));
    match closed(phase_of(database), fresh) {
        Some(phase) => Err(refusal(phase)),
        None => {
            tracing::info!(
                code = %error.code(),
                cached_phase = ?phase_of(database),
                fresh_phase = ?fresh.flatten(),
                "a write failed and the switch does not explain it"
            );
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fresh_phase_decides_when_there_is_one_else_the_cached() {
        use Phase::*;
        type Row = (Option<Phase>, Option<Option<Phase>>, Option<Phase>);
        let table: [Row; 14] = [
            // Only the cache: staging phases write, the switch, operational and deletion do not.
            (None, None, None),
            (Some(Pending), None, None),
            (Some(Staging), None, None),
            (Some(Migrating), None, None),
            (Some(Validated), None, None),
            (Some(Failed), None, None),
            (Some(Activating), None, Some(Activating)),
            (Some(Operational), None, Some(Operational)),
            (Some(Deleting), None, Some(Deleting)),
            // Read fresh: the operator wrote `Activating` after the cache was filled.
            (Some(Validated), Some(Some(Activating)), Some(Activating)),
            (Some(Migrating), Some(Some(Operational)), Some(Operational)),
            // Read fresh and still in staging: the cache's staging phase stands.
            (Some(Validated), Some(Some(Validated)), None),
            // A fresh read is newer than the cache whatever it says.
            (Some(Activating), Some(Some(Staging)), None),
            (Some(Staging), Some(None), None),
        ];
        for (cached, fresh, expected) in table {
            assert_eq!(closed(cached, fresh), expected, "{cached:?} {fresh:?}");
        }
    }

    #[test]
    fn each_end_of_writing_is_answered_migration_operational_with_its_reason() {
        for (phase, words) in [
            (Phase::Activating, "being switched"),
            (Phase::Operational, "is operational"),
            (Phase::Deleting, "being deleted"),
        ] {
            let answer = refusal(phase);
            assert_eq!(answer.code(), ProblemCode::MigrationOperational);
            assert!(
                answer
                    .problem
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .contains(words),
                "{phase:?}"
            );
        }
    }
}
