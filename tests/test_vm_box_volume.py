"""vm/box_volume.py without libvirt: the pool is a directory, virsh a fake that reads and writes it.

What is checked: concurrent first `vagrant up`s of one box do not both create its pool volume
(vagrant-libvirt checks, then creates: "storage volume ... exists already"), a volume not
uploaded from this cache's box file (another cache's, a half-written one) is removed and
uploaded again, and one that was is reused.
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
VOL = box_volume.volume_prefix(BOX) + "0_box.img"


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
    f = tmp_path / "cache" / "mntcr-bookworm-0123456789ab.box"
    f.parent.mkdir()
    f.write_bytes(b"box")
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


def test_a_volume_from_another_box_is_replaced(pool, box_file, capsys, monkeypatch):
    monkeypatch.delenv("MNTCR_QUIET", raising=False)
    (pool / VOL).write_bytes(b"from another cache's box")
    with box_volume.held(BOX, box_file):
        assert not (pool / VOL).exists(), "the stale volume was kept for vagrant up"
        _fake_up(pool)
    assert (pool / VOL).read_bytes() == b"uploaded"
    assert "removing it" in capsys.readouterr().err
    # now recorded: the next up keeps it
    with box_volume.held(BOX, box_file):
        assert (pool / VOL).read_bytes() == b"uploaded"


def test_a_recorded_volume_is_reused_until_it_or_the_box_changes(pool, box_file):
    with box_volume.held(BOX, box_file):
        _fake_up(pool)
    first = (pool / VOL).stat().st_ino
    with box_volume.held(BOX, box_file):
        assert (pool / VOL).stat().st_ino == first
    box_file.write_bytes(b"rebuilt box")  # the cache's box was built again: its volume is not this one
    os.utime(box_file, ns=(1, 1))
    with box_volume.held(BOX, box_file):
        assert not (pool / VOL).exists()
