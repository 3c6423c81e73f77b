#!/usr/bin/env bash
# The test host: QEMU 10 (TCG, emulated SVM, intel-iommu, igb SR-IOV NIC) booting Debian's
# 6.12 kernel, with this machine's root file system shared read-only over 9p. Inside it
# /dev/kvm is a real (nested) SVM KVM, so Linux guests boot there, unlike on the
# host's kvm_pvm. See docs/test-host.md.
#
#   scripts/testhost.sh setup
#       download/build everything (QEMU 10, test-host initramfs, guest assets); for CI
#   scripts/testhost.sh run [--mem MiB] [--timeout SECS] -- COMMAND [ARG]...
#       boot the test host, run COMMAND (cwd: the repository, chrooted into the host's root)
#       and exit with its status; 124 on timeout, 125 when the test host itself failed
#   scripts/testhost.sh shell [--mem MiB]
#       interactive shell in the test host (needs a terminal); exit it to power off
#   scripts/testhost.sh qemu-path
#       print the path of a QEMU 10 wrapper (usable on the host and inside the test host)
#
# Environment: TESTHOST_IGB_NETDEV (the igb's QEMU netdev, default `user`: QEMU's
# user network with its DHCP server at 10.0.2.2; `hubport,hubid=9` is a wire with nothing
# on it), TESTHOST_QEMU_EXTRA (extra QEMU arguments, word-split), TESTHOST_APPEND
# (extra kernel arguments), TESTHOST_ENV (names of variables to pass to COMMAND),
# TESTHOST_EXTRA_MODULES, TESTHOST_VERBOSE=1, TESTHOST_KEEP=1, NITRO_CACHE.
set -euo pipefail
LOG_TAG=testhost
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib/common.sh"
source "$HERE/lib/kernel.sh"

TH=$CACHE/testhost
QEMU_ROOT=$TH/qemu
QEMU_WRAPPER=$TH/bin/qemu-system-x86_64

# Modules for the test host: 9p for the host root, kvm-amd (needs ccp) for nested KVM,
# vfio + igb/igbvf for SR-IOV passthrough tests, tun/tap/bridge for guest networking,
# dm-mod/dm-log-writes/loop/ext4 (+ crc32c_generic, which ext4 asks for at mount) for the
# block service's power-cut test. One list for every test: a different list would make
# each test rebuild the test-host initramfs.
# Dependencies (netfs, irqbypass, dca, i2c-algo-bit, stp, llc, ...) are added automatically.
TESTHOST_MODULES="netfs 9pnet 9pnet_virtio 9p ccp irqbypass kvm kvm-amd vfio vfio_iommu_type1
vfio-pci-core vfio-pci dca i2c-algo-bit igb igbvf tun tap bridge
dm-mod dm-log-writes loop crc32c_generic ext4 ${TESTHOST_EXTRA_MODULES:-}"

# Packages QEMU 10 needs from our private apt: always the QEMU packages themselves (taken
# from bookworm-backports), plus whatever apt says this machine lacks to run them (libraries
# that are not installed, newer seabios). Only these are extracted; the rest of QEMU's
# libraries come from the system.
qemu_packages() {
    local core="qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu"
    {
        apt-get -s -o Debug::NoLocking=1 -o Dir::State::status=/var/lib/dpkg/status \
            -t bookworm-backports install --no-install-recommends $core 2>/dev/null \
            | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p'
        local p
        for p in $core; do
            printf '%s=%s\n' "$p" "$(apt-cache policy -t bookworm-backports "$p" | awk '/Candidate:/ { print $2 }')"
        done
    } | sort -u -t= -k1,1
}

qemu_fetch() {
    papt_update
    local pkgs; pkgs=$(papt_memo qemu qemu_packages) || die "cannot resolve QEMU packages"
    echo "$pkgs" | grep -q '^qemu-system-x86=1:10\.' || die "no QEMU 10 in bookworm-backports: $pkgs"
    if [ ! -x "$QEMU_WRAPPER" ] || [ "$(cat "$QEMU_ROOT/.packages" 2>/dev/null)" != "$pkgs" ]; then
        log "extracting QEMU: $(echo $pkgs)"
        rm -rf "$QEMU_ROOT"; mkdir -p "$QEMU_ROOT"
        papt_extract "$QEMU_ROOT" $pkgs
        # Debian links firmware by absolute paths (e.g. /usr/share/qemu/bios-256k.bin ->
        # /usr/share/seabios/bios-256k.bin); point them into the extracted tree instead.
        local l t
        while IFS= read -r l; do
            t=$(readlink "$l")
            case "$t" in /*) [ -e "$QEMU_ROOT$t" ] && ln -sfr "$QEMU_ROOT$t" "$l" ;; esac
        done < <(find "$QEMU_ROOT" -type l)
        mkdir -p "$(dirname "$QEMU_WRAPPER")"
        # A wrapper rather than exported variables: it works the same from the host, from
        # a test harness and from inside the test host's chroot (same path via 9p).
        cat > "$QEMU_WRAPPER.tmp" <<WRAP
#!/bin/sh
# QEMU 10 extracted from bookworm-backports by scripts/testhost.sh (generated file).
R='$QEMU_ROOT'
export LD_LIBRARY_PATH="\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export QEMU_MODULE_DIR="\$R/usr/lib/x86_64-linux-gnu/qemu"
exec "\$R/usr/bin/qemu-system-x86_64" -L "\$R/usr/share/qemu" -L "\$R/usr/share/seabios" -L "\$R/usr/lib/ipxe/qemu" "\$@"
WRAP
        chmod +x "$QEMU_WRAPPER.tmp"
        local missing
        missing=$(LD_LIBRARY_PATH="$QEMU_ROOT/usr/lib/x86_64-linux-gnu:$QEMU_ROOT/lib/x86_64-linux-gnu" \
            ldd "$QEMU_ROOT/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
        [ -z "$missing" ] || die "QEMU still lacks libraries: $missing"
        "$QEMU_WRAPPER.tmp" --version | head -n1 | grep -q 'version 10\.' || die "extracted QEMU does not run"
        mv "$QEMU_WRAPPER.tmp" "$QEMU_WRAPPER"
        printf '%s\n' "$pkgs" > "$QEMU_ROOT/.packages"
    fi
}

initramfs_build() {
    local init=$HERE/guest-init/testhost-init.sh
    local stamp
    stamp=$(inputs_hash "$init" "$HERE/lib/kernel.sh" <(echo "$KERNEL_VER $BUSYBOX_VER $TESTHOST_MODULES"))
    TH_INITRD=$TH/initramfs.cpio.gz
    if [ ! -s "$TH_INITRD" ] || [ "$(cat "$TH/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
        log "building test-host initramfs"
        local root=$TH/build/initramfs
        rm -rf "$root"
        initramfs_skeleton "$root"
        busybox_stage "$root"
        kmod_stage "$root" $TESTHOST_MODULES
        install -m 755 "$init" "$root/init"
        cpio_pack "$root" "$TH_INITRD"
        printf '%s\n' "$stamp" > "$TH/initramfs.stamp"
    fi
}

prepare() {
    mkdir -p "$TH"
    build_lock
    kernel_fetch
    busybox_fetch
    qemu_fetch
    initramfs_build
    build_unlock
}

# POSIX-sh single quoting (cmd.sh runs under the host's /bin/sh inside the chroot).
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

# The header comment above is the help text.
usage() { awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit "${1:-2}"; }

cmd_run() { # MODE(run|shell) ARGS...
    local mode=$1; shift
    local mem=1024 timeout=600
    while [ $# -gt 0 ]; do
        case "$1" in
            --mem) mem=$2; shift 2 ;;
            --timeout) timeout=$2; shift 2 ;;
            --) shift; break ;;
            -h|--help) usage 0 ;;
            *) if [ "$mode" = run ]; then die "unexpected '$1' (missing -- before the command?)"; fi; break ;;
        esac
    done
    if [ "$mode" = run ] && [ $# -eq 0 ]; then die "no command given"; fi
    if [ "$mode" = shell ]; then
        [ -t 0 ] || die "shell needs a terminal on stdin"
        [ $# -gt 0 ] || set -- /bin/bash -i
        timeout=0   # no limit for interactive use
    fi

    prepare

    mkdir -p "$TH/runs"
    RUN_DIR=$(mktemp -d "$TH/runs/run.XXXXXX")
    {
        echo "# generated by scripts/testhost.sh: runs inside the test host, chrooted to the host root"
        echo "cd $(shq "$REPO") || exit 125"
        echo "export HOME=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        echo "export TESTHOST=1 TERM=${TERM:-dumb}"
        local v
        for v in ${TESTHOST_ENV:-}; do
            if [ -n "${!v+x}" ]; then echo "export $v=$(shq "${!v}")"; fi
        done
        printf 'exec'; for v in "$@"; do printf ' %s' "$(shq "$v")"; done; echo
    } > "$RUN_DIR/cmd.sh"

    local append="console=ttyS0 panic=-1 intel_iommu=on testhost.run=$(printf '%s' "$RUN_DIR" | base64 -w0)"
    # Keep the repository and cache visible even when they live under /tmp.
    append+=" testhost.keep=$(printf '%s\n' "$REPO" "$CACHE" | base64 -w0)"
    if [ "${TESTHOST_VERBOSE:-0}" = 1 ]; then append+=" testhost.verbose=1"; else append+=" quiet loglevel=2"; fi
    [ "$mode" = shell ] && append+=" testhost.shell=1"
    append+=" ${TESTHOST_APPEND:-}"

    # Machine line measured in shared notes/test-host.md. -smp 1: a second TCG vCPU thread
    # costs more host CPU than it saves on a 2-core machine.
    local qemu_args=(
        -accel tcg,thread=multi -machine q35,kernel-irqchip=split -cpu max -smp 1 -m "$mem"
        -nodefaults -no-user-config -display none -no-reboot
        -chardev stdio,id=con,signal=off -serial chardev:con
        -device intel-iommu,intremap=on
        -device pcie-root-port,id=rp1,chassis=1,slot=1
        -netdev "${TESTHOST_IGB_NETDEV:-user},id=n0" -device igb,bus=rp1,netdev=n0
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
        -kernel "$KERNEL_BZIMAGE" -initrd "$TH_INITRD" -append "$append"
    )
    # shellcheck disable=SC2206  # word splitting is the documented interface
    qemu_args+=(${TESTHOST_QEMU_EXTRA:-})

    if [ "$mode" = shell ]; then
        "$QEMU_WRAPPER" "${qemu_args[@]}" || true
        [ "${TESTHOST_KEEP:-0}" = 1 ] || rm -rf "$RUN_DIR"
        exit 0
    fi

    local fifo=$RUN_DIR/console status=$RUN_DIR/status
    mkfifo "$fifo"
    QPID=
    trap 'on_exit' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local start=$SECONDS
    # `timeout` bounds the run; -k kills QEMU if it ignores the polite TERM.
    timeout -k 5 "$timeout" "$QEMU_WRAPPER" "${qemu_args[@]}" < /dev/null > "$fifo" 2> "$RUN_DIR/qemu.log" &
    QPID=$!
    console_filter < "$fifo" "$status"
    local qrc=0
    wait "$QPID" || qrc=$?
    QPID=
    local secs=$((SECONDS - start))
    if [ -s "$status" ]; then
        local rc; rc=$(cat "$status")
        [ "${TESTHOST_VERBOSE:-0}" = 1 ] && log "command exited with $rc after ${secs}s (test host included)"
        exit "$rc"
    fi
    if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        log "TIMEOUT: no result after ${timeout}s; test host killed (raise --timeout?)"
        exit 124
    fi
    log "test host ended without a result (QEMU exit $qrc after ${secs}s); QEMU log:"
    tail -n 20 "$RUN_DIR/qemu.log" >&2 || true
    exit 125
}

# Copy the console to stdout, except the final "TESTHOST-EXIT <n>" line, whose status goes
# to FILE. Only the last marker counts: one that is followed by more output was printed by
# the command itself and is passed through. Kernel log lines ("[   5.3] reboot: Power
# down", printed at emergency level, so even `quiet` shows it) after the marker are dropped.
# A marker glued to the end of a command's unterminated last line is split off from it.
console_filter() { # STATUS_FILE
    local out=$1 line held="" re='^(.*)TESTHOST-EXIT ([0-9]+)$' klog='^\[ *[0-9]+\.[0-9]+\] '
    while IFS= read -r line || [ -n "$line" ]; do
        if [ -n "$held" ]; then
            [[ $line =~ $klog ]] && continue
            printf '%s\n' "$held"; held=""
        fi
        if [[ $line =~ $re ]]; then
            held=$line
        else
            printf '%s\n' "$line"
        fi
    done
    if [ -n "$held" ] && [[ $held =~ $re ]]; then
        printf '%s' "${BASH_REMATCH[1]}"
        printf '%s\n' "${BASH_REMATCH[2]}" > "$out"
    fi
}

on_exit() {
    # Never leave a QEMU behind: the timeout wrapper forwards TERM to it.
    if [ -n "${QPID:-}" ]; then kill -TERM "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; fi
    if [ -n "${RUN_DIR:-}" ] && [ "${TESTHOST_KEEP:-0}" != 1 ]; then rm -rf "$RUN_DIR"; fi
}

case "${1:-}" in
    setup)
        prepare
        "$HERE/guest-assets.sh"
        log "ready: qemu $QEMU_WRAPPER, kernel $KERNEL_BZIMAGE, initramfs $TH_INITRD"
        ;;
    run) shift; cmd_run run "$@" ;;
    shell) shift; cmd_run shell "$@" ;;
    qemu-path)
        # Only fetch when missing: this also runs inside the test host, where the cache is
        # read-only (`setup` refreshes an existing QEMU).
        if [ ! -x "$QEMU_WRAPPER" ]; then build_lock; qemu_fetch >&2; build_unlock; fi
        printf '%s\n' "$QEMU_WRAPPER"
        ;;
    -h|--help|help) usage 0 ;;
    *) usage 2 ;;
esac
