#!/usr/bin/env bash
# Build the default AMI's artifacts from Debian packages only.
#
#   scripts/default-ami.sh [--force]
#
# Outputs in $CACHE/ami/ ($CACHE = $NITRO_CACHE or <repo>/.cache):
#   kernel            the Debian 6.12 kernel as an ELF vmlinux with the PVH entry (the
#                     image's "aki"; the same file scripts/guest-assets.sh extracts)
#   ramdisk.cpio.gz   the "ari": busybox /init (scripts/ami/ramdisk-init.sh) that loads
#                     virtio_blk, ext4, virtio_net, igbvf, mounts root= and switch_roots
#   root.img          raw ext4 (label rootfs, sparse, AMI_ROOT_GIB GiB, default 1): busybox,
#                     curl and resize2fs with their libraries, busybox init, the ec2-init
#                     first-boot agent
#   manifest.json     what register-image needs: file names, sizes, sha256, the kernel
#                     command line, root device, root volume size
# Idempotent: an output is rebuilt only when one of its inputs changed (scripts/ami/*,
# this script, scripts/lib/kernel.sh, kernel, busybox, curl and its libraries, mke2fs);
# --force rebuilds everything. See docs/default-ami.md.
set -euo pipefail
LOG_TAG=default-ami
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$HERE/lib/common.sh"
# shellcheck source-path=SCRIPTDIR
source "$HERE/lib/kernel.sh"

FORCE=0
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) die "unknown argument $a" ;;
    esac
done

AMI=$CACHE/ami
BUILD=$AMI/build
SRC=$HERE/ami
ROOT_GIB=${AMI_ROOT_GIB:-1}
case "$ROOT_GIB" in ''|*[!0-9]*|0) die "AMI_ROOT_GIB must be a positive number of GiB" ;; esac
ROOT_LABEL=rootfs
# The command line the image is registered with. `quiet` is kept apart so that the front
# door can show the full kernel log when asked. Why each argument:
#   root=/dev/vda rw      the root volume is the first virtio-blk drive, mounted writable
#   reboot=k              reset through the i8042, which ends the VMM process
#   panic=-1              a panicking guest resets at once instead of hanging
#   i8042.noaux/nomux     only the keyboard (Ctrl-Alt-Del), no mouse probing
#   initcall_blacklist=cmos_init  the RTC probe costs seconds when nested
CMDLINE="console=ttyS0 root=/dev/vda rw reboot=k panic=-1 i8042.noaux i8042.nomux initcall_blacklist=cmos_init"
QUIET_ARGS="quiet"
# Drivers the ramdisk loads (dependencies are added, built-ins skipped): the root volume
# (virtio_blk, ext4 with jbd2, mbcache, crc16), virtio-net and SR-IOV VFs (igbvf).
# crc32c_generic is no modinfo dependency: ext4 and jbd2 ask the crypto API for "crc32c"
# (metadata_csum) at mount time, and without it the mount fails ("Cannot load crc32c
# driver"); the ramdisk has no modprobe for the kernel to call.
RAMDISK_MODULES=(virtio_blk crc32c_generic ext4 virtio_net igbvf)
# Host binaries (Debian packages installed by scripts/setup/vmm.sh) copied with their
# shared libraries: ec2-init talks to the metadata service with curl and grows the root
# file system to its volume with resize2fs (e2fsprogs).
ROOT_TOOLS=(curl resize2fs)

# guest-assets.sh takes the build lock itself, so it runs before this script takes it.
"$HERE/guest-assets.sh"
mkdir -p "$AMI" "$BUILD"
build_lock   # released at exit

kernel_fetch
busybox_fetch
log "kernel $KERNEL_PKG $KERNEL_VER ($KERNEL_RELEASE), busybox $BUSYBOX_VER"
command -v mke2fs > /dev/null || die "mke2fs not installed (e2fsprogs; scripts/setup/vmm.sh installs it)"

# ---- kernel: the ELF vmlinux guest-assets.sh extracted --------------------------------
if [ "$FORCE" = 1 ] || ! cmp -s "$CACHE/guest/vmlinux" "$AMI/kernel"; then
    log "kernel: $CACHE/guest/vmlinux"
    # A hard link costs no space; a copy when the cache spans file systems.
    rm -f "$AMI/kernel.tmp"
    ln "$CACHE/guest/vmlinux" "$AMI/kernel.tmp" 2>/dev/null || cp "$CACHE/guest/vmlinux" "$AMI/kernel.tmp"
    # mv refuses to replace a file by another link to the same inode (--force).
    rm -f "$AMI/kernel"
    mv "$AMI/kernel.tmp" "$AMI/kernel"
fi
[ -s "$CACHE/guest/vmlinux.pvh-entry" ] || die "$CACHE/guest/vmlinux has no PVH entry note"

# ---- ramdisk -------------------------------------------------------------------------
BOOT_TIMER=$CACHE/guest/build/boot-timer   # built by guest-assets.sh
RD_STAMP=$(inputs_hash "$SRC/ramdisk-init.sh" "$HERE/lib/kernel.sh" "$BOOT_TIMER" \
    <(echo "$KERNEL_VER $BUSYBOX_VER ${RAMDISK_MODULES[*]}"))
if [ "$FORCE" = 1 ] || [ ! -s "$AMI/ramdisk.cpio.gz" ] || [ ! -s "$BUILD/ramdisk.modules" ] \
        || [ "$(cat "$BUILD/ramdisk.stamp" 2>/dev/null)" != "$RD_STAMP" ]; then
    log "building ramdisk.cpio.gz"
    rd=$BUILD/ramdisk
    rm -rf "$rd"
    initramfs_skeleton "$rd"
    busybox_stage "$rd"
    kmod_stage "$rd" "${RAMDISK_MODULES[@]}"
    mkdir -p "$rd/newroot"
    cp "$BOOT_TIMER" "$rd/bin/boot-timer"
    install -m 755 "$SRC/ramdisk-init.sh" "$rd/init"
    # Kept for the manifest: resolving the modules again costs seconds.
    cp "$rd/lib/modules/load-order" "$BUILD/ramdisk.modules"
    log "ramdisk modules: $(tr '\n' ' ' < "$rd/lib/modules/load-order")"
    cpio_pack "$rd" "$AMI/ramdisk.cpio.gz"
    printf '%s\n' "$RD_STAMP" > "$BUILD/ramdisk.stamp"
fi

# ---- root file system ----------------------------------------------------------------
# Fingerprint of the host binaries that go in: the binaries and every library ldd
# resolves for them (a Debian update of curl or of one of its libraries rebuilds).
tools_fingerprint() {
    local bin path
    for bin in "${ROOT_TOOLS[@]}"; do
        path=$(command -v "$bin") || die "$bin not installed (scripts/setup/vmm.sh installs it)"
        ldd "$path" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | xargs sha256sum
        sha256sum "$path"
    done
    [ ! -r /etc/ssl/certs/ca-certificates.crt ] || sha256sum /etc/ssl/certs/ca-certificates.crt
}
ROOT_INPUTS=("$SRC/ec2-init.sh" "$SRC/inittab" "$SRC/rcS" "$SRC/rcK" "$SRC/udhcpc.script"
    "$SRC/profile" "$HERE/lib/kernel.sh" "$HERE/default-ami.sh")
ROOT_STAMP=$(inputs_hash "${ROOT_INPUTS[@]}" <(tools_fingerprint) \
    <(echo "$BUSYBOX_VER $ROOT_GIB $ROOT_LABEL $KERNEL_RELEASE"; mke2fs -V 2>&1 | head -n1))

# The file system UUID derives from the inputs, so a rebuild of the same inputs gives the
# same UUID (root=UUID=... stays valid) and every instance of the image shares it, as
# instances of one AMI do.
stamp_uuid() {
    local h; h=$(printf '%s' "$1" | sha256sum | cut -c1-32)
    printf '%s-%s-4%s-8%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" "${h:17:3}" "${h:20:12}"
}

build_rootfs() {
    local r=$1
    rm -rf "$r"
    mkdir -p "$r"
    # Merged /usr, as Debian 12: bin, sbin, lib and lib64 are links into /usr.
    busybox_stage "$r/usr"
    rm -f "$r/usr/usr"
    ln -sfn bin "$r/usr/sbin"
    mkdir -p "$r/usr/lib" "$r/usr/lib64" "$r/usr/local/bin" "$r/usr/local/sbin" "$r/usr/share/udhcpc"
    local d
    for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$r/$d"; done
    initramfs_skeleton "$r"
    tools_stage "$r" "${ROOT_TOOLS[@]}"
    # Users' user data often starts with #!/bin/bash; the image's bash is busybox ash.
    printf '#!/bin/sh\n# The default AMI has no bash: busybox ash stands in for it.\nexec /bin/sh "$@"\n' \
        > "$r/usr/bin/bash"
    chmod 755 "$r/usr/bin/bash"
    if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
        # HTTPS for curl in user data (Debian's CA bundle, as curl looks for it).
        mkdir -p "$r/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
    fi

    mkdir -p "$r"/{etc/init.d,home,mnt,var/lib/cloud,var/log,var/tmp,var/spool}
    chmod 700 "$r/root"
    chmod 1777 "$r/tmp" "$r/var/tmp"
    install -m 755 "$SRC/ec2-init.sh" "$r/usr/sbin/ec2-init"
    install -m 755 "$SRC/rcS" "$r/etc/init.d/rcS"
    install -m 755 "$SRC/rcK" "$r/etc/init.d/rcK"
    install -m 644 "$SRC/inittab" "$r/etc/inittab"
    install -m 644 "$SRC/profile" "$r/etc/profile"
    install -m 755 "$SRC/udhcpc.script" "$r/usr/share/udhcpc/default.script"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' \
        > "$r/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > "$r/etc/group"
    # No password logins: the console shell needs none and there is no other way in.
    printf 'root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n' > "$r/etc/shadow"
    chmod 600 "$r/etc/shadow"
    printf '/bin/sh\n/bin/ash\n/bin/bash\n' > "$r/etc/shells"
    echo localhost > "$r/etc/hostname"
    printf '127.0.0.1\tlocalhost\n' > "$r/etc/hosts"
    : > "$r/etc/resolv.conf"
    printf '# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\nLABEL=%s\t/\text4\trw,noatime\t0\t0\n' \
        "$ROOT_LABEL" > "$r/etc/fstab"
    ln -sfn ../proc/self/mounts "$r/etc/mtab"
    cat > "$r/etc/os-release" <<OSR
PRETTY_NAME="nitro-vmm default AMI (busybox $BUSYBOX_VER, Linux $KERNEL_RELEASE)"
NAME="nitro-vmm default AMI"
ID=nitro-default-ami
ID_LIKE=debian
VERSION_ID="$ROOT_STAMP"
OSR
}

if [ "$FORCE" = 1 ] || [ ! -s "$AMI/root.img" ] \
        || [ "$(cat "$BUILD/root.stamp" 2>/dev/null)" != "$ROOT_STAMP" ]; then
    log "building root.img (${ROOT_GIB} GiB ext4, label $ROOT_LABEL)"
    build_rootfs "$BUILD/rootfs"
    uuid=$(stamp_uuid "$ROOT_STAMP")
    rm -f "$AMI/root.img.tmp"
    truncate -s "${ROOT_GIB}G" "$AMI/root.img.tmp"
    # -d fills the file system from the directory: no loop mount, no root-only mount calls.
    # root_owner: / belongs to root whoever builds. lazy_journal_init: the new file reads as
    # zeros already, so the 32 MiB journal need not be written and the image stays sparse.
    mke2fs -q -F -t ext4 -L "$ROOT_LABEL" -U "$uuid" -E "root_owner=0:0,hash_seed=$uuid,lazy_journal_init=1" \
        -d "$BUILD/rootfs" "$AMI/root.img.tmp"
    e2fsck -fn "$AMI/root.img.tmp" > "$BUILD/e2fsck.log" 2>&1 \
        || die "e2fsck found errors in the new root.img: $(cat "$BUILD/e2fsck.log")"
    printf '%s\n' "$uuid" > "$BUILD/root.uuid"
    mv "$AMI/root.img.tmp" "$AMI/root.img"
    printf '%s\n' "$ROOT_STAMP" > "$BUILD/root.stamp"
    log "root.img: $(du -sh "$BUILD/rootfs" | cut -f1) of files, $(du -h "$AMI/root.img" | cut -f1) on disk"
fi

# ---- manifest ------------------------------------------------------------------------
# sha256 of a file, cached beside the build stamps until the file changes (the root image
# is 1 GiB to read).
sha256_cached() {
    local f=$1 key cache
    cache=$BUILD/$(basename "$f").sha256
    key=$(stat -c '%s %Y %i' "$f")
    if [ "$(sed -n 1p "$cache" 2>/dev/null)" != "$key" ]; then
        log "sha256 $(basename "$f")"
        printf '%s\n%s\n' "$key" "$(sha256sum "$f" | cut -d' ' -f1)" > "$cache"
    fi
    sed -n 2p "$cache"
}
kernel_sha=$(sha256_cached "$AMI/kernel")
ramdisk_sha=$(sha256_cached "$AMI/ramdisk.cpio.gz")
root_sha=$(sha256_cached "$AMI/root.img")
modules_json=$(sed 's|.*/||; s|\.ko$||; s|.*|"&"|' "$BUILD/ramdisk.modules" | paste -sd, -)
curl_ver=$(dpkg-query -W -f='${Version}' curl 2>/dev/null || echo unknown)
e2fsprogs_ver=$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null || echo unknown)

# The name follows EC2's AMI name rules (letters, digits, space and ( ) [ ] . / - ' @ _):
# the '+' of the kernel release becomes '-'.
cat > "$AMI/manifest.json.tmp" <<JSON
{
  "schema": "nitro-default-ami/1",
  "name": "nitro-default-ami-${KERNEL_RELEASE//+/-}-$(cat "$BUILD/root.stamp")",
  "description": "Debian $KERNEL_RELEASE kernel, busybox ramdisk, busybox and curl root with the ec2-init user-data agent",
  "architecture": "x86_64",
  "virtualization_type": "hvm",
  "root_device_name": "/dev/vda",
  "root_volume_size_gib": $ROOT_GIB,
  "ena_support": false,
  "sriov_net_support": "simple",
  "imds_support": "v2.0",
  "cmdline": "$CMDLINE",
  "cmdline_quiet_args": "$QUIET_ARGS",
  "min_memory_mib": 128,
  "kernel": {
    "file": "kernel",
    "format": "elf-pvh",
    "size": $(stat -c %s "$AMI/kernel"),
    "sha256": "$kernel_sha",
    "release": "$KERNEL_RELEASE",
    "package": "$KERNEL_PKG",
    "version": "$KERNEL_VER"
  },
  "ramdisk": {
    "file": "ramdisk.cpio.gz",
    "format": "cpio-newc-gzip",
    "size": $(stat -c %s "$AMI/ramdisk.cpio.gz"),
    "sha256": "$ramdisk_sha",
    "modules": [$modules_json]
  },
  "root_volume": {
    "file": "root.img",
    "format": "raw",
    "filesystem": "ext4",
    "label": "$ROOT_LABEL",
    "uuid": "$(cat "$BUILD/root.uuid")",
    "size": $(stat -c %s "$AMI/root.img"),
    "sha256": "$root_sha"
  },
  "packages": {
    "busybox-static": "$BUSYBOX_VER",
    "curl": "$curl_ver",
    "e2fsprogs": "$e2fsprogs_ver",
    "$KERNEL_PKG": "$KERNEL_VER"
  }
}
JSON
if cmp -s "$AMI/manifest.json.tmp" "$AMI/manifest.json"; then
    rm -f "$AMI/manifest.json.tmp"
else
    mv "$AMI/manifest.json.tmp" "$AMI/manifest.json"
    log "wrote manifest.json"
fi
log "ready: $AMI/{kernel,ramdisk.cpio.gz,root.img,manifest.json} ($(du -h "$AMI/ramdisk.cpio.gz" | cut -f1) ramdisk, $(du -h "$AMI/root.img" | cut -f1) root image on disk)"
