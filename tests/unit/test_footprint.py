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


SMAPS_SAMPLE = """\
7f0000000000-7f0000400000 r--p 00000000 fe:01 1001                       /usr/lib/x86_64-linux-gnu/libLLVM.so.19.1
Size:               4096 kB
Rss:                3000 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd mr mw me sd
7f0000400000-7f0004000000 r-xp 00400000 fe:01 1001                       /usr/lib/x86_64-linux-gnu/libLLVM.so.19.1
Rss:               50880 kB
Anonymous:             0 kB
Locked:                0 kB
7f0004000000-7f0004100000 r--p 03c00000 fe:01 1001                       /usr/lib/x86_64-linux-gnu/libLLVM.so.19.1
Rss:                1024 kB
Anonymous:          1024 kB
Locked:                0 kB
7f0004100000-7f0004200000 rw-p 03d00000 fe:01 1001                       /usr/lib/x86_64-linux-gnu/libLLVM.so.19.1
Rss:                 512 kB
Anonymous:           512 kB
7f0005000000-7f0006000000 r-xp 00000000 fe:01 1002                       /usr/lib/x86_64-linux-gnu/libclang-cpp.so.19.1
Rss:               28508 kB
Anonymous:             0 kB
Locked:               64 kB
7f0006000000-7f0006100000 r-xp 00000000 fe:01 1003                       /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                 100 kB
Anonymous:             0 kB
7f0007000000-7f0007100000 r-xp 00000000 fe:01 1004                       /usr/lib/x86_64-linux-gnu/libbcc.so.0.31.0
Rss:                1480 kB
Anonymous:             0 kB
7f0008000000-7f0008100000 rw-p 00000000 00:00 0
Rss:                 900 kB
"""


def test_compiler_code_is_the_compilers_clean_read_only_mappings():
    from vfiomond import footprint

    chosen = footprint.compiler_code(footprint.smaps_mappings(SMAPS_SAMPLE.splitlines(True)))
    assert [(hex(m.start), m.perms, m.fields["Rss"]) for m in chosen] == [
        ("0x7f0000000000", "r--p", 3000), ("0x7f0000400000", "r-xp", 50880), ("0x7f0006000000", "r-xp", 100)]
    # Left mapped: relocated read-only data (private copies), writable data, an mlock'ed
    # range, BCC's own library (used at every map read) and anonymous memory.


def test_release_compiler_code_unmaps_the_pages_and_they_read_back(tmp_path):
    """A real file mapping named as the compiler's library: its resident pages leave
    this process's smaps and the same bytes read back from the page cache."""
    lib = tmp_path / "libLLVM-99.so.1"
    lib.write_bytes(bytes(range(256)) * (4 * 4096))  # 4 MiB
    out = _child("import mmap\n"
                 "from vfiomond import footprint\n"
                 "def rss(path):\n"
                 "    ms = footprint.smaps_mappings(open('/proc/self/smaps'))\n"
                 "    return sum(m.fields.get('Rss', 0) for m in ms if m.path == path)\n"
                 "path = %r\n"
                 "f = open(path, 'rb')\n"
                 "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
                 "digest = sum(m[i] for i in range(0, len(m), 4096))\n"
                 "before = rss(path)\n"
                 "released = footprint.release_compiler_code()\n"
                 "after = rss(path)\n"
                 "print(before, released, after, digest == sum(m[i] for i in range(0, len(m), 4096)))" % str(lib))
    before, released, after, same = out.split()
    assert int(before) == 4096 and int(released) >= 4096
    assert int(after) == 0 and same == "True"  # read again: the bytes are the file's


def test_release_compiler_code_without_smaps_releases_nothing(tmp_path):
    from vfiomond import footprint

    assert footprint.release_compiler_code(str(tmp_path / "no-smaps")) == 0
