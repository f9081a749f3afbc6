"""BAR dma-bufs (vfiomond/bar_dmabuf.py): the kernel's keys named (PCI address, result,
action).  The lab (scenario bar-dmabuf) checks the counts against the ioctls on sid."""

from types import SimpleNamespace

from vfiomond import bar_dmabuf as d


def key(**fields):
    return SimpleNamespace(**fields)


def tables(exports, moves):
    data = {"dmabuf_exports": exports, "dmabuf_moves": moves}
    return lambda name: SimpleNamespace(items=lambda: [(k, SimpleNamespace(value=n)) for k, n in data[name]])


def samples(snap, attached):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in d.families(snap, attached) for s in fam.samples}


def test_results_and_actions_are_named():
    snap = d.read(tables(
        [(key(device=b"0000:00:02.0\0\0\0\0", ret=0), 1), (key(device=b"0000:00:02.0", ret=-22), 2),
         (key(device=b"\0", ret=-19), 1)],
        [(key(device=b"0000:00:02.0", revoked=1), 2), (key(device=b"0000:00:02.0", revoked=0), 3)]))
    assert samples(snap, set(d.PROBES)) == {
        ("vfiomond_bar_dmabuf_exports_total", (("device", "0000:00:02.0"), ("result", "EINVAL"))): 2,
        ("vfiomond_bar_dmabuf_exports_total", (("device", "0000:00:02.0"), ("result", "ok"))): 1,
        ("vfiomond_bar_dmabuf_exports_total", (("device", "unknown"), ("result", "ENODEV"))): 1,
        ("vfiomond_bar_dmabuf_revocations_total", (("action", "restore"), ("device", "0000:00:02.0"))): 3,
        ("vfiomond_bar_dmabuf_revocations_total", (("action", "revoke"), ("device", "0000:00:02.0"))): 2,
    }


def test_no_series_without_the_probes():
    assert samples(d.read(tables([], [])), set()) == {}
