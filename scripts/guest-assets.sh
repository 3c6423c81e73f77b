#!/usr/bin/env bash
# Build the Linux guest used by the VMM's integration tests, from Debian packages only.
#
#   scripts/guest-assets.sh [--force]
#
# Outputs in $CACHE/guest/ ($CACHE = $NITRO_CACHE or <repo>/.cache):
#   vmlinuz              bzImage of linux-image-6.12.*+deb12-amd64-unsigned (bookworm-backports)
#   vmlinux              ELF kernel extracted from the bzImage payload (for ELF/PVH loaders)
#   initramfs.cpio.gz    busybox-static, /init (scripts/guest-init/guest-init.sh),
#                        /bin/boot-timer, virtio/igbvf modules
#   initramfs-tools.cpio.gz  the same plus curl, fio, iperf3 and sockperf with their
#                        shared libraries (IMDS test with curl, bench-blk/bench-net)
#   kernel-release       uname -r of that kernel
# Idempotent: only missing or stale outputs are rebuilt; --force rebuilds everything.
# See docs/test-host.md.
set -euo pipefail
LOG_TAG=guest-assets
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib/common.sh"
source "$HERE/lib/kernel.sh"

FORCE=0
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) die "unknown argument $a" ;;
    esac
done

# Modules the guest loads (dependencies are added automatically; built-ins are skipped:
# in the 6.12 generic kernel virtio, virtio_ring and virtio_pci* are built in).
# GUEST_EXTRA_MODULES adds more, e.g. GUEST_EXTRA_MODULES="ext4 vsock".
GUEST_MODULES="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
virtio_blk virtio_net failover net_failover igbvf ${GUEST_EXTRA_MODULES:-}"

GUEST=$CACHE/guest
mkdir -p "$GUEST"
build_lock   # released at exit

kernel_fetch
busybox_fetch
log "kernel $KERNEL_PKG $KERNEL_VER ($KERNEL_RELEASE), busybox $BUSYBOX_VER"

# ---- vmlinuz -------------------------------------------------------------------------
if [ "$FORCE" = 1 ] || ! cmp -s "$KERNEL_BZIMAGE" "$GUEST/vmlinuz"; then
    cp "$KERNEL_BZIMAGE" "$GUEST/vmlinuz.tmp" && mv "$GUEST/vmlinuz.tmp" "$GUEST/vmlinuz"
    rm -f "$GUEST/vmlinux"   # derived from vmlinuz
fi
printf '%s\n' "$KERNEL_RELEASE" > "$GUEST/kernel-release"

# ---- vmlinux: the kernel's scripts/extract-vmlinux, reimplemented ---------------------
# A bzImage is: real-mode setup ((setup_sects + 1) * 512 bytes), then the protected-mode
# decompressor, which holds the compressed ELF at payload_offset, payload_length bytes long
# (boot protocol >= 2.08; header fields at 0x1f1, 0x248, 0x24c). Every compressor but gzip
# has the uncompressed size appended as 4 extra bytes, which the decompressors reject.
u8_at()  { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32_at() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }

decompress_payload() { # FILE OFFSET LENGTH OUT
    local f=$1 off=$2 len=$3 out=$4 magic
    magic=$(od -An -tx1 -j "$off" -N6 "$f" | tr -d ' \n')
    local cmd trim=4
    case "$magic" in
        1f8b08*)      cmd="gzip -dc"; trim=0 ;;
        fd377a585a00) cmd="xz -dc" ;;
        28b52ffd*)    cmd="zstd -dcq" ;;
        425a68*)      cmd="bzip2 -dc" ;;
        5d0000*)      cmd="xz -dc --format=lzma" ;;
        02214c18*)    cmd="lz4 -dc" ;;
        89*)          cmd="lzop -dc" ;;
        *) return 1 ;;
    esac
    log "payload at $off: $magic -> $cmd"
    tail -c +"$((off + 1))" "$f" | head -c "$((len - trim))" | $cmd > "$out" 2>/dev/null || true
    [ "$(od -An -tx1 -N4 "$out" | tr -d ' \n')" = 7f454c46 ]
}

# Fallback, as extract-vmlinux does: try every offset where a known magic appears.
scan_payload() { # FILE OUT
    local f=$1 out=$2 pat off
    for pat in '\x28\xb5\x2f\xfd' '\xfd\x37\x7a\x58\x5a\x00' '\x1f\x8b\x08' '\x42\x5a\x68' \
               '\x5d\x00\x00' '\x02\x21\x4c\x18' '\x89\x4c\x5a'; do
        for off in $(LC_ALL=C grep -oabUP "$pat" "$f" | cut -d: -f1); do
            decompress_payload "$f" "$off" "$(( $(stat -c %s "$f") - off + 4 ))" "$out" && return 0
        done
    done
    return 1
}

if [ "$FORCE" = 1 ] || [ ! -s "$GUEST/vmlinux" ]; then
    img=$GUEST/vmlinuz
    [ "$(od -An -c -j 514 -N4 "$img" | tr -d ' ')" = HdrS ] || die "vmlinuz is not a bzImage"
    setup_sects=$(u8_at "$img" $((0x1f1)))
    [ "$setup_sects" = 0 ] && setup_sects=4
    pm_start=$(( (setup_sects + 1) * 512 ))
    payload_off=$(u32_at "$img" $((0x248)))
    payload_len=$(u32_at "$img" $((0x24c)))
    if ! decompress_payload "$img" $((pm_start + payload_off)) "$payload_len" "$GUEST/vmlinux.tmp"; then
        log "header-based extraction failed; scanning for compression magic"
        scan_payload "$img" "$GUEST/vmlinux.tmp" || die "could not extract vmlinux from $img"
    fi
    readelf -h "$GUEST/vmlinux.tmp" > /dev/null || die "extracted vmlinux is not a valid ELF"
    mv "$GUEST/vmlinux.tmp" "$GUEST/vmlinux"
fi

# Report the ELF entry and whether a PVH loader can use it: Linux announces its 32-bit PVH
# entry point in an ELF note of owner "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
elf_entry=$(readelf -h "$GUEST/vmlinux" | awk '/Entry point/ { print $4 }')
pvh_note=$(readelf -n "$GUEST/vmlinux" | awk '
    $1 == "Xen" && ($3 == "XEN_ELFNOTE_PHYS32_ENTRY" || $0 ~ /note type: \(0x00000012\)/) { want = 1; next }
    want && /description data:/ { sub(/.*description data: */, ""); print; exit }')
if [ -n "$pvh_note" ]; then
    # Little-endian bytes of the 32-bit physical entry address.
    set -- $pvh_note
    pvh_entry=0x$4$3$2$1
    log "vmlinux: ELF, entry $elf_entry, has PVH note (XEN_ELFNOTE_PHYS32_ENTRY = $pvh_entry)"
    printf '%s\n' "$pvh_entry" > "$GUEST/vmlinux.pvh-entry"
else
    log "vmlinux: ELF, entry $elf_entry, NO PVH note (boot it as a bzImage or via the 64-bit entry)"
    rm -f "$GUEST/vmlinux.pvh-entry"
fi

# ---- boot-timer helper ---------------------------------------------------------------
BT_SRC=$HERE/guest-init/boot-timer.c
BT_BIN=$CACHE/guest/build/boot-timer
BT_HASH=$(inputs_hash "$BT_SRC")
if [ "$FORCE" = 1 ] || [ ! -x "$BT_BIN" ] || [ "$(cat "$BT_BIN.hash" 2>/dev/null)" != "$BT_HASH" ]; then
    mkdir -p "$(dirname "$BT_BIN")"
    log "compiling boot-timer"
    gcc -static -Os -nostdlib -fno-asynchronous-unwind-tables -fno-stack-protector -s \
        -Wl,--build-id=none -o "$BT_BIN" "$BT_SRC"
    printf '%s\n' "$BT_HASH" > "$BT_BIN.hash"
fi

# ---- initramfs -----------------------------------------------------------------------
INIT=$HERE/guest-init/guest-init.sh
STAMP=$(inputs_hash "$INIT" "$BT_SRC" "$HERE/lib/kernel.sh" <(echo "$KERNEL_VER $BUSYBOX_VER $GUEST_MODULES"))
if [ "$FORCE" = 1 ] || [ ! -s "$GUEST/initramfs.cpio.gz" ] \
        || [ "$(cat "$GUEST/initramfs.stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "building initramfs.cpio.gz"
    root=$GUEST/build/initramfs
    rm -rf "$root"
    initramfs_skeleton "$root"
    busybox_stage "$root"
    kmod_stage "$root" $GUEST_MODULES
    cp "$BT_BIN" "$root/bin/boot-timer"
    install -m 755 "$INIT" "$root/init"
    log "modules: $(tr '\n' ' ' < "$root/lib/modules/load-order")"
    cpio_pack "$root" "$GUEST/initramfs.cpio.gz"
    printf '%s\n' "$STAMP" > "$GUEST/initramfs.stamp"
fi

# ---- tools initramfs: the same, plus curl and the benchmark tools --------------------
# For tests that need a real HTTP client (curl against IMDS) and for scripts/bench-blk.sh
# and bench-net.sh (fio, iperf3, sockperf). Binaries and their shared libraries come from
# the Debian packages installed on this machine (scripts/setup/vmm.sh); fio's libraries
# are large (~80 MiB), so the plain initramfs stays small for the boot tests.
GUEST_TOOLS="curl fio iperf3 sockperf"
# The package names equal the binary names; their versions are part of the stamp.
TOOLS_STAMP=$(inputs_hash <(echo "$STAMP") <(dpkg-query -W $GUEST_TOOLS 2>&1))
if [ "$FORCE" = 1 ] || [ ! -s "$GUEST/initramfs-tools.cpio.gz" ] \
        || [ "$(cat "$GUEST/initramfs-tools.stamp" 2>/dev/null)" != "$TOOLS_STAMP" ]; then
    log "building initramfs-tools.cpio.gz ($GUEST_TOOLS)"
    root=$GUEST/build/initramfs-tools
    rm -rf "$root"
    initramfs_skeleton "$root"
    busybox_stage "$root"
    kmod_stage "$root" $GUEST_MODULES
    cp "$BT_BIN" "$root/bin/boot-timer"
    install -m 755 "$INIT" "$root/init"
    tools_stage "$root" $GUEST_TOOLS
    cpio_pack "$root" "$GUEST/initramfs-tools.cpio.gz"
    printf '%s\n' "$TOOLS_STAMP" > "$GUEST/initramfs-tools.stamp"
fi

log "ready: $GUEST/{vmlinuz,vmlinux,initramfs.cpio.gz,initramfs-tools.cpio.gz} ($(du -h "$GUEST/initramfs.cpio.gz" | cut -f1) initramfs)"
