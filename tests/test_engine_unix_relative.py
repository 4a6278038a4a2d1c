"""Unix sockets bound to a relative name (bind("d/srv") from the cwd): getsockname shows the name
as given, and dump wrote it into an image its own validator refused ("not an absolute path":
CRIU's sk-unix-rel and overmount_sock). A listener, a client connected to it and the accepted end
come back with the same relative names."""

from __future__ import annotations

import pytest

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d
""" + py_hold("""
import socket
os.chdir("/mnt/t")
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind("d/srv"); l.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect("d/srv"); a, _ = l.accept()
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("d/dg")
for n, s in ((10, l), (11, c), (12, a), (13, d)):
    os.dup2(s.fileno(), n); s.close()
""")


@pytest.mark.parametrize("strategy", ["", "flags=remount,sources=yard,sharing=construct,ids=mountinfo"])
def test_relative_socket_names_round_trip(case, strategy, monkeypatch):
    """Also before Linux 6.15 (the 5.10-like strategy), which binds them from a private mount namespace."""
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    before, after = case.roundtrip(SETUP, check="cd /mnt/t && ls -l d | awk 'NR > 1 {print $1, $NF}'")
    text = "\n".join(p.text() for p in after.snap.procs)
    assert "d/srv" in text and "d/dg" in text, text
    assert after.snap.check_output == before.snap.check_output


def test_pending_connection_to_a_relative_name(case):
    """CRIU's sk-unix-listen01: a client connected to a listener's relative name and not accepted
    yet was refused ("no name to connect to again"); it connects again through the socket file
    found, and the listener accepts it after restore."""
    import socket
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d
""" + py_hold("""
import socket
os.chdir("/mnt/t")
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind("d/srv"); l.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect("d/srv"); c.send(b"hello")
os.dup2(l.fileno(), 10); os.dup2(c.fileno(), 11); l.close(); c.close()
""")
    state = case.roundtrip(setup)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as lst:
        lst.settimeout(5)
        a, _ = lst.accept()
        with a:
            assert a.recv(10) == b"hello"
