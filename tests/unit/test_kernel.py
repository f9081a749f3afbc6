from vfiomond.kernel import Kallsyms

LINES = """\
ffffffffc0a01230 t vfio_pci_mmap_fault\t[vfio_pci_core]
ffffffffc0a04000 r vfio_pci_mmap_ops\t[vfio_pci_core]
ffffffffc0b00010 t vfio_lock_acct.part.0\t[vfio_iommu_type1]
ffffffffc0b00200 t vfio_unpin_pages_remote.isra.0\t[vfio_iommu_type1]
ffffffffc0b00300 t vfio_pin_pages_remote.cold\t[vfio_iommu_type1]
ffffffff81234560 T remap_pfn_range
ffffffff81234999 T unrelated_function
garbage
"""


def parse(wanted):
    return Kallsyms.parse(LINES.splitlines(), set(wanted))


def test_exact_text_symbol_with_module():
    sym = parse({"vfio_pci_mmap_fault"}).function("vfio_pci_mmap_fault", allow_variants=False)
    assert sym.name == "vfio_pci_mmap_fault"
    assert sym.module == "vfio_pci_core"
    assert sym.address == 0xFFFFFFFFC0A01230


def test_vmlinux_symbol_has_no_module():
    assert parse({"remap_pfn_range"}).function("remap_pfn_range", False).module == ""


def test_gcc_variant_only_when_allowed():
    syms = parse({"vfio_lock_acct", "vfio_unpin_pages_remote"})
    assert syms.function("vfio_lock_acct", allow_variants=False) is None
    assert syms.function("vfio_lock_acct", allow_variants=True).name == "vfio_lock_acct.part.0"
    assert syms.function("vfio_unpin_pages_remote", allow_variants=True).name == "vfio_unpin_pages_remote.isra.0"


def test_cold_part_is_never_an_entry_point():
    syms = parse({"vfio_pin_pages_remote"})
    assert syms.function("vfio_pin_pages_remote", allow_variants=True) is None


def test_data_symbol_is_not_a_function_but_has_an_address():
    syms = parse({"vfio_pci_mmap_ops"})
    assert syms.function("vfio_pci_mmap_ops", allow_variants=True) is None
    assert syms.address("vfio_pci_mmap_ops") == 0xFFFFFFFFC0A04000
    assert syms.address("absent") == 0


def test_only_wanted_symbols_are_kept():
    syms = parse({"remap_pfn_range"})
    assert not syms.has("unrelated_function")
    assert not syms.has("vfio_pci_mmap_fault")


def test_installable_modules_from_depmods_files(tmp_path):
    from vfiomond.kernel import installable_modules

    d = tmp_path / "6.1.0-50-amd64"
    d.mkdir()
    (d / "modules.dep").write_text(
        "kernel/drivers/vfio/vfio.ko.xz: kernel/drivers/iommu/iommufd/iommufd.ko.xz\n"
        "kernel/drivers/iommu/iommufd/iommufd.ko.xz:\n"
        "kernel/drivers/vfio/pci/vfio-pci-core.ko.zst: kernel/drivers/vfio/vfio.ko.xz\n")
    (d / "modules.builtin").write_text("kernel/drivers/pci/pcie/aer.ko\n")
    assert installable_modules("6.1.0-50-amd64", str(tmp_path)) == {"vfio", "iommufd", "vfio_pci_core", "aer"}


def test_installable_modules_unknown_without_depmods_files(tmp_path):
    from vfiomond.kernel import installable_modules

    assert installable_modules("6.1.0-50-amd64", str(tmp_path)) is None
    (tmp_path / "6.1.0-50-amd64").mkdir()
    (tmp_path / "6.1.0-50-amd64" / "modules.builtin").write_text("")
    assert installable_modules("6.1.0-50-amd64", str(tmp_path)) == set()
