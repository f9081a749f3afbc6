"""Probe area "users" (bpf/users.c): the processes that opened a VFIO or iommufd
character device (vfio_group_fops_open, vfio_fops_open, iommufd_fops_open), and
the processes those fork or clone (wake_up_new_task).

They are the candidates whose open files a scrape reads to find the VFIO users
(vfiomond/processes.py UserFinder); the area exports no series of its own.
"""

from typing import Iterator, List, Set

SOURCE = "users.c"
PROBES = ("vfio_open", "iommufd_open", "vfio_fork")


def read(tables) -> List[int]:
    """PIDs in vfio_openers.  ``tables(name)`` returns a BCC table."""
    return [k.value for k in tables("vfio_openers").keys()]


def families(snap: List[int], attached: Set[str]) -> Iterator:
    return iter(())
