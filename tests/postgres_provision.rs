//! Provisioning against the real PostgreSQL server, over TCP with scram-sha-256: what the operator does
//! to a database is the same whether it runs once, twice, or after a crash between any two of its steps.

#[path = "common/postgres.rs"]
mod test_postgres;

use sfm_migration::postgres::provision::{AdminSession, DatabaseNames, Mode};
use sqlx::{Connection, PgConnection};

fn admin_url() -> String {
    // Fails with instructions when the server is not started (see tests/common/postgres.rs).
    test_postgres::admin_options();
    std::env::var("SFM_PG_ADMIN_URL").unwrap()
}

/// A MigrationDatabase that exists only in this test: unique names and UID.
fn fresh() -> (DatabaseNames, String) {
    let uid = uuid::Uuid::new_v4().to_string();
    let name = format!("t{}", &uid[..6]);
    (DatabaseNames::new("provision-test", &name, &uid), uid)
}

fn uri_for(names: &DatabaseNames, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).unwrap();
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.set_path(&names.database);
    url.to_string()
}

async fn open(names: &DatabaseNames, uid: &str) -> AdminSession {
    AdminSession::open(&admin_url(), names.clone(), uid)
        .await
        .expect("the admin session opens")
}

#[tokio::test]
async fn deleting_after_a_crash_before_the_rename_leaves_nothing_behind() {
    // A first pass crashed after creating its temporary database (owned by the object's owner
    // role), before the rename; then the object is deleted with reclaimPolicy Delete.
    let (names, uid) = provisioned("m", "a").await;
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    let temporary = sfm_migration::postgres::provision::temporary_name(&names.database);
    for statement in [
        format!("DROP DATABASE \"{}\" WITH (FORCE)", names.database),
        format!("CREATE DATABASE \"{temporary}\" OWNER \"{}\"", names.owner),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let mut session = open(&names, &uid).await;
    session
        .drop_everything()
        .await
        .expect("the deletion finishes");
    session.close().await.unwrap();
    assert_eq!(snapshot(&names).await, Vec::<String>::new());
}

/// Everything about the database and its roles that provisioning decides, in comparable form.
async fn snapshot(names: &DatabaseNames) -> Vec<String> {
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    let mut facts: Vec<String> = sqlx::query_scalar(
        "SELECT datname || ' owner=' || pg_get_userbyid(datdba) || ' acl=' || coalesce(datacl::text, '') || ' tag=' || coalesce(shobj_description(oid, 'pg_database'), '')
         FROM pg_database WHERE datname = $1 OR datname LIKE 'tmp\\_' || $1 || '%'",
    )
    .bind(&names.database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let roles: Vec<String> = sqlx::query_scalar(
        "SELECT rolname || ' login=' || rolcanlogin || ' tag=' || coalesce(shobj_description(oid, 'pg_authid'), '')
         FROM pg_roles WHERE rolname = ANY($1) ORDER BY rolname",
    )
    .bind(vec![
        names.owner.clone(),
        names.migrator.clone(),
        names.application.clone(),
    ])
    .fetch_all(&mut admin)
    .await
    .unwrap();
    facts.extend(roles);
    let mut options: sqlx::postgres::PgConnectOptions = admin_url().parse().unwrap();
    options = options.database(&names.database);
    if let Ok(mut db) = PgConnection::connect_with(&options).await {
        let inside: Vec<String> = sqlx::query_scalar(
            "SELECT 'mode=' || mode || ' version=' || data_model_version FROM sfm.metadata
             UNION ALL
             SELECT table_name || ':' || grantee || ':' || string_agg(privilege_type, ',' ORDER BY privilege_type)
             FROM information_schema.role_table_grants WHERE table_schema = 'sfm' AND grantee = ANY($1)
             GROUP BY table_name, grantee ORDER BY 1",
        )
        .bind(vec![names.migrator.clone(), names.application.clone()])
        .fetch_all(&mut db)
        .await
        .unwrap();
        facts.extend(inside);
    }
    facts
}

/// A snapshot with this object's names and UID replaced, to compare two objects' provisioning.
fn normalise(facts: Vec<String>, names: &DatabaseNames, uid: &str) -> Vec<String> {
    facts
        .into_iter()
        .map(|fact| {
            fact.replace(&names.owner, "OWNER")
                .replace(&names.migrator, "MIGRATOR")
                .replace(&names.application, "APP")
                .replace(&names.database, "DB")
                .replace(uid, "UID")
        })
        .collect()
}

/// A new object provisioned in staging with these passwords.
async fn provisioned(
    migrator_password: &str,
    application_password: &str,
) -> (DatabaseNames, String) {
    let (names, uid) = fresh();
    let mut session = open(&names, &uid).await;
    let mode = session
        .ensure_staging(4, migrator_password, application_password)
        .await
        .unwrap();
    assert_eq!(mode, Mode::Staging);
    session.close().await.unwrap();
    (names, uid)
}

async fn can_connect(uri: &str) -> bool {
    PgConnection::connect(uri).await.is_ok()
}

async fn cleanup(names: &DatabaseNames, uid: &str) {
    let mut session = open(names, uid).await;
    session.drop_everything().await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test]
async fn provisioning_twice_gives_the_same_result_and_staging_admits_only_the_migrator() {
    let (names, uid) = fresh();
    let mut session = open(&names, &uid).await;
    let mode = session
        .ensure_staging(4, "migrator-pw-1", "app-pw-1")
        .await
        .unwrap();
    assert_eq!(mode, Mode::Staging);
    let first = snapshot(&names).await;
    let mode = session
        .ensure_staging(4, "migrator-pw-1", "app-pw-1")
        .await
        .unwrap();
    assert_eq!(mode, Mode::Staging);
    assert_eq!(snapshot(&names).await, first);
    session.close().await.unwrap();

    assert!(can_connect(&uri_for(&names, &names.migrator, "migrator-pw-1")).await);
    assert!(!can_connect(&uri_for(&names, &names.application, "app-pw-1")).await);
    assert!(!can_connect(&uri_for(&names, &names.migrator, "wrong")).await);

    // The migrator adds to the audit trail and never takes from it.
    let mut migrator = PgConnection::connect(&uri_for(&names, &names.migrator, "migrator-pw-1"))
        .await
        .unwrap();
    for statement in [
        "DELETE FROM sfm.stored_files",
        "UPDATE sfm.stored_files SET file_name = 'x'",
        "TRUNCATE sfm.stored_files",
        "DELETE FROM sfm.rejections",
        "DELETE FROM sfm.deviations",
        "DELETE FROM sfm.validation",
    ] {
        let error = sqlx::query(statement)
            .execute(&mut migrator)
            .await
            .expect_err(statement);
        assert_eq!(
            error.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{statement}: {error}"
        );
    }
    for statement in [
        "UPDATE sfm.rejections SET resolved = resolved",
        "UPDATE sfm.validation SET activation_requested_at = activation_requested_at",
        "DELETE FROM sfm.upload_chunks",
        "DELETE FROM sfm.uploads WHERE state = 'created'",
    ] {
        sqlx::query(statement)
            .execute(&mut migrator)
            .await
            .expect(statement);
    }
    migrator.close().await.unwrap();
    cleanup(&names, &uid).await;
}

#[tokio::test]
async fn a_crash_after_the_roles_or_before_the_rename_is_repaired_by_the_next_pass() {
    // The reference: a clean provisioning of another object.
    let (names, uid) = provisioned("m", "a").await;
    let clean = normalise(snapshot(&names).await, &names, &uid);
    cleanup(&names, &uid).await;

    // Crash 1: the roles exist, the database does not. Crash 2: a temporary database was created but
    // never renamed (the real name never appears untagged).
    let (names, uid) = provisioned("m", "a").await;
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{}\" WITH (FORCE)",
        names.database
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // The same temporary name the operator uses.
    let temporary = sfm_migration::postgres::provision::temporary_name(&names.database);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{temporary}\""
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    let mut session = open(&names, &uid).await;
    session.ensure_staging(4, "m", "a").await.unwrap();
    session.close().await.unwrap();
    let repaired = normalise(snapshot(&names).await, &names, &uid);
    assert_eq!(
        repaired, clean,
        "the repaired database differs from a clean one"
    );
    assert!(can_connect(&uri_for(&names, &names.migrator, "m")).await);
    cleanup(&names, &uid).await;
}

#[tokio::test]
async fn new_passwords_written_to_secrets_before_a_crash_are_set_by_the_next_pass() {
    let (names, uid) = fresh();
    let mut session = open(&names, &uid).await;
    session
        .ensure_staging(4, "old-password", "a")
        .await
        .unwrap();
    // The operator lost its Secret and made a new password: the next pass sets it.
    session
        .ensure_staging(4, "new-password", "a")
        .await
        .unwrap();
    session.close().await.unwrap();
    assert!(can_connect(&uri_for(&names, &names.migrator, "new-password")).await);
    assert!(!can_connect(&uri_for(&names, &names.migrator, "old-password")).await);
    cleanup(&names, &uid).await;
}

#[tokio::test]
async fn a_switch_interrupted_after_recording_the_mode_is_finished_and_never_reopens_staging() {
    let (names, uid) = provisioned("m", "a").await;
    let migrator_uri = uri_for(&names, &names.migrator, "m");
    let mut open_migrator = PgConnection::connect(&migrator_uri).await.unwrap();

    // A crash right after the first step of the switch: mode recorded, nothing else done.
    let mut options: sqlx::postgres::PgConnectOptions = admin_url().parse().unwrap();
    options = options.database(&names.database);
    let mut db = PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("UPDATE sfm.metadata SET mode = 'operational', operational_at = now()")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    // The next pass: provisioning must not reopen staging, and the switch is completed.
    let mut session = open(&names, &uid).await;
    let mode = session.ensure_staging(4, "m", "a").await.unwrap();
    assert_eq!(mode, Mode::Operational);
    session.switch_to_operational().await.unwrap();
    let after_first = snapshot(&names).await;
    session.switch_to_operational().await.unwrap();
    assert_eq!(
        snapshot(&names).await,
        after_first,
        "a second switch changed something"
    );
    session.close().await.unwrap();

    assert!(
        sqlx::query("SELECT 1")
            .execute(&mut open_migrator)
            .await
            .is_err(),
        "the migrator's session survived"
    );
    assert!(!can_connect(&migrator_uri).await, "the migrator can log in");
    let mut application = PgConnection::connect(&uri_for(&names, &names.application, "a"))
        .await
        .expect("the application role logs in once operational");
    sqlx::query("DELETE FROM sfm.rejections")
        .execute(&mut application)
        .await
        .expect("the application role writes");
    assert!(
        sqlx::query("UPDATE sfm.metadata SET mode = 'staging'")
            .execute(&mut application)
            .await
            .is_err(),
        "the application role may change the mode"
    );
    application.close().await.unwrap();
    cleanup(&names, &uid).await;
}

/// Everything inside the database that the schema decides: objects with their owners, columns,
/// indexes, constraints, triggers, functions and the applied migrations.
async fn schema_of(names: &DatabaseNames) -> Vec<String> {
    let mut options: sqlx::postgres::PgConnectOptions = admin_url().parse().unwrap();
    options = options.database(&names.database);
    let mut db = PgConnection::connect_with(&options).await.unwrap();
    let facts: Vec<String> = sqlx::query_scalar(
        "SELECT 'relation ' || c.relkind::text || ' ' || n.nspname || '.' || c.relname || ' owner=' || pg_get_userbyid(c.relowner) || ' acl=' || coalesce(c.relacl::text, '')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('sfm', 'public')
         UNION ALL SELECT 'schema ' || nspname || ' owner=' || pg_get_userbyid(nspowner) || ' acl=' || coalesce(nspacl::text, '')
         FROM pg_namespace WHERE nspname IN ('sfm', 'public')
         UNION ALL SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
         FROM information_schema.columns WHERE table_schema = 'sfm'
         UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'sfm'
         UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'sfm'::regnamespace
         UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL SELECT 'function ' || proname || ' owner=' || pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'sfm'::regnamespace
         UNION ALL SELECT 'migration ' || version || ' ' || success || ' ' || encode(checksum, 'hex') FROM _sqlx_migrations
         ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    facts
}

async fn admin_query<T>(sql: &str, bind: &str) -> Option<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    let value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(bind)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    value
}

async fn template_oid() -> Option<sqlx::postgres::types::Oid> {
    admin_query(
        "SELECT oid FROM pg_database WHERE datname = $1",
        &sfm_migration::postgres::provision::template_name(4),
    )
    .await
}

#[tokio::test]
async fn a_database_copied_from_the_template_is_the_one_replaying_the_migrations_makes() {
    let (copied, copied_uid) = provisioned("m", "a").await;
    let (replayed, replayed_uid) = fresh();
    let mut session = open(&replayed, &replayed_uid).await.without_template();
    session.ensure_staging(4, "m", "a").await.unwrap();
    session.close().await.unwrap();

    assert_eq!(
        normalise(schema_of(&copied).await, &copied, &copied_uid),
        normalise(schema_of(&replayed).await, &replayed, &replayed_uid),
        "the copy differs from a database built by the migrations"
    );
    assert_eq!(
        normalise(snapshot(&copied).await, &copied, &copied_uid),
        normalise(snapshot(&replayed).await, &replayed, &replayed_uid),
    );
    assert!(
        !schema_of(&copied)
            .await
            .iter()
            .any(|fact| fact.contains(sfm_migration::postgres::provision::TEMPLATE_OWNER)),
        "the copy still holds objects of the template owner"
    );
    // The template: tagged with this build's migrations, a template, and closed to everyone.
    let template = sfm_migration::postgres::provision::template_name(4);
    let described: Option<String> = admin_query(
        "SELECT shobj_description(oid, 'pg_database') || ' ' || datistemplate || ' ' || datallowconn FROM pg_database WHERE datname = $1",
        &template,
    )
    .await;
    assert_eq!(
        described,
        Some(format!(
            "{} true false",
            sfm_migration::postgres::provision::template_tag(4)
        ))
    );
    let mut options: sqlx::postgres::PgConnectOptions = admin_url().parse().unwrap();
    options = options.database(&template);
    assert!(
        PgConnection::connect_with(&options).await.is_err(),
        "the template accepts connections"
    );
    cleanup(&copied, &copied_uid).await;
    cleanup(&replayed, &replayed_uid).await;
}

/// The lock the operator takes to build or replace a template (copies take it shared).
async fn holding_the_template_lock(work: &str) {
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    let template = sfm_migration::postgres::provision::template_name(4);
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("sfm-operator:template:{template}"))
        .execute(&mut admin)
        .await
        .unwrap();
    // One statement at a time: several in one string run as one transaction, and DROP DATABASE
    // refuses that.
    for statement in work.split("; ") {
        sqlx::raw_sql(sqlx::AssertSqlSafe(
            statement.replace("{template}", &template),
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    admin.close().await.unwrap();
}

#[tokio::test]
async fn a_stale_template_is_rebuilt_and_a_foreign_one_is_never_used() {
    let (names, uid) = provisioned("m", "a").await;
    let reference = normalise(schema_of(&names).await, &names, &uid);
    cleanup(&names, &uid).await;

    // Built from other migrations (an edited file, an older release): replaced, then copied.
    let before = template_oid().await.expect("the template exists");
    holding_the_template_lock(
        "COMMENT ON DATABASE \"{template}\" IS 'sfm.nhn.no/template=v4;migrations=00'",
    )
    .await;
    let (names, uid) = provisioned("m", "a").await;
    let after = template_oid().await.expect("the template exists");
    assert_ne!(before, after, "the stale template was not rebuilt");
    assert_eq!(normalise(schema_of(&names).await, &names, &uid), reference);
    cleanup(&names, &uid).await;

    // A database of the template's name that the operator did not make: new databases are built by
    // the migrations, and that database is neither copied nor changed.
    holding_the_template_lock(
        "ALTER DATABASE \"{template}\" IS_TEMPLATE false; DROP DATABASE \"{template}\"; CREATE DATABASE \"{template}\"",
    )
    .await;
    let foreign = template_oid().await.expect("the foreign database exists");
    let (names, uid) = provisioned("m", "a").await;
    assert_eq!(normalise(schema_of(&names).await, &names, &uid), reference);
    let described: Option<String> = admin_query(
        "SELECT coalesce(shobj_description(oid, 'pg_database'), 'untagged') || ' ' || datistemplate || ' ' || datallowconn FROM pg_database WHERE datname = $1",
        &sfm_migration::postgres::provision::template_name(4),
    )
    .await;
    assert_eq!(described.as_deref(), Some("untagged false true"));
    assert_eq!(template_oid().await, Some(foreign));
    cleanup(&names, &uid).await;

    // Once it is gone, the next database builds the template again.
    holding_the_template_lock("DROP DATABASE \"{template}\"").await;
    let (names, uid) = provisioned("m", "a").await;
    assert!(template_oid().await.is_some_and(|oid| oid != foreign));
    assert_eq!(normalise(schema_of(&names).await, &names, &uid), reference);
    cleanup(&names, &uid).await;
}

#[tokio::test]
async fn delete_drops_only_what_is_tagged_and_twice_is_harmless() {
    let (names, uid) = provisioned("m", "a").await;
    // Another object's session cannot drop it: the tag differs.
    let stranger = uuid::Uuid::new_v4().to_string();
    let mut other = open(&names, &stranger).await;
    assert!(other.drop_everything().await.is_err());
    other.close().await.unwrap();
    assert!(!snapshot(&names).await.is_empty());

    cleanup(&names, &uid).await;
    assert!(
        snapshot(&names).await.is_empty(),
        "something survived Delete"
    );
    cleanup(&names, &uid).await;
}

/// A server that accepts the connection and then says nothing (a hung PostgreSQL, a black-holing
/// proxy) is reported unreachable after the connect timeout: the reconcile returns an error it can
/// show and retry, instead of waiting for ever and never reconciling that database again.
#[tokio::test]
async fn a_server_that_never_answers_is_unreachable_not_a_hung_reconcile() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let (names, uid) = fresh();
    let uri = format!("postgres://admin:secret@127.0.0.1:{port}/postgres");
    let error = AdminSession::open(&uri, names, &uid)
        .await
        .err()
        .expect("a silent server gives no session");
    assert_eq!(error.reason(), "ServerUnreachable", "{error}");
    assert!(error.to_string().contains("timed out"), "{error}");
    held.abort();
}
