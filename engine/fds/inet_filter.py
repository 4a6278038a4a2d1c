"""A classic BPF socket filter (SO_ATTACH_FILTER: tcpdump's, dhclient's, ping's on a raw socket) on
an inet socket of the tree: its instructions, read with getsockopt SO_GET_FILTER (the kernel keeps
the program as it was attached), attached again to the socket restore makes, before its options
(SO_LOCK_FILTER, which inet_opts keeps as "lock_filter", would forbid it after).

Refused: an eBPF program (SO_ATTACH_BPF, SO_ATTACH_REUSEPORT_*BPF: the kernel gives no instructions
of one back, EACCES), and a filter on a TCP connection or a client waiting in a listener's queue
(restore sends their peers' segments through it while it makes them). A datagram sent again to a
UDP or ping socket (engine/fds/inet_udp.py, inet_ping.py) passes through the filter again: a
classic filter decides on the packet alone, so it lets through what it let through.

Image: "filter", [[code, jt, jf, k], ...] (struct sock_filter), 1..BPF_MAXINSNS instructions; the
kernel checks the program when restore attaches it (a bad one fails the restore naming it), and it
attaches only to the socket its entry makes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from engine.fds import FdError
from engine.imageformat import LIST, F

SO_ATTACH_FILTER, SO_GET_FILTER = 26, 26
BPF_MAXINSNS = 4096
_INSN = struct.Struct("HBBI")   # struct sock_filter: code, jt, jf, k


def _check_insns(v) -> str | None:
    if not 1 <= len(v) <= BPF_MAXINSNS:
        return f"has {len(v)} instructions, not 1..{BPF_MAXINSNS}"
    for i in v:
        if not (type(i) is list and len(i) == 4 and all(type(x) is int for x in i)
                and 0 <= i[0] < 1 << 16 and 0 <= i[1] < 256 and 0 <= i[2] < 256 and 0 <= i[3] < 1 << 32):
            return "is not a list of [code 0..65535, jt 0..255, jf 0..255, k 0..2^32-1]"
    return None


FIELD = F(LIST, required=False, rule=_check_insns)


def _getsockopt(fd: int, n: int, buf) -> int:
    """SO_GET_FILTER with a length of `n` instructions (the kernel takes the length as instructions,
    not bytes): the filter's length; EACCES for an eBPF program."""
    import ctypes   # (here: a dump without a socket loads no ctypes for it)
    libc = ctypes.CDLL(None, use_errno=True)
    ln = ctypes.c_uint(n)
    if libc.getsockopt(fd, socket.SOL_SOCKET, SO_GET_FILTER, buf, ctypes.byref(ln)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ln.value


def read(s: socket.socket, where: str) -> list[list[int]] | None:
    """The classic filter attached to `s` as [[code, jt, jf, k]], None without one; FdError for an
    eBPF one."""
    import ctypes
    try:
        n = _getsockopt(s.fileno(), 0, None)
        if not n:
            return None
        buf = ctypes.create_string_buffer(n * _INSN.size)
        n = _getsockopt(s.fileno(), n, buf)
    except OSError as e:
        if e.errno == errno.EACCES:
            raise FdError(errno.EOPNOTSUPP, f"{where}: an eBPF socket filter (SO_ATTACH_BPF: the kernel gives no "
                                            "instructions of one back): not supported") from None
        raise
    if not 1 <= n <= BPF_MAXINSNS:
        raise FdError(errno.EOPNOTSUPP, f"{where}: a socket filter of {n} instructions: not supported")
    return [list(_INSN.unpack_from(buf.raw, i * _INSN.size)) for i in range(n)]


def attach(s: socket.socket, insns: list) -> None:
    """Attach classic filter `insns` to `s` (struct sock_fprog: length, pointer)."""
    import ctypes
    code = ctypes.create_string_buffer(b"".join(_INSN.pack(*i) for i in insns))
    prog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(code))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    except OSError as e:
        raise FdError(e.errno or errno.EINVAL, f"attaching its socket filter ({len(insns)} instructions): "
                                               f"{e.strerror or e}") from None
