"""vfiomond.footprint on the running kernel (a child process: the prctl lasts for its life)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(code):
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, check=True)
    return out.stdout


def _thp_enabled(status_text):
    for line in status_text.splitlines():
        if line.startswith("THP_enabled:"):
            return int(line.split()[1])
    pytest.skip("this kernel's /proc/PID/status has no THP_enabled (Linux 5.0+)")


def test_disable_transparent_hugepages_turns_thp_off_for_the_process():
    out = _child("from vfiomond import footprint\n"
                 "print(open('/proc/self/status').read())\n"
                 "print('=====')\n"
                 "print(footprint.disable_transparent_hugepages())\n"
                 "print(open('/proc/self/status').read())")
    before, _, rest = out.partition("=====\n")
    ok, _, after = rest.partition("\n")
    if _thp_enabled(before) == 0:
        pytest.skip("transparent hugepages are off for this process tree already")
    assert ok == "True"
    assert _thp_enabled(after) == 0


def test_release_free_heap_gives_freed_memory_back():
    out = _child("from vfiomond import footprint\n"
                 "def anon():\n"
                 "    return int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])\n"
                 "chunks = [bytearray(4096) for _ in range(64 * 1024)]\n"  # 256 MiB in small heap blocks
                 "del chunks[:-1]\n"  # the last one pins the heap top: glibc does not trim by itself
                 "before = anon()\n"
                 "footprint.release_free_heap()\n"
                 "print(before, anon())")
    before, after = map(int, out.split())
    assert before - after > 100 * 1024  # KiB
