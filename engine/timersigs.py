"""The signals a process's timers deliver, and the handler its stand-in takes for those it caught.

A timer that fires in a stand-in delivers its signal there (engine/posixtimers.py,
engine/itimers.py). A signal the process ignored or blocked, its stand-in ignores or blocks too
(engine/kernel.py); one at its default action kills the stand-in as it would have killed the
process. One the process caught (its handler: /proc/PID/status SigCgt) would kill the stand-in,
which has no handler of the program's, so dump records which of the timers' signals were caught
(`caught`, image "timer_sig_caught") and the stand-in takes a handler that returns at once for
each (`take`): machine code of its own page, not the interpreter's, which become_exe unmaps
(engine/mappings.py); the interrupted call is restarted (SA_RESTART). The stand-in then catches
them as the process did. A process stopped inside such a handler blocks its signal until the
handler returns: dump keeps the mask outside the handler (`mask_outside_handler`, from the
handler's signal frame), not that moment's, with which the stand-in would never take a tick.
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


def caught(pid: int, signals: set[int], status: dict[str, str] | None = None) -> int:
    """The mask (bit n-1 for signal n) of `signals` that `pid` catches (SigCgt); from `status`
    (kernel.read_process_status's, of the stopped process) when given."""
    if status is None:
        from engine import kernel
        status = kernel.proc_status(pid, {"SigCgt"})
    cgt = int(status["SigCgt"], 16) if "SigCgt" in status else 0
    return sum(1 << (s - 1) for s in signals if cgt >> (s - 1) & 1)


# x86-64 rt_sigframe: the handler's return address (the C library's restorer), then struct ucontext:
# flags (UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS), link (0), stack (24 bytes),
# sigcontext (256), then the mask the handler's end puts back
_FLAGS_AT, _LINK_AT, _MASK_AT = 8, 16, 8 + 40 + 256
# the restorers: glibc's `mov $15, %rax; syscall`, musl's (and ours) `mov $15, %eax; syscall`
_RESTORERS = (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05", b"\xb8\x0f\x00\x00\x00\x0f\x05")
_SCAN = 1 << 20


def _word(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at:at + 8], "little")


def mask_outside_handler(pid: int | str, blocked: int, signals: int) -> int | None:
    """The blocked mask stopped process `pid` (or thread, "PID/task/TID"), blocking `blocked` now,
    had before it entered a handler of one of `signals` (a mask) it is still inside, read from
    that handler's signal frame on its stack (the outermost one: a handler interrupted by
    another); None when no such frame is found. A process stopped inside its handler blocks that
    signal until the handler returns: that moment's mask would block its timer's ticks in its
    stand-in for good. (x86-64 frames; a frame is one whose mask the handler's entry only added
    to, one of `signals` among what it added.)"""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            sp = int(f.read().split()[-2], 16) & ~7
        end = _mapping_end(pid, sp)
        if end is None:
            return None
        found = None
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(sp)
            stack = mem.read(min(end - sp, _SCAN))
            for off in range(0, len(stack) - _MASK_AT - 8, 8):
                ret, outside = _word(stack, off), _word(stack, off + _MASK_AT)
                if (outside & ~blocked or not (blocked & ~outside & signals) or _word(stack, off + _FLAGS_AT) & ~7
                        or _word(stack, off + _LINK_AT) or not 4096 <= ret < 1 << 47):
                    continue
                try:
                    mem.seek(ret)
                    code = mem.read(9)
                except OSError:
                    continue
                if any(code.startswith(r) for r in _RESTORERS):
                    found = outside
    except (OSError, ValueError, IndexError):
        return None
    return found


def _mapping_end(pid: int, addr: int) -> int | None:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return hi
    return None


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
