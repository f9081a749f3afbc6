#!/usr/bin/env python3
"""Scenario "hotplug": vfiomond was started before any vfio module was loaded.

Phases, each ending in a scrape of the running daemon saved as
/lab/out/scrapes/PHASE.prom (the lab test reads them):
  before    nothing loaded, nothing bound
  loaded    vfio-pci and type1 loaded, edu and ivshmem bound (tests/lab/guest/bind.sh)
  in-use    edu's group and device open in this process
  workload  the standard scenario's workload on both devices
  unbound   ivshmem unbound from vfio-pci
  rebound   ivshmem bound again and its BAR touched
  unloaded  both unbound, vfio_pci, vfio_pci_core and vfio_iommu_type1 removed
  reloaded  loaded and bound again; 1 MiB MAP_DMA and a BAR touch on edu
Each phase waits (up to PHASE_TIMEOUT) for the daemon to show the change.
The udev events vfiomond's own DeviceWatcher saw are written to
/lab/out/udev-events.jsonl.  Prints one JSON line; exit 0 only if all ran.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import standard  # noqa: E402
import vfiolib as v  # noqa: E402

OUT = "/lab/out"
SRC = "/lab/src"
PHASE_TIMEOUT = 180.0
MIB = 1 << 20
RELOAD_IOVA = 0x3000000
MODULES = ("vfio_pci", "vfio_pci_core", "vfio_iommu_type1")


def log(msg):
    print("hotplug: " + msg, file=sys.stderr, flush=True)


def scrape():
    return v.scrape(os.environ.get("VFIOMOND_PORT", "10119"))


sample = v.sample


def attached(text, probe):
    return sample(text, "vfiomond_probe_attached", probe=probe) == [1.0]


def has_device(text, bdf):
    return bool(sample(text, "vfiomond_device_info", device=bdf))


def has_fault_series(text, bdf):
    return bool(sample(text, "vfiomond_bar_fault_duration_seconds_count", device=bdf))


def wait_for(phase, what, condition):
    """Scrape until ``condition(text)``; save the scrape; seconds it took."""
    start = time.monotonic()
    while True:
        text = scrape()
        if condition(text):
            break
        if time.monotonic() - start > PHASE_TIMEOUT:
            raise RuntimeError("%s: vfiomond did not show %s within %d s" % (phase, what, PHASE_TIMEOUT))
        time.sleep(0.5)
    took = time.monotonic() - start
    with open(os.path.join(OUT, "scrapes", phase + ".prom"), "w") as f:
        f.write(text)
    log("%s: %s after %.1f s" % (phase, what, took))
    return round(took, 1)


def bind_all():
    subprocess.run([os.path.join(SRC, "tests/lab/guest/bind.sh")], check=True, stdout=sys.stderr)


def unbind(bdf):
    with open("/sys/bus/pci/drivers/vfio-pci/unbind", "w") as f:
        f.write(bdf)


def bind_again(bdf):
    # driver_override still names vfio-pci.
    with open("/sys/bus/pci/drivers_probe", "w") as f:
        f.write(bdf)


def touch_bar(dev):
    container = v.Container(dev.iommu_group)
    device_fd = container.device(dev.bdf)
    bar = v.region(device_fd, dev.bar)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    v.set_pci_command(device_fd, config, v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY)
    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    v.read_strided(addr, bar.size, max(v.PAGE, bar.size // 16))
    v.munmap(addr, bar.size)
    os.close(device_fd)
    container.close()


def map_and_touch(dev, size):
    container = v.Container(dev.iommu_group)
    buf = v.mmap_anonymous(size)
    v.touch_pages(buf, size)
    container.map_dma(buf, RELOAD_IOVA, size, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    unmapped = container.unmap_dma(RELOAD_IOVA, size)
    v.munmap(buf, size)
    container.close()
    touch_bar(dev)
    return unmapped


def record_udev_events(path):
    """vfiomond's own DeviceWatcher, writing each event it sees as a JSON line."""
    import threading

    from vfiomond.devices import DeviceWatcher

    watcher = DeviceWatcher()
    if not watcher.start():
        raise RuntimeError("DeviceWatcher could not follow udev events")
    done = threading.Event()

    def drain():
        with open(path, "w") as f:
            while not done.is_set():
                for ev in watcher.events():
                    if ev.subsystem == "module" or ev.facts.get("vendor") in ("0x1234", "0x1af4") or ev.action == "remove":
                        f.write(json.dumps(ev._asdict(), sort_keys=True) + "\n")
                        f.flush()
                time.sleep(0.2)
        watcher.stop()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()

    def stop():
        time.sleep(1.0)
        done.set()
        thread.join(5)

    return stop


def phases(summary):
    os.makedirs(os.path.join(OUT, "scrapes"), exist_ok=True)
    took = summary["seconds_to_notice"]
    took["before"] = wait_for("before", "the starting state", lambda t: bool(sample(t, "vfiomond_build_info")))

    bind_all()
    devices = v.find_devices()
    if sorted(d.name for d in devices) != ["edu", "ivshmem"]:
        raise RuntimeError("bound: %s" % [d.name for d in devices])
    summary["devices"] = [{"device": d.bdf, "name": d.name, "iommu_group": d.iommu_group, "vendor_id": d.vendor_id,
                           "device_id": d.device_id, "region": standard.BAR_NAMES[d.bar]} for d in devices]
    bdfs = [d.bdf for d in devices]
    took["loaded"] = wait_for("loaded", "probes attached and both devices", lambda t: attached(t, "bar_fault")
                              and attached(t, "dma_map") and all(has_device(t, b) for b in bdfs))

    edu, ivshmem = sorted(devices, key=lambda d: d.name)
    container = v.Container(edu.iommu_group)
    device_fd = container.device(edu.bdf)
    took["in_use"] = wait_for("in-use", "edu in use", lambda t: sample(t, "vfiomond_device_users", device=edu.bdf) == [1.0])
    os.close(device_fd)
    container.close()

    summary["workload"] = [standard.exercise(d) for d in devices]
    took["workload"] = wait_for("workload", "faults on both devices", lambda t: all(has_fault_series(t, b) for b in bdfs))

    unbind(ivshmem.bdf)
    took["unbound"] = wait_for("unbound", "ivshmem gone", lambda t: not has_device(t, ivshmem.bdf)
                               and not has_fault_series(t, ivshmem.bdf))

    bind_again(ivshmem.bdf)
    took["rebound_device"] = wait_for("rebound-device", "ivshmem back", lambda t: has_device(t, ivshmem.bdf))
    touch_bar(ivshmem)
    took["rebound"] = wait_for("rebound", "ivshmem faults", lambda t: has_fault_series(t, ivshmem.bdf))

    for d in devices:
        unbind(d.bdf)
    # vfio_pci_core exists from 5.15; before, vfio_pci is one module.
    loaded = [m for m in MODULES if os.path.isdir("/sys/module/" + m)]
    for module in loaded:
        subprocess.run(["rmmod", module], check=True)
    summary["unloaded_modules"] = loaded
    took["unloaded"] = wait_for("unloaded", "probes detached and no devices", lambda t: not attached(t, "bar_fault")
                                and not attached(t, "dma_map") and not any(has_device(t, b) for b in bdfs))

    bind_all()
    took["reloaded_probes"] = wait_for("reloaded-probes", "probes attached again", lambda t: attached(t, "bar_fault")
                                       and attached(t, "dma_map") and all(has_device(t, b) for b in bdfs))
    summary["reload_mapped_bytes"] = MIB
    summary["reload_unmapped_bytes"] = map_and_touch(edu, MIB)
    took["reloaded"] = wait_for("reloaded", "edu faults after the reload", lambda t: has_fault_series(t, edu.bdf))


def main():
    summary = {"scenario": "hotplug", "pid": os.getpid(), "kernel": os.uname().release,
               "daemon_pid": int(os.environ.get("VFIOMOND_PID", "0")), "seconds_to_notice": {}}
    stop_recording = record_udev_events(os.path.join(OUT, "udev-events.jsonl"))
    try:
        phases(summary)
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    stop_recording()
    pid = summary["daemon_pid"]
    summary["daemon_alive"] = bool(pid) and os.path.exists("/proc/%d" % pid)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
