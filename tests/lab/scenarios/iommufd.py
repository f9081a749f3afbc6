#!/usr/bin/env python3
"""Scenario "iommufd": the standard workload through iommufd and the VFIO device cdev.

For each device (edu BAR0, ivshmem BAR2): /dev/iommu, an IOAS, the device's
/dev/vfio/devices/vfioN bound (VFIO_DEVICE_BIND_IOMMUFD) and attached to it;
IOMMU_IOAS_MAP 4 MiB read-write (touched) at IOVA 0x1000000 and 4 MiB
read-only (never touched) at 0x2000000; mmap the BAR, 4 threads touch it, memory
decode toggled, touched again; IOMMU_IOAS_UNMAP both; close.  That pass runs as
root (CAP_IPC_LOCK: iommufd's account mode NONE).  Then edu again in two child
processes without CAP_IPC_LOCK (setpriv): account mode USER (the default: the
user's locked_vm) and MM (IOMMU_OPTION_RLIMIT_MODE 1: the mm's locked_vm, VmLck);
each first tries a map under a 1 MiB RLIMIT_MEMLOCK (refused: ENOMEM), then raises
the limit.  Every pass records VmLck/VmPin and vfiomond's per-process series
while mapped, and after.

The root pass on edu also makes a pinned page diverge (the class of
seeds/003): MADV_DONTNEED on the first page of the read-write buffer while it is
mapped, then a write there (a new page); edu copies 1 KiB from the IOVA of that
page to the buffer's second page (real DMA through the IOMMU), and the process
reads what the device saw.  The mapping is then held for DIVERGED_HOLD seconds
so that vfiomond verifies it.

Then the live update of a VMM whose guest RAM is a memfd (6.13+), once per
account mode USER and MM, in a child without CAP_IPC_LOCK (the previous owner):
IOMMU_IOAS_MAP_FILE of a 4 MiB memfd at IOVA 0x3000000, which edu's DMA reads
and writes (the device's proof that the file's pages are mapped); then a new
process, handed the iommufd and the device's fd, calls IOMMU_IOAS_CHANGE_PROCESS
(the pinned pages' accounting moves to it), and later unmaps.  Each side records
VmLck/VmPin and vfiomond's per-process series after each step.

Last, churn through iommufd (edu, as root): 256 live 4 KiB IOAS mappings, and
for CHURN seconds a 4 KiB IOMMU_IOAS_MAP / IOMMU_IOAS_UNMAP loop as fast as the
process can, with vfiomond scraped before, after and once the IOAS is closed.
Prints one JSON line; exit 0 only if all ran.
"""

import argparse
import ctypes
import json
import mmap
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402
from standard import BAR_NAMES, BUFFER, HOLD, RO_IOVA, RW_IOVA, THREADS, touch_bar_concurrently, toggle_memory_decode  # noqa: E402

MIB = 1 << 20
PATTERN = 0xAB
COPY = 1024  # edu's DMA limit in QEMU 7.2 (see pin-mismatch.py)
DIVERGED_HOLD = 3.0  # seconds: three of the lab's verification intervals
PORT = os.environ.get("VFIOMOND_PORT", "10119")
CHURN = 3.0  # seconds of 4 KiB map/unmap churn
LIVE_PAGES, CHURN_PAGES = 256, 64
LIVE_IOVA, CHURN_IOVA = 0x4000000, 0x8000000
# (account mode, devices) of the passes run in children without CAP_IPC_LOCK.
CHILD_PASSES = (("user", "edu"), ("mm", "edu"))
FILE_IOVA = 0x3000000
HANDOVERS = ("user", "mm", "none")  # account modes of the MAP_FILE handover (none: as root)
FILE_PATTERN = 0x5A


def log(msg):
    print("iommufd: " + msg, file=sys.stderr, flush=True)


def proc_memory():
    return {"VmLck_kib": v.proc_status_kib("VmLck"), "VmPin_kib": v.proc_status_kib("VmPin")}


def vfiomond_view():
    """vfiomond's per-process series for this process, scraped while mapped."""
    text = v.scrape(PORT)
    me = {"pid": str(os.getpid()), "backend": "iommufd"}
    view = {name: v.sample(text, "vfiomond_process_" + name, **me)
            for name in ("dma_mapped_bytes", "charged_bytes", "uncharged_pinned_bytes")}
    view["pinned_vm_bytes"] = v.sample(text, "vfiomond_process_pinned_vm_bytes", pid=str(os.getpid()))
    view["locked_vm_bytes"] = v.sample(text, "vfiomond_process_locked_vm_bytes", pid=str(os.getpid()))
    view["account"] = sorted(a for a in ("none", "user", "mm")
                             if v.sample(text, "vfiomond_process_pin_account_info", account=a, **me))
    return view


def refused_under_small_limit(iommufd, vaddr):
    """A 4 MiB map under a 1 MiB RLIMIT_MEMLOCK: iommufd must refuse it (ENOMEM)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (MIB, hard))
    try:
        iommufd.map(vaddr, RW_IOVA, BUFFER, True)
    except OSError as e:
        return e.errno == 12  # ENOMEM
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    iommufd.unmap(RW_IOVA, BUFFER)
    return False


def diverge(device_fd, config, bar_addr, rw):
    """Replace the first page of the mapped read-write buffer under the IOMMU's feet."""
    v.set_pci_command(device_fd, config, v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY | v.PCI_COMMAND_MASTER)
    out = {"vaddr": rw, "iova": RW_IOVA, "pfn_before": v.own_pfn(rw)}
    v.madvise(rw, v.PAGE, v.MADV_DONTNEED)
    ctypes.memset(rw, PATTERN, v.PAGE)
    out["pfn_after"] = v.own_pfn(rw)
    out["wrote_at"] = time.time()
    v.edu_dma(bar_addr, RW_IOVA, v.EDU_BUFFER, COPY, to_ram=False)
    v.edu_dma(bar_addr, v.EDU_BUFFER, RW_IOVA + v.PAGE, COPY, to_ram=True)
    seen = ctypes.string_at(rw + v.PAGE, COPY)
    out["device_read"] = seen[:16].hex()
    out["stale"] = seen != bytes([PATTERN]) * COPY
    log("wrote %02x over the page mapped at IOVA %#x; the device read %s... there (stale: %s)"
        % (PATTERN, RW_IOVA, seen[:8].hex(), out["stale"]))
    time.sleep(DIVERGED_HOLD)
    text = v.scrape(PORT)
    out["vfiomond"] = {"pin_samples": v.sample(text, "vfiomond_pin_samples"),
                       "mismatched_pages": v.sample(text, "vfiomond_pin_mismatched_pages", pid=str(os.getpid()))}
    return out


def exercise(dev, account):
    record = {
        "device": dev.bdf, "name": dev.name, "account": account, "pid": os.getpid(), "cdev": v.cdev_path(dev.bdf),
        "region": BAR_NAMES[dev.bar], "region_index": dev.bar, "threads": THREADS, "mappings": [],
        "before": proc_memory(),
    }
    iommufd = v.Iommufd(mm_accounting=account == "mm")
    device_fd = iommufd.bind(dev.bdf)
    rw = v.mmap_anonymous(BUFFER)
    ro = v.mmap_anonymous(BUFFER)
    v.touch_pages(rw, BUFFER)
    if account != "none":
        record["refused_under_1mib_limit"] = refused_under_small_limit(iommufd, rw)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * MIB, 64 * MIB))
    for vaddr, iova, writable in ((rw, RW_IOVA, True), (ro, RO_IOVA, False)):
        iommufd.map(vaddr, iova, BUFFER, writable)
        record["mappings"].append({"iova": iova, "size": BUFFER, "writable": writable, "touched": writable})
    record["mapped"] = proc_memory()
    record["vfiomond"] = vfiomond_view()
    log("%s: %s mode, mapped 2 x 4 MiB through IOAS %d" % (dev.bdf, account, iommufd.ioas))
    time.sleep(HOLD)

    bar = v.region(device_fd, dev.bar)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    record["region_size"] = bar.size
    command = v.pci_command(device_fd, config)
    if not command & v.PCI_COMMAND_MEMORY:
        v.set_pci_command(device_fd, config, command | v.PCI_COMMAND_MEMORY)
    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    step = max(v.PAGE, bar.size // 256)
    record["touches_per_thread"] = touch_bar_concurrently(addr, bar.size, step)
    toggle_memory_decode(device_fd, config)
    v.read_strided(addr, bar.size, step)
    if dev.name == "edu" and account == "none":
        record["diverged"] = diverge(device_fd, config, addr, rw)
    v.munmap(addr, bar.size)

    for mapping in record["mappings"]:
        mapping["unmapped"] = iommufd.unmap(mapping["iova"], mapping["size"])
    record["unmapped"] = proc_memory()
    v.munmap(rw, BUFFER)
    v.munmap(ro, BUFFER)
    os.close(device_fd)
    iommufd.close()
    return record


def device_reads_the_file(device_fd, dev, mem):
    """edu copies COPY bytes from the memfd's first page (through its IOVA) to its
    second: what the process then reads in the file is what the device read."""
    bar = v.region(device_fd, dev.bar)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    v.set_pci_command(device_fd, config, v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY | v.PCI_COMMAND_MASTER)
    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    try:
        mem[:COPY] = bytes([FILE_PATTERN]) * COPY
        v.edu_dma(addr, FILE_IOVA, v.EDU_BUFFER, COPY, to_ram=False)
        v.edu_dma(addr, v.EDU_BUFFER, FILE_IOVA + v.PAGE, COPY, to_ram=True)
        return mem[v.PAGE:v.PAGE + COPY] == bytes([FILE_PATTERN]) * COPY
    finally:
        v.munmap(addr, bar.size)


def file_handover(dev, account):
    """The previous owner's side of a live update (in a child without CAP_IPC_LOCK)."""
    record = {"account": account, "pid": os.getpid(), "device": dev.bdf, "before": proc_memory()}
    iommufd = v.Iommufd(mm_accounting=account == "mm")
    device_fd = iommufd.bind(dev.bdf)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * MIB, 64 * MIB))
    memfd = os.memfd_create("vfiomond-lab-guest-ram")
    os.ftruncate(memfd, BUFFER)
    mem = mmap.mmap(memfd, BUFFER)
    mem[:] = bytes(BUFFER)  # every page allocated, as a running guest's
    iommufd.map_file(memfd, 0, FILE_IOVA, BUFFER, True)
    record["mapped"] = proc_memory()
    record["vfiomond"] = vfiomond_view()
    record["device_read_the_file"] = device_reads_the_file(device_fd, dev, mem)
    os.set_inheritable(iommufd.fd, True)
    os.set_inheritable(device_fd, True)
    receiver = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--receive", "%d,%d" % (iommufd.fd, iommufd.ioas)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(iommufd.fd, device_fd), universal_newlines=True)
    try:
        taken = json.loads(receiver.stdout.readline())
        record["handed_over"] = proc_memory()
        record["vfiomond_handed_over"] = vfiomond_view()
        receiver.stdin.write("unmap\n")
        receiver.stdin.flush()
        unmapped = json.loads(receiver.stdout.readline())
    finally:
        receiver.stdin.close()
        receiver.wait(timeout=60)
    record["receiver"] = {"pid": receiver.pid, "took": taken, "unmapped": unmapped, "exit": receiver.returncode}
    record["after"] = proc_memory()
    mem.close()
    os.close(memfd)
    os.close(device_fd)
    iommufd.close()
    log("%s mode: 4 MiB memfd mapped by %d, handed over to %d, unmapped there" % (account, os.getpid(), receiver.pid))
    return record


def receive(handed):
    """The new process's side: take the iommufd's pins over, report, unmap on cue."""
    fd, ioas = (int(x) for x in handed.split(","))
    iommufd = v.Iommufd(fd=fd, ioas=ioas)
    out = {"pid": os.getpid(), "before": proc_memory()}
    iommufd.change_process()
    out["after"] = proc_memory()
    out["vfiomond"] = vfiomond_view()
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
    done = {"unmapped_bytes": iommufd.unmap(FILE_IOVA, BUFFER), "after": proc_memory(), "vfiomond": vfiomond_view()}
    print(json.dumps(done), flush=True)
    return 0


def churn_view(name):
    text = v.scrape(PORT)
    iommufd = {"backend": "iommufd"}
    return {"name": name, "at": time.time(), "pin_mappings": sum(v.sample(text, "vfiomond_pin_mappings")),
            "verifications": sum(v.sample(text, "vfiomond_pin_verifications_total")),
            "events_lost": sum(v.sample(text, "vfiomond_events_lost_total")),
            "map_calls": sum(v.sample(text, "vfiomond_dma_map_duration_seconds_count", **iommufd)),
            "unmap_calls": sum(v.sample(text, "vfiomond_dma_unmap_duration_seconds_count", **iommufd))}


def churn(dev):
    """4 KiB IOAS maps and unmaps as fast as the process can, next to LIVE_PAGES live ones."""
    out = {"live_mappings": LIVE_PAGES}
    iommufd = v.Iommufd()
    device_fd = iommufd.bind(dev.bdf)
    live = v.mmap_anonymous(LIVE_PAGES * v.PAGE)
    v.touch_pages(live, LIVE_PAGES * v.PAGE)
    pages = v.mmap_anonymous(CHURN_PAGES * v.PAGE)
    v.touch_pages(pages, CHURN_PAGES * v.PAGE)
    for i in range(LIVE_PAGES):
        iommufd.map(live + i * v.PAGE, LIVE_IOVA + i * v.PAGE, v.PAGE, True)
    time.sleep(2)  # a verification pass or two with the live mappings
    out["before"] = churn_view("before")
    pairs, start = 0, time.monotonic()
    while time.monotonic() - start < CHURN:
        i = pairs % CHURN_PAGES
        iommufd.map(pages + i * v.PAGE, CHURN_IOVA + i * v.PAGE, v.PAGE, True)
        iommufd.unmap(CHURN_IOVA + i * v.PAGE, v.PAGE)
        pairs += 1
    out["seconds"] = time.monotonic() - start
    out["pairs"] = pairs
    time.sleep(2.5)  # a verification pass after the churn
    out["after"] = churn_view("after")
    os.close(device_fd)
    iommufd.close()
    v.munmap(live, LIVE_PAGES * v.PAGE)
    v.munmap(pages, CHURN_PAGES * v.PAGE)
    time.sleep(2.5)
    out["released"] = churn_view("released")
    log("churned %d 4 KiB IOAS map/unmap pairs in %.1f s next to %d live mappings" % (pairs, out["seconds"], LIVE_PAGES))
    return out


def child_pass(account, device, role="--child"):
    """Run one pass (``role`` --child: exercise, --handover: file_handover) in a child
    without CAP_IPC_LOCK (root keeps CAP_SYS_RESOURCE for IOMMU_OPTION and the
    limit); returns its record."""
    cmd = [sys.executable, os.path.abspath(__file__), role, account, "--devices", device]
    if account != "none":
        cmd = ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"] + cmd
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError("the %s-mode child failed (exit %d): %s" % (account, proc.returncode, proc.stdout.strip()[-300:]))
    return json.loads(proc.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="edu,ivshmem", help="comma-separated: edu, ivshmem")
    p.add_argument("--child", metavar="ACCOUNT", help=argparse.SUPPRESS)
    p.add_argument("--handover", metavar="ACCOUNT", help=argparse.SUPPRESS)
    p.add_argument("--receive", metavar="FD,IOAS", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receive:
        return receive(args.receive)
    wanted = args.devices.split(",")
    devices = [d for d in v.find_devices() if d.name in wanted]
    if args.child:
        print(json.dumps(exercise(devices[0], args.child)))
        return 0
    if args.handover:
        print(json.dumps(file_handover(devices[0], args.handover)))
        return 0
    summary = {"scenario": "iommufd", "pid": os.getpid(), "kernel": os.uname().release, "devices": [], "passes": []}
    try:
        if sorted(d.name for d in devices) != sorted(wanted):
            raise RuntimeError("devices bound to vfio-pci: %s; wanted %s" % ([d.name for d in devices], wanted))
        for dev in devices:
            summary["passes"].append(exercise(dev, "none"))
        for account, device in CHILD_PASSES:
            summary["passes"].append(child_pass(account, device))
        summary["handovers"] = [child_pass(account, "edu", "--handover") for account in HANDOVERS]
        summary["churn"] = churn(next(d for d in devices if d.name == "edu"))
        maps = [m for rec in summary["passes"] for m in rec["mappings"]]
        summary["dma_mapped_bytes"] = sum(m["size"] for m in maps)
        summary["dma_unmapped_bytes"] = sum(m["unmapped"] for m in maps)
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
