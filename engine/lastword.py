"""A stand-in's last word: how the steps it takes once detached went (its executable, ids and
capabilities, then its threads: engine/mappings.py `become_exe`, or the same in Python), told to
the restore.

Those steps come after its channel's last answer, some in machine code once the interpreter is
unmapped, and each can fail (a file the kernel will not take as an executable, ids its user
namespace does not map): a stand-in that went on after a failure would hold the restorer's
identity, or the interpreter as its executable, in a restore that reported success. So the
stand-in writes one word on a socket the restore reads before it commits (a non-root stand-in:
its channel; the root one: the lifeline, after the commit) and closes it:

    OK                      16 zero bytes: every step took
    [index, answer]         two 64-bit words, index from 1: that step of the program failed, and
      + the step            its 72 bytes (become_exe's ENTRY: syscall number, 6 arguments, check,
                            expected answer): the kernel's answer (-errno, or the id it kept)
    [2^64-1, errno] + text  a step in Python failed (OSError text, UTF-8)

A failed stand-in then waits (it never runs on) and the restore fails, killing the tree.
"""

from __future__ import annotations

import errno
import os
import struct

OK = bytes(16)
PYTHON = (1 << 64) - 1
ENTRY = struct.Struct("=QQQQQQQQQ")   # nr, a0..a5, check (0 none, 1 -errno, 2 == expect), expect

# How a step of the program is named (x86-64 syscall numbers; prctl by its option), from its args.
_NAMES = {3: lambda a: "close", 11: lambda a: "munmap (of the interpreter's executable)",
          56: lambda a: "clone (making a thread)",
          116: lambda a: f"setgroups ({a[0]} groups)", 117: lambda a: f"setresuid({a[0]}, {a[1]}, {a[2]})",
          119: lambda a: f"setresgid({a[0]}, {a[1]}, {a[2]})", 122: lambda a: "setfsuid", 123: lambda a: "setfsgid",
          126: lambda a: "capset", 157: lambda a: _PRCTL.get(a[0], lambda a: f"prctl({a[0]})")(a),
          14: lambda a: "rt_sigprocmask (a thread's own signal mask, or its own)",
          222: lambda a: "timer_create (a POSIX timer made once its threads are)",
          223: lambda a: f"timer_settime (arming POSIX timer {a[0]})",
          226: lambda a: f"timer_delete({a[0]}) (a filler)",
          302: lambda a: f"prlimit64 (its RLIMIT_{_LATE_LIMITS.get(a[1], a[1])}, once its threads are made)",
          317: lambda a: "seccomp (installing its filters)"}
_LATE_LIMITS = {6: "NPROC", 2: "DATA", 9: "AS"}   # (engine/threads.py _LATE: the limits taken last)
_PRCTL = {4: lambda a: f"prctl(PR_SET_DUMPABLE, {a[1]})", 8: lambda a: f"prctl(PR_SET_KEEPCAPS, {a[1]})",
          15: lambda a: "prctl(PR_SET_NAME) (a thread's name, or its own)",
          35: lambda a: "prctl(PR_SET_MM_MAP) making its executable",
          77: lambda a: f"prctl(PR_TIMER_CREATE_RESTORE_IDS, {a[1]})",
          47: lambda a: f"prctl(PR_CAP_AMBIENT_RAISE, {a[2]})"}

def failed(e: OSError) -> bytes:
    """The word of a Python step that raised `e`."""
    return struct.pack("=QQ", PYTHON, e.errno or errno.EIO) + str(e.strerror or e).encode(errors="replace")


def tell(fd: int, word: bytes) -> None:
    """Write `word` on `fd` and close it (the reader's end of file: nothing more comes)."""
    try:
        os.write(fd, word)
    finally:
        os.close(fd)


def hear(sock) -> bytes:
    """What a stand-in wrote on socket `sock` (a _socket.socket): a whole word, or what came before
    its end closed (not waiting for the end once the word is whole: a copy of it held elsewhere
    would keep it open)."""
    out = b""
    while not _whole(out):
        data = sock.recv(4096)
        if not data:
            break
        out += data
    return out


def _whole(word: bytes) -> bool:
    if len(word) < 16:
        return False
    index = struct.unpack("=Q", word[:8])[0]
    return word[:16] == OK or (index != PYTHON and len(word) >= 16 + ENTRY.size) or (index == PYTHON and len(word) > 16)


def explain(word: bytes) -> tuple[int, str] | None:
    """None when `word` says every step took; else (errno, one line naming the step that failed)."""
    if word == OK:
        return None
    if len(word) < 16:
        return errno.EIO, "it ended before it told how its last steps went (its executable, ids, capabilities)"
    index, answer = struct.unpack("=QQ", word[:16])
    if index == PYTHON:
        return answer or errno.EIO, word[16:].decode(errors="replace")
    if len(word) < 16 + ENTRY.size:
        return errno.EIO, f"step {index} of its last ones failed"
    nr, *args, check, expect = ENTRY.unpack(word[16:16 + ENTRY.size])
    name = _NAMES.get(nr, lambda a: f"syscall {nr}")(args)
    if check == 2:   # setfsuid/setfsgid answer the id they keep: asked again, the wrong one
        return errno.EPERM, f"{name}({expect}) did not take: the id stayed {answer}"
    err = (-answer) & ((1 << 64) - 1) if answer >> 63 else errno.EIO
    return err, f"{name}: {os.strerror(err)}"
