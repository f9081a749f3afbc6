"""Interrupts of VFIO devices from a sysfs tree shaped as the kernel writes it
(the lab's interrupts scenario checks the counts on real kernels)."""

import os

from hypothesis import given, strategies as st

from vfiomond import interrupts

from test_faults import exposition, key

BDF = "0000:00:02.0"


def write(root, path, text):
    full = os.path.join(str(root), path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)


def tree(tmp_path):
    write(tmp_path, "bus/pci/devices/%s/irq" % BDF, "11\n")
    write(tmp_path, "bus/pci/devices/%s/msi_irqs/40" % BDF, "msi\n")
    write(tmp_path, "kernel/irq/40/actions", "vfio-msi[0](%s)\n" % BDF)
    write(tmp_path, "kernel/irq/40/per_cpu_count", "3,0,4,0\n")
    write(tmp_path, "kernel/irq/11/actions", "virtio0\n")  # INTx line, not vfio's now
    write(tmp_path, "kernel/irq/11/per_cpu_count", "100,0\n")
    return str(tmp_path)


def test_msi_vector_counted_over_all_cpus(tmp_path):
    found = interrupts.vectors([BDF], tree(tmp_path))
    assert found == [interrupts.Vector(BDF, "msi", "0", 40, 7)]
    s = exposition(interrupts.families(found, [BDF]))
    assert s[key("vfiomond_device_interrupts_total", device=BDF, type="msi", vector="0")] == 7
    assert s[key("vfiomond_device_interrupt_vectors", device=BDF, type="msi")] == 1
    assert s[key("vfiomond_device_interrupt_vectors", device=BDF, type="msix")] == 0


def test_shared_intx_line_and_other_devices(tmp_path):
    root = tree(tmp_path)
    write(root, "kernel/irq/11/actions", "virtio0,vfio-intx(%s)\n" % BDF)
    found = interrupts.vectors([BDF, "0000:00:03.0"], root)
    assert interrupts.Vector(BDF, "intx", "0", 11, 100) in found
    assert all(v.device == BDF for v in found)


def test_handler_of_another_device_is_not_this_ones():
    assert interrupts.parse_actions("vfio-msix[3](0000:01:00.1)", "0000:01:00.0") is None
    assert interrupts.parse_actions("vfio-msix[3](0000:01:00.0)", "0000:01:00.0") == ("msix", "3")


def test_a_vector_gone_while_read_is_left_out(tmp_path):
    root = tree(tmp_path)
    os.remove(os.path.join(root, "kernel/irq/40/per_cpu_count"))
    assert interrupts.vectors([BDF], root) == []


@given(st.text(max_size=200))
def test_any_actions_text_parses_or_is_none(text):
    out = interrupts.parse_actions(text, BDF)
    assert out is None or out[0] in ("msix", "msi", "intx")


@given(st.text(max_size=100))
def test_per_cpu_count_is_a_number_or_a_value_error(text):
    try:
        assert isinstance(interrupts.parse_per_cpu_count(text), int)
    except ValueError:
        pass
