//! Shared helpers for the end-to-end tests: the cluster from `KUBECONFIG`, kubectl, and namespaces that
//! clean up after themselves.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The kubeconfig of the cluster under test. An end-to-end test never skips itself: without a
/// cluster it fails and says how to get one.
pub fn kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!("KUBECONFIG is not set: run the end-to-end suite with `make test` or `hack/test-env.sh cargo test --test e2e`")
    })
}

/// Runs kubectl against the cluster under test, with optional standard input.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is on PATH (hack/test-env.sh puts the v1.34 build there)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs kubectl and panics with its stderr when it fails; returns stdout.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The repository root, for files such as `crds/` and `examples/`.
pub fn repo_path(relative: &str) -> String {
    format!("{}/{}", env!("CARGO_MANIFEST_DIR"), relative)
}

/// Installs the committed CRDs (server-side apply, so it is safe to repeat from parallel tests) and
/// waits until both are established.
/// The shipped examples live in fixed namespaces (`sfm-organisations`, `sfm-system`), so the tests that
/// apply them take turns: hold this guard for the whole test.
pub fn examples_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn install_crds() {
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &repo_path("crds/sfm.nhn.no.yaml"),
        ],
        None,
    );
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            WAIT_TIMEOUT,
            "crd/migrationdatabases.sfm.nhn.no",
            "crd/migrationkeys.sfm.nhn.no",
        ],
        None,
    );
}

/// A namespace of its own for one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new(prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        kubectl_ok(&["create", "namespace", &name], None);
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// How long a test waits for something to converge (a condition, a phase, a count). Generous on
/// purpose: the machines are shared, a passing wait returns as soon as it holds, and speed is measured
/// by `make bench`, never asserted here.
pub const PATIENCE: Duration = Duration::from_secs(300);
/// The same bound for `kubectl wait`.
pub const WAIT_TIMEOUT: &str = "--timeout=300s";

/// Polls `check` until it returns true or `timeout` passes; returns whether it became true.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The local cluster's server URL and its CA (base64 PEM, as `certificate-authority-data`), from the
/// admin kubeconfig: what a credential of its own needs besides the token.
pub fn server_and_ca() -> (String, String) {
    let server = kubectl_ok(
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let ca = kubectl_ok(
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    );
    (server.trim().to_owned(), ca.trim().to_owned())
}

/// Runs kubectl as the holder of a bearer token (a ServiceAccount's), with none of the admin
/// credentials of the kubeconfig.
pub fn kubectl_with_token(token: &str, args: &[&str]) -> Output {
    let (server, ca) = server_and_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.crt");
    let empty_kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&empty_kubeconfig, "").unwrap();
    std::fs::write(
        &ca_path,
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca.trim()).unwrap(),
    )
    .unwrap();
    let mut all = vec![
        "--kubeconfig".to_owned(),
        empty_kubeconfig.display().to_string(),
        format!("--server={server}"),
        format!("--certificate-authority={}", ca_path.display()),
        format!("--token={token}"),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    Command::new("kubectl")
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Waits until every MigrationDatabase of `ns` is Ready.
pub fn wait_all_ready(ns: &str) {
    kubectl_ok(
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            "mdb",
            "--all",
            WAIT_TIMEOUT,
        ],
        None,
    );
}

/// One field of an object, by kubectl jsonpath.
pub fn jsonpath(ns: &str, resource: &str, path: &str) -> String {
    kubectl_ok(
        &["-n", ns, "get", resource, "-o", &format!("jsonpath={path}")],
        None,
    )
}

/// One decoded field of a Secret.
pub fn secret_field(ns: &str, name: &str, field: &str) -> String {
    let b64 = jsonpath(ns, &format!("secret/{name}"), &format!("{{.data.{field}}}"));
    String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim()).unwrap(),
    )
    .unwrap()
}
