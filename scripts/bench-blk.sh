#!/usr/bin/env bash
# Block benchmark (not a test): fio in the same guest image (tools initramfs) on one
# virtio-blk disk under vmm and under QEMU 10 (q35, virtio-blk-pci), on the same
# backing: a raw file (instance store) and an ebsd volume over NBD. 4k random read/write
# IOPS (QD32), 1 MiB sequential read/write. Prints a Markdown table; JSON under
# target/bench/blk.json.
#
#   scripts/bench-blk.sh [--seconds N] [--runs N] [--backings raw,ebs] [--direct]
#
# Default: inside the test host (nested KVM under TCG: the numbers compare the two VMMs
# in the same conditions, not hardware speed). --direct runs on this host (hardware KVM).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

direct=0 args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) direct=1; shift ;;
        --seconds|--runs|--backings|--disk-mib|--mem-mib) args+=("$1" "$2"); shift 2 ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "bench-blk: unknown argument $1" >&2; exit 2 ;;
    esac
done

bash scripts/setup/vmm.sh >&2
cargo build --release -p vmm -p ebs-blockdev >&2
qemu=$(scripts/testhost.sh qemu-path)
out=$PWD/target/bench
mkdir -p "$out"
bench=(python3 scripts/bench/blk_bench.py --vmm "$PWD/target/release/vmm" --qemu "$qemu"
       --ebsd "$PWD/target/release/ebsd" --ebs "$PWD/target/release/ebs"
       --kernel "$PWD/.cache/guest/vmlinux" --bzimage "$PWD/.cache/guest/vmlinuz"
       --initrd "$PWD/.cache/guest/initramfs-tools.cpio.gz" "${args[@]}")
# The harness prints its table and a BENCH-JSON line (the test host cannot write here).
if [ "$direct" = 1 ]; then
    "${bench[@]}" | tee "$out/blk.log"
else
    scripts/testhost.sh run --mem 2048 --timeout 3600 -- "${bench[@]}" | tee "$out/blk.log"
fi
grep '^BENCH-JSON ' "$out/blk.log" | tail -n 1 | cut -c12- > "$out/blk.json"
echo "table above; JSON $out/blk.json"
