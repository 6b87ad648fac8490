//! The whole migration as a data controller runs it, against the real operator and the real migration
//! API on the local control plane and PostgreSQL: `sfm-export` writes an export of a few hundred
//! patients encrypted to a fresh "SFM migrering" certificate; `sfm-migrate` registers the key the
//! operator issued, uploads (and is killed with SIGKILL mid-upload, then run again), uploads a third
//! time sending nothing, verifies and activates; the database becomes `Operational` and the export
//! files are gone, with exact counts in PostgreSQL and in the MigrationDatabase status.

use super::cluster::*;
use super::processes::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sfm_migration::client::ledger::LEDGER_FILE;
use sfm_migration::contract;

/// The export's organisation number (valid mod 11); the MigrationDatabase names the same.
const ORGANISATION_NUMBER: &str = "974600951";
const PATIENTS: usize = 300;
const REPORTS: usize = 2;

/// An export written by `sfm-export` under `work`: a fresh "SFM migrering" certificate in
/// `work/keys`, the export in `work/export`, for [`ORGANISATION_NUMBER`]; `extra` adds arguments.
fn make_export(work: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let keys = work.join("keys");
    let export = work.join("export");
    let exporter = env!("CARGO_BIN_EXE_sfm-export");
    let made = run(exporter, &["keygen", "--out", keys.to_str().unwrap()], &[]);
    assert!(made.status.success(), "{}", text(&made));
    let certificate = keys.join("certificate.pem");
    let mut args = vec![
        "generate",
        "--cert",
        certificate.to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
        "--organisation-number",
        ORGANISATION_NUMBER,
    ];
    args.extend_from_slice(extra);
    let generated = run(exporter, &args, &[]);
    assert!(generated.status.success(), "{}", text(&generated));
    (keys, export)
}

/// The test's migration API (in its own namespace, with the export's decryption key) and its URL.
fn start_flow_api(api_namespace: &str, keys: &Path, ns_name: &str) -> (Process, String) {
    start_flow_api_with(api_namespace, keys, ns_name, &[])
}

/// As [`start_flow_api`], with `extra` flags.
fn start_flow_api_with(
    api_namespace: &str,
    keys: &Path,
    ns_name: &str,
    extra: &[&str],
) -> (Process, String) {
    let port = free_port();
    let api = start_api(
        api_namespace,
        &keys.join("private_key.pem"),
        port,
        &format!("api-flow-{ns_name}"),
        extra,
    );
    (api, format!("http://127.0.0.1:{port}"))
}

/// `sfm-migrate key add` of the operator's key for `api_url`, with the client's config in `config_env`.
fn add_key(client: &str, config_env: (&str, &str), api_url: &str, key: &str) -> Output {
    run(
        client,
        &["key", "add", "flyt", "--for-api", api_url],
        &[config_env, ("SFM_MIGRATION_KEY", key)],
    )
}

fn database_yaml(ns: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: flow\n  namespace: {ns}\nspec:\n  organisation:\n    name: Flyt legekontor (test)\n    organisationNumber: \"{ORGANISATION_NUMBER}\"\n    helseIdClientId: flow-sfm\n  dataModelVersion: 4\n  activation:\n    mode: Automatic\n  reclaimPolicy: Delete\n  validation:\n    allowSyntheticIdentities: true\n    schemaCheck: Strict\n"
    )
}

fn key_yaml(ns: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: flow-key\n  namespace: {ns}\nspec:\n  databaseRef: flow\n  timeToLive: 2h\n"
    )
}

/// Applies the MigrationDatabase `database` and the key "flow-key" in `ns_name`, waits until the
/// database is Ready and the key Active; returns the key.
fn provision(ns_name: &str, database: &str) -> String {
    kubectl_ok(&["apply", "-f", "-"], Some(database));
    kubectl_ok(&["apply", "-f", "-"], Some(&key_yaml(ns_name)));
    kubectl_ok(
        &[
            "-n",
            ns_name,
            "wait",
            "--for=condition=Ready",
            "mdb/flow",
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert!(eventually(PATIENCE, || jsonpath(
        ns_name,
        "mkey/flow-key",
        "{.status.phase}"
    ) == "Active"));
    let secret = jsonpath(ns_name, "mkey/flow-key", "{.status.secretName}");
    secret_field(ns_name, &secret, "key")
}

/// An admission policy (cluster-scoped, for the MigrationDatabases of one namespace) that refuses any
/// status write marking a database `Operational`: the operator's switch then runs to its very last
/// step and fails there, so the database stays `Activating` until [`HoldBeforeOperational::release`].
struct HoldBeforeOperational {
    name: String,
}

impl HoldBeforeOperational {
    const MESSAGE: &str = "held before Operational by the flow test";

    /// Creates the policy and its binding, and returns once the API server enforces them (a dry-run
    /// status write of `Operational` is refused).
    fn new(ns: &str) -> HoldBeforeOperational {
        let name = format!("hold-{ns}");
        kubectl_ok(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: {name}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    - apiGroups: [sfm.nhn.no]\n      apiVersions: [\"*\"]\n      operations: [CREATE, UPDATE]\n      resources: [migrationdatabases/status]\n  validations:\n  - expression: \"!has(object.status) || !has(object.status.phase) || object.status.phase != 'Operational'\"\n    message: {msg}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: {name}\nspec:\n  policyName: {name}\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: {ns}\n",
                msg = Self::MESSAGE
            )),
        );
        let probe = format!(
            r#"{{"apiVersion":"sfm.nhn.no/v1alpha1","kind":"MigrationDatabase","metadata":{{"name":"flow","namespace":"{ns}"}},"status":{{"phase":"Operational"}}}}"#
        );
        assert!(
            eventually(PATIENCE, || {
                let out = kubectl(
                    &[
                        "apply",
                        "--server-side",
                        "--force-conflicts",
                        "--field-manager=sfm-flow-test",
                        "--subresource=status",
                        "--dry-run=server",
                        "-f",
                        "-",
                    ],
                    Some(&probe),
                );
                !out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains(Self::MESSAGE)
            }),
            "the admission policy is not enforced"
        );
        HoldBeforeOperational { name }
    }

    fn release(&self) {
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let _ = kubectl(&["delete", kind, &self.name, "--ignore-not-found"], None);
        }
    }
}

impl Drop for HoldBeforeOperational {
    fn drop(&mut self) {
        self.release();
    }
}

fn ledger_lines(folder: &Path, state: &str) -> usize {
    std::fs::read_to_string(folder.join(LEDGER_FILE))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&format!("\"state\":\"{state}\"")))
        .count()
}

fn count(ns: &str, what: &str) -> u64 {
    jsonpath(ns, "mdb/flow", &format!("{{.status.migration.{what}}}"))
        .parse()
        .unwrap_or(0)
}

#[test]
fn an_export_goes_from_files_to_an_operational_database() {
    install_crds();
    // Its own API namespace: an API process serves every database whose migrator Secret it can
    // read, and another test's API (with another decryption key) must not claim this test's uploads.
    let api_namespace = TestNamespace::new("flow-api");
    let ns = TestNamespace::new("flow");
    let ns_name = ns.name.clone();
    let _operator = start_operator(
        &ns_name,
        &api_namespace.name,
        &format!("operator-{ns_name}"),
    );
    let key = provision(&ns_name, &database_yaml(&ns_name));
    let migrator = jsonpath(&ns_name, "mdb/flow", "{.status.database.migratorSecret}");
    let (api_ns, migrator_name) = migrator.split_once('/').unwrap();
    let migrator_uri = secret_field(api_ns, migrator_name, "uri");

    // The EPJ side: a certificate and an export of a few hundred patients.
    let work = tempfile::tempdir().unwrap();
    let patients = PATIENTS.to_string();
    let reports = REPORTS.to_string();
    let (keys, export) = make_export(
        work.path(),
        &[
            "--patients",
            &patients,
            "--reports",
            &reports,
            "--size-kb",
            "40",
            "--patients-per-folder",
            "128",
            "--seed",
            "2026",
        ],
    );

    // One patient file encrypted to the wrong certificate (of the same size, so `check` cannot
    // tell): the API rejects it, the client says so and why, verify refuses, and the corrected file
    // goes through on the next upload.
    let wrong_name = {
        let index = std::fs::read_to_string(export.join("Index.txt")).unwrap();
        index.lines().nth(7).unwrap().to_owned()
    };
    let wrong_path = export.join(wrong_name.replace('\\', "/"));
    let original = std::fs::read(&wrong_path).unwrap();
    {
        use sfm_migration::format::envelope::{self, DecryptionKeys, RecipientCertificate};
        let right = DecryptionKeys::from_pem_files(&[keys.join("private_key.pem")]).unwrap();
        let other = envelope::generate_demo_key_pair(2048, "not SFM migrering").unwrap();
        let other = RecipientCertificate::from_pem(other.certificate_pem.as_bytes()).unwrap();
        let plain = right.decrypt(&original).unwrap().content;
        let misencrypted = envelope::encrypt(&plain, &other, envelope::DEFAULT_EXTENSION).unwrap();
        std::fs::write(&wrong_path, misencrypted).unwrap();
    }

    let (_api, api_url) = start_flow_api(&api_namespace.name, &keys, &ns_name);

    // The data controller's side.
    let client = env!("CARGO_BIN_EXE_sfm-migrate");
    let config = work.path().join("config");
    let config_env = ("SFM_MIGRATE_CONFIG_DIR", config.to_str().unwrap());
    let added = add_key(client, config_env, &api_url, &key);
    assert!(added.status.success(), "{}", text(&added));
    let listed = run(client, &["key", "list"], &[config_env]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(&key),
        "the secret is never printed"
    );
    let checked = run(
        client,
        &[
            "check",
            export.to_str().unwrap(),
            "--cert",
            keys.join("certificate.pem").to_str().unwrap(),
        ],
        &[config_env],
    );
    assert!(checked.status.success(), "{}", text(&checked));

    // First upload, stopped with Ctrl-C (SIGINT) once some patients are in: it finishes the requests
    // in flight and says how to continue.
    let upload_args = [
        "upload",
        export.to_str().unwrap(),
        "--workers",
        "16",
        "--plain",
    ];
    let mut interrupted = Process::start(
        client,
        &upload_args,
        &[config_env],
        &format!("client-flow-{ns_name}-1"),
    );
    assert!(
        eventually(Duration::from_secs(300), || ledger_lines(&export, "stored")
            >= PATIENTS / 5),
        "the first upload made no progress; its log:\n{}",
        interrupted.log_text()
    );
    let pid = interrupted.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = interrupted.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", interrupted.log_text());
    assert!(
        interrupted
            .log_text()
            .contains("Interrupted: run the same command again"),
        "{}",
        interrupted.log_text()
    );
    let stored_at_interrupt = ledger_lines(&export, "stored");

    // Second upload, killed (SIGKILL, as a crash) after more patients are in.
    let mut killed = Process::start(
        client,
        &upload_args,
        &[config_env],
        &format!("client-flow-{ns_name}-2"),
    );
    assert!(
        eventually(Duration::from_secs(300), || ledger_lines(&export, "stored")
            >= stored_at_interrupt + PATIENTS / 5),
        "the second upload made no progress; its log:\n{}",
        killed.log_text()
    );
    killed.kill();
    let stored_at_kill = ledger_lines(&export, "stored");
    assert!(
        stored_at_kill < PATIENTS + REPORTS + 1,
        "the upload finished before it was killed"
    );

    // Third run: completes exactly what is missing.
    let second = run(
        client,
        &[
            "upload",
            export.to_str().unwrap(),
            "--workers",
            "16",
            "--plain",
        ],
        &[config_env],
    );
    assert!(second.status.success(), "{}", text(&second));
    let total_files = PATIENTS + REPORTS + 1;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let query = |sql: &'static str| {
        runtime.block_on(async {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&migrator_uri).await.unwrap();
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        })
    };
    let second_out = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(
        second_out.contains(&format!("rejected: {wrong_name} (envelope-undecryptable)"))
            && second_out.contains("wrong certificate"),
        "{}",
        text(&second)
    );
    // `upload` may return while the API still ingests a few completed files ("verify waits for
    // them"), so the count is awaited; that it never goes past is asserted by the runs below.
    assert!(
        eventually(PATIENCE, || query("SELECT count(*) FROM sfm.patients")
            == PATIENTS as i64 - 1),
        "{} patients stored",
        query("SELECT count(*) FROM sfm.patients")
    );
    assert!(eventually(PATIENCE, || count(
        &ns_name,
        "patients.rejected"
    ) == 1));
    assert_eq!(count(&ns_name, "users.stored"), 25);

    // Verify refuses while a file is rejected, and says which and why.
    let refused = run(client, &["verify", export.to_str().unwrap()], &[config_env]);
    assert!(!refused.status.success());
    let refused_text = text(&refused);
    assert!(
        refused_text.contains("1 rejected") && refused_text.contains(&wrong_name),
        "{refused_text}"
    );

    // The EPJ supplier delivers the file again, encrypted correctly: exactly that file is sent.
    std::fs::write(&wrong_path, &original).unwrap();
    let fixed = run(
        client,
        &["upload", export.to_str().unwrap(), "--plain"],
        &[config_env],
    );
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(
        String::from_utf8_lossy(&fixed.stdout).contains(&format!(
            "{total_files} files in the export, 1 sent now, {} already sent before",
            total_files - 1
        )),
        "{}",
        text(&fixed)
    );
    assert!(eventually(PATIENCE, || query(
        "SELECT count(*) FROM sfm.patients"
    ) == PATIENTS as i64));
    assert!(eventually(PATIENCE, || count(&ns_name, "patients.stored")
        == PATIENTS as u64));
    assert_eq!(count(&ns_name, "patients.rejected"), 0);

    // Fourth run: nothing is sent twice.
    let received_before = count(&ns_name, "patients.received");
    let third = run(
        client,
        &["upload", export.to_str().unwrap(), "--plain"],
        &[config_env],
    );
    assert!(third.status.success(), "{}", text(&third));
    let third_out = String::from_utf8_lossy(&third.stdout);
    assert!(
        third_out.contains(&format!(
            "{total_files} files in the export, 0 sent now, {total_files} already sent before"
        )),
        "{}",
        text(&third)
    );
    assert_eq!(count(&ns_name, "patients.received"), received_before);
    assert_eq!(query("SELECT count(*) FROM sfm.patients"), PATIENTS as i64);

    // Verify, then activate: the database switches and the export's files are deleted.
    let verified = run(client, &["verify", export.to_str().unwrap()], &[config_env]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(String::from_utf8_lossy(&verified.stdout).contains(&format!("{PATIENTS} patients")));
    std::fs::write(export.join("notes.ledger"), b"the controller's own file").unwrap();

    // The switch, held at its very last step: an admission policy refuses to let the database be
    // marked Operational, so the operator closes the migrator, deletes its Secret and expires the
    // keys, then fails and retries, and the database stays `Activating` for as long as this test
    // needs, whatever the timing. Meanwhile the key reads the status and the key check (from the
    // MigrationDatabase, since the migrator is closed), every write is refused as the end of the
    // migration, and `sfm-migrate activate` keeps waiting.
    let hold = HoldBeforeOperational::new(&ns_name);
    let mut activating = Process::start(
        client,
        &[
            "activate",
            export.to_str().unwrap(),
            "--timeout-secs",
            "900",
        ],
        &[config_env],
        &format!("client-flow-{ns_name}-activate"),
    );
    assert!(
        eventually(PATIENCE, || {
            jsonpath(&ns_name, "mdb/flow", "{.status.phase}") == "Activating"
                && jsonpath(&ns_name, "mkey/flow-key", "{.status.phase}") == "Expired"
                && !kubectl(&["-n", api_ns, "get", "secret", migrator_name], None)
                    .status
                    .success()
        }),
        "the switch did not reach its last step; the client's log:\n{}",
        activating.log_text()
    );
    // The operator tried to finish and failed at least once; the phase it wrote with the failure is
    // still Activating.
    assert!(eventually(PATIENCE, || jsonpath(
        &ns_name,
        "mdb/flow",
        "{.status.conditions[?(@.type==\"Ready\")].reason}"
    ) == "KubernetesApiError"));
    assert_eq!(
        jsonpath(&ns_name, "mdb/flow", "{.status.phase}"),
        "Activating"
    );
    runtime.block_on(async {
        use sqlx::Connection;
        assert!(
            sqlx::PgConnection::connect(&migrator_uri).await.is_err(),
            "the migrator can still log in while Activating"
        );
    });
    let during = run(client, &["status"], &[config_env]);
    let during_text = text(&during);
    assert!(during.status.success(), "{during_text}");
    assert!(during_text.contains("flow: Activating"), "{during_text}");
    assert!(
        during_text.contains(&format!("stored {PATIENTS}")),
        "{during_text}"
    );
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let status = http
            .get(format!("{api_url}{}", contract::PATH_STATUS))
            .header(contract::HEADER_MIGRATION_KEY, &key)
            .send()
            .await
            .unwrap();
        assert_eq!(status.status(), 200);
        let status: contract::MigrationStatus = status.json().await.unwrap();
        assert_eq!(status.phase, contract::MigrationPhase::Activating);
        assert_eq!(status.patients.stored, PATIENTS as u64);
        let check = http
            .post(format!("{api_url}{}", contract::PATH_KEY_CHECK))
            .header(contract::HEADER_MIGRATION_KEY, &key)
            .send()
            .await
            .unwrap();
        assert_eq!(check.status(), 200);
        let check: contract::KeyCheckResponse = check.json().await.unwrap();
        assert_eq!(check.phase, contract::MigrationPhase::Activating);
        assert!(check.organisation_stored);
        // Writes: an upload, a verify and another activate are the end of the migration.
        let upload = http
            .post(format!("{api_url}{}", contract::PATH_FILES))
            .header(contract::HEADER_TUS_RESUMABLE, contract::TUS_VERSION)
            .header(contract::HEADER_UPLOAD_LENGTH, "10")
            .header(
                contract::HEADER_UPLOAD_METADATA,
                contract::encode_upload_metadata(&[
                    ("name", "Patients0\\late.pat"),
                    ("FileType", "Patient"),
                ]),
            )
            .header(contract::HEADER_MIGRATION_KEY, &key);
        let verify = http
            .post(format!("{api_url}{}", contract::PATH_VERIFY))
            .header(contract::HEADER_MIGRATION_KEY, &key)
            .json(&serde_json::json!({"manifestVersion": 1, "files": []}));
        let activate = http
            .post(format!("{api_url}{}", contract::PATH_ACTIVATE))
            .header(contract::HEADER_MIGRATION_KEY, &key);
        for (what, request) in [
            ("upload", upload),
            ("verify", verify),
            ("activate", activate),
        ] {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(status, 409, "{what}: {body}");
            let problem: contract::Problem = serde_json::from_str(&body).unwrap();
            assert_eq!(
                problem.code,
                contract::ProblemCode::MigrationOperational,
                "{what}: {body}"
            );
        }
    });
    // The waiting client (it asks every 2 s) has seen Activating, and waits on.
    assert!(
        eventually(PATIENCE, || activating
            .log_text()
            .contains("phase: Activating")),
        "{}",
        activating.log_text()
    );
    assert!(
        activating.child.try_wait().unwrap().is_none(),
        "sfm-migrate activate stopped while the database was Activating:\n{}",
        activating.log_text()
    );

    // Released: the operator's next pass (woken at once, not after its backoff) finishes the switch
    // and the waiting client sees Operational and deletes the export.
    hold.release();
    kubectl_ok(
        &[
            "-n",
            &ns_name,
            "annotate",
            "--overwrite",
            "mdb/flow",
            "sfm.nhn.no/test-nudge=released",
        ],
        None,
    );
    assert!(
        eventually(PATIENCE, || activating.child.try_wait().unwrap().is_some()),
        "sfm-migrate activate did not finish after the switch:\n{}",
        activating.log_text()
    );
    let activated = activating.child.wait().unwrap();
    assert!(activated.success(), "{}", activating.log_text());
    assert!(
        activating
            .log_text()
            .contains("The database is operational: the migration is complete."),
        "{}",
        activating.log_text()
    );
    kubectl_ok(
        &[
            "-n",
            &ns_name,
            "wait",
            "--for=condition=Operational",
            "mdb/flow",
            WAIT_TIMEOUT,
        ],
        None,
    );
    let mut left: Vec<String> = std::fs::read_dir(&export)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec!["notes.ledger".to_owned(), LEDGER_FILE.to_owned()],
        "exactly the export's files were deleted"
    );

    // After the switch the key is expired and the migrator closed, yet the wire contract lets the key
    // read the status (from the MigrationDatabase), so the client sees the end.
    let late = run(client, &["status"], &[config_env]);
    let late_text = text(&late);
    assert!(late.status.success(), "{late_text}");
    assert!(late_text.contains("Operational"), "{late_text}");
    assert!(late_text.contains(&PATIENTS.to_string()), "{late_text}");
    // Uploads stay refused.
    let refused = run(
        client,
        &["upload", export.to_str().unwrap(), "--plain"],
        &[config_env],
    );
    assert!(!refused.status.success(), "{}", text(&refused));
}

/// A database that requires HelseID: without a login the client stops at the key check with one
/// sentence; after `sfm-migrate login --dpop` against the project's local HelseID-like issuer, `run`
/// takes the export to `Operational`, every request carrying the DPoP-bound token and a fresh proof.
#[test]
fn a_helseid_protected_database_takes_a_dpop_login() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey};
    use sfm_migration::helseid::issuer::{Issuer, IssuerConfig, RegisteredClient, router};

    const SCOPE: &str = "nhn:sfm-migration/upload";
    const AUDIENCE: &str = "nhn:sfm-migration";
    const SMALL: usize = 24;
    sfm_migration::tls::install_crypto_provider();
    install_crds();
    let api_namespace = TestNamespace::new("flow-helseid-api");
    let ns = TestNamespace::new("flow-helseid");
    let ns_name = ns.name.clone();
    let _operator = start_operator(
        &ns_name,
        &api_namespace.name,
        &format!("operator-{ns_name}"),
    );

    // The issuer, with the data controller's client registered (RSA key, kid).
    let work = tempfile::tempdir().unwrap();
    let client_key =
        sfm_migration::format::envelope::generate_demo_key_pair(2048, "flow-sfm").unwrap();
    let client_key_file = work.path().join("helseid-client.pem");
    std::fs::write(&client_key_file, &client_key.private_key_pem).unwrap();
    let mut jwk = Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(client_key.private_key_pem.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    jwk.common.key_id = Some("flow-key-1".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let issuer_url = format!("http://{}", listener.local_addr().unwrap());
    let issuer = Issuer::new(IssuerConfig {
        issuer_url: issuer_url.clone(),
        audience: AUDIENCE.into(),
        clients: vec![RegisteredClient {
            client_id: "flow-sfm".into(),
            jwks: JwkSet { keys: vec![jwk] },
            organisation_number: ORGANISATION_NUMBER.into(),
            child_organisation_number: None,
            scopes: vec![SCOPE.into()],
        }],
        token_lifetime: Duration::from_secs(900),
    })
    .unwrap();
    let app = router(issuer);
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let database = database_yaml(&ns_name).replace(
        "    schemaCheck: Strict\n",
        &format!(
            "    schemaCheck: Strict\n    helseId:\n      issuer: {issuer_url}\n      audience: {AUDIENCE}\n      requiredScope: {SCOPE}\n"
        ),
    );
    let key = provision(&ns_name, &database);

    let small = SMALL.to_string();
    let (keys, export) = make_export(work.path(), &["--patients", &small, "--size-kb", "20"]);
    let (_api, api_url) = start_flow_api_with(
        &api_namespace.name,
        &keys,
        &ns_name,
        &["--trusted-issuer", &issuer_url, "--allow-http-issuers"],
    );

    let client = env!("CARGO_BIN_EXE_sfm-migrate");
    let config = work.path().join("config");
    let config_env = ("SFM_MIGRATE_CONFIG_DIR", config.to_str().unwrap());
    let added = add_key(client, config_env, &api_url, &key);
    assert!(added.status.success(), "{}", text(&added));

    // Without a login: one sentence, nothing sent.
    let refused = run(
        client,
        &["upload", export.to_str().unwrap(), "--plain"],
        &[config_env],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("This database requires a HelseID login"),
        "{}",
        text(&refused)
    );
    assert_eq!(ledger_lines(&export, "stored"), 0);

    // Log in with a DPoP-bound token, then the whole migration in one go.
    let login = run(
        client,
        &[
            "login",
            "--issuer",
            &issuer_url,
            "--client-id",
            "flow-sfm",
            "--key-file",
            client_key_file.to_str().unwrap(),
            "--kid",
            "flow-key-1",
            "--scope",
            SCOPE,
            "--dpop",
        ],
        &[config_env],
    );
    assert!(login.status.success(), "{}", text(&login));
    assert!(String::from_utf8_lossy(&login.stdout).contains("DPoP token"));
    let migrated = run(
        client,
        &[
            "run",
            export.to_str().unwrap(),
            "--workers",
            "8",
            "--plain",
            "--timeout-secs",
            "180",
        ],
        &[config_env],
    );
    assert!(migrated.status.success(), "{}", text(&migrated));
    assert_eq!(count(&ns_name, "patients.stored"), SMALL as u64);
    kubectl_ok(
        &[
            "-n",
            &ns_name,
            "wait",
            "--for=condition=Operational",
            "mdb/flow",
            WAIT_TIMEOUT,
        ],
        None,
    );
    assert!(!export.join("ExportData.dat").exists());
    assert!(!export.join("Index.txt").exists());
    drop(runtime);
}
