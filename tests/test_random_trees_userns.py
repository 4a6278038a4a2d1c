"""Random mount trees (zdtm/randomtree.py) whose holder ends in `unshare -Urm`: the tree's mount
namespace copied into a user namespace of its own, every mount locked there, so that covers, what
they hide and the cwd beneath them take the engine's locked-copy paths (engine/userns_cr.py,
engine/nscopy.py). A dump may refuse (one line, a clear cause: many such trees hide files no
mount reaches); a dump that succeeds must restore the same tree. A fixed list of seeds, each a
real container (a few seconds each): the seeds below found 'dump OK, restore failed' once (an
overlay and its layers hidden under a cover, tests/test_engine_rootless.py); more seeds:
MNTCR_USERNS_SEEDS=FROM:TO. Known left (session 23): seed 41 (MNTCR_USERNS_SEEDS=41:42) restores
/mnt/t3/b4, a bind of the empty directory /mnt/m0 that a locked tmpfs covers, with a tmpfs root's
mode (1777, not 755): as if bound from the cover's root (not pinned down; archiving that
directory apart, as an empty root with its mode, did not change it)."""

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


@pytest.mark.parametrize("seed", SEEDS)
def test_a_tree_in_its_own_user_namespace_restores_or_is_refused(case, seed):
    setup = randomtree.in_userns(randomtree.render_setup(ops_of(seed)), HOLD)
    assert "unshare -U -r -m" in setup
    pid = case.start(setup, host_pidns=True)
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user"), "the setup made no user namespace"
    before = enginecase.take(pid)
    images = case.new_images_dir()
    try:
        case.dump(pid, images)
    except CRError as e:
        lines = e.proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mntcr dump: "), e   # (a refusal: one line)
        return
    restored = case.restore(images)
    enginecase.assert_same(before, enginecase.take(restored))
