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
for target in thumbv7em-none-eabihf thumbv6m-none-eabi; do
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
done
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        rustup component add "$component"
    fi
done
missing=()
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null || missing+=(binutils-arm-none-eabi)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
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

step "no_std builds for thumbv7em-none-eabihf and thumbv6m-none-eabi (no CAS)"
cargo build --locked -p ferry-proto --target thumbv7em-none-eabihf --no-default-features
cargo build --locked -p ferry-agent --lib --target thumbv7em-none-eabihf --no-default-features
cargo build --locked -p ferry-firmware --features nor-flash --target thumbv7em-none-eabihf
cargo build --locked -p ferry-proto --target thumbv6m-none-eabi --no-default-features
cargo build --locked -p ferry-firmware --target thumbv6m-none-eabi

# The end-to-end tests run the emulated board: build its image first.
step "firmware cross-builds and sizes"
scripts/firmware.sh build

step "binaries the end-to-end tests run"
cargo build --locked --workspace --bins

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
        cargo test --locked -p ferry-firmware --features journal --test journal_power_cut &&
        cargo test --locked -p ferry-firmware --features nor-flash --test report_log &&
        scripts/firmware.sh smoke &&
        scripts/firmware.sh wear
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
grep '^firmware lifetime: ' "$log" || true
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
if [ "$status" -ne 0 ]; then
    echo "tests: $passed passed, $failed failed"
    exit "$status"
fi

echo
echo "tests: $passed passed, $failed failed"
