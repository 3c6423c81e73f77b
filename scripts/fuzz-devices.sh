#!/usr/bin/env bash
# Fuzzes the virtio-blk request parser and the descriptor-chain walker (the guest controls
# the whole queue) with cargo-fuzz (libFuzzer, nightly toolchain) for a bounded time.
#
#   scripts/fuzz-devices.sh [SECONDS]     (default 60; FUZZ_SECONDS also works)
#
# Installs cargo-fuzz on first use. Crashes land in devices/fuzz/artifacts/ and make the
# script exit non-zero.
set -euo pipefail
seconds="${1:-${FUZZ_SECONDS:-60}}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-devices: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz-devices: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 1
fi
cd "$repo_root/devices/fuzz"
unset CARGO_TARGET_DIR
for target in virtio_blk_queue; do
    mkdir -p "corpus/$target"
    echo "fuzz-devices: $target for ${seconds}s"
    nice cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1
done
echo "fuzz-devices: no crashes"
