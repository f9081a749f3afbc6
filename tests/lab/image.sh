#!/bin/bash
# Build (or reuse) the cached guest image for one lab suite.
#
#   tests/lab/image.sh SUITE        -> prints the cache directory holding
#                                      rootfs.img, vmlinuz, initrd.img
#                                      (no initrd.img for iommufd)
#
# The cache lives outside the repository (VFIOMOND_LAB_CACHE, default
# /var/cache/vfiomond-lab) and is keyed by the suite and a hash of this
# script, so changing the package list or the bootstrap rebuilds it.  One
# build per suite at a time (a lock in the cache): a second caller waits for
# the first and reuses its image (tests/lab/images.sh builds ahead of the tests).
#
# SUITE iommufd is trixie's user space with a kernel built by kernel.sh from
# trixie-backports' linux-source-7.2 (no Debian kernel enables CONFIG_IOMMUFD;
# 6.13+ has IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_CHANGE_PROCESS): it shares
# trixie's debootstrap, whose root file system tree the trixie build keeps in
# its cache directory.
#
# With VFIOMOND_LAB_TIMINGS set, each build appends "image<TAB>SUITE<TAB>seconds"
# (and the debootstrap's own line) to that file: the summary make test prints.
set -euo pipefail

suite=${1:?usage: image.sh SUITE}
here=$(cd "$(dirname "$0")" && pwd)
dist=$suite
# python3-yaml and python3-bcrypt: --web.config.file (TLS and basic auth on /metrics);
# debootstrap does not resolve virtual packages: Debian 11 and 12's bcrypt (cffi) needs
# python3-cffi-backend named.
common=python3,python3-bpfcc,bpfcc-tools,python3-prometheus-client,python3-pyudev,python3-systemd,\
python3-yaml,python3-bcrypt,python3-cffi-backend,kmod,pciutils,iproute2,udev,systemd-sysv,procps,xz-utils
packages=linux-image-amd64,linux-headers-amd64,$common
# The real VFIO users of the scenarios vmm and dpdk (tests/lab/scenarios): the
# suite's QEMU as the L2 VMM, and DPDK's testpmd (in dpdk-dev) with the e1000
# PMD for the lab's e1000e.  Debian 12: QEMU 7.2, DPDK 22.11; Debian 13: QEMU 10.0,
# DPDK 24.11 (the iommufd suite has trixie's).
clients=qemu-system-x86,dpdk,dpdk-dev
key_files="$0"
case "$suite" in
    bookworm) packages="$packages,initramfs-tools,$clients,librte-net-e1000-23" ;;
    trixie) packages="$packages,initramfs-tools,$clients,librte-net-e1000-25" ;;
    # BCC reads this kernel's headers from the kheaders module (needs xz-utils).
    iommufd) key_files="$0 $here/kernel.sh $here/iommufd.config" ;;
    # sid's kernel packages pull in dracut, which conflicts with initramfs-tools.
    sid) packages="$packages,dracut" ;;
    # Debian 11: Python 3.9 and no python3-tomli; vfiomond reads TOML with python3-toml.
    bullseye) packages="$packages,initramfs-tools,python3-toml" ;;
    *) echo "image.sh: unknown suite '$suite' (bullseye, bookworm, trixie, sid, iommufd)" >&2; exit 2 ;;
esac

cache_root=${VFIOMOND_LAB_CACHE:-/var/cache/vfiomond-lab}
# shellcheck disable=SC2086
key=$(cat $key_files | sha256sum | cut -c1-12)
dir="$cache_root/$suite-$key"

if [ -f "$dir/complete" ]; then
    echo "$dir"
    exit 0
fi
mkdir -p "$cache_root"
exec 9>"$cache_root/$suite.lock"
flock 9
if [ -f "$dir/complete" ]; then  # built by the holder of the lock meanwhile
    echo "$dir"
    exit 0
fi

timing() {
    [ -n "${VFIOMOND_LAB_TIMINGS:-}" ] && printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$VFIOMOND_LAB_TIMINGS"
    return 0
}
start=$(date +%s)

for tool in debootstrap mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "image.sh: $tool is missing (make deps)" >&2; exit 1; }
done

rm -rf "$dir"
mkdir -p "$dir"
rootfs="$dir/rootfs"

if [ "$suite" = iommufd ]; then
    trixie=$("$0" trixie)
    echo "image.sh: iommufd from trixie's root file system ($trixie)" >&2
    cp -a "$trixie/rootfs" "$rootfs"
    # Debian's kernel, its headers and initramfs stay (unused: the guest boots
    # the lab's kernel without an initrd, and BCC finds no headers for it).
    # The kernel's source comes through the copy's own apt (signatures checked),
    # from the backports of trixie's mirror; it does not stay in the image.
    source=linux-source-7.2
    mirror=$(awk '$1 == "deb" {print $2; exit}' "$rootfs/etc/apt/sources.list")
    echo "deb $mirror trixie-backports main" >"$rootfs/etc/apt/sources.list.d/vfiomond-lab-backports.list"
    chroot "$rootfs" apt-get -qq update
    chroot "$rootfs" sh -c "cd /tmp && apt-get -qq download $source"
    deb=$(ls "$rootfs/tmp/${source}"_*.deb)
    mkdir -p "$dir/source"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir/source" "./usr/src/$source.tar.xz"
    kernel=$("$here/kernel.sh" "$dir/source/usr/src/$source.tar.xz" "$(dpkg-deb -f "$deb" Version)")
    rm -rf "$deb" "$dir/source" "$rootfs/etc/apt/sources.list.d/vfiomond-lab-backports.list" "$rootfs"/var/lib/apt/lists/*
    release=$(cat "$kernel/kernel-release")
    mkdir -p "$rootfs/usr/lib/modules"
    cp -a "$kernel/modules/lib/modules/$release" "$rootfs/usr/lib/modules/"
    chroot "$rootfs" depmod -a "$release"
    cp "$kernel/bzImage" "$dir/vmlinuz"
else
    echo "image.sh: debootstrap $dist into $rootfs (a few minutes)" >&2
    debootstrap --variant=minbase --include="$packages" "$dist" "$rootfs" >"$dir/debootstrap.log" 2>&1 || {
        tail -20 "$dir/debootstrap.log" >&2
        echo "image.sh: debootstrap $suite failed; full log in $dir/debootstrap.log" >&2
        exit 1
    }
    timing debootstrap "$suite" $(( $(date +%s) - start ))

    # The guest's first process: mount the checkout and the output folder that the
    # host shares over virtio-9p, then become the checkout's tests/lab/guest/pid1.sh
    # (which runs the lab itself or hands PID 1 over to systemd), so that changes to
    # the lab need no image rebuild.
    cat >"$rootfs/sbin/vfiomond-lab-init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
modprobe 9pnet_virtio && modprobe 9p
mkdir -p /lab/src /lab/out /lab/extra
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 src /lab/src
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /lab/out
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 extra /lab/extra 2>/dev/null
[ -x /lab/src/tests/lab/guest/pid1.sh ] && exec /lab/src/tests/lab/guest/pid1.sh
echo "vfiomond-lab-init: /lab/src/tests/lab/guest/pid1.sh not found"
sync
echo o >/proc/sysrq-trigger
sleep 60
INIT
    chmod 755 "$rootfs/sbin/vfiomond-lab-init"
    echo vfiomond-lab >"$rootfs/etc/hostname"

    # sid's split kernel packages keep the image in /usr/lib/modules/VERSION/vmlinuz
    # too; /boot is where Debian's postinst puts a copy.
    vmlinuz=$(ls "$rootfs"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
    [ -n "$vmlinuz" ] || vmlinuz=$(ls "$rootfs"/usr/lib/modules/*/vmlinuz | sort -V | tail -1)
    cp "$vmlinuz" "$dir/vmlinuz"
    initrd=$(ls "$rootfs"/boot/initrd.img-* 2>/dev/null | sort -V | tail -1)
    [ -n "$initrd" ] || { echo "image.sh: no initrd in $rootfs/boot" >&2; exit 1; }
    cp "$initrd" "$dir/initrd.img"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
fi

truncate -s 4G "$dir/rootfs.img"
mkfs.ext4 -q -F -d "$rootfs" "$dir/rootfs.img"
# trixie's tree is where the iommufd image starts from.
[ "$suite" = trixie ] || rm -rf "$rootfs"
touch "$dir/complete"
# Older builds of this suite are superseded.
for old in "$cache_root/$suite"-*; do
    [ "$old" = "$dir" ] || rm -rf "$old"
done
timing image "$suite" $(( $(date +%s) - start ))
echo "$dir"
