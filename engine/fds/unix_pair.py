"""Connected unix socket pairs whose ends the tree holds: the dump record of one end (its queued
data or messages, a shared image object), and, for the accepted end of a connection to a
listener (its name is the listener's), the connection made again at restore through a
temporary listener at that name (or bound aside where the listener's directory is gone, or
where the client's holder makes it: the kernel makes a connection's server end in the client's
network namespace, so a client that connected from another one holds the pair's namespace).
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
import socket
import stat

from engine.fds import FdError, unix_bind, unix_diag, unix_queue


def dump_end(k) -> None:
    """One end of a connected pair (a shared object of the image): its queued data or messages
    (`k`: the unix.Sock being dumped)."""
    d, s, out, ino, peer = k.d, k.s, k.out, k.ino, k.peer
    a, b = sorted((ino, peer))
    obj = f"unixpair-{k.netns}-{a}-{b}"
    o = d.objects.setdefault(obj, {"kind": "unix", "type": out["type"], "data": ["", ""]})
    end = 0 if ino == a else 1
    out.update({"obj": obj, "end": end})
    # (is this end's holder in the pair's network namespace: `settle` picks the end that makes it)
    o.setdefault("_home", [False, False])[end] |= k.holder_netns == k.netns
    if k.rec.get("shutdown"):   # (the directions shut down: restore shuts them down after queueing the data)
        o.setdefault("shut", [0, 0])[end] = k.rec["shutdown"]
    if out["type"] == "dgram":
        pass   # (named or not, each end binds its own name at restore: _name_spec)
    elif "path" in out or "abstract" in out:
        # The accepted end of a connection to a listener: its name is the listener's, and the
        # other end's peer name too. Made again through a listener of that name.
        if o.get("via", {}).get("end", end) != end or unix_bind.MAGIC.match(out.get("path", "")):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a connected socket pair whose both ends are "
                                            "named, or named through /proc: not supported")
        o["via"] = {"end": end, **{key: out[key] for key in ("path", "abstract") if key in out}}
        for key in ("path", "abstract"):
            out.pop(key, None)
    if out["type"] == "stream" and k.inflight:
        unix_queue.refuse_oob(s, d.where)
        # (fds in flight: the queue in segments, each ending with the bytes that carried fds;
        # an unnamed pair only, unix.case_of)
        o.setdefault("msgs", [[], []])[end] = unix_queue.peek_messages(s, d, k.inflight, selves={a: 0, b: 1})
    elif out["type"] == "stream":
        n = unix_queue.inq(k.c)
        if n > unix_queue.MAX_DATA:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: {n} bytes queued: too many")
        if n:
            data = unix_queue.peek_stream(s, n, d.where)
            d.objects[obj]["data"][end] = binascii.b2a_base64(data, newline=False).decode()
    else:
        # (FIONREAD gives a datagram's first message only: 0 for an empty one, whose queue was lost)
        msgs = unix_queue.peek_messages(s, d, k.inflight, selves={a: 0, b: 1}) \
            if k.inflight or unix_queue.waiting(s, k.c) else []
        if msgs or k.inflight:
            o.setdefault("msgs", [[], []])[end] = msgs
        _hidden(d, obj, end, s.type, msgs, unix_queue.outq(k.c))
    if "msgs" in o:
        # (the mounts of the files in flight on either end: restore opens them)
        out["mnts"] = unix_queue.inflight_mounts([m for q in o["msgs"] for m in q])


def _hidden(d, obj: str, end: int, typ: int, msgs: list, sent: int) -> None:
    """Refuse a datagram or seqpacket pair whose queue holds messages no peek shows: an empty
    message a program (or anyone) peeked at before is passed over by a peek at an offset
    (skb->peeked), so it would be lost. Each end's send buffer memory (SIOCOUTQ, `sent`) is what
    its messages queued on the other end take: more than the peeked ones (`msgs` of end `end`)
    take, sent again from a scratch pair, tells. Once both ends are dumped."""
    seen = d.scratch.setdefault(("unix-charged", obj), {})
    seen[end] = (msgs, sent)
    if len(seen) < 2:
        return
    for e in (0, 1):
        if seen[1 - e][1] > unix_queue.charged(typ, seen[e][0]):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a datagram socket pair with messages queued that a peek "
                                            "does not show (an empty message peeked at before: MSG_PEEK): not "
                                            "supported; let the program read its queue first")


def inflight_mnts(objects: dict, entries: list[dict]) -> None:
    """Once every end is dumped: give each end of a pair with fds in flight the mounts of the files
    in flight on either end (`mnts`, restore opens them). An end dumped before the other knew only
    the messages then recorded: a datagram pair whose first end sent a file to the second, held by
    one process, came without them, and restore refused its own image ("not in its mnts")."""
    for e in entries:
        o = objects.get(e.get("obj", ""))
        if e.get("kind") == "unix" and o is not None and o.get("kind") == "unix" and "msgs" in o:
            e["mnts"] = unix_queue.inflight_mounts([m for q in o["msgs"] for m in q])


def settle(objects: dict) -> None:
    """Once every end is dumped: a pair connected through a listener's name whose accepted end's
    holder is in another network namespace than the pair (a client that connected through a socket
    file from another namespace: both ends are the client's namespace's) is made by the holder of
    the client end (`via["maker"]`), through a listener bound aside; drops the dump's bookkeeping."""
    for key, o in objects.items():
        if key.startswith("unixpair-"):
            _as_segments(o)
        home = o.pop("_home", None) if key.startswith("unixpair-") else None
        via = o.get("via")
        if home is None or via is None or home[via["end"]]:
            continue
        if not home[1 - via["end"]]:
            raise FdError(errno.EOPNOTSUPP, f"{key}: a connected unix socket pair held only by processes of other "
                                            "network namespaces than its own: not supported")
        via["maker"] = 1 - via["end"]


def _as_segments(o: dict) -> None:
    """A stream pair with fds in flight towards one end and bytes alone towards the other (dumped
    as its `data`): those bytes as segments too, the image's one form of a stream queue with fds in
    flight (an image of both was refused at dump, after the stop, as one restore would refuse)."""
    if o.get("type") != "stream" or "msgs" not in o:
        return
    for end, data in enumerate(o["data"]):
        if data:
            raw = binascii.a2b_base64(data)
            o["msgs"][end] = [binascii.b2a_base64(raw[i:i + SEGMENT], newline=False).decode()
                              for i in range(0, len(raw), SEGMENT)]
            o["data"][end] = ""


SEGMENT = 1 << 17   # (the most a segment of an image holds: unix_check._check_msgs)


def prepare(key: str, obj: dict, holders: list, call):
    """A pair connected through a listener's name: the holder of its accepted end binds a
    listener there, connects, accepts, and removes it again (before the tree's own sockets are
    made, so the name is free). Returns [end 0, end 1]."""
    via = obj.get("via")
    if via is None:
        return None
    maker = via.get("maker", via["end"])
    chan = next((ch for e, ch in holders if e.get("end") == maker), holders[0][1])
    spec = {"type": obj["type"], "data": obj["data"], "msgs": obj.get("msgs"), "shut": obj.get("shut"),
            "accepted": via["end"],
            **{k: via[k] for k in ("path", "abstract") if k in via}}
    if maker != via["end"]:
        spec["aside"] = True   # (the client's holder: the name may lead nowhere in its mount namespace)
    if late(obj):
        spec["late"] = True
    return call(chan, "via", spec)


def late(obj: dict) -> bool:
    """Whether pair `obj`, connected through a listener's name, has fds in flight: its queues are
    then sent again once its first end is opened (unix.py `_fill_late`), when the files in flight
    (the tree's) can be, not by `prepare`, which makes the connection before any fd."""
    return "via" in obj and any(isinstance(m, dict) for q in obj.get("msgs") or () for m in q)


def late_spec(obj: dict) -> dict:
    """What `fill_in` queues on pair `obj` made by `prepare` without it (`late`): its queues, and
    the shutdowns its client end was not made with (early_shut)."""
    spec = {"type": obj["type"], "data": obj["data"], "msgs": obj.get("msgs"), "shut": obj.get("shut")}
    return _after_connect(spec, obj["via"]["end"])


def _after_connect(spec: dict, accepted: int) -> dict:
    """`spec` with the shutdowns left to make once the client end of its pair (the peer of end
    `accepted`) connected shut down in early_shut's directions."""
    pre = early_shut(spec.get("shut"), accepted)
    if not pre:
        return spec
    shut = list(spec["shut"])
    shut[1 - accepted] &= ~pre
    return {**spec, "shut": shut}


def fill_in(spec, fds):
    """In the stand-in: queue on the pair whose ends are fds[0], fds[1] what `spec` (late_spec's)
    says, the fds in flight from fds[2:] (the received fds are the stand-in's to close)."""
    fill(list(fds[:2]), spec, fds[2:])
    return None, []


def via_in(spec, fds):
    """In the stand-in: a connection through a temporary listener at the dumped name (what waits on
    it queued too, unless it is `late`)."""
    t = unix_diag.TYPE_NO[spec["type"]]
    name = b"\0" + binascii.a2b_base64(spec["abstract"]) if "abstract" in spec else spec["path"]
    pre = early_shut(spec.get("shut"), spec["accepted"])
    if isinstance(name, str) and (spec.get("aside") or not os.path.isdir(os.path.dirname(name) or ".")):
        a, c = _accept_aside(t, name, pre)   # (the listener's directory was removed: CRIU's sk-unix01)
    else:
        a, c = _accept_at(t, name, pre)
    ends = [None, None]
    ends[spec["accepted"]], ends[1 - spec["accepted"]] = a.detach(), c.detach()
    if spec.get("late"):
        return None, ends
    return None, fill(ends, _after_connect(spec, spec["accepted"]), fds)


def early_shut(shut, accepted: int) -> int:
    """The directions the client end of pair `shut` ([end 0's, end 1's] sk_shutdown bits: 1 receive,
    2 send) was shut down in before it connected: those its accepted peer lacks the other side of
    (a shutdown of a connected end gives its peer the other direction: CRIU's sockets03 shut its
    client for reading first, and its accepted end is not shut for writing). 0: none."""
    if not shut:
        return 0
    other = shut[accepted]
    return shut[1 - accepted] & ~((other & 1) << 1 | (other & 2) >> 1)


def fill(ends: list[int], spec: dict, fds: list[int]) -> list[int]:
    """Queue on each of a new pair's `ends` what it held at dump (spec's "data" or "msgs", with the
    fds in flight from `fds`), each sent by its peer. Returns `ends`."""
    for end, data in enumerate(spec.get("data") or ()):
        if data:
            with socket.socket(fileno=os.dup(ends[1 - end])) as peer:   # what `end` will read, sent by its peer
                unix_queue.send_all(peer, binascii.a2b_base64(data))
    rest = list(fds)
    settle: list = []   # (quiet epolls in flight: their taken edges are taken again once all is queued)
    try:
        for end, queue in enumerate(spec.get("msgs") or ()):
            with socket.socket(fileno=os.dup(ends[1 - end])) as peer:
                rest = unix_queue.send_queue(peer, queue, rest, ends, settle)
        for end, bits in enumerate(spec.get("shut") or ()):
            if bits:   # (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2: SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2; the peer gets the other side)
                with socket.socket(fileno=os.dup(ends[end])) as s:
                    s.shutdown(bits - 1)
        if settle:   # (imported only then: the stand-in chrooted, and restore loaded the kinds of the image only)
            from engine.fds import epoll
            epoll.settle(settle)
    finally:
        for fd, _ in settle:
            os.close(fd)
    return ends


def _client(t: int, pre: int) -> socket.socket:
    """A new client socket of type `t`, shut down in the directions `pre` (early_shut) before it connects."""
    c = socket.socket(socket.AF_UNIX, t)
    if pre:
        c.shutdown(pre - 1)   # (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2: SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2)
    return c


def _accept_aside(t: int, name: str, pre: int = 0) -> tuple[socket.socket, socket.socket]:
    """(accepted, client) of a connection through a temporary listener bound to `name` with its
    file in a fresh detached tmpfs (unix_bind.bind_beside), where the name leads nowhere any more;
    the client shut down in the directions `pre` first."""
    top = unix_bind.fresh_mount("tmpfs")
    lst = socket.socket(socket.AF_UNIX, t)
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        # (as the root of the stand-in's user namespace: its own ids may be ones the namespace of
        # the fresh tmpfs does not map)
        if not unix_bind.bind_beside(lst, top, name, (0, 0)):
            raise FdError(errno.EOPNOTSUPP, f"{name}: a connection accepted from a listener whose directory is "
                                            "gone is made through a name bound aside, which a name with '.' or "
                                            "'..' components cannot be")
        lst.listen(1)
        c = _client(t, pre)
        os.fchdir(top)
        c.connect(os.path.basename(name))
        a, _ = lst.accept()
        return a, c
    finally:
        os.fchdir(cwd)
        os.close(cwd)
        lst.close()
        os.close(top)


def _accept_at(t: int, name, pre: int = 0) -> tuple[socket.socket, socket.socket]:
    """(accepted, client) of a connection through a temporary listener at `name` (a socket file
    there, restored with its filesystem, is moved aside for the moment); the client shut down in
    the directions `pre` first."""
    lst = socket.socket(socket.AF_UNIX, t)
    aside = None
    where = (os.path.dirname(name) or ".") if isinstance(name, str) else None   # (for unix_bind.mapped)
    try:
        if isinstance(name, str):
            try:
                if stat.S_ISSOCK(os.lstat(name).st_mode):
                    # The listener's socket file, restored with its filesystem's files (its
                    # listener is gone: CRIU's overmount_sock): moved aside for the moment.
                    unix_bind.mapped(None, where, os.rename, name, f"{name}.mntcr-{os.getpid()}")
                    aside = f"{name}.mntcr-{os.getpid()}"
            except FileNotFoundError:
                pass
        if where is None:
            lst.bind(name)
        else:
            unix_bind.mapped(None, where, lst.bind, name)
        lst.listen(1)
        c = _client(t, pre)
        c.connect(name)
        a, _ = lst.accept()
    finally:
        lst.close()
        if isinstance(name, str):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
            if aside is not None:
                unix_bind.mapped(None, where, os.rename, aside, name)
    return a, c
