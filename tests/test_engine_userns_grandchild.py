"""A process two forks below the one that made a user namespace makes a network namespace of its
own (CRIU's netns_sub under the uns flavor). Its parent made none, so its parent's stand-in is
the fork of a stand-in already in the user namespace: restore had the grandchild's stand-in join
that namespace again as it started, "cannot start a stand-in inside its user namespace" (setns
EINVAL), a dump that did not restore."""

from __future__ import annotations

import re

import pytest

import enginecase
from enginecase import case, userns_setup  # noqa: F401  (fixture)

SETUP = userns_setup(0x20000000 | 0x00020000, """
if os.fork() == 0:          # pid 1 of the new pid namespace (CLONE_NEWPID | NEWNS)
    if os.fork() == 0:      # its child: no namespace of its own
        if os.fork() == 0:  # the grandchild: a network namespace of the user namespace's
            assert libc.unshare(0x40000000) == 0   # CLONE_NEWNET
            open("/tmp/netns-made", "w").close()
""", ready="/tmp/netns-made")


def _net(pid: int) -> str:
    import os
    return os.readlink(f"/proc/{pid}/ns/net")


def test_grandchild_makes_a_network_namespace_inside_the_user_namespace(case):
    before, after = case.roundtrip(SETUP)
    procs = after.snap.procs
    assert len(procs) == 5, procs
    # The grandchild's network namespace is its own again, not its parent's.
    nets = [_net(p.pid) for p in procs]
    # the holder's and the unsharer's, pid 1's and its child's (those four the same) and the grandchild's
    assert len(set(nets[:4])) == 1 and nets[4] not in nets[:4], nets


# Random namespace tree seed 39 (tests/test_random_nstrees.py), shrunk: the child makes a pid
# namespace for its own child. Its stand-in, in the user namespace, which does not own the pid
# namespace the stand-in is in, unshared a pid namespace for the grandchild's stand-in and could
# not put its own back: "setns: Operation not permitted", a dump that did not restore.
PID_SETUP = userns_setup(0, """
assert libc.unshare(0x04000000 | 0x00020000) == 0   # CLONE_NEWUTS | CLONE_NEWNS
if os.fork() == 0:              # the child: a pid namespace for its children
    assert libc.unshare(0x20000000) == 0
    if os.fork() == 0:          # pid 1 there
        open("/tmp/pidns-made", "w").close()
""", uid_map="0 0 65536", gid_map="0 0 65536", ready="/tmp/pidns-made")


def test_a_pid_namespace_made_below_the_user_namespace_s_first_process(case):
    before, after = case.roundtrip(PID_SETUP)
    procs = after.snap.procs
    assert len(procs) == 4, procs
    # The child's children are in its new pid namespace; its own is its parent's.
    import os
    pids = [os.readlink(f"/proc/{p.pid}/ns/pid") for p in procs]
    assert pids[2] == pids[1] and pids[3] != pids[2], pids
    assert os.readlink(f"/proc/{procs[2].pid}/ns/pid_for_children") == pids[3]


@pytest.mark.parametrize("mutate, pattern", [
    (lambda p, doc: p.update(pidns_children=p["ns"]["pid"]), r"pidns_children 'pid-\d+' is not below its own"),
    (lambda p, doc: p.update(pidns_children="pid-999"), r"pidns_children 'pid-999' is no pid namespace a process"),
], ids=["its-own", "unknown"])
def test_a_pid_namespace_for_children_the_image_makes_up_is_refused(case, mutate, pattern):
    """The image's pidns_children must name a pid namespace below the process's own that a process
    is in (restore joins it through that process): the validator refuses others in one line."""
    import json
    from engine import image, imageformat
    images = case.new_images_dir()
    case.dump(case.start(PID_SETUP), images)
    doc = enginecase.load_manifest(images)
    p = next(q for q in doc["processes"] if "pidns_children" in q)
    imageformat.validate(json.loads(json.dumps(doc)))
    mutate(p, doc)
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "\n" not in str(e.value) and re.search(pattern, str(e.value)), e.value
