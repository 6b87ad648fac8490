//! The migration key's rules: pure functions of a key (and its database's phase) that say whether
//! the key may write, may read, and which database it opens. No I/O here; [`super::auth`] finds the
//! key and the database and applies these.

use std::str::FromStr;
use std::sync::Arc;

use axum::http::HeaderMap;
use kube::ResourceExt;

use super::ApiError;
use crate::contract::{self, MigrationKeyToken, ProblemCode};
use crate::crd::{KeyPhase, MigrationDatabase, MigrationKey, Phase};

/// The key id the operator published in the key's status.
pub fn status_key_id(key: &MigrationKey) -> Option<&str> {
    key.status.as_ref().and_then(|s| s.key_id.as_deref())
}

/// The key from `Sfm-Migration-Key`, if sent.
pub fn header_key(headers: &HeaderMap) -> Result<Option<MigrationKeyToken>, ApiError> {
    match headers.get(contract::HEADER_MIGRATION_KEY) {
        None => Ok(None),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::new(ProblemCode::KeyMalformed).detail("the key header is not ASCII")
            })?;
            Ok(Some(MigrationKeyToken::from_str(text.trim())?))
        }
    }
}

/// Whether a key (already matched, or named by an upload) still works: phase Active, not expired.
/// These answers come only after the secret matched, so they tell nothing to a stranger.
pub fn check_key_usable(
    key: &MigrationKey,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let status = key.status.as_ref();
    match status.and_then(|s| s.phase) {
        Some(KeyPhase::Active) => {}
        Some(KeyPhase::Superseded) => return Err(ApiError::new(ProblemCode::KeySuperseded)),
        Some(KeyPhase::Expired) => return Err(ApiError::new(ProblemCode::KeyExpired)),
        Some(KeyPhase::Revoked) => return Err(ApiError::new(ProblemCode::KeyRevoked)),
        Some(KeyPhase::Pending) | None => {
            return Err(ApiError::new(ProblemCode::KeyUnknown).detail("the key is not issued yet"));
        }
    }
    if key.spec.revoked {
        return Err(ApiError::new(ProblemCode::KeyRevoked));
    }
    match key_expires_at(key) {
        Some(at) if at > now => Ok(()),
        _ => Err(ApiError::new(ProblemCode::KeyExpired)),
    }
}

/// The key's expiry, for key-check.
pub fn key_expires_at(key: &MigrationKey) -> Option<chrono::DateTime<chrono::Utc>> {
    key.status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// How `status` and `key-check` are answered, for a key whose secret matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAnswer {
    /// From the staging database through the migrator's pool: the database is in staging.
    Live,
    /// From the MigrationDatabase's status, without a database connection: the database is
    /// `Activating` or `Operational`, so its migrator is being closed or closed.
    FromStatus,
}

/// The read decision for a matched key and the phase of its database (`None` when the database
/// has no phase yet or does not exist). In staging a key must be usable (Active, within its time to
/// live). While `Activating` and once `Operational` the answer comes from the status, and the key
/// may also be expired (the switch expires every key of the database, and its time to live may run
/// out meanwhile); it may never be revoked, superseded or not yet issued. The HelseID token, when the
/// database requires one, is checked by the caller either way.
pub fn read_answer(
    key: &MigrationKey,
    database_phase: Option<Phase>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ReadAnswer, ApiError> {
    let switched = matches!(database_phase, Some(Phase::Activating | Phase::Operational));
    match check_key_usable(key, now) {
        Ok(()) if switched => Ok(ReadAnswer::FromStatus),
        Ok(()) => Ok(ReadAnswer::Live),
        Err(error) if switched && error.code() == ProblemCode::KeyExpired => {
            if key.spec.revoked {
                Err(ApiError::new(ProblemCode::KeyRevoked))
            } else {
                Ok(ReadAnswer::FromStatus)
            }
        }
        Err(error) => Err(error),
    }
}

pub fn key_id_of(key: &MigrationKey) -> String {
    key.status
        .as_ref()
        .and_then(|s| s.key_id.clone())
        .unwrap_or_default()
}

/// The key's database if the key was issued for it (its UID), else `key-unknown`: a database of
/// the key's `databaseRef` created after the key's own was deleted is another database.
pub fn issued_for(
    key: &MigrationKey,
    database: Option<Arc<MigrationDatabase>>,
) -> Result<Arc<MigrationDatabase>, ApiError> {
    let database = database.ok_or_else(|| {
        ApiError::new(ProblemCode::KeyUnknown).detail("the key's database does not exist")
    })?;
    let bound = key.status.as_ref().and_then(|s| s.database_uid.as_deref());
    match (bound, database.uid()) {
        (Some(bound), Some(uid)) if bound == uid => Ok(database),
        (None, _) => {
            Err(ApiError::new(ProblemCode::KeyUnknown).detail("the key is not issued yet"))
        }
        _ => Err(ApiError::new(ProblemCode::KeyUnknown)
            .detail("the key was issued for a database that no longer exists")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MigrationKeySpec, MigrationKeyStatus};

    fn key(phase: KeyPhase, revoked: bool, expires_in_hours: i64) -> MigrationKey {
        let now = chrono::Utc::now();
        let mut key = MigrationKey::new(
            "k",
            MigrationKeySpec {
                database_ref: "db".into(),
                time_to_live: "2h".into(),
                description: None,
                revoked,
            },
        );
        key.status = Some(MigrationKeyStatus {
            phase: Some(phase),
            key_id: Some("abcdefgh".into()),
            digest: Some("00".repeat(32)),
            expires_at: Some((now + chrono::Duration::hours(expires_in_hours)).to_rfc3339()),
            ..Default::default()
        });
        key
    }

    fn answer(key: &MigrationKey, phase: Option<Phase>) -> Result<ReadAnswer, ProblemCode> {
        read_answer(key, phase, chrono::Utc::now()).map_err(|e| e.code())
    }

    const STAGING: [Option<Phase>; 6] = [
        None,
        Some(Phase::Pending),
        Some(Phase::Provisioning),
        Some(Phase::Staging),
        Some(Phase::Migrating),
        Some(Phase::Validated),
    ];
    const SWITCHED: [Option<Phase>; 2] = [Some(Phase::Activating), Some(Phase::Operational)];

    /// Asserts each (key phase, revoked, hours left to live) answers `expected` in every phase given.
    fn expect(
        phases: &[Option<Phase>],
        cases: &[(KeyPhase, bool, i64, Result<ReadAnswer, ProblemCode>)],
    ) {
        for phase in phases {
            for (key_phase, revoked, hours, expected) in cases {
                assert_eq!(
                    answer(&key(*key_phase, *revoked, *hours), *phase),
                    *expected,
                    "{key_phase:?} revoked={revoked} hours={hours} in {phase:?}"
                );
            }
        }
    }

    #[test]
    fn in_staging_a_usable_key_reads_live_and_any_other_key_is_refused_for_its_fault() {
        expect(
            &STAGING,
            &[
                (KeyPhase::Active, false, 1, Ok(ReadAnswer::Live)),
                (KeyPhase::Expired, false, 1, Err(ProblemCode::KeyExpired)),
                // Past its time to live.
                (KeyPhase::Active, false, -1, Err(ProblemCode::KeyExpired)),
                (
                    KeyPhase::Superseded,
                    false,
                    1,
                    Err(ProblemCode::KeySuperseded),
                ),
                (KeyPhase::Revoked, true, 1, Err(ProblemCode::KeyRevoked)),
            ],
        );
    }

    #[test]
    fn while_activating_and_once_operational_an_active_or_expired_key_reads_the_status() {
        for phase in SWITCHED {
            for key in [
                key(KeyPhase::Active, false, 1),
                key(KeyPhase::Expired, false, 1),
                key(KeyPhase::Active, false, -1),
                key(KeyPhase::Expired, false, -1),
            ] {
                assert_eq!(answer(&key, phase), Ok(ReadAnswer::FromStatus), "{phase:?}");
            }
        }
    }

    #[test]
    fn a_revoked_superseded_or_unissued_key_never_reads_even_after_the_switch() {
        expect(
            &SWITCHED,
            &[
                (KeyPhase::Revoked, true, 1, Err(ProblemCode::KeyRevoked)),
                // Expired by the switch, but revoked in its spec: still revoked.
                (KeyPhase::Expired, true, 1, Err(ProblemCode::KeyRevoked)),
                (KeyPhase::Active, true, 1, Err(ProblemCode::KeyRevoked)),
                (
                    KeyPhase::Superseded,
                    false,
                    1,
                    Err(ProblemCode::KeySuperseded),
                ),
                (KeyPhase::Pending, false, 1, Err(ProblemCode::KeyUnknown)),
            ],
        );
    }

    #[test]
    fn failed_and_deleting_databases_are_not_read_from_their_status() {
        for phase in [Some(Phase::Failed), Some(Phase::Deleting)] {
            assert_eq!(
                answer(&key(KeyPhase::Active, false, 1), phase),
                Ok(ReadAnswer::Live)
            );
            assert_eq!(
                answer(&key(KeyPhase::Expired, false, 1), phase),
                Err(ProblemCode::KeyExpired)
            );
        }
    }
}
