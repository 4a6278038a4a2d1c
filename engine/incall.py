"""System calls made by another process, stopped under ptrace: what only a process reads of itself.

No /proc file shows a process's parent-death signal or its interval timers; the process itself
reads them (prctl, getitimer). `calls` has the stopped process make such calls: under ptrace, at
its own `syscall` instruction (the one it sleeps in), a scratch area below its stack's red zone
for what they write, its registers and that area put back after, and the call it was in finished
by the kernel as it would have been (made again, or failed with EINTR for a handler). Nothing is
made (None) in a process that is not asleep in a system call (or stopped), has seccomp on (a
filter may kill it for the call), or is traced already, and on machines other than x86_64.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PTRACE_PEEKDATA, _PTRACE_POKEDATA, _PTRACE_GETREGS, _PTRACE_SETREGS = 2, 5, 12, 13
_PTRACE_CONT, _PTRACE_SYSCALL, _PTRACE_DETACH, _PTRACE_SEIZE, _PTRACE_INTERRUPT = 7, 24, 17, 0x4206, 0x4207
_EVENT_STOP = 128   # PTRACE_EVENT_STOP: an interrupt's stop, or a group stop, under seize
_O_TRACESYSGOOD = 1
_WALL = 0x40000000
_SCRATCH = 64   # (bytes a call may write)
_USER_CS = 0x33   # (a 64-bit process; a 32-bit one's calls go through int 0x80)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class _Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
        "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _call(req: int, pid: int, addr=None, data=None) -> int:
    ctypes.set_errno(0)
    ret = _libc.ptrace(req, pid, addr, data)
    if ret == -1 and ctypes.get_errno():
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace {req:#x}: {os.strerror(e)}")
    return ret


def supported() -> bool:
    """Whether `calls` can make calls in another process on this machine."""
    return os.uname().machine == "x86_64"


def calls(pid: int, wanted: list[tuple]) -> list[tuple[int, bytes]] | None:
    """Make each call of `wanted` ((nr, args(scratch address) -> up to 6 arguments)) in `pid`, in
    turn: [(its return value, the scratch area's bytes after it)]; None when they cannot be made."""
    from engine import kernel
    if not supported():
        return None
    try:
        if kernel.proc_status(pid, {"Seccomp"}).get("Seccomp", "0").strip() != "0":
            return None
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] not in (b"S", b"R", b"T"):
                return None   # (D: an uninterruptible wait, a vfork parent's, which no interrupt ends)
        _call(_PTRACE_SEIZE, pid, None, ctypes.c_void_p(_O_TRACESYSGOOD))
    except OSError:
        return None   # (gone, traced by another, or no right to)
    pending = [0]
    try:
        _call(_PTRACE_INTERRUPT, pid)
        _wait_event_stop(pid, pending)
        return _in_stop(pid, pending, wanted)
    except OSError:
        return None
    finally:
        _libc.ptrace(_PTRACE_DETACH, pid, None, ctypes.c_void_p(pending[0]))   # (a stopped one stops again)


def _wait(pid: int, timeout: float = 10.0) -> int:
    """The status of `pid`'s next stop; OSError when it ends instead, or does not stop within
    `timeout` seconds (a wait no interrupt ends, entered after we looked: it stays seized until we
    exit, then runs on)."""
    import time
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        got, status = os.waitpid(pid, _WALL | os.WNOHANG)
        if got:
            if not os.WIFSTOPPED(status):
                raise OSError(3, f"process {pid} ended")
            return status
        if time.monotonic() > deadline:
            raise OSError(62, f"process {pid} did not stop")
        # (a stop comes within microseconds: yield first, then sleep longer and longer)
        tries += 1
        if tries < 200:
            os.sched_yield()
        else:
            time.sleep(min(0.0005 * 2 ** (tries // 50), 0.05))


def _wait_event_stop(pid: int, pending: list) -> None:
    """Wait for the stop an interrupt asked for (in the kernel's signal path: a group stop under
    seize is one too); a signal whose delivery stops it first is kept in `pending[0]`, delivered
    at the detach."""
    while True:
        status = _wait(pid)
        if status >> 16 == _EVENT_STOP:
            return
        pending[0] = os.WSTOPSIG(status)
        _call(_PTRACE_CONT, pid)


def _in_stop(pid: int, pending: list, wanted: list[tuple]) -> list[tuple[int, bytes]] | None:
    """The calls `wanted` made by `pid` (seized, in an interrupt stop), and back in such a stop with
    its registers and scratch area put back: resumed from there, the kernel makes the call it was
    in again or not exactly as it would have (and a signal's handler sees EINTR where it would)."""
    saved = _Regs()
    _call(_PTRACE_GETREGS, pid, None, ctypes.byref(saved))
    if saved.cs != _USER_CS or _signed(saved.orig_rax) < 0:
        return None   # (not in a system call: no instruction of its own to make ours with)
    insn = _call(_PTRACE_PEEKDATA, pid, ctypes.c_void_p(saved.rip - 2)) & 0xFFFF
    if insn != 0x050F:   # (syscall)
        return None
    slot = (saved.rsp - 1024) & ~7   # (below the red zone: nothing of its own lives there)
    words = range(slot, slot + _SCRATCH, 8)
    old = [_call(_PTRACE_PEEKDATA, pid, ctypes.c_void_p(w)) for w in words]
    out = []
    try:
        for nr, args in wanted:
            for w in words:
                _call(_PTRACE_POKEDATA, pid, ctypes.c_void_p(w), None)
            regs = _Regs.from_buffer_copy(saved)
            # (orig_rax -1: leaving this stop, the kernel restarts nothing before our call)
            regs.rip, regs.rax, regs.orig_rax = saved.rip - 2, nr, (1 << 64) - 1
            for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args(slot)):
                setattr(regs, name, value & (1 << 64) - 1)
            _call(_PTRACE_SETREGS, pid, None, ctypes.byref(regs))
            ret = _make_call(pid, pending)
            out.append((ret, b"".join((_call(_PTRACE_PEEKDATA, pid, ctypes.c_void_p(w)) & (1 << 64) - 1)
                                      .to_bytes(8, "little") for w in words)))
            # (from the call's exit stop, the next starts where it began: the same instruction)
    finally:
        for w, v in zip(words, old):
            _libc.ptrace(_PTRACE_POKEDATA, pid, ctypes.c_void_p(w), ctypes.c_void_p(v & (1 << 64) - 1))
        # Back into the signal path before its registers are put back: only there does the kernel
        # finish an interrupted call (restart it, or fail it with EINTR for a handler).
        _call(_PTRACE_INTERRUPT, pid)
        _call(_PTRACE_CONT, pid)
        _wait_event_stop(pid, pending)
        _call(_PTRACE_SETREGS, pid, None, ctypes.byref(saved))
    return out


def _make_call(pid: int, pending: list) -> int:
    """Run the call set up in `pid`'s registers to its exit stop; its return value."""
    for _ in range(2):   # (the call's entry stop, then its exit stop)
        _call(_PTRACE_SYSCALL, pid)
        while True:
            status = _wait(pid)
            if os.WSTOPSIG(status) == signal.SIGTRAP | 0x80:
                break
            if status >> 16 == 0:
                pending[0] = os.WSTOPSIG(status)   # (a signal on the way: delivered at the detach)
            _call(_PTRACE_SYSCALL, pid)
    done = _Regs()
    _call(_PTRACE_GETREGS, pid, None, ctypes.byref(done))
    return _signed(done.rax)
