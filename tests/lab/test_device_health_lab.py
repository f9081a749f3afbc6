"""PCIe health of a VFIO device on real kernels: the device-health scenario holds the
virtio-rng behind the lab's root port through VFIO and has the lab's QEMU inject 2
non-fatal and 1 fatal AER error into it, then 1 correctable (which QEMU before 8.0
does not route to the root port).  vfiomond's counts (scraped in the guest before and
after) must move by exactly what the kernel counted of the injections, and its link
gauges must equal the link read from config space by the scenario."""

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, boot

LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def result(request):
    part = boot(request.param, *LAB_BOOT).part("device-health")
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
