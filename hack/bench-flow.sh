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
# (default 0 here: PostgreSQL with fsync, as in production).
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

api_ns=sfm-system
kubectl apply --server-side -f crds/ >/dev/null
kubectl create namespace "$api_ns" >/dev/null 2>&1 || true
SFM_DEFAULT_ADMIN_URL=$SFM_PG_ADMIN_URL "$bin/sfm-operator" run --api-namespace "$api_ns" \
  --resync-seconds 5 >"$work/operator.log" 2>&1 &
operator_pid=$!
pids+=("$operator_pid")

# CPU seconds (user+system) of a process, with its reaped children (PostgreSQL's backends).
clk=$(getconf CLK_TCK)
cpu_of() {
  local pid=$1
  [ -r "/proc/$pid/stat" ] || { echo 0; return; }
  # Fields after the command: utime=14 stime=15 cutime=16 cstime=17.
  awk -v clk="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13 + $14 + $15) / clk }' "/proc/$pid/stat"
}
postgres_cpu() {
  local data=${SFM_TEST_WORK_DIR:-}/postgres/data pm total=0 child
  [ -r "$data/postmaster.pid" ] || { echo 0; return; }
  pm=$(head -1 "$data/postmaster.pid")
  total=$(cpu_of "$pm")
  for child in $(pgrep -P "$pm" || true); do
    total=$(awk -v a="$total" -v b="$(cpu_of "$child")" 'BEGIN { printf "%.2f", a + b }')
  done
  echo "$total"
}
free_port() { "$root/hack/free-port"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }'; }

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
    --decryption-key "$dir/keys/private_key.pem" --trusted-issuer "$issuer_url" --allow-http-issuers >"$work/api-$n.log" 2>&1 &
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

  api_cpu0=$(cpu_of "$api_pid"); pg_cpu0=$(postgres_cpu); op_cpu0=$(cpu_of "$operator_pid")
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
  pg_cpu=$(elapsed "$pg_cpu0" "$(postgres_cpu)")
  op_cpu=$(elapsed "$op_cpu0" "$(cpu_of "$operator_pid")")
  client_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$work/client-$n.time" 2>/dev/null || echo 0)
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
  line=$(printf "RSA %4s %7s patients %4s workers %-11s | upload %8ss %8s patients/s %7s MB/s files %7s MB/s XML | with verify+activate %8ss | CPU s: client %s api %s postgres %s operator %s | bottleneck %s | stored %s, %s" \
    "$bits" "$patients" "$workers" "$uploader" "$upload_s" "$(ratio "$patients" "$upload_s")" \
    "$(ratio "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" "$upload_s")" "$(ratio "${xml_mb:-0}" "$upload_s")" "$total_s" \
    "$client_cpu" "$api_cpu" "$pg_cpu" "$op_cpu" "$bottleneck" "$stored" "$phase")
  echo "   $line" >&2
  results+=("$line")
  # Stage timings, when the API exposes them.
  curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E '^sfm_[a-z_]*(stage|ingest)[a-z_]*_seconds_(sum|count)' | sed 's/^/     /' >&2 || true

  kill "$api_pid" 2>/dev/null; wait "$api_pid" 2>/dev/null || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
done

echo
echo "bench-flow ($profile build, ~${size_kb} KB XML per patient, PostgreSQL fsync $([ "${SFM_PG_FAST:-0}" = 1 ] && echo off || echo on), $(nproc) cores):"
for tag in "${!exports[@]}"; do
  echo "  exporter $tag: $(grep -o '[0-9.]* patients/s' "${exports[$tag]}/generate.log" | head -1)"
done
for line in "${results[@]}"; do echo "  $line"; done
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
