#!/usr/bin/env bash
# Set up everything and boot the default guest (Debian's 6.12 kernel with the busybox
# initramfs from scripts/guest-assets.sh) to a shell prompt on its serial console.
# `exit` in the guest shell reboots it, which ends the VMM.
#
#   scripts/launch.sh [--vcpus N] [--mem-mib M]
#
# On a host with hardware KVM (kvm_intel / kvm_amd) vmm runs directly. On a host whose
# /dev/kvm is the nested kvm_pvm module (or without /dev/kvm), Linux cannot reach
# userspace, so this runs vmm inside the test host (QEMU 10 under TCG with nested SVM KVM,
# scripts/testhost.sh) and says so. Without a terminal on stdin the guest runs a short
# non-interactive session (prints its kernel, CPUs and memory) instead of a shell.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

vcpus=2
mem=512
while [ $# -gt 0 ]; do
    case "$1" in
        --vcpus) vcpus=$2; shift 2 ;;
        --mem-mib) mem=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "launch: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "launch: $*" >&2; }

kvm_kind() {
    if [ ! -c /dev/kvm ]; then echo none
    elif [ -d /sys/module/kvm_pvm ]; then echo pvm
    elif [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; then echo hardware
    else echo unknown
    fi
}

say "building the guest kernel and initramfs (cached in .cache/guest)"
scripts/guest-assets.sh
say "building vmm (release)"
cargo build --release -p vmm
vmm=$PWD/target/release/vmm

interactive=1
[ -t 0 ] || interactive=0
cmdline="console=ttyS0 quiet reboot=k panic=-1"
if [ "$interactive" = 0 ]; then
    # No terminal: run a fixed session in the guest and let it reboot.
    session='echo "guest: $(uname -sr), $(nproc) CPUs, $(awk "/MemTotal/ {print \$2}" /proc/meminfo) kB"; echo "guest: hello from the default image"'
    cmdline+=" vmm.run=$(printf '%s' "$session" | base64 -w0)"
    say "stdin is not a terminal: running a non-interactive guest session"
fi
args=(--kernel .cache/guest/vmlinux --initrd .cache/guest/initramfs.cpio.gz
      --vcpus "$vcpus" --mem-mib "$mem" --cmdline "$cmdline")

kind=$(kvm_kind)
if [ "$kind" = hardware ]; then
    say "hardware KVM found: starting vmm directly"
    exec "$vmm" "${args[@]}"
fi
case "$kind" in
    pvm) say "/dev/kvm is kvm_pvm (nested, cannot run Linux to userspace): running vmm inside the test host (QEMU 10, TCG + nested SVM); expect ~20 s to the prompt" ;;
    none) say "no /dev/kvm: running vmm inside the test host (QEMU 10 under TCG, nested SVM KVM)" ;;
    *) say "unknown KVM module: running vmm inside the test host to be safe" ;;
esac
scripts/testhost.sh setup
if [ "$interactive" = 1 ]; then
    exec scripts/testhost.sh shell -- "$vmm" "${args[@]}"
else
    exec scripts/testhost.sh run --timeout 600 -- "$vmm" "${args[@]}"
fi
