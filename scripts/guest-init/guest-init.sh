#!/bin/sh
# /init of the guest initramfs (built by scripts/guest-assets.sh).
#
# Kernel command line switches (read from /proc/cmdline: parameters with a dot are
# not passed to init's argv/environment by the kernel):
#   vmm.test=boot        print the VMM-GUEST-* lines below and reboot
#   vmm.run=<base64>     run the decoded shell snippet, print VMM-GUEST-RUN-EXIT <rc>, reboot
#   (neither)            interactive shell on the console; reboot when it exits
# The VMM treats a guest reboot as "guest finished" (like Firecracker), so every path ends
# in `reboot -f`.

# First: tell the VMM we reached userspace (port 0x3f0 boot timer), before any other work
# so the measured time is kernel boot only.
/bin/boot-timer

export PATH=/bin:/sbin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm

# Modules in dependency order, decompressed at build time (see load-order); built-ins were
# left out when the initramfs was built.
if [ -r /lib/modules/load-order ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        insmod "/lib/modules/$mod" 2>/dev/null || echo "init: insmod $mod failed" >&2
    done < /lib/modules/load-order
fi

ip link set lo up 2>/dev/null

finish() {
    sync
    reboot -f
    # reboot -f does not return; if it does, do not let PID 1 exit (kernel panic).
    while :; do sleep 3600; done
}

mode=shell
run_b64=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmm.test=boot) mode=boot ;;
        vmm.run=*) mode=run; run_b64=${arg#vmm.run=} ;;
    esac
done

case "$mode" in
boot)
    echo "VMM-GUEST-MARKER booted"
    echo "VMM-GUEST-CPUS $(nproc)"
    echo "VMM-GUEST-MEMTOTAL $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
    finish
    ;;
run)
    echo "$run_b64" | base64 -d > /run.sh
    sh /run.sh
    echo "VMM-GUEST-RUN-EXIT $?"
    finish
    ;;
esac

export PS1='guest:\w# '
echo "guest shell; exit to reboot"
setsid cttyhack sh
finish
