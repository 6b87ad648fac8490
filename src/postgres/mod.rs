//! PostgreSQL: the staging database schema, and the SQL building blocks the operator provisions with.
//!
//! - [`schema`]: the embedded, forward-only migrations (`migrations/`) and [`migrate_to`], which moves
//!   a database to exactly the data model version a `MigrationDatabase` asks for.
//! - [`sql`]: the one place that quotes identifiers and literals and turns Kubernetes names into
//!   PostgreSQL identifiers.
//! - [`scram`]: SCRAM-SHA-256 verifiers, so the operator sends `PASSWORD '<verifier>'` and never a
//!   password.
//!
//! The staging database stores personal data (names, national identity numbers, HPR numbers) because
//! that is its job. This module must never put any of it, nor a password, verifier or migration key,
//! into an error message, a log line or Debug output.

pub mod backstop;
pub mod provision;
pub mod schema;
pub mod scram;
pub mod sql;

pub use schema::{
    MIGRATOR, SchemaError, applied_version, data_model_versions, latest_version, migrate_to,
};
pub use scram::{
    DEFAULT_ITERATIONS, generate_password, new_scram_sha256_verifier, parse_scram_sha256_verifier,
    scram_sha256_verifier, scram_sha256_verifier_matches,
};
pub use sql::{SqlError, Statement, quote_ident, quote_literal, sanitise_identifier};
