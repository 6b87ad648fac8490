#!/usr/bin/env bash
# A real, throwaway PostgreSQL 15 server for the tests and the demo.
#
#   hack/postgres.sh start <dir> [port]   initialise (once) and start a cluster under <dir>
#   hack/postgres.sh stop  <dir>          stop it (idempotent: a stopped or missing server is fine)
#   hack/postgres.sh env   <dir>          print the export line for the running server
#
# The server listens on 127.0.0.1 only (or SFM_PG_LISTEN; default: a free port), keeps its unix socket in <dir>/run and
# authenticates everything, TCP and socket, with scram-sha-256; nothing is ever `trust`, not even the
# initial superuser. The superuser `postgres` gets a random password, written to <dir>/admin-password
# (mode 600); `<dir>/env` (mode 600, it holds the password) exports SFM_PG_HOST, SFM_PG_PORT and
# SFM_PG_ADMIN_URL for `source`.
#
# Environment:
#   SFM_PG_FAST=1   fsync, synchronous_commit and full_page_writes off. Only for tests: a crash loses
#                   data. Default 0. The Makefile's test targets set it to 1.
#   SFM_PG_LISTEN   the one address to listen on instead of 127.0.0.1 (hack/test-node.sh: the local
#                   node's address, so pods reach the server as an external one). Also in <dir>/env.
#   SFM_PG_CLIENTS  more client CIDRs admitted (scram-sha-256) when the cluster is initialised, e.g.
#                   the local node's pod network.
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user (created if
# missing) and <dir> must be reachable by that user: use a path under /tmp (`mktemp -d` is fine, the
# script opens <dir> for traversal), not a path below a directory only root may enter.
# On a bare Debian machine without the server binaries the script installs Debian's postgresql-15.
set -euo pipefail

PG_MAJOR=15
LISTEN=${SFM_PG_LISTEN:-127.0.0.1}

die() {
    echo "hack/postgres.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Finds the directory holding initdb, pg_ctl and postgres of PostgreSQL $PG_MAJOR.
find_bindir() {
    local candidate
    for candidate in "/usr/lib/postgresql/$PG_MAJOR/bin" "$(dirname "$(readlink -f /usr/local/bin/initdb 2>/dev/null || echo /nonexistent/x)")"; do
        if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" && -x "$candidate/postgres" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Installs Debian's server without letting the package create and start its own `main` cluster on 5432.
install_server() {
    [[ $EUID -eq 0 ]] || die "PostgreSQL $PG_MAJOR is not installed and installing it needs root: apt-get install postgresql-$PG_MAJOR"
    command -v apt-get >/dev/null || die "PostgreSQL $PG_MAJOR is not installed and this is not a Debian-like system; install it by hand"
    echo "hack/postgres.sh: installing PostgreSQL $PG_MAJOR with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
        sed -i 's/^#\?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y -qq --no-install-recommends "postgresql-$PG_MAJOR" >/dev/null ||
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

ensure_postgres_user() {
    [[ $EUID -eq 0 ]] || return 0
    getent passwd postgres >/dev/null && return 0
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
        die "could not create the postgres OS user"
}

# Runs a command as the server's OS user: `postgres` when we are root, ourselves otherwise.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# Hands a path to the server's OS user (a no-op when we are not root).
give_to_pg() {
    [[ $EUID -eq 0 ]] && chown postgres: "$@"
    return 0
}

port_in_use() {
    (exec 3<>"/dev/tcp/$LISTEN/$1") 2>/dev/null
}

pick_free_port() {
    # hack/free-port: below the kernel's ephemeral range and above the end-to-end tests' ports.
    "$(dirname "${BASH_SOURCE[0]}")/free-port" "$LISTEN" || die "found no free TCP port on $LISTEN"
}

# Percent-encodes a string for the userinfo part of a URL (the generated password is hex, but a
# password set by hand may not be).
urlencode() {
    local string=$1 out="" char i
    for ((i = 0; i < ${#string}; i++)); do
        char=${string:i:1}
        case "$char" in
            [a-zA-Z0-9.~_-]) out+=$char ;;
            *) out+=$(printf '%%%02X' "'$char") ;;
        esac
    done
    echo "$out"
}

# An ASCII password (hex, 192 bits): SASLprep leaves ASCII unchanged, so clients and the server agree.
random_password() {
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

write_settings() {
    local data=$1 run=$2 port=$3 fast=$4
    {
        echo "# Written by hack/postgres.sh on every start; edit the script, not this file."
        echo "listen_addresses = '$LISTEN'"
        echo "port = $port"
        echo "unix_socket_directories = '$run'"
        echo "unix_socket_permissions = 0777"
        echo "password_encryption = 'scram-sha-256'"
        # Benchmarks create many databases and the API and operator hold pools.
        echo "max_connections = 300"
        echo "shared_buffers = '128MB'"
        echo "max_locks_per_transaction = 256"
        # Staging databases keep raw XML documents; lz4 compresses them twice as fast as pglz.
        echo "default_toast_compression = 'lz4'"
        echo "logging_collector = off"
        echo "log_min_messages = warning"
        # Never log statements: CREATE ROLE ... PASSWORD would put verifiers into the log.
        echo "log_statement = 'none'"
        echo "log_min_duration_statement = -1"
        echo "log_connections = off"
        echo "dynamic_shared_memory_type = posix"
        if [[ $fast == 1 ]]; then
            echo "# SFM_PG_FAST=1: for tests only, a crash loses data."
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } >"$data/sfm.conf"
    give_to_pg "$data/sfm.conf"
    chmod 600 "$data/sfm.conf"
}

write_hba() {
    local data=$1
    cat >"$data/pg_hba.conf" <<EOF
# Written by hack/postgres.sh: every connection authenticates with scram-sha-256, never trust.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   $LISTEN/32   scram-sha-256
EOF
    local cidr
    for cidr in ${SFM_PG_CLIENTS:-}; do
        echo "host    all       all   $cidr   scram-sha-256" >>"$data/pg_hba.conf"
    done
    give_to_pg "$data/pg_hba.conf"
    chmod 600 "$data/pg_hba.conf"
}

write_env() {
    local dir=$1 port=$2 password
    password=$(cat "$dir/admin-password")
    (
        umask 077
        echo "export SFM_PG_HOST=$LISTEN SFM_PG_PORT=$port SFM_PG_SOCKET_DIR=$dir/run" \
            "SFM_PG_ADMIN_URL=postgres://postgres:$(urlencode "$password")@$LISTEN:$port/postgres" >"$dir/env"
    )
    chmod 600 "$dir/env"
}

is_running() {
    local data=$1
    [[ -f "$data/PG_VERSION" ]] && as_pg "$BINDIR/pg_ctl" -D "$data" status >/dev/null 2>&1
}

running_port() {
    sed -n 's/^port = \([0-9]*\)$/\1/p' "$1/sfm.conf"
}

cmd_start() {
    local dir=$1 requested_port=${2:-} fast=${SFM_PG_FAST:-0}
    [[ -n $requested_port && ! $requested_port =~ ^[0-9]+$ ]] && die "port must be a number, got '$requested_port'"
    [[ $fast == 0 || $fast == 1 ]] || die "SFM_PG_FAST must be 0 or 1"

    BINDIR=$(find_bindir) || { install_server && BINDIR=$(find_bindir); } ||
        die "PostgreSQL $PG_MAJOR binaries not found after installing"
    ensure_postgres_user

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    local data=$dir/data run=$dir/run log=$dir/postgres.log
    # The server user must traverse <dir> (it cannot list or read anything else in it).
    chmod o+x,g+x "$dir"
    if [[ $EUID -eq 0 ]] && ! runuser -u postgres -- test -x "$dir"; then
        die "the postgres OS user cannot reach $dir (a parent directory is closed to it); use a directory under /tmp, e.g. \$(mktemp -d)"
    fi

    if is_running "$data"; then
        write_env "$dir" "$(running_port "$data")"
        echo "PostgreSQL already running in $dir; source $dir/env"
        return 0
    fi

    # lz4 must be compiled in: the staging schema sets COMPRESSION lz4 on its document columns.
    if [[ -x "$BINDIR/pg_config" ]] && ! "$BINDIR/pg_config" --configure | grep -q -- '--with-lz4'; then
        die "this PostgreSQL server was built without lz4 support; use Debian's postgresql-$PG_MAJOR"
    fi

    mkdir -p "$run"
    give_to_pg "$run"
    chmod 755 "$run"

    if [[ ! -f "$data/PG_VERSION" ]]; then
        rm -rf "$data"
        mkdir -p "$data"
        give_to_pg "$data"
        chmod 700 "$data"
        (umask 077 && random_password >"$dir/admin-password")
        chmod 600 "$dir/admin-password"
        # initdb reads the password as the server user; the copy lives only for the initdb run.
        local pwfile=$run/.initdb-password
        (umask 077 && cp "$dir/admin-password" "$pwfile")
        give_to_pg "$pwfile"
        if ! as_pg "$BINDIR/initdb" -D "$data" --username=postgres --auth=scram-sha-256 \
            --pwfile="$pwfile" --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1; then
            rm -f "$pwfile"
            cat "$dir/initdb.log" >&2
            die "initdb failed (log above, also in $dir/initdb.log)"
        fi
        rm -f "$pwfile"
        echo "include 'sfm.conf'" >>"$data/postgresql.conf"
        write_hba "$data"
    fi
    [[ -f "$dir/admin-password" ]] || die "$dir/admin-password is missing; delete $dir to start over"

    : >"$log"
    give_to_pg "$log"
    # A restarted cluster keeps its previous port when that is still free, so old env files stay valid.
    local port attempt previous_port=""
    [[ -f "$data/sfm.conf" ]] && previous_port=$(running_port "$data")
    if [[ -n $previous_port ]] && port_in_use "$previous_port"; then previous_port=""; fi
    for attempt in 1 2 3 4 5; do
        port=${requested_port:-${previous_port:-$(pick_free_port)}}
        previous_port=""
        write_settings "$data" "$run" "$port" "$fast"
        if as_pg "$BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null; then
            break
        fi
        # Another process may have taken the port between the check and the start.
        if [[ -n $requested_port ]] || ! port_in_use "$port"; then
            tail -n 20 "$log" >&2
            die "PostgreSQL did not start (log above, also in $log)"
        fi
        port=""
    done
    [[ -n $port ]] || die "PostgreSQL did not start after 5 attempts at a free port (log in $log)"

    # Ready means: accepts a password login over TCP, the way every client of ours connects.
    local password ok=0
    password=$(cat "$dir/admin-password")
    for attempt in $(seq 1 30); do
        if PGPASSWORD=$password PGCONNECT_TIMEOUT=2 "$BINDIR/psql" -X -q -h "$LISTEN" -p "$port" -U postgres \
            -d postgres -Atc 'select 1' >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.5
    done
    [[ $ok == 1 ]] || die "PostgreSQL started but refuses the admin login over TCP (log in $log)"

    write_env "$dir" "$port"
    local mode="durable"
    [[ $fast == 1 ]] && mode="fast (fsync off, for tests only)"
    cat <<EOF
PostgreSQL $PG_MAJOR running on $LISTEN:$port, $mode
  data:           $data
  socket:         $run
  log:            $log
  admin password: $dir/admin-password
  environment:    source $dir/env   (SFM_PG_HOST, SFM_PG_PORT, SFM_PG_ADMIN_URL)
  stop:           hack/postgres.sh stop $dir
EOF
}

cmd_stop() {
    local dir=$1
    if [[ ! -d "$dir/data" ]]; then
        echo "no PostgreSQL cluster in $dir; nothing to stop"
        return 0
    fi
    dir=$(cd "$dir" && pwd -P)
    BINDIR=$(find_bindir) || die "PostgreSQL $PG_MAJOR binaries not found"
    if is_running "$dir/data"; then
        as_pg "$BINDIR/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
        echo "PostgreSQL in $dir stopped"
    else
        echo "PostgreSQL in $dir is not running"
    fi
}

cmd_env() {
    local dir=$1
    [[ -f "$dir/env" ]] || die "no $dir/env; run: hack/postgres.sh start $dir"
    BINDIR=$(find_bindir) || die "PostgreSQL $PG_MAJOR binaries not found"
    is_running "$dir/data" || die "PostgreSQL in $dir is not running; run: hack/postgres.sh start $dir"
    cat "$dir/env"
}

[[ $# -ge 2 ]] || usage
command=$1
shift
case "$command" in
    start) [[ $# -le 2 ]] || usage; cmd_start "$@" ;;
    stop) [[ $# -eq 1 ]] || usage; cmd_stop "$1" ;;
    env) [[ $# -eq 1 ]] || usage; cmd_env "$1" ;;
    *) usage ;;
esac
