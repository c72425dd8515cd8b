#!/usr/bin/env bash
# Firmware: cross-build the boards, report and check their sizes, lint them for
# their target, and boot the emulated board in QEMU as a gateway would.
#
#   scripts/firmware.sh setup    # rustup target + apt packages (idempotent)
#   scripts/firmware.sh build    # release builds (profiles `firmware`, `firmware-journal`) + sizes + budgets
#                                # (Cortex-M4F and Cortex-M0/M0+ boards)
#   scripts/firmware.sh clippy   # clippy -D warnings: each board for its target, the smoke test
#   scripts/firmware.sh smoke    # build the QEMU boards (M4, M0), run tests/qemu_smoke.rs
#   scripts/firmware.sh wear     # the journal build's projected flash lifetime (fails under 10 years)
#   scripts/firmware.sh all      # build, clippy, smoke, wear (the default)
#
# Host tests of the library are plain `cargo test -p ferry-firmware`.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=thumbv7em-none-eabihf
# Cortex-M0/M0+ (ARMv6-M: no compare-and-swap, no FPU).
M0_TARGET=thumbv6m-none-eabi
PROFILE=firmware
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}")
# The RAM-ring images. target : board package : binary : flash budget
# (bytes) : static RAM budget (bytes); 0 = none. The ARMv6-M images are
# also checked to link no atomic read-modify-write emulation.
BOARDS=(
    "$TARGET:ferry-board-mps2-an386:ferry-mps2-an386:32768:8192"
    "$TARGET:ferry-board-nrf52840-dk:ferry-nrf52840-dk:0:0"
    "$M0_TARGET:ferry-board-rp2040-pico:ferry-rp2040-pico:32768:8192"
    "$M0_TARGET:ferry-board-microbit:ferry-microbit:32768:8192"
)
# The journal images (firmware/README.md, "Two builds"): their own profile
# and feature `journal`. board package : binary : flash budget : static RAM
# budget (bytes). The emulated board's: 512 KiB flash (also the linker region
# in memory-journal.x) and 128 KiB RAM for statics (the heap is a static
# array) plus the stack's measured peak, which the power-loss test prints;
# the static part is checked here. The nRF52840-DK's: the 512 KiB of flash
# below its journal region (journal.x asserts it too) and the part's 256 KiB
# of RAM (the stack gets what the statics leave).
JOURNAL_PROFILE=firmware-journal
JOURNALS=(
    "ferry-board-mps2-an386:ferry-mps2-an386-journal:$((512 * 1024)):$((128 * 1024))"
    "ferry-board-nrf52840-dk:ferry-nrf52840-dk-journal:$((512 * 1024)):$((256 * 1024))"
)

setup() {
    rustup target add "$TARGET" "$M0_TARGET"
    if ! command -v qemu-system-arm >/dev/null || ! command -v arm-none-eabi-size >/dev/null; then
        apt-get update
        apt-get install -y qemu-system-arm binutils-arm-none-eabi
    fi
}

objdump() {
    if command -v arm-none-eabi-objdump >/dev/null; then
        echo arm-none-eabi-objdump
    elif command -v llvm-objdump >/dev/null; then
        echo llvm-objdump
    else
        echo "no arm-none-eabi-objdump or llvm-objdump: apt-get install binutils-arm-none-eabi" >&2
        exit 1
    fi
}

# Prints an image's flash and static RAM and checks them against its
# budgets (0: none); returns 1 when over. $5 is a note after the RAM figure.
# Flash: every allocated section loaded below 0x2000_0000 (code, constants,
# the initial values of .data); RAM: every allocated section that lives at
# or above it (.data, .bss, .uninit), whatever its flags say.
report_size() {
    local elf=$1 bin=$2 flash_budget=$3 ram_budget=$4 note=$5 flash ram
    local size vma lma
    flash=0 ram=0
    # `objdump -h`: a line "idx name size vma lma offset align", then its flags.
    while read -r first second rest; do
        if [[ $first =~ ^[0-9]+$ ]]; then
            read -r size vma lma _ <<<"$rest"
        elif [[ "$first $second $rest" == *ALLOC* ]]; then
            if ((16#$lma < 0x20000000)); then flash=$((flash + 16#$size)); fi
            if ((16#$vma >= 0x20000000)); then ram=$((ram + 16#$size)); fi
        fi
    done < <("$(objdump)" -h "$elf")
    printf 'firmware size: %-25s flash %6d B (%5.1f KiB)  static RAM %6d B (%5.1f KiB%s)' \
        "$bin" "$flash" "$(awk "BEGIN{print $flash/1024}")" "$ram" "$(awk "BEGIN{print $ram/1024}")" "$note"
    if [ "$flash_budget" -gt 0 ]; then
        printf '  budget %d / %d B' "$flash_budget" "$ram_budget"
        if [ "$flash" -gt "$flash_budget" ] || [ "$ram" -gt "$ram_budget" ]; then
            printf '  OVER BUDGET\n'
            return 1
        fi
    fi
    printf '\n'
}

# ARMv6-M has no atomic read-modify-write: an image that links a libcall
# emulating one (`__sync_*`, `__atomic_*`) or portable-atomic's fallback
# would hide a lock where the code promises load/store only.
check_no_rmw_atomics() {
    local elf=$1 bin=$2 nm
    nm=$(objdump)
    nm=${nm%objdump}nm
    if "$nm" "$elf" | grep -Eiq '__sync_|__atomic_|portable_atomic'; then
        echo "firmware: $bin links atomic read-modify-write emulation:" >&2
        "$nm" "$elf" | grep -Ei '__sync_|__atomic_|portable_atomic' >&2
        return 1
    fi
}

build() {
    local over=0
    objdump >/dev/null
    for entry in "${BOARDS[@]}"; do
        IFS=: read -r target pkg bin flash_budget ram_budget <<<"$entry"
        # One package per invocation: cargo must not unify features across
        # boards (the nRF and RP2040 PACs turn on cortex-m-rt's `device`).
        cargo build -p "$pkg" --target "$target" --profile "$PROFILE"
        report_size "$TARGET_DIR/$target/$PROFILE/$bin" "$bin" "$flash_budget" "$ram_budget" "" || over=1
        if [ "$target" = "$M0_TARGET" ]; then
            check_no_rmw_atomics "$TARGET_DIR/$target/$PROFILE/$bin" "$bin" || over=1
        fi
    done
    for entry in "${JOURNALS[@]}"; do
        IFS=: read -r pkg bin flash_budget ram_budget <<<"$entry"
        cargo build -p "$pkg" --features journal --bin "$bin" \
            --target "$TARGET" --profile "$JOURNAL_PROFILE"
        report_size "$TARGET_DIR/$TARGET/$JOURNAL_PROFILE/$bin" "$bin" "$flash_budget" "$ram_budget" \
            ", heap included" || over=1
    done
    if [ "$over" -ne 0 ]; then
        echo "firmware: a board is over its size budget (or links atomics it must not)" >&2
        exit 1
    fi
}

clippy() {
    # The library with its feature-gated QEMU smoke test, on the host.
    cargo clippy -p ferry-firmware --all-targets --features qemu-smoke -- -D warnings
    for entry in "${BOARDS[@]}"; do
        IFS=: read -r target pkg _ <<<"$entry"
        cargo clippy -p "$pkg" --target "$target" --profile "$PROFILE" -- -D warnings
    done
    # The journal build: the library's features (host tests, the nRF
    # journal's storage among them) and the images.
    cargo clippy -p ferry-firmware --all-targets --features journal,nor-flash -- -D warnings
    for entry in "${JOURNALS[@]}"; do
        IFS=: read -r pkg bin _ <<<"$entry"
        cargo clippy -p "$pkg" --features journal --bin "$bin" \
            --target "$TARGET" --profile "$JOURNAL_PROFILE" -- -D warnings
    done
}

smoke() {
    cargo build -p ferry-board-mps2-an386 --target "$TARGET" --profile "$PROFILE"
    cargo build -p ferry-board-microbit --target "$M0_TARGET" --profile "$PROFILE"
    FERRY_MPS2_ELF="$TARGET_DIR/$TARGET/$PROFILE/ferry-mps2-an386" \
        FERRY_MICROBIT_ELF="$TARGET_DIR/$M0_TARGET/$PROFILE/ferry-microbit" \
        cargo test -p ferry-firmware --features qemu-smoke --test qemu_smoke
}

# The journal build's flash endurance: the real node on a simulated flash
# with each layout (firmware/README.md, "Wear"), 10 simulated days at the
# default sampling with an acking gateway; prints the projected lifetime
# and fails under 10 years. Dev profile: it shares the tests' build.
wear() {
    cargo run -p ferry-firmware --features journal --example node_wear -- --check --days 10
}

case "${1:-all}" in
setup) setup ;;
build) build ;;
clippy) clippy ;;
smoke) smoke ;;
wear) wear ;;
all)
    build
    clippy
    smoke
    wear
    ;;
*)
    echo "usage: $0 [setup|build|clippy|smoke|wear|all]" >&2
    exit 2
    ;;
esac
