"""Where make test's time goes: one line per image build, kernel build, boot and
scenario, appended to $VFIOMOND_LAB_TIMINGS (tab-separated: kind, name, seconds)
by tests/lab/image.sh, kernel.sh and lab.py; tests/lab/conftest.py prints the
summary at the end of the run."""

import os
from typing import Dict, List, Tuple

ENV = "VFIOMOND_LAB_TIMINGS"


def record(kind: str, name: str, seconds: float) -> None:
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as f:
            f.write("%s\t%s\t%.1f\n" % (kind, name, seconds))


def read(path: str) -> List[Tuple[str, str, float]]:
    rows = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    try:
                        rows.append((parts[0], parts[1], float(parts[2])))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def summary(rows: List[Tuple[str, str, float]], wall: float) -> List[str]:
    """The lines printed at the end of make test: every row, then the total per kind."""
    lines = ["%-18s %-24s %7.0f s" % (kind, name, seconds) for kind, name, seconds in rows]
    totals: Dict[str, float] = {}
    for kind, _, seconds in rows:
        totals[kind] = totals.get(kind, 0.0) + seconds
    lines.append("-" * 52)
    for kind, seconds in totals.items():
        lines.append("%-18s %-24s %7.0f s  (%.1f min)" % (kind, "total", seconds, seconds / 60))
    lines.append("%-18s %-24s %7.0f s  (%.1f min)" % ("pytest", "wall clock", wall, wall / 60))
    return lines
