//! The committed CRDs on a real API server: they install, the typed Rust client reads what the server
//! stores, and the CEL rules refuse bad objects at `kubectl apply` time.

use super::cluster::*;

fn database_yaml(ns: &str, name: &str, organisation_number: &str, version: i64) -> String {
    format!(
        r#"apiVersion: sfm.nhn.no/v1alpha1
kind: MigrationDatabase
metadata:
  name: {name}
  namespace: {ns}
spec:
  organisation:
    name: Legekontoret Test
    organisationNumber: "{organisation_number}"
    helseIdClientId: test-client
  dataModelVersion: {version}
"#
    )
}

fn apply(yaml: &str) -> std::process::Output {
    kubectl(
        &["apply", "--server-side", "--field-manager=e2e", "-f", "-"],
        Some(yaml),
    )
}

#[test]
fn crds_apply_on_the_client_and_install_on_the_server() {
    kubectl_ok(
        &[
            "apply",
            "--dry-run=client",
            "-f",
            &repo_path("crds/sfm.nhn.no.yaml"),
        ],
        None,
    );
    install_crds();
    let names = kubectl_ok(
        &["api-resources", "--api-group=sfm.nhn.no", "-o", "name"],
        None,
    );
    assert!(names.contains("migrationdatabases.sfm.nhn.no"), "{names}");
    assert!(names.contains("migrationkeys.sfm.nhn.no"), "{names}");
    // Short names and the category work as users type them.
    let ns = TestNamespace::new("crd-names");
    kubectl_ok(&["-n", &ns.name, "get", "mdb,mkey"], None);
    kubectl_ok(&["-n", &ns.name, "get", "sfm"], None);
}

#[test]
fn cel_rejects_a_bad_organisation_number_at_apply_time() {
    install_crds();
    let ns = TestNamespace::new("crd-orgnr");
    // 974760673 is a valid organisation number; change its check digit and the API server refuses it.
    let out = apply(&database_yaml(&ns.name, "bad", "974760674", 1));
    assert!(!out.status.success(), "a wrong check digit was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mod-11 check digit"),
        "unexpected error: {stderr}"
    );
    let out = apply(&database_yaml(&ns.name, "short", "97476067", 1));
    assert!(
        !out.status.success(),
        "an eight-digit organisation number was accepted"
    );
    let ok = apply(&database_yaml(&ns.name, "good", "974760673", 1));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn immutable_fields_and_forward_only_versions_are_enforced() {
    install_crds();
    let ns = TestNamespace::new("crd-immutable");
    assert!(
        apply(&database_yaml(&ns.name, "db", "974760673", 2))
            .status
            .success()
    );
    let back = apply(&database_yaml(&ns.name, "db", "974760673", 1));
    assert!(!back.status.success(), "dataModelVersion moved backwards");
    assert!(String::from_utf8_lossy(&back.stderr).contains("never back"));
    let forward = apply(&database_yaml(&ns.name, "db", "974760673", 3));
    assert!(
        forward.status.success(),
        "{}",
        String::from_utf8_lossy(&forward.stderr)
    );
    let other = apply(&database_yaml(&ns.name, "db", "983044778", 3));
    assert!(!other.status.success(), "organisationNumber changed");
    assert!(String::from_utf8_lossy(&other.stderr).contains("immutable"));
}

#[test]
fn approved_digest_belongs_to_manual_activation_and_keys_need_a_sane_lifetime() {
    install_crds();
    let ns = TestNamespace::new("crd-rules");
    let mut yaml = database_yaml(&ns.name, "auto", "974760673", 1);
    yaml.push_str(&format!(
        "  activation:\n    mode: Automatic\n    approvedDigest: \"{}\"\n",
        "a".repeat(64)
    ));
    let out = apply(&yaml);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only used with mode Manual"));

    let key = |ttl: &str| {
        format!(
            "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: k\n  namespace: {}\nspec:\n  databaseRef: auto\n  timeToLive: {ttl}\n",
            ns.name
        )
    };
    assert!(
        !apply(&key("10s")).status.success(),
        "a 10 second key was accepted"
    );
    assert!(
        !apply(&key("forever")).status.success(),
        "a non-duration was accepted"
    );
    let ok = apply(&key("72h"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn the_rust_types_read_what_the_server_stores() {
    use kube::{Api, Client, api::PostParams};
    use sfm_migration::crd::{ActivationMode, MigrationDatabase, ReclaimPolicy};
    install_crds();
    let ns = TestNamespace::new("crd-typed");
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&database_yaml(&ns.name, "typed", "974760673", 1)),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        sfm_migration::tls::install_crypto_provider();
        let client = Client::try_default().await.unwrap();
        let api: Api<MigrationDatabase> = Api::namespaced(client, &ns.name);
        let db = api.get("typed").await.unwrap();
        // Defaults are filled in: Retain, since this is health data, and Automatic activation.
        assert_eq!(db.spec.reclaim_policy, ReclaimPolicy::Retain);
        assert_eq!(db.spec.activation.mode, ActivationMode::Automatic);
        assert!(db.spec.network_policy.enabled);
        let mut copy = db.clone();
        copy.metadata = kube::api::ObjectMeta {
            name: Some("typed-copy".into()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &copy).await.unwrap();
    });
}
