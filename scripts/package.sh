#!/usr/bin/env bash
# Gateway and server builds, and their Debian packages.
#
#   scripts/package.sh          # build, strip, checksum and package everything below
#   scripts/package.sh setup    # only install what the builds need (idempotent)
#
# Builds (static musl where Rust ships the target; glibc through Zig where it
# does not, linked against an old glibc so the binary runs on old systems):
#
#   ferry-agent      profile edge     x86_64-unknown-linux-musl  aarch64-unknown-linux-musl
#                                     armv7-unknown-linux-gnueabihf (glibc 2.17)
#   ferry-collector  profile release  x86_64-unknown-linux-gnu (glibc 2.28)
#                                     aarch64-unknown-linux-gnu (glibc 2.28)
#
# C code (zstd, ring) is cross-compiled by `cargo zigbuild` with Zig from PyPI
# (`ziglang`): the default `cc` cannot link for these targets, and `cross`
# needs Docker. Output, in target/dist/ (or $FERRY_DIST):
#
#   bin/<binary>-<target>    stripped binaries
#   deb/*.deb                ferry-agent_<v>_{amd64,arm64,armhf}.deb, ferry-collector_<v>_{amd64,arm64}.deb
#   SHA256SUMS               of all of them
#
# and a table of sizes (before and after stripping, and each .deb).
#
# Environment:
#   FERRY_PACKAGE_PROFILE=P   build every binary with profile P instead (scripts/test.sh
#                             uses `cross-test`: no LTO, minutes instead of ~40)
#   FERRY_PACKAGE_BUILDS="…"  only these builds, as `binary:target` words; the target may
#                             carry Zig's glibc suffix (armv7-unknown-linux-gnueabihf.2.17)
#   FERRY_DEB_REVISION=N      Debian revision of the packages (default 1)
#   FERRY_DIST=DIR            output directory (default target/dist)
#
# A full run takes ~40 minutes on 2 cores (the agent's fat LTO, three times).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

DEFAULT_BUILDS="ferry-agent:x86_64-unknown-linux-musl ferry-agent:aarch64-unknown-linux-musl ferry-agent:armv7-unknown-linux-gnueabihf.2.17 ferry-collector:x86_64-unknown-linux-gnu.2.28 ferry-collector:aarch64-unknown-linux-gnu.2.28"
BUILDS=${FERRY_PACKAGE_BUILDS:-$DEFAULT_BUILDS}
DIST=$(realpath -m "${FERRY_DIST:-target/dist}")
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}")
REVISION=${FERRY_DEB_REVISION:-1}

profile_of() { # binary
    if [ -n "${FERRY_PACKAGE_PROFILE:-}" ]; then
        echo "$FERRY_PACKAGE_PROFILE"
    elif [ "$1" = ferry-agent ]; then
        echo edge
    else
        echo release
    fi
}

# Zig (PyPI `ziglang`): into the Python that runs it, or, where that Python
# refuses packages (Debian's, PEP 668), into a virtualenv of our own.
setup_zig() {
    if python3 -m ziglang version >/dev/null 2>&1; then
        return
    fi
    local venv=${XDG_CACHE_HOME:-$HOME/.cache}/ferry/zig-venv
    if [ -x "$venv/bin/python3" ] && "$venv/bin/python3" -m ziglang version >/dev/null 2>&1; then
        export CARGO_ZIGBUILD_PYTHON_PATH=$venv/bin/python3
        return
    fi
    echo "installing ziglang (PyPI)"
    if ! python3 -m pip install --quiet ziglang 2>/dev/null; then
        if ! python3 -m venv "$venv" 2>/dev/null; then
            sudo_if_needed apt-get update -qq
            sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            python3 -m venv "$venv"
        fi
        "$venv/bin/python3" -m pip install --quiet ziglang
        export CARGO_ZIGBUILD_PYTHON_PATH=$venv/bin/python3
    fi
}

setup() {
    local installed targets=() t
    installed=$(rustup target list --installed)
    for entry in $BUILDS; do
        t=${entry#*:}
        t=${t%.2.*}
        if ! grep -qx "$t" <<<"$installed" && [[ ! " ${targets[*]} " =~ " $t " ]]; then
            targets+=("$t")
        fi
    done
    if [ ${#targets[@]} -gt 0 ]; then
        rustup target add "${targets[@]}"
    fi
    if ! rustup component list --installed | grep -q '^llvm-tools'; then
        rustup component add llvm-tools
    fi
    setup_zig
    for tool in cargo-zigbuild cargo-deb; do
        if ! command -v "$tool" >/dev/null; then
            echo "installing $tool (crates.io)"
            cargo install --locked --quiet "$tool"
        fi
    done
    echo "zig $("${CARGO_ZIGBUILD_PYTHON_PATH:-python3}" -m ziglang version), $(cargo-zigbuild --version), $(cargo deb --version)"
}

# Strips any architecture: llvm-strip from rustup's llvm-tools.
llvm_strip() {
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    echo "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-strip"
}

bytes() { stat -c %s "$1"; }
mib() { awk "BEGIN{printf \"%.2f MiB\", $1/1048576}"; }

build() {
    local binary=$1 zig_target=$2 profile target
    profile=$(profile_of "$binary")
    target=${zig_target%.2.*}
    step "$binary for $zig_target (profile $profile)"
    local started=$SECONDS
    cargo zigbuild --locked --profile "$profile" --target "$zig_target" -p "$binary" --bin "$binary"
    echo "built in $((SECONDS - started)) s"
}

deb_arch() {
    case $1 in
        x86_64-*) echo amd64 ;;
        aarch64-*) echo arm64 ;;
        armv7-*) echo armhf ;;
        *) echo "no Debian architecture for $1" >&2; exit 1 ;;
    esac
}

main() {
    step "toolchain"
    setup
    for entry in $BUILDS; do
        build "${entry%%:*}" "${entry#*:}"
    done

    step "strip, package, checksum"
    rm -rf "$DIST"
    mkdir -p "$DIST/bin" "$DIST/deb"
    local strip version rows=()
    strip=$(llvm_strip)
    for entry in $BUILDS; do
        local binary=${entry%%:*} zig_target=${entry#*:} target profile out before after variant=() deb
        target=${zig_target%.2.*}
        profile=$(profile_of "$binary")
        out=$TARGET_DIR/$target/$profile/$binary
        before=$(bytes "$out")
        # In place, so that cargo-deb packages the stripped binary; cargo
        # relinks it on the next build that changes anything.
        "$strip" --strip-all "$out"
        after=$(bytes "$out")
        cp "$out" "$DIST/bin/$binary-$target"
        if [ "$binary" = ferry-agent ] && [ "$(deb_arch "$target")" = armhf ]; then
            variant=(--variant armhf)
        fi
        deb=$(cargo deb --locked -q -p "$binary" --target "$target" --profile "$profile" \
            --no-build --no-strip --deb-revision "$REVISION" -o "$DIST/deb/" "${variant[@]}" 2>&1 |
            grep -v -e 'No \$auto deps' -e 'Failed to find dependency specification' | tail -n 1)
        if [ ! -f "$deb" ]; then
            echo "cargo deb did not make a package for $binary on $target: $deb" >&2
            exit 1
        fi
        rows+=("$(printf '%-16s %-32s %-8s %10s %12s   %s (%s)' "$binary" "$target" "$profile" \
            "$(mib "$before")" "$(mib "$after")" "$(basename "$deb")" "$(mib "$(bytes "$deb")")")")
    done
    (cd "$DIST" && sha256sum bin/* deb/*.deb >SHA256SUMS)

    step "sizes"
    printf '%-16s %-32s %-8s %10s %12s   %s\n' binary target profile built stripped package
    printf '%s\n' "${rows[@]}"
    echo
    echo "$DIST/SHA256SUMS:"
    sed 's/^/  /' "$DIST/SHA256SUMS"
}

case ${1:-all} in
    setup) setup ;;
    all) main ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
esac
