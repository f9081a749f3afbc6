#!/usr/bin/env python3
"""Scenario "standard": the lab's reference VFIO workload (docs/lab.md, "The standard scenario").

For each device (edu BAR0, ivshmem BAR2): type1v2 container; MAP_DMA 4 MiB
read-write (touched) at IOVA 0x1000000 and 4 MiB read-only (never touched) at
0x2000000; mmap the BAR; 4 threads touch it at once (4 rounds, memory decode
toggled between them); a forked child touches
it; PCI_COMMAND memory decode off/on; touch again; munmap; UNMAP_DMA both;
close.  Prints one JSON line describing what was done; exit 0 only if all ran.

vfiomond's event handling is held back on purpose (SIGSTOP) from edu's UNMAP_DMA
until ivshmem's buffers are mapped: the kernel unpins edu's buffers, the process
munmaps them and maps new memory at the same addresses, and only then does the
daemon see the UNMAP.  A verification of the old mappings at that point would read
the new memory: a false pin mismatch (the lab test requires none).
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

MIB = 1 << 20
BUFFER = 4 * MIB
RW_IOVA = 0x1000000
RO_IOVA = 0x2000000
THREADS = 4
# Rounds of the 4-thread touch, memory decode toggled between them (vfio zaps
# the BAR mapping, so each round faults again): one round alone does not always
# overlap two faults under TCG.
ROUNDS = 4
# Seconds to stay mapped before touching the BAR (the lab sets it when a Prometheus scrapes).
HOLD = float(os.environ.get("VFIOMOND_HOLD") or 0)
BAR_NAMES = {0: "bar0", 1: "bar1", 2: "bar2", 3: "bar3", 4: "bar4", 5: "bar5"}


def log(msg):
    print("standard: " + msg, file=sys.stderr, flush=True)


def touch_bar_concurrently(addr, size, step):
    barrier = threading.Barrier(THREADS)
    reads, errors = [], []

    def worker():
        try:
            barrier.wait()
            reads.append(v.read_strided(addr, size, step))
        except Exception as e:  # reported in the summary
            errors.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("touch thread: " + errors[0])
    return reads[0]


def touch_bar_in_child(addr, size, step):
    pid = os.fork()
    if pid == 0:
        try:
            v.read_strided(addr, size, step)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def toggle_memory_decode(device_fd, config):
    """PCI_COMMAND memory decode off, then on: vfio zaps the BAR mappings."""
    command = v.pci_command(device_fd, config)
    v.set_pci_command(device_fd, config, command & ~v.PCI_COMMAND_MEMORY)
    v.set_pci_command(device_fd, config, command | v.PCI_COMMAND_MEMORY)


DAEMON = int(os.environ.get("VFIOMOND_PID") or 0)


def nothing():
    pass


def exercise(dev, after_map=nothing, before_unmap=nothing):
    record = {
        "device": dev.bdf, "name": dev.name, "vendor_id": dev.vendor_id, "device_id": dev.device_id,
        "iommu_group": dev.iommu_group, "region": BAR_NAMES[dev.bar], "region_index": dev.bar,
        "threads": THREADS, "mappings": [],
    }
    container = v.Container(dev.iommu_group)
    rw = v.mmap_anonymous(BUFFER)
    ro = v.mmap_untouched(BUFFER)
    v.touch_pages(rw, BUFFER)
    maps = [
        (rw, RW_IOVA, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE, True),
        (ro, RO_IOVA, v.VFIO_DMA_MAP_FLAG_READ, False),
    ]
    for vaddr, iova, flags, touched in maps:
        container.map_dma(vaddr, iova, BUFFER, flags)
        record["mappings"].append({"iova": iova, "vaddr": vaddr, "size": BUFFER, "flags": flags, "touched": touched})
    log("%s: mapped 2 x 4 MiB" % dev.bdf)
    after_map()
    # The lab's Prometheus scrapes every second: stay mapped long enough to be seen.
    time.sleep(HOLD)
    record["held_seconds"] = HOLD

    device_fd = container.device(dev.bdf)
    bar = v.region(device_fd, dev.bar)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    record["region_size"] = bar.size
    command = v.pci_command(device_fd, config)
    if not command & v.PCI_COMMAND_MEMORY:
        v.set_pci_command(device_fd, config, command | v.PCI_COMMAND_MEMORY)

    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    step = max(v.PAGE, bar.size // 256)
    for round_ in range(ROUNDS):
        if round_:
            time.sleep(HOLD / ROUNDS)  # rounds in different scrapes: rates need two
            toggle_memory_decode(device_fd, config)
        record["touches_per_thread"] = touch_bar_concurrently(addr, bar.size, step)
    record["concurrent_rounds"] = ROUNDS
    record["fork_child_status"] = touch_bar_in_child(addr, bar.size, step)
    if record["fork_child_status"] != 0:
        raise RuntimeError("the forked child failed to touch the BAR")
    toggle_memory_decode(device_fd, config)
    record["command_toggled"] = True
    v.read_strided(addr, bar.size, step)
    v.munmap(addr, bar.size)
    log("%s: touched %s (%d bytes) from %d threads, a child, and after a decode toggle"
        % (dev.bdf, record["region"], bar.size, THREADS))

    before_unmap()
    for mapping in record["mappings"]:
        mapping["unmapped"] = container.unmap_dma(mapping["iova"], mapping["size"])
    v.munmap(rw, BUFFER)
    v.munmap(ro, BUFFER)
    os.close(device_fd)
    container.close()
    return record


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="edu,ivshmem", help="comma-separated: edu, ivshmem")
    p.add_argument("--sysfs", default="/sys")
    args = p.parse_args()
    summary = {"scenario": "standard", "pid": os.getpid(), "kernel": os.uname().release, "devices": []}
    try:
        wanted = args.devices.split(",")
        devices = [d for d in v.find_devices(args.sysfs) if d.name in wanted]
        if sorted(d.name for d in devices) != sorted(wanted):
            raise RuntimeError("devices bound to vfio-pci: %s; wanted %s" % ([d.name for d in devices], wanted))
        delay = {"daemon": DAEMON}

        def hold_daemon():
            if DAEMON:
                os.kill(DAEMON, signal.SIGSTOP)
                delay["stopped_at"] = time.time()

        def release_daemon():
            if "stopped_at" in delay and "resumed_at" not in delay:
                os.kill(DAEMON, signal.SIGCONT)
                delay["resumed_at"] = time.time()

        devices.sort(key=lambda d: d.name != "edu")
        try:
            for i, dev in enumerate(devices):
                last = i == len(devices) - 1
                summary["devices"].append(exercise(dev, after_map=release_daemon if i else nothing,
                                                  before_unmap=nothing if last else hold_daemon))
        finally:
            release_daemon()
        # Did the process map new memory where an unmapped DMA buffer was, while the
        # daemon had not yet seen the UNMAP?
        first, later = summary["devices"][0]["mappings"], [m for d in summary["devices"][1:] for m in d["mappings"]]
        delay["reused_vaddrs"] = sorted({m["vaddr"] for m in first} & {m["vaddr"] for m in later})
        summary["daemon_delayed"] = delay
        maps = [m for d in summary["devices"] for m in d["mappings"]]
        summary["dma_mapped_bytes"] = sum(m["size"] for m in maps)
        summary["dma_unmapped_bytes"] = sum(m["unmapped"] for m in maps)
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
