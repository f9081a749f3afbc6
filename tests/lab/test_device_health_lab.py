"""PCIe health of a VFIO device on real kernels: the device-health scenario holds the
virtio-rng behind the lab's root port through VFIO, resets it through VFIO (2
VFIO_DEVICE_RESET, 1 VFIO_DEVICE_PCI_HOT_RESET) and has the lab's QEMU inject 2
non-fatal and 1 fatal AER error into it, then 1 correctable (which QEMU before 8.0
does not route to the root port).  vfiomond's counts (scraped in the guest before and
after) must move by exactly what the kernel counted of the injections, and its link
gauges must equal the link read from config space by the scenario."""

import errno

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, boot, journal_entries

LAB_BOOT = (SHARED_BOOT, False)
RESET_FAILED_ID = "b68e24175ac84c8e9df8c67d1e1d5441"  # device_reset_failed (systemd/vfiomond.catalog)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def booted(request):
    return boot(request.param, *LAB_BOOT)


@pytest.fixture(scope="module")
def result(booted):
    part = booted.part("device-health")
    assert part.scenario.get("ok") is True, part.scenario
    return part.scenario


def test_aer_counts_move_by_what_was_injected(result):
    injected, before, after = result["injected"], result["before"], result["after"]
    assert injected["nonfatal"] == 2 and injected["fatal"] == 1 and injected["correctable"] in (0, 1)
    assert after["cmplt_to"] - before["cmplt_to"] == 2
    assert after["nonfatal_messages"] - before["nonfatal_messages"] == 2
    # The fatal one: the kernel reads none of the endpoint's registers for it, so it has
    # no error name; 6.1 and 6.12 count it in none of the endpoint's files, 7.2 counts the
    # message (TOTAL_ERR_FATAL); the root port counted it on every kernel.
    assert after["dlp"] - before["dlp"] == 0
    assert after["fatal_messages"] - before["fatal_messages"] in (0, 1)
    assert after["root_port_fatal"] - before["root_port_fatal"] == 1
    assert after["rx_err"] - before["rx_err"] == injected["correctable"]
    # The kernel's own files agree (a series is the function's count since enumeration).
    for name in ("rx_err", "cmplt_to", "dlp", "nonfatal_messages", "fatal_messages", "root_port_fatal"):
        assert after[name] == result["kernel_counts"][name], name


def test_the_port_above_has_its_own_series(result):
    assert result["after"]["port_series"] > 0


def test_link_gauges_equal_config_space(result):
    """Before the errors (the fatal one resets the link, which in the lab does not come back)."""
    before, link = result["before"], result["config_link"]
    assert link["width"] > 0 and link["speed"] > 0
    for name in ("speed", "width", "capable_speed", "capable_width"):
        assert before[name] == link[name], name


def delta(result, kind):
    before, after = result["resets"]["before"][kind], result["resets"]["after"][kind]
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def first_reset_method(resets):
    """The method the PCI core tries first for a function reset: the first of sysfs
    reset_method (5.15+); before it, FLR where Device Capabilities advertise it
    (__pci_reset_function_locked tries a device-specific reset, then pcie_flr; QEMU's
    virtio-rng has no device-specific one)."""
    if resets["methods"]:
        return resets["methods"][0]
    assert resets["flr_capable"], "no reset_method in sysfs and no FLR in Device Capabilities"
    return "flr"


def expected_resets(resets):
    """{"operation/method/result": count} of the scenario's own ioctls: a VFIO_DEVICE_RESET
    is a function reset by the method the PCI core tries first (first_reset_method), a
    hot reset a bus reset; each with the errno it returned."""
    want = {}
    for operation, results in sorted(resets["results"].items()):
        for err in results:
            method = first_reset_method(resets) if operation == "function" else "bus"
            key = "%s/%s/%s" % (operation, method, "ok" if err == 0 else errno.errorcode[err])
            want[key] = want.get(key, 0) + 1
    return want


def test_resets_are_counted_by_method_and_result(result):
    resets = result["resets"]
    want = expected_resets(resets)
    # QEMU's virtio-rng does FLR; its root port (QEMU 7.2 and later seen) does not report the
    # link active after a secondary bus reset, so the kernel fails the hot reset with ENOTTY
    # ("Data Link Layer Link Active not set in 1000 msec"): the ioctl says which.
    assert want["function/%s/ok" % first_reset_method(resets)] == 2 and sum(want.values()) == 3, resets
    assert delta(result, "resets") == want


def test_failed_resets_are_journal_alerts(booted, result):
    """Each reset whose ioctl failed (other than EAGAIN) is one device_reset_failed entry
    with its device, operation and errno; the successful ones are none."""
    want = sorted((operation, errno.errorcode[err]) for operation, results in result["resets"]["results"].items()
                  for err in results if err not in (0, errno.EAGAIN))
    got = sorted((e["OPERATION"], e["RESULT"]) for e in journal_entries(booted, RESET_FAILED_ID)
                 if e.get("DEVICE") == result["device"])
    assert got == want


def test_every_reset_is_timed(result):
    timed = delta(result, "timed")
    counted = {}
    for key, n in delta(result, "resets").items():
        operation, method, _ = key.split("/")
        counted["%s/%s" % (operation, method)] = counted.get("%s/%s" % (operation, method), 0) + n
    assert timed == counted


def test_the_device_answers_after_its_resets(result):
    """The scenario read the device's vendor ID after the resets; vfiomond did the same
    after each one and counted none that read all ones."""
    assert result["resets"]["answers"] is True
    assert result["resets"]["after"]["unresponsive"] == 0
