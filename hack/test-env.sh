#!/usr/bin/env bash
# Runs a command with a real PostgreSQL server and a real local Kubernetes control plane, both started
# in a fresh temporary directory and stopped again however the command ends.
#
#   hack/test-env.sh COMMAND...
#
# The command sees SFM_PG_ADMIN_URL (and SFM_PG_HOST/PORT) and KUBECONFIG, with kubectl v1.34 on PATH.
# With KUBECONFIG already set and SFM_USE_EXISTING_CLUSTER=1, the given cluster is used instead of a
# local control plane (that is how hack/kind-e2e.sh runs the same suite).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/sfm-test.XXXXXX)
chmod 755 "$work"
cleanup() {
  set +e
  "$root/hack/controlplane.sh" stop "$work/controlplane" >/dev/null 2>&1
  "$root/hack/postgres.sh" stop "$work/postgres" >/dev/null 2>&1
  if [ -z "${SFM_KEEP_TEST_ENV:-}" ]; then rm -rf "$work"; else echo "test-env: kept $work" >&2; fi
}
trap cleanup EXIT INT TERM

export SFM_PG_FAST=${SFM_PG_FAST:-1} # tests only: no fsync
"$root/hack/postgres.sh" start "$work/postgres" >&2
# shellcheck disable=SC1091
source "$work/postgres/env"
if [ "${SFM_USE_EXISTING_CLUSTER:-}" = 1 ] && [ -n "${KUBECONFIG:-}" ]; then
  echo "test-env: using the existing cluster in $KUBECONFIG" >&2
else
  "$root/hack/controlplane.sh" start "$work/controlplane" >&2
  # shellcheck disable=SC1091
  source "$work/controlplane/env"
fi
export SFM_TEST_WORK_DIR="$work"
"$@"
