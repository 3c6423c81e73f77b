#!/usr/bin/env bash
# Installs what the VMM's tests need beyond Rust: the guest kernel and initramfs
# (scripts/guest-assets.sh, from Debian packages) and the test host (QEMU 10 and the
# 6.12 kernel from bookworm-backports through a private APT config). Both are cached
# under .cache/ and rebuilt only when missing, so running this twice is cheap.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Debian packages whose binaries go into the guest's tools initramfs (curl for the IMDS
# test; fio, iperf3, sockperf for scripts/bench-blk.sh and bench-net.sh, which also run
# iperf3/sockperf servers on the test host's side of the link). curl also goes into the
# default AMI's root file system, which e2fsprogs' mke2fs builds (scripts/default-ami.sh).
debian_packages=(curl fio iperf3 sockperf e2fsprogs fonts-dejavu-core)
missing_packages=()
for package in "${debian_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing_packages+=("$package")
    fi
done
if [ "${#missing_packages[@]}" -gt 0 ]; then
    echo "vmm setup: installing Debian packages: ${missing_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_packages[@]}"
fi
"$repo_root/scripts/guest-assets.sh"
"$repo_root/scripts/default-ami.sh"
"$repo_root/scripts/testhost.sh" setup
echo "vmm setup: ok (guest assets, default AMI and test host ready)"
