#!/bin/bash
# Build (or reuse) the lab's iommufd guest kernel from a Debian linux-source
# tarball (image.sh passes linux-source-7.2 from trixie-backports):
#
#   tests/lab/kernel.sh /path/to/linux-source-7.2.tar.xz VERSION
#       -> prints the cache directory holding bzImage, modules/lib/modules/KVER,
#          kernel-release and source-version
#
# The cache lives outside the repository (VFIOMOND_LAB_CACHE, default
# /var/cache/vfiomond-lab), keyed by the package version and a hash of this
# script and tests/lab/iommufd.config; a build of 6.12 took 8 minutes on 2 cores.
# With VFIOMOND_LAB_TIMINGS set, a build appends "kernel<TAB>iommufd<TAB>seconds"
# to that file (tests/lab/image.sh).
set -euo pipefail

tarball=${1:?usage: kernel.sh TARBALL VERSION}
version=${2:?usage: kernel.sh TARBALL VERSION}
here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/iommufd.config
cache_root=${VFIOMOND_LAB_CACHE:-/var/cache/vfiomond-lab}
key=$(cat "$0" "$fragment" | sha256sum | cut -c1-12)
dir="$cache_root/kernel-iommufd-$version-$key"

if [ -f "$dir/complete" ]; then
    echo "$dir"
    exit 0
fi
for tool in make gcc bc bison flex cpio; do
    command -v "$tool" >/dev/null || { echo "kernel.sh: $tool is missing (make deps)" >&2; exit 1; }
done
[ -f /usr/include/libelf.h ] || { echo "kernel.sh: libelf-dev is missing (make deps)" >&2; exit 1; }

# An interrupted build of the same key goes on where it stopped.
build="$dir/build"
mkdir -p "$build"
echo "kernel.sh: building linux-source $version with iommufd (about 10 minutes on 2 cores; log in $dir/build.log)" >&2
start=$(date +%s)

build() {
    if [ ! -f "$build/.extracted" ]; then
        tar -xf "$tarball" -C "$build" --strip-components=1 && touch "$build/.extracted" || return 1
    fi
    cd "$build" || return 1
    make x86_64_defconfig || return 1
    scripts/kconfig/merge_config.sh -m .config "$fragment" || return 1
    make olddefconfig || return 1
    # Every line of the fragment must have survived olddefconfig (a symbol
    # whose dependencies are missing is dropped silently otherwise).
    local line
    while IFS= read -r line; do
        case "$line" in
            *=n) ! grep -q "^${line%=n}=" .config ;;
            *) grep -qxF "$line" .config ;;
        esac || { echo "kernel.sh: $line did not survive olddefconfig"; return 1; }
    done < <(grep -E '^CONFIG_' "$fragment")
    # Niced: make test boots the other suites while this builds (tests/lab/images.sh).
    nice -n 10 make -j"$(nproc)" bzImage modules || return 1
    rm -rf "$dir/modules"
    make modules_install INSTALL_MOD_PATH="$dir/modules" INSTALL_MOD_STRIP=1 DEPMOD=/bin/true || return 1
    cp arch/x86/boot/bzImage "$dir/bzImage" || return 1
    make -s kernelrelease >"$dir/kernel-release"
}

if ! build >>"$dir/build.log" 2>&1; then
    tail -30 "$dir/build.log" >&2
    echo "kernel.sh: the build failed; full log in $dir/build.log" >&2
    exit 1
fi
echo "$version" >"$dir/source-version"
seconds=$(( $(date +%s) - start ))
echo "kernel.sh: built $(cat "$dir/kernel-release") in $(( seconds / 60 )) min" >&2
[ -z "${VFIOMOND_LAB_TIMINGS:-}" ] || printf 'kernel\tiommufd\t%s\n' "$seconds" >>"$VFIOMOND_LAB_TIMINGS"
rm -rf "$build"
touch "$dir/complete"
for old in "$cache_root"/kernel-iommufd-*; do
    [ "$old" = "$dir" ] || rm -rf "$old"
done
echo "$dir"
