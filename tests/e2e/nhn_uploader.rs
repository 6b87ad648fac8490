//! NHN's own uploader against the migration API, unchanged: `tests/fixtures/nhn_uploader/
//! sfm_importer.py` is written from `../shared/sfm-format/nhn-uploader.md` alone (case-sensitive
//! response headers, 512 KiB PATCHes with sha1 checksums, keep-alive off, the four metadata keys with
//! NHN's `FileType` names and one session GUID, the organisation file first and alone, then the rest
//! in folder-scan order by 5 workers, DPoP PS256 proofs without nonce at `/v2/files`, Bearer at
//! `/files`, a `.ledger` to resume from). With tokens of the local HelseID-like issuer and no
//! migration key, it fills databases that opted in to uploads without a key; killed mid-file and
//! started again, it resumes by HEAD and PATCH and every file is stored once. Tokens of another
//! organisation, of an issuer the API does not trust, for a database that did not opt in and for an
//! organisation with two such databases are refused and store nothing. The migration ends
//! `Operational` through the documented finishing step: `sfm-migrate verify --against-index` with a
//! HelseID login, `activate`, and an NHN operator approving the digest (`activation.mode: Manual`).

use super::cluster::*;
use super::processes::*;
use crate::samples::*;
use sqlx::Connection as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sfm_migration::contract;
use sfm_migration::format::envelope::{self, RecipientCertificate};
use sfm_migration::helseid::issuer::{Issuer, IssuerConfig, RegisteredClient};

/// The organisation of the `sfm-export` export.
const ORGANISATION: &str = "974600951";
/// An organisation with a database that did not opt in.
const NOT_OPTED_IN: &str = "910000004";
/// An organisation with two databases that opted in.
const TWINS: &str = "920000002";
/// An organisation without any database.
const NO_DATABASE: &str = "930000000";
const AUDIENCE: &str = "nhn:sfm-migration";
const SCOPE: &str = "nhn:sfm-migration/upload";
/// The EPJ's export client: the one that may upload (not the one that gets access once operational).
const EXPORT_CLIENT: &str = "epj-export";
const PATIENTS: usize = 16;

fn database_yaml(ns: &str, name: &str, organisation: &str, issuer: &str, extra: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  organisation:\n    name: Opplaster legekontor (test)\n    organisationNumber: \"{organisation}\"\n    helseIdClientId: sfm-app\n  dataModelVersion: 4\n  reclaimPolicy: Delete\n  validation:\n    allowSyntheticIdentities: true\n    schemaCheck: Strict\n    helseId:\n      issuer: {issuer}\n      audience: {AUDIENCE}\n      requiredScope: {SCOPE}\n{extra}"
    )
}

/// What a database that accepts NHN's uploader adds to its spec.
fn opted_in(client: &str, allow_bearer: bool) -> String {
    format!(
        "  activation:\n    mode: Manual\n  helseIdUploads:\n    clientId: {client}\n    allowBearer: {allow_bearer}\n"
    )
}

/// The migrator's URI of a Ready database (for the test's own look into it).
fn migrator_uri(ns: &str, name: &str) -> String {
    let migrator = jsonpath(
        ns,
        &format!("mdb/{name}"),
        "{.status.database.migratorSecret}",
    );
    let (api_ns, secret) = migrator.split_once('/').unwrap();
    secret_field(api_ns, secret, "uri")
}

fn query_i64(runtime: &tokio::runtime::Runtime, uri: &str, sql: &str) -> i64 {
    runtime.block_on(async {
        let mut connection = sqlx::PgConnection::connect(uri).await.unwrap();
        // The test's own constant queries (and a GUID it generated).
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut connection)
            .await
            .unwrap()
    })
}

/// A local HelseID-like issuer on its own port, in `runtime`.
fn start_issuer(runtime: &tokio::runtime::Runtime) -> (std::sync::Arc<Issuer>, String) {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let issuer = Issuer::new(IssuerConfig {
        issuer_url: url.clone(),
        audience: AUDIENCE.into(),
        clients: Vec::new(),
        token_lifetime: Duration::from_secs(1800),
    })
    .unwrap();
    let app = sfm_migration::helseid::issuer::router(issuer.clone());
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (issuer, url)
}

/// An access token as HelseID issues it to `client` of `organisation`, DPoP-bound when `jkt` is given.
fn token(issuer: &Issuer, client: &str, organisation: &str, jkt: Option<&str>) -> String {
    let registered = RegisteredClient {
        client_id: client.into(),
        jwks: jsonwebtoken::jwk::JwkSet { keys: Vec::new() },
        organisation_number: organisation.into(),
        child_organisation_number: None,
        scopes: vec![SCOPE.into()],
    };
    issuer.sign(&issuer.claims_for(&registered, &[SCOPE.into()], jkt))
}

fn importer() -> String {
    repo_path("tests/fixtures/nhn_uploader/sfm_importer.py")
}

/// Runs the uploader stand-in as its command line does: `<Bearer|DPoP> <token>`.
fn run_importer(
    token_type: &str,
    token: &str,
    settings: &Path,
    folder: &Path,
    extra: &[&str],
) -> Output {
    Command::new("python3")
        .arg(importer())
        .args([token_type, token, "--settings"])
        .arg(settings)
        .arg("--folder")
        .arg(folder)
        .args(extra)
        .output()
        .unwrap()
}

/// NHN's sample organisation and patient as an export folder, in the envelope.
fn sample_export(work: &Path, recipient: &RecipientCertificate) -> PathBuf {
    let folder = work.join("nhn-samples");
    std::fs::create_dir_all(folder.join("Patients0")).unwrap();
    let encrypt =
        |plain: &[u8]| envelope::encrypt(plain, recipient, envelope::DEFAULT_EXTENSION).unwrap();
    std::fs::write(folder.join("ExportData.dat"), encrypt(&organisation_zip())).unwrap();
    std::fs::write(
        folder.join("Patients0").join(format!("{PATIENT_GUID}.pat")),
        encrypt(&patient_zip()),
    )
    .unwrap();
    std::fs::write(
        folder.join("Index.txt"),
        format!("Patients0\\{PATIENT_GUID}.pat\r\n"),
    )
    .unwrap();
    folder
}

fn settings(work: &Path, name: &str, api: &str) -> PathBuf {
    let path = work.join(name);
    std::fs::write(
        &path,
        serde_json::json!({
            "UploadAPI": format!("{api}/files"),
            "UploadV2API": format!("{api}/v2/files"),
            "UploadThreads": 5,
        })
        .to_string(),
    )
    .unwrap();
    path
}

/// A creation request exactly as the uploader makes it, with `authorization`; the problem code.
fn refused_creation(
    runtime: &tokio::runtime::Runtime,
    api: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    runtime.block_on(async {
        let metadata = contract::encode_upload_metadata(&[
            ("name", "ExportData.dat"),
            ("contentType", "application/octet-stream"),
            ("FileType", "OrganizationFile"),
            ("SessionId", "6c1d6f8e-2d9a-4d1e-9a57-2b1f3c4d5e6f"),
        ]);
        let mut request = reqwest::Client::new()
            .post(format!("{api}/files"))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "10")
            .header("Content-Length", "0")
            .header("Upload-Metadata", metadata);
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        (status, body["code"].as_str().unwrap_or_default().to_owned())
    })
}

#[test]
fn nhn_uploader_fills_a_database_on_its_helseid_token_and_the_migration_ends_operational() {
    sfm_migration::tls::install_crypto_provider();
    install_crds();
    let api_namespace = TestNamespace::new("nhn-uploader-api");
    let ns = TestNamespace::new("nhn-uploader");
    let ns_name = ns.name.clone();
    let _operator = start_operator(
        &ns_name,
        &api_namespace.name,
        &format!("operator-{ns_name}"),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (issuer, issuer_url) = start_issuer(&runtime);
    let (untrusted, _) = start_issuer(&runtime);

    // The databases: the export's (DPoP and Bearer), NHN's sample organisation's (Bearer, Lenient:
    // the 2021 sample departs from the XSD), one that did not opt in, and two of one organisation.
    let databases = [
        (
            "mine",
            database_yaml(
                &ns_name,
                "mine",
                ORGANISATION,
                &issuer_url,
                &opted_in(EXPORT_CLIENT, true),
            ),
        ),
        (
            "nhn-sample",
            database_yaml(
                &ns_name,
                "nhn-sample",
                SAMPLE_ORGANISATION_NUMBER,
                &issuer_url,
                &opted_in(EXPORT_CLIENT, true),
            )
            .replace("schemaCheck: Strict", "schemaCheck: Lenient")
            .replace(
                "allowSyntheticIdentities: true",
                "allowSyntheticIdentities: false",
            ),
        ),
        (
            "plain",
            database_yaml(&ns_name, "plain", NOT_OPTED_IN, &issuer_url, ""),
        ),
        (
            "twin-a",
            database_yaml(
                &ns_name,
                "twin-a",
                TWINS,
                &issuer_url,
                &opted_in(EXPORT_CLIENT, true),
            ),
        ),
        (
            "twin-b",
            database_yaml(
                &ns_name,
                "twin-b",
                TWINS,
                &issuer_url,
                &opted_in(EXPORT_CLIENT, true),
            ),
        ),
    ];
    for (_, yaml) in &databases {
        kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    }
    for (name, _) in &databases {
        kubectl_ok(
            &[
                "-n",
                &ns_name,
                "wait",
                "--for=condition=Ready",
                &format!("mdb/{name}"),
                WAIT_TIMEOUT,
            ],
            None,
        );
    }
    let uris: Vec<(&str, String)> = databases
        .iter()
        .map(|(name, _)| (*name, migrator_uri(&ns_name, name)))
        .collect();

    // The export: sfm-export's, with patients big enough to take several PATCHes, and a stray file
    // outside the export's folders (the uploader sends it as `Unknown`).
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let export = work.path().join("export");
    let exporter = env!("CARGO_BIN_EXE_sfm-export");
    let made = run(exporter, &["keygen", "--out", keys.to_str().unwrap()], &[]);
    assert!(made.status.success(), "{}", text(&made));
    let patients = PATIENTS.to_string();
    let generated = run(
        exporter,
        &[
            "generate",
            "--cert",
            keys.join("certificate.pem").to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
            "--organisation-number",
            ORGANISATION,
            "--patients",
            &patients,
            "--reports",
            "2",
            "--size-kb",
            "2400",
            "--spread",
            "0.95",
        ],
        &[],
    );
    assert!(generated.status.success(), "{}", text(&generated));
    let biggest = std::fs::read_dir(export.join("Patients0"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(
        biggest > 524_288,
        "a patient of {biggest} bytes takes one PATCH only"
    );
    std::fs::create_dir_all(export.join("Backup")).unwrap();
    std::fs::write(
        export.join("Backup").join("old.dat"),
        b"not part of the export",
    )
    .unwrap();
    // A zero-length file: created and completed by its POST alone.
    std::fs::write(export.join("Backup").join("empty.dat"), b"").unwrap();
    let recipient = RecipientCertificate::from_pem(
        std::fs::read_to_string(keys.join("certificate.pem"))
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let samples = sample_export(work.path(), &recipient);

    // Two replicas behind one public URL (as behind the chart's Service): DPoP proofs name it.
    let port = free_port();
    let api_url = format!("http://127.0.0.1:{port}");
    let replica_args = [
        "--trusted-issuer",
        &issuer_url,
        "--allow-http-issuers",
        "--public-url",
        &api_url,
        "--ingest-wait-seconds",
        "30",
    ];
    let _api = start_api(
        &api_namespace.name,
        &keys.join("private_key.pem"),
        port,
        &format!("api-{ns_name}"),
        &replica_args,
    );
    let other_port = free_port();
    let _other_replica = start_api(
        &api_namespace.name,
        &keys.join("private_key.pem"),
        other_port,
        &format!("api-b-{ns_name}"),
        &replica_args,
    );

    // Refused, each with its reason, and nothing stored anywhere.
    let bearer = |token: String| format!("Bearer {token}");
    for (authorization, expected) in [
        (None, (401, "key-missing")),
        (
            Some(bearer(token(&issuer, EXPORT_CLIENT, NO_DATABASE, None))),
            (401, "uploader-no-database"),
        ),
        (
            Some(bearer(token(&untrusted, EXPORT_CLIENT, ORGANISATION, None))),
            (401, "token-invalid"),
        ),
        (
            Some(bearer(token(&issuer, EXPORT_CLIENT, NOT_OPTED_IN, None))),
            (401, "uploader-no-database"),
        ),
        (
            Some(bearer(token(&issuer, EXPORT_CLIENT, TWINS, None))),
            (409, "uploader-ambiguous"),
        ),
        (
            Some(bearer(token(&issuer, "another-client", ORGANISATION, None))),
            (401, "uploader-no-database"),
        ),
    ] {
        let (status, code) = refused_creation(&runtime, &api_url, authorization.as_deref());
        assert_eq!((status, code.as_str()), expected, "{authorization:?}");
    }
    for (name, uri) in &uris {
        assert_eq!(
            query_i64(&runtime, uri, "SELECT count(*) FROM sfm.uploads"),
            0,
            "{name}"
        );
    }

    // DPoP at /v2/files: a key in the uploader's settings, a token bound to it.
    let dpop_settings = settings(work.path(), "dpop.json", &api_url);
    let keygen = Command::new("python3")
        .args([
            importer().as_str(),
            "keygen",
            dpop_settings.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", text(&keygen));
    let public: jsonwebtoken::jwk::Jwk = serde_json::from_slice(&keygen.stdout).unwrap();
    let jkt = sfm_migration::helseid::verify::thumbprint(&public).unwrap();
    let dpop_token = token(&issuer, EXPORT_CLIENT, ORGANISATION, Some(&jkt));

    // Killed in the middle of a file, then started again: it resumes from its ledger.
    let killed = run_importer(
        "DPoP",
        &dpop_token,
        &dpop_settings,
        &export,
        &["--die-mid-file"],
    );
    assert_eq!(killed.status.code(), Some(137), "{}", text(&killed));
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export.join(".ledger")).unwrap()).unwrap();
    let ongoing: Vec<&serde_json::Value> = ledger["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "ongoing")
        .collect();
    assert!(!ongoing.is_empty(), "{ledger}");
    assert!(ongoing.iter().all(|f| {
        f["uploadUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{api_url}/v2/files/"))
    }));
    let resumed = run_importer("DPoP", &dpop_token, &dpop_settings, &export, &[]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        stdout.contains(&format!(
            "Sentral forskrivningsmodul - {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );

    // NHN's sample files, Bearer at /files, into its own organisation's database.
    let bearer_settings = settings(work.path(), "bearer.json", &api_url);
    let sample_token = token(&issuer, EXPORT_CLIENT, SAMPLE_ORGANISATION_NUMBER, None);
    let sampled = run_importer("Bearer", &sample_token, &bearer_settings, &samples, &[]);
    assert!(sampled.status.success(), "{}", text(&sampled));

    // A DPoP proof used at one replica is refused at the other: the replicas share what they saw
    // through PostgreSQL. (A zero-length `Unknown` file: accepted, recorded, never stored.)
    let proof = Command::new("python3")
        .args([
            importer().as_str(),
            "proof",
            dpop_settings.to_str().unwrap(),
            "POST",
        ])
        .arg(format!("{api_url}/v2/files"))
        .arg(&dpop_token)
        .output()
        .unwrap();
    assert!(proof.status.success(), "{}", text(&proof));
    let proof = String::from_utf8(proof.stdout).unwrap().trim().to_owned();
    let with_proof = |base: String| {
        let (proof, dpop_token) = (proof.clone(), dpop_token.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v2/files"))
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", "0")
                .header("Authorization", format!("DPoP {dpop_token}"))
                .header("DPoP", proof)
                .header(
                    "Upload-Metadata",
                    contract::encode_upload_metadata(&[
                        ("name", "probe.dat"),
                        ("FileType", "Unknown"),
                    ]),
                )
                .send()
                .await
                .unwrap()
        }
    };
    let first = runtime.block_on(with_proof(api_url.clone()));
    assert_eq!(first.status().as_u16(), 201);
    let replayed = runtime.block_on(with_proof(format!("http://127.0.0.1:{other_port}")));
    assert_eq!(replayed.status().as_u16(), 401);
    let challenge = replayed.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");

    // Every file stored once, with the uploader's session in the audit trail.
    let mine = &uris[0].1;
    let session_id = ledger["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            "SELECT count(*) FROM sfm.stored_files WHERE kind = 'patient'"
        ),
        PATIENTS as i64
    );
    assert_eq!(
        query_i64(&runtime, mine, "SELECT count(*) FROM sfm.patients"),
        PATIENTS as i64
    );
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            "SELECT count(*) FROM sfm.stored_files WHERE kind = 'report'"
        ),
        2
    );
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            "SELECT count(*) FROM (SELECT file_name FROM sfm.uploads WHERE state = 'ingested' GROUP BY file_name HAVING count(*) > 1) twice"
        ),
        0,
        "a file was stored by two uploads"
    );
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            &format!(
                "SELECT count(*) FROM sfm.stored_files s JOIN sfm.uploads u ON u.id = s.upload_id WHERE u.metadata->>'uploadSession' = '{session_id}' AND s.migration_key_id = '' AND s.helseid_client_id = '{EXPORT_CLIENT}'"
            )
        ),
        (PATIENTS + 3) as i64,
        "every stored file names the uploader's session and HelseID client"
    );
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            // Distinct names: a file whose creation was in flight when the uploader was killed is
            // created again by the next run (the ledger never learnt its URL).
            "SELECT count(DISTINCT file_name) FROM sfm.rejections WHERE reason_code = 'file_type_unknown'"
        ),
        3
    );
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            "SELECT count(DISTINCT file_name) FROM sfm.uploads WHERE declared_length = 0 AND state = 'rejected'"
        ),
        2,
        "the zero-length files were completed by their POST"
    );
    let sample_uri = &uris[1].1;
    assert_eq!(
        query_i64(&runtime, sample_uri, "SELECT count(*) FROM sfm.patients"),
        1
    );
    assert_eq!(
        query_i64(&runtime, sample_uri, "SELECT count(*) FROM sfm.users"),
        7
    );
    for (name, uri) in &uris[2..] {
        assert_eq!(
            query_i64(&runtime, uri, "SELECT count(*) FROM sfm.uploads"),
            0,
            "{name}"
        );
    }
    let status = |path: &str| jsonpath(&ns_name, "mdb/mine", path);
    assert!(eventually(PATIENCE, || status(
        "{.status.migration.patients.stored}"
    ) == PATIENTS.to_string()));
    assert!(
        eventually(PATIENCE, || !status("{.status.migration.stored.digest}")
            .is_empty()),
        "the API's manifest of what it stored appears once nothing is open"
    );
    assert_eq!(
        status("{.status.migration.stored.files}"),
        (PATIENTS + 3).to_string()
    );
    let stored_digest = status("{.status.migration.stored.digest}");

    // The finishing step: the data controller logs in (the uploader's token would do) and verifies
    // the export against its Index.txt; the digest is the API's own manifest's.
    let client = env!("CARGO_BIN_EXE_sfm-migrate");
    let config = work.path().join("config");
    let env = [
        ("SFM_MIGRATE_CONFIG_DIR", config.to_str().unwrap()),
        ("SFM_MIGRATE_API", api_url.as_str()),
    ];
    let verifier_token = token(&issuer, EXPORT_CLIENT, ORGANISATION, None);
    // The stray files the uploader sent as `Unknown` are no part of the export: `sfm-migrate check`
    // names them, and the data controller takes them away.
    std::fs::remove_dir_all(export.join("Backup")).unwrap();
    // An uploader killed between a creation and writing its URL down leaves an upload nobody will
    // finish: one made here by hand for a file that is stored. The validation deletes it.
    let stored_name = std::fs::read_dir(export.join("Patients0"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let leftover = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{api_url}/files"))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "1000")
            .header("Authorization", format!("Bearer {verifier_token}"))
            .header(
                "Upload-Metadata",
                contract::encode_upload_metadata(&[
                    ("name", &stored_name),
                    ("FileType", "PatientFile"),
                ]),
            )
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(leftover, 201);
    let login = run(
        client,
        &[
            "login",
            "--token",
            &verifier_token,
            "--token-type",
            "Bearer",
        ],
        &env,
    );
    assert!(login.status.success(), "{}", text(&login));
    let verified = run(
        client,
        &["verify", export.to_str().unwrap(), "--against-index"],
        &env,
    );
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains(&format!("Digest to approve: {stored_digest}")),
        "{}",
        text(&verified)
    );
    assert!(eventually(PATIENCE, || status(
        "{.status.migration.validatedDigest}"
    ) == stored_digest));
    assert_eq!(
        query_i64(
            &runtime,
            mine,
            "SELECT count(*) FROM sfm.uploads WHERE state IN ('created', 'receiving')"
        ),
        0,
        "the leftover upload went with the validation"
    );

    // Activation waits for the NHN operator's approval of exactly that digest.
    let activate = Command::new(client)
        .args([
            "activate",
            export.to_str().unwrap(),
            "--keep",
            "--timeout-secs",
            "240",
        ])
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(PATIENCE, || !status(
        "{.status.migration.activationRequestedAt}"
    )
    .is_empty()));
    // The operator's pass after the request writes the phase (the request is in the status
    // before that pass ends); nothing moves it past `Validated` before the approval below.
    let waiting = || status("{.status.phase}/{.status.phaseReason}");
    assert!(
        eventually(PATIENCE, || waiting() == "Validated/AwaitingManualApproval"),
        "no Operational before the approval: {}",
        waiting()
    );
    kubectl_ok(
        &[
            "-n",
            &ns_name,
            "patch",
            "mdb/mine",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"spec":{{"activation":{{"mode":"Manual","approvedDigest":"{stored_digest}"}}}}}}"#
            ),
        ],
        None,
    );
    kubectl_ok(
        &[
            "-n",
            &ns_name,
            "wait",
            "--for=condition=Operational",
            "mdb/mine",
            WAIT_TIMEOUT,
        ],
        None,
    );
    let activated = activate.wait_with_output().unwrap();
    assert!(activated.status.success(), "{}", text(&activated));
    // Once operational, the uploader's token uploads nothing more.
    let again = run_importer("Bearer", &verifier_token, &bearer_settings, &export, &[]);
    assert!(
        again.status.success(),
        "everything was completed already: {}",
        text(&again)
    );
    let (status_code, code) =
        refused_creation(&runtime, &api_url, Some(&bearer(verifier_token.clone())));
    assert_eq!((status_code, code.as_str()), (401, "uploader-no-database"));
}
