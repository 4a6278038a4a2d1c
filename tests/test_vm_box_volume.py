"""vm/box_volume.py without libvirt: the pool is a directory, virsh a fake that reads and writes it.

What is checked: concurrent first `vagrant up`s of one box do not both create its pool volume
(vagrant-libvirt checks, then creates: "storage volume ... exists already"), a volume of the
name not uploaded from this cache's box image (a half-written one, another cache's) is removed
and uploaded again, one that was is reused, and other volumes are left alone.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from vm import box_volume

BOX = "mntcr/bookworm-0123456789ab"
MTIME = 1796321798
VOL = f"mntcr-VAGRANTSLASH-bookworm-0123456789ab_vagrant_box_image_0_{MTIME}_box.img"


@pytest.fixture
def pool(tmp_path, monkeypatch):
    """A fake pool directory behind box_volume's virsh calls; the state dir beside it."""
    pool = tmp_path / "pool"
    pool.mkdir()
    monkeypatch.setattr(box_volume, "STATE_DIR", tmp_path / "state")

    def virsh(*args):
        out, rc = "", 0
        if args[0] == "vol-list":
            out = "".join(f" {p.name}  {p}\n" for p in sorted(pool.iterdir()))
        elif args[0] in ("vol-delete", "vol-info"):
            p = pool / args[-1]
            rc = 0 if p.exists() else 1
            if args[0] == "vol-delete" and p.exists():
                p.unlink()
        return subprocess.CompletedProcess(["virsh", *args], rc, out, "")

    monkeypatch.setattr(box_volume, "_virsh", virsh)
    return pool


@pytest.fixture
def box_file(tmp_path):
    """The box's image as `vagrant box add` unpacked it (its mtime names the volume)."""
    f = tmp_path / "home" / "boxes" / "mntcr-VAGRANTSLASH-bookworm-0123456789ab" / "0" / "libvirt" / "box.img"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"box")
    os.utime(f, (MTIME, MTIME))
    return f


def _fake_up(pool: Path) -> None:
    """What vagrant-libvirt does with the box volume: create it when absent (check, then create)."""
    if not (pool / VOL).exists():
        time.sleep(0.2)  # the window between its check and its create
        fd = os.open(pool / VOL, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # FileExistsError: "exists already"
        os.write(fd, b"uploaded")
        os.close(fd)


def _up_under_lock(pool: Path, box_file: Path) -> str:
    try:
        with box_volume.held(BOX, box_file):
            _fake_up(pool)
        return "ok"
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def test_concurrent_first_ups_create_the_volume_once(pool, box_file):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as workers:
        results = workers.starmap(_up_under_lock, [(pool, box_file)] * 4)
    assert results == ["ok"] * 4
    assert [p.name for p in pool.iterdir()] == [VOL]
    assert box_volume.matches(VOL, str(pool / VOL), box_file), "the upload was not recorded"


def test_a_stale_volume_of_the_name_is_replaced_and_others_kept(pool, box_file, capsys, monkeypatch):
    monkeypatch.delenv("MNTCR_QUIET", raising=False)
    assert box_volume.volume_name(BOX, box_file) == VOL
    (pool / VOL).write_bytes(b"half an upload")
    other = pool / VOL.replace(str(MTIME), str(MTIME - 100))  # another cache's image of this box
    other.write_bytes(b"another cache's")
    with box_volume.held(BOX, box_file):
        assert not (pool / VOL).exists(), "the stale volume was kept for vagrant up"
        _fake_up(pool)
    assert other.read_bytes() == b"another cache's", "a volume vagrant up does not use was touched"
    assert (pool / VOL).read_bytes() == b"uploaded"
    assert "removing it" in capsys.readouterr().err
    # now recorded: the next up keeps it
    with box_volume.held(BOX, box_file):
        assert (pool / VOL).read_bytes() == b"uploaded"


def test_a_recorded_volume_is_reused_until_the_image_changes(pool, box_file):
    with box_volume.held(BOX, box_file):
        _fake_up(pool)
    first = (pool / VOL).stat().st_ino
    with box_volume.held(BOX, box_file):
        assert (pool / VOL).stat().st_ino == first
    box_file.write_bytes(b"another image")  # replaced, same mtime second: the same volume name
    os.utime(box_file, (MTIME, MTIME))
    with box_volume.held(BOX, box_file):
        assert not (pool / VOL).exists()
