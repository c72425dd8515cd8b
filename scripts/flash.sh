#!/usr/bin/env bash
# Build a Nordic nRF52840-DK image and flash it through the board's debug
# probe (the on-board J-Link, or any probe probe-rs drives) with probe-rs.
#
#   scripts/flash.sh [ring|journal] [--probe VID:PID[:SERIAL]] [--chip-erase] [--build-only]
#
#   ring      the RAM retry-ring image, ferry-nrf52840-dk (profile firmware); the default
#   journal   the image with the agent's redb journal on the upper 512 KiB of
#             the internal flash, ferry-nrf52840-dk-journal (profile firmware-journal)
#
# Both images are built every time (they must keep building); the one named
# is flashed, verified and the chip reset to run it. Flashing erases only
# the sectors the image occupies: the journal region survives a reflash, so
# a firmware update keeps what the device had not yet delivered.
# --chip-erase wipes it too (a new journal identity at the next boot).
#
# probe-rs is not a build dependency: `cargo install probe-rs-tools --locked`
# (about 9 minutes). Without it, or with no probe attached, the script builds
# the images, says what is missing, and exits with status 3; the recipe,
# wiring and checks are in firmware/boards/nrf52840-dk/FLASHING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CHIP=nRF52840_xxAA
TARGET=thumbv7em-none-eabihf
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}")
RING=$TARGET_DIR/$TARGET/firmware/ferry-nrf52840-dk
JOURNAL=$TARGET_DIR/$TARGET/firmware-journal/ferry-nrf52840-dk-journal

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
}

image=ring probe=() erase=() build_only=0
while [ $# -gt 0 ]; do
    case $1 in
        ring | journal) image=$1 ;;
        --probe)
            [ $# -ge 2 ] || usage
            probe=(--probe "$2")
            shift
            ;;
        --chip-erase) erase=(--chip-erase) ;;
        --build-only) build_only=1 ;;
        *) usage ;;
    esac
    shift
done

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
echo "==> building the nRF52840-DK images"
# One board per command (firmware/README.md): its PAC turns on a
# cortex-m-rt feature the emulated board must not get.
cargo build --locked -p ferry-board-nrf52840-dk --target "$TARGET" --profile firmware
cargo build --locked -p ferry-board-nrf52840-dk --features journal --bin ferry-nrf52840-dk-journal \
    --target "$TARGET" --profile firmware-journal
echo "  ring     $RING"
echo "  journal  $JOURNAL"
elf=$RING
[ "$image" = journal ] && elf=$JOURNAL
if [ "$build_only" -eq 1 ]; then
    exit 0
fi

not_flashed() {
    echo
    echo "NOT FLASHED: $1" >&2
    echo "The $image image is built: $elf" >&2
    echo "Recipe and checks: firmware/boards/nrf52840-dk/FLASHING.md" >&2
    exit 3
}

if ! command -v probe-rs >/dev/null; then
    not_flashed "probe-rs is not installed (cargo install probe-rs-tools --locked, about 9 minutes)."
fi
echo "==> looking for a debug probe"
probes=$(probe-rs list 2>&1) || not_flashed "probe-rs list failed: $probes"
echo "$probes"
if ! grep -q '^\[[0-9]*\]' <<<"$probes"; then
    not_flashed "no debug probe is attached. Connect the DK's J-Link USB port (J2, next to the power switch), switch the board on, and run this again."
fi
if [ ${#probe[@]} -eq 0 ] && [ "$(grep -c '^\[[0-9]*\]' <<<"$probes")" -gt 1 ]; then
    not_flashed "several probes are attached: choose one with --probe VID:PID[:SERIAL] (listed above)."
fi

echo "==> flashing $image ($elf) to $CHIP"
probe-rs download --chip "$CHIP" "${probe[@]}" "${erase[@]}" --verify "$elf"
probe-rs reset --chip "$CHIP" "${probe[@]}"
echo "flashed, verified and reset: the board runs the $image image."
echo "Its link is on the J-Link's serial port (115200 8N1, /dev/ttyACM0 here): add a [[device_serial]] to the agent."
