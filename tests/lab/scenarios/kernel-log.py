#!/usr/bin/env python3
"""Scenario "kernel-log": real kernel splat texts written to /dev/kmsg.

Writes, line by line, the arm64 "kernel BUG at mm/memory.c" splat of seeds/001
(remap_pfn_range under vfio_pci_mmap_fault), an unrelated slab oops, and a
type1 "RLIMIT_MEMLOCK exceeded" line (tests/unit/data/splats), as the kernel
would print them; then waits for vfiomond's watcher to close the splats.
User writes to /dev/kmsg are rate-limited, so kernel.printk_devkmsg is set to "on".
"""

import json
import os
import re
import sys
import time

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "unit", "data", "splats")
FILES = ("seed001-remap-pfn-range-bug-arm64.txt", "unrelated-oops-4.9-rc1.txt")
MEMLOCK_LINE = "vfio_pin_pages_remote: RLIMIT_MEMLOCK (16777216) exceeded"
SETTLE = 5.0  # seconds; the watcher closes a splat after 2 s without a line


def main():
    summary = {"scenario": "kernel-log", "kernel": os.uname().release, "written": []}
    try:
        with open("/proc/sys/kernel/printk_devkmsg", "w") as f:
            f.write("on\n")
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        for name in FILES:
            with open(os.path.join(DATA, name)) as f:
                lines = [re.sub(r"^\[\s*\d+\.\d+\] ?", "", line.rstrip("\n")) for line in f if not line.startswith("# source:")]
            for line in lines:
                os.write(fd, ("<4>" + line + "\n").encode())
            summary["written"].append({"file": name, "lines": len(lines)})
            time.sleep(SETTLE)
        os.write(fd, ("<4>" + MEMLOCK_LINE + "\n").encode())
        summary["written"].append({"line": MEMLOCK_LINE})
        os.close(fd)
        time.sleep(SETTLE)
        summary["ok"] = True
    except OSError as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
