#!/usr/bin/env bash
# Boot-time and VMM memory benchmark (not a test): vmm vs QEMU 10 `-M microvm` booting the
# same Debian kernel (ELF vmlinux, PVH entry) and busybox initramfs, alternating, median of
# N runs, all in one test-host session (nested KVM inside QEMU/TCG on machines whose own
# /dev/kvm cannot run Linux; on a host with hardware KVM pass --direct).
#
#   scripts/bench-boot.sh [--runs N] [--vcpus N] [--mem-mib M] [--direct]
#
# Prints a Markdown table; record it with the command in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=5 vcpus=1 mem=256 direct=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --vcpus) vcpus=$2; shift 2 ;;
        --mem-mib) mem=$2; shift 2 ;;
        --direct) direct=1; shift ;;
        *) echo "bench-boot: unknown argument $1" >&2; exit 2 ;;
    esac
done

scripts/guest-assets.sh >&2
cargo build --release -p vmm >&2
scripts/testhost.sh setup >&2
qemu=$(scripts/testhost.sh qemu-path)
bench=(python3 scripts/bench/boot_bench.py --vmm "$PWD/target/release/vmm" --qemu "$qemu"
       --kernel "$PWD/.cache/guest/vmlinux" --initrd "$PWD/.cache/guest/initramfs.cpio.gz"
       --runs "$runs" --vcpus "$vcpus" --mem-mib "$mem")
if [ "$direct" = 1 ]; then
    exec "${bench[@]}"
fi
exec scripts/testhost.sh run --timeout 3000 -- "${bench[@]}"
