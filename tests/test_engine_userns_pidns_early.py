"""A process that makes a pid namespace for its children inside the user namespace above its own,
then enters its own and makes a namespace there (`unshare -p`, `unshare -U`, `unshare -n`, then a
fork): its stand-in starts in its own user namespace (it made the network namespace there), so it
must make its children's pid namespace before it enters that one (engine/userns_cr.py
``pidns_children_early``). Random namespace tree seed 439 (tests/test_random_nstrees.py), shrunk:
its dump was refused 'could neither make nor join'."""

from __future__ import annotations

import os
import re

import pytest

import enginecase
from enginecase import CRError, case, py_hold  # noqa: F401  (fixture)
from zdtm import randomns

PID, NET = randomns.FLAGS["pid"], randomns.FLAGS["net"]
# The root makes user namespace U1 and a pid namespace for its child; the child, pid 1 there, makes
# another for its own children (owned by U1), then U2 and a network namespace of U2's, and forks.
TREE = ((("user", "0 0 1"), ("ns", PID, "pid")),
        ((((("ns", PID, "pid"), ("user", "0 0 1"), ("ns", NET, "net")), (((), ()),)),)))


def _setup(tree: tuple) -> str:
    return enginecase.STOP_WATCH + "(" + py_hold(randomns.body(tree)).strip() + ") </dev/null >/dev/null 2>&1 &\nhold\n"


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))


def test_children_pid_namespace_made_above_the_own_user_namespace_restores(case):
    pid = case.start(_setup(TREE))
    before = enginecase.take(pid)
    want = randomns.count(TREE) + 2   # (and the setup's shell, holding, and the stop watcher)
    if len(before.snap.procs) != want:
        raise enginecase.SetupError(f"the setup holds {len(before.snap.procs)} processes, not {want}")
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = enginecase.load_manifest(images)
    early = [p for p in doc["processes"] if p.get("pidns_children_early")]
    assert len(early) == 1 and early[0]["userns_first"] and early[0]["userns_start"], early
    after = enginecase.take(case.restore(images))
    enginecase.assert_same(before, after)
    # The child is in the root's children's pid namespace, the grandchild in the child's: each
    # not its parent's own.
    pids = [p.pid for p in after.snap.procs]
    pairs = [(p, k) for k in pids for p in pids if _ppid(k) == p
             and _ns(k, "pid") == _ns(p, "pid_for_children") != _ns(p, "pid")]
    assert len(pairs) == 2, pairs


def _refused_before_the_stop(case, tree) -> str:
    """Dump of `tree` refuses in one line naming the stand-in that cannot fork the process, the tree
    never stopped; the line."""
    pid = case.start(_setup(tree))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    lines = err.value.proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"mntcr dump: process \d+: its user namespace \(.*\) is neither that of "
                                            r"its parent's stand-in \(.*\) nor below it, which forks its stand-in: "
                                            r"not supported yet", lines[0]), lines
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    return lines[0]


def test_a_child_left_in_the_parent_s_own_pid_namespace_is_refused_before_the_stop(case):
    """The parent forked a child before it made its children's pid namespace (and its user
    namespace): the parent's stand-in, inside its own user namespace, could neither fork the child
    into the parent's own pid namespace nor have it join the user namespace above
    (engine/userns_cr.py check_forked_inside)."""
    ops, kids = TREE[1][0]
    tree = (TREE[0], (((("fork",), *ops), kids),))
    print(_refused_before_the_stop(case, tree))


def test_the_validator_wants_where_the_early_pid_namespace_is_made(case):
    """pidns_children_early without userns_first, userns_start and pidns_children is refused."""
    import json
    from engine import image, imageformat
    images = case.new_images_dir()
    case.dump(case.start(_setup(TREE)), images)
    doc = enginecase.load_manifest(images)
    imageformat.validate(json.loads(json.dumps(doc)))
    p = next(q for q in doc["processes"] if q.get("pidns_children_early"))
    del p["userns_first"]
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "pidns_children_early needs userns_first" in str(e.value)


def test_a_child_forked_before_its_parent_entered_its_user_namespace_is_refused_before_the_stop(case):
    """Without a pid namespace between: the child stays in the user namespace above the parent's,
    whose stand-in, inside its own (it made a mount and network namespace there), forks the child's
    and could not have it join the one above; restore failed 'setns: Operation not permitted'."""
    tree = (TREE[0], (((("fork",), ("user", "0 0 1"), ("ns", randomns.FLAGS["mnt"] | NET, "mnt+net")),
                       (((), ()),)),))
    _refused_before_the_stop(case, tree)
