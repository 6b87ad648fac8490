//! The operator against the real API server and a real PostgreSQL server: the shipped examples reach
//! Ready in staging, keys supersede each other, a faked status does not activate, and a validation
//! record plus an activation request switches the database to operational, in PostgreSQL itself.

use super::cluster::*;
use super::processes::*;
use std::time::Duration;

const NS: &str = "sfm-organisations";
const DB: &str = "mdb/legekontoret-fjordby";

#[test]
fn examples_go_from_staging_to_operational_under_the_activation_rule() {
    let _turn = examples_turn();
    install_crds();
    let operator = start_operator(NS, "sfm-system", "operator-examples");
    // The examples exactly as shipped.
    kubectl_ok(
        &["apply", "-f", &repo_path("examples/00-namespace.yaml")],
        None,
    );
    kubectl_ok(
        &[
            "apply",
            "-f",
            &repo_path("examples/10-migrationdatabase.yaml"),
            "-f",
            &repo_path("examples/20-migrationkey.yaml"),
        ],
        None,
    );
    kubectl_ok(
        &["-n", NS, "wait", "--for=condition=Ready", DB, WAIT_TIMEOUT],
        None,
    );
    assert_eq!(jsonpath(NS, DB, "{.status.phase}"), "Staging");

    let migrator_secret = jsonpath(NS, DB, "{.status.database.migratorSecret}");
    let (api_ns, migrator_name) = migrator_secret.split_once('/').unwrap();
    let migrator_uri = secret_field(api_ns, migrator_name, "uri");
    let application_uri = secret_field(NS, "legekontoret-fjordby-application", "uri");
    let mut secrets = vec![
        secret_field(api_ns, migrator_name, "password"),
        secret_field(NS, "legekontoret-fjordby-application", "password"),
        secret_field(NS, "fjordby-key-1-key", "key"),
    ];
    assert!(migrator_uri.starts_with("postgres://"));
    // The admin URI's TLS setting is carried into every URI the operator writes.
    let admin_ssl_mode = url::Url::parse(&admin_url())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| "prefer".to_owned());
    for uri in [&migrator_uri, &application_uri] {
        assert!(
            uri.ends_with(&format!("?sslmode={admin_ssl_mode}")),
            "sslmode of {}",
            uri.split('@').nth(1).unwrap_or_default()
        );
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use sqlx::{Connection, PgConnection};
        // Staging: the migrator connects (scram over TCP) and writes; the application role cannot log in.
        let mut migrator = PgConnection::connect(&migrator_uri).await.expect("the migrator connects in staging");
        let mode: String = sqlx::query_scalar("SELECT mode FROM sfm.metadata").fetch_one(&mut migrator).await.unwrap();
        assert_eq!(mode, "staging");
        let refused = PgConnection::connect(&application_uri).await;
        assert!(refused.is_err(), "the application role logged in during staging");
        // The migrator may not change the mode.
        assert!(sqlx::query("UPDATE sfm.metadata SET mode = 'operational', operational_at = now()").execute(&mut migrator).await.is_err());

        // A second key supersedes the first.
        let first_key = jsonpath(NS, "mkey/fjordby-key-1", "{.status.keyId}");
        kubectl_ok(&["apply", "-f", "-"], Some(&format!(
            "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: fjordby-key-2\n  namespace: {NS}\nspec:\n  databaseRef: legekontoret-fjordby\n  timeToLive: 24h\n")));
        assert!(eventually(PATIENCE, || jsonpath(NS, "mkey/fjordby-key-2", "{.status.phase}") == "Active"));
        assert!(eventually(PATIENCE, || jsonpath(NS, "mkey/fjordby-key-1", "{.status.phase}") == "Superseded"));
        let second_key = jsonpath(NS, "mkey/fjordby-key-2", "{.status.keyId}");
        secrets.push(secret_field(NS, "fjordby-key-2-key", "key"));
        assert_ne!(first_key, second_key);
        assert!(eventually(PATIENCE, || jsonpath(NS, DB, "{.status.activeKey}") == second_key));

        // A status patch that claims validation, without the record in PostgreSQL, activates nothing.
        let digest = "ab".repeat(32);
        let claim = format!(r#"{{"apiVersion":"sfm.nhn.no/v1alpha1","kind":"MigrationDatabase","metadata":{{"name":"legekontoret-fjordby","namespace":"{NS}"}},"status":{{"migration":{{"validatedDigest":"{digest}","activationRequestedAt":"2026-01-01T00:00:00Z"}}}}}}"#);
        kubectl_ok(&["apply", "--server-side", "--field-manager=sfm-migration-api", "--subresource=status", "-f", "-"], Some(&claim));
        // Give the operator a few resyncs (5 s each here) to be fooled; it must not be.
        std::thread::sleep(Duration::from_secs(8));
        assert_ne!(jsonpath(NS, DB, "{.status.phase}"), "Operational");
        assert_eq!(jsonpath(NS, DB, "{.status.conditions[?(@.type==\"Validated\")].status}"), "False");
        // The operator's own status writes keep the API's field.
        assert_eq!(jsonpath(NS, DB, "{.status.migration.validatedDigest}"), digest);

        // A validation record (as the API's verify writes it) of another manifest, with activation
        // requested: the digests differ, so still no switch.
        let validated = "cd".repeat(32);
        sqlx::query(
            "INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored, patients_expected, patients_stored, files_rejected, migration_key_id, activation_requested_at)
             VALUES (decode($1, 'hex'), 0, 0, 0, 0, 0, $2, now() + interval '1 second')",
        )
        .bind(&validated)
        .bind(&second_key)
        .execute(&mut migrator)
        .await
        .unwrap();
        assert!(eventually(PATIENCE, || jsonpath(NS, DB, "{.status.phaseReason}") == "ValidationDigestMismatch"));
        assert_ne!(jsonpath(NS, DB, "{.status.phase}"), "Operational");

        // The API's status now names the validated digest: every condition holds, the switch happens.
        let claim = claim.replace(&digest, &validated);
        kubectl_ok(&["apply", "--server-side", "--field-manager=sfm-migration-api", "--subresource=status", "-f", "-"], Some(&claim));
        kubectl_ok(&["-n", NS, "wait", "--for=condition=Operational", DB, WAIT_TIMEOUT], None);
        assert_eq!(jsonpath(NS, DB, "{.status.phase}"), "Operational");

        // In PostgreSQL itself: the migrator's open session is gone and it cannot log in again; the
        // application role logs in and writes.
        assert!(sqlx::query("SELECT 1").execute(&mut migrator).await.is_err(), "the migrator session survived the switch");
        assert!(PgConnection::connect(&migrator_uri).await.is_err(), "the migrator can still log in");
        let mut application = PgConnection::connect(&application_uri).await.expect("the application role connects when operational");
        let mode: String = sqlx::query_scalar("SELECT mode FROM sfm.metadata").fetch_one(&mut application).await.unwrap();
        assert_eq!(mode, "operational");
        sqlx::query("DELETE FROM sfm.rejections").execute(&mut application).await.expect("the application role may write");
    });

    // The migrator's Secret is gone, the access entry is there, and every key expired.
    assert!(eventually(PATIENCE, || !kubectl(
        &["-n", "sfm-system", "get", "secret", migrator_name],
        None
    )
    .status
    .success()));
    assert_eq!(
        jsonpath(
            NS,
            "configmap/legekontoret-fjordby-access",
            "{.data.helseIdClientId}"
        ),
        "fjordby-legekontor-sfm"
    );
    assert!(eventually(PATIENCE, || jsonpath(
        NS,
        "mkey/fjordby-key-2",
        "{.status.phase}"
    ) == "Expired"));

    // No password or key reached the operator's log, an Event, or a status.
    let events = kubectl_ok(&["-n", NS, "get", "events", "-o", "json"], None);
    let objects = kubectl_ok(&["-n", NS, "get", "mdb,mkey", "-o", "json"], None);
    let log = operator.log_text();
    assert!(
        log.contains("reached the API server"),
        "the operator log is empty"
    );
    for secret in &secrets {
        assert!(secret.len() >= 20, "not a real secret: {secret}");
        for (place, text) in [("log", &log), ("Events", &events), ("objects", &objects)] {
            assert!(
                !text.contains(secret.as_str()),
                "a password or key is in the operator's {place}"
            );
        }
    }
}
