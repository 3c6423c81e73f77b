#!/usr/bin/env bash
# Installs what the ebs-blockdev crate's integration tests and benchmark need.
# Idempotent: packages already installed are not touched, so running it twice is cheap.
#
#   Debian packages: qemu-utils (qemu-io, qemu-img, qemu-nbd: NBD client peers and the
#                    benchmark baseline server), libnbd-bin (nbdinfo, nbdcopy: a second,
#                    independent NBD client), fio (benchmark; its nbd engine uses libnbd),
#                    strace (the durability-order test traces ebsd's fdatasync calls),
#                    dmsetup, e2fsprogs and mount (the power-cut test puts ebsd's data on
#                    ext4 over a dm-log-writes device and loop devices in the test host),
#                    python3-venv (for the venv below).
#   Python venv:     .cache/venv-ebs with moto[server] (an S3-compatible server the snapshot
#                    tests use to exercise the object store's S3 backend; installed from the
#                    machine's pip configuration, no index named here).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_dir="${EBS_VENV:-$repo_root/.cache/venv-ebs}"

debian_packages=(qemu-utils libnbd-bin fio strace dmsetup e2fsprogs mount python3-venv python3-pip)

missing_packages=()
for package in "${debian_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing_packages+=("$package")
    fi
done
if [ "${#missing_packages[@]}" -gt 0 ]; then
    echo "ebs setup: installing Debian packages: ${missing_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_packages[@]}"
fi

if [ ! -x "$venv_dir/bin/python" ]; then
    echo "ebs setup: creating venv at $venv_dir"
    mkdir -p "$(dirname "$venv_dir")"
    /usr/bin/python3 -m venv "$venv_dir"
fi
if [ ! -x "$venv_dir/bin/moto_server" ]; then
    echo "ebs setup: installing moto[server] into $venv_dir"
    "$venv_dir/bin/pip" install --quiet "moto[server]"
fi

for tool in qemu-io qemu-img qemu-nbd nbdinfo fio strace dmsetup mkfs.ext4 e2fsck losetup "$venv_dir/bin/moto_server"; do
    command -v "$tool" >/dev/null || { echo "ebs setup: $tool still missing" >&2; exit 1; }
done
echo "ebs setup: ok (qemu-io, qemu-img, qemu-nbd, nbdinfo, fio, strace, dmsetup, mkfs.ext4, e2fsck, losetup; moto_server in $venv_dir)"
