#!/usr/bin/env bash
# Checks that the build tricks took effect in a built agent binary (default:
# target/debug/ferry-agent; scripts/test.sh runs it after building the
# binaries). Each trick saves resident memory and fails silently when broken:
#
# 1. No `libm.so` needed: agent/src/main.rs defines `pow` (the only libm
#    function the agent calls, from tokio's scheduler) so the dynamic linker
#    does not load libm (~0.5 MiB RSS). A new caller of another libm function
#    brings it back; `readelf -d` shows it.
# 2. zstd built with Ferry's defines (.cargo/config.toml, `[env] CFLAGS`):
#    only the `fast` block compressor and one Huffman decoder. A `CFLAGS`
#    already in the environment (cross-compiling SDKs set one) *replaces*
#    the config's value, and zstd then builds every strategy (~0.6 MiB more
#    code); its symbols show it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/ferry-agent}
fail() { printf 'check-build: %s\n' "$*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin is missing: cargo build -p ferry-agent first"

needed=$(readelf -d "$bin" | awk '/NEEDED/ {print $NF}' | tr -d '[]')
if grep -qx 'libm.so.6' <<<"$needed"; then
    fail "$bin needs libm.so.6 again: a libm function other than pow is called (readelf -d; see agent/src/main.rs)"
fi
echo "ok: $bin does not need libm ($(tr '\n' ' ' <<<"$needed"))"

symbols=$(nm "$bin" 2>/dev/null | awk '{print $NF}')
grep -qx 'ZSTD_compressBlock_fast' <<<"$symbols" ||
    fail "no zstd fast compressor in $bin: is it built with debug symbols?"
excluded=$(grep -E '^ZSTD_compressBlock_(doubleFast|greedy|lazy|lazy2|btlazy2|btopt|btultra|btultra2)($|_)' <<<"$symbols" || true)
if [ -n "$excluded" ]; then
    flags=$(sed -n 's/^CFLAGS = "\(.*\)"$/\1/p' .cargo/config.toml)
    fail "zstd in $bin was built with every strategy: a CFLAGS in the environment replaced .cargo/config.toml's. Build with CFLAGS=\"\$CFLAGS $flags\" (found: $(head -3 <<<"$excluded" | tr '\n' ' '))"
fi
echo "ok: zstd in $bin has only the fast block compressor"
