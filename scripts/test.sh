#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run runs it on a clean
# clone). Installs what the tests need (scripts/setup/*.sh: Debian packages, a Python
# venv, guest kernel and initramfs, the QEMU 10 test host), then checks formatting and
# lints and runs every test, including the test-host tier that boots Linux on nested KVM.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p vmm     extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "set-up"
for setup in scripts/setup/*.sh; do
    bash "$setup"
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The fuzz targets' code is behind `--cfg fuzzing`, which neither clippy nor the tests
# compile: check it here so a break shows in minutes, not after the test-host tier.
step "cargo check --cfg fuzzing"
RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR=target/cfg-fuzzing cargo check -p devices

step "cargo test"
cargo test --workspace "$@"

# Bounded fuzzing runs, when a fuzz script exists and cargo-fuzz is usable.
for fuzz in scripts/fuzz-*.sh; do
    [ -e "$fuzz" ] || continue
    step "$fuzz (bounded)"
    bash "$fuzz" "${FUZZ_SECONDS:-60}"
done

step "all tests passed"
