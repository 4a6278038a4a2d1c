"""engine/channel.py: messages with fds between the restorer and its helpers."""

from __future__ import annotations

import os

from engine.channel import Channel


def test_received_fds_are_close_on_exec():
    """A program the restorer starts later (a FUSE daemon, tar) must not inherit the fds its helpers
    sent it: a mount fd kept by a daemon kept the superblock that daemon serves alive, forever."""
    a, b = Channel.pair()
    r, w = os.pipe()
    try:
        os.set_inheritable(r, True)  # (inheritable on the sending side: the flag is the fd's, not the file's)
        a.send("fd", [r])
        obj, fds = b.recv()
        assert obj == "fd" and len(fds) == 1
        assert not os.get_inheritable(fds[0])
        os.close(fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        a.sock.close()
        b.sock.close()
