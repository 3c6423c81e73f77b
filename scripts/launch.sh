#!/usr/bin/env bash
# Set up everything and launch an instance of the default AMI through the EC2-style front
# door (`ec2 run-instances` with no arguments: Debian's 6.12 kernel, a busybox + curl
# root volume on the block service, DHCP and IMDSv2 from the VMM), attached to its serial
# console. Ctrl-D detaches.
#
#   scripts/launch.sh              the front door (default)
#   scripts/launch.sh --vmm-only [--vcpus N] [--mem-mib M]
#                                  vmm alone with the busybox initramfs (no volumes)
#
# On a host with hardware KVM (kvm_intel / kvm_amd) it runs directly (state in
# $NITRO_STATE_DIR, default /var/lib/nitro). On a host whose /dev/kvm is the nested
# kvm_pvm module (or without /dev/kvm), Linux cannot reach userspace, so it runs inside
# the test host (QEMU 10 under TCG with nested SVM KVM, scripts/testhost.sh; state in the
# test host's /tmp) and says so. Without a terminal on stdin the instance runs user data
# that greets and powers off, which terminates it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

vcpus=2
mem=512
mode=front-door
while [ $# -gt 0 ]; do
    case "$1" in
        --vmm-only) mode=vmm; shift ;;
        --vcpus) vcpus=$2; shift 2 ;;
        --mem-mib) mem=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
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

if [ "$mode" = front-door ]; then
    say "set-up: guest kernel, default AMI, test host, block-service tools (cached in .cache)"
    bash scripts/setup/vmm.sh >&2
    bash scripts/setup/ebs.sh >&2
    say "building vmm, ebsd and ec2 (release)"
    cargo build --release -p vmm -p ebs-blockdev -p ec2
    session=(bash "$PWD/scripts/lib/front-door-session.sh" "$PWD/target/release" "$PWD/.cache/ami")
    kind=$(kvm_kind)
    if [ "$kind" = hardware ]; then
        say "hardware KVM found: running the front door here"
        exec "${session[@]}"
    fi
    say "/dev/kvm is $kind (Linux cannot run to userspace on it): running the front door inside the test host (QEMU 10, TCG + nested SVM); expect ~30 s to the prompt"
    if [ -t 0 ]; then
        TESTHOST_ENV="NITRO_STATE_DIR" NITRO_STATE_DIR=/tmp/nitro exec scripts/testhost.sh shell -- "${session[@]}"
    else
        TESTHOST_ENV="NITRO_STATE_DIR" NITRO_STATE_DIR=/tmp/nitro exec scripts/testhost.sh run --timeout 900 -- "${session[@]}"
    fi
fi

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
