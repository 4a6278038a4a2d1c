"""Unix and netlink socket refusals told before the tree is stopped (engine/prestop.py).

What a running process's socket already shows is refused here with the line
`dump` gives once the tree is stopped, so that the common case leaves the tree
untouched (no SIGSTOP a parent, a ptracer or a job-control shell could see):
another family (inet...), a type restore does not make, netlink messages
waiting to be read, a name that is not normalised, data waiting on a
connection not yet accepted (with --leave-running), and a datagram waiting on
a named socket whose sender's name no datagram socket of the tree holds.

Everything here only reads: a peek without a peek offset takes nothing and
moves nothing, so only the head datagram's sender is looked at (the socket's
own peek offset, set when a process uses one, is never touched: a socket with
one is left to `dump`). `dump` checks everything again on the stopped tree.
"""

from __future__ import annotations

import os
import socket

SO_PEEK_OFF = 42
SCRATCH = "unix-prestop"


def precheck(d) -> None:
    """Refuse socket fd `d` of a running process where its state already says `dump` would; note
    its name and its head datagram's sender for `prefinish`."""
    from engine.fds import netlink, unix
    c = d.copy()
    with socket.socket(fileno=os.dup(c)) as s:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_NETLINK:
            netlink.refuse(d, s)
            return
        typ = unix.refuse_family(d, s)
        name = unix._name(s.getsockname())
        unix.refuse_name(d, name)
        ino = os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_ino
        netns = os.stat(f"/proc/{d.pid}/ns/net").st_ino
        entry = {"type": unix.TYPES[typ], **name, "_ino": f"{netns}:{ino}", "_where": d.where}
        d.scratch.setdefault(SCRATCH, []).append(entry)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            if d.scratch.get("leave_running"):
                diag = unix.diag_of(d, netns)
                if any(diag.get(client, {}).get("wqueue") for client in diag.get(ino, {}).get("icons") or ()):
                    unix.refuse_pending_data(d)
            return
        if name and typ == socket.SOCK_DGRAM and not unix._connected(s) and unix._inq(c) \
                and s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) < 0:
            try:
                # (no room for ancillary data: fds in flight with it are not installed here)
                _data, _anc, _flags, addr = s.recvmsg(1, 0, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return   # (read meanwhile)
            sender = unix._name(addr)
            if sender:
                entry["_senders"] = [sender]


def prefinish(scratch: dict) -> None:
    """Once every socket of the tree was prechecked: refuse a head datagram whose named sender is
    no datagram socket of the tree (unix_backlog.name_senders, on these entries)."""
    from engine.fds import unix_backlog
    unix_backlog.name_senders(scratch.pop(SCRATCH, []))
