#!/usr/bin/env bash
# Network benchmark (not a test): the same guest image (tools initramfs: iperf3, sockperf)
# with virtio-net on a tap under vmm, the same under QEMU 10 (q35, virtio-net-pci, vhost
# off), and with an SR-IOV VF passed through by vmm ("enhanced" vs "emulated", as on EC2).
# Measures iperf3 TCP 1/4 streams both ways, UDP 64-byte packets per second, sockperf TCP
# ping-pong latency and CPU per Gbit/s; prints a Markdown table, writes JSON and a PNG
# chart (bench-chart, plotters) under target/bench/.
#
#   scripts/bench-net.sh [--mode all|vmm-vs-qemu|enhanced] [--seconds N] [--runs N]
#                        [--direct [--pf IFACE --pf-ip A --vf-guest-ip B]]
#
# Default: everything inside the test host (nested KVM in QEMU/TCG, QEMU's igb as the
# SR-IOV NIC): the numbers prove the harness, not hardware speed. --direct runs on this
# host as is (hardware KVM, a real SR-IOV PF given by --pf whose VFs bind to vfio-pci);
# see docs/enhanced-networking.md "Benchmarking on real hardware".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

direct=0 args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) direct=1; shift ;;
        --mode|--seconds|--runs|--pf|--pf-ip|--pf-prefix|--vf-guest-ip|--vcpus|--mem-mib)
            args+=("$1" "$2"); shift 2 ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "bench-net: unknown argument $1" >&2; exit 2 ;;
    esac
done

bash scripts/setup/vmm.sh >&2
cargo build --release -p vmm -p sriov -p bench-chart >&2
qemu=$(scripts/testhost.sh qemu-path)
out=$PWD/target/bench
mkdir -p "$out"
bench=(python3 scripts/bench/net_bench.py --vmm "$PWD/target/release/vmm" --qemu "$qemu"
       --sriovctl "$PWD/target/release/sriovctl"
       --kernel "$PWD/.cache/guest/vmlinux" --bzimage "$PWD/.cache/guest/vmlinuz"
       --initrd "$PWD/.cache/guest/initramfs-tools.cpio.gz" "${args[@]}")
# The harness prints its table and a BENCH-JSON line (the test host cannot write here).
if [ "$direct" = 1 ]; then
    "${bench[@]}" | tee "$out/net.log"
else
    # 2 GiB: with more, QEMU's igb VFs never report link in the test host (see
    # docs/test-host.md).
    scripts/testhost.sh run --mem 2048 --timeout 3600 -- "${bench[@]}" | tee "$out/net.log"
fi
grep '^BENCH-JSON ' "$out/net.log" | tail -n 1 | cut -c12- > "$out/net.json"
target/release/bench-chart "$out/net.json" "$out/net.png"
echo "table above; JSON $out/net.json, chart $out/net.png"
