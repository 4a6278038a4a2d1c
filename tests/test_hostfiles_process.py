"""A rootless tree's process whose root, cwd, executable or a mapped file is a host's file its
user could not reach (engine/hostfiles.py check_process): restore opens each only by the rootless
gate's rule (engine/userns.py reach, engine/restore.py host_reach) and would refuse it, so dump
refuses it first, before the stop, with one line ("a dump that succeeds must restore"). The same
tree on host files its user may reach (what real rootless trees hold) dumps and restores."""

from __future__ import annotations

import os
import shutil


from enginecase import DUMP_EXTERNALS, STOP_WATCH, assert_same, case, py_hold, take  # noqa: F401
from test_engine_prestop import _refused_unstopped
from test_hardening_s34 import rootless_kid

# /mnt/ext: a host directory bound in, declared external. priv/ is root's (its mode per test), with
# a file f and a directory sub/ (open to all: only priv's mode guards it); open/ is open to all.
EXT = ("--external", "mnt[/mnt/ext]:ext")
_MAP = ('import mmap; _m = mmap.mmap(os.open("/mnt/ext/DIR/f", os.O_RDONLY), 0, prot=mmap.PROT_READ)')


def _host(tmp_path, mode: int, fmode: int = 0o644) -> str:
    for d in ("priv", "open"):
        os.makedirs(tmp_path / d)
        (tmp_path / d / "f").write_text("hi\n")
        os.chmod(tmp_path / d / "f", fmode)
    os.makedirs(tmp_path / "priv" / "sub")
    os.chmod(tmp_path / "priv", mode)
    os.chmod(tmp_path, 0o755)
    return str(tmp_path)


def _start(case, tmp_path, opened: str, mode: int = 0o700, fmode: int = 0o644) -> int:  # noqa: F811
    return case.start(STOP_WATCH + py_hold(rootless_kid(opened)), binds=((_host(tmp_path, mode, fmode), "/mnt/ext"),))


_TAIL = (r" is on the host's files, where its rootless tree's user \(uid 1000\) could not reach it: restore would "
         r"refuse it; make it \(and the directories above it\) reachable for that user, or start the process from "
         r"a place of the tree's own")


def test_cwd_its_user_may_not_reach_refused_unstopped(case, tmp_path):  # noqa: F811
    """A root process entered a directory beneath root's 0700 directory of the host's, then became
    uid 1000 and made a user namespace: dump took it, restore refused it (uid 1000 may not search
    the directory above it). (Its root so is the same check: a chroot makes no user namespace.)"""
    pid = _start(case, tmp_path, 'os.chdir("/mnt/ext/priv/sub")')
    _refused_unstopped(case, pid, r"process \d+ cwd \(/mnt/ext/priv/sub\)" + _TAIL,
                       externals=(*DUMP_EXTERNALS, *EXT))


def test_o_path_fd_its_user_may_not_reach_refused_unstopped(case, tmp_path):  # noqa: F811
    """An O_PATH fd root opened on that directory, passed in: the look at fds passed every O_PATH
    fd over (openat2 refused its flags with EINVAL); restore refused it."""
    pid = _start(case, tmp_path, 'os.dup2(os.open("/mnt/ext/priv/sub", os.O_PATH), 5)')
    _refused_unstopped(case, pid, r"process \d+ fd 5: /mnt/ext/priv/sub is a file of the host's that its rootless "
                                  r"tree's user \(uid 1000\) could not open \(root opened it\): restore would refuse "
                                  r"it; declare it --external file\[PATH\]:KEY, or have the tree open it as its user",
                       externals=(*DUMP_EXTERNALS, *EXT))


def test_mapped_file_its_user_may_not_read_refused_unstopped(case, tmp_path):  # noqa: F811
    """A root process mapped root's 0600 file of the host's (its fd closed), then became uid 1000:
    restore would map it only as uid 1000 could open it."""
    pid = _start(case, tmp_path, _MAP.replace("DIR", "open"), 0o755, 0o600)
    _refused_unstopped(case, pid, r"process \d+ mapping \(/mnt/ext/open/f\)" + _TAIL,
                       externals=(*DUMP_EXTERNALS, *EXT))


def test_executable_its_user_may_not_read_refused_unstopped(case, tmp_path):  # noqa: F811
    """uid 1000 runs a program of root's mode 0711 (it may run it, not read it) in a user namespace
    it made: restore opens the executable to read it, as that user."""
    host = _host(tmp_path, 0o755)
    sleep = shutil.which("sleep")
    shutil.copy(sleep, os.path.join(host, "open", "sleep"))
    os.chmod(os.path.join(host, "open", "sleep"), 0o711)
    body = rootless_kid().replace('ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)\n    while True:\n'
                                  '        signal.pause()',
                                  'os.execv("/mnt/ext/open/sleep", ["sleep", "1000"])')
    assert "execv" in body
    pid = case.start(STOP_WATCH + py_hold(body), binds=((host, "/mnt/ext"),), daemons=("sleep",))
    _refused_unstopped(case, pid, r"process \d+ executable \(/mnt/ext/open/sleep\)" + _TAIL,
                       externals=(*DUMP_EXTERNALS, *EXT))


def test_cwd_and_mapping_its_user_may_reach_restored(case, tmp_path):  # noqa: F811
    """What real rootless trees hold: a cwd in a directory of the host's open to their user and a
    mapped file it may read, through a 0711 directory: dumped and restored."""
    pid = _start(case, tmp_path, 'os.chdir("/mnt/ext/priv/sub"); ' + _MAP.replace("DIR", "priv"), 0o711)
    before = take(pid)
    restored = case.cr(pid, dump_extra=EXT, restore_extra=("--external", f"mnt[ext]:{tmp_path}"))
    assert_same(before, take(restored))


# A root process binds a datagram socket on the host's files (root's, mode 0755 by the umask: uid
# 1000 may not write it) and connects another to it, then becomes uid 1000: restore connects the
# client again only as that user could.
_SOCK = ('import socket; _s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); _s.bind("/mnt/ext/open/d.sock"); '
         'os.chmod("/mnt/ext/open/d.sock", MODE); '
         '_c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); _c.connect("/mnt/ext/open/d.sock"); '
         'os.dup2(_s.fileno(), 5); os.dup2(_c.fileno(), 6)')


def test_connect_to_a_host_socket_its_user_may_not_write_refused_unstopped(case, tmp_path):  # noqa: F811
    """Dump took it, restore refused it ("connecting to /mnt/ext/open/d.sock: Permission denied")."""
    pid = _start(case, tmp_path, _SOCK.replace("MODE", "0o755"), 0o755)
    _refused_unstopped(case, pid, r"process \d+ fd 6 \(socket:\[\d+\]\): connected to /mnt/ext/open/d\.sock, "
                                  r"a socket file of the host's its rootless tree's user \(uid 1000\) could not "
                                  r"connect to \(root connected it\): restore would refuse it; have the tree connect "
                                  r"as its user, or make the socket writable for it", externals=(*DUMP_EXTERNALS, *EXT))


def test_connect_to_a_host_socket_its_user_may_write_restored(case, tmp_path):  # noqa: F811
    """The same socket file writable for all: dumped and restored."""
    pid = _start(case, tmp_path, _SOCK.replace("MODE", "0o777"), 0o755)
    before = take(pid)
    restored = case.cr(pid, dump_extra=EXT, restore_extra=("--external", f"mnt[ext]:{tmp_path}"))
    assert_same(before, take(restored))
