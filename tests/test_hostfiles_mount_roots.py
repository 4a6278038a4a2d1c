"""A rootless tree's bind of a subdirectory of an external mount (engine/hostfiles.py
check_mount_roots): restore makes it only when the tree's user may search every directory above
that subdirectory (engine/restore.py _check_host_root), so dump refuses, before the stop, one that
lies beneath a directory the user may not search ("a dump that succeeds must restore"); one beneath
directories open to it dumps and restores."""

from __future__ import annotations

import os


from enginecase import DUMP_EXTERNALS, STOP_WATCH, assert_same, case, mntcr, py_hold, take, was_stopped  # noqa: F401
from test_hardening_s34 import rootless_kid

# /mnt/ext (a host directory bound in, declared external) holds priv/sub; /mnt/x binds priv/sub.
# A child becomes uid 1000 and unshares a user and a mount namespace (its copy of /mnt/x is locked
# there): a rootless tree.
SETUP = STOP_WATCH + """mkdir -p /mnt/x; mount --bind /mnt/ext/priv/sub /mnt/x
""" + py_hold(rootless_kid(flags=0x10000000 | 0x00020000))
EXT = ("--external", "mnt[/mnt/ext]:ext")


def _host(tmp_path, mode: int) -> str:
    os.makedirs(tmp_path / "priv" / "sub")
    (tmp_path / "priv" / "sub" / "f").write_text("hi\n")
    os.chmod(tmp_path / "priv", mode)
    os.chmod(tmp_path, 0o755)
    return str(tmp_path)


def test_bind_beneath_a_directory_its_user_may_not_search_refused_unstopped(case, tmp_path):
    pid = case.start(SETUP, binds=((_host(tmp_path, 0o700), "/mnt/ext"),))
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *DUMP_EXTERNALS, *EXT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("mntcr dump: mount ") and \
        "(/mnt/x): its root %s/priv/sub lies beneath a directory of the host's that its rootless tree's user " \
        "(uid 1000) may not search: restore would refuse it; declare it --external mnt[/mnt/x]:KEY\n" % tmp_path \
        in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_bind_beneath_directories_open_to_its_user_restored(case, tmp_path):
    host = _host(tmp_path, 0o711)
    pid = case.start(SETUP, binds=((host, "/mnt/ext"),))
    before = take(pid)
    restored = case.cr(pid, dump_extra=EXT, restore_extra=("--external", f"mnt[ext]:{host}"))
    assert_same(before, take(restored))
