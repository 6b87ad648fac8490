//! The recovery loop of every replica: uploads left `complete` (a replica died mid-ingest, or the
//! completing request stopped waiting) are ingested by whichever replica claims them first, and
//! unfinished uploads an hour past their expiry are swept.
//!
//! Connections are what it must not waste: a database this replica served lately
//! ([`RECENTLY_ACTIVE`]) is scanned every [`SCAN_EVERY`]; any other staging database once when the
//! replica first sees it (so a replica that starts, or restarts, takes over what a dead one left at
//! once) and then about every [`IDLE_SCAN_EVERY`], at a time of its own (the scans of many idle
//! databases are spread out), through one connection of its own, closed right after (never the
//! pool: requests may be using it). A scan that finds uploads waiting makes the database one this
//! replica serves. Pools of databases that left staging or are gone are closed. A thousand
//! databases waiting for their uploads hold no connection of this replica.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::AppState;
use super::auth::Session;
use super::directory::database_uid;
use super::ingest::{Ingester, ingest_upload};
use crate::crd::{MigrationDatabase, Phase};

/// How often a database this replica serves is scanned.
pub const SCAN_EVERY: Duration = Duration::from_secs(5);
/// How long after its last request a database counts as served by this replica.
pub const RECENTLY_ACTIVE: Duration = Duration::from_secs(600);
/// How often any other staging database is scanned.
pub const IDLE_SCAN_EVERY: Duration = Duration::from_secs(600);

/// Whether the database takes uploads (and so may have some left to ingest).
fn in_staging(db: &MigrationDatabase) -> bool {
    matches!(
        db.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Staging | Phase::Migrating | Phase::Validated)
    )
}

/// After a crash (or when a completing `PATCH` stopped waiting), complete uploads still wait for
/// their ingest: each replica claims what no one holds (`SKIP LOCKED`). It also drops unfinished
/// uploads an hour past their expiry.
pub async fn recovery_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(SCAN_EVERY);
    // When each idle database is next due; a new one gets a due time spread over the period.
    let mut idle_due: HashMap<Uuid, Instant> = HashMap::new();
    loop {
        interval.tick().await;
        let databases = match state.directory.databases().await {
            Ok(list) => list,
            Err(_) => continue,
        };
        let staging: Vec<(Uuid, Arc<MigrationDatabase>)> = databases
            .into_iter()
            .filter(|db| in_staging(db) && state.directory.serves(db))
            .filter_map(|db| database_uid(&db).map(|uid| (uid, db)))
            .collect();
        let keep: HashSet<Uuid> = staging.iter().map(|(uid, _)| *uid).collect();
        state.directory.forget_pools_except(&keep).await;
        idle_due.retain(|uid, _| keep.contains(uid));
        let now = Instant::now();
        for (uid, db) in staging {
            let active = state.recently_active(uid, RECENTLY_ACTIVE);
            if !active {
                let due = *idle_due.entry(uid).or_insert(now);
                if due > now {
                    continue;
                }
                let Some(waiting) = look(&state, &db).await else {
                    continue;
                };
                idle_due.insert(
                    uid,
                    now + IDLE_SCAN_EVERY / 2 + spread(uid, IDLE_SCAN_EVERY / 2),
                );
                if !waiting {
                    continue;
                }
                // Uploads wait for their ingest: scanned often until they are taken.
                state.note_activity(uid);
            }
            if scan(&state, uid, &db).await {
                // Uploads were waiting: scanned often until they are taken.
                state.note_activity(uid);
            }
        }
    }
}

/// Where in `period` a database's idle scans fall: from its UID, so replicas and restarts spread
/// them the same way without coordinating.
fn spread(uid: Uuid, period: Duration) -> Duration {
    let fraction = (uid.as_u128() % 1000) as u32;
    period * fraction / 1000
}

/// The look at a database this replica does not serve, through a connection of its own closed
/// right after: the sweep of expired uploads and old DPoP proofs, and whether any upload waits for
/// its ingest (however recently completed: the scan leaves the newest to their own request a few
/// seconds, and a database found with one is scanned every few seconds from then on). `None` when
/// every connection of the replica's budget is in use: the look is tried again at the next tick.
async fn look(state: &AppState, db: &MigrationDatabase) -> Option<bool> {
    use sqlx::Connection as _;
    let once = match state.directory.connect_once(db).await {
        Ok(once) => once,
        Err(error) if error.code() == crate::contract::ProblemCode::Busy => return None,
        Err(_) => return Some(false),
    };
    let mut connection = once.connection;
    sweep(&mut connection).await;
    let waiting: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sfm.uploads WHERE state = 'complete')")
            .fetch_one(&mut connection)
            .await
            .unwrap_or(false);
    let _ = connection.close().await;
    Some(waiting)
}

/// The sweep of a database: unfinished uploads an hour past their expiry and DPoP proofs too old
/// to be replayed. A failure is left for the next sweep.
async fn sweep(connection: &mut sqlx::PgConnection) {
    let _ = sqlx::query(
        "DELETE FROM sfm.uploads WHERE state IN ('created', 'receiving') AND expires_at < now() - interval '1 hour'",
    )
    .execute(&mut *connection)
    .await;
    let _ =
        sqlx::query("DELETE FROM sfm.dpop_proofs WHERE seen_at < now() - interval '10 minutes'")
            .execute(&mut *connection)
            .await;
}

/// One scan of one database: the sweep of expired uploads, then the ingest of what waits. Whether
/// uploads were waiting.
async fn scan(state: &Arc<AppState>, uid: Uuid, db: &Arc<MigrationDatabase>) -> bool {
    let Ok(pool) = state.directory.pool(db).await else {
        return false;
    };
    if let Ok(mut connection) = pool.acquire().await {
        sweep(&mut connection).await;
    }
    let waiting: Vec<(Uuid, String)> = match sqlx::query_as(
        "SELECT id, migration_key_id FROM sfm.uploads WHERE state = 'complete' AND completed_at < now() - interval '3 seconds'
         ORDER BY completed_at LIMIT 16",
    )
    .fetch_all(&pool)
    .await
    {
        Ok(rows) => rows,
        Err(_) => return false,
    };
    let found = !waiting.is_empty();
    for (upload, key_id) in waiting {
        let session = Session {
            database: db.clone(),
            uid,
            key_id,
            helseid_client: None,
            pool: pool.clone(),
        };
        tracing::info!(database = %session.database_name(), "ingesting an upload left complete");
        tracing::debug!(%upload, "ingesting an upload left complete");
        let _ = ingest_upload(state.clone(), session, upload, Ingester::Recovery).await;
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn idle_scans_are_spread_over_the_period_by_uid() {
        let period = Duration::from_secs(600);
        let offsets: Vec<Duration> = (0..200)
            .map(|_| super::spread(uuid::Uuid::new_v4(), period))
            .collect();
        assert!(offsets.iter().all(|o| *o < period));
        // 200 databases: no 5-second window holds more than a handful of first scans.
        let mut per_window = std::collections::HashMap::new();
        for offset in &offsets {
            *per_window.entry(offset.as_secs() / 5).or_insert(0) += 1;
        }
        assert!(per_window.values().all(|n| *n <= 12), "{per_window:?}");
    }
}
