"""engine/imageformat.py's mount tree check (_check_mntns) and the manifest's value sharing
(image._Sharing), on hand-made data: every mount reaches its namespace's root however the list is
ordered, a cycle, a missing parent or a mountpoint outside its parent's is refused with the same
line a plain reading of the rules gives (the check takes a shortcut for mounts listed after their
parent), and sharing changes no value. No mounts, no processes: pure data."""

from __future__ import annotations

import json
import random

import pytest

from engine import image
from engine import imageformat as f
from engine.image import ImageError

SBS = {"sb-1": {"fstype": "tmpfs", "source": "t", "super_opts": ["rw"], "dev": "0:42"}}


def _m(mid: int, parent: int | None, mp: str) -> dict:
    return {"id": mid, "parent": parent, "mountpoint": mp, "root": "/", "sb": "sb-1", "mount_opts": ["rw"]}


def _chain(n: int) -> list[dict]:
    """A root and n mounts, each on the one before it (/a, /a/a, ...)."""
    out, mp = [_m(1, None, "/")], ""
    for i in range(2, n + 2):
        mp += "/a"
        out.append(_m(i, i - 1, mp))
    return out


def _reference(mounts: list[dict], root: int) -> str | None:
    """The rules read plainly (as the check read them before its shortcut): every parent in the
    namespace and around the mount, then, in list order, the first mount whose parents do not
    lead to the root. The error line's text, or None."""
    by_id = {m["id"]: m for m in mounts}
    for m in mounts:
        if m["id"] == root:
            continue
        if m["parent"] not in by_id:
            return f"mount {m['id']}: parent {m['parent']!r} is not in mnt-1"
        if not image.is_beneath(m["mountpoint"], by_id[m["parent"]]["mountpoint"]):
            return (f"mount {m['id']}: mountpoint {m['mountpoint']} is outside its parent's "
                    f"{by_id[m['parent']]['mountpoint']}")
    for m in mounts:
        seen, cur = set(), m["id"]
        while cur != root:
            if cur in seen:
                return f"mount {m['id']}: parent cycle"
            seen.add(cur)
            cur = by_id[cur]["parent"]
    return None


def _check(mounts: list[dict], root: int = 1) -> str | None:
    try:
        f._check_mntns({"mnt-1": {"root": root, "mounts": mounts}}, SBS)
    except ImageError as e:
        return str(e).removeprefix("bad image: ")
    return None


def test_children_listed_before_their_parents_pass():
    """A deep chain listed leaves first: no mount comes after its parent (the slow path)."""
    mounts = _chain(300)
    assert _check(mounts[:1] + mounts[:0:-1]) is None
    assert _check(mounts) is None


def test_a_cycle_names_the_first_mount_that_does_not_reach_the_root():
    """3 and 4 on each other (at the same place: each beneath the other), 5 on 4."""
    mounts = [_m(1, None, "/"), _m(2, 1, "/a"), _m(5, 4, "/a/b"), _m(3, 4, "/a"), _m(4, 3, "/a")]
    assert _check(mounts) == "mount 5: parent cycle"
    assert _check([m for m in mounts if m["id"] != 5]) == "mount 3: parent cycle"


@pytest.mark.parametrize("seed", range(40))
def test_decides_as_the_plain_reading(seed):
    """Random trees in random order, some broken (a parent changed or missing, a mountpoint moved
    out of its parent's): the same verdict and the same line as the plain reading."""
    rng = random.Random(seed)
    mounts = [_m(1, None, "/")]
    for i in range(2, rng.randrange(3, 60)):
        p = rng.choice(mounts)
        mounts.append(_m(i, p["id"], p["mountpoint"].rstrip("/") + f"/d{i}"))
    body = mounts[1:]
    rng.shuffle(body)
    mounts = [mounts[0]] + body
    for _ in range(rng.randrange(0, 3)):
        m = rng.choice(body)
        how = rng.randrange(3)
        if how == 0:
            m["parent"] = rng.choice(mounts)["id"]
        elif how == 1:
            m["parent"] = 999
        else:
            m["mountpoint"] = f"/elsewhere{m['id']}"
    assert _check(mounts) == _reference(mounts, 1)


def test_sharing_changes_no_value():
    """The parsed manifest equals a plain parse; equal option lists and strings are one object."""
    doc = {"mntns": {"mnt-1": {"root": 1, "mounts": [dict(_m(i, 1, f"/m{i}"), dev="0:42", fstype="tmpfs",
                                                           source="t", super_opts=["rw", "size=1k"])
                                                      for i in range(2, 50)]}},
           "superblocks": dict(SBS, **{"sb-2": dict(SBS["sb-1"], super_opts=["rw", "size=1k"])}),
           "odd": [{"mount_opts": [[1]], "dev": 5, "root": {"x": 1}}, {"sb": "sb-1"}]}
    text = json.dumps(doc)
    shared = json.loads(text, object_hook=image._Sharing().hook)
    assert shared == json.loads(text)
    ms = shared["mntns"]["mnt-1"]["mounts"]
    assert ms[0]["mount_opts"] is ms[1]["mount_opts"] and ms[0]["super_opts"] is ms[1]["super_opts"]
    assert ms[0]["super_opts"] is shared["superblocks"]["sb-2"]["super_opts"]
    assert ms[0]["source"] is ms[1]["source"] and ms[0]["dev"] is ms[1]["dev"]
