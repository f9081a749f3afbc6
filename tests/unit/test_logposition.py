"""Kernel log readers go on from where they were, and count what the kernel overwrote."""

from vfiomond.bpfload import LRU_LOCAL_FREE_TARGET, THREADS_IN_FLIGHT, possible_cpus, thread_state_entries
from vfiomond.kernellog import LogPosition, kmsg_seq


def test_kmsg_sequence_numbers():
    assert kmsg_seq(b"6,1234,5678901,-;vfio-pci 0000:00:03.0: enabling device\n") == 1234
    assert kmsg_seq(b"6,1234,5678901,-,caller=T1;x\n SUBSYSTEM=pci\n") == 1234
    assert kmsg_seq(b"garbage") is None and kmsg_seq(b"6,x,1;y") is None


def test_a_gap_in_sequence_numbers_is_counted_as_lost_lines():
    p = LogPosition()
    assert p.read_kmsg(100) and p.lost == 0  # the first record: nothing known before it
    assert p.read_kmsg(101) and p.lost == 0
    assert p.read_kmsg(150) and p.lost == 48  # EPIPE: 102..149 overwritten before they were read
    assert p.read_kmsg(None)  # an unreadable prefix: the line is still handled


def test_a_restarted_reader_skips_what_was_read_before():
    p = LogPosition()
    for seq in (10, 11, 12):
        p.read_kmsg(seq)
    # the restarted reader starts at the oldest record the kernel still holds
    assert [seq for seq in range(5, 15) if p.read_kmsg(seq)] == [13, 14]
    assert p.lost == 0


def test_possible_cpus(tmp_path):
    path = tmp_path / "possible"
    for text, n in (("0-63\n", 64), ("0\n", 1), ("0,2-5\n", 5)):
        path.write_text(text)
        assert possible_cpus(str(path)) == n
    assert possible_cpus(str(tmp_path / "absent")) >= 1


def test_per_thread_maps_leave_room_for_every_cpus_free_list():
    assert thread_state_entries(1) == THREADS_IN_FLIGHT + LRU_LOCAL_FREE_TARGET
    # 256 CPUs may hold 32768 free nodes between them: the threads in flight still fit.
    assert thread_state_entries(256) - 256 * LRU_LOCAL_FREE_TARGET == THREADS_IN_FLIGHT
