"""zdtm/loopguard.py: loop devices the kernel keeps bound after a session, on made-up trees."""

from __future__ import annotations

import os
import sys

import pytest

from zdtm import loopguard

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAR = 999_990  # loop minors no machine here has


def _bind(sysblock, minor, backing, autoclear=True):
    d = sysblock / f"loop{minor}" / "loop"
    d.mkdir(parents=True, exist_ok=True)
    (d / "backing_file").write_text(backing + "\n")
    (d / "autoclear").write_text("1\n" if autoclear else "0\n")


def _proc(tmp_path, mountinfo="", fds=()):
    proc = tmp_path / "proc"
    p = proc / "42"
    (p / "fd").mkdir(parents=True)
    (p / "mountinfo").write_text(mountinfo)
    for n, target in enumerate(fds):
        os.symlink(target, p / "fd" / str(n))
    return proc


def test_new_unheld_autoclear_device_leaks(tmp_path):
    sysblock = tmp_path / "block"
    _bind(sysblock, FAR, "/old.img")
    (sysblock / "vda").mkdir()
    guard = loopguard.Guard(str(sysblock), str(_proc(tmp_path)))
    assert guard.leaked(grace=0) == []
    _bind(sysblock, FAR + 1, "/disk.img")
    _bind(sysblock, FAR + 2, "/manual.img", autoclear=False)  # someone's losetup: left alone
    found = guard.leaked(grace=0.3)
    assert [lp.name for lp in found] == [f"loop{FAR + 1}"]
    assert f"/dev/loop{FAR + 1} (backing file /disk.img): bound during the session" in loopguard.describe(found)


def test_number_bound_again_to_another_file_is_new(tmp_path):
    sysblock = tmp_path / "block"
    _bind(sysblock, FAR, "/a.img")
    guard = loopguard.Guard(str(sysblock), str(_proc(tmp_path)))
    _bind(sysblock, FAR, "/b.img")
    assert [lp.backing for lp in guard.leaked(grace=0)] == ["/b.img"]


def test_a_device_whose_backing_file_was_deleted_since_is_not_new(tmp_path):
    """sysfs adds " (deleted)" once the file is unlinked: the same binding, someone else's, from before."""
    sysblock = tmp_path / "block"
    _bind(sysblock, FAR, "/a.img")
    guard = loopguard.Guard(str(sysblock), str(_proc(tmp_path)))
    _bind(sysblock, FAR, "/a.img (deleted)")
    assert guard.leaked(grace=0) == []


@pytest.mark.parametrize("line", [
    f"36 25 7:{FAR + 1} / /mnt rw - ext4 /dev/whatever rw",          # by device number
    f"36 25 0:77 / /mnt rw - btrfs /dev/loop{FAR + 1} rw",            # by source (btrfs: anonymous dev)
])
def test_device_a_mount_table_names_is_held(tmp_path, line):
    sysblock = tmp_path / "block"
    guard = loopguard.Guard(str(sysblock), str(_proc(tmp_path, mountinfo=line + "\n")))
    _bind(sysblock, FAR + 1, "/disk.img")
    assert guard.leaked(grace=0) == []


def test_device_a_process_holds_open_is_held(tmp_path):
    node = "/dev/loop0"
    if not os.path.exists(node) or os.major(os.stat(node).st_rdev) != 7:
        pytest.skip("no /dev/loop0 node to stand for an open loop device")
    sysblock = tmp_path / "block"
    guard = loopguard.Guard(str(sysblock), str(_proc(tmp_path, fds=[node])))
    _bind(sysblock, 0, "/disk.img")
    assert guard.leaked(grace=0) == []
    free = loopguard.Guard(str(tmp_path / "block2"), str(_proc(tmp_path / "x")))
    _bind(tmp_path / "block2", 0, "/disk.img")
    assert [lp.minor for lp in free.leaked(grace=0)] == [0]  # the same device, held by nothing


def test_session_fails_and_names_the_device(pytester, tmp_path, monkeypatch):
    sysblock = tmp_path / "block"
    sysblock.mkdir()
    pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
    pytester.makepyfile(test_binds=f'''
import os
def test_binds_a_loop_device():
    d = os.path.join({str(sysblock)!r}, "loop{FAR + 3}", "loop")
    os.makedirs(d)
    open(os.path.join(d, "backing_file"), "w").write("/disk.img\\n")
    open(os.path.join(d, "autoclear"), "w").write("1\\n")
''')
    monkeypatch.delenv("ZDTM_SESSION", raising=False)  # the inner session is the outermost here
    monkeypatch.setenv(loopguard.SYSBLOCK_ENV, str(sysblock))
    monkeypatch.setenv("PYTHONPATH", PROJECT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", timeout=120)
    out = result.stdout.str()
    assert "1 passed" in out
    assert "LEAKED LOOP DEVICES" in out
    assert f"/dev/loop{FAR + 3} (backing file /disk.img)" in out
    assert result.ret == 1
