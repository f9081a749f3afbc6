"""Probe area "bar_dmabuf" (bpf/bar_dmabuf.c): BARs of VFIO devices exported as
dma-bufs (VFIO_DEVICE_FEATURE_DMA_BUF, 6.19+) for peer-to-peer DMA by other drivers,
and the revocations of those dma-bufs.

vfio-pci revokes a device's dma-bufs whenever the BAR memory goes away under them
(memory decode off, a reset, the device closed: vfio_pci_dma_buf_move(vdev, true))
and restores them after (move(vdev, false)); each dma-buf whose state changes is one
dma_buf_invalidate_mappings call, which tears its importers' mappings down.  An
importer that does not handle that (it keeps DMA-ing to a revoked range, or never
maps again) is the failure a revocation count next to its own errors points at.
"""

import errno
from typing import Dict, Iterator, NamedTuple, Set, Tuple

from prometheus_client.core import CounterMetricFamily

from vfiomond.metricsutil import cstr

SOURCE = "bar_dmabuf.c"
PROBES = ("bar_dmabuf_exports", "bar_dmabuf_revocations")


class DmabufSnapshot(NamedTuple):
    exports: Dict[Tuple[str, str], int]  # (device, result: "ok" or the errno's name) -> calls
    moves: Dict[Tuple[str, str], int]  # (device, action: "revoke" or "restore") -> dma-bufs


def _device(raw: bytes) -> str:
    return cstr(raw) or "unknown"


def _result(ret: int) -> str:
    return "ok" if ret == 0 else errno.errorcode.get(-ret, str(-ret))


def read(tables) -> DmabufSnapshot:
    """The area's counters.  ``tables(name)`` returns a BCC table."""
    exports: Dict[Tuple[str, str], int] = {}
    for k, v in tables("dmabuf_exports").items():
        key = (_device(k.device), _result(k.ret))
        exports[key] = exports.get(key, 0) + v.value
    moves: Dict[Tuple[str, str], int] = {}
    for k, v in tables("dmabuf_moves").items():
        key = (_device(k.device), "revoke" if k.revoked else "restore")
        moves[key] = moves.get(key, 0) + v.value
    return DmabufSnapshot(exports, moves)


def families(snap: DmabufSnapshot, attached: Set[str]) -> Iterator:
    if "bar_dmabuf_exports" in attached:
        exports = CounterMetricFamily(
            "vfiomond_bar_dmabuf_exports", "VFIO_DEVICE_FEATURE_DMA_BUF calls that export ranges of the device's "
            "BAR as a dma-buf (vfio_pci_core_feature_dma_buf, 6.19+), by result: ok (a dma-buf fd returned) or "
            "the errno.", labels=["device", "result"])
        for labels, n in sorted(snap.exports.items()):
            exports.add_metric(list(labels), n)
        yield exports
    if "bar_dmabuf_revocations" in attached:
        moves = CounterMetricFamily(
            "vfiomond_bar_dmabuf_revocations", "dma-bufs of the device's BARs that vfio-pci revoked (action "
            "revoke: memory decode off, a reset, the device closed) or restored (action restore), each one "
            "invalidating its importers' mappings (dma_buf_invalidate_mappings inside vfio_pci_dma_buf_move).",
            labels=["device", "action"])
        for labels, n in sorted(snap.moves.items()):
            moves.add_metric(list(labels), n)
        yield moves
