#!/usr/bin/env bash
# NHN's reference files for the FM export format: the XSD, the sample organisation file, the sample
# patient and a real Index.txt. The one place in the project that knows where they come from; every
# test, benchmark and script asks it. Prints the folder that holds them, each checked by SHA-256.
#
#   hack/nhn-reference.sh            print the folder (fetching the files once when needed)
#
# Where from, in this order:
#   1. SFM_FORMAT_DIR, when set (a copy of the files, e.g. NHN's data_migration folder);
#   2. ../shared/sfm-format beside the repository, when present (the team's shared folder);
#   3. NHN's public repository NorskHelsenett/SFM.tools at the pinned commit below, downloaded once
#      into ~/.cache/sfm-migration/nhn-reference-<commit> (SFM_REFERENCE_OFFLINE=1 forbids it).
# The pin works like any pinned dependency: a file whose SHA-256 differs is refused, wherever it
# came from. When nothing provides the files, one sentence says what is missing and how to provide it,
# and the exit status is 1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

repository=NorskHelsenett/SFM.tools
# The commit that last changed these files (May 2024); verified against the team's copy.
commit=2e6c114ac70a2a0eafff525b7d2bb5aae2449144
# name in the folder, path in NHN's repository, SHA-256
files=(
  "FmSfmExportImportFormatDefinition.xsd data_migration/FmSfmExportImportFormatDefinition.xsd 1b9e7cb3d2cf3dac11d2780f946e4a32a3d443b950898e7e991cd9ea419e4487"
  "ExportData.zip data_migration/examples/ExportData.zip 45b6b1b387a1325f52684ce51d64be18824b2549a9ebdede32cebdaf53444fbd"
  "0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.zip data_migration/examples/0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.zip 8bdde1292d7dbd48b1d823ca53de4206eff8639899e2e494bafdc5b4e3a1c1d5"
  "Index.txt data_migration/examples/Index.txt 4159f409d36a06532ebb42d4d8d0de3e79621f30a426ef9f789a8c4bfe4a9270"
)

fail() {
  echo "nhn-reference: $*" >&2
  exit 1
}

# The first file of the folder that is missing or differs from the pin, if any.
first_problem() {
  local dir=$1 entry name path sum
  for entry in "${files[@]}"; do
    read -r name path sum <<<"$entry"
    if [ ! -f "$dir/$name" ]; then
      echo "$name is missing"
      return
    fi
    if [ "$(sha256sum "$dir/$name" | cut -d' ' -f1)" != "$sum" ]; then
      echo "$name differs from NHN's file at $repository@${commit:0:12} (SHA-256)"
      return
    fi
  done
}

if [ -n "${SFM_FORMAT_DIR:-}" ]; then
  problem=$(first_problem "$SFM_FORMAT_DIR")
  [ -z "$problem" ] || fail "SFM_FORMAT_DIR=$SFM_FORMAT_DIR does not hold NHN's reference files: $problem."
  cd "$SFM_FORMAT_DIR" && pwd
  exit 0
fi

shared="$root/../shared/sfm-format"
if [ -d "$shared" ] && [ -z "$(first_problem "$shared")" ]; then
  cd "$shared" && pwd
  exit 0
fi

cache="${SFM_CACHE_DIR:-$HOME/.cache/sfm-migration}/nhn-reference-${commit:0:12}"
if [ -d "$cache" ] && [ -z "$(first_problem "$cache")" ]; then
  echo "$cache"
  exit 0
fi

help="set SFM_FORMAT_DIR to a folder with FmSfmExportImportFormatDefinition.xsd, ExportData.zip, 0e7bfd89-ff43-4c5a-a9e2-1af46ae33672.zip and Index.txt from $repository (data_migration), or allow this script to download them"
[ "${SFM_REFERENCE_OFFLINE:-}" != 1 ] \
  || fail "NHN's reference files are not here and downloading is off (SFM_REFERENCE_OFFLINE=1): $help."
command -v curl >/dev/null || fail "NHN's reference files are not here and curl is missing to download them: $help."

staging=$(mktemp -d "${cache}.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$cache")" && mktemp -d "${cache}.tmp.XXXXXX"; })
trap 'rm -rf "$staging"' EXIT
for entry in "${files[@]}"; do
  read -r name path _ <<<"$entry"
  url="https://raw.githubusercontent.com/$repository/$commit/${path// /%20}"
  curl -fsSL --retry 2 --connect-timeout 10 --max-time 120 -o "$staging/$name" "$url" 2>/dev/null \
    || fail "NHN's reference files are not here and could not be downloaded from $repository@${commit:0:12}: $help."
done
problem=$(first_problem "$staging")
[ -z "$problem" ] || fail "the download from $repository@${commit:0:12} is not what was pinned: $problem."
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
