"""Random process trees whose processes make namespaces of their own, user namespaces with their
maps among them, in any order and at any depth (zdtm/randomns.py): what runtimes, sandboxes and
CRIU's uns tests leave. A dump may refuse (one line); a dump that succeeds must restore the same
processes, namespaces, owners and maps. CRIU's netns_sub in `uns` was such a tree that dumped and
did not restore, and seed 39 (tests/test_engine_userns_grandchild.py). A fixed list of seeds here; more:
MNTCR_NSTREE_SEEDS=FROM:TO."""

from __future__ import annotations

import os
import re

import pytest

import enginecase
from enginecase import CRError, case, py_hold  # noqa: F401  (fixture)
from zdtm import randomns

_FROM, _, _TO = os.environ.get("MNTCR_NSTREE_SEEDS", "0:16").partition(":")
# Seeds a dump must not refuse (once refused): 171, a pid namespace of one user namespace and a uts
# namespace of another, both above the process's own; 191, a process entering first (enter_first) a
# mount namespace its parent's stand-in's user namespace owns, above its own; 353, such a process
# whose parent's stand-in entered the same mount namespace first (its restore failed: "cannot start a
# stand-in inside its user namespace"); 506, a pid namespace owned below the user namespace the
# parent's stand-in is in (made there: userns_start); 439, a pid namespace its parent made for its
# children inside the user namespace above its own before it entered that one (`unshare -p`, then
# -U): the parent's stand-in makes it there too (pidns_children_early; refused before)
RESTORES = {171, 191, 353, 439, 506}
# Seeds a dump must refuse before the stop, naming what (dump once succeeded and restore came out
# otherwise): 346, a pid namespace the parent made before its user namespace, which came back owned
# by that user namespace
REFUSED = {346: r"process \d+: its pid namespace, not its parent's, belongs to the dumper's user namespace, which "
                r"the stand-in of its parent, inside init > \[uid 0 0 1 .*\], could neither make nor join: not "
                r"supported yet"}
SEEDS = sorted(set(range(int(_FROM), int(_TO))) | {39} | RESTORES)   # (39: a dump that did not restore, fixed)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_tree_of_namespaces_restores_or_is_refused(case, seed):
    tree = randomns.make(seed)
    setup = enginecase.STOP_WATCH + "(" + py_hold(randomns.body(tree)).strip() \
        + ") </dev/null >/dev/null 2>&1 &\nhold\n"
    pid = case.start(setup)
    before = enginecase.take(pid)
    want = randomns.count(tree) + 2   # (and the setup's shell, holding, and the stop watcher)
    if len(before.snap.procs) != want:
        raise enginecase.SetupError(f"the setup holds {len(before.snap.procs)} processes, not {want}:\n"
                                    + randomns.describe(tree))
    images = case.new_images_dir()
    try:
        case.dump(pid, images)
    except CRError as e:
        lines = e.proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mntcr dump: "), f"{e}\n{randomns.describe(tree)}"
        assert seed not in RESTORES, f"seed {seed} must restore, its dump refused: {e}\n{randomns.describe(tree)}"
        assert not enginecase.was_stopped(pid), f"dump stopped the tree before it refused: {lines[0]}\n" \
            + randomns.describe(tree)
        print(f"seed {seed}: refused before the stop: {lines[0]}")   # (-rP lists the refusals of a sweep)
        return
    try:
        restored = case.restore(images)
    except CRError as e:
        raise AssertionError(f"dump succeeded, restore failed: {e}\n{randomns.describe(tree)}") from None
    after = enginecase.take(restored)
    try:
        enginecase.assert_same(before, after)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{randomns.describe(tree)}") from None


@pytest.mark.parametrize("seed", sorted(REFUSED))
def test_a_tree_restore_cannot_rebuild_is_refused_before_the_stop(case, seed):
    tree = randomns.make(seed)
    setup = enginecase.STOP_WATCH + "(" + py_hold(randomns.body(tree)).strip() \
        + ") </dev/null >/dev/null 2>&1 &\nhold\n"
    pid = case.start(setup)
    want = randomns.count(tree) + 2   # (and the setup's shell, holding, and the stop watcher)
    if len(enginecase.take(pid).snap.procs) != want:
        raise enginecase.SetupError(f"the setup holds not {want} processes:\n" + randomns.describe(tree))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    lines = err.value.proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch("mntcr dump: " + REFUSED[seed], lines[0]), \
        f"{err.value}\n{randomns.describe(tree)}"
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
