"""The device inventory: udev events in, devices bound to VFIO drivers out.

The recorded sequences in data/udev/ are the events vfiomond's DeviceWatcher saw
in the lab guests during the hotplug scenario (tests/lab/scenarios/hotplug.py
writes them): modules loaded, edu and ivshmem bound to vfio-pci, ivshmem
unbound and bound again, both unbound, the modules removed, then loaded and
bound again.
"""

import json
import pathlib

import pytest

from vfiomond.devices import Inventory, UdevEvent, families, read_facts, record

from test_faults import exposition, key

DATA = pathlib.Path(__file__).resolve().parent / "data" / "udev"
RECORDINGS = ("bookworm-hotplug.jsonl", "trixie-hotplug.jsonl")
EDU, IVSHMEM = "0000:00:02.0", "0000:00:03.0"

EDU_FACTS = {
    "driver": "vfio-pci", "vendor": "0x1234", "device": "0x11e8", "numa_node": "-1", "iommu_group": "2",
    "noiommu": "0", "vfio_cdev": "", "vendor_name": "", "model_name": "",
}


def replay(path):
    inv = Inventory()
    changes = []
    with open(path) as f:
        for line in f:
            change = inv.apply(UdevEvent(**json.loads(line)))
            if change:
                changes.append((change.kind, change.device.device))
    return inv, changes


@pytest.mark.parametrize("name", RECORDINGS)
def test_recorded_hotplug_sequence(name):
    inv, changes = replay(DATA / name)
    # udevd may deliver the events of two devices changed together in either order.
    steps = [
        {("added", EDU), ("added", IVSHMEM)},  # bound after the modules loaded
        {("removed", IVSHMEM)}, {("added", IVSHMEM)},  # unbound, bound again
        {("removed", EDU), ("removed", IVSHMEM)},  # unbound before rmmod
        {("added", EDU), ("added", IVSHMEM)},  # loaded and bound again
    ]
    assert len(changes) == sum(map(len, steps)), changes
    for step in steps:
        assert set(changes[:len(step)]) == step, changes
        changes = changes[len(step):]
    edu, ivshmem = inv.devices[EDU], inv.devices[IVSHMEM]
    assert (edu.vendor_id, edu.device_id, edu.driver, edu.group_path) == ("1234", "11e8", "vfio-pci", "/dev/vfio/" + edu.iommu_group)
    assert (ivshmem.vendor_id, ivshmem.device_id) == ("1af4", "1110")
    assert ivshmem.vendor == "Red Hat, Inc."  # from the udev hardware database
    assert edu.iommu_group != ivshmem.iommu_group


@pytest.mark.parametrize("name", RECORDINGS)
def test_recorded_sequences_include_module_events(name):
    events = [json.loads(line) for line in open(DATA / name)]
    modules = {(e["action"], e["name"]) for e in events if e["subsystem"] == "module"}
    assert {("add", "vfio_pci"), ("remove", "vfio_pci"), ("remove", "vfio_iommu_type1")} <= modules


def test_only_vfio_drivers_are_inventoried():
    assert record(EDU, dict(EDU_FACTS, driver="")) is None  # unbound
    assert record(EDU, dict(EDU_FACTS, driver="nvme")) is None
    assert record(EDU, dict(EDU_FACTS, driver="mlx5_vfio_pci")).driver == "mlx5_vfio_pci"  # a variant driver


def test_group_and_cdev_paths():
    dev = record(EDU, dict(EDU_FACTS, vfio_cdev="vfio0"))
    assert dev.paths() == ["/dev/vfio/2", "/dev/vfio/devices/vfio0"]
    assert record(EDU, dict(EDU_FACTS, noiommu="1")).group_path == "/dev/vfio/noiommu-2"
    assert record(EDU, dict(EDU_FACTS, iommu_group="")).paths() == []


def test_apply_is_idempotent_and_follows_the_state_in_the_event():
    inv = Inventory()
    add = UdevEvent("add", "pci", EDU, EDU_FACTS)
    assert inv.apply(add).kind == "added"
    assert inv.apply(add) is None  # seen twice (listed at start and announced)
    assert inv.apply(UdevEvent("change", "pci", EDU, dict(EDU_FACTS, numa_node="1"))).kind == "changed"
    assert inv.apply(UdevEvent("bind", "pci", EDU, dict(EDU_FACTS, driver="edu"))).kind == "removed"  # another driver
    assert inv.apply(UdevEvent("remove", "pci", EDU, {})) is None
    assert inv.apply(UdevEvent("add", "module", "vfio_pci", {})) is None


def test_hardware_names_survive_events_that_lack_them():
    inv = Inventory()
    named = dict(EDU_FACTS, vendor_name="Technical Corp.", model_name="edu")
    inv.apply(UdevEvent("add", "pci", EDU, dict(named, driver="")))  # listed at start, not yet bound
    assert inv.apply(UdevEvent("bind", "pci", EDU, EDU_FACTS)).device.model == "edu"
    assert inv.apply(UdevEvent("unbind", "pci", EDU, EDU_FACTS)) is None  # read while bound again: no flap


def test_users_count_processes_with_the_group_or_cdev_open():
    inv = Inventory()
    inv.apply(UdevEvent("add", "pci", EDU, dict(EDU_FACTS, vfio_cdev="vfio0")))
    inv.apply(UdevEvent("add", "pci", IVSHMEM, dict(EDU_FACTS, iommu_group="3")))
    open_files = {
        10: ["/dev/vfio/vfio", "/dev/vfio/2", "/dev/vfio/2"],  # one process, counted once
        11: ["/dev/vfio/devices/vfio0", "/dev/iommu"],
        12: ["/dev/vfio/vfio"],  # a container alone uses no device
    }
    assert inv.users(open_files) == {EDU: 2, IVSHMEM: 0}


def test_holders_name_each_process_and_how_it_holds_the_device(tmp_path):
    from vfiomond.devices import holder_family

    inv = Inventory()
    inv.apply(UdevEvent("add", "pci", EDU, dict(EDU_FACTS, vfio_cdev="vfio0")))
    inv.apply(UdevEvent("add", "pci", IVSHMEM, dict(EDU_FACTS, iommu_group="3")))
    open_files = {10: ["/dev/vfio/vfio", "/dev/vfio/2", "/dev/vfio/3"], 11: ["/dev/vfio/devices/vfio0", "/dev/iommu"],
                  12: ["/dev/vfio/2"]}  # 12 exits before its series are made
    assert inv.holders(open_files) == {EDU: {10: "group", 11: "cdev", 12: "group"}, IVSHMEM: {10: "group"}}
    for pid, comm, cmdline in ((10, "qemu-system-x86", b"qemu-system-x86_64\0-name\0guest=web01\0"),
                               (11, "qemu-system-x86", b"qemu-system-x86_64\0-name\0db\0")):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(cmdline)
        (d / "cgroup").write_text("0::/\n")
    s = exposition([holder_family(inv.holders(open_files), proc=str(tmp_path))])
    qemu = dict(comm="qemu-system-x86")
    assert s == {
        key("vfiomond_device_holder_info", device=EDU, pid="10", vm="web01", via="group", **qemu): 1,
        key("vfiomond_device_holder_info", device=EDU, pid="11", vm="db", via="cdev", **qemu): 1,
        key("vfiomond_device_holder_info", device=IVSHMEM, pid="10", vm="web01", via="group", **qemu): 1,
    }


def test_families():
    inv = Inventory()
    inv.apply(UdevEvent("add", "pci", IVSHMEM, dict(EDU_FACTS, vendor="0x1af4", device="0x1110", iommu_group="3",
                                                     vendor_name="Red Hat, Inc.", model_name="Inter-VM shared memory")))
    s = exposition(families(inv.devices, {IVSHMEM: 1}))
    labels = dict(device=IVSHMEM, vendor_id="1af4", device_id="1110", vendor="Red Hat, Inc.",
                  model="Inter-VM shared memory", iommu_group="3", driver="vfio-pci", numa_node="-1")
    assert s[key("vfiomond_device_info", **labels)] == 1
    assert s[key("vfiomond_device_users", device=IVSHMEM)] == 1


def test_read_facts_from_a_sysfs_tree(tmp_path):
    dev = tmp_path / EDU
    dev.mkdir()
    for name, value in (("vendor", "0x1234\n"), ("device", "0x11e8\n"), ("numa_node", "0\n")):
        (dev / name).write_text(value)
    (dev / "driver").symlink_to("../../../bus/pci/drivers/vfio-pci")
    (dev / "iommu_group").symlink_to("../../../kernel/iommu_groups/7")
    (dev / "vfio-dev" / "vfio3").mkdir(parents=True)
    assert read_facts(str(dev), {})["vfio_cdev"] == ""  # 6.1-6.5, or no CONFIG_VFIO_DEVICE_CDEV
    (dev / "vfio-dev" / "vfio3" / "dev").write_text("511:0\n")
    facts = read_facts(str(dev), {"ID_VENDOR_FROM_DATABASE": "Technical Corp."})
    assert record(EDU, facts) == record(EDU, dict(
        EDU_FACTS, numa_node="0", iommu_group="7", vfio_cdev="vfio3", vendor_name="Technical Corp."))
    assert read_facts(str(tmp_path / "gone"), {}) == {}
