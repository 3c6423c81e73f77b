#!/usr/bin/env bash
# Installs what the imds crate's integration tests, fuzz script and benchmark need.
# Idempotent: every step checks before it installs, so running it twice is cheap.
#
#   Debian packages: cloud-init (22.4.x, its python modules drive the Ec2 datasource test),
#                    wrk (benchmark), openssl (identity document verification), curl and
#                    tcpdump and iproute2 (tap/netns test), python3-venv (client venv).
#   Python venv:     .cache/venv-imds with botocore, boto3, awscli (from the machine's pip
#                    configuration; no index is named here).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_dir="${IMDS_VENV:-$repo_root/.cache/venv-imds}"

debian_packages=(cloud-init wrk openssl curl tcpdump iproute2 python3-venv python3-pip)

missing_packages=()
for package in "${debian_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing_packages+=("$package")
    fi
done
if [ "${#missing_packages[@]}" -gt 0 ]; then
    echo "imds setup: installing Debian packages: ${missing_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # cloud-init's package would enable its boot services; nothing here boots with them.
    apt-get install -y -qq --no-install-recommends "${missing_packages[@]}"
fi

# The tests import cloud-init's modules; cloud-init must never run at this machine's boot.
if [ -d /etc/cloud ] && [ ! -e /etc/cloud/cloud-init.disabled ]; then
    touch /etc/cloud/cloud-init.disabled
fi

# Debian's interpreter: cloud-init's modules live in its dist-packages, and the venv is
# built from it too so one python serves every test.
system_python=/usr/bin/python3
if [ ! -x "$venv_dir/bin/python" ]; then
    echo "imds setup: creating venv at $venv_dir"
    mkdir -p "$(dirname "$venv_dir")"
    "$system_python" -m venv "$venv_dir"
fi
if ! "$venv_dir/bin/python" -c 'import botocore, boto3, awscli' 2>/dev/null; then
    echo "imds setup: installing botocore boto3 awscli into $venv_dir"
    "$venv_dir/bin/pip" install --quiet botocore boto3 awscli
fi

echo "imds setup: ok (venv: $venv_dir; cloud-init $(dpkg-query -W -f='${Version}' cloud-init))"
