//! The operator when things go wrong, against the real API server and the real PostgreSQL server:
//! bad references and names each get a clear condition and Event, make nothing half, and recover by
//! themselves once fixed; Manual activation waits for the matching digest; the reclaim policies; a kill
//! mid-reconcile converges with nothing duplicated; of two operators only the Lease holder reconciles;
//! a restarted operator does not pass again what it passed before.

use super::cluster::*;
use super::processes::*;
use sfm_migration::postgres::provision::{DatabaseNames, temporary_name};
use sqlx::{Connection, PgConnection};
use std::io::{Read, Write};
use std::time::Duration;

const API_NS: &str = "sfm-system";

/// The CRDs, the API namespace and a namespace of the test's own.
fn namespace(prefix: &str) -> TestNamespace {
    install_crds();
    let _ = kubectl(&["create", "namespace", API_NS], None);
    TestNamespace::new(prefix)
}

/// [`namespace`] and an operator watching it.
fn setup(prefix: &str) -> (TestNamespace, Process) {
    let ns = namespace(prefix);
    let operator = start_operator(&ns.name, API_NS, &format!("operator-{}", ns.name));
    (ns, operator)
}

/// A MigrationDatabase manifest; `extra` is indented spec YAML appended to the defaults.
fn database(ns: &str, name: &str, extra: &str) -> String {
    let version = if extra.contains("dataModelVersion") {
        ""
    } else {
        "  dataModelVersion: 4\n"
    };
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  organisation:\n    name: Testlegene\n    organisationNumber: \"974760673\"\n    helseIdClientId: testlegene-sfm\n  validation:\n    allowSyntheticIdentities: true\n{version}{extra}"
    )
}

fn apply(manifest: &str) {
    kubectl_ok(&["apply", "-f", "-"], Some(manifest));
}

fn condition(ns: &str, db: &str, type_: &str, field: &str) -> String {
    jsonpath(
        ns,
        &format!("mdb/{db}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
    )
}

fn wait_ready(ns: &str, db: &str) {
    kubectl_ok(
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("mdb/{db}"),
            WAIT_TIMEOUT,
        ],
        None,
    );
}

fn warning_reasons(ns: &str) -> String {
    kubectl_ok(
        &[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector=type=Warning",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().unwrap().block_on(future)
}

/// Databases and roles on the server tagged with this UID, and temporary databases of any name.
fn tagged(uid: &str) -> (i64, i64) {
    block_on(async {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        let pattern = format!("%{uid}");
        let databases: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE $1",
        )
        .bind(&pattern)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        let roles: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_roles WHERE shobj_description(oid, 'pg_authid') LIKE $1",
        )
        .bind(&pattern)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        (databases, roles)
    })
}

fn admin_exec(sql: &str) {
    block_on(async {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut admin)
            .await
            .unwrap();
    });
}

fn uid(ns: &str, kind_name: &str) -> String {
    jsonpath(ns, kind_name, "{.metadata.uid}")
}

#[test]
fn bad_server_references_get_a_clear_condition_make_nothing_and_recover_once_fixed() {
    let (ns, _operator) = setup("bad-input");
    let ns = ns.name.as_str();
    let server = |secret: &str| {
        format!("  server:\n    adminSecretRef:\n      name: {secret}\n      key: uri\n")
    };
    let admin = admin_url();
    let url = url::Url::parse(&admin).unwrap();
    let mut wrong_password = url.clone();
    wrong_password
        .set_password(Some("not-the-password"))
        .unwrap();
    let mut unreachable = url.clone();
    unreachable.set_port(Some(1)).unwrap();

    // A missing Secret, wrong credentials, an unreachable server, a version that does not exist, and a
    // key for a database that does not exist.
    apply(&database(ns, "missing-secret", &server("nowhere")));
    apply(&database(ns, "wrong-password", &server("wrong-password")));
    apply(&database(ns, "unreachable", &server("unreachable")));
    apply(&database(ns, "future-version", "  dataModelVersion: 99\n"));
    let secret = |name: &str, uri: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  uri: \"{uri}\"\n"
        )
    };
    apply(&secret("wrong-password", wrong_password.as_str()));
    apply(&secret("unreachable", unreachable.as_str()));
    apply(&format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: early-key\n  namespace: {ns}\nspec:\n  databaseRef: later\n"
    ));

    let expect = [
        ("missing-secret", "AdminSecretMissing"),
        ("wrong-password", "AdminAuthenticationFailed"),
        ("unreachable", "ServerUnreachable"),
        ("future-version", "UnknownDataModelVersion"),
    ];
    for (db, reason) in expect {
        assert!(
            eventually(PATIENCE, || condition(ns, db, "Ready", "reason") == reason),
            "{db}: Ready reason is {:?}, expected {reason}",
            condition(ns, db, "Ready", "reason")
        );
        assert_eq!(condition(ns, db, "Ready", "status"), "False");
        let message = condition(ns, db, "Ready", "message");
        assert!(!message.is_empty(), "{db}: no condition message");
        assert!(
            !message.contains("not-the-password")
                && !message.contains(url.password().unwrap_or("-")),
            "{db}: a password reached the condition message: {message}"
        );
        // Nothing half-made on the server, and no Secret with credentials for it.
        assert_eq!(tagged(&uid(ns, &format!("mdb/{db}"))), (0, 0), "{db}");
        assert!(
            !kubectl(
                &["-n", ns, "get", "secret", &format!("{db}-application")],
                None
            )
            .status
            .success(),
            "{db}: an application Secret exists for a database that was never made"
        );
    }
    assert_eq!(
        jsonpath(ns, "mdb/future-version", "{.status.phase}"),
        "Failed"
    );
    let events = warning_reasons(ns);
    for (_, reason) in expect {
        assert!(
            events.contains(reason),
            "no Warning Event {reason} in {events}"
        );
    }
    assert!(eventually(PATIENCE, || jsonpath(
        ns,
        "mkey/early-key",
        "{.status.phase}"
    ) == "Pending"));
    assert!(jsonpath(ns, "mkey/early-key", "{.status.message}").contains("does not exist"));

    // Fixed: the Secret appears, the password is corrected, the server is the right one, the database
    // appears. Each recovers by itself (backoff is exponential but starts at 2 s).
    apply(&secret("nowhere", &admin));
    apply(&secret("wrong-password", &admin));
    apply(&secret("unreachable", &admin));
    apply(&database(ns, "later", ""));
    for db in ["missing-secret", "wrong-password", "unreachable", "later"] {
        wait_ready(ns, db);
        assert_eq!(tagged(&uid(ns, &format!("mdb/{db}"))), (1, 3), "{db}");
    }
    assert!(eventually(PATIENCE, || jsonpath(
        ns,
        "mkey/early-key",
        "{.status.phase}"
    ) == "Active"));
}

#[test]
fn a_name_taken_by_an_untagged_database_is_a_collision_and_is_never_adopted() {
    let (ns, _operator) = setup("collision");
    let ns = ns.name.as_str();
    // Held back by a missing admin Secret until the squatter is in place.
    apply(&database(
        ns,
        "squatted",
        "  server:\n    adminSecretRef:\n      name: admin\n      key: uri\n",
    ));
    let object_uid = uid(ns, "mdb/squatted");
    let names = DatabaseNames::new(ns, "squatted", &object_uid);
    admin_exec(&format!("CREATE DATABASE \"{}\"", names.database));
    apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: admin\n  namespace: {ns}\nstringData:\n  uri: \"{}\"\n",
        admin_url()
    ));
    assert!(eventually(PATIENCE, || condition(
        ns, "squatted", "Ready", "reason"
    ) == "NameCollision"));
    assert_eq!(jsonpath(ns, "mdb/squatted", "{.status.phase}"), "Failed");
    assert!(warning_reasons(ns).contains("NameCollision"));
    // The squatter is untouched: still untagged, still there.
    let tag: Option<String> = block_on(async {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
        )
        .bind(&names.database)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    });
    assert_eq!(
        tag, None,
        "the operator tagged (adopted) a database it did not make"
    );

    // Once the squatter is gone the database is made.
    admin_exec(&format!("DROP DATABASE \"{}\"", names.database));
    wait_ready(ns, "squatted");
    assert_eq!(tagged(&object_uid).0, 1);
}

/// Writes a validation record into the staging database as the migration API's verify does, and the
/// API's status claim, both for `digest`, with activation requested.
fn validate_and_request_activation(ns: &str, db: &str, digest: &str) {
    let migrator_secret = jsonpath(
        ns,
        &format!("mdb/{db}"),
        "{.status.database.migratorSecret}",
    );
    let (api_ns, migrator_name) = migrator_secret.split_once('/').unwrap();
    let migrator_uri = secret_field(api_ns, migrator_name, "uri");
    block_on(async {
        let mut migrator = PgConnection::connect(&migrator_uri).await.unwrap();
        sqlx::query(
            "INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored, patients_expected, patients_stored, files_rejected, migration_key_id, activation_requested_at)
             VALUES (decode($1, 'hex'), 0, 0, 0, 0, 0, 'testkey', now())",
        )
        .bind(digest)
        .execute(&mut migrator)
        .await
        .unwrap();
    });
    let claim = format!(
        r#"{{"apiVersion":"sfm.nhn.no/v1alpha1","kind":"MigrationDatabase","metadata":{{"name":"{db}","namespace":"{ns}"}},"status":{{"migration":{{"validatedDigest":"{digest}","activationRequestedAt":"2026-01-01T00:00:00Z"}}}}}}"#
    );
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=sfm-migration-api",
            "--subresource=status",
            "-f",
            "-",
        ],
        Some(&claim),
    );
}

#[test]
fn manual_activation_waits_for_the_approval_of_exactly_the_validated_digest() {
    let (ns, _operator) = setup("manual");
    let ns = ns.name.as_str();
    apply(&database(ns, "manual", "  activation:\n    mode: Manual\n"));
    wait_ready(ns, "manual");
    let digest = "5e".repeat(32);
    validate_and_request_activation(ns, "manual", &digest);
    assert!(eventually(PATIENCE, || condition(
        ns,
        "manual",
        "Validated",
        "status"
    ) == "True"));
    let waiting = jsonpath(ns, "mdb/manual", "{.status.phaseReason}");
    std::thread::sleep(Duration::from_secs(6));
    assert_ne!(jsonpath(ns, "mdb/manual", "{.status.phase}"), "Operational");

    // An approval of another digest does not switch.
    let approve = |digest: &str| {
        kubectl_ok(
            &[
                "-n",
                ns,
                "patch",
                "mdb/manual",
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"activation":{{"approvedDigest":"{digest}"}}}}}}"#),
            ],
            None,
        )
    };
    approve(&"00".repeat(32));
    std::thread::sleep(Duration::from_secs(8));
    assert_ne!(jsonpath(ns, "mdb/manual", "{.status.phase}"), "Operational");
    let mismatch = jsonpath(ns, "mdb/manual", "{.status.phaseReason}");
    assert!(
        !mismatch.is_empty(),
        "no reason given while waiting ({waiting})"
    );

    approve(&digest);
    kubectl_ok(
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Operational",
            "mdb/manual",
            WAIT_TIMEOUT,
        ],
        None,
    );
}

/// A first pass creates its Secrets and NetworkPolicy without reading their names first: an object
/// planted under one of them (the migrator's Secret, named from the UID, and the policy) is still a
/// `NameCollision` and left exactly as it was. The policy a first pass made lets the pods reach DNS
/// only, and is changed at the switch to let them reach the server too.
#[test]
fn a_first_pass_refuses_planted_children_and_its_policy_opens_at_the_switch() {
    let ns = namespace("first-pass");
    let ns = ns.name.as_str();
    // No operator yet: the objects are planted before any pass.
    for name in ["planted-secret", "planted-policy", "clean"] {
        apply(&database(ns, name, ""));
    }
    let migrator_secret = format!("sfm-migrator-{}", uid(ns, "mdb/planted-secret"));
    kubectl_ok(
        &[
            "-n",
            API_NS,
            "create",
            "secret",
            "generic",
            &migrator_secret,
            "--from-literal=password=planted",
        ],
        None,
    );
    apply(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: planted-policy-sfm-database\n  namespace: {ns}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
    ));
    let secret_version = jsonpath(
        API_NS,
        &format!("secret/{migrator_secret}"),
        "{.metadata.resourceVersion}",
    );
    let policy_version = jsonpath(
        ns,
        "networkpolicy/planted-policy-sfm-database",
        "{.metadata.resourceVersion}",
    );
    assert_eq!(jsonpath(ns, "mdb/clean", "{.status.phase}"), "");
    let _operator = start_operator(ns, API_NS, &format!("operator-{ns}"));

    for planted in ["planted-secret", "planted-policy"] {
        assert!(
            eventually(PATIENCE, || jsonpath(
                ns,
                &format!("mdb/{planted}"),
                "{.status.phase}/{.status.phaseReason}"
            ) == "Failed/NameCollision"),
            "{planted}: {}",
            jsonpath(ns, &format!("mdb/{planted}"), "{.status}")
        );
    }
    wait_ready(ns, "clean");
    assert_eq!(
        jsonpath(
            API_NS,
            &format!("secret/{migrator_secret}"),
            "{.metadata.resourceVersion}"
        ),
        secret_version,
        "the planted Secret was changed"
    );
    assert_eq!(
        jsonpath(
            ns,
            "networkpolicy/planted-policy-sfm-database",
            "{.metadata.resourceVersion}"
        ),
        policy_version,
        "the planted NetworkPolicy was changed"
    );
    kubectl_ok(&["-n", API_NS, "delete", "secret", &migrator_secret], None);

    let egress_ports = || {
        jsonpath(
            ns,
            "networkpolicy/clean-sfm-database",
            "{range .spec.egress[*]}{.ports[*].port},{end}",
        )
    };
    assert_eq!(egress_ports(), "53 53,", "staging: DNS only");
    validate_and_request_activation(ns, "clean", &"7a".repeat(32));
    kubectl_ok(
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Operational",
            "mdb/clean",
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert!(
        eventually(PATIENCE, || egress_ports() == "53 53,5432,"),
        "operational: {}",
        egress_ports()
    );
}

#[test]
fn deletion_honours_the_reclaim_policy() {
    let (ns_guard, _operator) = setup("reclaim");
    let ns = ns_guard.name.as_str();
    apply(&database(ns, "keep", "  reclaimPolicy: Retain\n"));
    apply(&database(ns, "drop", "  reclaimPolicy: Delete\n"));
    wait_ready(ns, "keep");
    wait_ready(ns, "drop");
    let (keep_uid, drop_uid) = (uid(ns, "mdb/keep"), uid(ns, "mdb/drop"));
    let keep_migrator = jsonpath(ns, "mdb/keep", "{.status.database.migratorSecret}");
    let drop_migrator = jsonpath(ns, "mdb/drop", "{.status.database.migratorSecret}");
    let keep_application_uri = secret_field(ns, "keep-application", "uri");
    let (api_ns, keep_migrator_name) = keep_migrator.split_once('/').unwrap();
    let keep_migrator_uri = secret_field(api_ns, keep_migrator_name, "uri");
    assert_eq!(tagged(&keep_uid), (1, 3));
    assert_eq!(tagged(&drop_uid), (1, 3));

    kubectl_ok(
        &["-n", ns, "delete", "mdb/keep", "mdb/drop", WAIT_TIMEOUT],
        None,
    );
    // Delete: database and roles gone, and the Secrets with them.
    assert_eq!(tagged(&drop_uid), (0, 0));
    let (_, drop_migrator_name) = drop_migrator.split_once('/').unwrap();
    assert!(eventually(PATIENCE, || !kubectl(
        &["-n", API_NS, "get", "secret", drop_migrator_name],
        None
    )
    .status
    .success()));
    // Retain: database and roles kept, the application Secret kept (orphaned, so it outlives its
    // owner), the migrator locked out and its Secret removed from the API's namespace.
    assert_eq!(tagged(&keep_uid), (1, 3));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        secret_field(ns, "keep-application", "uri"),
        keep_application_uri,
        "the retained database's application Secret was removed"
    );
    assert!(
        jsonpath(ns, "secret/keep-application", "{.metadata.ownerReferences}").is_empty(),
        "the retained Secret still has an owner and would be garbage-collected"
    );
    assert!(
        block_on(PgConnection::connect(&keep_migrator_uri)).is_err(),
        "the migrator of a retained database can still log in"
    );
    assert!(
        !kubectl(&["-n", API_NS, "get", "secret", keep_migrator_name], None)
            .status
            .success()
    );
    // Clean up the retained database so the shared server does not fill up.
    let names = DatabaseNames::new(ns, "keep", &keep_uid);
    admin_exec(&format!("DROP DATABASE \"{}\"", names.database));
    for role in [&names.migrator, &names.application, &names.owner] {
        admin_exec(&format!("DROP ROLE \"{role}\""));
    }
}

#[test]
fn killing_the_operator_mid_reconcile_converges_with_nothing_duplicated_or_leaked() {
    let ns = namespace("crash");
    let ns = ns.name.as_str();
    let names: Vec<String> = (0..8).map(|i| format!("org-{i}")).collect();
    let manifests: String = names
        .iter()
        .map(|name| database(ns, name, "  reclaimPolicy: Delete\n"))
        .collect::<Vec<_>>()
        .join("---\n");
    let fast = ["--lease-duration-seconds", "3"];
    let mut operator = start_operator_with(ns, API_NS, &format!("operator-{ns}-1"), &fast);
    apply(&manifests);
    // Kill it twice while it is provisioning, at different points.
    for (round, pause) in [(2, 1200u64), (3, 700)] {
        std::thread::sleep(Duration::from_millis(pause));
        operator.kill();
        operator = start_operator_with(ns, API_NS, &format!("operator-{ns}-{round}"), &fast);
    }
    for name in &names {
        wait_ready(ns, name);
    }
    for name in &names {
        let object_uid = uid(ns, &format!("mdb/{name}"));
        assert_eq!(tagged(&object_uid), (1, 3), "{name}: duplicated or missing");
        assert_eq!(
            jsonpath(ns, &format!("mdb/{name}"), "{.status.phase}"),
            "Staging"
        );
        // Exactly one application Secret and one key-less migrator Secret, no leftovers.
        let migrator = jsonpath(
            ns,
            &format!("mdb/{name}"),
            "{.status.database.migratorSecret}",
        );
        let (api_ns, migrator_name) = migrator.split_once('/').unwrap();
        let uri = secret_field(api_ns, migrator_name, "uri");
        assert!(
            block_on(PgConnection::connect(&uri)).is_ok(),
            "{name}: the migrator's Secret does not match its role"
        );
    }
    let uids: Vec<String> = names
        .iter()
        .map(|name| uid(ns, &format!("mdb/{name}")))
        .collect();
    // No temporary database of these objects survived a crash. (Only theirs: tests running
    // alongside on the same server have temporary databases of their own in flight.)
    let temporaries: Vec<String> = names
        .iter()
        .zip(&uids)
        .map(|(name, object_uid)| {
            temporary_name(&DatabaseNames::new(ns, name, object_uid).database)
        })
        .collect();
    let survivors: Vec<String> = block_on(async {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname = ANY($1)")
            .bind(&temporaries)
            .fetch_all(&mut admin)
            .await
            .unwrap()
    });
    assert_eq!(survivors, Vec::<String>::new());
    // Deleting cleans up everything (reclaimPolicy Delete), with the restarted operator.
    kubectl_ok(&["-n", ns, "delete", "mdb", "--all", WAIT_TIMEOUT], None);
    for object_uid in uids {
        assert_eq!(tagged(&object_uid), (0, 0));
    }
}

/// A plain HTTP/1.0 GET; returns the status code and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn metric(port: u16, name: &str) -> f64 {
    let Some((200, body)) = http_get(port, "/metrics") else {
        return -1.0;
    };
    body.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn of_two_operators_only_the_lease_holder_reconciles_and_a_kill_hands_over() {
    let ns = namespace("leader");
    let ns = ns.name.as_str();
    let (port_a, port_b) = (free_port(), free_port());
    // The leader gives up a Lease it could not renew for two thirds of its duration, as it should;
    // with a short Lease a loaded machine (the other tests run alongside) can stall it that long,
    // and the standby would then rightly reconcile. Fifteen seconds (the default) keeps the first
    // half about the standby never acting while the leader lives; the handover still takes <20 s.
    let flags = |port: u16| {
        vec![
            "--lease-duration-seconds".to_string(),
            "15".to_string(),
            "--metrics-address".to_string(),
            format!("127.0.0.1:{port}"),
        ]
    };
    let flags_a = flags(port_a);
    let flags_a: Vec<&str> = flags_a.iter().map(String::as_str).collect();
    let flags_b = flags(port_b);
    let flags_b: Vec<&str> = flags_b.iter().map(String::as_str).collect();
    let mut a = start_operator_with(ns, API_NS, &format!("operator-{ns}-a"), &flags_a);
    assert!(eventually(PATIENCE, || metric(
        port_a,
        "sfm_operator_leader"
    ) == 1.0));
    let holder_a = jsonpath(ns, "lease/sfm-operator", "{.spec.holderIdentity}");
    assert!(!holder_a.is_empty());
    let b = start_operator_with(ns, API_NS, &format!("operator-{ns}-b"), &flags_b);
    assert!(eventually(PATIENCE, || {
        http_get(port_b, "/readyz").map(|(status, _)| status) == Some(200)
    }));
    assert_eq!(http_get(port_b, "/healthz").map(|(s, _)| s), Some(200));

    apply(&database(ns, "first", "  reclaimPolicy: Delete\n"));
    wait_ready(ns, "first");
    assert!(metric(port_a, "sfm_operator_reconciliations_total") > 0.0);
    assert_eq!(metric(port_b, "sfm_operator_leader"), 0.0);
    assert_eq!(
        metric(port_b, "sfm_operator_reconciliations_total"),
        0.0,
        "the standby reconciled"
    );
    assert!(b.log_text().contains("standing by"), "{}", b.log_text());

    // The leader dies without releasing the Lease: the standby takes over once it expires.
    a.kill();
    assert!(
        eventually(PATIENCE, || metric(port_b, "sfm_operator_leader") == 1.0),
        "the standby did not take over: {}",
        b.log_text()
    );
    let holder_b = jsonpath(ns, "lease/sfm-operator", "{.spec.holderIdentity}");
    assert_ne!(holder_a, holder_b);
    apply(&database(ns, "second", "  reclaimPolicy: Delete\n"));
    wait_ready(ns, "second");
    assert!(metric(port_b, "sfm_operator_reconciliations_total") > 0.0);
    kubectl_ok(&["-n", ns, "delete", "mdb", "--all", WAIT_TIMEOUT], None);
}

/// A restart does not cost PostgreSQL a session per database: each database whose `status.lastPass`
/// matches what it would act on is left alone until its resync is due, so no database gets a new
/// pass. What changes after the start still gets its pass at once.
#[test]
fn a_restarted_operator_passes_nothing_again_until_the_resync_but_repairs_a_change_at_once() {
    let ns = namespace("restart");
    let ns = ns.name.as_str();
    let names: Vec<String> = (0..6).map(|i| format!("org-{i}")).collect();
    let manifests: String = names
        .iter()
        .map(|name| database(ns, name, "  reclaimPolicy: Delete\n"))
        .collect::<Vec<_>>()
        .join("---\n");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let flags = [
        "--lease-duration-seconds",
        "3",
        "--resync-seconds",
        "600",
        "--metrics-address",
        address.as_str(),
    ];
    let mut operator = start_operator_with(ns, API_NS, &format!("operator-{ns}-1"), &flags);
    apply(&manifests);
    for name in &names {
        wait_ready(ns, name);
    }
    let last_pass = |name: &str| jsonpath(ns, &format!("mdb/{name}"), "{.status.lastPass}");
    let before: Vec<String> = names.iter().map(|name| last_pass(name)).collect();
    assert!(
        before.iter().all(|pass| pass.contains("digest")),
        "{before:?}"
    );

    operator.kill();
    let second = start_operator_with(ns, API_NS, &format!("operator-{ns}-2"), &flags);
    let database_passes = r#"sfm_operator_reconciliations_total{controller="database""#;
    assert!(
        eventually(PATIENCE, || metric(port, database_passes)
            >= names.len() as f64),
        "the restarted operator did not look at every database: {}",
        second.log_text()
    );
    let after: Vec<String> = names.iter().map(|name| last_pass(name)).collect();
    assert_eq!(
        after, before,
        "a database got a full pass after the restart"
    );

    // An owned Secret deleted after the start: its database is passed and the Secret made again.
    let secret = jsonpath(
        ns,
        "mdb/org-0",
        "{.status.conditions[?(@.type==\"Ready\")].reason}",
    );
    assert_eq!(secret, "Staging");
    let application = kubectl_ok(
        &[
            "-n",
            ns,
            "get",
            "secret",
            "-l",
            "app.kubernetes.io/component=application-credentials,sfm.nhn.no/database=org-0",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
        None,
    );
    assert!(!application.is_empty());
    kubectl_ok(&["-n", ns, "delete", "secret", &application], None);
    assert!(
        eventually(PATIENCE, || {
            kubectl(&["-n", ns, "get", "secret", &application], None)
                .status
                .success()
        }),
        "the deleted Secret was not made again: {}",
        second.log_text()
    );
    kubectl_ok(&["-n", ns, "delete", "mdb", "--all", WAIT_TIMEOUT], None);
}

/// An operator pass in staging waits for no write in flight. A transaction of the migration API holds
/// `ROW EXCLUSIVE` on the tables it writes until it commits (an ingest, about 30 ms a patient): the
/// operator's passes go on meanwhile. They used to replace the backstop's trigger on every data table
/// each time, which waits for every such transaction and holds up every write after it, so ingests
/// stalled on each pass. A trigger that is missing or disabled is still made again.
#[test]
fn passes_in_staging_wait_for_no_write_in_flight_and_still_repair_the_backstop() {
    let ns = namespace("no-stall");
    let ns = ns.name.as_str();
    let _operator = start_operator_with(
        ns,
        API_NS,
        &format!("operator-{ns}"),
        &["--resync-seconds", "2"],
    );
    apply(&database(ns, "busy", "  reclaimPolicy: Delete\n"));
    wait_ready(ns, "busy");
    // One runtime for the test: a connection lives on the runtime that opened it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut url = url::Url::parse(&admin_url()).unwrap();
    url.set_path(&format!(
        "/{}",
        jsonpath(ns, "mdb/busy", "{.status.database.name}")
    ));
    let last_pass = || jsonpath(ns, "mdb/busy", "{.status.lastPass.at}");
    // Full passes follow each other every 2 s; the status records each one's time.
    let passes_go_on = |within: Duration| {
        let first = last_pass();
        eventually(within, || last_pass() != first) && {
            let second = last_pass();
            eventually(within, || last_pass() != second)
        }
    };
    let triggers = |connection: &mut PgConnection| {
        runtime.block_on(
            sqlx::query_scalar::<_, String>(
                "SELECT string_agg(c.relname || ':' || g.tgenabled::text, ' ' ORDER BY c.relname) FROM pg_trigger g
                 JOIN pg_class c ON c.oid = g.tgrelid WHERE g.tgname = 'refuse_after_validation'",
            )
            .fetch_one(connection),
        )
        .unwrap()
    };

    let mut writer = runtime
        .block_on(PgConnection::connect(url.as_str()))
        .unwrap();
    let made = triggers(&mut writer);
    assert!(
        made.contains("patients:O") && made.contains("documents:O"),
        "{made}"
    );
    runtime.block_on(async {
        sqlx::raw_sql("BEGIN").execute(&mut writer).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('sfm.%I', tablename) FROM pg_tables WHERE schemaname = 'sfm' ORDER BY 1",
        )
        .fetch_all(&mut writer)
        .await
        .unwrap();
        let lock = format!("LOCK TABLE {} IN ROW EXCLUSIVE MODE", tables.join(", "));
        sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
            .execute(&mut writer)
            .await
            .unwrap();
    });
    assert!(
        passes_go_on(Duration::from_secs(60)),
        "no operator pass finished while a write was in flight"
    );
    runtime
        .block_on(sqlx::raw_sql("ROLLBACK").execute(&mut writer))
        .unwrap();

    // The backstop is repaired where it is not as made: dropped on one table, disabled on another.
    runtime
        .block_on(
            sqlx::raw_sql(
                "DROP TRIGGER refuse_after_validation ON sfm.patients;
         ALTER TABLE sfm.treatments DISABLE TRIGGER refuse_after_validation",
            )
            .execute(&mut writer),
        )
        .unwrap();
    assert_ne!(triggers(&mut writer), made);
    assert!(
        eventually(Duration::from_secs(60), || triggers(&mut writer) == made),
        "the backstop was not made again: {}",
        triggers(&mut writer)
    );
    kubectl_ok(&["-n", ns, "delete", "mdb", "--all", WAIT_TIMEOUT], None);
}
