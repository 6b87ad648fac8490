//! An onboarding wave: many organisations migrating at once, each with `sfm-migrate run --workers 4`,
//! through two API replicas behind one address (a round-robin TCP proxy, as a Service balances
//! connections), with the real operator, against a PostgreSQL server of the test's own with
//! `max_connections = 300`. Every organisation must reach `Operational`, no client may exit with an
//! error (a "wrong key" while waiting after `activate` included), PostgreSQL must never refuse a
//! connection, and each API replica must stay within its `--max-connections`.
//!
//! The sizes come from `SFM_WAVE_ORGANISATIONS` (120), `SFM_WAVE_PATIENTS` (10) and
//! `SFM_WAVE_WORKERS` (4); `hack/bench-wave.sh` runs it larger and prints the figures this test
//! prints (nothing about time is asserted).

use super::cluster::*;
use super::processes::*;
use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sfm_migration::ident::organisation_number_with_check;

const SERVER_MAX_CONNECTIONS: usize = 300;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A PostgreSQL server of this test's own (`hack/postgres.sh`, `max_connections = 300`), so its
/// connection counts are the wave's alone; stopped when dropped.
struct OwnPostgres {
    dir: PathBuf,
    admin_url: String,
}

impl OwnPostgres {
    fn start(dir: PathBuf) -> OwnPostgres {
        let started = Command::new(repo_path("hack/postgres.sh"))
            .arg("start")
            .arg(&dir)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(started.status.success(), "{}", text(&started));
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let admin_url = env
            .split_whitespace()
            .find_map(|word| word.strip_prefix("SFM_PG_ADMIN_URL="))
            .expect("hack/postgres.sh writes SFM_PG_ADMIN_URL")
            .to_owned();
        OwnPostgres { dir, admin_url }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(repo_path("hack/postgres.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// A round-robin TCP proxy on the loopback in front of `backends`: each connection goes to the next
/// one, as a Kubernetes Service balances connections. Runs until the test process ends.
fn round_robin(backends: Vec<u16>) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let backend = backends[n % backends.len()];
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    return;
                };
                let (mut client_in, mut server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let upstream = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_in, &mut server_out);
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_in, mut client_out) = (server, client);
                let _ = std::io::copy(&mut server_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Write);
                let _ = upstream.join();
            });
        }
    });
    port
}

/// The most connections seen at once while sampling: all client sessions, the API replicas' (each),
/// and the operator's.
#[derive(Default, Debug, Clone)]
struct Peaks {
    total: usize,
    replicas: Vec<usize>,
    operator: usize,
}

/// Samples `pg_stat_activity` every 100 ms until `stop`, attributing the API's sessions to the replica
/// holding the client end of their connection (its local port, connected to the server's port).
fn sample_connections(
    admin_url: String,
    replica_pids: Vec<u32>,
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Peaks>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use sqlx::Connection as _;
            let mut connection = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            let server_port = server_port(&mut connection).await;
            while !stop.load(Ordering::SeqCst) {
                let sessions: Vec<(Option<String>, Option<i32>)> = sqlx::query_as(
                    "SELECT application_name, client_port FROM pg_stat_activity
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                )
                .fetch_all(&mut connection)
                .await
                .unwrap();
                let ports: Vec<HashSet<u16>> = replica_pids
                    .iter()
                    .map(|pid| local_tcp_ports_to(*pid, server_port))
                    .collect();
                let api_ports: Vec<u16> = sessions
                    .iter()
                    .filter(|(name, _)| name.as_deref() == Some("sfm-migration-api"))
                    .filter_map(|(_, port)| port.and_then(|p| u16::try_from(p).ok()))
                    .collect();
                let operator = sessions
                    .iter()
                    .filter(|(name, _)| name.as_deref() == Some("sfm-operator"))
                    .count();
                {
                    let mut peaks = peaks.lock().unwrap();
                    peaks.total = peaks.total.max(sessions.len());
                    peaks.operator = peaks.operator.max(operator);
                    peaks.replicas.resize(ports.len(), 0);
                    for (replica, held) in ports.iter().enumerate() {
                        let count = api_ports.iter().filter(|p| held.contains(p)).count();
                        peaks.replicas[replica] = peaks.replicas[replica].max(count);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    })
}

fn database_yaml(ns: &str, n: usize, organisation_number: &str) -> String {
    format!(
        "apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: org-{n:03}\n  namespace: {ns}\nspec:\n  organisation:\n    name: Bølge legekontor {n} (test)\n    organisationNumber: \"{organisation_number}\"\n    helseIdClientId: wave-{n}\n  dataModelVersion: 4\n  activation:\n    mode: Automatic\n  reclaimPolicy: Delete\n  validation:\n    allowSyntheticIdentities: true\n    schemaCheck: Strict\n---\napiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationKey\nmetadata:\n  name: org-{n:03}-key\n  namespace: {ns}\nspec:\n  databaseRef: org-{n:03}\n  timeToLive: 2h\n"
    )
}

/// One export per organisation under `work/exports/<n>`, all encrypted to the certificate in `keys`;
/// four exporters at a time.
fn make_exports(work: &Path, keys: &Path, numbers: &[String], patients: usize) -> Vec<PathBuf> {
    let exporter = env!("CARGO_BIN_EXE_sfm-export");
    let certificate = keys.join("certificate.pem");
    let folders: Vec<PathBuf> = (0..numbers.len())
        .map(|n| work.join("exports").join(n.to_string()))
        .collect();
    for batch in (0..numbers.len()).collect::<Vec<_>>().chunks(4) {
        let children: Vec<_> = batch
            .iter()
            .map(|n| {
                Command::new(exporter)
                    .args(["generate", "--cert"])
                    .arg(&certificate)
                    .arg("--out")
                    .arg(&folders[*n])
                    .args(["--organisation-number", &numbers[*n]])
                    .args(["--patients", &patients.to_string(), "--size-kb", "20"])
                    .args(["--seed", &(n + 1).to_string(), "--threads", "1"])
                    .output()
            })
            .collect();
        for child in children {
            let output = child.unwrap();
            assert!(output.status.success(), "{}", text(&output));
        }
    }
    folders
}

#[test]
fn an_onboarding_wave_reaches_operational_within_every_connection_cap() {
    let organisations = setting("SFM_WAVE_ORGANISATIONS", 120);
    let patients = setting("SFM_WAVE_PATIENTS", 10);
    let workers = setting("SFM_WAVE_WORKERS", 4);
    // Each replica's share of PostgreSQL, by default small enough that the wave must be served in
    // turns (six databases at a time per replica, four connections each); the benchmark runs the
    // chart's 64 and 8. Two replicas and the operator (at most 2 x 8 + 1) stay below the 300.
    let api_max_connections = setting("SFM_WAVE_MAX_CONNECTIONS", 24);
    let api_max_connections_per_database = setting("SFM_WAVE_MAX_CONNECTIONS_PER_DATABASE", 4);
    install_crds();
    let work = tempfile::tempdir_in(
        std::env::var("SFM_TEST_WORK_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let postgres_dir = work.path().join("postgres");
    std::fs::create_dir_all(&postgres_dir).unwrap();
    // hack/postgres.sh runs the server as the `postgres` user when started as root.
    let _ = Command::new("chmod")
        .args(["-R", "a+rwx"])
        .arg(work.path())
        .status();
    let postgres = OwnPostgres::start(postgres_dir);

    let api_namespace = TestNamespace::new("wave-api");
    let ns = TestNamespace::new("wave");
    let _operator = start_operator_on(
        &postgres.admin_url,
        &ns.name,
        &api_namespace.name,
        &format!("operator-{}", ns.name),
        // The chart's resync is 300 s; the tests' usual 5 s would have the operator pass 120
        // databases every 5 s on top of the wave.
        &["--resync-seconds", "60"],
    );

    let numbers: Vec<String> = (0..)
        .filter_map(|n| organisation_number_with_check(91_000_000 + n * 37))
        .take(organisations)
        .collect();
    let manifests: String = numbers
        .iter()
        .enumerate()
        .map(|(n, number)| database_yaml(&ns.name, n, number))
        .collect::<Vec<_>>()
        .join("---\n");
    let started = Instant::now();
    kubectl_ok(&["apply", "-f", "-"], Some(&manifests));

    let keys = work.path().join("keys");
    let made = run(
        env!("CARGO_BIN_EXE_sfm-export"),
        &["keygen", "--out", keys.to_str().unwrap()],
        &[],
    );
    assert!(made.status.success(), "{}", text(&made));
    let exports = make_exports(work.path(), &keys, &numbers, patients);

    wait_all_ready(&ns.name);
    let provisioned = started.elapsed();
    assert!(eventually(PATIENCE, || {
        let phases = jsonpath(&ns.name, "mkey", "{.items[*].status.phase}");
        phases.split_whitespace().filter(|p| *p == "Active").count() == organisations
    }));

    let replica_args = [
        "--max-connections",
        &api_max_connections.to_string(),
        "--max-connections-per-database",
        &api_max_connections_per_database.to_string(),
        "--ingest-wait-seconds",
        "30",
    ]
    .map(str::to_owned);
    let replica_args: Vec<&str> = replica_args.iter().map(String::as_str).collect();
    let key_file = keys.join("private_key.pem");
    let replicas: Vec<(Process, u16)> = ["a", "b"]
        .iter()
        .map(|replica| {
            let port = free_port();
            let log = format!("api-{replica}-{}", ns.name);
            let process = start_api(&api_namespace.name, &key_file, port, &log, &replica_args);
            (process, port)
        })
        .collect();
    let api_url = format!(
        "http://127.0.0.1:{}",
        round_robin(replicas.iter().map(|(_, port)| *port).collect())
    );

    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new(Peaks::default()));
    let sampler = sample_connections(
        postgres.admin_url.clone(),
        replicas
            .iter()
            .map(|(process, _)| process.child.id())
            .collect(),
        stop.clone(),
        peaks.clone(),
    );

    // Each organisation's data controller: its own client configuration and key, then `run`.
    let client = env!("CARGO_BIN_EXE_sfm-migrate");
    let mut running = Vec::new();
    for n in 0..exports.len() {
        let config = work.path().join("config").join(n.to_string());
        let secret = jsonpath(
            &ns.name,
            &format!("mkey/org-{n:03}-key"),
            "{.status.secretName}",
        );
        let key = secret_field(&ns.name, &secret, "key");
        let config_env = ("SFM_MIGRATE_CONFIG_DIR", config.to_str().unwrap());
        let added = run(
            client,
            &["key", "add", "wave", "--for-api", &api_url],
            &[config_env, ("SFM_MIGRATION_KEY", key.as_str())],
        );
        assert!(added.status.success(), "{}", text(&added));
        running.push((n, config));
    }
    let wave_started = Instant::now();
    let children: Vec<_> = running
        .iter()
        .map(|(n, config)| {
            let log = work.path().join(format!("client-{n}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let child = Command::new(client)
                .args(["run", "--workers", &workers.to_string()])
                .arg(&exports[*n])
                .env("SFM_MIGRATE_CONFIG_DIR", config)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            (*n, child, log, Instant::now())
        })
        .collect();
    let mut durations = Vec::new();
    let mut failures = Vec::new();
    for (n, mut child, log, spawned) in children {
        let status = child.wait().unwrap();
        durations.push(spawned.elapsed());
        if !status.success() {
            failures.push(format!(
                "organisation {n}: {status}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
    }
    let wave = wave_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peaks = peaks.lock().unwrap().clone();

    durations.sort();
    let seconds = |d: Duration| d.as_secs_f64();
    println!(
        "wave: {organisations} organisations x {patients} patients, --workers {workers}, 2 API replicas (--max-connections {api_max_connections}, {api_max_connections_per_database} per database), PostgreSQL max_connections {SERVER_MAX_CONNECTIONS}"
    );
    println!(
        "wave: provisioned (all Ready) in {:.1} s; the wave (first client started to last client done, all Operational) {:.1} s",
        seconds(provisioned),
        seconds(wave)
    );
    println!(
        "wave: per organisation min {:.1} s, median {:.1} s, max {:.1} s",
        seconds(durations[0]),
        seconds(durations[durations.len() / 2]),
        seconds(durations[durations.len() - 1])
    );
    println!(
        "wave: peak connections: all {}, API replicas {:?}, operator {}",
        peaks.total, peaks.replicas, peaks.operator
    );

    assert!(
        failures.is_empty(),
        "{} clients failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let phases = jsonpath(&ns.name, "mdb", "{.items[*].status.phase}");
    assert_eq!(
        phases
            .split_whitespace()
            .filter(|p| *p == "Operational")
            .count(),
        organisations,
        "phases: {phases}"
    );
    assert!(
        peaks
            .replicas
            .iter()
            .all(|peak| *peak <= api_max_connections),
        "an API replica held more than its {api_max_connections} connections: {peaks:?}"
    );
    assert!(peaks.total < SERVER_MAX_CONNECTIONS, "{peaks:?}");
    let refused = postgres.log().matches("too many clients").count();
    assert_eq!(refused, 0, "PostgreSQL refused {refused} connections");
    for (replica, _) in &replicas {
        let log = replica.log_text();
        assert!(!log.contains("too many clients"), "{log}");
    }
}
