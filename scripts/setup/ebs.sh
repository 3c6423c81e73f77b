#!/usr/bin/env bash
# Installs what the ebs-blockdev crate's integration tests and benchmark need.
# Idempotent: packages already installed are not touched, so running it twice is cheap.
#
#   Debian packages: qemu-utils (qemu-io, qemu-img, qemu-nbd: NBD client peers and the
#                    benchmark baseline server), libnbd-bin (nbdinfo, nbdcopy: a second,
#                    independent NBD client), fio (benchmark; its nbd engine uses libnbd),
#                    util-linux (fallocate, used by the benchmark's image preparation).
set -euo pipefail

debian_packages=(qemu-utils libnbd-bin fio util-linux)

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

for tool in qemu-io qemu-img qemu-nbd nbdinfo fio; do
    command -v "$tool" >/dev/null || { echo "ebs setup: $tool still missing" >&2; exit 1; }
done
echo "ebs setup: ok (qemu-io, qemu-img, qemu-nbd, nbdinfo, fio present)"
