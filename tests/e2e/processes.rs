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

    /// Whether the (running) process holds the client end of a TCP connection to `server_port` whose
    /// local port is `port`: which of several processes owns a PostgreSQL session, given the
    /// session's `pg_stat_activity.client_port` and the server's port.
    pub fn has_session_port(&self, port: u16, server_port: u16) -> bool {
        local_tcp_ports_to(self.child.id(), server_port).contains(&port)
    }
}

/// The TCP port of the PostgreSQL server this connection reached, as [`Process::has_session_port`]
/// and [`local_tcp_ports_to`] take it.
pub async fn server_port(connection: &mut sqlx::PgConnection) -> u16 {
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(connection)
        .await
        .expect("the connection is over TCP");
    u16::try_from(port).unwrap()
}

/// The local ports of the TCP sockets the process `pid` holds to `remote_port` (the socket inodes
/// of `/proc/<pid>/fd`, found in `/proc/<pid>/net/tcp{,6}`). Only those: Linux gives the same
/// ephemeral port to connections to different servers, so a port alone can name another process's
/// PostgreSQL session when this one uses that port for, say, the Kubernetes API.
pub fn local_tcp_ports_to(pid: u32, remote_port: u16) -> std::collections::HashSet<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    let sockets: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut ports = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`, with
        // addresses as `HEXADDR:HEXPORT`.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9
                && sockets.contains(fields[9])
                && port_of(fields[2]) == Some(remote_port)
                && let Some(port) = port_of(fields[1])
            {
                ports.insert(port);
            }
        }
    }
    ports
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port free on the loopback now, for a process the test starts: below the kernel's ephemeral
/// range (a port from that range can be given to an outgoing connection's local end before the
/// process binds it), never the same twice in this test process (tests run in parallel), and
/// below 20000, which the scripts' ports start at (`hack/free-port`, `hack/postgres.sh`: the wave's
/// own server could otherwise take a port handed out here before its process binds it).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = low.clamp(10001, 20000) - 10000;
    // A start of its own for each test process, so two processes rarely walk the same ports.
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < span, "no free port below the ephemeral range");
        let port = 10000 + (start + n) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
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
    start_operator_on(
        &admin_url(),
        watch_namespace,
        api_namespace,
        log_name,
        extra,
    )
}

/// As [`start_operator_with`], against the PostgreSQL server of `admin` (a server of the test's own).
pub fn start_operator_on(
    admin: &str,
    watch_namespace: &str,
    api_namespace: &str,
    log_name: &str,
    extra: &[&str],
) -> Process {
    let mut args = vec![
        "run",
        "--api-namespace",
        api_namespace,
        "--watch-namespace",
        watch_namespace,
        "--leader-election-namespace",
        watch_namespace,
    ];
    // Tests see drift repaired within seconds, unless they ask for another resync.
    if !extra.contains(&"--resync-seconds") {
        args.extend_from_slice(&["--resync-seconds", "5"]);
    }
    args.extend_from_slice(extra);
    Process::start(
        env!("CARGO_BIN_EXE_sfm-operator"),
        &args,
        &[("SFM_DEFAULT_ADMIN_URL", admin)],
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
    // An API that trusts an issuer checks DPoP proofs against its public URL, which it must be told.
    let public_url = format!("http://127.0.0.1:{port}");
    if extra.contains(&"--trusted-issuer") && !extra.contains(&"--public-url") {
        args.extend_from_slice(&["--public-url", public_url.as_str()]);
    }
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

/// Runs one of the package's binaries to the end with arguments and environment; its output.
pub fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(binary);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap_or_else(|e| panic!("{binary}: {e}"))
}

/// A finished process's status and output, for an assertion's message.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
