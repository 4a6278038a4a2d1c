"""Random namespace trees (zdtm/randomns.py, tests/test_random_nstrees.py) whose namespaces other
user namespaces than the process's own own, which dump refused ("its namespaces belong to another
user namespace than its own, and its parent made namespaces inside a user namespace", "its pid
namespace belongs to ..., others of its namespaces to its own user namespace", "its net namespace
belongs to the dumper's user namespace, others of its namespaces to its own", "it made namespaces
inside its user namespace but its mount namespace belongs to another", "its pid namespace belongs
to ..., its mount namespace to ..., which is not at or below it"): each must now dump and
restore the same namespaces, owners and maps (the random test accepts a refusal)."""

from __future__ import annotations

import os

import pytest

import enginecase
from enginecase import case, py_hold  # noqa: F401  (fixture)
from zdtm import randomns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root")

SHAPES = {
    4: "net and cgroup namespaces of the dumper's, made before the user namespace",
    11: "a uts namespace of its own user namespace, under a parent that started in another",
    17: "namespaces of a nested user namespace, under a parent that started in its parent",
    33: "`unshare -rp` then a fork: pid 1 in the dumper's mount namespace",
    36: "pid 1 of a pid namespace owned by the user namespace its parent's stand-in is in",
    41: "a pid namespace owned by the parent's user namespace, a uts one by its own",
    49: "a net namespace made before its user namespace, uts and ipc ones after",
    50: "a pid namespace owned by the parent's user namespace, its own a nested one",
    54: "a pid namespace owned by an ancestor user namespace, a cgroup one by its own",
    80: "pid 1 of a pid namespace owned by its parent user namespace, in the dumper's mount namespace",
    101: "the same, pid 1 forks a child",
    109: "pid 1 of a pid namespace owned by its parent user namespace, a uts one made before its own",
    85: "a child of a late process (pid namespace of its user namespace, the dumper's mount namespace) makes a cgroup one",
    115: "a late pid 1 of a pid namespace its parent user namespace owns makes a cgroup namespace",
}


@pytest.mark.parametrize("seed", SHAPES, ids=[f"seed{s}" for s in SHAPES])
def test_a_tree_with_namespaces_of_other_user_namespaces_restores(case, seed):
    tree = randomns.make(seed)
    pid = case.start("(" + py_hold(randomns.body(tree)).strip() + ") </dev/null >/dev/null 2>&1 &\nhold\n")
    before = enginecase.take(pid)
    assert len(before.snap.procs) == randomns.count(tree) + 1, randomns.describe(tree)
    images = case.new_images_dir()
    case.dump(pid, images)
    after = enginecase.take(case.restore(images))
    enginecase.assert_same(before, after)
