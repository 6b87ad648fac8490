//! The staging database schema: the embedded, versioned, forward-only migrations in `migrations/`.
//!
//! A migration's number is the SFM data model version a `MigrationDatabase` asks for. A database moves
//! to exactly the version requested and only forward: [`migrate_to`] refuses to go back (there are no
//! down migrations, and dropping columns of health data is not something to do by accident) and refuses
//! versions this build does not embed. Applied migrations are recorded in `_sqlx_migrations` with
//! their checksums, so an edited migration file is detected, never silently re-run.
//!
//! Errors carry version numbers only; this module never reads or reports table contents.

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

/// Every migration of `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Where sqlx records applied migrations (its default, resolved through the `search_path`).
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Why the schema could not be brought to the requested version.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "data model version {requested} is not known to this build; it knows versions 1 to {latest}"
    )]
    UnknownVersion { requested: i64, latest: i64 },
    #[error(
        "the database is already at data model version {database}, past the requested {target}; migrations only move forward"
    )]
    WouldGoBackwards { database: i64, target: i64 },
    #[error(
        "the database has data model version {0} applied, which this build does not know; a newer release migrated it"
    )]
    UnknownAppliedVersion(i64),
    #[error("migration {0} applied to the database differs from the one embedded in this build")]
    ModifiedMigration(i64),
    #[error(
        "migration {0} failed part-way and left the database dirty; it needs a person to look at it"
    )]
    Dirty(i64),
    #[error("applying the migrations failed: {0}")]
    Migrate(MigrateError),
    #[error("reading the schema version failed: {0}")]
    Database(sqlx::Error),
}

impl From<MigrateError> for SchemaError {
    fn from(error: MigrateError) -> Self {
        match error {
            MigrateError::VersionMissing(version) => SchemaError::UnknownAppliedVersion(version),
            MigrateError::VersionMismatch(version) => SchemaError::ModifiedMigration(version),
            MigrateError::Dirty(version) => SchemaError::Dirty(version),
            other => SchemaError::Migrate(other),
        }
    }
}

/// The data model versions this build can create, ascending.
pub fn data_model_versions() -> Vec<i64> {
    MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .map(|migration| migration.version)
        .collect()
}

/// The newest data model version this build can create.
pub fn latest_version() -> i64 {
    *data_model_versions()
        .last()
        .expect("the crate embeds at least one migration")
}

/// The highest data model version applied to the database, `None` for a database never migrated.
pub async fn applied_version(pool: &PgPool) -> Result<Option<i64>, SchemaError> {
    let mut connection = pool.acquire().await.map_err(SchemaError::Database)?;
    let applied = applied_versions(&mut connection).await?;
    Ok(applied.iter().copied().max())
}

/// Brings the database to exactly `target_version`: applies the missing migrations up to it, in order,
/// each in its own transaction. Already at the target: nothing happens. Past it, or an unknown
/// version: an error, and nothing changes.
pub async fn migrate_to(pool: &PgPool, target_version: i64) -> Result<(), SchemaError> {
    let embedded = data_model_versions();
    if !embedded.contains(&target_version) {
        return Err(SchemaError::UnknownVersion {
            requested: target_version,
            latest: latest_version(),
        });
    }
    let mut connection = pool.acquire().await.map_err(SchemaError::Database)?;
    let result = migrate_locked(&mut connection, &embedded, target_version).await;
    if result.is_err() {
        // A failed run can return with sqlx's advisory lock still held by this session; closing the
        // connection releases it instead of handing a locked session back to the pool.
        connection.close_on_drop();
    }
    result
}

/// Holds sqlx's migration lock (a session advisory lock per database) across the version check and
/// the run, so no other migrator moves the database in between. Advisory locks stack within a
/// session: `run_to` takes and releases the same lock once more inside.
async fn migrate_locked(
    connection: &mut PoolConnection<Postgres>,
    embedded: &[i64],
    target_version: i64,
) -> Result<(), SchemaError> {
    let connection: &mut PgConnection = connection;
    connection.lock().await?;
    let applied = applied_versions(connection).await?;
    check_target(&applied, embedded, target_version)?;
    MIGRATOR.run_to(target_version, &mut *connection).await?;
    connection.unlock().await?;
    Ok(())
}

/// Decides whether moving a database with `applied` versions to `target` is allowed.
fn check_target(applied: &[i64], embedded: &[i64], target: i64) -> Result<(), SchemaError> {
    if let Some(&unknown) = applied
        .iter()
        .filter(|version| !embedded.contains(version))
        .max()
    {
        return Err(SchemaError::UnknownAppliedVersion(unknown));
    }
    match applied.iter().copied().max() {
        Some(database) if database > target => {
            Err(SchemaError::WouldGoBackwards { database, target })
        }
        _ => Ok(()),
    }
}

/// Versions recorded as successfully applied; empty when the migrations table does not exist yet.
async fn applied_versions(connection: &mut PgConnection) -> Result<Vec<i64>, SchemaError> {
    let table_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(MIGRATIONS_TABLE)
        .fetch_one(&mut *connection)
        .await
        .map_err(SchemaError::Database)?;
    if !table_exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *connection)
        .await
        .map_err(SchemaError::Database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_from_one_without_gaps() {
        let versions = data_model_versions();
        let expected: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(versions, expected);
        assert_eq!(latest_version(), versions.len() as i64);
    }

    #[test]
    fn every_migration_says_what_it_is_for() {
        for migration in MIGRATOR.iter() {
            let sql = migration.sql.as_str();
            assert!(
                sql.starts_with("-- "),
                "migration {} must start with a comment saying what it is for",
                migration.version
            );
            assert!(
                !sql.contains("DROP TABLE"),
                "migration {} drops a table",
                migration.version
            );
        }
    }

    #[test]
    fn moving_forward_or_staying_is_allowed() {
        assert!(check_target(&[], &[1, 2, 3], 2).is_ok());
        assert!(check_target(&[1], &[1, 2, 3], 3).is_ok());
        assert!(check_target(&[1, 2], &[1, 2, 3], 2).is_ok());
    }

    #[test]
    fn moving_back_is_refused() {
        assert!(matches!(
            check_target(&[1, 2, 3], &[1, 2, 3], 1),
            Err(SchemaError::WouldGoBackwards {
                database: 3,
                target: 1
            })
        ));
    }

    #[test]
    fn a_database_from_a_newer_release_is_refused() {
        assert!(matches!(
            check_target(&[1, 2, 7], &[1, 2, 3], 3),
            Err(SchemaError::UnknownAppliedVersion(7))
        ));
    }
}
