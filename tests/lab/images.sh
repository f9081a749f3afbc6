#!/bin/bash
# Build the cached guest images of several lab suites, overlapping what can
# overlap on a small machine: the iommufd kernel build (CPU) runs while the
# other suites debootstrap (network and disk).
#
#   tests/lab/images.sh SUITE...    (tests/lab/image.sh for each; exit 1 if any failed)
#
# make test starts it in the background before the first test (tests/lab/conftest.py);
# tests/lab/lab.py then finds each image built, or waits for its build (image.sh's lock).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rc=0
suites=" $* "
kernel_pid=
if [[ $suites == *" iommufd "* ]]; then
    # iommufd starts from trixie's root file system.
    "$here/image.sh" trixie >/dev/null || rc=1
    "$here/image.sh" iommufd >/dev/null &
    kernel_pid=$!
fi
for suite in "$@"; do
    [ "$suite" = iommufd ] && continue
    "$here/image.sh" "$suite" >/dev/null || rc=1
done
if [ -n "$kernel_pid" ]; then
    wait "$kernel_pid" || rc=1
fi
exit $rc
