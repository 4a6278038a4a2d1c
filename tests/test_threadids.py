"""engine/threadids.py: a thread that takes other ids and groups for itself alone; listen() in
it records them with our pid, and we keep ours (and are one thread again, dumpable as before)."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from engine import forkrun, kernel, threadids


def _in_child() -> dict:
    """In a child of ours in a network namespace of its own: listen as 1234/2345 with groups
    7, 8, 99999 through threadids, then tell what a client sees and what the child holds."""
    kernel.unshare(kernel.CLONE_NEWNET)
    s = socket.socket(socket.AF_UNIX)
    s.bind(b"\0mntcr-threadids")
    threadids.call_as(1234, 2345, [7, 8, 99999], lambda: s.listen(5))
    c = socket.socket(socket.AF_UNIX)
    c.connect(b"\0mntcr-threadids")
    pid, uid, gid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    g = c.getsockopt(socket.SOL_SOCKET, 59, 1024)   # SO_PEERGROUPS
    return {"peer": [pid == os.getpid(), uid, gid, list(struct.unpack(f"{len(g) // 4}I", g))],
            "own": [os.geteuid(), os.getegid(), os.getgroups()], "threads": len(os.listdir("/proc/self/task")),
            "dumpable": kernel.dumpable()}


@pytest.mark.skipif(os.geteuid() != 0, reason="taking other ids needs root")
def test_listen_in_a_thread_with_other_ids_records_them_with_our_pid():
    """The client sees our pid with the thread's ids and groups; we keep ours."""
    got = forkrun.run(_in_child)
    assert got["peer"] == [True, 1234, 2345, [7, 8, 99999]], got
    assert got["own"] == [0, 0, os.getgroups()] and got["threads"] == 1 and got["dumpable"], got


def test_an_error_in_the_thread_is_raised_here():
    """fn's exception comes back to the caller."""
    def fail():
        raise ValueError("from the thread")
    with pytest.raises(ValueError, match="from the thread"):
        threadids.call_as(os.geteuid(), os.getegid(), None, fail)


def test_a_thread_that_cannot_be_made_is_an_oserror(monkeypatch):
    """Thread.start's RuntimeError comes back as an OSError (EAGAIN), what a stand-in answers
    with, and fn never runs."""
    import threading

    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    ran = []
    with pytest.raises(OSError, match="making a thread to take ids 1/2: can't start new thread") as e:
        threadids.call_as(1, 2, None, lambda: ran.append(1))
    assert e.value.errno == errno.EAGAIN and not ran
