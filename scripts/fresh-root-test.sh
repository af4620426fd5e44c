#!/usr/bin/env bash
# The fresh-root test (issue 13): the README's "Install a gateway" and "Provision and install
# a room device" sections, followed line by line on two fresh Debian 12 roots
# (debootstrap), reach a recorded session at Blueprint's simulator with no traceback
# anywhere. tests/field/fresh_root.py says what a chroot lacks and what stands in for it.
#
#   sudo make field-test                       # ~5 min here: two debootstraps, two installs
#   ROOM_FRESH_ROOT_BASE=DIR make field-test   # copy DIR (a debootstrapped root) instead
#
# Needs root (debootstrap, chroot, mount) and the Debian mirror and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-root-test: run as root (it debootstraps, mounts and chroots)" >&2
    exit 2
fi
if ! command -v debootstrap >/dev/null; then
    echo "fresh-root-test: installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
exec env ROOM_FRESH_ROOT=1 .venv/bin/pytest -q -p no:cacheprovider tests/field "$@"
