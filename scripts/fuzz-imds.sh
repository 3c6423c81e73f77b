#!/usr/bin/env bash
# Fuzzes the imds HTTP parser + handler and the in-VMM frame responder with cargo-fuzz
# (libFuzzer, nightly toolchain) for a bounded time per target.
#
#   scripts/fuzz-imds.sh [SECONDS_PER_TARGET]     (default 60; FUZZ_SECONDS also works)
#
# Installs cargo-fuzz with `cargo install` on first use. Crashes land in imds/fuzz/artifacts/<target>/
# and make the script exit non-zero.
set -euo pipefail

seconds="${1:-${FUZZ_SECONDS:-60}}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$repo_root/imds/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-imds: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz-imds: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 1
fi

cd "$fuzz_dir"
# The main workspace's target dir setting would mix sanitizer builds with normal ones.
unset CARGO_TARGET_DIR
for target in http_request responder_frames responder_tcp; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    if [ -d "seeds/$target" ]; then
        cp -n "seeds/$target"/* "$corpus"/ 2>/dev/null || true
    fi
    echo "fuzz-imds: $target for ${seconds}s"
    nice cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -print_final_stats=1
done
echo "fuzz-imds: no crashes"
