#!/bin/sh
# Load vfio-pci and bind the lab's devices (edu 1234:11e8, ivshmem 1af4:1110) to it.
# Prints one line per device; exit 1 if one could not be bound.
set -u
modprobe vfio_iommu_type1 && modprobe vfio-pci || { echo "modprobe vfio-pci failed"; exit 1; }
for dev in /sys/bus/pci/devices/*; do
    case "$(cat "$dev/vendor"):$(cat "$dev/device")" in
        0x1234:0x11e8|0x1af4:0x1110) ;;
        *) continue ;;
    esac
    bdf=${dev##*/}
    [ -e "$dev/driver" ] && echo "$bdf" >"$dev/driver/unbind"
    echo vfio-pci >"$dev/driver_override"
    echo "$bdf" >/sys/bus/pci/drivers_probe
    [ "$(basename "$(readlink "$dev/driver")")" = vfio-pci ] || { echo "binding $bdf to vfio-pci failed"; exit 1; }
    echo "bound $bdf to vfio-pci, IOMMU group $(basename "$(readlink "$dev/iommu_group")")" | tee -a /lab/out/steps
done
