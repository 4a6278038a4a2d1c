"""Unix sockets whose socket file lives on under another name than the one they were bound to:
supervisord binds its control socket to `NAME.PID`, links it as NAME and unlinks `NAME.PID`; a
daemon binds a temporary name and renames it into place (atomically replacing a stale one).
getsockname still shows the first name, the file has the second. Restore bound the first name and
then looked for the file under the second (`No such file or directory: 'supervisor.sock'`): now
the file is made under the name it had, the bound name kept, and clients connect through it."""

from __future__ import annotations

import re
import socket

import pytest

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d
""" + py_hold("""
import socket
l1 = socket.socket(socket.AF_UNIX); l1.bind("/mnt/t/d/ctl.sock.7"); l1.listen(4)
os.chmod("/mnt/t/d/ctl.sock.7", 0o700)
os.link("/mnt/t/d/ctl.sock.7", "/mnt/t/d/ctl.sock"); os.unlink("/mnt/t/d/ctl.sock.7")
l2 = socket.socket(socket.AF_UNIX); l2.bind("/mnt/t/d/.tmp-srv"); l2.listen(4)
open("/mnt/t/d/srv", "w").close()
os.rename("/mnt/t/d/.tmp-srv", "/mnt/t/d/srv")
# (a taken name: the file the first name would make in that directory exists)
l3 = socket.socket(socket.AF_UNIX); l3.bind("/mnt/t/d/busy"); l3.listen(4)
os.rename("/mnt/t/d/busy", "/mnt/t/d/moved"); open("/mnt/t/d/busy", "w").write("a file")
for n, s in ((10, l1), (11, l2), (12, l3)):
    os.dup2(s.fileno(), n); s.close()
""")


@pytest.mark.parametrize("strategy", ["", "flags=remount,sources=yard,sharing=construct,ids=mountinfo"])
def test_socket_files_under_another_name(case, strategy, monkeypatch):
    """Also before Linux 6.15 (the 5.10-like strategy), which binds from a private mount namespace."""
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    states = case.roundtrip(SETUP, check="ls -lA /mnt/t/d | awk 'NR > 1 {print $1, $5, $NF}'; cat /mnt/t/d/busy")
    state = states[-1]
    assert states[0].snap.check_output == state.snap.check_output
    assert "srwx------ 0 ctl.sock" in state.snap.check_output, state.snap.check_output
    fds = "\n".join(state.root.fds)
    for fd, name in ((10, "/mnt/t/d/ctl.sock.7"), (11, "/mnt/t/d/.tmp-srv"), (12, "/mnt/t/d/busy")):
        assert re.search(rf"^{fd}: .*name='{re.escape(name)}' listening=1", fds, re.M), fds
    root = f"/proc/{state.pid}/root/mnt/t/d/"
    for fd, path in ((10, "ctl.sock"), (11, "srv"), (12, "moved")):
        with socket.socket(fileno=grab_fd(state.pid, fd)) as lst, socket.socket(socket.AF_UNIX) as c:
            lst.settimeout(5)
            c.connect(root + path)
            a, _ = lst.accept()
            a.close()
