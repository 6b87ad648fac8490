//! Tenant isolation, as two organisations whose names happen to collide meet it: every
//! MigrationDatabase gets children of its own (nothing is shared or adopted on its name), each
//! tenant's data lands in its own database only, a key works for exactly the database it was issued
//! for, and a Secret planted under a name the operator uses is neither adopted nor used.
//!
//! The operators and the migration API run as processes (one operator per tenant namespace, as
//! `--watch-namespace` allows, one API for everybody); the data controllers are `sfm-migrate` runs of
//! exports written by `sfm-export`, all at the same time.

use super::cluster::*;
use super::processes::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

const PATIENTS: usize = 4;

/// A namespace with exactly this name (the collisions need names of their own making), deleted
/// when dropped.
fn namespace(name: &str) -> TestNamespace {
    assert!(name.len() <= 63, "{name}");
    kubectl_ok(&["create", "namespace", name], None);
    TestNamespace {
        name: name.to_owned(),
    }
}

/// A base for namespace names unique to this test run.
fn unique_base(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A valid organisation number (mod 11) from eight digits.
fn organisation_number(seed: u32) -> String {
    const WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];
    let mut base = 90_000_000 + seed * 7919;
    loop {
        let digits: Vec<u32> = format!("{base:08}")
            .chars()
            .map(|c| c.to_digit(10).unwrap())
            .collect();
        let sum: u32 = digits.iter().zip(WEIGHTS).map(|(d, w)| d * w).sum();
        let check = (11 - sum % 11) % 11;
        if check < 10 {
            return format!("{base:08}{check}");
        }
        base += 1;
    }
}

fn database_yaml(ns: &str, name: &str, organisation: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  organisation:\n    name: Kolliderende legekontor (test)\n    organisationNumber: \"{organisation}\"\n    helseIdClientId: collide-sfm\n  dataModelVersion: 4\n  activation:\n    mode: Automatic\n  reclaimPolicy: Delete\n  validation:\n    allowSyntheticIdentities: true\n    schemaCheck: Strict\n"
    )
}

fn key_yaml(ns: &str, key: &str, database: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: {key}\n  namespace: {ns}\nspec:\n  databaseRef: {database}\n  timeToLive: 2h\n"
    )
}

/// Waits until the key is Active and returns it.
fn active_key(ns: &str, key: &str) -> String {
    let mkey = format!("mkey/{key}");
    assert!(
        eventually(PATIENCE, || jsonpath(ns, &mkey, "{.status.phase}")
            == "Active"),
        "{ns}/{key} did not become Active"
    );
    secret_field(ns, &jsonpath(ns, &mkey, "{.status.secretName}"), "key")
}

fn wait_ready(ns: &str, name: &str) {
    kubectl_ok(
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("mdb/{name}"),
            WAIT_TIMEOUT,
        ],
        None,
    );
}

/// One organisation of the test: its MigrationDatabase, key and export.
struct Tenant {
    ns: String,
    name: String,
    organisation: String,
    uid: String,
    /// `status.database.name`: its PostgreSQL database.
    database: String,
    migrator_secret: String,
    key: String,
    export: PathBuf,
    /// The patient ids of the export (read before the client deletes it).
    patients: BTreeSet<String>,
    config: PathBuf,
}

impl Tenant {
    fn label(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

/// The shared key pair: every export is encrypted to it, the API holds its private key.
fn keygen(work: &Path) -> PathBuf {
    let keys = work.join("keys");
    let made = run(
        env!("CARGO_BIN_EXE_sfm-export"),
        &["keygen", "--out", keys.to_str().unwrap()],
        &[],
    );
    assert!(made.status.success(), "{}", text(&made));
    keys
}

/// Applies the database and its key, waits until both are ready, writes the tenant's export.
fn provision(ns: &str, name: &str, seed: u32, keys: &Path, work: &Path) -> Tenant {
    let organisation = organisation_number(seed);
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&database_yaml(ns, name, &organisation)),
    );
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&key_yaml(ns, &format!("key-{seed}"), name)),
    );
    wait_ready(ns, name);
    let mdb = format!("mdb/{name}");
    let key = active_key(ns, &format!("key-{seed}"));
    let export = work.join(format!("export-{seed}"));
    let generated = run(
        env!("CARGO_BIN_EXE_sfm-export"),
        &[
            "generate",
            "--cert",
            keys.join("certificate.pem").to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
            "--organisation-number",
            &organisation,
            "--patients",
            &PATIENTS.to_string(),
            "--users",
            "3",
            "--reports",
            "1",
            "--size-kb",
            "8",
            "--seed",
            &seed.to_string(),
        ],
        &[],
    );
    assert!(generated.status.success(), "{}", text(&generated));
    Tenant {
        ns: ns.to_owned(),
        name: name.to_owned(),
        organisation,
        uid: jsonpath(ns, &mdb, "{.metadata.uid}"),
        database: jsonpath(ns, &mdb, "{.status.database.name}"),
        migrator_secret: jsonpath(ns, &mdb, "{.status.database.migratorSecret}"),
        key,
        patients: exported_patients(&export),
        export,
        config: work.join(format!("config-{seed}")),
    }
}

/// The patient GUIDs an export holds, from its Index.txt.
fn exported_patients(export: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(export.join("Index.txt"))
        .unwrap()
        .lines()
        .filter(|line| line.ends_with(".pat"))
        .map(|line| {
            line.rsplit('\\')
                .next()
                .unwrap()
                .trim_end_matches(".pat")
                .to_lowercase()
        })
        .collect()
}

/// An admin session on one PostgreSQL database of the test server.
async fn admin_on(database: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let mut url = url::Url::parse(&admin_url()).unwrap();
    url.set_path(&format!("/{database}"));
    sqlx::PgConnection::connect(url.as_str()).await.unwrap()
}

/// Organisation numbers and patient ids stored in one database.
async fn stored(database: &str) -> (Vec<String>, BTreeSet<String>) {
    let mut connection = admin_on(database).await;
    let organisations: Vec<String> =
        sqlx::query_scalar("SELECT organisation_number FROM sfm.organisation")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let patients: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT fm_id FROM sfm.patients")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    (
        organisations,
        patients.into_iter().map(|p| p.to_string()).collect(),
    )
}

/// Pairs of MigrationDatabases whose names a naive `<namespace>-<name>` scheme cannot tell apart,
/// four organisations at once (one namespace each, or both of a pair in one namespace): every one
/// gets its own migrator Secret, PostgreSQL database and roles; all migrate at the same time with
/// `sfm-migrate run` to `Operational`; each database then holds exactly its own organisation and
/// patients. Before that, a key of one tenant is refused on the other's upload (HEAD, PATCH and
/// DELETE), which stays as it was.
#[test]
fn tenants_whose_names_collide_each_migrate_into_their_own_database() {
    install_crds();
    let base = unique_base("iso");
    let api_ns = TestNamespace::new("iso-api");
    // `<base>-x` + `clinic` and `<base>` + `x-clinic` spell `<base>-x-clinic` alike; two names in one
    // namespace that are equal once sanitised for PostgreSQL; two long names cut to the same prefix.
    let long_ns = format!("{base}-l{}", "n".repeat(63 - base.len() - 2));
    let namespaces = [
        namespace(&format!("{base}-x")),
        namespace(&base),
        namespace(&format!("{base}-s")),
        namespace(&long_ns),
    ];
    let _operators: Vec<Process> = namespaces
        .iter()
        .map(|ns| start_operator(&ns.name, &api_ns.name, &format!("operator-{}", ns.name)))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path());
    let long_a = format!("{}a", "m".repeat(62));
    let long_b = format!("{}b", "m".repeat(62));
    let plan: [(&str, &str); 6] = [
        (&namespaces[0].name, "clinic"),
        (&namespaces[1].name, "x-clinic"),
        (&namespaces[2].name, "a.b"),
        (&namespaces[2].name, "a-b"),
        (&namespaces[3].name, &long_a),
        (&namespaces[3].name, &long_b),
    ];
    let tenants: Vec<Tenant> = plan
        .iter()
        .enumerate()
        .map(|(i, (ns, name))| provision(ns, name, i as u32 + 1, &keys, work.path()))
        .collect();

    // Every child of its own: no two share a migrator Secret or a PostgreSQL database, and each
    // migrator Secret is labelled for its own database's UID.
    let distinct = |what: &dyn Fn(&Tenant) -> String| {
        tenants.iter().map(what).collect::<BTreeSet<_>>().len() == tenants.len()
    };
    assert!(distinct(&|t| t.migrator_secret.clone()));
    assert!(distinct(&|t| t.database.clone()));
    for tenant in &tenants {
        let (secret_ns, secret) = tenant.migrator_secret.split_once('/').unwrap();
        assert_eq!(secret_ns, api_ns.name);
        assert_eq!(
            jsonpath(
                secret_ns,
                &format!("secret/{secret}"),
                "{.metadata.labels.sfm\\.nhn\\.no/database-uid}"
            ),
            tenant.uid,
            "{}",
            tenant.label()
        );
    }

    let port = free_port();
    let _api = start_api(
        &api_ns.name,
        &keys.join("private_key.pem"),
        port,
        &format!("api-{base}"),
        &[],
    );
    let api_url = format!("http://127.0.0.1:{port}");

    // A key of one tenant on the other's upload: refused, and the upload stays as it was.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        sfm_migration::tls::install_crypto_provider();
        let http = reqwest::Client::new();
        let (first, second) = (&tenants[0], &tenants[1]);
        let organisation_file = std::fs::read(first.export.join("ExportData.dat")).unwrap();
        let created = http
            .post(format!("{api_url}/files"))
            .header("tus-resumable", "1.0.0")
            .header("sfm-migration-key", &first.key)
            .header("upload-length", organisation_file.len().to_string())
            .header(
                "upload-metadata",
                "name RXhwb3J0RGF0YS5kYXQ=,FileType RXhwb3J0RGF0YQ==",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let url = created.headers()["location"].to_str().unwrap().to_owned();
        let url = if url.starts_with('/') {
            format!("{api_url}{url}")
        } else {
            url
        };
        for method in [
            reqwest::Method::HEAD,
            reqwest::Method::PATCH,
            reqwest::Method::DELETE,
        ] {
            let mut request = http
                .request(method.clone(), &url)
                .header("tus-resumable", "1.0.0")
                .header("sfm-migration-key", &second.key);
            if method == reqwest::Method::PATCH {
                request = request
                    .header("content-type", "application/offset+octet-stream")
                    .header("upload-offset", "0")
                    .body(organisation_file.clone());
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                403,
                "{method} with the other tenant's key"
            );
        }
        let head = http
            .head(&url)
            .header("tus-resumable", "1.0.0")
            .header("sfm-migration-key", &first.key)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["upload-offset"], "0");
        // Done with it: an open upload would keep verify waiting.
        let deleted = http
            .delete(&url)
            .header("tus-resumable", "1.0.0")
            .header("sfm-migration-key", &first.key)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
    });

    // Every data controller at the same time.
    let client = env!("CARGO_BIN_EXE_sfm-migrate");
    for tenant in &tenants {
        let config = tenant.config.to_str().unwrap();
        let added = run(
            client,
            &["key", "add", "collide", "--for-api", &api_url],
            &[
                ("SFM_MIGRATE_CONFIG_DIR", config),
                ("SFM_MIGRATION_KEY", tenant.key.as_str()),
            ],
        );
        assert!(added.status.success(), "{}", text(&added));
    }
    let mut runs: Vec<(String, Process)> = tenants
        .iter()
        .map(|tenant| {
            let log = format!("client-{base}-{}", tenant.organisation);
            (
                tenant.label(),
                Process::start(
                    client,
                    &[
                        "run",
                        tenant.export.to_str().unwrap(),
                        "--workers",
                        "4",
                        "--plain",
                        "--timeout-secs",
                        "240",
                    ],
                    &[("SFM_MIGRATE_CONFIG_DIR", tenant.config.to_str().unwrap())],
                    &log,
                ),
            )
        })
        .collect();
    for (label, process) in &mut runs {
        let status = process.child.wait().unwrap();
        assert!(status.success(), "{label}: {}", process.log_text());
    }

    for tenant in &tenants {
        kubectl_ok(
            &[
                "-n",
                &tenant.ns,
                "wait",
                "--for=condition=Operational",
                &format!("mdb/{}", tenant.name),
                WAIT_TIMEOUT,
            ],
            None,
        );
        assert_eq!(
            jsonpath(
                &tenant.ns,
                &format!("mdb/{}", tenant.name),
                "{.status.migration.patients.stored}"
            ),
            PATIENTS.to_string(),
            "{}",
            tenant.label()
        );
    }
    runtime.block_on(async {
        for tenant in &tenants {
            let (organisations, patients) = stored(&tenant.database).await;
            assert_eq!(
                organisations,
                vec![tenant.organisation.clone()],
                "{}",
                tenant.label()
            );
            assert_eq!(patients.len(), PATIENTS, "{}", tenant.label());
            assert_eq!(patients, tenant.patients, "{}", tenant.label());
        }
    });
}

/// A Secret planted under a name the operator uses, without the database's UID label: in the
/// database's namespace (the application Secret) the database goes `Failed` with `NameCollision`
/// and an Event, and the Secret is left exactly as it was. In the migration API's namespace (the
/// migrator's Secret, under its name and under the name of earlier releases) the API does not use
/// it, though it holds working credentials of another tenant's database: nothing reaches that one.
#[test]
fn a_planted_secret_is_neither_adopted_nor_used() {
    install_crds();
    let api_ns = TestNamespace::new("plant-api");
    let ns = TestNamespace::new("plant");
    let mut operator = start_operator(&ns.name, &api_ns.name, &format!("operator-{}", ns.name));
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path());

    // In the database's namespace, before the database exists.
    kubectl_ok(
        &[
            "-n",
            &ns.name,
            "create",
            "secret",
            "generic",
            "squatter-application",
            "--from-literal=password=planted",
        ],
        None,
    );
    let before = jsonpath(
        &ns.name,
        "secret/squatter-application",
        "{.metadata.resourceVersion}",
    );
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&database_yaml(
            &ns.name,
            "squatter",
            &organisation_number(40),
        )),
    );
    assert!(
        eventually(PATIENCE, || jsonpath(
            &ns.name,
            "mdb/squatter",
            "{.status.phase}/{.status.phaseReason}"
        ) == "Failed/NameCollision"),
        "{}",
        jsonpath(&ns.name, "mdb/squatter", "{.status}")
    );
    assert!(
        eventually(PATIENCE, || kubectl_ok(
            &[
                "-n",
                &ns.name,
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=squatter,reason=NameCollision",
                "-o",
                "name"
            ],
            None
        )
        .contains("event")),
        "no NameCollision Event"
    );
    assert_eq!(
        jsonpath(
            &ns.name,
            "secret/squatter-application",
            "{.metadata.resourceVersion}"
        ),
        before,
        "the planted Secret was changed"
    );

    // In the API's namespace: two databases; the first one's migrator Secrets are replaced by
    // unlabelled ones holding the second one's working URI.
    let victim = provision(&ns.name, "victim", 41, &keys, work.path());
    let target = provision(&ns.name, "target", 42, &keys, work.path());
    operator.kill();
    let (secret_ns, victim_secret) = victim.migrator_secret.split_once('/').unwrap();
    let (_, target_secret) = target.migrator_secret.split_once('/').unwrap();
    let target_uri = secret_field(secret_ns, target_secret, "uri");
    kubectl_ok(&["-n", secret_ns, "delete", "secret", victim_secret], None);
    for name in [
        victim_secret.to_owned(),
        format!("sfm-{}-victim-migrator", ns.name),
    ] {
        kubectl_ok(
            &[
                "-n",
                secret_ns,
                "create",
                "secret",
                "generic",
                &name,
                &format!("--from-literal=uri={target_uri}"),
                "--from-literal=password=planted",
            ],
            None,
        );
    }
    let port = free_port();
    let api = start_api(
        &api_ns.name,
        &keys.join("private_key.pem"),
        port,
        &format!("api-plant-{}", ns.name),
        &[],
    );
    let client = env!("CARGO_BIN_EXE_sfm-migrate");
    let config = victim.config.to_str().unwrap();
    let api_url = format!("http://127.0.0.1:{port}");
    let added = run(
        client,
        &["key", "add", "victim", "--for-api", &api_url],
        &[
            ("SFM_MIGRATE_CONFIG_DIR", config),
            ("SFM_MIGRATION_KEY", victim.key.as_str()),
        ],
    );
    assert!(added.status.success(), "{}", text(&added));
    let upload = run(
        client,
        &["upload", victim.export.to_str().unwrap(), "--plain"],
        &[("SFM_MIGRATE_CONFIG_DIR", config)],
    );
    assert!(!upload.status.success(), "{}", text(&upload));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for tenant in [&victim, &target] {
            let mut connection = admin_on(&tenant.database).await;
            let files: i64 = sqlx::query_scalar("SELECT count(*) FROM sfm.stored_files")
                .fetch_one(&mut connection)
                .await
                .unwrap();
            let uploads: i64 = sqlx::query_scalar("SELECT count(*) FROM sfm.uploads")
                .fetch_one(&mut connection)
                .await
                .unwrap();
            assert_eq!((files, uploads), (0, 0), "{}", tenant.label());
        }
    });
    assert!(
        api.log_text()
            .contains("was not made for its database; not used"),
        "{}",
        api.log_text()
    );
}

/// A key is bound to the database it was issued for, not to the name: it survives its database's
/// deletion (phase `Expired`, saying why) and never works for a new database of the same name,
/// which gets keys of its own.
#[test]
fn a_key_of_a_deleted_database_never_opens_its_successor() {
    install_crds();
    let api_ns = TestNamespace::new("rebirth-api");
    let ns = TestNamespace::new("rebirth");
    let _operator = start_operator(&ns.name, &api_ns.name, &format!("operator-{}", ns.name));
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path());
    let first = provision(&ns.name, "clinic", 51, &keys, work.path());

    kubectl_ok(
        &["-n", &ns.name, "delete", "mdb/clinic", WAIT_TIMEOUT],
        None,
    );
    assert!(
        eventually(PATIENCE, || jsonpath(
            &ns.name,
            "mkey/key-51",
            "{.status.phase}"
        ) == "Expired"),
        "the key of the deleted database is {}",
        jsonpath(&ns.name, "mkey/key-51", "{.status.phase}")
    );
    assert!(jsonpath(&ns.name, "mkey/key-51", "{.status.message}").contains("was deleted"));

    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&database_yaml(&ns.name, "clinic", &first.organisation)),
    );
    wait_ready(&ns.name, "clinic");
    let new_uid = jsonpath(&ns.name, "mdb/clinic", "{.metadata.uid}");
    assert_ne!(new_uid, first.uid);
    // The old key stays bound to the old database, and stays Expired.
    assert_eq!(
        jsonpath(&ns.name, "mkey/key-51", "{.status.databaseUid}"),
        first.uid
    );
    std::thread::sleep(std::time::Duration::from_secs(6)); // one resync of the operator (5 s)
    assert_eq!(
        jsonpath(&ns.name, "mkey/key-51", "{.status.phase}"),
        "Expired"
    );

    let port = free_port();
    let _api = start_api(
        &api_ns.name,
        &keys.join("private_key.pem"),
        port,
        &format!("api-rebirth-{}", ns.name),
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        sfm_migration::tls::install_crypto_provider();
        let http = reqwest::Client::new();
        let create = |key: String| {
            http.post(format!("http://127.0.0.1:{port}/files"))
                .header("tus-resumable", "1.0.0")
                .header("sfm-migration-key", key)
                .header("upload-length", "10")
                .header(
                    "upload-metadata",
                    "name RXhwb3J0RGF0YS5kYXQ=,FileType RXhwb3J0RGF0YQ==",
                )
                .send()
        };
        let refused = create(first.key.clone()).await.unwrap();
        assert!(
            matches!(refused.status().as_u16(), 401 | 403),
            "{}",
            refused.status()
        );
        let mut connection =
            admin_on(&jsonpath(&ns.name, "mdb/clinic", "{.status.database.name}")).await;
        let uploads: i64 = sqlx::query_scalar("SELECT count(*) FROM sfm.uploads")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(uploads, 0);

        kubectl_ok(
            &["apply", "-f", "-"],
            Some(&key_yaml(&ns.name, "key-52", "clinic")),
        );
        let fresh = active_key(&ns.name, "key-52");
        assert_eq!(
            jsonpath(&ns.name, "mkey/key-52", "{.status.databaseUid}"),
            new_uid
        );
        assert_eq!(create(fresh).await.unwrap().status(), 201);
    });
}
