#!/usr/bin/env bash
# Ferry's whole test suite: the one command CI runs (.ci/run) and the README
# gives. Safe to run again and again: it installs only what is missing.
#
#   scripts/test.sh            everything
#
# Steps: toolchain and packages → fmt → clippy (host and firmware targets) →
# no_std builds → firmware cross-builds with their sizes (the RAM-ring images
# and the journal image the power-loss test runs) → every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

step "toolchain and packages"
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    rustup target add thumbv7em-none-eabihf
fi
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        rustup component add "$component"
    fi
done
missing=()
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null || missing+=(binutils-arm-none-eabi)
# The PromQL conformance test runs Debian's Prometheus (2.42); the fleet
# page's browser test Debian's Chromium.
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
command -v readelf >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The fleet page's browser test drives Chromium with playwright-core (npm,
# pinned in tests/browser/package-lock.json; no browser download).
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    npm ci --prefix tests/browser --no-audit --no-fund
fi
echo "rustc $(rustc --version | cut -d' ' -f2), $(qemu-system-arm --version | head -1)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace, all targets)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --locked -p ferry-agent --features qemu --all-targets -- -D warnings
cargo clippy --locked -p ferry-firmware --features nor-flash --all-targets -- -D warnings

step "cargo clippy (firmware boards, their targets)"
scripts/firmware.sh clippy

step "no_std builds for thumbv7em-none-eabihf"
cargo build --locked -p ferry-proto --target thumbv7em-none-eabihf --no-default-features
cargo build --locked -p ferry-agent --lib --target thumbv7em-none-eabihf --no-default-features
cargo build --locked -p ferry-firmware --features nor-flash --target thumbv7em-none-eabihf

# The end-to-end tests run the emulated board: build its image first.
step "firmware cross-builds and sizes"
scripts/firmware.sh build

step "servers the storage-sink tests write to"
scripts/sink-servers.sh

step "binaries the end-to-end tests run"
cargo build --locked --workspace --bins

step "build tricks in effect (no libm, zstd with the fast strategy only)"
scripts/check-build.sh target/debug/ferry-agent

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
{
    cargo test --workspace --locked &&
        cargo test --locked -p ferry-agent --features qemu --test device_qemu &&
        cargo test --locked -p ferry-firmware --features nor-flash --test nor_flash &&
        cargo test --locked -p ferry-firmware --features journal --test journal_node &&
        cargo test --locked -p ferry-firmware --features journal,nor-flash --test journal_nor &&
        scripts/firmware.sh smoke
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
if [ "$status" -ne 0 ]; then
    echo "tests: $passed passed, $failed failed"
    exit "$status"
fi

echo
echo "tests: $passed passed, $failed failed"
