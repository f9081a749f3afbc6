"""IOMMU fault interrupts counted in the kernel (vfiomond/iommu_faults.py): naming the
units of the kernel's counts from sysfs.  The lab (scenario iommu-faults) checks the
counts against an edu device's faulting DMAs on real kernels."""

from types import SimpleNamespace

from vfiomond import iommu_faults as f


def sysfs(tmp_path):
    irq = tmp_path / "kernel/irq/24"
    irq.mkdir(parents=True)
    (irq / "actions").write_text("dmar0\n")
    for unit in ("dmar0", "dmar1"):
        (tmp_path / "class/iommu" / unit).mkdir(parents=True)
    return f.Units(str(tmp_path))


def test_units_come_from_sysfs(tmp_path):
    units = sysfs(tmp_path)
    assert units.all() == {"dmar0", "dmar1"}
    assert units.unit(24) == "dmar0"
    assert units.unit(25) == "irq25"
    assert f.Units(str(tmp_path / "none")).all() == set()


def samples(snap, units):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in f.families(snap, {"iommu_faults"}, units)
            for s in fam.samples}


def test_every_unit_has_a_count_from_0_on(tmp_path):
    assert samples({24: 30, 26: 1}, sysfs(tmp_path)) == {
        ("vfiomond_iommu_fault_interrupts_total", (("iommu", "dmar0"),)): 30,
        ("vfiomond_iommu_fault_interrupts_total", (("iommu", "dmar1"),)): 0,
        ("vfiomond_iommu_fault_interrupts_total", (("iommu", "irq26"),)): 1,
    }


def test_nothing_without_the_probe(tmp_path):
    assert list(f.families({}, set(), sysfs(tmp_path))) == []


def test_read_the_map():
    rows = [(SimpleNamespace(value=24), SimpleNamespace(value=3))]
    assert f.read(lambda name: SimpleNamespace(items=lambda: rows)) == {24: 3}
