"""Pipes and FIFOs: both ends of one pipe from one object, buffered data put back.

Dump reads the buffered bytes without consuming them: it opens another read
end of the pipe through /proc (a new description, so the process's flags and
its own ends are untouched) and tee(2)s the buffer into a private pipe of the
same capacity. A FIFO is a pipe reached by a path: restore opens it on the
restored mount (also beneath an overmount or on a detached mount), a keeper
O_RDWR open holds the pipe alive and writes the data first, so neither a
read-only nor a write-only open blocks.

A packet-mode pipe (pipe2(O_DIRECT), autofs's; any end of it O_DIRECT) keeps its
packets: a read of the private pipe stops at each packet (tee copies the
buffers with their packet mark), so dump records the reads' lengths and
restore writes each back through an O_DIRECT end (a plain write would make one
run of bytes of them, which a reader would take in one read).
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import fcntl
import os
import stat

from engine.imageformat import GHOST_ID, STR, F, pattern
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds import sys as fsys

MAX_DATA = 1 << 24   # a pipe holds at most pipe-user-pages-hard: 16 MiB is far above any default


def pipe_object(objects: dict, link: str, prefix: str = "fifo", packets: bool = False) -> str:
    """The id of the pipe object of the pipe or FIFO behind magic link `link` (/proc/PID/fd/N),
    recorded in `objects` with its buffered data the first time (a process's fd on it, or an fd in
    flight). `prefix`: "pipe" for a pipe, "fifo" for a FIFO. `packets`: the fd is O_DIRECT, the
    pipe in packet mode: the lengths of its packets are recorded too."""
    st = os.stat(link)
    obj = f"{prefix}-{st.st_dev}-{st.st_ino}"
    if obj not in objects or packets and "packets" not in objects[obj]:
        data, size, reads = read_buffer_at(link)
        objects[obj] = {"kind": "pipe", "size": size, "data": binascii.b2a_base64(data, newline=False).decode()}
        if packets:
            objects[obj]["packets"] = reads
    return obj


def read_buffer_at(link: str) -> tuple[bytes, int, list[int]]:
    """(buffered bytes, capacity, the lengths the reads gave) of the pipe behind magic link `link`,
    leaving the bytes there; each read asks for all that is left (a read stops after a packet)."""
    rd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(rd, fsys.F_GETPIPE_SZ)
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.fcntl(w, fsys.F_SETPIPE_SZ, size)
            try:
                n = fsys.tee(rd, w, size)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
                n = 0   # empty
            data, reads = b"", []
            while len(data) < n:
                data += os.read(r, n - len(data))
                reads.append(len(data) - sum(reads))
            return data, size, reads
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(rd)


def _dump(d) -> dict:
    return {"obj": pipe_object(d.objects, f"/proc/{d.pid}/fd/{d.fd}", "pipe", bool(d.flags & os.O_DIRECT))}


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(entry.get("obj"), str):
        _fail(f"{what}: a pipe needs 'obj'")


def check_object(obj: dict, what: str) -> None:
    """Validate a pipe object of the image."""
    from engine.image import _fail
    if not isinstance(obj.get("size"), int) or not 0 < obj["size"] <= MAX_DATA:
        _fail(f"{what}: bad pipe size")
    try:
        data = binascii.a2b_base64(obj.get("data", ""), strict_mode=True)
    except (ValueError, TypeError):
        _fail(f"{what}: pipe data is not base64")
    if len(data) > obj["size"]:
        _fail(f"{what}: more pipe data than the pipe holds")
    packets = obj.get("packets", [len(data)] if data else [])
    if not isinstance(packets, list) or not all(type(n) is int and n > 0 for n in packets) \
            or sum(packets) != len(data):
        _fail(f"{what}: pipe packets must be positive lengths that add up to its data")


def _fill(w: int, obj: dict, where: str) -> None:
    fcntl.fcntl(w, fsys.F_SETPIPE_SZ, obj["size"])
    data = binascii.a2b_base64(obj["data"])
    fl = fcntl.fcntl(w, fcntl.F_GETFL)
    # (in packet mode each recorded read is written alone, as a packet)
    fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK | (os.O_DIRECT if "packets" in obj else 0))
    try:
        for n in obj.get("packets") or [len(data)]:
            chunk, data = data[:n], data[n:]
            done = 0
            while done < len(chunk):
                done += os.write(w, chunk[done:])
    except BlockingIOError:
        raise FdError(errno.EAGAIN, f"{where}: the pipe's data does not fit back") from None
    finally:
        fcntl.fcntl(w, fcntl.F_SETFL, fl)


def _set_flags(fd: int, flags: int) -> None:
    """Give the new description the dumped status flags (O_NONBLOCK, O_APPEND...)."""
    want = flags & (os.O_NONBLOCK | os.O_APPEND | os.O_DIRECT | getattr(os, "O_NOATIME", 0))
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~(os.O_NONBLOCK | os.O_APPEND | os.O_DIRECT)) | want)


def _open_pipe(r: RestoreFd) -> int:
    e = r.entry
    obj = e["obj"]
    st = r.state.get(obj)
    if st is None:
        rd, w = os.pipe2(os.O_CLOEXEC)
        _fill(w, r.objects[obj], f"{r.where} pipe")
        st = r.state[obj] = {"ends": [rd, w], "used": set()}
        r.keep.extend((rd, w))
    acc = e["flags"] & os.O_ACCMODE
    end = st["ends"][0 if acc == os.O_RDONLY else 1]
    if end in st["used"]:
        # A second description of this end: opened again through /proc (like a FIFO open).
        fd = r.reopen(end, (acc if acc != os.O_RDWR else os.O_RDWR) | os.O_NONBLOCK | os.O_CLOEXEC)
    else:
        st["used"].add(end)
        fd = os.dup(end)   # the description itself: its flags are set below, once
    _set_flags(fd, e["flags"])
    return fd


def _open_fifo(r: RestoreFd) -> int:
    e = r.entry
    if e.get("ghost"):
        # Unlinked while open (CRIU's fifo-ghost): reopened from its ghost, unlinked again at restore.
        def opener(flags):
            return r.open_ghost(e["ghost"], flags, e["mnt"])
    else:
        def opener(flags):
            return r.open_at(e["mnt"], e["path"], flags)
    key = e.get("obj")
    if key is not None and key not in r.state:
        # A keeper open: never blocks, keeps the pipe (and the data written now) alive.
        keeper = opener(os.O_RDWR | os.O_NONBLOCK)
        r.keep.append(keeper)
        r.state[key] = {"keeper": keeper}
        _fill(keeper, r.objects[key], f"{r.where} fifo")
    if e["flags"] & os.O_PATH:
        # (containerd-shim keeps such fds on a container's stdio FIFOs: no end of the pipe, no status flags)
        return opener(os.O_PATH)
    fd = opener((e["flags"] & os.O_ACCMODE) | os.O_NONBLOCK)
    _set_flags(fd, e["flags"])
    return fd


def _dump_fifo(d) -> dict:
    return {"obj": pipe_object(d.objects, f"/proc/{d.pid}/fd/{d.fd}", packets=bool(d.flags & os.O_DIRECT))}


def _precheck(d) -> None:
    from engine.fds import pipe_outside   # (only a tree with pipes loads it)
    pipe_outside.precheck(d)


def _prefinish(scratch: dict) -> None:
    from engine.fds import pipe_outside
    pipe_outside.prefinish(scratch)


register(FdKind(name="pipe", matches=lambda t, m: t.startswith("pipe:["), dump=_dump, open=_open_pipe,
                check=_check, check_object=check_object, order=10, precheck=_precheck, prefinish=_prefinish))
def _precheck_fifo(d) -> None:
    from engine.fds import pipe_outside   # (only a tree with FIFOs loads it)
    pipe_outside.fifo_precheck(d)


def _prefinish_fifo(scratch: dict) -> None:
    from engine.fds import pipe_outside
    pipe_outside.fifo_prefinish(scratch)


register(FdKind(name="fifo", matches=lambda t, m: stat.S_ISFIFO(m) and t.startswith("/"), dump=_dump_fifo,
                open=_open_fifo, check=_check, placed=True, order=10, obj_kind="pipe",
                precheck=_precheck_fifo, prefinish=_prefinish_fifo,
                # A FIFO unlinked while open: its ghost (engine/ghosts.py) on the same superblock.
                fields={"ghost": F(STR, required=False, rule=pattern(GHOST_ID, "a ghost id g-N"))}))
