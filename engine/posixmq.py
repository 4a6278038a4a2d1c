"""POSIX message queues of the tree's ipc namespaces (mq_open), with engine/sysvipc.py: read by
the dumper's thread joined to the namespace, listed on a detached mqueue mount of its own (the
namespace's one superblock: nothing is attached anywhere); made again with mq_open in the restored
namespace with their attributes, owner, mode and messages in their order. A queue a process asked
to be notified on (mq_notify) is refused before the stop: the registration is not restored.

Image (in the namespace's "sysvipc" entry): "mqueue": [{name, mode, uid, gid, maxmsg, msgsize,
msgs [[priority, base64 text]]}].
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import ctypes
import errno
import os

from engine import kernel
from engine.sysvipc import MAX_OBJECTS, IpcError, b64_size, checked, int_in

_libc = ctypes.CDLL(None, use_errno=True)


class _MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]


_libc.mq_receive.restype = ctypes.c_ssize_t
_libc.mq_receive.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint))
_libc.mq_send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint)


def _mqueue_dir() -> int | None:
    """In the namespace: a directory fd on a detached mqueue mount of our own (the
    namespace's one superblock: its POSIX message queues; nothing is attached anywhere), None
    without POSIX message queues in the kernel."""
    try:
        ctx = kernel.fsopen("mqueue")
    except OSError:
        return None
    try:
        kernel.fsconfig(ctx, kernel.FSCONFIG_CMD_CREATE)
        mnt = kernel.fsmount(ctx)
    finally:
        os.close(ctx)
    try:
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mnt)   # (fsmount's fd is O_PATH)
    finally:
        os.close(mnt)


def read_here(limits_only: bool = False, outsider=None) -> list[dict]:
    """In the namespace (sysvipc.joined): its POSIX message queues (name, mode, owner, attributes and
    messages, highest priority first as mq_receive gives them). Reading takes the messages; each
    is sent again at once, in the order read, so the queue is as it was. A queue a process asked to
    be notified on (mq_notify) is refused: the registration is not restored; so is a full queue when
    `outsider()` names a process outside the tree in the namespace (a message it waits to send would be
    taken in by the first receive, and lost when the queue is full again); asked only for a full
    queue (it scans /proc: ~1 ms on a host of 160 processes). `limits_only`: the refusals alone, nothing read."""
    d = _mqueue_dir()
    if d is None:
        return []
    out = []
    try:
        names = sorted(os.listdir(d))
        if len(names) > MAX_OBJECTS:
            raise IpcError(errno.EOPNOTSUPP, f"{len(names)} POSIX message queues in one ipc namespace: at most "
                                             f"{MAX_OBJECTS}")
        for name in names:
            fd = os.open(name, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d)
            try:
                info = dict(kv.split(":") for kv in os.read(fd, 256).decode().split())
                if int(info.get("NOTIFY_PID", "0")):
                    raise IpcError(errno.EOPNOTSUPP, f"POSIX message queue /{name}: process {info['NOTIFY_PID']} "
                                                     "asked to be notified on it (mq_notify): not supported yet")
                attr = _MqAttr()
                checked(_libc.mq_getattr(fd, ctypes.byref(attr)), f"mq_getattr of /{name}")
                who = outsider() if outsider is not None and attr.curmsgs >= attr.maxmsg else None
                if who is not None:
                    # (the tree's senders left the queue's wait list as it stopped; one outside may wait
                    # on it, whose message our first receive would take in: lost once the queue is full again)
                    raise IpcError(errno.EOPNOTSUPP, f"POSIX message queue /{name} is full and process {who}, "
                                                     "outside the tree, is in its ipc namespace (it may be waiting "
                                                     "to send to it): not supported; let the queue be read and "
                                                     "dump again")
                if limits_only:
                    continue
                st = os.fstat(fd)
                buf = ctypes.create_string_buffer(attr.msgsize)
                prio = ctypes.c_uint()
                msgs = []
                while True:
                    got = _libc.mq_receive(fd, buf, attr.msgsize, ctypes.byref(prio))
                    if got < 0:
                        if ctypes.get_errno() != errno.EAGAIN:
                            checked(-1, f"mq_receive of /{name}")
                        break
                    msgs.append((prio.value, buf.raw[:got]))
                for p, body in msgs:   # (back at once, in the order taken: the queue is as it was)
                    checked(_libc.mq_send(fd, body, len(body), p), f"mq_send to /{name}")
                out.append({"name": name, "mode": st.st_mode & 0o777, "uid": st.st_uid, "gid": st.st_gid,
                            "maxmsg": attr.maxmsg, "msgsize": attr.msgsize,
                            "msgs": [[p, binascii.b2a_base64(body, newline=False).decode()] for p, body in msgs]})
            finally:
                os.close(fd)
    finally:
        os.close(d)
    return out


def make_here(queues: list) -> None:
    """In a child in the new namespace: each POSIX message queue with its attributes, owner, mode
    and messages, made by root with the owner's file system ids (its inode takes them: a namespace
    a user namespace owns takes only ids it maps) and root's capabilities (a queue longer than the
    namespace's msg_max was made by a privileged process)."""
    old = os.umask(0)
    try:
        for q in queues:
            what = f"POSIX message queue /{q['name']}"
            attr = _MqAttr(0, q["maxmsg"], q["msgsize"], 0)
            kernel.fs_ids_keeping_caps(q["uid"], q["gid"])
            try:
                fd = checked(_libc.mq_open(_bytes("/" + q["name"]), os.O_RDWR | os.O_CREAT | os.O_EXCL
                                          | os.O_NONBLOCK | os.O_CLOEXEC, ctypes.c_uint(q["mode"]), ctypes.byref(attr)),
                            f"{what}: mq_open")
            finally:
                kernel.set_fs_ids(0, 0)
            try:
                for p, text in q["msgs"]:
                    body = binascii.a2b_base64(text)
                    checked(_libc.mq_send(fd, body, len(body), p), f"{what}: mq_send")
            finally:
                os.close(fd)
    finally:
        os.umask(old)


def _bytes(name: str) -> bytes:
    """The bytes of a queue's name as dump read it (os.listdir: undecodable bytes as surrogates), b""
    when it has a surrogate that stands for no byte."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return b""


def check(queues, what: str, fail) -> int:
    """The validator's rule for an ipc namespace's POSIX message queues; returns their bytes."""
    if type(queues) is not list or len(queues) > MAX_OBJECTS:
        fail(f"{what}: must be a list of at most {MAX_OBJECTS} queues")
    total, names = 0, set()
    for q in queues:
        if type(q) is not dict or set(q) != {"name", "mode", "uid", "gid", "maxmsg", "msgsize", "msgs"}:
            fail(f"{what}: a queue must have exactly name, mode, uid, gid, maxmsg, msgsize, msgs")
        name = q["name"]
        # (its bytes, as restore gives them to mq_open: two names may spell the same ones)
        raw = _bytes(name) if type(name) is str else b""
        if not 0 < len(raw) <= 255 or b"/" in raw or b"\0" in raw or raw in (b".", b"..") or raw in names:
            fail(f"{what}: bad or repeated queue name {str(name)[:40]!r}")
        names.add(raw)
        if not (int_in(q["mode"], 0, 0o777) and int_in(q["uid"], 0, 0xfffffffe) and int_in(q["gid"], 0, 0xfffffffe)
                and int_in(q["maxmsg"], 1, 65536) and int_in(q["msgsize"], 1, 16 << 20)):
            fail(f"{what} /{name}: bad mode, owner or attributes")
        if type(q["msgs"]) is not list or len(q["msgs"]) > q["maxmsg"]:
            fail(f"{what} /{name}: more messages than it holds")
        for m in q["msgs"]:
            if type(m) is not list or len(m) != 2 or not int_in(m[0], 0, 32767) or type(m[1]) is not str:
                fail(f"{what} /{name}: a message is [priority 0..32767, base64 text]")
            n = b64_size(m[1], f"{what} /{name}", fail)
            if n > q["msgsize"]:
                fail(f"{what} /{name}: a message longer than its msgsize")
            total += n
    return total
