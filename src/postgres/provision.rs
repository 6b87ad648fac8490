//! Provisioning of one MigrationDatabase on a PostgreSQL server: the database, its three roles, the
//! schema at the requested data model version, and the two modes.
//!
//! - Staging: CONNECT revoked from PUBLIC and granted to the migrator only; the migrator may write the
//!   `sfm` tables (not the mode); the application role cannot log in.
//! - Operational: the migrator loses login, CONNECT and its privileges and its sessions are
//!   terminated; the application role logs in with the privileges the SFM application needs.
//!
//! Every step is idempotent and safe to repeat after a crash at any point, and runs under a
//! PostgreSQL advisory lock per database, so two operator processes (a stale leader and a new one)
//! never change the same database at once. Passwords reach the server only as SCRAM verifiers, and
//! nothing here logs a password or a verifier. Every identifier is quoted by [`super::sql`].

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection, PgConnection, Row};
use std::str::FromStr;
use std::time::Duration;

pub use super::backstop::VALIDATED_SQLSTATE;
use super::backstop::{
    DPOP_PROOFS_OWNER, DPOP_PROOFS_TABLE, REFUSE_AFTER_VALIDATION_FUNCTION,
    REFUSE_AFTER_VALIDATION_TRIGGERS,
};
use super::schema::{MIGRATIONS_TABLE, MIGRATOR, SchemaError, migrate_to};
use super::scram::new_scram_sha256_verifier;
use super::sql::{SqlError, Statement, sanitise_identifier};

mod template;
pub use template::{TEMPLATE_OWNER, template_name, template_tag};

/// The tag the operator writes on every database and role it creates: it never adopts one without it.
const TAG_PREFIX: &str = "sfm.nhn.no/migration-database-uid=";

/// Failures of provisioning, each with a sentence an NHN operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("the admin connection URI is not a valid postgres:// URI")]
    BadAdminUri,
    #[error("cannot reach the PostgreSQL server: {0}")]
    Unreachable(String),
    #[error("the PostgreSQL server refused the admin credentials")]
    AdminAuthentication,
    #[error(
        "{kind} {name} already exists on the server but was not created for this MigrationDatabase (name collision); rename the MigrationDatabase or remove the other {kind}"
    )]
    NameCollision { kind: &'static str, name: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("PostgreSQL refused a provisioning statement: {0}")]
    Database(String),
    /// The server is there but takes no more work now (too many connections, starting up or
    /// shutting down, out of resources): retried soon, nothing is wrong with the object.
    #[error("the PostgreSQL server is busy: {0}")]
    ServerBusy(String),
}

/// Whether a PostgreSQL error says the server is busy rather than that the request is wrong: class
/// 53 (insufficient resources, with `too_many_connections`), 57P03 (`cannot_connect_now`), class 08
/// (connection exceptions).
pub fn server_busy(sqlstate: &str) -> bool {
    sqlstate.starts_with("53") || sqlstate == "57P03" || sqlstate.starts_with("08")
}

impl From<sqlx::Error> for ProvisionError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01") => {
                ProvisionError::AdminAuthentication
            }
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(server_busy) => {
                ProvisionError::ServerBusy(error.to_string())
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                ProvisionError::Unreachable(error.to_string())
            }
            // Database errors carry PostgreSQL's message, which names objects, never passwords:
            // verifiers are never echoed by the server.
            _ => ProvisionError::Database(error.to_string()),
        }
    }
}

impl ProvisionError {
    /// A CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ProvisionError::BadAdminUri => "InvalidAdminSecret",
            ProvisionError::Unreachable(_) => "ServerUnreachable",
            ProvisionError::AdminAuthentication => "AdminAuthenticationFailed",
            ProvisionError::NameCollision { .. } => "NameCollision",
            ProvisionError::Schema(SchemaError::UnknownVersion { .. }) => "UnknownDataModelVersion",
            ProvisionError::Schema(_) => "SchemaMigrationFailed",
            ProvisionError::Sql(_) => "InvalidName",
            ProvisionError::Database(_) => "ProvisioningFailed",
            ProvisionError::ServerBusy(_) => "ServerBusy",
        }
    }

    /// Whether the next pass should come soon whatever the backoff says: the server was busy or
    /// out of reach for a moment.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProvisionError::ServerBusy(_) | ProvisionError::Unreachable(_)
        )
    }
}

/// The names of one MigrationDatabase's database and roles, derived from its namespace, name and UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseNames {
    pub database: String,
    pub owner: String,
    pub migrator: String,
    pub application: String,
}

impl DatabaseNames {
    /// Names for `namespace/name` with this UID. The UID's first eight hex digits keep apart two
    /// objects whose `<namespace>-<name>` spell alike, and a recreated object from the retained
    /// database of its predecessor; the whole UID in each object's tag (checked before any reuse)
    /// catches what eight digits cannot.
    pub fn new(namespace: &str, name: &str, uid: &str) -> DatabaseNames {
        let short_uid: String = uid
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(8)
            .collect();
        let base = format!("{namespace}-{name}");
        let make = |role: &str| sanitise_identifier(&base, "sfm_", &format!("_{short_uid}{role}"));
        DatabaseNames {
            database: make(""),
            owner: make("_owner"),
            migrator: make("_migrator"),
            application: make("_app"),
        }
    }
}

/// The name a database (or template) is built under before it is tagged and renamed to `name`;
/// the next build of `name` drops whatever a crash left under it.
pub fn temporary_name(name: &str) -> String {
    sanitise_identifier(name, "tmp_", "")
}

/// The current mode, as recorded in the database itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Staging,
    Operational,
}

/// What the validation record in the staging database says (written by the migration API's verify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationRecord {
    /// Lowercase hex SHA-256 of the validated manifest.
    pub manifest_digest: String,
    pub activation_requested: bool,
}

/// How long the operator waits for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one of the operator's statements may wait for a lock.
const LOCK_TIMEOUT: &str = "60s";
/// How long one of the operator's statements may run: generous, a schema migration of a full
/// staging database rewrites tables.
const STATEMENT_TIMEOUT: &str = "15min";

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, ProvisionError> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .map_err(|_| {
            ProvisionError::Unreachable(format!(
                "connection timed out after {}s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(ProvisionError::from)
}

/// An admin session on one server, holding the advisory lock of one database while it lives.
///
/// Besides the session on the server it keeps at most one admin session inside the database, opened
/// when first needed and used for everything the pass does there: a pass costs the server two
/// sessions, not one per step.
pub struct AdminSession {
    connection: PgConnection,
    options: PgConnectOptions,
    names: DatabaseNames,
    tag: String,
    inside: Option<PgConnection>,
    from_template: bool,
}

/// How [`AdminSession::ensure_database`] found or made the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Created {
    /// It was there already.
    Existing,
    /// Copied from the template of the requested version: the schema is complete.
    FromTemplate,
    /// Created empty: the migrations must run.
    Empty,
}

impl AdminSession {
    /// Connects with the admin URI and takes the advisory lock for this database (waits for it).
    pub async fn open(
        admin_uri: &str,
        names: DatabaseNames,
        uid: &str,
    ) -> Result<Self, ProvisionError> {
        let options = PgConnectOptions::from_str(admin_uri)
            .map_err(|_| ProvisionError::BadAdminUri)?
            .application_name("sfm-operator")
            // sqlx logs slow statements with their text, and ALTER ROLE carries a SCRAM verifier.
            .disable_statement_logging()
            // Nothing the operator does may wait for ever: a lock held elsewhere (the advisory lock
            // of a stuck session, a table lock) or a statement that does not end becomes an error,
            // reported in the condition and retried with backoff, instead of a reconcile that never
            // returns and so never reconciles this database again.
            .options([
                ("lock_timeout", LOCK_TIMEOUT),
                ("statement_timeout", STATEMENT_TIMEOUT),
            ]);
        let mut connection = connect(&options).await?;
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("sfm-operator:{}", names.database))
            .execute(&mut connection)
            .await?;
        Ok(AdminSession {
            connection,
            options,
            names,
            tag: format!("{TAG_PREFIX}{uid}"),
            inside: None,
            from_template: true,
        })
    }

    /// New databases are created empty and migrated, as before templates: for comparing the two
    /// (tests, benchmarks), never needed to operate.
    pub fn without_template(mut self) -> Self {
        self.from_template = false;
        self
    }

    pub fn names(&self) -> &DatabaseNames {
        &self.names
    }

    /// Host and port of the server, for the Secrets.
    pub fn server(&self) -> (String, u16) {
        (self.options.get_host().to_owned(), self.options.get_port())
    }

    /// The admin URI's `sslmode` in libpq's spelling (`prefer` when it names none): every URI the
    /// operator writes for this server carries it, so a server reached with `verify-full` is not
    /// reached in the clear by the migrator or the application.
    pub fn ssl_mode(&self) -> &'static str {
        use sqlx::postgres::PgSslMode;
        match self.options.get_ssl_mode() {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }

    /// Releases the lock and closes the session.
    pub async fn close(mut self) -> Result<(), ProvisionError> {
        if let Some(inside) = self.inside.take() {
            inside.close().await?;
        }
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.connection)
            .await?;
        self.connection.close().await?;
        Ok(())
    }

    /// Creates or repairs everything staging needs: roles (with these passwords, sent as SCRAM
    /// verifiers), the tagged database, CONNECT only for the migrator, the schema at
    /// `data_model_version`, the migrator's privileges and the metadata row. Refuses to touch a
    /// database or role that exists without this MigrationDatabase's tag. Does nothing to a database
    /// that is already operational beyond moving its schema forward.
    pub async fn ensure_staging(
        &mut self,
        data_model_version: i64,
        migrator_password: &str,
        application_password: &str,
    ) -> Result<Mode, ProvisionError> {
        let names = self.names.clone();
        // Each group of statements that may share a transaction does: one commit (one WAL flush,
        // with fsync on) instead of one per statement. A failure leaves the group undone (the
        // session is dropped with its transaction) and the next pass repeats it.
        self.exec(Statement::new("BEGIN")).await?;
        self.ensure_role(&names.owner, None).await?;
        self.ensure_role(&names.migrator, Some(migrator_password))
            .await?;
        self.ensure_role(&names.application, Some(application_password))
            .await?;
        // A CREATEROLE admin that is not superuser must be a member to create a database owned by it.
        self.exec(
            Statement::new("GRANT ")
                .ident(&names.owner)?
                .push(" TO CURRENT_USER"),
        )
        .await?;
        self.exec(Statement::new("COMMIT")).await?;
        let created = self.ensure_database(data_model_version).await?;

        let db = self.inside().await?;
        let mode = read_mode(db).await?;
        let current =
            created == Created::FromTemplate || schema_is_at(db, data_model_version).await?;
        if !current {
            migrate_as(self.database_options(), &names.owner, data_model_version).await?;
        }
        if mode == Some(Mode::Operational) {
            return Ok(Mode::Operational);
        }

        self.exec(Statement::new("BEGIN")).await?;
        self.exec(
            Statement::new("REVOKE ALL ON DATABASE ")
                .ident(&names.database)?
                .push(" FROM PUBLIC"),
        )
        .await?;
        self.exec(
            Statement::new("REVOKE ALL ON DATABASE ")
                .ident(&names.database)?
                .push(" FROM ")
                .ident(&names.application)?,
        )
        .await?;
        self.exec(
            Statement::new("GRANT CONNECT ON DATABASE ")
                .ident(&names.database)?
                .push(" TO ")
                .ident(&names.migrator)?,
        )
        .await?;
        self.exec(
            Statement::new("ALTER ROLE ")
                .ident(&names.application)?
                .push(" NOLOGIN"),
        )
        .await?;
        self.exec(
            Statement::new("ALTER ROLE ")
                .ident(&names.migrator)?
                .push(" LOGIN"),
        )
        .await?;
        self.exec(Statement::new("COMMIT")).await?;

        let uid = self.tag.trim_start_matches(TAG_PREFIX).to_owned();
        self.in_database(vec![
            Statement::new(DPOP_PROOFS_TABLE),
            Statement::new(DPOP_PROOFS_OWNER),
            Statement::new("GRANT USAGE ON SCHEMA sfm TO ").ident(&names.migrator)?,
            Statement::new("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sfm TO ").ident(&names.migrator)?,
            Statement::new("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA sfm TO ").ident(&names.migrator)?,
            // The mode is the operator's: the migrator may read it, never change it.
            Statement::new("REVOKE INSERT, UPDATE, DELETE ON sfm.metadata FROM ").ident(&names.migrator)?,
            // The audit trail is append-only for the migrator: what was stored, who sent it and why a
            // file was refused can be added to (a rejection resolved, an activation requested) but
            // never taken away or rewritten.
            Statement::new("REVOKE UPDATE, DELETE, TRUNCATE ON sfm.stored_files, sfm.deviations FROM ").ident(&names.migrator)?,
            Statement::new("REVOKE DELETE, TRUNCATE ON sfm.rejections, sfm.validation FROM ").ident(&names.migrator)?,
            Statement::new("REVOKE ALL ON ALL TABLES IN SCHEMA sfm FROM ").ident(&names.application)?,
            Statement::new(REFUSE_AFTER_VALIDATION_FUNCTION),
            Statement::new(REFUSE_AFTER_VALIDATION_TRIGGERS),
            Statement::new("INSERT INTO sfm.metadata (mode, data_model_version, migration_database_uid) VALUES ('staging', ")
                .literal(&data_model_version.to_string())?
                .push("::bigint, ")
                .literal(&uid)?
                .push("::uuid) ON CONFLICT (singleton) DO UPDATE SET data_model_version = EXCLUDED.data_model_version, updated_at = now() WHERE sfm.metadata.data_model_version <> EXCLUDED.data_model_version"),
        ])
        .await?;
        Ok(Mode::Staging)
    }

    /// Reads the mode and the validation record from the database itself (never from a status).
    pub async fn observe(
        &mut self,
    ) -> Result<(Option<Mode>, Option<ValidationRecord>), ProvisionError> {
        let db = self.inside().await?;
        let mode = read_mode(db).await?;
        let validation = match sqlx::query(
            "SELECT encode(manifest_sha256, 'hex') AS digest, activation_requested_at IS NOT NULL AS requested FROM sfm.validation",
        )
        .fetch_optional(db)
        .await
        {
            Ok(row) => row.map(|row| ValidationRecord {
                manifest_digest: row.get("digest"),
                activation_requested: row.get("requested"),
            }),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
            Err(e) => return Err(e.into()),
        };
        Ok((mode, validation))
    }

    /// Switches the database to operational mode: the mode row says `operational`; the migrator loses
    /// login, CONNECT and privileges and its open sessions are terminated; the application role gets
    /// login, CONNECT and the privileges the SFM application needs. Idempotent.
    ///
    /// The mode is written first, as the intent: a crash part-way leaves `operational` recorded, and
    /// the next reconcile (which calls this again for every operational database) finishes the switch.
    /// Were it written last, the next pass would see `staging` and open the migrator again.
    pub async fn switch_to_operational(&mut self) -> Result<(), ProvisionError> {
        let names = self.names.clone();
        self.in_database(vec![Statement::new(
            "UPDATE sfm.metadata SET mode = 'operational', operational_at = now(), updated_at = now() WHERE mode = 'staging'",
        )])
        .await?;
        self.exec(
            Statement::new("ALTER ROLE ")
                .ident(&names.migrator)?
                .push(" NOLOGIN"),
        )
        .await?;
        self.exec(
            Statement::new("REVOKE ALL ON DATABASE ")
                .ident(&names.database)?
                .push(" FROM ")
                .ident(&names.migrator)?,
        )
        .await?;
        self.in_database(vec![
            Statement::new("REVOKE ALL ON ALL TABLES IN SCHEMA sfm FROM ")
                .ident(&names.migrator)?,
            Statement::new("REVOKE ALL ON ALL SEQUENCES IN SCHEMA sfm FROM ")
                .ident(&names.migrator)?,
            Statement::new("REVOKE ALL ON SCHEMA sfm FROM ").ident(&names.migrator)?,
            Statement::new("GRANT USAGE ON SCHEMA sfm TO ").ident(&names.application)?,
            Statement::new("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sfm TO ")
                .ident(&names.application)?,
            Statement::new("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA sfm TO ")
                .ident(&names.application)?,
            Statement::new("REVOKE INSERT, UPDATE, DELETE ON sfm.metadata, sfm.validation FROM ")
                .ident(&names.application)?,
        ])
        .await?;
        self.terminate_sessions(&names.migrator).await?;
        self.exec(
            Statement::new("GRANT CONNECT ON DATABASE ")
                .ident(&names.database)?
                .push(" TO ")
                .ident(&names.application)?,
        )
        .await?;
        self.exec(
            Statement::new("ALTER ROLE ")
                .ident(&names.application)?
                .push(" LOGIN"),
        )
        .await?;
        Ok(())
    }

    /// For `Retain` on deletion: the data stays, but nobody can write it any more through the
    /// migrator (login removed, sessions terminated).
    pub async fn lock_migrator(&mut self) -> Result<(), ProvisionError> {
        let names = self.names.clone();
        if !self.role_exists(&names.migrator).await? {
            return Ok(());
        }
        self.exec(
            Statement::new("ALTER ROLE ")
                .ident(&names.migrator)?
                .push(" NOLOGIN"),
        )
        .await?;
        self.terminate_sessions(&names.migrator).await
    }

    /// For `Delete` on deletion: drops the database and the three roles, but only what carries this
    /// MigrationDatabase's tag, and a temporary database a crashed pass left. Idempotent.
    pub async fn drop_everything(&mut self) -> Result<(), ProvisionError> {
        let names = self.names.clone();
        if let Some(inside) = self.inside.take() {
            inside.close().await?;
        }
        if let Some(tag) = self.database_tag().await? {
            if tag != self.tag {
                return Err(ProvisionError::NameCollision {
                    kind: "database",
                    name: names.database,
                });
            }
            self.exec(
                Statement::new("DROP DATABASE IF EXISTS ")
                    .ident(&names.database)?
                    .push(" WITH (FORCE)"),
            )
            .await?;
        }
        // A pass that crashed before its rename left a temporary database owned by the owner role,
        // which could then never be dropped. The name is this object's as in `ensure_database`.
        self.exec(
            Statement::new("DROP DATABASE IF EXISTS ")
                .ident(&temporary_name(&names.database))?
                .push(" WITH (FORCE)"),
        )
        .await?;
        for role in [&names.migrator, &names.application, &names.owner] {
            if self.role_exists(role).await? {
                self.check_role_tag(role).await?;
                self.exec(Statement::new("DROP ROLE IF EXISTS ").ident(role)?)
                    .await?;
            }
        }
        Ok(())
    }

    async fn exec(&mut self, statement: Statement) -> Result<(), ProvisionError> {
        sqlx::query(statement).execute(&mut self.connection).await?;
        Ok(())
    }

    async fn terminate_sessions(&mut self, role: &str) -> Result<(), ProvisionError> {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
            .bind(role)
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    async fn role_exists(&mut self, role: &str) -> Result<bool, ProvisionError> {
        Ok(sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(&mut self.connection)
            .await?
            .is_some())
    }

    async fn check_role_tag(&mut self, role: &str) -> Result<(), ProvisionError> {
        let tag: Option<String> = sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_one(&mut self.connection)
        .await?;
        if tag.as_deref() != Some(self.tag.as_str()) {
            return Err(ProvisionError::NameCollision {
                kind: "role",
                name: role.to_owned(),
            });
        }
        Ok(())
    }

    /// Creates the role if missing (tagged), or checks its tag; sets the password verifier when one is
    /// given. Roles start without login: the mode functions grant it.
    async fn ensure_role(
        &mut self,
        role: &str,
        password: Option<&str>,
    ) -> Result<(), ProvisionError> {
        if self.role_exists(role).await? {
            self.check_role_tag(role).await?;
        } else {
            self.exec(Statement::new("CREATE ROLE ").ident(role)?.push(" NOLOGIN"))
                .await?;
            let tag = self.tag.clone();
            self.exec(
                Statement::new("COMMENT ON ROLE ")
                    .ident(role)?
                    .push(" IS ")
                    .literal(&tag)?,
            )
            .await?;
        }
        if let Some(password) = password {
            let verifier = new_scram_sha256_verifier(password);
            self.exec(
                Statement::new("ALTER ROLE ")
                    .ident(role)?
                    .push(" PASSWORD ")
                    .literal(&verifier)?,
            )
            .await?;
        }
        Ok(())
    }

    async fn database_tag(&mut self) -> Result<Option<String>, ProvisionError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
        )
        .bind(&self.names.database)
        .fetch_optional(&mut self.connection)
        .await?;
        Ok(row.map(|(tag,)| tag.unwrap_or_default()))
    }

    async fn ensure_database(&mut self, version: i64) -> Result<Created, ProvisionError> {
        let names = self.names.clone();
        match self.database_tag().await? {
            Some(tag) if tag == self.tag => return Ok(Created::Existing),
            Some(_) => {
                return Err(ProvisionError::NameCollision {
                    kind: "database",
                    name: names.database,
                });
            }
            None => {}
        }
        // CREATE DATABASE cannot run in a transaction; a crash right after it leaves an untagged
        // database, which the next pass would call a collision. So it is created under a temporary
        // name, made complete and tagged, and renamed: the real name only ever appears tagged.
        let temporary = temporary_name(&names.database);
        self.exec(Statement::new("DROP DATABASE IF EXISTS ").ident(&temporary)?)
            .await?;
        let copied = self.from_template
            && self
                .create_from_template(&temporary, &names.owner, version)
                .await?;
        if copied {
            // Everything inside the copy belongs to the template owner: hand it to this database's
            // owner, as if the owner had run the migrations.
            self.exec(
                Statement::new("GRANT ")
                    .ident(TEMPLATE_OWNER)?
                    .push(" TO CURRENT_USER"),
            )
            .await?;
            let mut copy = connect(&self.options.clone().database(&temporary)).await?;
            sqlx::query(
                Statement::new("REASSIGN OWNED BY ")
                    .ident(TEMPLATE_OWNER)?
                    .push(" TO ")
                    .ident(&names.owner)?,
            )
            .execute(&mut copy)
            .await?;
            copy.close().await?;
        } else {
            self.exec(
                Statement::new("CREATE DATABASE ")
                    .ident(&temporary)?
                    .push(" OWNER ")
                    .ident(&names.owner)?,
            )
            .await?;
        }
        let tag = self.tag.clone();
        self.tag_and_rename(&temporary, &tag, &names.database)
            .await?;
        Ok(if copied {
            Created::FromTemplate
        } else {
            Created::Empty
        })
    }

    /// Finishes a database made under a temporary name: tags it, closes it to PUBLIC and gives it
    /// its real name, which so only ever names a finished, tagged database. Renaming waits (up to
    /// 5 s, in PostgreSQL) for the sessions that just worked inside it to end.
    async fn tag_and_rename(
        &mut self,
        temporary: &str,
        tag: &str,
        name: &str,
    ) -> Result<(), ProvisionError> {
        self.exec(
            Statement::new("COMMENT ON DATABASE ")
                .ident(temporary)?
                .push(" IS ")
                .literal(tag)?,
        )
        .await?;
        self.exec(
            Statement::new("REVOKE ALL ON DATABASE ")
                .ident(temporary)?
                .push(" FROM PUBLIC"),
        )
        .await?;
        self.exec(
            Statement::new("ALTER DATABASE ")
                .ident(temporary)?
                .push(" RENAME TO ")
                .ident(name)?,
        )
        .await
    }

    fn database_options(&self) -> PgConnectOptions {
        self.options.clone().database(&self.names.database)
    }

    /// The admin session inside the database, opened on first use.
    async fn inside(&mut self) -> Result<&mut PgConnection, ProvisionError> {
        if self.inside.is_none() {
            self.inside = Some(connect(&self.database_options()).await?);
        }
        Ok(self.inside.as_mut().expect("opened above"))
    }

    /// Runs statements inside the database as its owner, so everything created belongs to the owner,
    /// in one transaction: all of them or none.
    async fn in_database(&mut self, statements: Vec<Statement>) -> Result<(), ProvisionError> {
        let owner = self.names.owner.clone();
        let db = self.inside().await?;
        let mut transaction = db.begin().await?;
        sqlx::query(Statement::new("SET LOCAL ROLE ").ident(&owner)?)
            .execute(&mut *transaction)
            .await?;
        for statement in statements {
            sqlx::query(statement).execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(())
    }
}

/// Applies the embedded migrations up to `version` to the database `options` names, as `role`, so
/// everything they create belongs to that role.
///
/// sqlx's migrator future is not `Send` (its generic `Acquire` lifetimes), so the migration runs on
/// a blocking thread with a small runtime of its own, keeping the reconcile future `Send`.
async fn migrate_as(
    options: PgConnectOptions,
    role: &str,
    version: i64,
) -> Result<(), ProvisionError> {
    let set_role = format!("SET ROLE {}", quote(role)?);
    let run = move || -> Result<(), ProvisionError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ProvisionError::Database(e.to_string()))?;
        runtime.block_on(async move {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .after_connect(move |connection, _| {
                    let set_role = set_role.clone();
                    Box::pin(async move {
                        sqlx::query(sqlx::AssertSqlSafe(set_role))
                            .execute(&mut *connection)
                            .await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await?;
            let result = migrate_to(&pool, version).await;
            pool.close().await;
            Ok(result?)
        })
    };
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| ProvisionError::Database(format!("the schema migration task failed: {e}")))?
}

/// Whether the database holds exactly the embedded migrations up to `version`, each applied with
/// this build's checksum: then there is nothing to migrate, and the migrator is not started. Any
/// other state (behind, ahead, edited, dirty) goes to [`migrate_to`], which moves it or says why not.
async fn schema_is_at(db: &mut PgConnection, version: i64) -> Result<bool, ProvisionError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(MIGRATIONS_TABLE)
        .fetch_one(&mut *db)
        .await?;
    if !exists {
        return Ok(false);
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *db)
            .await?;
    let embedded: Vec<(i64, Vec<u8>, bool)> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && m.version <= version)
        .map(|m| (m.version, m.checksum.to_vec(), true))
        .collect();
    Ok(applied == embedded)
}

fn quote(name: &str) -> Result<String, ProvisionError> {
    Ok(super::sql::quote_ident(name)?)
}

async fn read_mode(db: &mut PgConnection) -> Result<Option<Mode>, ProvisionError> {
    match sqlx::query_scalar::<_, String>("SELECT mode FROM sfm.metadata")
        .fetch_optional(db)
        .await
    {
        Ok(Some(mode)) if mode == "operational" => Ok(Some(Mode::Operational)),
        Ok(Some(_)) => Ok(Some(Mode::Staging)),
        Ok(None) => Ok(None),
        // Before the first migration there is no table yet.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P01") | Some("3F000")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
