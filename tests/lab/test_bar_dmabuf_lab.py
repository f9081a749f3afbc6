"""BARs exported as dma-bufs on real kernels: the bar-dmabuf scenario asks vfio-pci for a
dma-buf of edu's BAR0 (VFIO_DEVICE_FEATURE_DMA_BUF, 6.19+: the lab's sid), once with no
range (EINVAL) and once only probing, then turns memory decode off and on twice with the
dma-buf open.  vfiomond's export count must equal the ioctls' results (the probe is no
export), and its revocations the decode transitions: one revoke per decode off, one
restore per decode on.  Kernels without the feature have no such series and say so in
vfiomond_kernel_feature."""

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, Scrape, boot

LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules
# Kernels with vfio_pci_core_feature_dma_buf (tests/unit/data/kallsyms).
DMABUF = {"bullseye": False, "bookworm": False, "trixie": False, "sid": True}


@pytest.fixture(scope="module", params=SUITES)
def part(request):
    part = boot(request.param, *LAB_BOOT).part("bar-dmabuf")
    assert part.scenario.get("ok") is True, part.scenario
    return part


def moved(result, name):
    return result["after"][name] - result["before"][name]


def test_the_kernel_feature_is_what_the_scenario_found(part):
    assert part.scenario["supported"] is DMABUF[part.suite], part.scenario
    assert Scrape(part.metrics).one("vfiomond_kernel_feature", feature="bar_dmabuf") == int(DMABUF[part.suite])


def test_exports_are_the_ioctls_results(part):
    result = part.scenario
    if not DMABUF[part.suite]:
        assert Scrape(part.metrics).values("vfiomond_bar_dmabuf_exports_total") == []
        return
    assert result["exporter"], result  # the fd is a dma-buf (fdinfo names its exporter)
    assert result["empty_errno"] == "EINVAL", result
    assert moved(result, "exports_ok") == 1 and moved(result, "exports_einval") == 1, result


def test_each_decode_transition_revokes_or_restores_the_dma_buf(part):
    result = part.scenario
    if not DMABUF[part.suite]:
        assert Scrape(part.metrics).values("vfiomond_bar_dmabuf_revocations_total") == []
        return
    assert moved(result, "revoked") == result["toggles"], result
    assert moved(result, "restored") == result["toggles"], result
