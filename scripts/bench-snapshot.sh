#!/usr/bin/env bash
# Snapshot/restore benchmark (not a test): boot the Debian guest, fill part of its memory
# with random data (so the memory file has that much to write), run a counter, then pause +
# snapshot through the API, SIGKILL the vmm and restore in a new one; N runs, all in one
# test-host session (nested KVM inside QEMU/TCG on machines whose own /dev/kvm cannot run
# Linux; on a host with hardware KVM pass --direct).
#
#   scripts/bench-snapshot.sh [--runs N] [--mem-mib M] [--fill-mib F] [--direct]
#
# Prints a Markdown table; record it with the command in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=3 mem=512 fill=128 direct=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --mem-mib) mem=$2; shift 2 ;;
        --fill-mib) fill=$2; shift 2 ;;
        --direct) direct=1; shift ;;
        *) echo "bench-snapshot: unknown argument $1" >&2; exit 2 ;;
    esac
done

scripts/guest-assets.sh >&2
cargo build --release -p vmm >&2
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
bench=(bash scripts/bench/snapshot_bench.sh "$target_dir/release/vmm"
       "$PWD/.cache/guest/vmlinux" "$PWD/.cache/guest/initramfs.cpio.gz" "$runs" "$mem" "$fill")
if [ "$direct" = 1 ]; then
    exec "${bench[@]}"
fi
scripts/testhost.sh setup >&2
# The memory files live in the test host's /tmp (RAM): give it room for them.
exec scripts/testhost.sh run --mem $((mem * 2 + 1024)) --timeout 3000 -- "${bench[@]}"
