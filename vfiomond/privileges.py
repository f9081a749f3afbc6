"""Privilege checks, so that a missing capability is one clear line, not a BCC traceback."""

from vfiomond.errors import VfiomondError

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def can_load_kprobes(caps: int) -> bool:
    """CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON (5.8+), is needed to load kprobe programs."""
    has = lambda cap: bool(caps & (1 << cap))  # noqa: E731
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def require_bpf() -> None:
    if not can_load_kprobes(effective_caps()):
        raise VfiomondError("vfiomond run needs root, or CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), to load kprobes")
