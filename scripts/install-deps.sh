#!/bin/sh
# Install, from the distribution, what vfiomond's tests and lab need on a
# Debian-like host (root); prometheus brings promtool for the alert rules.
# Already installed packages are left alone.
set -eu
packages="python3 python3-prometheus-client python3-pytest python3-hypothesis python3-yaml python3-bcrypt openssl prometheus qemu-system-x86 qemu-utils debootstrap debian-archive-keyring e2fsprogs zstd"
# The iommufd suite builds its guest kernel (tests/lab/kernel.sh).
packages="$packages make gcc libc6-dev bc bison flex cpio libelf-dev libssl-dev"
# The Debian package (scripts/build-deb.sh; the systemd scenario installs it) and the RPM spec.
packages="$packages dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools"
packages="$packages python3-argparse-manpage lintian fakeroot rpm"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing (run as root to install them)" >&2
    exit 1
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
