"""vfiomond.layout: kernel struct offsets for the BPF programs, from BTF or the headers."""

import os
import re
import shutil

import pytest

from vfiomond import btf, layout
from vfiomond.bpfload import bpf_dir


def every_source():
    return "".join(open(os.path.join(bpf_dir(), f)).read() for f in sorted(os.listdir(bpf_dir())))


def test_every_member_the_programs_read_is_listed_once():
    used = set(re.findall(r"\bK(?:OFF|SIZE|SIZEOF)_([A-Z0-9_]+)", every_source()))
    listed = [name for name, _, _ in layout.FIELDS] + [name for name, _ in layout.SIZES]
    assert len(listed) == len(set(listed))
    assert used <= set(listed), "used, not in layout.FIELDS/SIZES: %s" % sorted(used - set(listed))


def test_header_defines_use_offsetof():
    text = layout.header_defines()
    assert "#define KOFF_PDEV_NAME __builtin_offsetof(struct pci_dev, dev.kobj.name)" in text
    assert "#define KSIZE_VM_FAULT_ORIG_PTE sizeof(((struct vm_fault *)0)->orig_pte)" in text
    assert "#define KSIZEOF_RB_NODE sizeof(struct rb_node)" in text
    assert "KERNEL_LAYOUT_BTF" not in text


def fake_btf_dir(tmp_path, modules=()):
    d = tmp_path / "btf"
    d.mkdir()
    shutil.copy(btf.VMLINUX_BTF, d / "vmlinux")
    for m in modules:
        (d / m).write_bytes(b"")
    return str(d)


needs_btf = pytest.mark.skipif(not os.access(btf.VMLINUX_BTF, os.R_OK), reason="this kernel exposes no BTF")


@needs_btf
def test_btf_defines_of_the_running_kernel():
    text = layout.btf_defines(btf.Types.read(btf.VMLINUX_BTF))
    assert text.startswith("#define KERNEL_LAYOUT_BTF 1\n")
    values = dict(re.findall(r"#define (K\w+) (\d+)", text))
    for name, _, _ in layout.FIELDS:
        assert "KOFF_%s" % name in values and int(values["KSIZE_%s" % name]) > 0
    assert values["KOFF_VM_FAULT_VMA"] == "0"
    assert "#define PCI_ROM_RESOURCE 6" in text  # include/linux/pci.h, since 2.6


@needs_btf
def test_choose_btf_where_modules_carry_it(tmp_path):
    modules = tmp_path / "module"
    modules.mkdir()
    text, source = layout.choose(fake_btf_dir(tmp_path, ["vfio"]), str(modules))
    assert source == "BTF" and "KERNEL_LAYOUT_BTF" in text


@needs_btf
def test_choose_headers_when_the_vfio_pci_core_module_has_no_btf(tmp_path):
    modules = tmp_path / "module"
    (modules / "vfio_pci_core").mkdir(parents=True)
    text, source = layout.choose(fake_btf_dir(tmp_path, ["vfio"]), str(modules))
    assert source == "kernel headers (module vfio_pci_core has no BTF)"
    assert "KERNEL_LAYOUT_BTF" not in text


@needs_btf
def test_choose_headers_when_no_module_has_btf(tmp_path):
    modules = tmp_path / "module"
    modules.mkdir()
    text, source = layout.choose(fake_btf_dir(tmp_path), str(modules))
    assert source.startswith("kernel headers (no module BTF")


def test_choose_headers_without_vmlinux_btf(tmp_path):
    (tmp_path / "btf").mkdir()
    (tmp_path / "btf" / "vfio").write_bytes(b"")
    (tmp_path / "module").mkdir()
    text, source = layout.choose(str(tmp_path / "btf"), str(tmp_path / "module"))
    assert source.startswith("kernel headers (") and "vmlinux" in source


def test_no_module_fact_without_the_modules_btf(tmp_path, caplog):
    assert layout.module_facts(str(tmp_path)) == {}
    assert caplog.text == ""
    (tmp_path / "vfio_pci_core").write_bytes(b"not btf")
    assert layout.module_facts(str(tmp_path)) == {}
    assert "BTF of module vfio_pci_core unreadable" in caplog.text
