//! The staging schema on a real PostgreSQL server: migrations apply, are idempotent and only move
//! forward; the constraints do what ingest and the operator rely on; SCRAM verifiers match
//! PostgreSQL's own.
//!
//! Needs `SFM_PG_ADMIN_URL` from `hack/postgres.sh start`; fails with instructions without it (unless
//! `SFM_SKIP_PG=1`). Each test works in its own randomly named database.

#[path = "common/postgres.rs"]
mod test_postgres;

use sfm_migration::postgres::{
    SchemaError, Statement, applied_version, data_model_versions, latest_version, migrate_to,
    parse_scram_sha256_verifier, scram_sha256_verifier,
};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection as _, Executor as _, PgConnection, Row as _};
use test_postgres::{TestDatabase, with_database};

/// Everything about the `sfm` schema that a migration could change, plus what the migrations table
/// records (including when each migration ran), as sorted lines.
async fn schema_snapshot(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        r#"
        SELECT line FROM (
            SELECT format('relation %s kind=%s', c.oid::regclass, c.relkind) AS line
              FROM pg_class c WHERE c.relnamespace = 'sfm'::regnamespace
            UNION ALL
            SELECT format('column %s.%s %s notnull=%s default=%s compression=%s storage=%s',
                          a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod),
                          a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attcompression, a.attstorage)
              FROM pg_attribute a
              JOIN pg_class c ON c.oid = a.attrelid
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE c.relnamespace = 'sfm'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
            UNION ALL
            SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
              FROM pg_constraint WHERE connamespace = 'sfm'::regnamespace
            UNION ALL
            SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'sfm'
            UNION ALL
            SELECT format('migration %s %s %s %s', version, success, encode(checksum, 'hex'), installed_on)
              FROM _sqlx_migrations
        ) lines ORDER BY line
        "#,
    )
    .fetch_all(pool)
    .await
    .expect("read the catalog")
}

async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'sfm' ORDER BY tablename",
    )
    .fetch_all(pool)
    .await
    .expect("list tables")
}

#[tokio::test]
async fn migrations_apply_to_a_fresh_database_and_applying_again_changes_nothing() {
    with_database(|db| async move {
        assert_eq!(applied_version(&db.pool).await.unwrap(), None);
        migrate_to(&db.pool, latest_version())
            .await
            .expect("migrate a fresh database");
        assert_eq!(
            applied_version(&db.pool).await.unwrap(),
            Some(latest_version())
        );
        assert_eq!(
            tables(&db.pool).await,
            [
                "allergies",
                "deviations",
                "documents",
                "institutions",
                "messages",
                "metadata",
                "organisation",
                "patient_identifiers",
                "patients",
                "rejections",
                "stored_files",
                "treatments",
                "upload_chunks",
                "uploads",
                "users",
                "validation",
            ]
        );

        let before = schema_snapshot(&db.pool).await;
        assert!(
            before.len() > 100,
            "the snapshot sees the schema: {} lines",
            before.len()
        );
        migrate_to(&db.pool, latest_version())
            .await
            .expect("migrate again");
        sfm_migration::postgres::MIGRATOR
            .run(&db.pool)
            .await
            .expect("sqlx run again");
        assert_eq!(schema_snapshot(&db.pool).await, before);
    })
    .await;
}

#[tokio::test]
async fn migrate_to_moves_forward_one_version_at_a_time_and_never_back() {
    with_database(|db| async move {
        let versions = data_model_versions();
        assert!(
            versions.len() >= 2,
            "needs two versions to test moving between them"
        );
        migrate_to(&db.pool, versions[0])
            .await
            .expect("migrate to the first version");
        assert_eq!(applied_version(&db.pool).await.unwrap(), Some(versions[0]));
        assert_eq!(tables(&db.pool).await, ["metadata", "validation"]);

        migrate_to(&db.pool, latest_version())
            .await
            .expect("move forward");
        assert_eq!(
            applied_version(&db.pool).await.unwrap(),
            Some(latest_version())
        );

        let before = schema_snapshot(&db.pool).await;
        let error = migrate_to(&db.pool, versions[0])
            .await
            .expect_err("going back is refused");
        assert!(
            matches!(error, SchemaError::WouldGoBackwards { database, target }
                if database == latest_version() && target == versions[0]),
            "{error}"
        );
        assert!(error.to_string().contains("only move forward"), "{error}");
        assert_eq!(schema_snapshot(&db.pool).await, before);

        // The refused call must not leave the migration lock behind: a later call still works.
        migrate_to(&db.pool, latest_version())
            .await
            .expect("migrate after a refusal");
    })
    .await;
}

#[tokio::test]
async fn an_unknown_version_is_refused_without_touching_the_database() {
    with_database(|db| async move {
        for unknown in [0, -1, latest_version() + 1, 9999] {
            let error = migrate_to(&db.pool, unknown).await.expect_err("unknown version");
            assert!(
                matches!(error, SchemaError::UnknownVersion { requested, .. } if requested == unknown),
                "{error}"
            );
        }
        let migrations_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert!(!migrations_table, "a refused migration must not create anything");
    })
    .await;
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_release_is_refused() {
    with_database(|db| async move {
        migrate_to(&db.pool, latest_version()).await.unwrap();
        let newer = latest_version() + 1;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, 'from the future', true, '\\x00', 0)",
        )
        .bind(newer)
        .execute(&db.pool)
        .await
        .unwrap();
        let error = migrate_to(&db.pool, latest_version())
            .await
            .expect_err("newer database");
        assert!(
            matches!(error, SchemaError::UnknownAppliedVersion(v) if v == newer),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn documents_are_stored_with_lz4() {
    with_database(|db| async move {
        migrate_to(&db.pool, latest_version()).await.unwrap();
        let compression: String = sqlx::query_scalar(
            "SELECT attcompression::text FROM pg_attribute
              WHERE attrelid = 'sfm.documents'::regclass AND attname = 'content'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(compression, "l", "sfm.documents.content must use lz4");

        // And a real document is compressed with it, not with the server default.
        let patient = insert_patient(&db.pool, PATIENT_GUID, "patient-a.pat").await;
        let xml = "<PasientExport>".to_string() + &"<Melding>lik tekst</Melding>".repeat(4000) + "</PasientExport>";
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, xml.as_bytes());
        sqlx::query(
            "INSERT INTO sfm.documents (stored_file_id, patient_id, kind, entry_name, size_bytes, sha256, content)
             SELECT stored_file_id, id, 'patient_data', 'PatientData.xml', $2, $3, $4 FROM sfm.patients WHERE id = $1",
        )
        .bind(patient)
        .bind(xml.len() as i64)
        .bind(digest.as_ref())
        .bind(xml.as_bytes())
        .execute(&db.pool)
        .await
        .unwrap();
        let row = sqlx::query(
            "SELECT pg_column_compression(content) AS method, pg_column_size(content) AS stored, content
               FROM sfm.documents",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(row.get::<Option<String>, _>("method").as_deref(), Some("lz4"));
        assert!(row.get::<i32, _>("stored") < xml.len() as i32 / 10);
        assert_eq!(row.get::<Vec<u8>, _>("content"), xml.as_bytes(), "kept byte for byte");
    })
    .await;
}

const PATIENT_GUID: &str = "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672";

/// Stores a file record and a patient the way ingest does (upsert on the FM GUID), returning the
/// patient's internal id.
async fn insert_patient(pool: &PgPool, guid: &str, file_name: &str) -> i64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, file_name.as_bytes());
    let stored_file: i64 = sqlx::query_scalar(
        "INSERT INTO sfm.stored_files (kind, file_name, size_bytes, sha256, migration_key_id, received_at)
         VALUES ('patient', $1, 1234, $2, 'key-1', now())
         ON CONFLICT (sha256) DO UPDATE SET file_name = EXCLUDED.file_name
         RETURNING id",
    )
    .bind(file_name)
    .bind(digest.as_ref())
    .fetch_one(pool)
    .await
    .expect("store the file record");
    sqlx::query_scalar(
        "INSERT INTO sfm.patients (fm_id, family_name, given_name, stored_file_id, source_file_name, source_sha256)
         VALUES ($1::uuid, 'Testesen', 'Test', $2, $3, $4)
         ON CONFLICT (fm_id) DO UPDATE SET
             stored_file_id = EXCLUDED.stored_file_id,
             source_file_name = EXCLUDED.source_file_name,
             source_sha256 = EXCLUDED.source_sha256,
             updated_at = now()
         RETURNING id",
    )
    .bind(guid)
    .bind(stored_file)
    .bind(file_name)
    .bind(digest.as_ref())
    .fetch_one(pool)
    .await
    .expect("store the patient")
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
}

#[tokio::test]
async fn the_same_patient_guid_is_stored_once() {
    with_database(|db| async move {
        migrate_to(&db.pool, latest_version()).await.unwrap();
        let first = insert_patient(&db.pool, PATIENT_GUID, r"Patients0\0e7bfd89.pat").await;
        // The same file uploaded again, and a re-export under another file: still one patient.
        let again = insert_patient(&db.pool, PATIENT_GUID, r"Patients0\0e7bfd89.pat").await;
        let reexport = insert_patient(&db.pool, PATIENT_GUID, r"Patients1\0e7bfd89.pat").await;
        assert_eq!((first, first), (again, reexport));
        let (patients, files): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sfm.patients), (SELECT count(*) FROM sfm.stored_files)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!((patients, files), (1, 2), "one patient, two distinct files in the audit trail");
        let source: String = sqlx::query_scalar("SELECT source_file_name FROM sfm.patients")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(source, r"Patients1\0e7bfd89.pat", "the newest file wins");

        // A plain INSERT of a known GUID is a unique violation, never a second row.
        let duplicate = sqlx::query(
            "INSERT INTO sfm.patients (fm_id, family_name, given_name, stored_file_id, source_file_name, source_sha256)
             SELECT fm_id, family_name, given_name, stored_file_id, source_file_name, source_sha256 FROM sfm.patients",
        )
        .execute(&db.pool)
        .await
        .expect_err("duplicate GUID");
        assert_eq!(sqlstate(&duplicate).as_deref(), Some("23505"));
    })
    .await;
}

#[tokio::test]
async fn one_person_under_two_guids_is_found_and_children_go_with_their_patient() {
    with_database(|db| async move {
        migrate_to(&db.pool, latest_version()).await.unwrap();
        let a = insert_patient(&db.pool, PATIENT_GUID, "a.pat").await;
        let b = insert_patient(&db.pool, "5358ef4e-c6ae-4ced-9ca2-e284d5ca32d2", "b.pat").await;
        for patient in [a, b] {
            sqlx::query(
                "INSERT INTO sfm.patient_identifiers (patient_id, type_code, value) VALUES ($1, 'FNR', '09010557876')",
            )
            .bind(patient)
            .execute(&db.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO sfm.allergies (patient_id, fm_id, group_id, head_of_history, last_updated_on)
                 VALUES ($1, 'r1', 'g1', true, '2021-01-01')",
            )
            .bind(patient)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        let shared: Vec<i64> = sqlx::query_scalar(
            "SELECT count(DISTINCT patient_id) FROM sfm.patient_identifiers
              GROUP BY type_code, value HAVING count(DISTINCT patient_id) > 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(shared, [2], "the shared FNR is found");

        // The lookup by value uses the index (seqscan disabled only to ask whether the index can serve).
        let mut connection = db.pool.acquire().await.unwrap();
        connection.execute("SET enable_seqscan = off").await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT patient_id FROM sfm.patient_identifiers WHERE value = '09010557876'",
        )
        .fetch_all(&mut *connection)
        .await
        .unwrap();
        assert!(plan.iter().any(|line| line.contains("patient_identifiers_value_idx")), "{plan:?}");
        drop(connection);

        sqlx::query("DELETE FROM sfm.patients WHERE id = $1").bind(a).execute(&db.pool).await.unwrap();
        let left: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sfm.patient_identifiers), (SELECT count(*) FROM sfm.allergies)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(left, (1, 1), "the deleted patient's children are gone, the other's stay");
    })
    .await;
}

async fn insert_upload(
    pool: &PgPool,
    state: &str,
    metadata: &str,
) -> Result<uuid::Uuid, sqlx::Error> {
    let id = uuid::Uuid::new_v4();
    let complete = state != "created" && state != "receiving";
    sqlx::query(
        "INSERT INTO sfm.uploads (id, file_name, file_type, declared_length, upload_offset, metadata, state,
                                  migration_key_id, sha256, completed_at, expires_at)
         VALUES ($1, 'Patients0\\x.pat', 'Patient', 10, $2, $3::jsonb, $4, 'key-1',
                 CASE WHEN $5 THEN sha256('x'::bytea) END, CASE WHEN $5 THEN now() END, now() + interval '1 day')",
    )
    .bind(id)
    .bind(if complete { 10_i64 } else { 0 })
    .bind(metadata)
    .bind(state)
    .bind(complete)
    .execute(pool)
    .await?;
    Ok(id)
}

const CLAIM: &str = "SELECT id FROM sfm.uploads WHERE state = 'complete'
                      ORDER BY completed_at FOR UPDATE SKIP LOCKED LIMIT 1";

#[tokio::test]
async fn uploads_never_store_the_key_and_each_complete_upload_is_claimed_once() {
    with_database(|db| async move {
        migrate_to(&db.pool, latest_version()).await.unwrap();

        let with_key =
            insert_upload(&db.pool, "created", r#"{"SessionId": "sfmk_abc_secret"}"#).await;
        assert_eq!(
            sqlstate(&with_key.expect_err("key in metadata")).as_deref(),
            Some("23514")
        );
        let bad_state = insert_upload(&db.pool, "ingesting", "{}").await;
        assert_eq!(
            sqlstate(&bad_state.expect_err("unknown state")).as_deref(),
            Some("23514")
        );

        let first = insert_upload(&db.pool, "complete", r#"{"name": "x.pat"}"#)
            .await
            .unwrap();
        let second = insert_upload(&db.pool, "complete", "{}").await.unwrap();
        insert_upload(&db.pool, "receiving", "{}").await.unwrap();

        // Two replicas claim at once: each gets a different upload, a third gets none.
        let mut replica_a = db.pool.begin().await.unwrap();
        let mut replica_b = db.pool.begin().await.unwrap();
        let claimed_a: uuid::Uuid = sqlx::query_scalar(CLAIM)
            .fetch_one(&mut *replica_a)
            .await
            .unwrap();
        let claimed_b: uuid::Uuid = sqlx::query_scalar(CLAIM)
            .fetch_one(&mut *replica_b)
            .await
            .unwrap();
        assert_eq!((claimed_a, claimed_b), (first, second));
        let claimed_c: Option<uuid::Uuid> = sqlx::query_scalar(CLAIM)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        assert_eq!(claimed_c, None);

        // Replica A dies mid-ingest (its transaction aborts); replica B finishes.
        replica_a.rollback().await.unwrap();
        sqlx::query("UPDATE sfm.uploads SET state = 'ingested' WHERE id = $1")
            .bind(claimed_b)
            .execute(&mut *replica_b)
            .await
            .unwrap();
        replica_b.commit().await.unwrap();
        let reclaimed: Option<uuid::Uuid> = sqlx::query_scalar(CLAIM)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            reclaimed,
            Some(first),
            "the crashed ingest is claimable again"
        );

        // A chunk beyond the declared length cannot be recorded as progress.
        let overrun = sqlx::query("UPDATE sfm.uploads SET upload_offset = 11 WHERE id = $1")
            .bind(first)
            .execute(&db.pool)
            .await
            .expect_err("offset past the length");
        assert_eq!(sqlstate(&overrun).as_deref(), Some("23514"));
    })
    .await;
}

#[tokio::test]
async fn metadata_and_validation_hold_at_most_one_row() {
    with_database(|db| async move {
        migrate_to(&db.pool, latest_version()).await.unwrap();
        let uid = uuid::Uuid::new_v4();
        let insert_metadata =
            "INSERT INTO sfm.metadata (data_model_version, migration_database_uid) VALUES ($1, $2)";
        sqlx::query(insert_metadata)
            .bind(latest_version())
            .bind(uid)
            .execute(&db.pool)
            .await
            .unwrap();
        let second = sqlx::query(insert_metadata)
            .bind(latest_version())
            .bind(uid)
            .execute(&db.pool)
            .await;
        assert_eq!(
            sqlstate(&second.expect_err("second metadata row")).as_deref(),
            Some("23505")
        );
        let mode: String = sqlx::query_scalar("SELECT mode FROM sfm.metadata")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(mode, "staging");
        let bad_mode = sqlx::query("UPDATE sfm.metadata SET mode = 'live', operational_at = now()")
            .execute(&db.pool)
            .await;
        assert_eq!(
            sqlstate(&bad_mode.expect_err("unknown mode")).as_deref(),
            Some("23514")
        );

        let insert_validation =
            "INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored,
                 patients_expected, patients_stored, files_rejected, migration_key_id)
             VALUES (sha256('manifest'::bytea), 3, 3, 100, 100, 0, 'key-1')";
        sqlx::query(insert_validation)
            .execute(&db.pool)
            .await
            .unwrap();
        let second = sqlx::query(insert_validation).execute(&db.pool).await;
        assert_eq!(
            sqlstate(&second.expect_err("second validation row")).as_deref(),
            Some("23505")
        );
        let short_digest =
            sqlx::query("UPDATE sfm.validation SET manifest_sha256 = '\\x0102'::bytea")
                .execute(&db.pool)
                .await;
        assert_eq!(
            sqlstate(&short_digest.expect_err("not a SHA-256")).as_deref(),
            Some("23514")
        );
    })
    .await;
}

/// Connects to the test database as `role` over TCP, where pg_hba.conf demands scram-sha-256.
async fn log_in(
    db: &TestDatabase,
    role: &str,
    password: &str,
) -> Result<PgConnection, sqlx::Error> {
    let options: PgConnectOptions = db.options.clone().username(role).password(password);
    PgConnection::connect_with(&options).await
}

#[tokio::test]
async fn scram_verifiers_match_postgresql_and_let_a_role_log_in() {
    with_database(|db| async move {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let server_role = format!("sfm_test_scram_server_{}", &suffix[..12]);
        let our_role = format!("sfm_test_scram_ours_{}", &suffix[..12]);
        let password = sfm_migration::postgres::generate_password();

        let outcome = async {
            // PostgreSQL computes a verifier; ours must be identical for the same salt and iterations.
            let mut admin = db.pool.acquire().await.unwrap();
            admin
                .execute("SET password_encryption = 'scram-sha-256'")
                .await
                .unwrap();
            admin
                .execute(
                    Statement::new("CREATE ROLE ")
                        .ident(&server_role)
                        .unwrap()
                        .push(" LOGIN PASSWORD ")
                        .literal(&password)
                        .unwrap(),
                )
                .await
                .unwrap();
            let stored: String =
                sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                    .bind(&server_role)
                    .fetch_one(&mut *admin)
                    .await
                    .unwrap();
            let parameters =
                parse_scram_sha256_verifier(&stored).expect("PostgreSQL stored a SCRAM verifier");
            assert_eq!(
                scram_sha256_verifier(&password, &parameters.salt, parameters.iterations),
                stored
            );

            // A role created from our verifier logs in with the password, and only with it.
            let verifier = sfm_migration::postgres::new_scram_sha256_verifier(&password);
            admin
                .execute(
                    Statement::new("CREATE ROLE ")
                        .ident(&our_role)
                        .unwrap()
                        .push(" LOGIN PASSWORD ")
                        .literal(&verifier)
                        .unwrap(),
                )
                .await
                .unwrap();
            let stored_ours: String =
                sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                    .bind(&our_role)
                    .fetch_one(&mut *admin)
                    .await
                    .unwrap();
            assert_eq!(
                stored_ours, verifier,
                "PostgreSQL keeps a verifier as it is given"
            );
            drop(admin);

            let mut connection = log_in(&db, &our_role, &password)
                .await
                .expect("log in with the password");
            let user: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&mut connection)
                .await
                .unwrap();
            assert_eq!(user, our_role);
            connection.close().await.unwrap();

            let refused = log_in(&db, &our_role, "wrong-password")
                .await
                .expect_err("wrong password");
            assert_eq!(
                sqlstate(&refused).as_deref(),
                Some("28P01"),
                "invalid_password"
            );
        };
        let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;

        // Roles are cluster-wide: remove them even when the test failed.
        for role in [&server_role, &our_role] {
            db.pool
                .execute(Statement::new("DROP ROLE IF EXISTS ").ident(role).unwrap())
                .await
                .unwrap();
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    })
    .await;
}
