"""engine/hostidmap.py on hand-made manifests: which idmapped mounts reach the host's files and what
allows them (the restores themselves: test_hardening_idmap.py)."""

from __future__ import annotations

import pytest

from engine import hostidmap

SHIFT = {"uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]]}
SAME = {"uid_map": [[0, 0, 65536]], "gid_map": [[0, 0, 65536]]}


def _doc(mounts, superblocks) -> dict:
    return {"mntns": {"mnt-1": {"root": mounts[0]["id"], "mounts": mounts}}, "superblocks": superblocks}


def _m(mid, mp, sb, root="/", **kw) -> dict:
    return {"id": mid, "mountpoint": mp, "sb": sb, "root": root, "mount_opts": ["rw"], **kw}


def _sb(fstype="tmpfs", **kw) -> dict:
    return {"fstype": fstype, "source": "x", "super_opts": ["rw"], **kw}


EXT = {"usr": "/usr", "vol": "/srv/vol", "dev:disk": "/dev/loop7", "root": "/srv/root"}


def test_the_covering_external_is_the_one_named():
    """Two externals of one host superblock (/usr and /srv/vol on the host's root fs): an idmapped
    bind of a directory beneath vol's root needs vol's allowance, not usr's."""
    doc = _doc([_m(1, "/", "sb-0"), _m(2, "/usr", "sb-1", "/usr", external="usr"),
                _m(3, "/vol", "sb-1", "/srv/vol", external="vol"),
                _m(4, "/idm", "sb-1", "/srv/vol/sub", idmap=SHIFT)],
               {"sb-0": _sb(), "sb-1": _sb("ext4", external=True)})
    assert hostidmap.needed(doc) == ["mnt[vol]"]
    line = hostidmap.refusal(doc, set(), EXT)
    assert line.startswith("mount 4 (/idm): its idmap (uid 0->100000 x65536, gid 0->100000 x65536) would make "
                           "the host's files of --external mnt[vol] (/srv/vol) owned by other ids"), line
    assert line.endswith("give --allow-idmap mnt[vol]"), line
    assert hostidmap.refusal(doc, {"mnt[usr]"}, EXT) == line
    assert hostidmap.refusal(doc, {"mnt[vol]"}, EXT) is None


def test_the_root_device_and_image_content():
    """--root's directory and a device the user gave are the host's; a tmpfs of the image and a
    block filesystem on a loop file of the image are not; identity maps never need allowing."""
    doc = _doc([_m(1, "/", "sb-0", external="root", idmap=SHIFT), _m(2, "/disk", "sb-1", idmap=SHIFT),
                _m(3, "/t", "sb-2", idmap=SHIFT), _m(4, "/img", "sb-3", idmap=SHIFT),
                _m(5, "/same", "sb-1", idmap=SAME)],
               {"sb-0": _sb("ext4", external=True), "sb-1": _sb("ext4", device={"key": "disk"}),
                "sb-2": _sb(), "sb-3": _sb("ext4", device={"loop": {"sb": "sb-2", "path": "/f", "offset": 0,
                                                                    "sizelimit": 0, "ro": False}})})
    assert hostidmap.needed(doc) == ["dev[disk]", "root"]
    assert "files of --root (/srv/root)" in hostidmap.refusal(doc, set(), EXT)
    assert "--external dev[disk] (/dev/loop7)" in hostidmap.refusal(doc, {"root"}, EXT)
    assert hostidmap.refusal(doc, hostidmap.parse_allowances(["mnt[root]", "dev[disk]"]), EXT) is None


def test_an_overlay_on_a_host_layer_and_a_fuse_daemon():
    """An overlay shows its layers' files (one on an external here); a FUSE superblock shows what the
    user's --fuse-restart daemon serves."""
    layer = {"path": "/usr", "mnt": 2, "rel": "/"}
    doc = _doc([_m(1, "/", "sb-0"), _m(2, "/usr", "sb-1", "/usr", external="usr"),
                _m(3, "/ov", "sb-2", idmap=SHIFT), _m(4, "/f", "sb-3", idmap=SHIFT)],
               {"sb-0": _sb(), "sb-1": _sb("ext4", external=True), "sb-2": _sb("overlay", layers=[layer]),
                "sb-3": _sb("fuse.squashfuse")})
    assert hostidmap.needed(doc) == ["fuse[squashfuse]", "mnt[usr]"]
    assert "the daemon of --fuse-restart squashfuse" in hostidmap.refusal(doc, {"mnt[usr]"}, EXT)


def test_an_overlay_on_a_layer_of_a_detached_mount_of_the_host():
    """A layer on a detached mount (its mount lazily unmounted after the overlay was made) of an
    external superblock: the overlay shows the host's files as well."""
    layer = {"path": "/usr/l", "mnt": 9, "rel": "/l", "detached": True}
    doc = _doc([_m(1, "/", "sb-0"), _m(2, "/usr", "sb-1", "/usr", external="usr"), _m(3, "/ov", "sb-2", idmap=SHIFT)],
               {"sb-0": _sb(), "sb-1": _sb("ext4", external=True), "sb-2": _sb("overlay", layers=[layer])})
    doc["detached"] = {"9": {"id": 9, "sb": "sb-1", "root": "/usr", "mount_opts": ["rw"]}}
    assert hostidmap.needed(doc) == ["mnt[usr]"]


@pytest.mark.parametrize("spec", ["vol", "mnt[]", "file[x]", "mnt[a]b", "ROOT"])
def test_bad_allowances(spec):
    with pytest.raises(ValueError, match=r"--allow-idmap .*expected mnt\[KEY\], dev\[KEY\], fuse\[KEY\] or root"):
        hostidmap.parse_allowances([spec])
