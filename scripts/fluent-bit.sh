#!/usr/bin/env bash
# Build Fluent Bit from its source, for the side-by-side run of the e2e
# benchmark (agent/benches/e2e.rs, FERRY_BENCH_FLUENT_BIT). The recipe is
# ../shared/PEERS.md's: a minimal build with the TCP and forward inputs, the
# forward and null outputs, filesystem storage (storage backlog) and TLS,
# against Debian's sqlite.
#
#   scripts/fluent-bit.sh [DIR]          # default DIR: target/fluent-bit
#
# Idempotent: an existing DIR/src is reused, an existing DIR/bin/fluent-bit
# is not rebuilt. Prints the binary's path on its last line, so that
#
#   FERRY_BENCH_FLUENT_BIT=$(scripts/fluent-bit.sh | tail -n1) \
#     cargo bench -p ferry-agent --bench e2e
#
# runs both. Source: FLUENT_BIT_GIT_DIR (a git directory of
# github.com/fluent/fluent-bit, e.g. a bare mirror: where the network has no
# GitHub, a fetched snapshot such as /work/.mirror/fluent+fluent-bit/repo;
# its HEAD is exported, the bundled sqlite3.c skipped), else a shallow clone
# of FLUENT_BIT_REF (default v5.1.1) from GitHub. Build jobs:
# FLUENT_BIT_JOBS (default 2); 6 minutes with 1 job on this 2-core machine
# kind (cmake, flex, bison and the -dev packages are installed when missing).
#
#   FLUENT_BIT_GIT_DIR=/work/.mirror/fluent+fluent-bit/repo scripts/fluent-bit.sh /work/fb
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/target/fluent-bit}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin=$dir/bin/fluent-bit
ref=${FLUENT_BIT_REF:-v5.1.1}
jobs=${FLUENT_BIT_JOBS:-2}

if [[ -x $bin ]]; then
    echo "fluent-bit: already built" >&2
    echo "$bin"
    exit 0
fi

# Build dependencies (Debian).
need=()
for tool in cmake flex bison pkg-config; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
for pkg in libyaml-dev libssl-dev libsqlite3-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get install -y "${need[@]}"
fi

src=$dir/src
if [[ ! -f $src/CMakeLists.txt ]]; then
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    if [[ -n ${FLUENT_BIT_GIT_DIR:-} ]]; then
        # A snapshot may lack its largest blobs (the bundled sqlite
        # amalgamation): skip that file (Debian's sqlite is used instead)
        # and report any other missing blob.
        sqlite=$(git --git-dir="$FLUENT_BIT_GIT_DIR" ls-tree --name-only HEAD lib/ |
            grep sqlite-amalgamation || true)
        git --git-dir="$FLUENT_BIT_GIT_DIR" archive HEAD -- . \
            ${sqlite:+":!$sqlite/sqlite3.c"} | tar -x -C "$src.tmp" ||
            echo "fluent-bit: some blobs were missing from $FLUENT_BIT_GIT_DIR (see above)" >&2
    else
        git clone --depth 1 --branch "$ref" https://github.com/fluent/fluent-bit "$src.tmp"
    fi
    mv "$src.tmp" "$src"
fi

# The minimal build does not include the upstream node header that
# src/flb_http_client.c uses (PEERS.md).
hc=$src/src/flb_http_client.c
if ! grep -q 'fluent-bit/flb_upstream_node.h' "$hc"; then
    sed -i 's|#include <fluent-bit/flb_http_client.h>|&\n#include <fluent-bit/flb_upstream_node.h>|' "$hc"
fi

build=$dir/build
mkdir -p "$build"
cd "$build"
if [[ ! -f CMakeCache.txt ]]; then
    cmake "$src" -DFLB_MINIMAL=On -DFLB_IN_TCP=On -DFLB_IN_FORWARD=On -DFLB_OUT_FORWARD=On \
        -DFLB_OUT_NULL=On -DFLB_IN_STORAGE_BACKLOG=On -DFLB_RELEASE=On -DFLB_TLS=On \
        -DFLB_AWS=Off -DFLB_SIGNV4=Off -DFLB_KAFKA=Off -DFLB_WASM=Off -DFLB_LUAJIT=Off \
        -DFLB_BACKTRACE=Off -DFLB_EXAMPLES=Off -DFLB_SHARED_LIB=Off \
        -DFLB_PREFER_SYSTEM_LIB_SQLITE=On >&2
fi
make -j"$jobs" fluent-bit-bin >&2
mkdir -p "$dir/bin"
cp "$build/bin/fluent-bit" "$bin"
"$bin" --version >&2
echo "$bin"
