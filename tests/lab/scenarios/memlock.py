#!/usr/bin/env python3
"""Scenario "memlock": a VFIO user with a small RLIMIT_MEMLOCK maps until MAP_DMA is refused.

A child process (the holder) opens the edu device's container and group as
root, sets RLIMIT_MEMLOCK to 16 MiB, becomes nobody (no CAP_IPC_LOCK, so the
limit applies), maps 4 MiB read-only of never-touched memory at IOVA 0x2000000,
then 4 MiB read-write (touched) buffers at 0x4000000, 0x4400000, ... until a
MAP_DMA fails.  It then clones a process that shares its mm and fd table
(CLONE_VM | CLONE_FILES) and so its locked_vm and VFIO fds.  It reports its own VmLck / VmPin / limit, and keeps its
mappings until ``RELEASE_DIR/scraped`` (or ``stop``) appears, so that the
host's scrape sees a live VFIO user.  The parent prints one JSON line and exits.
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

MIB = 1 << 20
LIMIT = 16 * MIB
BUFFER = 4 * MIB
RO_IOVA = 0x2000000
RW_IOVA = 0x4000000
NOBODY = 65534


def own_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmLck", "VmPin"):
                out[key] = int(value.split()[0]) * 1024
    return out


def map_until_refused(dev):
    container = v.Container(dev.iommu_group)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (LIMIT, LIMIT))
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # drops CAP_IPC_LOCK: type1 now enforces the limit
    ro = v.mmap_untouched(BUFFER)
    container.map_dma(ro, RO_IOVA, BUFFER, v.VFIO_DMA_MAP_FLAG_READ)
    maps = [{"iova": RO_IOVA, "size": BUFFER, "flags": v.VFIO_DMA_MAP_FLAG_READ, "touched": False}]
    refused = None
    for i in range(16):
        buf = v.mmap_anonymous(BUFFER)
        v.touch_pages(buf, BUFFER)
        iova = RW_IOVA + i * BUFFER
        before = own_status()["VmLck"]
        try:
            container.map_dma(buf, iova, BUFFER, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
        except OSError as e:
            refused = {"iova": iova, "size": BUFFER, "errno": e.errno, "locked_before": before}
            v.munmap(buf, BUFFER)
            break
        maps.append({"iova": iova, "size": BUFFER, "flags": 3, "touched": True})
    status = own_status()
    return container, {
        "device": dev.bdf, "limit": LIMIT, "uid": os.getuid(), "mappings": maps, "refused": refused,
        "dma_mapped_bytes": sum(m["size"] for m in maps), "vm_lck": status["VmLck"], "vm_pin": status["VmPin"],
    }


def hold(release_dir, longest):
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        if any(os.path.exists(os.path.join(release_dir, name)) for name in ("scraped", "stop")):
            return
        time.sleep(0.2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release-dir", default="/lab/out", help="hold the mappings until DIR/scraped or DIR/stop exists")
    p.add_argument("--hold-max", type=float, default=300.0)
    p.add_argument("--sysfs", default="/sys")
    args = p.parse_args()
    summary = {"scenario": "memlock", "kernel": os.uname().release}
    edu = [d for d in v.find_devices(args.sysfs) if d.name == "edu"]
    if not edu:
        summary.update(ok=False, error="no edu device bound to vfio-pci")
        print(json.dumps(summary))
        return 1
    r, w = os.pipe()
    holder = os.fork()
    if holder == 0:
        os.close(r)
        sharer = None
        try:
            container, result = map_until_refused(edu[0])
            # A process sharing the holder's mm and its VFIO fds (a clone()d helper):
            # the host must count the one locked_vm once.
            sharer = result["mm_sharer"] = v.spawn_mm_sharer()
            result["ok"] = True
        except Exception as e:
            container, result = None, {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        os.write(w, json.dumps(result).encode())
        os.close(w)
        if container is not None:
            hold(args.release_dir, args.hold_max)
        if sharer is not None:
            v.kill_mm_sharer(sharer)
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    result = json.loads(b"".join(chunks) or b'{"ok": false, "error": "the holder died"}')
    summary.update(result)
    summary["pid"] = holder
    summary["ok"] = bool(result.get("ok")) and result.get("refused") is not None
    if result.get("ok") and result.get("refused") is None:
        summary["error"] = "MAP_DMA was never refused"
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
