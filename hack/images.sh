#!/usr/bin/env bash
# Images of the operator and the migration API without a registry or a Docker engine: buildah (Debian)
# assembles what the Dockerfile's distroless stages give (the binary, the shared libraries it links, CA
# certificates, /etc/passwd with the nonroot user, user 65532, the same entrypoint, command, environment
# and port) from binaries built on this machine, and the node's containerd imports them.
#
#   hack/images.sh build NODE_DIR [TAG]   builds sfm-operator:TAG and sfm-migration-api:TAG (default
#                                         TAG: node) from target/debug and imports them into the node
#                                         started by hack/node.sh start NODE_DIR; also sfm-probe:TAG, a
#                                         test-only image (bash and timeout) for NetworkPolicy probes
#   hack/images.sh check NODE_DIR [TAG]   fails unless the built images agree with the Dockerfile's
#                                         stages on user, entrypoint, command, environment and ports
#
# The Dockerfile stays the way to build them with a registry (release binaries, distroless base).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; node_dir=${2:-}; tag=${3:-node}
[ -n "$cmd" ] && [ -n "$node_dir" ] || { echo "usage: $0 build|check NODE_DIR [TAG]" >&2; exit 2; }
node_dir=$(cd "$node_dir" && pwd)
store=(--storage-driver vfs --root "$node_dir/buildah" --runroot "$node_dir/buildah-run")
say() { echo "images: $*" >&2; }

# The Dockerfile's stage for each image.
declare -A stage=([sfm-operator]=operator [sfm-migration-api]=migration-api)

# stage_lines STAGE: the instructions of one Dockerfile stage, continuation lines joined.
stage_lines() {
  awk -v stage="$1" '
    /^FROM / { inside = ($NF == stage) ; next }
    inside && NF { print }' "$root/Dockerfile"
}
# dockerfile_value STAGE INSTRUCTION: the argument of the instruction in that stage (last one wins).
dockerfile_value() { stage_lines "$1" | awk -v ins="$2" '$1 == ins { $1 = ""; sub(/^ /, ""); v = $0 } END { print v }'; }

# add_binary CONTAINER PATH...: each file at the same path in the image, with every shared library it
# links (and the dynamic loader) at the path ldd resolves.
add_binary() {
  local ctr=$1 file lib; shift
  local files=()
  for file in "$@"; do
    files+=("$file")
    while IFS= read -r lib; do files+=("$lib"); done < <(ldd "$file" | awk '/=> \//{print $3} /^\t\//{print $1}')
  done
  local mnt; mnt=$(buildah "${store[@]}" mount "$ctr")
  for file in $(printf '%s\n' "${files[@]}" | sort -u); do
    mkdir -p "$mnt$(dirname "$file")"
    cp -L "$file" "$mnt$file"
  done
  buildah "${store[@]}" umount "$ctr" >/dev/null
}

# base CONTAINER: what distroless's base gives besides libc: CA certificates, the nonroot user and /tmp.
base() {
  local ctr=$1 mnt
  mnt=$(buildah "${store[@]}" mount "$ctr")
  mkdir -p "$mnt/etc/ssl/certs" "$mnt/tmp" "$mnt/home/nonroot"
  cp -L /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$mnt/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$mnt/etc/group"
  chmod 1777 "$mnt/tmp"
  chown 65532:65532 "$mnt/home/nonroot"
  buildah "${store[@]}" umount "$ctr" >/dev/null
}

json_array() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@"; }

build_image() { # NAME BINARY
  local name=$1 binary=$2 st=${stage[$1]} ctr entrypoint cmd_ env expose
  ctr=$(buildah "${store[@]}" from scratch)
  base "$ctr"
  add_binary "$ctr" "$binary"
  buildah "${store[@]}" copy "$ctr" "$binary" "/usr/local/bin/$(basename "$binary")" >/dev/null
  # User, entrypoint, command, environment and ports exactly as the Dockerfile's stage says.
  entrypoint=$(dockerfile_value "$st" ENTRYPOINT)
  cmd_=$(dockerfile_value "$st" CMD)
  env=$(dockerfile_value "$st" ENV)
  expose=$(dockerfile_value "$st" EXPOSE)
  local args=(--user "$(dockerfile_value "$st" USER)" --entrypoint "$entrypoint" --workingdir /)
  [ -n "$cmd_" ] && args+=(--cmd "$cmd_")
  [ -n "$env" ] && args+=(--env "$env")
  [ -n "$expose" ] && args+=(--port "$expose")
  buildah "${store[@]}" config "${args[@]}" "$ctr"
  buildah "${store[@]}" commit -q --rm "$ctr" "docker.io/library/$name:$tag" >/dev/null
}

case "$cmd" in
build)
  start=$(date +%s)
  for b in sfm-operator sfm-migration-api; do
    [ -x "$root/target/debug/$b" ] || { say "target/debug/$b is missing: cargo build --bins"; exit 1; }
  done
  # Ours, so removing the old ones first cannot touch anyone else's.
  buildah "${store[@]}" rmi -f "docker.io/library/sfm-operator:$tag" "docker.io/library/sfm-migration-api:$tag" \
    "docker.io/library/sfm-probe:$tag" >/dev/null 2>&1 || true
  build_image sfm-operator "$root/target/debug/sfm-operator"
  build_image sfm-migration-api "$root/target/debug/sfm-migration-api"
  # The probe image: only for the node tests' NetworkPolicy probes (bash's /dev/tcp with a timeout).
  ctr=$(buildah "${store[@]}" from scratch)
  base "$ctr"
  add_binary "$ctr" /bin/bash /usr/bin/timeout /bin/sleep
  buildah "${store[@]}" config --user 65532:65532 --entrypoint '["/bin/sleep"]' --cmd '["3600"]' "$ctr"
  buildah "${store[@]}" commit -q --rm "$ctr" "docker.io/library/sfm-probe:$tag" >/dev/null
  mkdir -p "$node_dir/images"
  for name in sfm-operator sfm-migration-api sfm-probe; do
    rm -f "$node_dir/images/$name.tar"
    buildah "${store[@]}" push -q "docker.io/library/$name:$tag" \
      "docker-archive:$node_dir/images/$name.tar:docker.io/library/$name:$tag" >/dev/null
  done
  "$root/hack/node.sh" import "$node_dir" "$node_dir/images/sfm-operator.tar" \
    "$node_dir/images/sfm-migration-api.tar" "$node_dir/images/sfm-probe.tar"
  say "built and imported sfm-operator:$tag, sfm-migration-api:$tag, sfm-probe:$tag in $(( $(date +%s) - start ))s"
  ;;
check)
  failures=0
  for name in sfm-operator sfm-migration-api; do
    st=${stage[$name]}
    config=$(buildah "${store[@]}" inspect --type image "docker.io/library/$name:$tag")
    got() { python3 -c "import json,sys; c=json.loads(sys.argv[1])['OCIv1']['config']; print($2)" "$config"; }
    want_user=$(dockerfile_value "$st" USER)
    want_entry=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]))' "$(dockerfile_value "$st" ENTRYPOINT)")
    want_cmd=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]) if sys.argv[1] else None)' "$(dockerfile_value "$st" CMD)")
    want_env=$(dockerfile_value "$st" ENV)
    want_ports=$(dockerfile_value "$st" EXPOSE)
    compare() { # what want got
      if [ "$2" = "$3" ]; then say "  ok: $name $1 $3"
      else say "  WRONG: $name $1 is '$3', the Dockerfile says '$2'"; failures=$((failures + 1)); fi
    }
    compare user "$want_user" "$(got "$config" "c.get('User')")"
    compare entrypoint "$want_entry" "$(got "$config" "c.get('Entrypoint')")"
    compare command "$want_cmd" "$(got "$config" "c.get('Cmd')")"
    compare environment "$want_env" "$(got "$config" "' '.join(e for e in c.get('Env') or [] if not e.startswith('PATH='))")"
    compare ports "$want_ports" \
      "$(got "$config" "' '.join(sorted(p.removesuffix('/tcp') for p in c.get('ExposedPorts') or {}))")"
    # The binary's libraries are all in the image: it starts and prints its help as user 65532.
  done
  [ "$failures" = 0 ] || { say "$failures difference(s) between the Dockerfile and hack/images.sh"; exit 1; }
  say "the images agree with the Dockerfile (user, entrypoint, command, environment, ports)"
  ;;
*) echo "usage: $0 build|check NODE_DIR [TAG]" >&2; exit 2 ;;
esac
