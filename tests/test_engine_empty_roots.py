"""Empty roots of one superblock keep their mode and owner (session 20).

Binds of two empty directories of a tmpfs whose own mount is gone: neither root holds files, so
no archive carries it. Dump records each one (`empty_roots`); restore makes each with its dumped
mode and owner. Before, dump kept one a superblock and restore made the other as a plain 0755
directory of root's, which the snapshot now sees (it compares each mount root's mode and owner).
"""

from __future__ import annotations

import json
import os

import pytest

from enginecase import CRError, assert_same, case, take  # noqa: F401  (case: fixture)
from engine import image, topology

SETUP = """
mkdir -p /mnt/t /mnt/pa /mnt/pb /mnt/pc
mount -t tmpfs t /mnt/t
mkdir /mnt/t/a /mnt/t/b /mnt/t/c
chmod 1750 /mnt/t/a; chown 123:456 /mnt/t/a
chmod 0701 /mnt/t/b; chown 7:8 /mnt/t/b
chmod 0511 /mnt/t/c; chown 9:10 /mnt/t/c
mount --bind /mnt/t/a /mnt/pa; mount --bind /mnt/t/b /mnt/pb; mount --bind /mnt/t/c /mnt/pc
umount /mnt/t
hold
"""

WANT = {"/mnt/pa": "41750 123:456", "/mnt/pb": "40701 7:8", "/mnt/pc": "40511 9:10"}


def _roots(snap) -> dict[str, str]:
    """mountpoint -> "MODE UID:GID" of the /mnt/p* mounts' roots as the snapshot read them."""
    proc = snap.root
    canon = topology.canonical(proc.mounts)
    return {m.mountpoint: proc.roots.get(canon.label(m.mnt_id)) for m in proc.mounts
            if m.mountpoint.startswith("/mnt/p")}


def test_empty_roots_keep_mode_and_owner(case):
    """Three empty roots of one unmounted tmpfs: each comes back with its mode and owner."""
    pid = case.start(SETUP)
    before = take(pid)
    assert _roots(before) == WANT
    images = case.new_images_dir()
    case.dump(pid, images)
    new = case.restore(images)
    after = take(new)
    assert _roots(after) == WANT
    assert_same(before, after)
    with open(os.path.join(images, image.MANIFEST)) as f:
        doc = json.load(f)
    empties = [e for sb in doc["superblocks"].values() for e in image.empty_roots(sb)]
    assert sorted(e["root"] for e in empties) == ["/a", "/b", "/c"]


def test_old_image_with_one_empty_root(case):
    """An image written before `empty_roots` (one `empty_root` a superblock) still restores: the
    recorded root gets its mode and owner, the others come back as plain directories (made once the
    helper that fills superblocks is done too: the superblock has no archive)."""
    pid = case.start(SETUP)
    images = case.new_images_dir()
    case.dump(pid, images)
    path = os.path.join(images, image.MANIFEST)
    with open(path) as f:
        doc = json.load(f)
    sb = next(sb for sb in doc["superblocks"].values() if sb.get("empty_roots"))
    kept = min(sb.pop("empty_roots"), key=lambda e: e["root"])
    sb["empty_root"] = kept
    with open(path, "w") as f:
        json.dump(doc, f)
    after = _roots(take(case.restore(images)))
    # (what an older image cannot say: the other two are plain directories)
    assert after == {"/mnt/pa": WANT["/mnt/pa"], "/mnt/pb": "40755 0:0", "/mnt/pc": "40755 0:0"}


def test_empty_roots_checked(case):
    """The validator refuses an empty root listed twice, and empty roots on a superblock restore
    does not fill (an mqueue), before anything is made."""
    pid = case.start("mkdir -p /mnt/mq; mount -t mqueue mq /mnt/mq\n" + SETUP)
    images = case.new_images_dir()
    case.dump(pid, images)
    path = os.path.join(images, image.MANIFEST)
    with open(path) as f:
        good = f.read()

    def twice(sbs):
        roots = next(sb for sb in sbs.values() if sb.get("empty_roots"))["empty_roots"]
        roots.append(dict(roots[0], mode=0o777))

    def on_mqueue(sbs):
        next(sb for sb in sbs.values() if sb["fstype"] == "mqueue")["empty_roots"] = [
            {"root": "/", "mode": 0o777, "uid": 0, "gid": 0}]
    for change, why in ((twice, "an empty root is listed twice"),
                        (on_mqueue, "only a tmpfs or ramfs made by restore gets archived files")):
        doc = json.loads(good)
        change(doc["superblocks"])
        with open(path, "w") as f:
            json.dump(doc, f)
        with pytest.raises(CRError, match=why):
            case.restore(images)
