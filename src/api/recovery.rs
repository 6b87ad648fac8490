//! The recovery loop of every replica: uploads left `complete` (a replica died mid-ingest, or the
//! completing request stopped waiting) are ingested by whichever replica claims them first, and
//! unfinished uploads an hour past their expiry are swept.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::AppState;
use super::auth::Session;
use super::directory::database_uid;
use super::ingest::{Ingester, ingest_upload};

/// After a crash (or when a completing `PATCH` stopped waiting), complete uploads still wait for
/// their ingest: every few seconds each replica claims what no one holds (`SKIP LOCKED`). It also
/// drops unfinished uploads an hour past their expiry.
pub async fn recovery_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        let databases = match state.directory.databases().await {
            Ok(list) => list,
            Err(_) => continue,
        };
        for db in databases {
            let writable = matches!(
                db.status.as_ref().and_then(|s| s.phase),
                Some(
                    crate::crd::Phase::Staging
                        | crate::crd::Phase::Migrating
                        | crate::crd::Phase::Validated
                )
            );
            if !writable {
                continue;
            }
            let Some(uid) = database_uid(&db) else {
                continue;
            };
            let Ok(pool) = state.directory.pool(&db).await else {
                continue;
            };
            let _ = sqlx::query(
                "DELETE FROM sfm.uploads WHERE state IN ('created', 'receiving') AND expires_at < now() - interval '1 hour'",
            )
            .execute(&pool)
            .await;
            let waiting: Vec<(Uuid, String)> = match sqlx::query_as(
                "SELECT id, migration_key_id FROM sfm.uploads WHERE state = 'complete' AND completed_at < now() - interval '3 seconds'
                 ORDER BY completed_at LIMIT 16",
            )
            .fetch_all(&pool)
            .await
            {
                Ok(rows) => rows,
                Err(_) => continue,
            };
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
        }
    }
}
