"""A unix socket pair made in a network namespace its maker then left (unshare, socketpair, setns
back): sock_diag lists the pair only in that namespace, where no process of the tree is, so dump
cannot read its peer or queue there. It was dumped as two sockets whose peers are gone (restore
made two unconnected ends); now refused before the stop with a line saying why."""

from __future__ import annotations

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

BODY = """
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
home = os.open('/proc/self/ns/net', os.O_RDONLY)
assert libc.unshare(0x40000000) == 0   # CLONE_NEWNET
s, c = socket.socketpair()
assert libc.setns(home, 0x40000000) == 0
s.send(b'hello')
"""


def test_pair_of_a_network_namespace_no_process_is_in_is_refused_unstopped(case):
    pid = case.start(STOP_WATCH + py_hold(BODY))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert "network namespace that no process of the tree is in" in str(err.value), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
