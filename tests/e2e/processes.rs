//! The project's own binaries as local processes for the end-to-end suite, each stopped when dropped and
//! logging to its own file under `target/e2e-logs/`, so tests running in parallel do not mix their logs.
#![allow(dead_code)] // shared by several test modules; not each uses every helper

use super::cluster::{PATIENCE, eventually, kubeconfig};
use sfm_migration::contract;
use std::path::Path;
use std::process::{Child, Command};

/// A child process killed (and reaped) when dropped.
pub struct Process {
    pub child: Child,
    pub log: String,
}

impl Process {
    /// Starts one of the package's binaries (`env!("CARGO_BIN_EXE_...")`) with the local cluster's
    /// kubeconfig (unless `env` overrides `KUBECONFIG`), logging to `target/e2e-logs/<log_name>.log`.
    pub fn start(binary: &str, args: &[&str], env: &[(&str, &str)], log_name: &str) -> Process {
        let dir = format!("{}/target/e2e-logs", env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = format!("{dir}/{log_name}.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} does not start: {e}"));
        Process { child, log }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the process has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The PostgreSQL admin URI of the test server (set by `hack/test-env.sh`).
pub fn admin_url() -> String {
    std::env::var("SFM_PG_ADMIN_URL")
        .expect("SFM_PG_ADMIN_URL is not set: run the end-to-end suite with `make test`")
}

/// `sfm-operator run` against the local cluster and the test PostgreSQL server, reconciling only
/// `watch_namespace` (so tests running in parallel each have their own operator), electing its leader
/// on a Lease in that namespace, with the migrators' Secrets going to `api_namespace`.
pub fn start_operator(watch_namespace: &str, api_namespace: &str, log_name: &str) -> Process {
    start_operator_with(watch_namespace, api_namespace, log_name, &[])
}

/// As [`start_operator`], with extra flags (e.g. `--lease-duration-seconds`).
pub fn start_operator_with(
    watch_namespace: &str,
    api_namespace: &str,
    log_name: &str,
    extra: &[&str],
) -> Process {
    let admin = admin_url();
    let mut args = vec![
        "run",
        "--api-namespace",
        api_namespace,
        "--watch-namespace",
        watch_namespace,
        "--leader-election-namespace",
        watch_namespace,
        "--resync-seconds",
        "5",
    ];
    args.extend_from_slice(extra);
    Process::start(
        env!("CARGO_BIN_EXE_sfm-operator"),
        &args,
        &[("SFM_DEFAULT_ADMIN_URL", admin.as_str())],
        log_name,
    )
}

/// `sfm-migration-api serve` on 127.0.0.1:`port` in `namespace` under the chart's identity (its
/// ServiceAccount and exactly its RBAC: what it may not do, such as reading Secrets outside its
/// namespace or writing anything but status, fails the test), with `extra` flags; returns once
/// /healthz answers, or panics with the API's log.
pub fn start_api(
    namespace: &str,
    key_file: &Path,
    port: u16,
    log_name: &str,
    extra: &[&str],
) -> Process {
    let listen = format!("127.0.0.1:{port}");
    let key_file = key_file.display().to_string();
    let mut args = vec![
        "serve",
        "--listen",
        listen.as_str(),
        "--namespace",
        namespace,
        "--decryption-key",
        key_file.as_str(),
    ];
    args.extend_from_slice(extra);
    let identity = super::chart::chart_kubeconfig("api", namespace);
    let process = Process::start(
        env!("CARGO_BIN_EXE_sfm-migration-api"),
        &args,
        &[("RUST_LOG", "info"), ("KUBECONFIG", identity.as_str())],
        log_name,
    );
    let url = format!("http://127.0.0.1:{port}{}", contract::PATH_HEALTHZ);
    assert!(
        eventually(PATIENCE, || Command::new("curl")
            .args(["-fsS", &url])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)),
        "the API did not come up; its log:\n{}",
        process.log_text()
    );
    process
}
