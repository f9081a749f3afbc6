"""A small VFIO user in pure Python: type1 container, group, device, DMA, BAR mmap.

ioctl numbers and struct layouts from include/uapi/linux/vfio.h (stable ABI).  Addresses come from libc mmap through ctypes so
that they can be handed to MAP_DMA and touched outside the GIL.
"""

import ctypes
import fcntl
import json
import os
import signal
import struct
from typing import List, NamedTuple

VFIO_GET_API_VERSION = 0x3B64
VFIO_CHECK_EXTENSION = 0x3B65
VFIO_SET_IOMMU = 0x3B66
VFIO_GROUP_GET_STATUS = 0x3B67
VFIO_GROUP_SET_CONTAINER = 0x3B68
VFIO_GROUP_GET_DEVICE_FD = 0x3B6A
VFIO_DEVICE_GET_REGION_INFO = 0x3B6C
VFIO_DEVICE_SET_IRQS = 0x3B6E
VFIO_IOMMU_MAP_DMA = 0x3B71
VFIO_DEVICE_RESET = 0x3B6F
VFIO_DEVICE_PCI_HOT_RESET = 0x3B71  # on a device fd: the number of MAP_DMA on a container
VFIO_IOMMU_UNMAP_DMA = 0x3B72

VFIO_API_VERSION = 0
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1
VFIO_DMA_MAP_FLAG_READ = 1
VFIO_DMA_MAP_FLAG_WRITE = 2
VFIO_PCI_CONFIG_REGION_INDEX = 7
PCI_COMMAND = 4
PCI_COMMAND_MEMORY = 0x2

GROUP_STATUS = struct.Struct("<II")  # argsz, flags
DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, vaddr, iova, size
DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, iova, size
REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset

# The lab's devices: (vendor, device) -> (name, BAR index used).
KNOWN_DEVICES = {("0x1234", "0x11e8"): ("edu", 0), ("0x1af4", "0x1110"): ("ivshmem", 2)}

PAGE = 4096
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


CLONE_VM, CLONE_FILES = 0x100, 0x400  # include/uapi/linux/sched.h
_MM_SHARER_STACK = 64 * 1024
_mm_sharer_stacks = []  # the children's stacks live in this process's memory: kept for good


def spawn_mm_sharer() -> int:
    """A process that shares this one's mm and fd table: clone(CLONE_VM | CLONE_FILES |
    SIGCHLD), no CLONE_THREAD, as a clone()d helper does; so it holds this process's
    VFIO fds (and a pipe this process closes is closed for it too).  It runs libc's
    pause() on a stack of its own, never Python code, until it is killed
    (``kill_mm_sharer``).  Returns its pid."""
    stack = ctypes.create_string_buffer(_MM_SHARER_STACK)
    _mm_sharer_stacks.append(stack)
    top = (ctypes.addressof(stack) + _MM_SHARER_STACK) & ~0xF
    clone = _libc.clone
    clone.restype = ctypes.c_int
    clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    pid = clone(ctypes.cast(_libc.pause, ctypes.c_void_p), top, CLONE_VM | CLONE_FILES | signal.SIGCHLD, None)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, "clone(CLONE_VM | CLONE_FILES): " + os.strerror(err))
    return pid


def kill_mm_sharer(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


class PciDevice(NamedTuple):
    bdf: str
    name: str
    vendor_id: str
    device_id: str
    iommu_group: str
    bar: int


def find_devices(sysfs: str = "/sys") -> List[PciDevice]:
    """The lab's known devices bound to vfio-pci, in PCI address order."""
    root = os.path.join(sysfs, "bus/pci/devices")
    found = []
    for bdf in sorted(os.listdir(root)):
        path = os.path.join(root, bdf)

        def attr(name):
            with open(os.path.join(path, name)) as f:
                return f.read().strip()

        known = KNOWN_DEVICES.get((attr("vendor"), attr("device")))
        driver = os.path.join(path, "driver")
        if known is None or not os.path.islink(driver) or os.path.basename(os.readlink(driver)) != "vfio-pci":
            continue
        group = os.path.basename(os.readlink(os.path.join(path, "iommu_group")))
        found.append(PciDevice(bdf, known[0], attr("vendor"), attr("device"), group, known[1]))
    return found


def _check_addr(addr, what: str) -> int:
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))
    return addr


def mmap_anonymous(size: int) -> int:
    return _check_addr(_libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmap anonymous")


def mmap_untouched(size: int) -> int:
    """Anonymous memory for a read-only DMA map of never-touched pages, with THP off
    (MADV_NOHUGEPAGE): a read fault then maps the 4 KiB zero page.  Without it, a
    2 MiB-aligned range may get the huge zero page instead (seen on 6.1 in the lab),
    depending on where mmap put the buffer (the huge-zero part of pin-mismatch maps
    that on purpose)."""
    addr = mmap_anonymous(size)
    madvise(addr, size, MADV_NOHUGEPAGE)
    return addr


def mmap_device(fd: int, size: int, offset: int) -> int:
    return _check_addr(_libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset), "mmap BAR")


MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE = 4, 14, 15


def madvise(addr: int, size: int, advice: int) -> None:
    if _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), advice) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "madvise: " + os.strerror(err))


def hpage_pmd_size() -> int:
    """Bytes a PMD maps (THP's huge page), from the running kernel."""
    with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
        return int(f.read())


def thp_policy() -> str:
    """THP's policy ("always", "madvise", "never"): the bracketed word of sysfs enabled."""
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        return f.read().split("[", 1)[1].split("]", 1)[0]


def madvise_hugepage(addr: int, size: int) -> None:
    """MADV_HUGEPAGE: THP for this range where the kernel's policy is "madvise"."""
    madvise(addr, size, MADV_HUGEPAGE)


def munmap(addr: int, size: int) -> None:
    if _libc.munmap(addr, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "munmap: " + os.strerror(err))


def touch_pages(addr: int, size: int) -> None:
    """Write one byte in every page (anonymous memory)."""
    for off in range(0, size, PAGE):
        ctypes.memset(addr + off, 0x5A, 1)


def read_strided(addr: int, size: int, step: int) -> int:
    """Read 4 bytes at every ``step``; ctypes releases the GIL during each read,
    so several threads fault for real at the same time. Returns reads done."""
    sink = ctypes.create_string_buffer(4)
    n = 0
    for off in range(0, size, step):
        ctypes.memmove(sink, addr + off, 4)
        n += 1
    return n


def dma_map_args(vaddr: int, iova: int, size: int, flags: int) -> bytes:
    return DMA_MAP.pack(DMA_MAP.size, flags, vaddr, iova, size)


def dma_unmap_args(iova: int, size: int) -> bytearray:
    return bytearray(DMA_UNMAP.pack(DMA_UNMAP.size, 0, iova, size))


def region_info_args(index: int) -> bytearray:
    return bytearray(REGION_INFO.pack(REGION_INFO.size, 0, index, 0, 0, 0))


class Region(NamedTuple):
    flags: int
    index: int
    size: int
    offset: int


def parse_region_info(buf) -> Region:
    _argsz, flags, index, _cap, size, offset = REGION_INFO.unpack(bytes(buf))
    return Region(flags, index, size, offset)


class Container:
    """A type1 (v2) container with one group attached."""

    def __init__(self, group: str):
        self.fd = os.open("/dev/vfio/vfio", os.O_RDWR)
        self.group_fd = -1
        if fcntl.ioctl(self.fd, VFIO_GET_API_VERSION) != VFIO_API_VERSION:
            raise RuntimeError("unexpected VFIO API version")
        if not fcntl.ioctl(self.fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU):
            raise RuntimeError("the container does not offer TYPE1v2")
        self.group_fd = os.open("/dev/vfio/" + group, os.O_RDWR)
        status = bytearray(GROUP_STATUS.pack(GROUP_STATUS.size, 0))
        fcntl.ioctl(self.group_fd, VFIO_GROUP_GET_STATUS, status, True)
        if not GROUP_STATUS.unpack(bytes(status))[1] & VFIO_GROUP_FLAGS_VIABLE:
            raise RuntimeError("IOMMU group %s is not viable" % group)
        fcntl.ioctl(self.group_fd, VFIO_GROUP_SET_CONTAINER, struct.pack("i", self.fd))
        fcntl.ioctl(self.fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)

    def map_dma(self, vaddr: int, iova: int, size: int, flags: int) -> None:
        fcntl.ioctl(self.fd, VFIO_IOMMU_MAP_DMA, dma_map_args(vaddr, iova, size, flags))

    def unmap_dma(self, iova: int, size: int) -> int:
        """Returns the size the kernel reports unmapped."""
        buf = dma_unmap_args(iova, size)
        fcntl.ioctl(self.fd, VFIO_IOMMU_UNMAP_DMA, buf, True)
        return DMA_UNMAP.unpack(bytes(buf))[3]

    def device(self, bdf: str) -> int:
        return fcntl.ioctl(self.group_fd, VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"), True)

    def close(self) -> None:
        if self.group_fd >= 0:
            os.close(self.group_fd)
        os.close(self.fd)


def region(device_fd: int, index: int) -> Region:
    buf = region_info_args(index)
    fcntl.ioctl(device_fd, VFIO_DEVICE_GET_REGION_INFO, buf, True)
    return parse_region_info(buf)


def pci_command(device_fd: int, config: Region) -> int:
    return int.from_bytes(os.pread(device_fd, 2, config.offset + PCI_COMMAND), "little")


def set_pci_command(device_fd: int, config: Region, value: int) -> None:
    os.pwrite(device_fd, value.to_bytes(2, "little"), config.offset + PCI_COMMAND)


# QEMU's edu device (hw/misc/edu.c): DMA registers in BAR0, 64-bit.  Its 4 KiB
# buffer sits at device address 0x40000; DMA addresses are masked to 28 bits.
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_COUNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_DMA_RUN, EDU_DMA_TO_RAM = 0x1, 0x2
EDU_BUFFER = 0x40000
PCI_COMMAND_MASTER = 0x4


def _reg(bar: int, offset: int) -> ctypes.c_uint64:
    return ctypes.c_uint64.from_address(bar + offset)


def edu_dma(bar: int, src: int, dst: int, count: int, to_ram: bool, timeout: float = 10.0) -> None:
    """Run one edu DMA and wait for it (about 100 ms of guest time)."""
    import time

    _reg(bar, EDU_DMA_SRC).value = src
    _reg(bar, EDU_DMA_DST).value = dst
    _reg(bar, EDU_DMA_COUNT).value = count
    _reg(bar, EDU_DMA_CMD).value = EDU_DMA_RUN | (EDU_DMA_TO_RAM if to_ram else 0)
    deadline = time.monotonic() + timeout
    while _reg(bar, EDU_DMA_CMD).value & EDU_DMA_RUN:
        if time.monotonic() > deadline:
            raise RuntimeError("edu DMA did not finish in %g s" % timeout)
        time.sleep(0.01)


# VFIO_DEVICE_SET_IRQS (struct vfio_irq_set: argsz, flags, index, start, count, data[]).
VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 0, 1 << 2, 1 << 5
VFIO_PCI_MSI_IRQ_INDEX = 1
IRQ_SET = struct.Struct("<IIIII")


def device_reset(device_fd: int) -> int:
    """VFIO_DEVICE_RESET: 0, or the errno it failed with."""
    try:
        fcntl.ioctl(device_fd, VFIO_DEVICE_RESET)
        return 0
    except OSError as e:
        return e.errno


def hot_reset(device_fd: int, group_fds: List[int]) -> int:
    """VFIO_DEVICE_PCI_HOT_RESET (struct vfio_pci_hot_reset: argsz, flags, count, group_fds[]):
    a bus or slot reset of every device the groups hold; 0, or the errno."""
    buf = bytearray(struct.pack("III%di" % len(group_fds), 12 + 4 * len(group_fds), 0, len(group_fds), *group_fds))
    try:
        fcntl.ioctl(device_fd, VFIO_DEVICE_PCI_HOT_RESET, buf)
        return 0
    except OSError as e:
        return e.errno


def set_irq_eventfds(device_fd: int, index: int, eventfds: List[int]) -> None:
    """Signal each of ``eventfds`` on vectors 0.. of IRQ ``index`` (vfio-pci enables
    them); an empty list disables the index."""
    flags = VFIO_IRQ_SET_ACTION_TRIGGER | (VFIO_IRQ_SET_DATA_EVENTFD if eventfds else VFIO_IRQ_SET_DATA_NONE)
    data = struct.pack("<%di" % len(eventfds), *eventfds)
    buf = IRQ_SET.pack(IRQ_SET.size + len(data), flags, index, 0, len(eventfds)) + data
    fcntl.ioctl(device_fd, VFIO_DEVICE_SET_IRQS, buf)


def eventfd() -> int:
    """eventfd(2) through libc (os.eventfd is Python 3.10+; Debian 11 has 3.9)."""
    fd = _libc.eventfd(0, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, "eventfd: " + os.strerror(err))
    return fd


# edu's interrupt registers (32-bit): a write to RAISE ORs the value into the status
# and, with MSI enabled, sends one MSI; ACK clears those bits.
EDU_IRQ_RAISE, EDU_IRQ_ACK = 0x60, 0x64


def edu_raise_interrupt(bar: int, value: int = 1) -> None:
    ctypes.c_uint32.from_address(bar + EDU_IRQ_RAISE).value = value


def edu_ack_interrupt(bar: int, value: int = 1) -> None:
    ctypes.c_uint32.from_address(bar + EDU_IRQ_ACK).value = value


# VFIO_DEVICE_FEATURE (include/uapi/linux/vfio.h, 5.16+): struct vfio_device_feature
# {u32 argsz, flags} then the feature's data; VFIO_DEVICE_FEATURE_DMA_BUF (6.19+): data
# struct vfio_device_feature_dma_buf {u32 region_index, open_flags, flags, nr_ranges}
# then nr_ranges of struct vfio_region_dma_range {u64 offset, length}; returns an fd.
VFIO_DEVICE_FEATURE = 0x3B75
VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE = 1 << 16, 1 << 18
VFIO_DEVICE_FEATURE_DMA_BUF = 11


def dma_buf_probe(device_fd: int) -> None:
    """Raises OSError where the device (or the kernel) cannot export BARs as dma-bufs."""
    buf = bytearray(struct.pack("<II", 8, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF))
    fcntl.ioctl(device_fd, VFIO_DEVICE_FEATURE, buf, True)


def dma_buf_export(device_fd: int, region: int, ranges) -> int:
    """A dma-buf fd for ``ranges`` [(offset, length)] of BAR ``region``."""
    data = struct.pack("<IIII", region, os.O_RDWR | os.O_CLOEXEC, 0, len(ranges))
    data += b"".join(struct.pack("<QQ", off, length) for off, length in ranges)
    buf = bytearray(struct.pack("<II", 8 + len(data), VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF) + data)
    return fcntl.ioctl(device_fd, VFIO_DEVICE_FEATURE, buf, True)


def kpageflags(pfn: int) -> int:
    """/proc/kpageflags of ``pfn`` (the kernel's KPF_* bits); needs root."""
    with open("/proc/kpageflags", "rb", buffering=0) as f:
        return struct.unpack("<Q", os.pread(f.fileno(), 8, pfn * 8))[0]


def own_pfn(vaddr: int):
    """PFN mapped at vaddr in this process (None if not present); needs root."""
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        entry = struct.unpack("<Q", os.pread(f.fileno(), 8, (vaddr // PAGE) * 8))[0]
    return entry & ((1 << 55) - 1) if entry >> 63 else None


# iommufd and the VFIO device cdev (include/uapi/linux/iommufd.h and vfio.h, 6.6+
# for the cdev): /dev/iommu, an IOAS, the device bound and attached to it.
IOMMU_IOAS_ALLOC = 0x3B81
IOMMU_IOAS_MAP = 0x3B85
IOMMU_IOAS_UNMAP = 0x3B86
IOMMU_OPTION = 0x3B87
IOMMU_IOAS_MAP_FILE = 0x3B8F  # 6.13+
IOMMU_IOAS_CHANGE_PROCESS = 0x3B92  # 6.13+
VFIO_DEVICE_BIND_IOMMUFD = 0x3B76  # VFIO_BASE + 18
VFIO_DEVICE_ATTACH_IOMMUFD_PT = 0x3B77  # VFIO_BASE + 19
IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE = 1, 2, 4
IOMMU_OPTION_RLIMIT_MODE, IOMMU_OPTION_OP_SET = 0, 0

IOAS_ALLOC = struct.Struct("<III")  # size, flags, out_ioas_id
IOAS_MAP = struct.Struct("<IIIIQQQ")  # size, flags, ioas_id, reserved, user_va, length, iova
IOAS_UNMAP = struct.Struct("<IIQQ")  # size, ioas_id, iova, length (out: bytes unmapped)
IOAS_MAP_FILE = struct.Struct("<IIIiQQQ")  # size, flags, ioas_id, fd, start, length, iova
CHANGE_PROCESS = struct.Struct("<II")  # size, reserved
OPTION = struct.Struct("<IIHHIQ")  # size, option_id, op, reserved, object_id, val64
BIND_IOMMUFD = struct.Struct("<IIiI")  # argsz, flags, iommufd, out_devid
ATTACH_PT = struct.Struct("<III")  # argsz, flags, pt_id


def cdev_path(bdf: str, sysfs: str = "/sys") -> str:
    """/dev/vfio/devices/vfioN of a device bound to vfio-pci (CONFIG_VFIO_DEVICE_CDEV)."""
    names = os.listdir(os.path.join(sysfs, "bus/pci/devices", bdf, "vfio-dev"))
    return "/dev/vfio/devices/" + names[0]


class Iommufd:
    """/dev/iommu with one IOAS.  ``mm_accounting``: IOMMU_OPTION_RLIMIT_MODE 1 (charge
    the mm's locked_vm, as type1 does; needs CAP_SYS_RESOURCE) instead of the user's."""

    def __init__(self, mm_accounting: bool = False, fd: int = -1, ioas: int = 0):
        if fd >= 0:  # an iommufd handed over by another process, and its IOAS
            self.fd, self.ioas = fd, ioas
            return
        self.fd = os.open("/dev/iommu", os.O_RDWR)
        if mm_accounting:
            fcntl.ioctl(self.fd, IOMMU_OPTION,
                        bytearray(OPTION.pack(OPTION.size, IOMMU_OPTION_RLIMIT_MODE, IOMMU_OPTION_OP_SET, 0, 0, 1)), True)
        buf = bytearray(IOAS_ALLOC.pack(IOAS_ALLOC.size, 0, 0))
        fcntl.ioctl(self.fd, IOMMU_IOAS_ALLOC, buf, True)
        self.ioas = IOAS_ALLOC.unpack(bytes(buf))[2]

    def bind(self, bdf: str) -> int:
        """Open the device's cdev, bind it to this iommufd and attach it to the IOAS;
        returns the device fd (region info, mmap and config as with a group's fd)."""
        device_fd = os.open(cdev_path(bdf), os.O_RDWR)
        fcntl.ioctl(device_fd, VFIO_DEVICE_BIND_IOMMUFD, bytearray(BIND_IOMMUFD.pack(BIND_IOMMUFD.size, 0, self.fd, 0)),
                    True)
        fcntl.ioctl(device_fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, bytearray(ATTACH_PT.pack(ATTACH_PT.size, 0, self.ioas)),
                    True)
        return device_fd

    def map(self, vaddr: int, iova: int, size: int, writable: bool) -> None:
        flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | (IOMMU_IOAS_MAP_WRITEABLE if writable else 0)
        fcntl.ioctl(self.fd, IOMMU_IOAS_MAP, bytearray(IOAS_MAP.pack(IOAS_MAP.size, flags, self.ioas, 0, vaddr, size, iova)),
                    True)

    def map_file(self, fd: int, start: int, iova: int, size: int, writable: bool) -> None:
        """IOMMU_IOAS_MAP_FILE: ``size`` bytes of file ``fd`` (a memfd) from ``start``."""
        flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | (IOMMU_IOAS_MAP_WRITEABLE if writable else 0)
        fcntl.ioctl(self.fd, IOMMU_IOAS_MAP_FILE,
                    bytearray(IOAS_MAP_FILE.pack(IOAS_MAP_FILE.size, flags, self.ioas, fd, start, size, iova)), True)

    def change_process(self) -> None:
        """IOMMU_IOAS_CHANGE_PROCESS: this process takes over the pinned-page accounting
        of every mapping (all must be MAP_FILE's)."""
        fcntl.ioctl(self.fd, IOMMU_IOAS_CHANGE_PROCESS, bytearray(CHANGE_PROCESS.pack(CHANGE_PROCESS.size, 0)), True)

    def unmap(self, iova: int, size: int) -> int:
        """Returns the bytes the kernel reports unmapped."""
        buf = bytearray(IOAS_UNMAP.pack(IOAS_UNMAP.size, self.ioas, iova, size))
        fcntl.ioctl(self.fd, IOMMU_IOAS_UNMAP, buf, True)
        return IOAS_UNMAP.unpack(bytes(buf))[3]

    def close(self) -> None:
        os.close(self.fd)


def proc_status_kib(field: str, pid: str = "self") -> int:
    """A 'kB' field of /proc/PID/status (VmLck, VmPin), in KiB."""
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def scrape(port: str) -> str:
    """/metrics of the guest's vfiomond; over TLS with basic auth when the lab secured
    its endpoint (VFIOMOND_WEB: the folder of tests/lab/webtls.py's scrape.json)."""
    import base64
    import json
    import ssl
    import urllib.request

    web = os.environ.get("VFIOMOND_WEB")
    if not web:
        with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=30) as r:
            return r.read().decode()
    with open(os.path.join(web, "scrape.json")) as f:
        creds = json.load(f)
    ctx = ssl.create_default_context(cafile=creds["ca"])
    ctx.check_hostname = False
    request = urllib.request.Request("https://127.0.0.1:%s/metrics" % port)
    token = base64.b64encode(("%s:%s" % (creds["user"], creds["password"])).encode()).decode()
    request.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(request, timeout=30, context=ctx) as r:
        return r.read().decode()


def total(text: str, name: str, **labels) -> float:
    """The sum of the samples ``name{labels...}``."""
    return sum(sample(text, name, **labels))


def sample(text: str, name: str, **labels) -> List[float]:
    """Values of the samples ``name{labels...}`` (a plain parser: the scenarios
    must not depend on what they check)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all('%s="%s"' % kv in head for kv in labels.items()):
            out.append(float(value))
    return out


def run_on_device(scenario: str, device_name: str, run) -> int:
    """A scenario's main: ``run(dev)`` on the lab device ``device_name`` bound to
    vfio-pci, its result printed as one JSON line with ok (and error); the exit status."""
    summary = {"scenario": scenario, "kernel": os.uname().release}
    found = [d for d in find_devices() if d.name == device_name]
    if not found:
        summary.update(ok=False, error="no %s device bound to vfio-pci" % device_name)
    else:
        try:
            summary.update(run(found[0]))
            summary["ok"] = True
        except Exception as e:
            summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1
