#!/bin/sh
# /init of the test host's initramfs (built by scripts/testhost.sh).
#
# The test host is a QEMU TCG machine with emulated SVM, so KVM works inside it. This init
# loads the kvm/vfio/igb/9p modules, mounts the real host's root file system (9p,
# read-only) at /host, and runs one command chrooted there, so binaries built on the host
# (target/debug/vmm, the extracted QEMU 10) run unchanged.
#
# Kernel command line (read from /proc/cmdline):
#   testhost.run=<base64 of a directory path>  the directory (as seen on the host) holds
#                                              cmd.sh, written by testhost.sh
#   testhost.shell=1                           the command gets the console as its terminal
#   testhost.verbose=1                         progress messages with uptime stamps
# Output protocol: the command's stdout+stderr go to the serial console; then one line
# "TESTHOST-EXIT <status>", then power off. testhost.sh turns that into its exit status.

export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

run_b64=
shell=0
verbose=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        testhost.run=*) run_b64=${arg#testhost.run=} ;;
        testhost.keep=*) keep_b64=${arg#testhost.keep=} ;;
        testhost.shell=1) shell=1 ;;
        testhost.verbose=1) verbose=1 ;;
    esac
done

say() { [ "$verbose" = 1 ] && echo "testhost-init[$(cut -d' ' -f1 /proc/uptime)]: $*"; }

# Leave line endings alone: the console is read by a program, not a terminal, and \r\n
# would end up in the command's output.
[ "$shell" = 1 ] || stty -onlcr < /dev/console 2>/dev/null

bail() {
    echo "testhost-init: $*"
    echo "TESTHOST-EXIT 125"
    poweroff -f
    while :; do sleep 3600; done
}

say "loading modules"
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod" 2>/dev/null || echo "testhost-init: insmod $mod failed"
done < /lib/modules/load-order

ip link set lo up 2>/dev/null
hostname testhost

say "mounting host root"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /host \
    || bail "cannot mount the host root (9p tag hostroot)"

# Fresh kernel file systems inside the chroot, and writable scratch on top of the
# read-only host root: /tmp, /run, /var/tmp, /dev/shm (all tmpfs, lost at power-off).
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
# The repository (and cache) may live under one of those, e.g. a CI clone in
# /tmp: keep them visible through the tmpfs by binding them aside first and
# back on top afterwards (testhost.keep= lists them, one per line).
mkdir -p /keep
: > /keep/list
if [ -n "$keep_b64" ]; then
    i=0
    for p in $(echo "$keep_b64" | base64 -d); do
        if [ -d "/host$p" ] && mkdir -p "/keep/$i" && mount --bind "/host$p" "/keep/$i"; then
            echo "$i $p" >> /keep/list
        fi
        i=$((i + 1))
    done
fi
for d in /tmp /run /var/tmp; do
    [ -d "/host$d" ] && mount -t tmpfs -o mode=1777 tmpfs "/host$d"
done
while read -r i p; do
    case "$p" in
        /tmp/*|/run/*|/var/tmp/*) mkdir -p "/host$p" && mount --bind "/keep/$i" "/host$p" ;;
    esac
done < /keep/list

[ -n "$run_b64" ] || bail "no testhost.run= on the kernel command line"
run_dir=$(echo "$run_b64" | base64 -d)
[ -r "/host$run_dir/cmd.sh" ] || bail "missing $run_dir/cmd.sh on the host"

say "running command"
if [ "$shell" = 1 ]; then
    # Interactive: the command gets the console as controlling terminal (job control, ^C).
    setsid cttyhack chroot /host /bin/sh "$run_dir/cmd.sh"
else
    chroot /host /bin/sh "$run_dir/cmd.sh" < /dev/null > /dev/console 2>&1
fi
rc=$?
say "command exited with $rc"
sync
echo "TESTHOST-EXIT $rc"
poweroff -f
while :; do sleep 3600; done
