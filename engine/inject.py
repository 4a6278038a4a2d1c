"""System calls run inside another process (x86-64), for state only the process itself can read:
its parent-death signal (engine/pdeathsig.py), interval timers (engine/itimers.py), child
subreaper flag (engine/subreaper.py), its POSIX timers' time left (engine/posixtimers.py); no
/proc file shows them.

The process is seized (PTRACE_SEIZE) and interrupted (PTRACE_INTERRUPT: no signal, its parent sees
nothing), whether stopped (the dump's SIGSTOP: it goes back to its stop when detached), asleep in
a call or running. Its registers are saved; the call runs from the `syscall` just before its
instruction pointer when there is one (the call it waits in), else from one its code already
holds (the vdso's first): nothing of its code is written, which its other threads could run
meanwhile. Only where no such bytes are found is `syscall` written at an executable address of a
private mapping (its instruction pointer's, else the first one of /proc/PID/maps: a shared one
would write the file), and then only into a stopped or single-threaded process; its
registers are set to each call in turn with orig_rax -1 (no restart of the call it was
interrupted in is mixed in). What a call writes goes to the words at
its stack pointer (no code of its own runs until they are put back), or at the start of another
private writable mapping when that one is shared or not writable.
Each call runs between two system call stops (PTRACE_SYSCALL: no signal is made, its actions
stay), every signal blocked meanwhile (PTRACE_SETSIGMASK: none pending is taken); then its code,
stack words, registers and mask are put back: an interrupted restartable call is restarted as if
nothing happened (as CRIU's compel does). 32-bit code gets no call (its `syscall` takes i386
numbers).

No call is sent that a seccomp filter of the process would not let through (kill, trap, errno:
engine/seccomp_eval.py, evaluated with the call's real arguments), nor into a process in strict
seccomp, in an uninterruptible wait (D: a vfork parent's, which no interrupt ends), traced
already, or on another machine than x86-64: `calls` raises InjectError instead, before any call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import struct
from engine import procstat

_PTRACE_PEEKDATA, _PTRACE_POKEDATA = 2, 5
_PTRACE_GETREGS, _PTRACE_SETREGS, _PTRACE_DETACH, _PTRACE_SYSCALL = 12, 13, 17, 24
_O_TRACESYSGOOD, _SYSCALL_STOP = 1, 0x85   # (system call stops report SIGTRAP | 0x80)
_PTRACE_SEIZE, _PTRACE_INTERRUPT = 0x4206, 0x4207
_PTRACE_GETSIGMASK, _PTRACE_SETSIGMASK = 0x420A, 0x420B
_ALL_SIGNALS = (1 << 64) - 1
_WALL = 0x40000000
_EVENT_STOP = 128
# user_regs_struct (27 words): the places of the registers a call uses
_RAX, _RDX, _RSI, _RDI, _ORIG_RAX, _RIP, _RSP = 10, 12, 13, 14, 15, 16, 19
_R10, _R8, _R9 = 7, 9, 8
_CS, _USER_CS = 17, 0x33   # (a 64-bit code segment's selector; 32-bit code runs in 0x23)
_CODE = b"\x0f\x05"   # syscall
_SIGRTMIN = 32   # (signals from here on are queued, each one of its own)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long

SUPPORTED = os.uname().machine == "x86_64"


class InjectError(OSError):
    """A call that could not be run in the process (one line naming it)."""


def _pt(req: int, pid: int, addr=0, data=0) -> int:
    ctypes.set_errno(0)
    ret = _libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    e = ctypes.get_errno()
    if ret == -1 and e:
        raise InjectError(e, f"ptrace {req:#x} on process {pid}: {os.strerror(e)}")
    return ret


def _peek(pid: int, addr: int) -> int:
    return _pt(_PTRACE_PEEKDATA, pid, addr) & (1 << 64) - 1


def _poke(pid: int, addr: int, word: int) -> None:
    _pt(_PTRACE_POKEDATA, pid, addr, word)


def _places(pid: int, rip: int, rsp: int, n_words: int, stopped: bool) -> tuple[int, int, bool]:
    """(where the call runs: the `syscall` just before its instruction pointer (the call it waits
    in), else an address of a private executable mapping, its instruction pointer's or the start
    of the first one; `n_words` words of a private writable mapping: at its stack pointer, else
    the start of the first one; whether `syscall` must be written there). Words written to a
    shared mapping would reach its file, or another process: a stack pointer set into one (a page
    of a file the tree maps shared) got the call's words; and a page of code written to is the
    process's own copy for good (a libc page no longer shared: 4 kB more of its memory). Another
    mapping only for a `stopped` process: other threads of a running one may use it meanwhile.
    Not waiting in a call, it runs from a `syscall` its code already holds (`_existing`): code
    written to in a running process may be run by its other threads meanwhile (a JVM's threads,
    returning from their futex waits through the same libc page, ran our `syscall` and aborted)."""
    from engine import threads
    sp, size = rsp & ~7, max(8 * n_words, 8)
    at = scratch = first_x = first_w = before = None
    code: list[tuple[int, int, bool]] = []   # (executable mappings: start, end, the vdso's)
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if perms[2] == "x" and lo <= rip - 2 and rip + 6 <= hi:
                before = rip - 2   # (the `syscall` it waits in, when that is one: _run looks)
            if perms[2] == "x":
                code.append((lo, hi, line.rstrip().endswith("[vdso]")))
            if perms[2:4] == "xp" and hi - lo >= 8:
                if lo <= rip and rip + 8 <= hi:
                    at = rip
                elif first_x is None:
                    first_x = lo
            if perms[1] == "w" and perms[3] == "p" and hi - lo >= size:
                if lo <= sp and sp + size <= hi:
                    scratch = sp
                elif first_w is None:
                    first_w = lo
    at = first_x if at is None else at
    scratch = (first_w if n_words and stopped else None if n_words else sp) if scratch is None else scratch
    if at is None:
        raise InjectError(errno.EFAULT, f"process {pid} has no private executable mapping to run a call from")
    if scratch is None:
        raise InjectError(errno.EFAULT, f"process {pid} has no private writable mapping for a call's answer"
                                        f"{'' if stopped else ' at its stack pointer'}")
    try:
        if before is not None and _peek(pid, before) & 0xFFFF == int.from_bytes(_CODE, "little"):
            return before, scratch, False
    except InjectError:
        pass   # (not readable: looked for elsewhere)
    found = _existing(pid, code)
    if found is not None:
        return found, scratch, False
    if not stopped and threads.tids(pid):
        raise InjectError(errno.EFAULT, f"process {pid} runs several threads and its code holds no `syscall` "
                                        "to run a call from (writing one, its other threads could run it)")
    return at, scratch, True


def _existing(pid: int, code: list[tuple[int, int, bool]], limit: int = 1 << 20) -> int | None:
    """An address in `code` (executable mappings of `pid`, the vdso first: a few pages, whose
    fallbacks make calls) where the bytes of `syscall` are already, read through /proc/PID/mem
    (we trace it); any two such bytes decode as one from there on."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for lo, hi, _vdso in sorted(code, key=lambda c: not c[2]):
            try:
                data = os.pread(fd, min(hi - lo, limit), lo)
            except OSError:
                continue   # (a mapping the kernel will not read: vvar-like, or gone)
            at = data.find(_CODE)
            if at >= 0:
                return lo + at
    finally:
        os.close(fd)
    return None



def _wait_stop(pid: int, timeout: float = 10.0) -> int:
    """The status of `pid`'s next stop. InjectError when it ends instead, or does not stop within
    `timeout` seconds (a wait no interrupt ends, entered after we looked: it stays seized until we
    exit, then runs on). The SIGCHLDs that come meanwhile are taken here (no engine process
    handles SIGCHLD: a handler would miss them)."""
    import time
    deadline = time.monotonic() + timeout
    # Each stop of a tracee is told its tracer by a SIGCHLD: we sleep until that signal (blocked,
    # so one that comes between a look and the wait is kept), not in a spin or growing sleeps.
    # The tracee often needs our CPU to reach its stop (a seized stopped process runs to re-trap):
    # a spin kept it from it, and sleeps of 8-16 ms saw it late (~50 ms of a small dump under load).
    was = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGCHLD,))
    try:
        while True:
            got, status = os.waitpid(pid, _WALL | os.WNOHANG)
            if got:
                if not os.WIFSTOPPED(status):
                    raise InjectError(errno.ESRCH, f"process {pid} ended while a call ran in it")
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                raise InjectError(errno.ETIMEDOUT, f"process {pid} did not stop for a call to run in it")
            # (a short bound: another thread of ours, unblocked, may have taken the signal)
            signal.sigtimedwait((signal.SIGCHLD,), min(left, 0.005))
    finally:
        if signal.SIGCHLD not in was:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGCHLD,))


def _run_call(pid: int, at: int, held: list) -> tuple:
    """Let `pid` run the call at `at` (in system call stops: no signal is made, as an int3's
    SIGTRAP would unblock itself and reset its action); its registers as the call ends. A pending
    signal it stops for first is kept in held[0] (one: a second one is refused), not delivered."""
    entered = False
    _pt(_PTRACE_SYSCALL, pid)
    for _ in range(16):
        status = _wait_stop(pid)
        done = ctypes.create_string_buffer(27 * 8)
        _pt(_PTRACE_GETREGS, pid, 0, ctypes.addressof(done))
        after = struct.unpack("=27Q", done.raw)
        sig = os.WSTOPSIG(status)
        if sig == _SYSCALL_STOP and after[_RIP] == at + 2:
            if entered:
                return after
            entered = True
        elif entered or after[_RIP] != at or status >> 16 not in (0, _EVENT_STOP) or (
                status >> 16 == 0 and held[0] and (held[0] != sig or sig >= _SIGRTMIN)):
            raise InjectError(errno.EIO, f"process {pid} stopped elsewhere (signal {sig}) while a call ran in it")
        elif status >> 16 == 0:
            # (the same standard signal again, a timer's next tick: one, as the kernel merges them)
            held[0] = sig
        # (else a trap stop queued before: seizing a stopped process queues its group stop and
        # our interrupt)
        _pt(_PTRACE_SYSCALL, pid)
    raise InjectError(errno.EIO, f"process {pid} kept stopping before a call could run in it")


_NR_CLONE, _NR_VFORK, _NR_CLONE3, _CLONE_VFORK = 56, 58, 435, 0x4000


def in_vfork(pid: int) -> bool:
    """Whether `pid` waits in vfork(2) (or clone, clone3 with CLONE_VFORK) for its child to exec or
    exit: an uninterruptible wait (D) in which no call can be run in it, which may last (a child
    that neither execs nor exits). False when it cannot tell (x86-64 only: its syscall numbers)."""
    from engine import threads
    if not SUPPORTED or threads.task_state(str(pid)) != "D":
        return False
    try:
        with open(f"/proc/{pid}/syscall") as f:
            words = f.read().split()
        nr, arg = int(words[0]), int(words[1], 16)
        if nr == _NR_CLONE3:   # (its flags: struct clone_args's first field, in its memory)
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as m:
                m.seek(arg)
                arg = struct.unpack("=Q", m.read(8))[0]
    except (OSError, ValueError, IndexError, struct.error):
        return False
    return nr == _NR_VFORK or nr in (_NR_CLONE, _NR_CLONE3) and bool(arg & _CLONE_VFORK)


def _check_state(pid: int) -> bytes:
    """Refuse (InjectError) a process no call may be run in; else its state (b"S", b"R", b"T")."""
    from engine import kernel, threads
    if not SUPPORTED:
        raise InjectError(errno.ENOSYS, "running a call in another process is done on x86-64 only, "
                                        f"not {os.uname().machine}")
    state = threads.task_state(str(pid)).encode()
    try:
        if not state:
            raise OSError(errno.ESRCH, "gone")
        status = kernel.proc_status(pid, {"TracerPid", "Seccomp"})
    except OSError:
        raise InjectError(errno.ESRCH, f"process {pid} is gone") from None
    traced = status.get("TracerPid", "0").strip() != "0"
    if state not in (b"S", b"R", b"T") or traced:
        why = "in an uninterruptible wait" if state == b"D" else "traced by another" if traced else "gone"
        todo = ("; dump again once it has left it (a vfork parent waits there until its child execs or exits)"
                if state == b"D" else "; detach its tracer first" if traced else "")
        raise InjectError(errno.EBUSY, f"process {pid} is {why}: no call can be run in it{todo}")
    if status.get("Seccomp", "0").strip() == "1":
        raise InjectError(errno.EPERM, f"process {pid} is in strict seccomp mode: a call run in it would kill it")
    return state


def _filters(pid: int) -> list:
    """`pid`'s seccomp filters ([] without any), read by engine/seccomp.py (its own seize: a
    stopped process stays stopped)."""
    from engine import seccomp
    if seccomp.mode(pid) != seccomp.MODE_FILTER:
        return []
    try:
        return seccomp.read(pid) or []
    except seccomp.SeccompError as e:
        raise InjectError(e.errno or errno.EPERM, e.strerror) from None


def calls(pid: int, wanted: list[tuple], filters: list | None = None, skip_denied: bool = False) -> list:
    """Run each system call of `wanted` ((nr, args, out_words)) in process `pid` in turn, in one
    seize (we may trace it: root, or CAP_SYS_PTRACE); an argument None stands for the address of
    `out_words` words of scratch memory (zeroed) the call may write. [(its answer, those words as
    it left them)]. `filters`: its seccomp filters as engine/seccomp.py reads them (read here when
    None); InjectError, before any call, when one would not let a call through (`skip_denied`:
    that call is not sent, None in its place). The process is left as it was (stopped or
    running)."""
    state = _check_state(pid)
    filters = _filters(pid) if filters is None else filters
    waiting = _waits_in(pid)
    _pt(_PTRACE_SEIZE, pid, 0, _O_TRACESYSGOOD)
    held = [0]   # (a signal that came meanwhile: given back as we detach)
    try:
        _pt(_PTRACE_INTERRUPT, pid)
        _wait_stop(pid)
        # Every signal blocked while the calls run (compel's way): a pending one would stop it on
        # its way to our `syscall`, and of two the second was lost (its handler never ran). Its
        # mask is put back as the kernel shows it (a sigsuspend's own, which it sets again).
        mask = _sigmask(pid)
        _sigmask(pid, _ALL_SIGNALS)
        try:
            return _run(pid, wanted, filters, held, skip_denied, state == b"T")
        finally:
            _sigmask(pid, mask)
    finally:
        _libc.ptrace(_PTRACE_DETACH, pid, None, ctypes.c_void_p(held[0]))
        if state == b"T":
            _stopped_again(pid)
        else:
            _settle(pid, waiting)


def _sigmask(pid: int, new: int | None = None) -> int:
    """The blocked signals of `pid` (held in a ptrace stop), or set them to `new` (SIGKILL and
    SIGSTOP stay unblocked)."""
    buf = ctypes.c_uint64(0 if new is None else new)
    _pt(_PTRACE_GETSIGMASK if new is None else _PTRACE_SETSIGMASK, pid, 8, ctypes.addressof(buf))
    return buf.value


def call(pid: int, nr: int, args: tuple = (), out_words: int = 0, filters: list | None = None) -> tuple[int, list[int]]:
    """One call of `calls`: (its answer, its `out_words` scratch words)."""
    return calls(pid, [(nr, args, out_words)], filters)[0]


def status_at_rest(pid: int, keys) -> dict[str, str]:
    """Lines `keys` of /proc/`pid`/status read while we hold it in a ptrace stop (left as it was):
    a wait that changes what they show (sigtimedwait blocks less while it waits) has ended."""
    from engine import kernel
    waiting = _waits_in(pid)
    stopped = waiting is None and procstat.state(pid) == b"T"
    _pt(_PTRACE_SEIZE, pid)
    try:
        _pt(_PTRACE_INTERRUPT, pid)
        _wait_stop(pid)
        return kernel.proc_status(pid, keys)
    finally:
        _libc.ptrace(_PTRACE_DETACH, pid, None, None)
        if stopped:
            _stopped_again(pid)
        else:
            _settle(pid, waiting)


def _waits_in(pid: int) -> str | None:
    """The number of the call a running (not stopped) `pid` waits in, else None."""
    try:
        if procstat.fields(pid)[procstat.STATE] in (b"T", b"t"):
            return None
        with open(f"/proc/{pid}/syscall") as f:
            word = (f.read().split() or [""])[0]
    except OSError:
        return None
    return word if word.isdigit() else None


def _stopped_again(pid: int, timeout: float = 1.0) -> None:
    """Wait (a while at most) until `pid`, stopped when seized and now let go, is back in its stop:
    it runs a moment to get there from its trace stop, and meanwhile /proc/PID/syscall says
    "running" (what a reader after us read of it then: its stack pointer, lost ~1 time in 10)."""
    import time
    end, pause = time.monotonic() + timeout, 0.00005
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/syscall", "rb") as f:
                if not f.read().startswith(b"running") and procstat.state(pid) == b"T":
                    return
        except OSError:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.002)


def _settle(pid: int, waiting: str | None, timeout: float = 1.0) -> None:
    """Wait (a while at most) until `pid`, let go, waits in call `waiting` again: until then it
    runs with what the interrupted wait had set aside (sigsuspend's mask: its own, not the wait's,
    restored on the way out), which a stop in between (the dump's) would see."""
    import time
    end = time.monotonic() + timeout
    while waiting is not None and time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                if (f.read().split() or [""])[0] == waiting:
                    return
        except OSError:
            return
        time.sleep(0.002)


# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND; -ERESTART_RESTARTBLOCK (restart_syscall: 219)
_RESTART = {(1 << 64) - 512, (1 << 64) - 513, (1 << 64) - 514}
_RESTART_BLOCK, _NR_RESTART_SYSCALL = (1 << 64) - 516, 219


def _restarted(regs: list[int]) -> list[int]:
    """The registers to give back to a process that was not stopped (`_run`): a call the interrupt
    ended, to be restarted, is made to run
    again from its `syscall` instruction (as CRIU's compel does): once our call ran, the kernel no
    longer restarts it (no signal is delivered on the way out), and its -ERESTART* answer would
    reach the program."""
    out = list(regs)
    if regs[_ORIG_RAX] >> 63 == 0 and (regs[_RAX] in _RESTART or regs[_RAX] == _RESTART_BLOCK):
        out[_RAX] = regs[_ORIG_RAX] if regs[_RAX] in _RESTART else _NR_RESTART_SYSCALL
        out[_RIP] -= 2
        out[_ORIG_RAX] = (1 << 64) - 1
    return out


def _denied(pid: int, wanted: list[tuple], filters: list, scratch: int, at: int, skip: bool) -> list[bool]:
    """For each call of `wanted`, whether a filter would not let it through, as the process would
    make it (its arguments, the scratch address, the address after our `syscall`); InjectError
    for one unless `skip`."""
    from engine import seccomp_eval
    out = []
    for nr, args, _ in wanted:
        real = [scratch if a is None else a for a in args]
        out.append(bool(filters) and not seccomp_eval.call_allowed(filters, nr, real, at + 2))
        if out[-1] and not skip:
            raise InjectError(errno.EPERM, f"process {pid} has seccomp filters that do not let it make system call "
                                           f"{nr}: it is not sent")
    return out


def _run(pid: int, wanted: list[tuple], filters: list, held: list, skip: bool, stopped: bool) -> list:
    """calls() in a process we hold in a ptrace stop; a signal it was about to take meanwhile goes
    into held[0]."""
    got = ctypes.create_string_buffer(27 * 8)
    _pt(_PTRACE_GETREGS, pid, 0, ctypes.addressof(got))
    regs = list(struct.unpack("=27Q", got.raw))
    if regs[_CS] != _USER_CS:
        # (its `syscall` would take i386 numbers, 157 and 36 being sched_getscheduler and sync,
        # and its filters see another arch than the evaluator's: answers of other calls, a kill)
        raise InjectError(errno.EOPNOTSUPP, f"process {pid} runs 32-bit code: no call is run in it")
    # A stopped process (the dump's SIGSTOP) goes back into its stop on the signal path, where the
    # kernel itself finishes the call it was in as it would have: made again, or EINTR when a
    # handler runs (pause(), sigsuspend, a read without SA_RESTART: the program sees its signal):
    # its registers are given back as they were. Only one that was not stopped leaves on no
    # signal path, so its restart is ours to make (`_restarted`).
    saved = ctypes.create_string_buffer(struct.pack("=27Q", *(regs if stopped else _restarted(regs))))
    n_words = max((w for _, _, w in wanted), default=0)
    at, scratch, write = _places(pid, regs[_RIP], regs[_RSP], n_words, stopped)
    denied = _denied(pid, wanted, filters, scratch, at, skip)
    old_code = _peek(pid, at) if write else None
    old_scratch = [_peek(pid, scratch + 8 * i) for i in range(n_words)]
    out = []
    try:
        if write:
            _poke(pid, at, int.from_bytes(_CODE, "little") | old_code & ~0xFFFF)
        for (nr, args, out_words), no in zip(wanted, denied):
            if no:
                out.append(None)
                continue
            for i in range(out_words):
                _poke(pid, scratch + 8 * i, 0)
            new = list(regs)
            new[_RAX], new[_ORIG_RAX], new[_RIP] = nr, (1 << 64) - 1, at
            for place, a in zip((_RDI, _RSI, _RDX, _R10, _R8, _R9), args):
                new[place] = (scratch if a is None else a) & (1 << 64) - 1
            buf = ctypes.create_string_buffer(struct.pack("=27Q", *new))
            _pt(_PTRACE_SETREGS, pid, 0, ctypes.addressof(buf))
            after = _run_call(pid, at, held)
            answer = after[_RAX] - (1 << 64) if after[_RAX] >> 63 else after[_RAX]
            out.append((answer, [_peek(pid, scratch + 8 * i) for i in range(out_words)]))
        return out
    finally:
        if write:
            _poke(pid, at, old_code)
        for i, w in enumerate(old_scratch):
            _poke(pid, scratch + 8 * i, w)
        _pt(_PTRACE_SETREGS, pid, 0, ctypes.addressof(saved))
