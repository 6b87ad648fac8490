//! The template a new staging database is copied from: one per data model version on each server.
//!
//! Replaying the embedded migrations for every new database costs about three times what copying an
//! already migrated database costs (`CREATE DATABASE ... TEMPLATE`), and that was most of the time
//! to provision 1,000 organisations. So the operator keeps, per server and version:
//!
//! - a database `sfm_template_v<N>`, owned by the admin role, built by the same embedded migrations
//!   run as the role `sfm_template_owner` (so every object in it belongs to that role and nothing
//!   else), tagged with the version and the checksums of the migrations it holds, marked as a
//!   template and closed to connections: nobody, the operator included, ever connects to it once it
//!   is built, so a copy never fails on a session inside it;
//! - a copy gets the new database's owner, and inside it `REASSIGN OWNED` hands every object from
//!   `sfm_template_owner` to that owner: the copy is then what replaying the migrations as the owner
//!   makes (a test compares the two).
//!
//! Built when missing, rebuilt when its tag does not match this binary's migrations, both under an
//! exclusive advisory lock; copies hold the same lock shared, so a rebuild never drops a template
//! under a copy. A build that crashes leaves a `tmp_` database that the next build drops; the
//! template's real name only ever appears on a finished, tagged template. A database of that name
//! without the tag, or a role `sfm_template_owner` without its tag, is not ours: the operator then
//! falls back to replaying the migrations and never copies or changes it.

use aws_lc_rs::digest;
use sqlx::{Connection, PgConnection};

use super::{AdminSession, ProvisionError, connect, migrate_as, temporary_name};
use crate::postgres::schema::MIGRATOR;
use crate::postgres::sql::Statement;

/// The role that owns every object inside a template.
pub const TEMPLATE_OWNER: &str = "sfm_template_owner";
/// What the template owner role's comment says.
const TEMPLATE_OWNER_TAG: &str = "sfm.nhn.no/template-owner";
/// How a template's tag starts; the rest names the version and its migrations' checksums.
const TEMPLATE_TAG_PREFIX: &str = "sfm.nhn.no/template=";

/// The template database of a data model version.
pub fn template_name(version: i64) -> String {
    format!("sfm_template_v{version}")
}

/// The tag of an up-to-date template of `version`: the version and a SHA-256 over the versions and
/// checksums of the embedded migrations up to it, so an edited migration means a new template.
pub fn template_tag(version: i64) -> String {
    let mut hasher = digest::Context::new(&digest::SHA256);
    for migration in MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && m.version <= version)
    {
        hasher.update(&migration.version.to_be_bytes());
        hasher.update(&migration.checksum);
    }
    format!(
        "{TEMPLATE_TAG_PREFIX}v{version};migrations={}",
        hex::encode(hasher.finish())
    )
}

/// What the server holds under a template's name.
enum Found {
    Current,
    Missing,
    /// Ours, from other migrations: dropped and built again.
    Stale,
    /// Not made by the operator: never used, never touched.
    Foreign,
}

impl AdminSession {
    /// Creates `database` (owned by `owner`) as a copy of the template of `version`, building the
    /// template first when needed. Returns false, having created nothing, when the server holds
    /// something of the template's names that the operator did not make: the caller then creates
    /// the database empty and replays the migrations.
    pub(super) async fn create_from_template(
        &mut self,
        database: &str,
        owner: &str,
        version: i64,
    ) -> Result<bool, ProvisionError> {
        let template = template_name(version);
        let lock = format!("sfm-operator:template:{template}");
        for _ in 0..2 {
            sqlx::query("SELECT pg_advisory_lock_shared(hashtextextended($1, 0))")
                .bind(&lock)
                .execute(&mut self.connection)
                .await?;
            let found = find(&mut self.connection, &template, version).await;
            let copied = match found {
                Ok(Found::Current) => self
                    .exec(
                        Statement::new("CREATE DATABASE ")
                            .ident(database)?
                            .push(" TEMPLATE ")
                            .ident(&template)?
                            .push(" OWNER ")
                            .ident(owner)?,
                    )
                    .await
                    .map(|()| Some(true)),
                Ok(Found::Foreign) => Ok(Some(false)),
                Ok(Found::Missing | Found::Stale) => Ok(None),
                Err(error) => Err(error),
            };
            sqlx::query("SELECT pg_advisory_unlock_shared(hashtextextended($1, 0))")
                .bind(&lock)
                .execute(&mut self.connection)
                .await?;
            if let Some(copied) = copied? {
                if !copied {
                    tracing::warn!(
                        template = %template,
                        "a database of the template's name exists that the operator did not make: \
                         new databases replay the migrations instead"
                    );
                }
                return Ok(copied);
            }
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(&lock)
                .execute(&mut self.connection)
                .await?;
            let built = self.build_template(&template, version).await;
            sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(&lock)
                .execute(&mut self.connection)
                .await?;
            if !built? {
                return Ok(false);
            }
        }
        Err(ProvisionError::Database(format!(
            "the template {template} was rebuilt but is still not current"
        )))
    }

    /// Under the exclusive lock: builds the template unless another process did meanwhile. False
    /// when a name it needs is taken by something the operator did not make.
    async fn build_template(
        &mut self,
        template: &str,
        version: i64,
    ) -> Result<bool, ProvisionError> {
        match find(&mut self.connection, template, version).await? {
            Found::Current => return Ok(true),
            Found::Foreign => return Ok(false),
            Found::Stale => {
                self.exec(
                    Statement::new("ALTER DATABASE ")
                        .ident(template)?
                        .push(" IS_TEMPLATE false"),
                )
                .await?;
                self.exec(Statement::new("DROP DATABASE ").ident(template)?)
                    .await?;
            }
            Found::Missing => {}
        }
        if !self.ensure_template_owner().await? {
            return Ok(false);
        }
        let temporary = temporary_name(template);
        self.exec(Statement::new("DROP DATABASE IF EXISTS ").ident(&temporary)?)
            .await?;
        self.exec(Statement::new("CREATE DATABASE ").ident(&temporary)?)
            .await?;
        self.exec(
            Statement::new("REVOKE ALL ON DATABASE ")
                .ident(&temporary)?
                .push(" FROM PUBLIC"),
        )
        .await?;
        // The template owner creates the schema (so owns it) but does not own the database: a
        // `REASSIGN OWNED` in a copy must move the objects inside it and nothing on the server.
        self.exec(
            Statement::new("GRANT CREATE ON DATABASE ")
                .ident(&temporary)?
                .push(" TO ")
                .ident(TEMPLATE_OWNER)?,
        )
        .await?;
        // sqlx keeps its record of applied migrations in `public`, which only the database owner
        // may create in (PostgreSQL 15): allowed for the build, taken back before the first copy.
        let options = self.options.clone().database(&temporary);
        let mut inside = connect(&options).await?;
        let public = |verb: &'static str, preposition: &'static str| {
            Statement::new(verb)
                .push(" CREATE ON SCHEMA public ")
                .push(preposition)
                .ident(TEMPLATE_OWNER)
        };
        sqlx::query(public("GRANT", "TO ")?)
            .execute(&mut inside)
            .await?;
        migrate_as(options, TEMPLATE_OWNER, version).await?;
        sqlx::query(public("REVOKE", "FROM ")?)
            .execute(&mut inside)
            .await?;
        inside.close().await?;
        self.tag_and_rename(&temporary, &template_tag(version), template)
            .await?;
        self.exec(
            Statement::new("ALTER DATABASE ")
                .ident(template)?
                .push(" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"),
        )
        .await?;
        tracing::info!(template = %template, "built the template for new databases");
        Ok(true)
    }

    /// Creates the tagged template owner role, or checks its tag; makes the admin a member (needed
    /// to `REASSIGN OWNED` from it). False when a role of that name is not the operator's.
    async fn ensure_template_owner(&mut self) -> Result<bool, ProvisionError> {
        let tag: Option<Option<String>> = sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        )
        .bind(TEMPLATE_OWNER)
        .fetch_optional(&mut self.connection)
        .await?;
        match tag {
            Some(Some(tag)) if tag == TEMPLATE_OWNER_TAG => {}
            Some(_) => return Ok(false),
            None => {
                self.exec(
                    Statement::new("CREATE ROLE ")
                        .ident(TEMPLATE_OWNER)?
                        .push(" NOLOGIN"),
                )
                .await?;
                self.exec(
                    Statement::new("COMMENT ON ROLE ")
                        .ident(TEMPLATE_OWNER)?
                        .push(" IS ")
                        .literal(TEMPLATE_OWNER_TAG)?,
                )
                .await?;
            }
        }
        self.exec(
            Statement::new("GRANT ")
                .ident(TEMPLATE_OWNER)?
                .push(" TO CURRENT_USER"),
        )
        .await?;
        Ok(true)
    }
}

async fn find(
    connection: &mut PgConnection,
    template: &str,
    version: i64,
) -> Result<Found, ProvisionError> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(template)
    .fetch_optional(connection)
    .await?;
    Ok(match row {
        None => Found::Missing,
        Some((Some(tag),)) if tag == template_tag(version) => Found::Current,
        Some((Some(tag),)) if tag.starts_with(TEMPLATE_TAG_PREFIX) => Found::Stale,
        Some(_) => Found::Foreign,
    })
}
