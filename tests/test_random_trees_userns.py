"""Random mount trees (zdtm/randomtree.py) whose holder ends in `unshare -Urm`: the tree's mount
namespace copied into a user namespace of its own, every mount locked there, so that covers, what
they hide and the cwd beneath them take the engine's locked-copy paths (engine/userns_cr.py,
engine/nscopy.py). A dump may refuse (one line, a clear cause: many such trees hide files no
mount reaches); a dump that succeeds must restore the same tree, and the same files under /mnt
(randomtree.CHECK: what a bind of a covered directory showed once came back empty). A fixed list of seeds, each a
real container (a few seconds each): the seeds below found 'dump OK, restore failed' once (an
overlay and its layers hidden under a cover, tests/test_engine_rootless.py); more seeds:
MNTCR_USERNS_SEEDS=FROM:TO. The shaped seeds (MNTCR_USERNS_SHAPED_SEEDS=FROM:TO, 0:8 here) make
wider trees (randomtree.USERNS_MORE_KINDS: unbindable mounts, read-only superblocks, up to 17 ops)
in user namespaces of other maps in turn (randomtree.USERNS_SHAPES: only root, 0-65535 as
themselves, shifted to 100000 as rootless runtimes map, and a second user namespace inside the
shifted one). Seed 41 (session 23) restored a bind of a directory a locked tmpfs
covers with the cover's root's mode: its shrunk form is the test at the end."""

from __future__ import annotations

import os
import random

import pytest

import enginecase
from enginecase import HOLD, CRError, case  # noqa: F401  (fixture)
from zdtm import randomtree

_FROM, _, _TO = os.environ.get("MNTCR_USERNS_SEEDS", "0:12").partition(":")
SEEDS = sorted(set(range(int(_FROM), int(_TO))) | {29})


def ops_of(seed: int) -> list[tuple]:
    """The op list of `seed` (3 to 11 ops of randomtree.USERNS_KINDS; deterministic)."""
    rnd = random.Random(seed)
    return [(rnd.choice(randomtree.USERNS_KINDS), rnd.randrange(16), rnd.randrange(16))
            for _ in range(rnd.randrange(3, 12))]


_SFROM, _, _STO = os.environ.get("MNTCR_USERNS_SHAPED_SEEDS", "0:8").partition(":")
SHAPED_SEEDS = range(int(_SFROM), int(_STO))


def shaped_ops_of(seed: int) -> tuple[str, list[tuple]]:
    """The user namespace shape (randomtree.USERNS_SHAPES, by seed in turn) and op list (3 to 17 ops
    of randomtree.USERNS_MORE_KINDS) of shaped seed `seed` (deterministic)."""
    rnd = random.Random(f"shaped-{seed}")
    return (randomtree.USERNS_SHAPES[seed % len(randomtree.USERNS_SHAPES)],
            [(rnd.choice(randomtree.USERNS_MORE_KINDS), rnd.randrange(16), rnd.randrange(16))
             for _ in range(rnd.randrange(3, 18))])


def _uid_map(pid: int) -> str:
    with open(f"/proc/{pid}/uid_map") as f:
        return " ".join(f.read().split())


@pytest.mark.parametrize("seed", SEEDS)
def test_a_tree_in_its_own_user_namespace_restores_or_is_refused(case, seed):
    _restores_or_is_refused(case, randomtree.in_userns(randomtree.render_setup(ops_of(seed)), HOLD), "0 0 1")


@pytest.mark.parametrize("seed", SHAPED_SEEDS)
def test_a_tree_in_user_namespaces_of_other_maps_restores_or_is_refused(case, seed):
    shape, ops = shaped_ops_of(seed)
    maps = {"root": "0 0 1", "range": "0 0 65536", "shifted": "0 100000 65536", "nested": "0 100000 1"}
    _restores_or_is_refused(case, randomtree.in_userns(randomtree.render_setup(ops), HOLD, shape), maps[shape])


def _restores_or_is_refused(case, setup: str, uid_map: str) -> None:
    pid = case.start(setup, host_pidns=True)
    if os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user") or _uid_map(pid) != uid_map:
        raise enginecase.SetupError(f"the setup made no user namespace mapping {uid_map!r}")
    before = enginecase.take(pid, randomtree.CHECK)
    images = case.new_images_dir()
    try:
        case.dump(pid, images)
    except CRError as e:
        lines = e.proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mntcr dump: "), e   # (a refusal: one line)
        return
    restored = case.restore(images)
    enginecase.assert_same(before, enginecase.take(restored, randomtree.CHECK))


# Seed 41, shrunk: a bind of a directory that a tmpfs covers afterwards. In the user namespace's
# copy the cover is locked, so dump's clone of the base tmpfs brings it along and tar archived
# the cover's root (1777) for that directory; the bind came back with that mode. Times and an
# owner of its own make the directory's attributes unlike any root's. Also a directory under a
# covered one (both covered, the deeper one seen through a bind of the upper one; what covers it
# reached through another bind).
COVERED_BIND = """\
mount -t tmpfs base /mnt || exit 1
mkdir -p /mnt/m0 /mnt/b4 /mnt/x/y /mnt/bx /mnt/by || exit 1
chmod 750 /mnt/m0 && chown 5:6 /mnt/m0 && touch -m -d @1000000000 /mnt/m0 || exit 1
echo held > /mnt/x/f && chmod 705 /mnt/x/y && chown 7:8 /mnt/x/y || exit 1
touch -m -d @1100000000 /mnt/x/y /mnt/x || exit 1
mount --bind /mnt/m0 /mnt/b4 && mount --bind /mnt/x /mnt/bx || exit 1
mount -t tmpfs o5 /mnt/m0 && mount -t tmpfs o6 /mnt/x/y && mount --bind /mnt/x/y /mnt/by || exit 1
mount -t tmpfs o7 /mnt/x || exit 1
exec zdtm-hold
"""


def _attrs(pid: int, path: str) -> tuple:
    st = os.stat(f"/proc/{pid}/root{path}")
    return oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns


def test_a_bind_of_a_directory_a_locked_mount_covers_keeps_its_mode_owner_and_times(case):
    pid = case.start(randomtree.in_userns(COVERED_BIND, HOLD), host_pidns=True)
    before = enginecase.take(pid, randomtree.CHECK)
    want = {p: _attrs(pid, p) for p in ("/mnt/b4", "/mnt/bx/y", "/mnt/bx")}
    if want["/mnt/b4"][:3] != (oct(0o40750), 5, 6) or want["/mnt/bx/y"][:3] != (oct(0o40705), 7, 8):
        raise enginecase.SetupError(f"the setup did not make the directories it meant to: {want}")
    restored = case.cr(pid)
    assert {p: _attrs(restored, p) for p in want} == want
    with open(f"/proc/{restored}/root/mnt/bx/f") as f:
        assert f.read() == "held\n"
    enginecase.assert_same(before, enginecase.take(restored, randomtree.CHECK))


# Seed 17 (and 21, 25, 30, 51), shrunk: mounts beneath a directory whose owner the user namespace
# does not map and which grants others no search permission. The lock probe, root of that user
# namespace, cannot reach them ("lock probe failed: Permission denied" before); the refusal now
# names the directory and what to do, and comes before the tree is stopped.
UNSEARCHABLE = """\
mount -t tmpfs base /mnt && mkdir /mnt/t && mount -t tmpfs t /mnt/t || exit 1
chmod 700 /mnt && chown 12:10 /mnt || exit 1
exec zdtm-hold
"""


def test_mounts_beneath_a_directory_the_user_namespace_may_not_search_are_refused_saying_what_to_do(case):
    pid = case.start(enginecase.STOP_WATCH + randomtree.in_userns(UNSEARCHABLE, HOLD), host_pidns=True)
    if not os.path.exists(f"/proc/{pid}/root/run/.watching"):
        raise enginecase.SetupError("the stop watcher is not seen from the tree's root")
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    lines = err.value.proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lock probe failed: the mount at /mnt/t lies beneath /mnt" in lines[0], lines
    assert "chmod o+x /mnt" in lines[0]
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
