"""snapshot.clocks_carried: a backend that carries clocks (criu) restores a tree that sat in the
runner's time namespace into a new one with offsets; that alone is not a difference, anything
else about time namespaces still is."""

import os

import pytest

from engine import timens
from zdtm import snapshot

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/ns/time"), reason="the kernel has no time namespaces")

OWN = {t: os.stat(f"/proc/self/ns/{t}").st_ino for t in snapshot.NS_TYPES}
RUNNER_BITS = "umask=0022 timens=" + ",".join(f"{k}:{s}.{n:09d}" for k, (s, n) in timens.offsets("self").items())
CARRIED_BITS = "umask=0022 timens=monotonic:-2.500000000,boottime:-2.499000000"


def tree(*times, bits=None):
    """A snapshot of processes whose time namespaces are `times` (None: the runner's)."""
    procs = []
    for i, t in enumerate(times):
        ns = dict(OWN, time=OWN["time"] if t is None else t)
        procs.append(snapshot.Proc(pid=100 + i, comm="holder", mounts=[], tree_text="/ tmpfs", root="/", cwd="/",
                                   fds=[], ns=ns, bits=RUNNER_BITS if t is None else (bits or CARRIED_BITS),
                                   sid=100, pgid=100))
    return snapshot.Snapshot(procs=procs, namespaces=snapshot._partition(procs) + snapshot._job_partition(procs),
                             cross_peers="", check_output=None)


def test_a_tree_moved_whole_into_one_new_time_namespace_compares_equal():
    before, after = tree(None, None), tree(7, 7)
    assert not snapshot.compare(before, after)[0]   # (as criu leaves it: differs)
    equal, report = snapshot.compare(before, snapshot.clocks_carried(before, after))
    assert equal, report


OWN_OFFSETS = "umask=0022 timens=monotonic:86400.000000000,boottime:86400.000000000"


@pytest.mark.parametrize("before_times, after_times", [
    ((None, None), (7, None)),    # one process left in the runner's: not what criu does
    ((None, None), (7, 8)),       # two new namespaces
    ((5, 5), (7, 7)),             # the tree had its own time namespace (its offsets): compared as it is
])
def test_any_other_time_namespace_difference_stays(before_times, after_times):
    before, after = tree(*before_times, bits=OWN_OFFSETS), tree(*after_times)
    equal, report = snapshot.compare(before, snapshot.clocks_carried(before, after))
    assert not equal
    assert "time:" in report or "timens=" in report


def test_the_other_bits_are_still_compared():
    before, after = tree(None), tree(7, bits=CARRIED_BITS.replace("0022", "0077"))
    equal, report = snapshot.compare(before, snapshot.clocks_carried(before, after))
    assert not equal and "umask=0077" in report
