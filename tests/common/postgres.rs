//! PostgreSQL for integration tests: the server `hack/postgres.sh start` runs (found through
//! `SFM_PG_ADMIN_URL`), with a fresh, randomly named database per test that is dropped afterwards, so
//! tests run in parallel against one server.
//!
//! Without `SFM_PG_ADMIN_URL` a test fails with instructions, it never passes silently; only an explicit
//! `SFM_SKIP_PG=1` skips. Never print the admin URL: it holds the superuser password.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgPool};

use sfm_migration::postgres::Statement;

const HOW_TO_START: &str = "SFM_PG_ADMIN_URL is not set. Start the test server first:\n    \
     bash hack/postgres.sh start /tmp/sfm-pg-test && source /tmp/sfm-pg-test/env\n\
     (or set SFM_SKIP_PG=1 to skip the PostgreSQL tests on purpose)";

/// A database made for one test.
#[derive(Clone)]
pub struct TestDatabase {
    pub name: String,
    /// Connects to this database as the superuser.
    pub options: PgConnectOptions,
    pub pool: PgPool,
}

/// Connection options for the admin database, `None` only when `SFM_SKIP_PG=1`.
pub fn admin_options() -> Option<PgConnectOptions> {
    match std::env::var("SFM_PG_ADMIN_URL") {
        Ok(url) if !url.is_empty() => Some(
            url.parse()
                .unwrap_or_else(|_| panic!("SFM_PG_ADMIN_URL is not a valid PostgreSQL URL")),
        ),
        _ if std::env::var("SFM_SKIP_PG").as_deref() == Ok("1") => None,
        _ => panic!("{HOW_TO_START}"),
    }
}

/// Runs `test` against a new empty database and drops the database afterwards, also when the test
/// panics (the panic is then passed on).
pub async fn with_database<F, Fut>(test: F)
where
    F: FnOnce(TestDatabase) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(admin_options) = admin_options() else {
        eprintln!("SFM_SKIP_PG=1: skipping a PostgreSQL test");
        return;
    };
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(admin_options.clone())
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test PostgreSQL server: {error}"));
    let name = format!("sfm_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(
            Statement::new("CREATE DATABASE ")
                .ident(&name)
                .expect("a valid identifier"),
        )
        .await
        .expect("create the test database");

    let options = admin_options.database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options.clone())
        .await
        .expect("connect to the test database");
    let database = TestDatabase {
        name: name.clone(),
        options,
        pool: pool.clone(),
    };
    let outcome = AssertUnwindSafe(test(database)).catch_unwind().await;

    pool.close().await;
    admin
        .execute(
            Statement::new("DROP DATABASE IF EXISTS ")
                .ident(&name)
                .expect("a valid identifier")
                .push(" WITH (FORCE)"),
        )
        .await
        .expect("drop the test database");
    admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// What the API's guard reads before `store` (the organisation file stored last), for a database
/// the tests migrated themselves (no operator, so no metadata row for the guard to check).
pub async fn guard_read(tx: &mut sqlx::PgConnection) -> sfm_migration::api::guard::Writable {
    let organisation: Option<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT stored_file_id, updated_at FROM sfm.organisation")
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
    sfm_migration::api::guard::Writable {
        database: uuid::Uuid::nil(),
        organisation_file: organisation.map(|(stored_file_id, stored_at)| {
            sfm_migration::api::guard::OrganisationFile {
                stored_file_id,
                stored_at,
            }
        }),
    }
}
