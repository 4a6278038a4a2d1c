"""Messages with file descriptors between the restorer and its helper processes.

One message is a pickled Python object sent in one SOCK_SEQPACKET datagram,
with any number of fds attached (SCM_RIGHTS). Seqpacket keeps message
boundaries, so a message and its fds always arrive together.
"""

from __future__ import annotations

try:   # the C pickler pickle.py re-exports; pickle.py's own Python (and its re) costs ~4.6 M instructions
    import _pickle as pickle
except ImportError:   # an interpreter without it
    import pickle
import errno
from array import array

# The C module: socket.py wraps its constants in enum classes (AddressFamily, MsgFlag, ...), about
# 7 ms of every command's start-up; a channel needs only socketpair, sendmsg and recvmsg.
import _socket

_MAX_MSG = 1 << 22
MAX_FDS = 250  # fds one message carries at most (the kernel's SCM_MAX_FD is 253)
_CMSG_SPACE = _socket.CMSG_LEN(MAX_FDS * array("i").itemsize)


class ChannelClosed(EOFError):
    """The peer closed the channel (usually: the peer died)."""


class Channel:
    """One end of a seqpacket socket pair carrying (object, fds) messages."""

    def __init__(self, sock):
        self.sock = sock   # a _socket.socket (or socket.socket: anything with sendmsg/recvmsg)
        self._buf = None   # recv's buffer, made at the first recv (_buffer)

    @classmethod
    def of_fd(cls, fd: int) -> "Channel":
        """The channel end whose socket is fd (the Channel owns it from now on)."""
        return cls(_socket.socket(fileno=fd))

    @classmethod
    def pair(cls) -> tuple["Channel", "Channel"]:
        """Two connected ends (inheritable across fork, closed on exec)."""
        a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def fileno(self) -> int:
        """The socket's fd (to poll on, or to pass to a child)."""
        return self.sock.fileno()

    def send(self, obj, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send `obj` with `fds` attached (fds stay open on this side)."""
        data = pickle.dumps(obj)
        if len(data) > _MAX_MSG:
            raise ValueError(f"message too large ({len(data)} bytes)")
        fds = list(fds)
        if len(fds) > MAX_FDS:
            raise ValueError(f"too many fds in one message ({len(fds)})")
        self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array("i", fds))])

    def recv(self) -> tuple[object, list[int]]:
        """Receive one message: (obj, fds). The caller owns the fds (close-on-exec: a program restore
        runs gets only the fds it is given, never a detached mount that keeps a superblock alive)."""
        buf = self._buffer() if self._buf is None else self._buf
        n, anc, flags, _ = self.sock.recvmsg_into([buf], _CMSG_SPACE, _socket.MSG_CMSG_CLOEXEC)
        data = buf[:n]
        fds = []
        for level, kind, raw in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                got = array("i")
                got.frombytes(raw[:len(raw) - len(raw) % got.itemsize])
                fds.extend(got)
        if not data:
            for fd in fds:
                _close(fd)
            raise ChannelClosed("peer closed the channel")
        if flags & _socket.MSG_CTRUNC:
            for fd in fds:
                _close(fd)
            raise OSError("file descriptors were truncated in transit (fd limit?)")
        return pickle.loads(data), fds

    def _buffer(self):
        """This end's receive buffer: _MAX_MSG bytes of private anonymous memory, whose pages the
        kernel provides as messages first reach them. recvmsg(_MAX_MSG) instead had malloc map,
        shrink and unmap 4 MiB for every message (3 syscalls and a page fault each; a small
        restore receives ~20). Private: a forked child's writes never reach the parent's copy."""
        import mmap   # (loaded by dump and restore already: engine.threads, engine.mappings)
        buf = mmap.mmap(-1, _MAX_MSG, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:   # (where THP is "always", a first message would fault in, zero and keep a 2 MiB page)
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        except OSError:
            pass   # (EINVAL: a kernel without THP)
        self._buf = buf
        return buf

    def ready(self) -> bool:
        """Whether a message (or the peer's end) is waiting: recv() would not block."""
        try:
            self.sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def call(self, obj, fds=()) -> tuple[object, list[int]]:
        """Send a request and wait for its reply; a reply ("error", text) raises OSError."""
        self.send(obj, fds)
        try:
            reply, rfds = self.recv()
        except TimeoutError:   # (a socket given a timeout: socket.timeout names no errno nor wait)
            raise OSError(errno.ETIMEDOUT, f"no answer in {self.sock.gettimeout():g} s") from None
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise_error(reply, rfds)
        return reply, rfds

    def close(self) -> None:
        """Close this end (the other side's recv then raises ChannelClosed)."""
        self.sock.close()
        if self._buf is not None:
            self._buf.close()
            self._buf = None


def error_reply(e: OSError) -> tuple:
    """("error", text, errno) for an OSError a helper reports: the errno crosses the process
    boundary (a caller tells "this kernel lacks it" from "not there"), the text without "[Errno N]"."""
    if not e.strerror:
        return ("error", str(e), e.errno)
    # (str(e) would carry "[Errno N]", which the raised OSError adds again)
    text = e.strerror if e.filename is None else f"{e.strerror}: {e.filename!r}"
    if e.filename2 is not None:
        text += f" -> {e.filename2!r}"
    return ("error", text, e.errno)


def raise_error(msg: tuple, fds=()) -> None:
    """Raise the OSError an ("error", text[, errno]) message reports (closing its fds)."""
    for fd in fds:
        _close(fd)
    err = msg[2] if len(msg) > 2 and isinstance(msg[2], int) else None
    raise OSError(err, msg[1]) if err else OSError(msg[1])


def _close(fd: int) -> None:
    import os
    try:
        os.close(fd)
    except OSError:
        pass


def _fork(fn, args) -> tuple[int, Channel]:
    """Fork a child running ``fn(*args, chan)``; return (pid, our end). An exception in the
    child is sent as ("error", text); the child dies with us (SIGKILL)."""
    import os
    import _signal as signal
    from engine import kernel
    from engine.forkrun import format_tb
    parent, child = Channel.pair()
    me = kernel.pidfd_open(os.getpid())
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            kernel.die_with_parent(me, signal.SIGKILL)  # never outlive the caller
            parent.close()
            fn(*args, child)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            code = 1
            try:
                child.send(error_reply(e) if isinstance(e, OSError) else ("error", format_tb(e, limit=3)))
            except Exception:
                pass
        os._exit(code)
    child.close()
    os.close(me)
    return pid, parent


def next_message(chan: Channel) -> tuple[object, list[int]]:
    """The helper's next message; its error or death as OSError."""
    try:
        msg, fds = chan.recv()
    except ChannelClosed:
        raise OSError("helper process died") from None
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise_error(msg, fds)
    return msg, fds


def fork_stream(fn, *args):
    """Run ``fn(*args, chan)`` in a forked child; yield each (obj, fds) it sends until it sends "done".

    For work that must change the process for good (setns, unshare, chroot)
    and hand back file descriptors. An exception in the child, or its death,
    comes back as OSError; the child is always reaped.
    """
    import os
    pid, chan = _fork(fn, args)
    try:
        while True:
            msg, fds = next_message(chan)
            if msg == "done":
                return
            yield msg, fds
    finally:
        chan.close()
        os.waitpid(pid, 0)


class Pending:
    """A helper started by spawn(), working while we go on: recv() its messages as they come,
    or wait() for its final ("ok", obj) answer."""

    def __init__(self, pid: int, chan: Channel):
        self.pid, self.chan = pid, chan
        self.reaped = False

    def recv(self) -> tuple[object, list[int]]:
        """Its next message; its error or death as OSError."""
        return next_message(self.chan)

    def reap(self) -> None:
        """Close our end and wait for it to exit (once)."""
        import os
        if not self.reaped:
            self.reaped = True
            self.chan.close()
            os.waitpid(self.pid, 0)

    def wait(self) -> tuple[object, list[int]]:
        """Its ("ok", obj) answer as (obj, fds); its error or death as OSError. Reaps it."""
        try:
            msg, fds = self.recv()
            if not (isinstance(msg, tuple) and msg and msg[0] == "ok"):
                for fd in fds:
                    _close(fd)
                raise OSError(f"helper process answered {msg!r}")
            return msg[1], fds
        finally:
            self.reap()


def spawn(fn, *args) -> Pending:
    """Start ``fn(*args, chan)`` in a forked child that answers with one message ("ok", obj) + fds."""
    return Pending(*_fork(fn, args))


def call_in_child(fn, *args) -> tuple[object, list[int]]:
    """Run ``fn(*args, chan)`` in a forked child that answers with one message ("ok", obj) + fds."""
    return spawn(fn, *args).wait()
