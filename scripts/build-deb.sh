#!/bin/sh
# The Debian package from this checkout (make deb): build/deb/vfiomond_VERSION_all.deb,
# built with dpkg-buildpackage in a copy of the tree (the checkout stays clean), then
# checked by lintian, whose errors fail the build.
#   scripts/build-deb.sh [--out DIR] [--upgrade-of VERSION]
#     --out DIR              where the .deb goes (default build/deb); its path is printed
#     --upgrade-of VERSION   a rebuilt package, VERSION+rebuild1 (the lab's upgrade test)
# Its build tools come from scripts/install-deps.sh (make deb runs it first).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
out=$src/build/deb
rebuild=
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --upgrade-of) rebuild=$2; shift 2 ;;
    *) echo "usage: scripts/build-deb.sh [--out DIR] [--upgrade-of VERSION]" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/vfiomond"
(cd "$src" && tar --exclude=./.git --exclude=./build --exclude='*.whl' --exclude=__pycache__ --exclude=.pytest_cache -cf - .) \
    | tar -C "$work/vfiomond" -xf -
if [ -n "$rebuild" ]; then
    { printf 'vfiomond (%s+rebuild1) unstable; urgency=medium\n\n  * Rebuilt.\n\n -- %s  %s\n\n' \
        "$rebuild" "vfiomond developers <vfiomond@lists.vfiomond.org>" "$(date -R)"
      cat "$work/vfiomond/debian/changelog"; } >"$work/changelog"
    mv "$work/changelog" "$work/vfiomond/debian/changelog"
fi
# The distribution's interpreters only: pybuild runs "python3.X -m build" from PATH.
(cd "$work/vfiomond" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) || {
    tail -n 30 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed" >&2
    exit 1
}
mkdir -p "$out"
deb=$(ls "$work"/vfiomond_*_all.deb)
cp "$deb" "$out/"
deb=$out/$(basename "$deb")
# Errors fail; warnings and notes are printed.
PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error "$deb" >&2 \
    || { echo "build-deb: lintian reports errors" >&2; exit 1; }
echo "$deb"
