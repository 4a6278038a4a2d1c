"""Session 35's hostile images: a rootless tree (its outermost user namespace made by a non-root
user) gets from a root restorer no scheduling privilege and no resource limit its user could not
give itself (engine/schedattrs.py beyond_user; engine/restore.py sched, raise_hard_limits). Each
image is a real dump changed as an attacker with write access to the image directory would,
refused with exit status 2 and one line, nothing left running or mounted
(test_hardening_hostile.refused)."""

from __future__ import annotations

import os

import pytest

from test_hardening_hostile import _mutated, refused
from test_hardening_s15 import _nobody
from test_hardening_s33 import _kid, _subids
from enginecase import case  # noqa: F401  (the fixture)
from test_hardening_s34 import image  # noqa: F401  (the fixture: a child in a user namespace)


def _rootless(change):
    """The child's namespace made by nobody (a rootless tree), its process changed by `change`."""
    def mutate(d):
        d["userns"][_kid(d)["userns"]]["owner"] = _nobody().pw_uid
        change(_kid(d))
    return mutate


@pytest.mark.parametrize("sched, why", [
    ({"policy": 1, "rt_priority": 50}, r"its real-time priority 50 lies above its RLIMIT_RTPRIO \(give it the normal policy: chrt -o -p 0 PID\)"),
    ({"nice": -20}, r"its nice value -20 lies below what its RLIMIT_NICE allows \(raise it: renice -n 0 -p PID\)"),
    ({"ioprio": 1 << 13}, r"its I/O class is the real-time one \(give it the best-effort one: ionice -c 2 -p PID\)"),
    ({"oom_score_adj": -1000}, r"its oom_score_adj -1000 is negative \(raise it: choom -n 0 -p PID\)"),
])
def test_rootless_process_gets_no_scheduling_privilege(image, tmp_path, sched, why):  # noqa: F811
    """Restore set each process's scheduling attributes from outside, with its own privilege: an
    image of a tree nobody made ran its process under SCHED_FIFO 50 at nice -20 (checked by hand:
    what nobody, with RLIMIT_RTPRIO and RLIMIT_NICE 0, could not do)."""
    img = _mutated(image, tmp_path, _rootless(lambda p: p["sched"].update(sched)))
    refused(img, r"process \d+: " + why + ", which its rootless tree's user could not give it: an image of a "
            r"rootless tree gets no more than its user could; dump it again after that change", tmp_path,
            timeout=120, subids=_subids())


def test_rootless_process_gets_no_hard_limit_above_the_restorers(image, tmp_path):  # noqa: F811
    """The restorer raised its hard limits to the image's highest for its stand-ins to inherit: an
    image of a tree nobody made got RLIMIT_RTPRIO 99 (then SCHED_FIFO 99 of its own accord)."""
    img = _mutated(image, tmp_path, _rootless(lambda p: p["rlimits"].update({"RTPRIO": [99, 99]})))
    refused(img, r"RTPRIO", tmp_path, timeout=120, subids=_subids())


def test_rootless_tree_with_a_scheduling_privilege_refused_at_dump_unstopped(case):  # noqa: F811
    """A root process lowered its nice value to -5, then became uid 1000 (RLIMIT_NICE 0) and made a
    user namespace: restore would refuse it now (above), so dump refuses it first, the tree running."""
    from enginecase import STOP_WATCH, py_hold
    from test_engine_prestop import _refused_unstopped
    from test_hardening_s34 import rootless_kid
    kid = rootless_kid('os.setpriority(os.PRIO_PROCESS, 0, -5); '
                       'import resource; resource.setrlimit(resource.RLIMIT_NICE, (0, 0))')
    pid = case.start(STOP_WATCH + py_hold(kid))
    _refused_unstopped(case, pid, r"process (\d+): its nice value -5 lies below what its RLIMIT_NICE allows \(raise "
                                  r"it: renice -n 0 -p \1\), which restore gives no process of a rootless tree \(its "
                                  r"user could not set it\); then dump again")


def test_rootless_tree_with_a_hard_limit_above_the_dumpers_refused_at_dump_unstopped(case):  # noqa: F811
    """A tree uid 1000 made holds RLIMIT_MSGQUEUE 819200 (root's), the dumper (and so the restorer,
    root of the same host) 4096 here (prlimit): restore, which raises no hard limit for a rootless
    tree, would refuse it (above), so dump refuses it first, the tree running."""
    import re
    from enginecase import DUMP_EXTERNALS, STOP_WATCH, mntcr, py_hold, was_stopped
    from test_hardening_s34 import rootless_kid
    pid = case.start(STOP_WATCH + py_hold(rootless_kid()))
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *DUMP_EXTERNALS, wrap=("prlimit", "--msgqueue=4096:4096"))
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: process \d+: its hard resource limit MSGQUEUE \d+ lies above the dumper's "
                        r"4096, which restore gives no process of a rootless tree \(its user could not raise it\): "
                        r"lower it \(prlimit\), or raise the dumper's and the restorer's, and dump again\n",
                        r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
