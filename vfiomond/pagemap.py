"""What a process maps at an address now: /proc/PID/pagemap and /proc/kpageflags.

pagemap entries are 64-bit: bit 63 present, bits 0-54 the PFN (zero unless the
reader has CAP_SYS_ADMIN).  kpageflags bit 24 is KPF_ZERO_PAGE (the shared zero
page and the huge zero page).  Documentation/admin-guide/mm/pagemap.rst, 4.2+.
"""

import ctypes
import mmap
import os
import struct
from typing import Callable, Dict, Iterable, Optional

PAGE = mmap.PAGESIZE  # the running system's page size
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
KPF_ZERO_PAGE = 1 << 24
_ENTRY = struct.Struct("<Q")


def pfn_of(entry: int) -> Optional[int]:
    """PFN of a pagemap entry; None when no page is present (or PFNs are hidden)."""
    if not entry & PRESENT:
        return None
    return (entry & PFN_MASK) or None


def read_pfns(pid: int, vaddrs: Iterable[int]) -> Dict[int, Optional[int]]:
    """Current PFN at each page-aligned vaddr of process ``pid``.

    Raises ProcessLookupError / FileNotFoundError when the process is gone,
    PermissionError without the rights to read its pagemap.
    """
    out = {}
    with open("/proc/%d/pagemap" % pid, "rb", buffering=0) as f:
        fd = f.fileno()
        for vaddr in vaddrs:
            raw = os.pread(fd, 8, (vaddr // PAGE) * 8)
            out[vaddr] = pfn_of(_ENTRY.unpack(raw)[0]) if len(raw) == 8 else None
    return out


def is_zero_page(pfn: int, path: str = "/proc/kpageflags") -> Optional[bool]:
    """kpageflags ZERO_PAGE bit for ``pfn``; None when kpageflags cannot be read."""
    try:
        with open(path, "rb", buffering=0) as f:
            raw = os.pread(f.fileno(), 8, pfn * 8)
    except OSError:
        return None
    return bool(_ENTRY.unpack(raw)[0] & KPF_ZERO_PAGE) if len(raw) == 8 else None


HPAGE_PMD_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"


def hpage_pmd_pages(path: str = HPAGE_PMD_SIZE) -> Optional[int]:
    """Pages in THP's PMD-sized page (and so in the huge zero page): sysfs
    ``hpage_pmd_size`` (bytes, 4.11+) over the page size.  None without THP
    (CONFIG_TRANSPARENT_HUGEPAGE off) or where the file does not read as a size."""
    try:
        with open(path) as f:
            size = int(f.read())
    except (OSError, ValueError):
        return None
    return size // PAGE if size >= PAGE else None


def learn_zero_pfn() -> Optional[int]:
    """The PFN of the shared zero page, as a read fault on fresh anonymous memory
    maps it in this process.  None without CAP_SYS_ADMIN (PFNs hidden)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    prot_read, map_private_anonymous = 1, 0x22
    addr = libc.mmap(None, PAGE, prot_read, map_private_anonymous, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        ctypes.c_char.from_address(addr).value  # read fault: maps the zero page
        pfn = read_pfns(os.getpid(), [addr]).get(addr)
    except OSError:
        pfn = None
    finally:
        libc.munmap(addr, PAGE)
    if pfn is None or is_zero_page(pfn) is False:
        return None
    return pfn


def pte_pfn_decoder(cpuinfo: str = "/proc/cpuinfo") -> Optional[Callable[[int], int]]:
    """How to take the PFN out of a raw page table entry on this machine, or None
    where the machine does not say.

    x86 (arch/x86/include/asm/pgtable_types.h): PTE_PFN_MASK is PAGE_MASK &
    physical_mask, and physical_mask is (1 << x86_phys_bits) - 1, the width that
    /proc/cpuinfo's "address sizes: N bits physical" shows (already reduced by the
    kernel where memory encryption takes address bits).  The page size is the
    running system's.
    """
    try:
        with open(cpuinfo, errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("address sizes")), "")
    except OSError:
        return None
    words = line.split(":", 1)[-1].split()
    # 1 to 64 bits, in ASCII digits: "²".isdigit() holds (int() of it is a ValueError),
    # and 1 << a huge width is an OverflowError or a MemoryError.
    if (len(words) < 3 or words[1:3] != ["bits", "physical,"]
            or not (words[0].isascii() and words[0].isdigit() and len(words[0]) <= 2) or not 0 < int(words[0]) <= 64):
        return None
    page_shift = (os.sysconf("SC_PAGE_SIZE") - 1).bit_length()
    mask = ((1 << int(words[0])) - 1) & ~((1 << page_shift) - 1)
    return lambda pte: (pte & mask) >> page_shift
