"""Interrupts of a VFIO device on real kernels: the interrupts scenario enables edu's
MSI vector with an eventfd and makes the device raise 25 interrupts; vfiomond's count
(/sys/kernel/irq, scraped in the guest while the vector was enabled) must equal what
the eventfd counted."""

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, boot

LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def result(request):
    part = boot(request.param, *LAB_BOOT).part("interrupts")
    assert part.scenario.get("ok") is True, part.scenario
    return part.scenario


def test_the_msi_count_is_the_eventfds(result):
    assert result["eventfd_count"] == result["raised"] == 25
    assert result["while_enabled"]["interrupts"] == [25.0]
    assert result["while_enabled"]["vectors"] == [1.0]


def test_a_disabled_vector_has_no_series(result):
    assert result["after_disable"]["interrupts"] == []
    assert result["after_disable"]["vectors"] == [0.0]
