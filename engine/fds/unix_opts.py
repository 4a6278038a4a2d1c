"""Socket options of a unix socket that a program sets and its peers see: SO_PASSCRED and
SO_PASSSEC (journald, systemd's notify socket, dbus: the receiver gets its senders' credentials),
SO_TIMESTAMP(NS) (a timestamp with each message), the buffer sizes (journald's /dev/log forces 8
MiB past rmem_max), the timeouts, SO_RCVLOWAT, a peek offset (SO_PEEK_OFF: where the program's
next MSG_PEEK starts; kept when set, set again before the queue is sent again, which moves it not),
SO_PASSPIDFD (systemd's sockets: a pidfd of the sender with each message), SO_PASSRIGHTS off
(fds refused in flight to it) and SO_PRIORITY (the priority its messages carry; a restored socket
had 0: tests/test_engine_unix_priority.py).

Dump reads them on its copy of the socket; restore sets those that differ from the new socket's,
on the socket it made: a buffer size past the limit with SO_RCVBUFFORCE/SO_SNDBUFFORCE (as the
program did, which needs CAP_NET_ADMIN). A value that does not come back fails the restore naming
the option (never a socket that silently passes no credentials).
"""

from __future__ import annotations

import errno
import socket
import struct

from engine.fds import FdError

# name: (option number, how it is read and written: "int" or "timeval")
OPTS = {
    "passcred": (16, "int"), "passsec": (34, "int"), "timestamp": (29, "int"), "timestampns": (35, "int"),
    "rcvbuf": (8, "int"), "sndbuf": (7, "int"), "rcvlowat": (18, "int"), "keepalive": (9, "int"),
    "rcvtimeo": (20, "timeval"), "sndtimeo": (21, "timeval"), "peek_off": (42, "int"),
    "passpidfd": (76, "int"), "passrights": (83, "int"), "priority": (12, "int"),
}
# Left out of the image at the value every new socket has: an image of a socket that never set them
# restores where the kernel lacks the option (SO_PASSPIDFD: Linux 6.5, SO_PASSRIGHTS: 6.16).
_UNSET = {"peek_off": -1, "passpidfd": 0, "passrights": 1, "priority": 0}
_FORCE = {"rcvbuf": 33, "sndbuf": 32}   # SO_RCVBUFFORCE, SO_SNDBUFFORCE
_TIMEVAL = struct.Struct("ll")


def _get(s: socket.socket, name: str) -> int | list[int]:
    num, how = OPTS[name]
    if how == "timeval":
        return list(_TIMEVAL.unpack(s.getsockopt(socket.SOL_SOCKET, num, _TIMEVAL.size)))
    return s.getsockopt(socket.SOL_SOCKET, num)


def read(s: socket.socket) -> dict:
    """{name: value} of the options of OPTS socket `s` has (one the kernel lacks, or at its _UNSET
    value, is left out)."""
    out = {}
    for name in OPTS:
        try:
            out[name] = _get(s, name)
        except OSError:
            continue
    return {name: v for name, v in out.items() if _UNSET.get(name) != v}


def apply(fd: int, opts: dict, where: str) -> None:
    """Give socket `fd` the options `opts` (read()'s) where they differ from its own."""
    s = socket.socket(fileno=fd)
    try:
        for name, want in sorted(opts.items()):
            if _get(s, name) == want:
                continue
            num, how = OPTS[name]
            try:
                if how == "timeval":
                    s.setsockopt(socket.SOL_SOCKET, num, _TIMEVAL.pack(*want))
                elif name in _FORCE:
                    # (the kernel doubles what it is given, and caps it at [rw]mem_max unless forced)
                    s.setsockopt(socket.SOL_SOCKET, num, want // 2)
                    if _get(s, name) != want:
                        s.setsockopt(socket.SOL_SOCKET, _FORCE[name], want // 2)
                else:
                    s.setsockopt(socket.SOL_SOCKET, num, want)
            except OSError as e:
                raise FdError(e.errno or errno.EINVAL, f"{where}: socket option {name} {want}: "
                                                       f"{e.strerror or e}") from None
            if _get(s, name) != want:
                raise FdError(errno.EINVAL, f"{where}: socket option {name} came back as {_get(s, name)}, not {want}")
    finally:
        s.detach()


def check(opts, what: str) -> None:
    """The image validator's part: known names, ints (timeouts: [seconds, microseconds])."""
    from engine.image import _fail
    if not isinstance(opts, dict):
        _fail(f"{what}: socket options must be an object")
    for name, v in opts.items():
        how = OPTS.get(name, (None, None))[1]
        ok = (how == "int" and type(v) is int and 0 <= v < 1 << 31) or \
             (how == "timeval" and type(v) is list and len(v) == 2 and all(type(x) is int and 0 <= x < 1 << 62 for x in v))
        if not ok:
            _fail(f"{what}: bad socket option {str(name)[:40]!r}")
