"""The signals a process's timers deliver, and the handler its stand-in takes for those it caught.

A timer that fires in a stand-in delivers its signal there (engine/posixtimers.py,
engine/itimers.py). A signal the process ignored or blocked, its stand-in ignores or blocks too
(engine/kernel.py); one at its default action kills the stand-in as it would have killed the
process. One the process caught (its handler: /proc/PID/status SigCgt) would kill the stand-in,
which has no handler of the program's, so dump records which of the timers' signals were caught
(`caught`, image "timer_sig_caught") and the stand-in takes a handler that returns at once for
each (`take`): machine code of its own page, not the interpreter's, which become_exe unmaps
(engine/mappings.py); the interrupted call is restarted (SA_RESTART). The stand-in then catches
them as the process did.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

_SA_RESTORER, _SA_RESTART = 0x04000000, 0x10000000
# ret; then the restorer: mov eax, 15 (rt_sigreturn); syscall
_CODE = b"\xc3" + b"\xb8\x0f\x00\x00\x00\x0f\x05"
_pages: list = []   # (the handler's page, kept mapped for good)


def delivered(entry: dict) -> set[int]:
    """The signals the timers of process `entry` (an image process, or what dump has of it) deliver."""
    from engine import itimers
    return ({t["signo"] for t in entry.get("posix_timers") or () if t["notify"] != "none" and t.get("signo")}
            | {itimers.SIGNALS[t["which"]] for t in entry.get("itimers") or ()})


def caught(pid: int, signals: set[int]) -> int:
    """The mask (bit n-1 for signal n) of `signals` that `pid` catches (SigCgt)."""
    from engine import kernel
    got = kernel.proc_status(pid, {"SigCgt"})
    cgt = int(got["SigCgt"], 16) if "SigCgt" in got else 0
    return sum(1 << (s - 1) for s in signals if cgt >> (s - 1) & 1)


def take(mask: int) -> None:
    """Catch each signal of `mask` with a handler that returns at once (x86-64 machine code)."""
    if not mask:
        return
    from engine import kernel
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CODE)
    _pages.append(page)
    at = ctypes.addressof(ctypes.c_char.from_buffer(page))
    act = struct.pack("=QQQQ", at, _SA_RESTORER | _SA_RESTART, at + 1, 0)
    for sig in range(1, 65):
        if mask >> (sig - 1) & 1:
            kernel.syscall("rt_sigaction", ctypes.c_int(sig), act, None, ctypes.c_size_t(8))
