# Helpers shared by guest-assets.sh and testhost.sh: the Debian 6.12 kernel from
# bookworm-backports, busybox-static, module dependency resolution and cpio packing.
# Needs common.sh sourced first.

# amd64 generic flavour, unsigned variant (same kernel, no Secure Boot signature).
KERNEL_PKG_REGEX='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'

# Newest kernel package of the flavour, and its newest version: "NAME VERSION".
_kernel_pick() {
    local pkg; pkg=$(apt-cache pkgnames linux-image-6.12. | grep -E "$KERNEL_PKG_REGEX" | sort -V | tail -n1)
    [ -n "$pkg" ] && printf '%s %s\n' "$pkg" "$(papt_candidate "$pkg")"
}

# Sets KERNEL_PKG, KERNEL_VER, KERNEL_ROOT (dpkg -x tree), KERNEL_RELEASE (uname -r),
# KERNEL_MODDIR and KERNEL_BZIMAGE. Downloads and extracts only when missing.
kernel_fetch() {
    papt_update
    local pick
    pick=$(papt_memo kernel _kernel_pick) || die "no package matching $KERNEL_PKG_REGEX in the private apt lists"
    read -r KERNEL_PKG KERNEL_VER <<< "$pick"
    KERNEL_ROOT=$CACHE/kernel/${KERNEL_PKG}_$KERNEL_VER
    if [ ! -e "$KERNEL_ROOT/.done" ]; then
        local deb; deb=$(papt_download "$KERNEL_PKG=$KERNEL_VER")
        rm -rf "$KERNEL_ROOT"; mkdir -p "$KERNEL_ROOT"
        log "extracting $(basename "$deb")"
        dpkg -x "$deb" "$KERNEL_ROOT"
        touch "$KERNEL_ROOT/.done"
    fi
    KERNEL_RELEASE=$(ls "$KERNEL_ROOT/lib/modules" | head -n1)
    KERNEL_MODDIR=$KERNEL_ROOT/lib/modules/$KERNEL_RELEASE
    KERNEL_BZIMAGE=$KERNEL_ROOT/boot/vmlinuz-$KERNEL_RELEASE
    [ -s "$KERNEL_BZIMAGE" ] || die "no $KERNEL_BZIMAGE in $KERNEL_PKG"
}

# Sets BUSYBOX (path of the static binary from busybox-static, bookworm).
busybox_fetch() {
    papt_update
    local ver; ver=$(papt_memo busybox papt_candidate busybox-static) || die "busybox-static not found"
    local dir=$CACHE/busybox/$ver
    if [ ! -x "$dir/bin/busybox" ]; then
        local deb; deb=$(papt_download "busybox-static=$ver")
        rm -rf "$dir"; mkdir -p "$dir"
        dpkg -x "$deb" "$dir"
    fi
    BUSYBOX=$dir/bin/busybox
    BUSYBOX_VER=$ver
}

# Module name as the kernel sees it: '-' and '_' are interchangeable.
_kmod_norm() { printf '%s\n' "${1//-/_}"; }

# kmod_resolve NAME... : print the modules' paths relative to KERNEL_MODDIR (without the .xz),
# dependencies first, each once; modules built into the kernel are skipped.
# The Debian package ships no modules.dep (depmod runs at install time, and kmod is not on
# every machine), so this reads each module's own "depends=" from its .modinfo section, which
# is the data depmod itself turns into modules.dep.
kmod_resolve() {
    local order=$KERNEL_MODDIR/modules.order builtin=$KERNEL_MODDIR/modules.builtin
    declare -A _path=() _seen=()
    local p n
    while read -r p; do
        n=$(basename "$p" .ko); _path[$(_kmod_norm "$n")]=$p
    done < "$order"
    _kmod_visit() {
        local name; name=$(_kmod_norm "$1")
        [ -z "${_seen[$name]:-}" ] || return 0
        _seen[$name]=1
        local rel=${_path[$name]:-}
        if [ -z "$rel" ]; then
            # Either built in (nothing to load) or no such module at all.
            if grep -qE "/(${name//_/[-_]})\.ko$" "$builtin"; then return 0; fi
            die "kernel module $1 is neither a module nor built into $KERNEL_RELEASE"
        fi
        local deps d
        deps=$(xz -dc "$KERNEL_MODDIR/$rel.xz" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1)
        for d in ${deps//,/ }; do _kmod_visit "$d"; done
        printf '%s\n' "$rel"
    }
    for n in "$@"; do _kmod_visit "$n"; done
}

# kmod_stage DEST NAME... : decompress the modules (and their dependencies) into
# DEST/lib/modules/<path>.ko and write DEST/lib/modules/load-order (insmod order) plus a
# matching modules.dep for reference.
kmod_stage() {
    local dest=$1; shift
    local list; list=$(kmod_resolve "$@") || exit 1
    mkdir -p "$dest/lib/modules"
    : > "$dest/lib/modules/load-order"
    : > "$dest/lib/modules/modules.dep"
    local rel deps
    for rel in $list; do
        mkdir -p "$dest/lib/modules/$(dirname "$rel")"
        xz -dc "$KERNEL_MODDIR/$rel.xz" > "$dest/lib/modules/$rel"
        printf '%s\n' "$rel" >> "$dest/lib/modules/load-order"
        deps=$(tr '\0' '\n' < "$dest/lib/modules/$rel" | sed -n 's/^depends=//p' | head -n1)
        printf '%s: %s\n' "$rel" "${deps//,/ }" >> "$dest/lib/modules/modules.dep"
    done
}

# busybox_stage DEST : /bin/busybox plus one symlink per applet, /sbin -> bin.
busybox_stage() {
    local dest=$1 a
    mkdir -p "$dest/bin"
    cp "$BUSYBOX" "$dest/bin/busybox"
    for a in $("$BUSYBOX" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$dest/bin/$a"
    done
    ln -sfn bin "$dest/sbin"
    ln -sfn . "$dest/usr" 2>/dev/null || true
}

# initramfs_skeleton DEST : directories and the /dev/console node the kernel opens for
# init's stdio before any devtmpfs is mounted (without it init runs with no console).
initramfs_skeleton() {
    local dest=$1
    mkdir -p "$dest"/{dev,proc,sys,run,tmp,root,etc,lib/modules}
    [ -e "$dest/dev/console" ] || mknod -m 600 "$dest/dev/console" c 5 1 \
        || die "mknod /dev/console failed (run as root)"
    [ -e "$dest/dev/null" ] || mknod -m 666 "$dest/dev/null" c 1 3
}

# cpio_pack DIR OUT : newc cpio of DIR (owner root), gzip-compressed, written atomically.
# Busybox's cpio does the archiving so that no cpio package is needed on the host.
cpio_pack() {
    local dir=$1 out=$2
    (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) \
        | gzip -9n > "$out.tmp"
    mv "$out.tmp" "$out"
}

# Inputs fingerprint: rebuild a derived file when any input changed (script, init, kernel).
inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

# tools_stage DEST BIN... : dynamically linked host binaries (installed from Debian
# packages) with every shared library ldd resolves for them, under the same paths, plus an
# ld.so.cache built for DEST so the guest's loader finds them without LD_LIBRARY_PATH.
tools_stage() {
    local dest=$1 bin path lib
    shift
    mkdir -p "$dest/bin" "$dest/etc"
    for bin in "$@"; do
        path=$(command -v "$bin") || die "$bin not installed (scripts/setup/vmm.sh installs it)"
        cp -L "$path" "$dest/bin/$bin"
        for lib in $(ldd "$path" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }'); do
            mkdir -p "$dest$(dirname "$lib")"
            [ -e "$dest$lib" ] || cp -L "$lib" "$dest$lib"
        done
    done
    printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu > "$dest/etc/ld.so.conf"
    ldconfig -r "$dest" 2>/dev/null || die "ldconfig -r $dest failed"
}
