"""Bytes waiting in a pty, kept exactly: read at dump, written back so the terminal holds the same.

Two queues of a pty can hold bytes nobody read yet (engine/fds/pty.py):
- output, on the master: what the program on the slave wrote (after the output processing,
  OPOST). Written back into the slave with OPOST off, the master holds exactly those bytes (the
  master's own line discipline is raw: the pty driver's, which no ioctl reaches).
- input, on the slave: what was written on the master, already through the input processing of
  the line discipline (echoed, translated, signals sent). Written back into the master with echo,
  signals, flow control and translation off and every special character disabled, so nothing
  happens twice; in canonical mode each read gives one line (ending in '\\n', VEOL, VEOL2, or a
  partial line VEOF pushed), and the write-back ends each chunk so that reads give it again:
  nothing after '\\n', VEOL or VEOL2, which stay enabled, and VEOF after a partial one. A byte of a
  chunk that would end it early (a literal the program typed with VLNEXT) goes with VLNEXT before it.
A line being typed (not complete in canonical mode) is not counted by FIONREAD and not in the
image: dump reads it (ICANON off for a moment) only to write it back after the lines, so the tree
it leaves running keeps it. Output stopped (tcflow, or VSTOP with IXON) is started for the
write-back and stopped again the same way; a restored pty's output runs. A master in packet mode
(TIOCPKT) with output waiting is refused (its reads carry a status byte).

CRIU (criu/tty.c) writes both queues into the peer as they are, through the line discipline again.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import fcntl
import os
import select
import struct
import termios
import time

from engine.fds import FdError

TIOCGPTPEER = 0x5441
TIOCGPKT = 0x80045438
# The slave's line discipline holds N_TTY_BUF_SIZE bytes (one less in use); input beyond that
# waits unprocessed in the tty buffer, which a write-back could not put back as it was.
MAX_IN = 4095
MAX_OUT = 1 << 16   # the master's line discipline and the tty buffer behind it: less than this
MAX_CHUNKS = MAX_IN + 1
SETTLE = 2.0        # seconds the kernel's tty work may take to move written bytes into a queue

_IFLAG, _OFLAG, _LFLAG, _CC = 0, 1, 3, 6
_IN_OFF = (termios.ICRNL | termios.INLCR | termios.IGNCR | getattr(termios, "IUCLC", 0) | termios.ISTRIP
           | termios.IXON | termios.IXOFF | termios.PARMRK)
_LOCAL_OFF = (termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL | termios.ECHOCTL | termios.ECHOPRT
              | termios.ECHOKE | termios.ISIG | termios.IEXTEN)


def inq(fd: int) -> int:
    """Bytes waiting to be read on fd `fd` of a terminal (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def peer(master: int) -> int:
    """A new non-blocking fd on the slave of master `master` (TIOCGPTPEER), no controlling terminal."""
    return fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)


def packet_mode(master: int) -> bool:
    """Is master `master` in packet mode (TIOCPKT)?"""
    return struct.unpack("i", fcntl.ioctl(master, TIOCGPKT, b"\0\0\0\0"))[0] != 0


def read_out(master: int) -> bytes:
    """The output waiting on master `master` (a copy of the tree's, whose flags are the tree's: read
    only what FIONREAD shows, which never blocks), and what the tty work moves in behind it."""
    out = b""
    while True:
        n = inq(master)
        if n <= 0:
            # (reading made room: the kernel's work moves bytes waiting behind in soon after)
            if not out or not select.select([master], [], [], 0.02)[0] or inq(master) <= 0:
                return out
            continue
        got = os.read(master, n)
        if not got:
            return out
        out += got
        if len(out) > MAX_OUT:
            return out


def read_in(master: int, slave: int, attrs: list) -> tuple[list[bytes], bytes]:
    """The input waiting on `slave` (non-blocking) of pty `master` whose termios is `attrs`: in
    canonical mode one chunk per line as reads give them (an empty one: a VEOF alone), else one
    chunk; and the line being typed after them (canonical mode, when lines were read: read with
    ICANON off for a moment, which loses no line since none is left; its termios is the caller's
    to give back: put_back)."""
    canonical = bool(attrs[_LFLAG] & termios.ICANON)
    chunks: list[bytes] = []
    total = 0
    # (canonical mode: until no line is left, a VEOF alone at the end too, which FIONREAD does not
    # count; otherwise as FIONREAD says: a read with VMIN 0 gives 0 bytes rather than EAGAIN)
    while (canonical or inq(slave) > 0) and len(chunks) < MAX_CHUNKS and total <= MAX_IN:
        try:
            got = os.read(slave, MAX_IN + 1)
        except BlockingIOError:
            break
        if not got and not canonical:
            break
        chunks.append(got)
        total += len(got)
    if not canonical:
        return ([b"".join(chunks)] if chunks else []), b""
    if not chunks:
        return [], b""   # (a line being typed alone stays where it is, untouched)
    t = list(attrs[:6]) + [list(attrs[_CC])]
    t[_LFLAG] &= ~termios.ICANON
    t[_CC][termios.VMIN], t[_CC][termios.VTIME] = 1, 0
    _set(master, t)
    typing = b""
    while inq(slave) > 0 and len(typing) <= MAX_IN:
        try:
            typing += os.read(slave, MAX_IN + 1)
        except BlockingIOError:
            break
    return chunks, typing


def _set(master: int, attrs: list) -> None:
    termios.tcsetattr(master, termios.TCSANOW, attrs[:6] + [list(attrs[6])])


def _wait(fd: int, n: int, what: str) -> None:
    """Until `n` bytes wait on fd `fd` (the tty work moved what was written into its queue)."""
    end = time.monotonic() + SETTLE
    while inq(fd) < n:
        if time.monotonic() > end:
            raise FdError(errno.EIO, f"{what}: {inq(fd)} of {n} bytes arrived in the terminal's queue")
        time.sleep(0.002)


def _write_all(fd: int, data: bytes, what: str) -> None:
    """`data` written into fd `fd` (non-blocking or not: the tree's master may be either), waiting
    while the tty buffer is full for the tty work to move it on into the line discipline."""
    done = 0
    end = time.monotonic() + SETTLE
    while done < len(data):
        try:
            done += os.write(fd, data[done:])
            end = time.monotonic() + SETTLE
        except BlockingIOError:
            # (polled: the tty work that makes room wakes no writer up)
            if time.monotonic() > end:
                raise FdError(errno.EAGAIN, f"{what}: the terminal takes {done} of {len(data)} bytes") from None
            time.sleep(0.002)


def _stopped(master: int, slave: int, attrs: list) -> str | None:
    """How the pty's output is stopped: None (it is not: the slave takes output, the master's queue
    having room), "tco" (tcflow TCOOFF: TCOON restarts it, which this tries) or "ixon" (VSTOP typed
    with IXON on: VSTART restarts it). Raises FdError when neither could."""
    if select.select([], [slave], [], 0)[1]:
        return None
    termios.tcflow(slave, termios.TCOON)   # (restarts only what TCOOFF stopped)
    if select.select([], [slave], [], 0)[1]:
        termios.tcflow(slave, termios.TCOOFF)
        return "tco"
    if attrs[_IFLAG] & termios.IXON and attrs[_CC][termios.VSTART] and attrs[_CC][termios.VSTOP]:
        return "ixon"
    raise FdError(errno.EAGAIN, "its output is stopped and nothing restarts it")


def _flow(master: int, slave: int, attrs: list, kind: str, on: bool, what: str) -> None:
    """Output of the pty restarted (`on`) or stopped again the way `kind` (_stopped) says. (Started,
    the echoes it held come out: the same bytes, earlier.)"""
    if kind == "tco":
        termios.tcflow(slave, termios.TCOON if on else termios.TCOOFF)
        return
    os.write(master, bytes([attrs[_CC][termios.VSTART if on else termios.VSTOP]]))
    end = time.monotonic() + SETTLE   # (until the tty work handled it)
    while bool(select.select([], [slave], [], 0)[1]) != on:
        if time.monotonic() > end:
            raise FdError(errno.EIO, f"{what}: its output stays {'stopped' if on else 'started'}")
        time.sleep(0.002)


def _free(taken: set[int]) -> int:
    """A byte value none of `taken` uses (a special character for the write-back alone)."""
    return next(c for c in range(1, 256) if c not in taken and c != 10)


def _input_bytes(attrs: list, chunks: list[bytes], typing: bytes) -> tuple[list, bytes, bytes]:
    """The termios for writing `chunks` back in canonical mode, the bytes to write, and those of
    the line being typed after them."""
    cc = [0] * len(attrs[_CC])
    cc[termios.VMIN], cc[termios.VTIME] = attrs[_CC][termios.VMIN], attrs[_CC][termios.VTIME]
    eols = {attrs[_CC][termios.VEOL]} - {0}
    if attrs[_LFLAG] & termios.IEXTEN:
        eols |= {attrs[_CC][termios.VEOL2]} - {0}
    eols = sorted(eols)
    for slot, c in zip((termios.VEOL, termios.VEOL2), eols):
        cc[slot] = c
    eof = _free(set(eols))
    lnext = _free(set(eols) | {eof})
    cc[termios.VEOF], cc[termios.VLNEXT] = eof, lnext
    special = {10, eof, lnext, *eols}

    def literal(body: bytes) -> bytes:
        return b"".join(bytes([lnext, c]) if c in special else bytes([c]) for c in body)

    data = bytearray()
    for chunk in chunks:
        ends = bool(chunk) and (chunk[-1] == 10 or chunk[-1] in eols)
        data += literal(chunk[:-1]) + chunk[-1:] if ends else literal(chunk) + bytes([eof])
    t = list(attrs[:6]) + [cc]
    t[_IFLAG] &= ~_IN_OFF
    t[_LFLAG] = (t[_LFLAG] & ~_LOCAL_OFF) | termios.IEXTEN   # (IEXTEN for VLNEXT and VEOL2)
    return t, bytes(data), literal(typing)


def put_back(master: int, slave: int, attrs: list, out: bytes, chunks: list[bytes], what: str,
             typing: bytes = b"") -> None:
    """Make pty `master` (whose slave fd `slave` is non-blocking, and whose termios is `attrs`, cc as
    integers) hold output `out` on the master and input `chunks` on the slave exactly, then the
    line being typed `typing` (read_in's); its termios is `attrs` again after. Raises FdError."""
    if not (out or chunks or typing):
        return
    try:
        stopped = _stopped(master, slave, attrs)
    except FdError as e:
        _set(master, attrs)
        raise FdError(e.errno, f"{what}: {e.strerror}") from None
    try:
        if stopped:
            _flow(master, slave, attrs, stopped, True, what)
        if out:
            t = list(attrs[:6]) + [list(attrs[_CC])]
            t[_OFLAG] &= ~termios.OPOST
            _set(master, t)
            _write_all(slave, out, f"{what}: output")
        if chunks or typing:
            if attrs[_LFLAG] & termios.ICANON:
                t, data, tail = _input_bytes(attrs, chunks, typing)
            else:
                t = list(attrs[:6]) + [list(attrs[_CC])]
                t[_IFLAG] &= ~_IN_OFF
                t[_LFLAG] &= ~_LOCAL_OFF
                data, tail = b"".join(chunks), b""
            _set(master, t)
            _write_all(master, data, f"{what}: input")
            # (the termios changes back only once the line discipline took every byte)
            _wait(slave, sum(len(c) for c in chunks), f"{what}: input")
            if chunks and not chunks[-1]:
                time.sleep(0.01)   # (a VEOF alone, last: written with the line before it, not counted)
            if tail:
                _write_all(master, tail, f"{what}: the line being typed")
                _settled(slave, sum(len(c) for c in chunks), f"{what}: the line being typed")
    finally:
        _set(master, attrs)
        if stopped:
            # (turning IXON off for the input restarted it too: stopped again only now)
            _flow(master, slave, attrs, stopped, False, what)


def _settled(slave: int, n: int, what: str) -> None:
    """The tty work ran for what was written last (a line being typed, which FIONREAD does not
    count): with no line waiting, a read of the slave runs that work before it finds none
    (n_tty_read); with lines waiting (a read would take one) a moment's wait has to do."""
    if n:
        time.sleep(0.05)
        return
    try:
        os.read(slave, 1)
    except BlockingIOError:
        return
    raise FdError(errno.EIO, f"{what}: it made a line of its own")


def encode(out: bytes, chunks: list[bytes]) -> dict:
    """The pty object's fields for what waits in it (none when nothing does)."""
    fields = {}
    if out:
        fields["out"] = binascii.b2a_base64(out, newline=False).decode()
    if chunks:
        fields["in"] = [binascii.b2a_base64(c, newline=False).decode() for c in chunks]
    return fields


def decode(obj: dict) -> tuple[bytes, list[bytes]]:
    """What waits in the pty of image object `obj` (validated): output, input chunks."""
    return binascii.a2b_base64(obj.get("out", "")), [binascii.a2b_base64(c) for c in obj.get("in", ())]


def too_much(out: bytes, chunks: list[bytes]) -> str | None:
    """Why these bytes cannot be kept (more than the terminal's queues hold as they were), or None."""
    n = sum(len(c) for c in chunks)
    if n > MAX_IN:
        return f"{n} bytes of input wait (more than its line discipline's {MAX_IN}: the rest was not processed yet)"
    if len(out) > MAX_OUT:
        return f"{len(out)} bytes of output wait (more than {MAX_OUT})"
    return None
