"""vfiomond.btf: function argument counts from BTF (include/uapi/linux/btf.h)."""

import os
import struct

import pytest

from vfiomond import btf


def blob(types, strings):
    """A BTF blob: 24-byte header, then the type section and the string section."""
    type_bytes = b"".join(types)
    return struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(type_bytes), len(type_bytes), len(strings)) \
        + type_bytes + strings


def type_header(name_off, kind, vlen, size_or_type):
    return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)


STRINGS = b"\0int\0f\0g\0x\0y\0s\0"
INT, F, G, X, Y, S = 1, 5, 7, 9, 11, 13


def sample():
    return blob([
        type_header(INT, 1, 0, 4) + struct.pack("<I", 32),  # 1: int
        type_header(S, 4, 2, 8) + struct.pack("<III", X, 1, 0) + struct.pack("<III", Y, 1, 32),  # 2: struct s
        type_header(0, 13, 2, 1) + struct.pack("<II", X, 1) + struct.pack("<II", Y, 2),  # 3: int (int x, struct s y)
        type_header(F, 12, 0, 3),  # 4: f
        type_header(0, 13, 2, 1) + struct.pack("<II", X, 1) + struct.pack("<II", 0, 0),  # 5: int (int x, ...)
        type_header(G, 12, 0, 5),  # 6: g
    ], STRINGS)


def test_function_argument_counts():
    assert btf.parse_arities(sample(), {"f", "g", "missing"}) == {"f": 2, "g": 1}


def test_only_asked_functions_are_kept():
    assert btf.parse_arities(sample(), {"g"}) == {"g": 1}


def test_not_btf_is_an_error():
    with pytest.raises(btf.BTFError, match="not BTF"):
        btf.parse_arities(b"\0" * 64, {"f"})
    with pytest.raises(btf.BTFError, match="too short"):
        btf.parse_arities(b"", {"f"})


def test_truncated_btf_is_an_error():
    data = sample()
    with pytest.raises(btf.BTFError):
        btf.parse_arities(data[:-20], {"f"})


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(btf.BTFError, match="nope"):
        btf.module_arities({"": {"f"}}, str(tmp_path / "nope"))


@pytest.mark.skipif(not os.access(btf.VMLINUX_BTF, os.R_OK), reason="this kernel exposes no BTF")
def test_the_running_kernel():
    arities = btf.module_arities({"": {"do_wp_page", "wake_up_new_task", "_printk", "not_a_kernel_function"}})
    assert arities.get("do_wp_page") == 1 and arities.get("wake_up_new_task") == 1
    assert "not_a_kernel_function" not in arities
    if "_printk" in arities:  # int _printk(const char *fmt, ...) from 5.15
        assert arities["_printk"] == 1


class Strings:
    """A BTF string section built as names are asked for (offset 0 is "")."""

    def __init__(self, start=0):
        self.data, self.start = b"\0" if start == 0 else b"", start

    def __call__(self, name):
        off = self.start + len(self.data)
        self.data += name.encode() + b"\0"
        return off


def members(*items):
    return b"".join(struct.pack("<III", name, type_id, bits) for name, type_id, bits in items)


def layout_sample():
    """Types shaped like the kernel's: a struct whose first members sit in an
    anonymous const struct (struct vm_fault), an array of structs (signal_struct's
    rlim), a typedef, a pointer, an enum."""
    s = Strings()
    types = [
        type_header(s("unsigned long"), 1, 0, 8) + struct.pack("<I", 64),      # 1
        type_header(s("int"), 1, 0, 4) + struct.pack("<I", 32),                # 2
        type_header(s("rlimit"), 4, 2, 16) + members((s("rlim_cur"), 1, 0), (s("rlim_max"), 1, 64)),  # 3
        type_header(0, 3, 0, 0) + struct.pack("<III", 3, 2, 16),               # 4: struct rlimit[16]
        type_header(s("signal_struct"), 4, 2, 8 + 256) + members((s("nr_threads"), 2, 0), (s("rlim"), 4, 64)),  # 5
        type_header(0, 2, 0, 5),                                               # 6: struct signal_struct *
        type_header(0, 4, 2, 16) + members((s("vma"), 6, 0), (s("address"), 1, 64)),  # 7: anonymous struct
        type_header(0, 10, 0, 7),                                              # 8: const (7)
        type_header(s("pgoff_t"), 8, 0, 1),                                    # 9: typedef unsigned long
        type_header(s("vm_fault"), 4, 2, 24) + members((0, 8, 0), (s("pgoff"), 9, 128)),  # 10
        type_header(0, 6, 2, 4) + struct.pack("<Ii", s("PCI_STD_RESOURCES"), 0) + struct.pack("<Ii", s("PCI_ROM_RESOURCE"), 6),  # 11
    ]
    return blob(types, s.data), s


def test_member_offsets_and_sizes():
    types = btf.Types(layout_sample()[0])
    assert types.member("vm_fault", "vma") == (0, btf.POINTER_SIZE)  # inside the anonymous const struct
    assert types.member("vm_fault", "address") == (8, 8)
    assert types.member("vm_fault", "pgoff") == (16, 8)  # through the typedef
    assert types.member("signal_struct", "rlim[8].rlim_cur") == (8 + 8 * 16, 8)
    assert types.member("signal_struct", "rlim") == (8, 256)
    assert types.struct_size("rlimit") == 16
    assert types.enumerator("PCI_ROM_RESOURCE") == 6


def test_missing_types_and_members_are_errors():
    types = btf.Types(layout_sample()[0])
    with pytest.raises(btf.BTFError, match="no struct pci_dev"):
        types.member("pci_dev", "dev")
    with pytest.raises(btf.BTFError, match="no member rlim_min"):
        types.member("rlimit", "rlim_min")
    with pytest.raises(btf.BTFError, match="16 elements, not 17"):
        types.member("signal_struct", "rlim[16].rlim_cur")
    with pytest.raises(btf.BTFError, match="not an array"):
        types.member("signal_struct", "nr_threads[0]")
    with pytest.raises(btf.BTFError, match="no enumerator"):
        types.enumerator("TASK_COMM_LEN")


def test_split_btf_of_a_module_continues_the_base():
    data, base_strings = layout_sample()
    base = btf.Types(data)
    s = Strings(start=len(base_strings.data))
    # struct vfio_pci_core_device { <16 bytes>; struct signal_struct *pdev; }: its
    # member type (6) and the string "vma" come from the base.
    vma = base_strings.data.index(b"\0vma\0") + 1
    module = blob([type_header(s("vfio_pci_core_device"), 4, 2, 24) + members((s("vdev"), 3, 0), (vma, 6, 128))],
                  s.data)
    types = btf.Types(module, base)
    assert types.first_id == 12
    assert types.member("vfio_pci_core_device", "vma") == (16, btf.POINTER_SIZE)
    assert types.member("vfio_pci_core_device", "vdev") == (0, 16)


@pytest.mark.skipif(not os.access(btf.VMLINUX_BTF, os.R_OK), reason="this kernel exposes no BTF")
def test_the_running_kernels_struct_members():
    types = btf.Types.read(btf.VMLINUX_BTF)
    assert types.member("task_struct", "mm")[1] == btf.POINTER_SIZE
    assert types.member("task_struct", "pid")[1] == 4
    assert types.member("vm_fault", "vma") == (0, btf.POINTER_SIZE)  # first since 4.x
    assert types.struct_size("rb_node") == 3 * btf.POINTER_SIZE


def test_a_word_equal_to_a_name_offset_is_not_taken_for_a_type():
    """Lookups search the bytes for a name's string offset: the same number as a
    member's bit offset, a size or an enumerator's value is not a type's name."""
    s = Strings()
    target, x = s("target"), s("X")
    data = blob([
        type_header(s("int"), 1, 0, target) + struct.pack("<I", 32),                 # 1: size == target
        type_header(s("holder"), 4, 1, 8) + members((s("m"), 1, target)),            # 2: bit offset == target
        type_header(0, 6, 2, 4) + struct.pack("<Ii", s("A"), x) + struct.pack("<Ii", x, 42),  # 3: A's value == X
        type_header(target, 4, 0, 8),                                                 # 4: struct target
    ], s.data)
    types = btf.Types(data)
    assert types.find("target") == 4
    assert types.struct_size("target") == 8
    assert types.enumerator("X") == 42


def test_functions_of_one_name_that_disagree_are_left_out():
    s = Strings()
    f, g, x = s("f"), s("g"), s("x")
    data = blob([
        type_header(s("int"), 1, 0, 4) + struct.pack("<I", 32),                      # 1: int
        type_header(0, 13, 2, 1) + struct.pack("<II", x, 1) + struct.pack("<II", x, 1),  # 2: int (int, int)
        type_header(0, 13, 1, 1) + struct.pack("<II", x, 1),                         # 3: int (int)
        type_header(f, 12, 0, 2), type_header(f, 12, 0, 3),                          # 4, 5: static f twice
        type_header(g, 12, 0, 3), type_header(g, 12, 0, 3),                          # 6, 7: g twice, alike
    ], s.data)
    assert btf.parse_arities(data, {"f", "g"}) == {"g": 1}


def test_the_kernels_btf_is_read_once_until_released(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(sample())
    first = btf.vmlinux(str(path))
    assert btf.vmlinux(str(path)) is first
    assert btf.module_arities({"": {"f"}}, str(tmp_path)) == {"f": 2}
    btf.release_vmlinux()
    assert btf.vmlinux(str(path)) is not first
    btf.release_vmlinux()


def test_module_functions_are_counted_from_the_modules_split_btf(tmp_path):
    """btf.module_arities: vmlinux's functions from vmlinux, a module's from
    <dir>/<module> (its types and strings continuing vmlinux's); a module without
    BTF lends none."""
    (tmp_path / "vmlinux").write_bytes(sample())
    s = Strings(start=len(STRINGS))
    # static long pin(int x, struct s y, int x): a prototype of its own whose
    # parameter types and one name come from vmlinux.
    module = blob([
        type_header(0, 13, 3, 1) + struct.pack("<II", X, 1) + struct.pack("<II", Y, 2) + struct.pack("<II", X, 1),  # 7
        type_header(s("pin"), 12, 0, 7),  # 8
    ], s.data)
    (tmp_path / "vfio_iommu_type1").write_bytes(module)
    try:
        wanted = {"": {"f", "g"}, "vfio_iommu_type1": {"pin", "unpin"}, "vfio_pci_core": {"fault"}}
        assert btf.module_arities(wanted, str(tmp_path)) == {"f": 2, "g": 1, "pin": 3}
    finally:
        btf.release_vmlinux()
