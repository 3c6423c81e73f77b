# Shared helpers for the scripts in scripts/: logging, cache layout and a private APT
# setup that downloads Debian packages without touching the system's apt configuration.
#
# Sourced, not executed. Callers set `set -euo pipefail` themselves.

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# Everything downloaded or built lives outside git. NITRO_CACHE moves it (e.g. to share one
# cache between several checkouts).
CACHE=${NITRO_CACHE:-$REPO/.cache}

log() { printf '[%s] %s\n' "${LOG_TAG:-scripts}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Debian archive URI this machine already uses. We never write a host name into the
# repository: the URI comes from the machine's own apt configuration.
debian_mirror() {
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        # First plain "deb URI suite ..." line (an optional [options] block is skipped).
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "no Debian archive URI found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    printf '%s\n' "${uri%/}"
}

# Private apt state: own sources.list (bookworm + bookworm-backports), lists, cache and an
# empty dpkg status so that `apt-get download` resolves versions independently of what the
# system has installed.
PAPT_DIR=$CACHE/apt
export_papt_config() {
    local etc=$PAPT_DIR/etc
    mkdir -p "$etc/sources.list.d" "$etc/preferences.d" "$PAPT_DIR/lists/partial" \
        "$PAPT_DIR/cache/archives/partial" "$PAPT_DIR/debs"
    local mirror; mirror=$(debian_mirror)
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    cat > "$etc/sources.list.new" <<SRC
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-backports main
SRC
    # Rewrite only on change so that a moved mirror triggers a fresh `apt-get update`.
    if ! cmp -s "$etc/sources.list.new" "$etc/sources.list"; then
        mv "$etc/sources.list.new" "$etc/sources.list"
        rm -f "$PAPT_DIR/lists/.updated"
    else
        rm -f "$etc/sources.list.new"
    fi
    : > "$PAPT_DIR/status"
    cat > "$etc/apt.conf" <<CONF
Dir::Etc::sourcelist "$etc/sources.list";
Dir::Etc::sourceparts "$etc/sources.list.d";
Dir::Etc::preferences "$etc/preferences";
Dir::Etc::preferencesparts "$etc/preferences.d";
Dir::State::lists "$PAPT_DIR/lists";
Dir::State::status "$PAPT_DIR/status";
Dir::Cache "$PAPT_DIR/cache";
// Downloads land in our own cache dir; the _apt sandbox user may not be able to write there.
APT::Sandbox::User "root";
// Only the Packages indexes are needed (no DEP-11 icons/metadata, no translations).
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled "false";
Acquire::Languages "none";
CONF
    export APT_CONFIG=$etc/apt.conf
}

# `apt-get update` for the private lists: when missing, older than a week (so "newest
# kernel" keeps meaning something and old .debs that left the archive are not asked for), or
# when PAPT_REFRESH=1. A failed refresh with usable old lists only warns.
papt_update() {
    export_papt_config
    local stamp=$PAPT_DIR/lists/.updated
    if [ ! -e "$stamp" ] || [ "${PAPT_REFRESH:-0}" = 1 ] || [ -n "$(find "$stamp" -mtime +7)" ]; then
        log "updating private apt lists (bookworm, bookworm-backports)"
        if apt-get -q -o Debug::NoLocking=1 update >&2; then
            touch "$stamp"
        elif [ -e "$stamp" ]; then
            log "warning: apt-get update failed; using the lists from $(date -r "$stamp" +%F)"
        else
            die "apt-get update failed"
        fi
    fi
}

# Newest version of a package among the private lists (empty if unknown).
papt_candidate() {
    apt-cache madison "$1" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -V | tail -n1
}

# Download PKG (optionally PKG=VERSION) into $PAPT_DIR/debs and print the .deb path.
# Without a version, the newest one in any of our suites is taken (backports included).
papt_download() {
    local spec=$1 pkg ver
    pkg=${spec%%=*}
    if [ "$spec" != "$pkg" ]; then ver=${spec#*=}; else ver=$(papt_candidate "$pkg"); fi
    [ -n "$ver" ] || die "package $pkg not found in the private apt lists"
    local arch; arch=$(apt-cache show "$pkg=$ver" | awk '/^Architecture:/ { print $2; exit }')
    # .deb file names encode the epoch colon as %3a.
    local file=$PAPT_DIR/debs/${pkg}_${ver//:/%3a}_${arch}.deb
    if [ ! -s "$file" ]; then
        log "downloading $pkg $ver"
        (cd "$PAPT_DIR/debs" && apt-get -q -o Debug::NoLocking=1 download "$pkg=$ver" >&2) \
            || die "apt-get download $pkg=$ver failed"
    fi
    [ -s "$file" ] || die "expected $file after download"
    printf '%s\n' "$file"
}

# Extract a list of packages (names, optionally =version) into DIR with dpkg -x.
papt_extract() {
    local dir=$1; shift
    mkdir -p "$dir"
    local p deb
    for p in "$@"; do
        deb=$(papt_download "$p")
        dpkg -x "$deb" "$dir"
    done
}

# papt_memo KEY COMMAND... : run an apt query once and reuse its output until the private
# lists are refreshed or the system's installed packages change (each apt-cache/apt-get
# call parses all lists, ~0.4 s; a test-host run would otherwise spend seconds on them).
papt_memo() {
    local key=$1; shift
    local f=$PAPT_DIR/memo/$key
    if [ -s "$f" ] && [ "$f" -nt "$PAPT_DIR/lists/.updated" ] && [ "$f" -nt /var/lib/dpkg/status ]; then
        cat "$f"; return 0
    fi
    mkdir -p "$PAPT_DIR/memo"
    local out; out=$("$@") || return 1
    [ -n "$out" ] || return 1
    printf '%s\n' "$out" > "$f"
    printf '%s\n' "$out"
}

# One lock for everything that builds in $CACHE: tests run test-host commands in parallel,
# and two runs must not extract the same kernel or rebuild the same initramfs at once.
build_lock() {
    mkdir -p "$CACHE"
    exec 9> "$CACHE/.build.lock"
    flock 9
}
build_unlock() { flock -u 9 2>/dev/null || true; exec 9>&-; }
