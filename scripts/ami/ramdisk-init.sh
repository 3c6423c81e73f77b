#!/bin/sh
# /init of the default AMI's ramdisk ("ari"), built by scripts/default-ami.sh.
# See docs/default-ami.md.
#
# Loads the drivers the root volume and the network need (virtio_blk, ext4 and its
# dependencies, virtio_net, igbvf), waits for the root device named by root= (a path,
# LABEL=... or UUID=...), mounts it without fsck and switch_roots to its init.
#
# Kernel command line (read from /proc/cmdline: parameters with a dot never reach init's
# argv or environment):
#   root=DEV            /dev/vda (default), LABEL=rootfs or UUID=...
#   rootfstype=TYPE     ext4 (default)
#   ro | rw             mount the root read-only or read-write (default rw)
#   rootflags=OPTS      extra mount options
#   init=PATH           init on the root (default /sbin/init)
#   rd.timeout=SECONDS  how long to wait for the root device (default 10)
#   rd.shell            on failure, open a rescue shell on the console instead of powering off
#   rd.debug            trace this script (set -x)
# When the root device never appears or cannot be mounted, this prints
# "ramdisk: error: ..." lines and powers the VM off (the VMM exits, and the console keeps
# the reason); with rd.shell it opens a shell and powers off when the shell exits.

# First: the VMM's boot timer (port 0x3f0), before any other work, so that the VMM logs
# the kernel's boot time. Absent when the image was built without it.
[ -x /bin/boot-timer ] && /bin/boot-timer

export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

root=/dev/vda
fstype=ext4
mode=rw
flags=
init=/sbin/init
timeout=10
rescue=0
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) fstype=${arg#rootfstype=} ;;
        rootflags=*) flags=${arg#rootflags=} ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
        init=*) init=${arg#init=} ;;
        rd.timeout=*) timeout=${arg#rd.timeout=} ;;
        rd.shell) rescue=1 ;;
        rd.debug) set -x ;;
    esac
done
case "$timeout" in ''|*[!0-9]*) timeout=10 ;; esac

# Modules in dependency order, decompressed at build time (see load-order).
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod" 2>/dev/null || echo "ramdisk: insmod $mod failed" >&2
done < /lib/modules/load-order

fail() {
    for line in "$@"; do echo "ramdisk: error: $line"; done
    echo "ramdisk: block devices: $(awk 'NR > 2 { printf "%s ", $4 }' /proc/partitions)"
    echo "ramdisk: kernel command line: $(cat /proc/cmdline)"
    if [ "$rescue" = 1 ]; then
        echo "ramdisk: rd.shell: rescue shell; the VM powers off when it exits"
        setsid cttyhack sh
    else
        echo "ramdisk: powering off (add rd.shell to the kernel command line for a rescue shell)"
    fi
    sync
    poweroff -f
    # poweroff -f does not return; if it does, PID 1 must not exit (kernel panic).
    while :; do sleep 3600; done
}

# The device node for root=: a path appears when its driver probes; LABEL=/UUID= are
# looked up in the superblocks of every block device (busybox findfs) until one matches.
resolve_root() {
    case "$root" in
        LABEL=*|UUID=*) findfs "$root" 2>/dev/null ;;
        /dev/*) [ -b "$root" ] && echo "$root" ;;
        *) [ -b "/dev/$root" ] && echo "/dev/$root" ;;
    esac
}

# Poll every 100 ms: virtio devices probe quickly, but the timeout must not depend on it.
tries=$((timeout * 10))
dev=$(resolve_root)
while [ -z "$dev" ] && [ "$tries" -gt 0 ]; do
    usleep 100000
    tries=$((tries - 1))
    dev=$(resolve_root)
done
[ -n "$dev" ] || fail "root device $root did not appear within ${timeout} s" \
    "(is a root volume attached? the default AMI expects it as the first virtio-blk drive)"

mkdir -p /newroot
opts=$mode${flags:+,$flags}
if ! mount -t "$fstype" -o "$opts" "$dev" /newroot; then
    fail "cannot mount $dev ($root) as $fstype with -o $opts" "$(dmesg | tail -n 5)"
fi
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || {
    umount /newroot
    fail "$init not found on $dev ($root)"
}
echo "ramdisk: root $dev ($root, $fstype, $mode), switching to $init"

# The root's init mounts its own proc and sysfs; devtmpfs moves over so that /dev/console
# stays open across the switch.
mkdir -p /newroot/dev
mount --move /dev /newroot/dev || umount /dev
umount /sys
umount /proc
exec switch_root /newroot "$init"
