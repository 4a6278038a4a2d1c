"""Hostile archives that `mntcr restore` reads ahead (content.ReadAhead: 256 KiB or more together).

The read-ahead helper hashes and lists them before the manifest is even checked; the extraction
child must still refuse, as without it, an archive that does not match the manifest or whose
members escape, leaving the host untouched (test_hardening_hostile.refused). And an honest image of
that size restores with its files, xattrs and ACLs.
"""

from __future__ import annotations

import os
import tarfile

import pytest

import enginecase
from enginecase import case, copy_image, load_manifest  # noqa: F401  (fixture)
from engine import content
from test_hardening_hostile import ARCHIVES, BASE_SETUP, _info, _rewrite_archive, _sb, _victim, refused

# test_hardening_hostile's image, with a 420 KiB file that makes its archive worth reading ahead.
BIG_SETUP = BASE_SETUP.replace("exec 5<", "seq 1 70000 > /mnt/t/big\nexec 5<", 1)


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    """A valid image whose tmpfs archive is read ahead."""
    assert BIG_SETUP != BASE_SETUP
    yield from enginecase.dumped_image(tmp_path_factory, BIG_SETUP, "hostile image tests need root")


def _archive(img: str) -> str:
    name = _sb(load_manifest(img), "/mnt/t")["archives"][0]["file"]
    assert os.path.getsize(os.path.join(img, name)) >= content.AHEAD_MIN   # (else this tests nothing new)
    return name


def test_flipped_byte_is_refused(big_image, tmp_path):
    # Same size, other bytes: the sha256 the helper computed does not match the manifest's.
    img = copy_image(big_image, tmp_path)
    name = _archive(img)
    with open(os.path.join(img, name), "r+b") as f:
        f.seek(200000)
        b = f.read(1)
        f.seek(200000)
        f.write(bytes([b[0] ^ 0xFF]))
    refused(img, rf"archive {name} is damaged: size \d+, sha256", tmp_path)


def test_truncated_is_refused(big_image, tmp_path):
    img = copy_image(big_image, tmp_path)
    name = _archive(img)
    path = os.path.join(img, name)
    os.truncate(path, os.path.getsize(path) - 512)
    refused(img, rf"archive {name} is damaged", tmp_path)


@pytest.mark.parametrize("kind", ["symlink-then-beneath", "hardlink-out", "dotdot-member", "block-device"])
def test_escapes_are_refused(big_image, tmp_path, kind):
    # Members that escape, in an archive the manifest vouches for: the listing read ahead is checked.
    victim = _victim(tmp_path)
    add, pattern = ARCHIVES[kind]
    add = [(_info(i.name, i.type, size=i.size, linkname=i.linkname, devmajor=i.devmajor, devminor=i.devminor), d)
           for i, d in add]
    for info, _ in add:
        if info.type == tarfile.SYMTYPE:
            info.linkname = victim
    img = copy_image(big_image, tmp_path)
    _archive(img)
    _rewrite_archive(img, "/mnt/t", add)
    refused(img, pattern, tmp_path, victim=victim)


def test_big_archive_round_trip(case):
    """Files, an xattr and an ACL in an archive read ahead come back (the check compares them)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
seq 1 70000 > /mnt/t/big; echo x > /mnt/t/small
setfattr -n trusted.mark -v 1 /mnt/t/small
setfattr -n system.posix_acl_access -v 0sAgAAAAEABgD/////AgAEANIEAAAEAAQA/////xAABAD/////IAAEAP////8= /mnt/t/big
hold
"""
    check = "cd /mnt/t; md5sum big small; getfattr -h -d -m - big small; stat -c '%n %a' big small\n"
    _, after = case.roundtrip(setup, check=check)
    out = after.snap.check_output
    assert 'trusted.mark="1"' in out and "system.posix_acl_access=" in out and "big" in out
