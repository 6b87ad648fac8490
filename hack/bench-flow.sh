#!/usr/bin/env bash
# The whole migration path as a benchmark (DESIGN section 8): sfm-export writes a synthetic export,
# sfm-migrate uploads it with N workers to the real sfm-migration-api, which ingests into a staging
# database on a real PostgreSQL server provisioned by the real operator; then verify and activate.
# A run whose fourth field is `nhn` sends the export the way NHN's own uploader does instead
# (tests/fixtures/nhn_uploader/sfm_importer.py: a Bearer token of a local HelseID-like issuer, no key,
# POST + HEAD + 512 KiB PATCHes, keep-alive off, N workers) into a database that accepts uploads
# without a key, then `sfm-migrate verify --against-index`, activate and the Manual approval.
# Prints patients/s and MB/s of the upload (and of the whole run), the exporter's own rate, and CPU
# seconds per process (client, API, PostgreSQL, operator) so the bottleneck is visible. Nothing is
# asserted: it prints figures.
#
#   hack/bench-flow.sh                 # the full set: 2048-bit 10,000 patients with 1, 10, 100
#                                      # workers and NHN's uploader with 5; 2048-bit 100,000 with 10
#                                      # (the best of the sweep so far: more workers contend in
#                                      # PostgreSQL); 4096-bit 10,000 with 10
#   BENCH_QUICK=1 hack/bench-flow.sh   # a small proof run (200 patients, 1 and 10 workers, NHN's
#                                      # uploader with 5, 4096 too)
#   BENCH_RUNS="2048:10000:10 2048:10000:5:nhn" hack/bench-flow.sh   # bits:patients:workers[:nhn] ...
#
# Environment: BENCH_PROFILE=release (default; builds with --release) or dev; BENCH_SIZE_KB (mean XML
# per patient, default 100); BENCH_BIN_DIR (use the binaries there, build nothing); SFM_PG_FAST
# (default 0 here: PostgreSQL with fsync, as in production); SFM_BENCH_STAGES=0 skips the per-stage
# benchmark (tests/api_bench.rs on the same PostgreSQL, the same build profile, the flow's generator);
# SFM_BENCH_STAGE_FILES (patients of that stage benchmark, default 1000).
#
# CPU is the figure that counts on a shared machine: every run prints the API's and PostgreSQL's CPU
# per patient in milliseconds and in RSA-2048 private-key operations, against `openssl speed rsa2048`
# measured in the same run (CPU time, so robust to other work on the machine). Wall-clock figures
# move with whatever else runs.
#
# SFM_BENCH_PERF=1 profiles as it goes (figures of such a run carry the profilers' overhead):
# `perf record` of the API with DWARF call graphs and of the whole machine flat (PostgreSQL's
# backends), pg_stat_statements per run, and auto_explain's EXPLAIN (ANALYZE, BUFFERS) of a sample of
# the statements; reports land in SFM_BENCH_PERF_DIR (default target/bench-flow-perf). Build with
# symbols for it: CARGO_PROFILE_RELEASE_DEBUG=line-tables-only.
# Starts its own PostgreSQL and control plane through hack/test-env.sh unless one is already set up.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${SFM_PG_ADMIN_URL:-}" ] || [ -z "${KUBECONFIG:-}" ]; then
  export SFM_PG_FAST=${SFM_PG_FAST:-0}
  exec "$root/hack/test-env.sh" "$0" "$@"
fi

profile=${BENCH_PROFILE:-release}
size_kb=${BENCH_SIZE_KB:-100}
if [ -n "${BENCH_RUNS:-}" ]; then
  runs=$BENCH_RUNS
elif [ "${BENCH_QUICK:-}" = 1 ]; then
  runs="2048:200:1 2048:200:10 2048:200:5:nhn 4096:200:10"
else
  runs="2048:10000:1 2048:10000:10 2048:10000:5:nhn 2048:10000:100 2048:100000:10 4096:10000:10"
fi

cd "$root"
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  bin=$BENCH_BIN_DIR # binaries built before (a release build takes 15-30 minutes on a small machine)
elif [ "$profile" = release ]; then
  cargo build --release --bins >&2
  bin=$root/target/release
else
  cargo build --bins >&2
  bin=$root/target/debug
fi
work=$(mktemp -d /tmp/sfm-bench-flow.XXXXXX)
pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The reference every CPU figure is compared with: one RSA-2048 private-key operation (sign) on this
# machine, as `openssl speed` measures it (user CPU time), now and again at the end.
rsa_sign_ms() {
  openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ { sub(/s$/, "", $4); printf "%.4f", $4 * 1000 }'
}
rsa_ms_start=$(rsa_sign_ms)
rsa_ms=$rsa_ms_start
echo "== openssl speed rsa2048: one private-key operation in $rsa_ms ms of CPU" >&2

perf_on=${SFM_BENCH_PERF:-0}
perf_dir=${SFM_BENCH_PERF_DIR:-$root/target/bench-flow-perf}
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$SFM_PG_ADMIN_URL" "$@"; }
if [ "$perf_on" = 1 ]; then
  mkdir -p "$perf_dir"
  # pg_stat_statements (utility statements not tracked: CREATE ROLE ... PASSWORD must not land in
  # it) and auto_explain's plans of a sample of statements, with ANALYZE and BUFFERS, in the log.
  psql_admin -c "ALTER SYSTEM SET shared_preload_libraries = pg_stat_statements, auto_explain"
  "$root/hack/postgres.sh" stop "$SFM_TEST_WORK_DIR/postgres" >&2
  SFM_PG_FAST=${SFM_PG_FAST:-0} "$root/hack/postgres.sh" start "$SFM_TEST_WORK_DIR/postgres" >/dev/null
  psql_admin >/dev/null <<'SQL'
ALTER SYSTEM SET pg_stat_statements.track_utility = off;
ALTER SYSTEM SET auto_explain.log_min_duration = 0;
ALTER SYSTEM SET auto_explain.log_analyze = on;
ALTER SYSTEM SET auto_explain.log_buffers = on;
ALTER SYSTEM SET auto_explain.sample_rate = 0.002;
SELECT pg_reload_conf();
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
fi

api_ns=sfm-system
kubectl apply --server-side -f crds/ >/dev/null
kubectl create namespace "$api_ns" >/dev/null 2>&1 || true
SFM_DEFAULT_ADMIN_URL=$SFM_PG_ADMIN_URL "$bin/sfm-operator" run --api-namespace "$api_ns" \
  --resync-seconds 5 >"$work/operator.log" 2>&1 &
operator_pid=$!
pids+=("$operator_pid")

# CPU seconds of a process (cpu_of, kernel_of) and of the PostgreSQL server (postgres_cpu).
. "$root/hack/cpu.sh"
pg_data=${SFM_TEST_WORK_DIR:-}/postgres/data
# PostgreSQL's CPU seconds by kind of process: each live child of the postmaster by its title
# (a backend by its role, walwriter, checkpointer, ...), and what exited (the postmaster's reaped
# children: autovacuum workers, short sessions) as one line; for the backends also the part of it
# spent in the kernel (`..._in_kernel`, included in the line before it).
postgres_cpu_by_kind() {
  local data=${SFM_TEST_WORK_DIR:-}/postgres/data pm child title
  [ -r "$data/postmaster.pid" ] || return 0
  pm=$(head -1 "$data/postmaster.pid")
  awk -v clk="$clk" '{ sub(/^.*\) /, ""); printf "exited %.2f\n", ($14 + $15) / clk; printf "postmaster %.2f\n", ($12 + $13) / clk }' "/proc/$pm/stat"
  for child in $(pgrep -P "$pm" || true); do
    title=$(tr '\0' ' ' <"/proc/$child/cmdline" 2>/dev/null | sed -E 's/^postgres: //; s/ [0-9.]+\([0-9]+\).*//; s/ +$//')
    case "$title" in
      *walwriter*|*checkpointer*|*"background writer"*|*launcher*|*"autovacuum worker"*|*archiver*) ;;
      *) title="backend ${title%% *}" ;;
    esac
    echo "${title// /_} $(awk -v clk="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / clk }' "/proc/$child/stat" 2>/dev/null || echo 0)"
    # And the part of it spent in the kernel (sockets, fsync, scheduling), for the backends.
    case "$title" in
      backend*) echo "${title// /_}_in_kernel $(awk -v clk="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", $13 / clk }' "/proc/$child/stat" 2>/dev/null || echo 0)" ;;
    esac
  done
}
# The difference of two postgres_cpu_by_kind outputs, summed by kind, largest first.
postgres_cpu_delta() {
  awk 'NR == FNR { before[$1] += $2; next } { after[$1] += $2 }
    END { for (k in after) { d = after[k] - before[k]; if (d > 0.005) printf "%s %.2f\n", k, d } }' "$1" "$2" | sort -k2 -gr | head -8 |
    awk '{ printf "%s%s %s s", (NR > 1 ? ", " : ""), $1, $2 }'
}
free_port() { "$root/hack/free-port"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }'; }
# Milliseconds per item and the same in RSA-2048 private-key operations.
per_ms() { awk -v a="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", 1000 * a / n; else print "n/a" }'; }
in_rsa() { awk -v ms="$1" -v r="$rsa_ms" 'BEGIN { if (r > 0 && ms != "n/a") printf "%.1f", ms / r; else print "n/a" }'; }

# The profiles of run $1 as text: the API's functions by self and by inclusive time, PostgreSQL's
# by self time, the statements by total time, and the sampled plans.
perf_report() {
  local n=$1 out=$perf_dir
  # This run's PostgreSQL only (the machine may run other servers): the postmaster and every
  # process it forked, from the recording's fork events.
  local pm pg_pids
  pm=$(head -1 "$SFM_TEST_WORK_DIR/postgres/data/postmaster.pid")
  pg_pids=$(perf script -i "$out/all-$n.data" --show-task-events -F pid 2>/dev/null | python3 -c '
import re, sys
parent = {}
for line in sys.stdin:
    m = re.search(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)", line)
    if m:
        parent.setdefault(int(m.group(1)), int(m.group(2)))
root = int(sys.argv[1])
def ours(pid, depth=0):
    return pid == root or (depth < 8 and pid in parent and parent[pid] != pid and ours(parent[pid], depth + 1))
print(",".join(str(p) for p in sorted({root} | {p for p in parent if ours(p)})))' "$pm")
  perf report -i "$out/all-$n.data" --stdio --no-children --pid "$pg_pids" --sort dso,sym --percent-limit 0.3 \
    >"$out/postgres-$n.self.txt" 2>/dev/null || true
  perf report -i "$out/all-$n.data" --stdio --no-children --pid "$pg_pids" --sort dso --percent-limit 0.1 \
    >"$out/postgres-$n.dso.txt" 2>/dev/null || true
  # perf here cannot read the Rust binaries' symbols (it reports addresses): symbolise the API's
  # samples from the binary's own symbol table.
  python3 - "$out/api-$n.data" "$bin/sfm-migration-api" >"$out/api-$n.functions.txt" 2>/dev/null <<'SYMBOLS' || true
import bisect, collections, re, subprocess, sys
data, binary = sys.argv[1], sys.argv[2]
syms = []
for line in subprocess.run(["nm", "-C", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines():
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1] in "tTwW":
        syms.append((int(parts[0], 16), re.sub(r"::h[0-9a-f]{16}$", "", parts[2])[:150]))
syms.sort()
starts = [a for a, _ in syms]
shift = 0  # perf prints file offsets: move them into the executable segment's addresses
for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if f and f[0] == "LOAD" and "E" in f[6:-1]:
        shift = int(f[2], 16) - int(f[1], 16)
script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"], capture_output=True, text=True).stdout
own, inclusive, total = collections.Counter(), collections.Counter(), 0
for block in script.split("\n\n"):
    frames = []
    for line in block.strip().splitlines():
        m = re.match(r"\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$", line)
        if not m:
            continue
        ip, sym, dso = m.groups()
        if dso.endswith("/" + binary.split("/")[-1]):
            i = bisect.bisect_right(starts, int(ip, 16) + shift) - 1
            frames.append(syms[i][1] if i >= 0 else "?")
        else:
            frames.append(dso.split("/")[-1] + " " + ("?" if sym.startswith("[unknown]") else sym.split("+")[0]))
    if frames:
        total += 1
        own[frames[0]] += 1
        for f in set(frames):
            inclusive[f] += 1
print(f"{total} samples of the API")
print("== self")
for f, c in own.most_common(40):
    print(f"{100 * c / total:6.2f}%  {f}")
print("== inclusive")
for f, c in inclusive.most_common(150):
    print(f"{100 * c / total:6.2f}%  {f}")
SYMBOLS
  perf report -i "$out/all-$n.data" --stdio --no-children --sort comm --percent-limit 0.5 \
    >"$out/all-$n.comm.txt" 2>/dev/null || true
  psql_admin -P pager=off -c "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
      round((100 * total_exec_time / sum(total_exec_time) OVER ())::numeric, 1) AS pct,
      round(mean_exec_time::numeric, 3) AS mean_ms, shared_blks_hit + shared_blks_read AS blocks,
      wal_bytes, left(regexp_replace(query, '\s+', ' ', 'g'), 160) AS query
    FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25" >"$out/statements-$n.txt" || true
  cp "$SFM_TEST_WORK_DIR/postgres/postgres.log" "$out/plans-$n.log" 2>/dev/null || true
  echo "   profiles of run $n in $out (api-$n.functions.txt, postgres-$n.self.txt, postgres-$n.dso.txt, statements-$n.txt, plans-$n.log); the API's top:" >&2
  sed -n '3,15p' "$out/api-$n.functions.txt" | sed 's/^/     /' >&2 || true
  echo "   PostgreSQL's top:" >&2
  grep -E '^ +[0-9]' "$out/postgres-$n.dso.txt" | head -6 | sed 's/^/     /' >&2 || true
  grep -E '^ +[0-9]' "$out/postgres-$n.self.txt" | head -12 | sed 's/^/     /' >&2 || true
  echo "   statements by total time:" >&2
  head -14 "$out/statements-$n.txt" | sed 's/^/     /' >&2 || true
}


# The organisation number every export and database in this run share (valid mod 11).
orgno=974600951

# For the runs of NHN's uploader: a local HelseID-like issuer and the EPJ's export client's key.
issuer_port=$(free_port)
issuer_url=http://127.0.0.1:$issuer_port
python3 - "$work" <<'PY'
import base64, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
work = sys.argv[1]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
with open(work + "/epj-client.pem", "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
public = key.public_key().public_numbers()
with open(work + "/epj-client.jwks.json", "w") as f:
    json.dump({"keys": [{"kty": "RSA", "kid": "epj-1", "alg": "RS256", "use": "sig", "n": b64(public.n), "e": b64(public.e)}]}, f)
PY
"$bin/sfm-migration-api" dev-issuer --listen "127.0.0.1:$issuer_port" --client-id bench-epj \
  --client-jwks "$work/epj-client.jwks.json" --organisation-number "$orgno" \
  --token-lifetime-seconds 14400 >"$work/issuer.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 120); do curl -fsS "$issuer_url/.well-known/openid-configuration" >/dev/null 2>&1 && break; sleep 0.25; done
declare -A exports
results=()
n=0
for run in $runs; do
  IFS=: read -r bits patients workers uploader <<<"$run"
  uploader=${uploader:-sfm-migrate}
  n=$((n + 1))
  echo "== run $n: RSA $bits, $patients patients, $workers workers of $uploader, ~${size_kb} KB XML per patient" >&2

  # The export (one per key size and patient count, reused across the worker sweep).
  tag="$bits-$patients"
  if [ -z "${exports[$tag]:-}" ]; then
    dir=$work/export-$tag
    "$bin/sfm-export" keygen --bits "$bits" --out "$dir/keys" >/dev/null
    t0=$(now)
    "$bin/sfm-export" generate --cert "$dir/keys/certificate.pem" --out "$dir/export" \
      --patients "$patients" --size-kb "$size_kb" --organisation-number "$orgno" --seed "$n" \
      >"$dir/generate.log" 2>&1
    t1=$(now)
    exports[$tag]=$dir
    echo "   export: $(tail -1 "$dir/generate.log")" >&2
  fi
  dir=${exports[$tag]}
  export_dir=$dir/export
  rm -f "$export_dir/sfm-migrate.ledger" "$export_dir/.ledger"
  bytes=$(du -sb "$export_dir" | cut -f1)
  xml_mb=$(grep -o '[0-9.]* MB XML' "$dir/generate.log" | head -1 | cut -d' ' -f1)

  # A database and key for this run (for NHN's uploader: a database that accepts its token alone).
  ns=bench-$n-$$
  kubectl create namespace "$ns" >/dev/null
  if [ "$uploader" = nhn ]; then
    kubectl apply -f - >/dev/null <<EOF
apiVersion: sfm.nhn.no/v1alpha1
kind: MigrationDatabase
metadata: {name: bench, namespace: $ns}
spec:
  organisation: {name: Bench legekontor, organisationNumber: "$orgno", helseIdClientId: bench-sfm}
  dataModelVersion: 4
  activation: {mode: Manual}
  reclaimPolicy: Delete
  validation:
    allowSyntheticIdentities: true
    schemaCheck: Lenient
    helseId: {issuer: "$issuer_url", audience: "nhn:sfm-migration", requiredScope: "nhn:sfm-migration/upload"}
  helseIdUploads: {clientId: bench-epj, allowBearer: true}
EOF
  else
    kubectl apply -f - >/dev/null <<EOF
apiVersion: sfm.nhn.no/v1alpha1
kind: MigrationDatabase
metadata: {name: bench, namespace: $ns}
spec:
  organisation: {name: Bench legekontor, organisationNumber: "$orgno", helseIdClientId: bench-sfm}
  dataModelVersion: 4
  activation: {mode: Automatic}
  reclaimPolicy: Delete
  validation: {allowSyntheticIdentities: true, schemaCheck: Lenient}
---
apiVersion: sfm.nhn.no/v1alpha1
kind: MigrationKey
metadata: {name: bench-key, namespace: $ns}
spec: {databaseRef: bench, timeToLive: 24h}
EOF
  fi
  kubectl -n "$ns" wait --for=condition=Ready mdb/bench --timeout=180s >/dev/null
  if [ "$uploader" != nhn ]; then
    for _ in $(seq 1 120); do
      secret=$(kubectl -n "$ns" get mkey/bench-key -o jsonpath='{.status.secretName}' 2>/dev/null || true)
      [ -n "$secret" ] && break
      sleep 0.5
    done
    key=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.key}' | base64 -d)
  fi

  port=$(free_port)
  "$bin/sfm-migration-api" serve --listen "127.0.0.1:$port" --namespace "$api_ns" \
    --decryption-key "$dir/keys/private_key.pem" --trusted-issuer "$issuer_url" --allow-http-issuers \
    --public-url "http://127.0.0.1:$port" >"$work/api-$n.log" 2>&1 &
  api_pid=$!
  pids+=("$api_pid")
  for _ in $(seq 1 120); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.25; done

  config=$work/config-$n
  if [ "$uploader" = nhn ]; then
    "$bin/sfm-migrate" --config-dir "$config" login --issuer "$issuer_url" --client-id bench-epj \
      --key-file "$work/epj-client.pem" --kid epj-1 >/dev/null
    token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$config/token.json")
    printf '{"UploadAPI": "http://127.0.0.1:%s/files", "UploadV2API": "http://127.0.0.1:%s/v2/files", "UploadThreads": %s}' \
      "$port" "$port" "$workers" >"$work/importer-$n.json"
  else
    SFM_MIGRATION_KEY=$key "$bin/sfm-migrate" --config-dir "$config" key add bench \
      --for-api "http://127.0.0.1:$port" >/dev/null
  fi

  perf_pids=()
  if [ "$perf_on" = 1 ]; then
    psql_admin -c 'SELECT pg_stat_statements_reset()' >/dev/null
    : >"$SFM_TEST_WORK_DIR/postgres/postgres.log"
    perf record -F 199 --call-graph dwarf,16384 -o "$perf_dir/api-$n.data" -p "$api_pid" 2>"$perf_dir/api-$n.record.log" &
    perf_pids+=("$!")
    perf record -F 499 -a -o "$perf_dir/all-$n.data" 2>"$perf_dir/all-$n.record.log" &
    perf_pids+=("$!")
    sleep 1
  fi
  api_cpu0=$(cpu_of "$api_pid"); pg_cpu0=$(postgres_cpu "$pg_data"); op_cpu0=$(cpu_of "$operator_pid")
  api_kernel0=$(kernel_of "$api_pid")
  postgres_cpu_by_kind >"$work/pg-cpu-$n.before"
  t0=$(now)
  timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "%U %S" -o "$work/client-$n.time")
  if [ "$uploader" = nhn ]; then
    "${timer[@]}" python3 "$root/tests/fixtures/nhn_uploader/sfm_importer.py" Bearer "$token" \
      --settings "$work/importer-$n.json" --folder "$export_dir" \
      >"$work/upload-$n.log" 2>&1 || { echo "   upload failed:" >&2; tail -5 "$work/upload-$n.log" >&2; }
  else
    "${timer[@]}" "$bin/sfm-migrate" --config-dir "$config" upload "$export_dir" --workers "$workers" --plain \
      >"$work/upload-$n.log" 2>&1 || { echo "   upload failed:" >&2; tail -5 "$work/upload-$n.log" >&2; }
  fi
  t1=$(now)
  upload_s=$(elapsed "$t0" "$t1")
  api_cpu=$(elapsed "$api_cpu0" "$(cpu_of "$api_pid")")
  pg_cpu=$(elapsed "$pg_cpu0" "$(postgres_cpu "$pg_data")")
  postgres_cpu_by_kind >"$work/pg-cpu-$n.after"
  echo "   PostgreSQL CPU by process: $(postgres_cpu_delta "$work/pg-cpu-$n.before" "$work/pg-cpu-$n.after")" >&2
  echo "   API CPU in the kernel: $(elapsed "$api_kernel0" "$(kernel_of "$api_pid")") of $api_cpu s" >&2
  op_cpu=$(elapsed "$op_cpu0" "$(cpu_of "$operator_pid")")
  client_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$work/client-$n.time" 2>/dev/null || echo 0)
  if [ "$perf_on" = 1 ]; then
    for pid in "${perf_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    perf_report "$n"
  fi
  if [ "$uploader" = nhn ]; then
    # The finishing step of docs/operator.md: verify against Index.txt, activate, the approval.
    "$bin/sfm-migrate" --config-dir "$config" --api "http://127.0.0.1:$port" verify "$export_dir" --against-index \
      >"$work/verify-$n.log" 2>&1 || { echo "   verify failed:" >&2; tail -5 "$work/verify-$n.log" >&2; }
    "$bin/sfm-migrate" --config-dir "$config" --api "http://127.0.0.1:$port" activate "$export_dir" --keep \
      --timeout-secs 600 >"$work/activate-$n.log" 2>&1 &
    activate_pid=$!
    for _ in $(seq 1 1200); do
      [ -n "$(kubectl -n "$ns" get mdb/bench -o jsonpath='{.status.migration.activationRequestedAt}')" ] && break
      sleep 0.5
    done
    digest=$(kubectl -n "$ns" get mdb/bench -o jsonpath='{.status.migration.validatedDigest}')
    kubectl -n "$ns" patch mdb/bench --type=merge \
      -p "{\"spec\":{\"activation\":{\"mode\":\"Manual\",\"approvedDigest\":\"$digest\"}}}" >/dev/null
    wait "$activate_pid" || { echo "   activate failed:" >&2; tail -5 "$work/activate-$n.log" >&2; }
  else
    "$bin/sfm-migrate" --config-dir "$config" verify "$export_dir" >"$work/verify-$n.log" 2>&1 ||
      { echo "   verify failed:" >&2; tail -5 "$work/verify-$n.log" >&2; }
    "$bin/sfm-migrate" --config-dir "$config" activate "$export_dir" --keep --timeout-secs 600 \
      >"$work/activate-$n.log" 2>&1 || { echo "   activate failed:" >&2; tail -5 "$work/activate-$n.log" >&2; }
  fi
  t2=$(now)

  total_s=$(elapsed "$t0" "$t2")
  stored=$(kubectl -n "$ns" get mdb/bench -o jsonpath='{.status.migration.patients.stored}' 2>/dev/null || echo "?")
  phase=$(kubectl -n "$ns" get mdb/bench -o jsonpath='{.status.phase}' 2>/dev/null || echo "?")
  # The busiest process is the bottleneck (CPU seconds over the upload; 2 cores in all).
  bottleneck=$(printf "client %s\napi %s\npostgres %s\noperator %s\n" "$client_cpu" "$api_cpu" "$pg_cpu" "$op_cpu" |
    sort -k2 -g | tail -1 | cut -d' ' -f1)
  # With the cores mostly idle the limit is latency (requests in sequence, commits), not a process.
  busy=$(awk -v a="$client_cpu" -v b="$api_cpu" -v c="$pg_cpu" -v d="$op_cpu" -v t="$upload_s" -v n="$(nproc)" \
    'BEGIN { if (t > 0) printf "%.0f", 100 * (a + b + c + d) / (t * n); else print 0 }')
  if [ "$busy" -lt 50 ]; then bottleneck="latency (CPU ${busy}% busy; busiest: $bottleneck)"; else bottleneck="$bottleneck (CPU ${busy}% busy)"; fi
  api_ms=$(per_ms "$api_cpu" "$patients"); pg_ms=$(per_ms "$pg_cpu" "$patients")
  line=$(printf "RSA %4s %7s patients %4s workers %-11s | upload %8ss %8s patients/s %7s MB/s files %7s MB/s XML | with verify+activate %8ss | CPU s: client %s api %s postgres %s operator %s | per patient: api %s ms = %s RSA-2048 ops, postgres %s ms = %s ops | bottleneck %s | stored %s, %s" \
    "$bits" "$patients" "$workers" "$uploader" "$upload_s" "$(ratio "$patients" "$upload_s")" \
    "$(ratio "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" "$upload_s")" "$(ratio "${xml_mb:-0}" "$upload_s")" "$total_s" \
    "$client_cpu" "$api_cpu" "$pg_cpu" "$op_cpu" "$api_ms" "$(in_rsa "$api_ms")" "$pg_ms" "$(in_rsa "$pg_ms")" \
    "$bottleneck" "$stored" "$phase")
  echo "   $line" >&2
  results+=("$line")
  # Stage timings, when the API exposes them.
  curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E '^sfm_[a-z_]*(stage|ingest)[a-z_]*_seconds_(sum|count)' | sed 's/^/     /' >&2 || true

  kill "$api_pid" 2>/dev/null; wait "$api_pid" 2>/dev/null || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
done

# The per-stage figures on the same build, PostgreSQL and generator: the insert stage alone is
# what the end-to-end rate is compared with.
insert_rate=""
if [ "${SFM_BENCH_STAGES:-1}" = 1 ]; then
  echo "== per-stage benchmark (tests/api_bench.rs, ${SFM_BENCH_STAGE_FILES:-1000} patients of the flow's generator)" >&2
  stage_profile=--release
  [ "$profile" = release ] || stage_profile=--profile=dev
  if SFM_BENCH_INPUT=export SFM_BENCH_SIZE_KB=$size_kb SFM_BENCH_FILES=${SFM_BENCH_STAGE_FILES:-1000} \
    cargo test "$stage_profile" --test api_bench -- --ignored --nocapture --test-threads=1 >"$work/stages.log" 2>&1; then
    insert_rate=$(awk '/^insert \(one transaction per file\)/ { print $(NF - 1) }' "$work/stages.log")
  else
    echo "   the per-stage benchmark failed:" >&2; tail -20 "$work/stages.log" >&2
  fi
fi
rsa_ms_end=$(rsa_sign_ms)

echo
echo "bench-flow ($profile build, ~${size_kb} KB XML per patient, PostgreSQL fsync $([ "${SFM_PG_FAST:-0}" = 1 ] && echo off || echo on), $(nproc) cores, commit $(git -C "$root" rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)):"
echo "  RSA-2048 reference (openssl speed, CPU time): $rsa_ms_start ms per private-key operation at the start, $rsa_ms_end ms at the end; the ratios use the first"
echo "  wall-clock figures move with other work on the machine; the CPU figures per patient are the ones to compare"
for tag in "${!exports[@]}"; do
  echo "  exporter $tag: $(grep -o '[0-9.]* patients/s' "${exports[$tag]}/generate.log" | head -1)"
done
for line in "${results[@]}"; do echo "  $line"; done
if [ -f "$work/stages.log" ]; then
  echo "  per-stage (tests/api_bench.rs, same build and server):"
  sed -n '/^migration API ingest benchmark/,/^slowest stage/p' "$work/stages.log" | sed 's/^/    /'
fi
if [ -n "$insert_rate" ]; then
  for line in "${results[@]}"; do
    read -r _ bits patients _ workers _ uploader _ <<<"$line"
    rate=$(grep -o '[0-9.]* patients/s' <<<"$line" | head -1 | cut -d' ' -f1)
    echo "  end-to-end against the insert stage alone ($insert_rate files/s): RSA $bits, $patients patients, $workers workers of $uploader: $rate patients/s = $(awk -v a="$rate" -v b="$insert_rate" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')"
  done
fi
# NHN's uploader against sfm-migrate on the same export and machine (#15 asks for at least 70%).
for line in "${results[@]}"; do
  read -r _ bits patients _ workers _ uploader _ <<<"$line"
  [ "$uploader" = nhn ] || continue
  nhn_rate=$(grep -o '[0-9.]* patients/s' <<<"$line" | cut -d' ' -f1)
  for other in "${results[@]}"; do
    read -r _ obits opatients _ oworkers _ ouploader _ <<<"$other"
    [ "$obits $opatients $oworkers $ouploader" = "$bits $patients 10 sfm-migrate" ] || continue
    ours=$(grep -o '[0-9.]* patients/s' <<<"$other" | cut -d' ' -f1)
    echo "  NHN's uploader with $workers workers reaches $(awk -v a="$nhn_rate" -v b="$ours" 'BEGIN { if (b > 0) printf "%.0f", 100 * a / b; else print "n/a" }')% of sfm-migrate's patients/s with 10 workers ($nhn_rate vs $ours patients/s, RSA $bits, $patients patients)"
  done
done
