#!/usr/bin/env bash
# Installs what the VMM's tests need beyond Rust: the guest kernel and initramfs
# (scripts/guest-assets.sh, from Debian packages) and the test host (QEMU 10 and the
# 6.12 kernel from bookworm-backports through a private APT config). Both are cached
# under .cache/ and rebuilt only when missing, so running this twice is cheap.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$repo_root/scripts/guest-assets.sh"
"$repo_root/scripts/testhost.sh" setup
echo "vmm setup: ok (guest assets and test host ready)"
