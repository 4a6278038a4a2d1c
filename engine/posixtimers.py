"""A process's POSIX timers (timer_create(2)): recorded at dump, made again by its stand-in.

A timer lives in the process's signal state, armed or not, with its id, clock, and what it
delivers (a signal and its value, to the process or one of its threads, or nothing); glibc makes
one for timer_create users (a daemon's periodic tick, vim's redraw timeout). /proc/PID/timers
shows the id, signal, value, notify and clock; only the process reads its time left, interval
and overrun (timer_gettime, timer_getoverrun: made in the stopped process, engine/inject.py).
Restore makes each in the stand-in under the same id (`make`: prctl PR_TIMER_CREATE_RESTORE_IDS
on Linux >= 6.13, else ids come in order from 0 in a process that never made one: fillers are
made up to each id and deleted, as CRIU does) and arms it with the time it had left.

A timer that notifies a thread other than the leader (SIGEV_THREAD_ID: glibc's SIGEV_THREAD
helper thread, blocked in sigwaitinfo on its SIGTIMER, 32; a program's per-thread watchdog) is
recorded by that thread's place among the process's threads (`thread`, 1.. for threads[0..]).
A stand-in makes its threads last, under new tids, so such timers are made after them (`split`):
by its last steps in machine code (`steps`: the maker of each thread writes its new tid where
the timer's struct sigevent wants it) or in Python (`make` with the tids the threads told). A
timer on a thread's own CPU clock (haproxy's watchdog, by pthread_getcpuclockid: a clock id made
from the tid, `clock_thread`) is made on the restored thread's, whose id its maker writes into
that timer_create's argument likewise; one on the process's own CPU clock named by its pid is
made on pid 0's, the caller's own. Without the prctl every timer from the first such id on comes
after the threads too, fillers between, so that ids still come in order. What the restored
thread does with the signal is not restored (no thread runs its program again): it gets it with
the mask it had (engine/threads.py: glibc's helper blocks every signal, so a tick stays pending
on it instead of killing the process at SIGTIMER's default action), or the handler its process
caught it with (engine/timersigs.py).

Refused before the stop (`check`): a timer on another process's CPU clock, or on another
thread's of a kind other than the scheduler's (made by hand: the stand-in makes only that kind
from a new tid), one that notifies a thread that exited (no call makes one that notifies no
thread), a notify or clock the kernel reports otherwise; one on the CPU clock of the thread that
made it (CLOCK_THREAD_CPUTIME_ID, shown as -2 whichever thread made it) in a process of several
threads: nothing tells which thread that was (a single-threaded process's is its leader's, or
one of a thread gone, which no longer runs: made disarmed on the leader's, as CRIU makes every
timer on the restorer's clock; the kernel shows such a timer disarmed, and only timer_settime
tells them apart: ESRCH on the gone thread's, not on the leader's, which a program must look for).

The overrun count is recorded, not made again: timer_getoverrun answers the expiries missed
before the last signal of the timer was taken, a count the kernel keeps and no call sets; only
missing that many expiries for real, with the signal held, would make it again.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_NR_CREATE, _NR_SETTIME, _NR_GETTIME, _NR_GETOVERRUN, _NR_DELETE = 222, 223, 224, 225, 226
_NR_PRCTL = 157
_PR_TIMER_CREATE_RESTORE_IDS, _ON, _OFF = 77, 1, 0   # (include/uapi/linux/prctl.h, Linux 6.13)
_SIGEV = {"signal": 0, "none": 1, "thread": 4}        # SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID
MAX_TIMERS = 1 << 16          # of one process (each counts against RLIMIT_SIGPENDING)
MAX_ID = (1 << 31) - 1        # ids are ints the kernel hands out from 0
MAX_ALL = 1 << 18             # of the tree (each ~350 bytes of the restoring host's kernel memory)
MAX_FILLERS = 1 << 16         # ids skipped without the prctl: restore makes (and deletes) that many at most
MAX_NS = (1 << 63) - 1
# Clock ids a timer may have: REALTIME, MONOTONIC, PROCESS_/THREAD_CPUTIME_ID, BOOTTIME, the two
# _ALARMs and TAI; the caller's own CPU clocks as glibc encodes them (pid 0: -8..-1, not the
# invalid kind 3)
CLOCKS = frozenset({0, 1, 2, 3, 7, 8, 9, 11} | {c for c in range(-8, 0) if c & 3 != 3})


class TimerError(OSError):
    """A POSIX timer that is not restored, or not read (a one-line reason)."""


def parse(pid: int) -> list[dict]:
    """`pid`'s timers as /proc/PID/timers shows them, by id: {id, signo, sigval, notify ("signal",
    "thread", "none", or what the kernel wrote), tid (the thread a "thread" one notifies), clock}
    ([] on a kernel without that file, or a process gone)."""
    try:
        with open(f"/proc/{pid}/timers") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    out: list[dict] = []
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == "ID":
            out.append({"id": int(value)})
        elif key == "signal" and out:
            signo, _, sigval = value.partition("/")
            out[-1].update(signo=int(signo), sigval=int(sigval, 16))
        elif key == "notify" and out:
            how, _, target = value.partition("/")
            kind, _, num = target.partition(".")
            out[-1]["notify"] = "thread" if how == "signal" and kind == "tid" else how
            if kind == "tid":
                out[-1]["tid"] = int(num)
        elif key == "ClockID" and out:
            out[-1]["clock"] = int(value)
    return sorted(out, key=lambda t: t["id"])


THREAD_CLOCK = -2   # (the calling thread's CPU clock, CPUCLOCK_SCHED, as pthread_getcpuclockid makes one)


def _named_clock(clock) -> tuple[int, int] | None:
    """(pid or tid, the low 3 bits: per-thread 4, kind 0..2) of a CPU clock id named by a number."""
    if type(clock) is not int or clock >= -8 or clock & 3 == 3:
        return None
    return ~(clock >> 3), clock & 7


def clock_owner(pid: int, clock) -> int | None:
    """The host tid of the thread of `pid` (or `pid` itself) whose number names CPU clock `clock`
    (the number as the process sees it, in its own pid namespace: /proc/PID/task/TID/status's last
    NSpid); None when no thread of it has that number, or the clock names none."""
    named = _named_clock(clock)
    if named is None:
        return None
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                ns = next(line for line in f if line.startswith(b"NSpid:")).split()[-1]
        except (OSError, StopIteration):
            continue
        if int(ns) == named[0]:
            return int(tid)
    return None


# The calling thread's own CPU clocks (pid 0, per-thread: CLOCK_THREAD_CPUTIME_ID is -2 once made)
OWN_THREAD_CLOCKS = frozenset({-4, -3, -2})


def _why_not(pid: int, t: dict, tids: list[int]) -> str | None:
    if t.get("notify") not in _SIGEV:
        return f"notifies by {t.get('notify')!r}, which is not restored"
    if t["notify"] == "thread" and t.get("tid") != pid and t.get("tid") not in tids:
        return (f"signals thread {t.get('tid')}, which is no thread of it any more (it exited): no call makes "
                "a timer for a thread that is gone")
    if t.get("clock") in OWN_THREAD_CLOCKS and tids:
        # (the kernel binds it to the thread that made it, which neither /proc/PID/timers nor a
        # call tells: its stand-in's leader would make it on its own clock)
        return (f"runs on the CPU clock of the thread that made it (clock {t['clock']}: "
                f"CLOCK_THREAD_CPUTIME_ID), which nothing tells among its {len(tids) + 1} threads: not restored; "
                "pthread_getcpuclockid names a thread's clock, which is")
    if t.get("clock") in CLOCKS:
        return None
    named = _named_clock(t.get("clock"))
    if named is None:
        return f"runs on clock {t.get('clock')}, which is not restored"
    number, bits = named
    who = clock_owner(pid, t["clock"])   # (numbered in its pid namespace)
    if not bits & 4 and who != pid:
        return f"runs on the CPU clock of process {number} (clock {t['clock']}), not its own: not restored"
    if bits & 4 and who is None:
        return f"runs on the CPU clock of thread {number} (clock {t['clock']}), no thread of it: not restored"
    if bits & 4 and who != pid and bits != 6:
        # (another thread's is made from its new tid by the stand-in's last steps, CPUCLOCK_SCHED's
        # only: the kind pthread_getcpuclockid gives; a PROF or VIRT one is made by hand)
        return f"runs on thread {number}'s CPU clock of kind {bits & 3} (not the scheduler's): not restored"
    return None


def check(pids) -> None:
    """Refuse (TimerError) the first process of `pids` with a POSIX timer that is not restored, or
    more than MAX_TIMERS, or past MAX_ALL in all."""
    from engine import inject, threads
    total = 0
    for pid in pids:
        timers = parse(pid)
        total += len(timers)
        if len(timers) > MAX_TIMERS:
            raise TimerError(errno.EOPNOTSUPP, f"process {pid} has {len(timers)} POSIX timers (at most {MAX_TIMERS} "
                                               "are restored)")
        if total > MAX_ALL:
            raise TimerError(errno.EOPNOTSUPP, f"the tree has more than {MAX_ALL} POSIX timers (process {pid} the "
                                               "last counted): at most that many are restored in all")
        if timers and not inject.SUPPORTED:
            raise TimerError(errno.EOPNOTSUPP, f"process {pid} has POSIX timers, whose time left only the process "
                                               f"reads (by calls made in it on x86-64 only, not {os.uname().machine}): "
                                               "not restored; stop its timers (or the program) before the dump")
        tids = threads.tids(pid) if any(t.get("notify") == "thread" or t.get("clock") in OWN_THREAD_CLOCKS
                                        for t in timers) else []
        for t in timers:
            why = _why_not(pid, t, tids)
            if why:
                raise TimerError(errno.EOPNOTSUPP, f"process {pid}: its POSIX timer {t['id']} {why}; stop that "
                                                   "timer (or the program) before the dump")


def calls(timers: list[dict]) -> list[tuple]:
    """The calls (engine/inject.py) that read `timers` in their process: timer_gettime (struct
    itimerspec: interval {s, ns}, value {s, ns}) and timer_getoverrun of each."""
    out = []
    for t in timers:
        out += [(_NR_GETTIME, (t["id"], None), 4), (_NR_GETOVERRUN, (t["id"],), 0)]
    return out


def _ns(s: int, ns: int) -> int:
    return min(s * 1_000_000_000 + ns, MAX_NS)


def record(pid: int, timers: list[dict], got) -> list[dict]:
    """The image entries of `timers` (parsed from `pid`'s /proc/PID/timers) from `got`, the answers
    of their `calls` made in the stopped process or the OSError that made them fail; TimerError
    when a call was not answered (seccomp filters, a process no call may be run in)."""
    if isinstance(got, OSError):
        raise TimerError(got.errno or errno.EIO, f"process {pid}: its POSIX timers cannot be read ({got.strerror or got})"
                                                 ": not restored; stop its timers (or the program) before the dump")
    out = []
    for i, t in enumerate(timers):
        spec, over = got[2 * i], got[2 * i + 1]
        if spec is None or over is None or spec[0] != 0 or over[0] < 0:
            raise TimerError(errno.EPERM, f"process {pid}: its POSIX timer {t['id']} cannot be read "
                                          "(timer_gettime denied or failed in it): not restored")
        words = spec[1]
        e = {"id": t["id"], "clock": t["clock"], "notify": t["notify"], "value": _ns(words[2], words[3]),
             "interval": _ns(words[0], words[1]), "overrun": min(over[0], MAX_ID)}
        named = _named_clock(t["clock"])
        if named:
            # (its own process's, or a thread's of it, by number: pid 0 names the caller's own)
            e["clock"] = named[1] | -8
            who = clock_owner(pid, t["clock"])
            if who is None:
                raise TimerError(errno.ESRCH, f"process {pid}: its POSIX timer {t['id']} runs on the CPU clock of "
                                              "a thread that exited while the tree was read: dump again")
            if who != pid:
                e["clock_thread"] = -who   # (`number_threads` places it; `check` let only a thread's by)
        if t["notify"] != "none":
            e.update(signo=t["signo"], sigval=t["sigval"])
        if t["notify"] == "thread":
            e["thread"] = 0 if t["tid"] == pid else -t["tid"]   # (another thread: `number_threads` places it)
        out.append(e)
    return out


def number_threads(pid: int, entries: list[dict], tids: list[int]) -> None:
    """Turn the tid `record` left in each of `entries` (process `pid`'s) that notifies a thread
    other than the leader, or runs on its CPU clock, into its place among the recorded threads,
    whose tids are `tids` (threads[i] is thread i + 1); TimerError when that thread is not among
    them (it exited)."""
    for e in entries:
        for key in ("thread", "clock_thread"):
            if e.get(key, 0) < 0:
                tid = -e[key]
                if tid not in tids:
                    raise TimerError(errno.ESRCH, f"process {pid}: its POSIX timer {e['id']} names thread {tid}, "
                                                  "which exited while the tree was read: dump again")
                e[key] = tids.index(tid) + 1


# --- in the stand-in ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys(nr: int, *args) -> int:
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"POSIX timer: system call {nr}: {errno.errorcode.get(e, e)}")
    return ret


def _sigevent(e: dict | None, tid: int) -> bytes:
    """The struct sigevent of entry `e` (None: a filler notifying nothing): sigval, signo, notify,
    then the thread id at _TID_AT, in 64 bytes."""
    how = _SIGEV[e["notify"]] if e else _SIGEV["none"]
    sigval, signo = (e.get("sigval", 0), e.get("signo", 0)) if e else (0, 0)
    return struct.pack("=Qiii", sigval, signo, how, tid).ljust(64, b"\0")


_TID_AT = 16   # (sigev_notify_thread_id's offset in struct sigevent)


def _create(e: dict | None, tid: int, want: int, clock: int = 1) -> int:
    """timer_create on `clock` for entry `e` (None: a filler notifying nothing); `want`: the id
    asked for when ids are restored (else ignored by the kernel). The id made."""
    sev_buf = ctypes.create_string_buffer(_sigevent(e, tid), 64)
    out = ctypes.c_int(want)
    _sys(_NR_CREATE, ctypes.c_long(clock), sev_buf, ctypes.byref(out))
    return out.value


def _restore_ids(on: bool) -> bool:
    return _libc.syscall(ctypes.c_long(_NR_PRCTL), ctypes.c_long(_PR_TIMER_CREATE_RESTORE_IDS),
                         ctypes.c_long(_ON if on else _OFF), ctypes.c_long(0), ctypes.c_long(0),
                         ctypes.c_long(0)) == 0


def ids_restorable() -> bool:
    """Whether this kernel makes a timer under the id asked for (PR_TIMER_CREATE_RESTORE_IDS)."""
    return _restore_ids(False)


def split(entries: list[dict], restore_ids: bool) -> tuple[list[dict], list[dict]]:
    """(the timers of `entries` a stand-in makes before its threads, those it makes after them):
    after, those notifying a thread other than the leader, whose tid it learns as it makes that
    thread; without `restore_ids` (ids come in order) every timer from the first such id on."""
    late = [e for e in entries if _of_thread(e)]
    if not late:
        return list(entries), []
    if restore_ids:
        return [e for e in entries if not _of_thread(e)], late
    first = min(e["id"] for e in late)
    return [e for e in entries if e["id"] < first], [e for e in entries if e["id"] >= first]


def _of_thread(e: dict) -> bool:
    """Whether timer entry `e` names a thread other than the leader (notified, or its CPU clock)."""
    return bool(e.get("thread", 0) or e.get("clock_thread", 0))


def _clock(e: dict, tids: list[int]) -> int:
    """The clock id to make timer entry `e` on: thread i's CPU clock named by its tid tids[i]."""
    return ~tids[e["clock_thread"]] << 3 | 6 if e.get("clock_thread") else e["clock"]


def make(entries: list[dict], tids: list[int]) -> None:
    """In a stand-in: make each timer of `entries` (image "posix_timers") under its id, notifying
    thread tids[e["thread"]] for a "thread" one (tids[0]: our leader's, as we see it), then arm
    each with its time left and interval (OSError naming what failed). Without the prctl ids come
    in order: `entries` are the ones `split` gives, in a stand-in whose timers so far are the
    ones `split` put before them."""
    by_id = sorted(entries, key=lambda e: e["id"])
    tid = lambda e: tids[e.get("thread", 0)]   # noqa: E731
    if _restore_ids(True):
        try:
            for e in by_id:
                if _create(e, tid(e), e["id"], _clock(e, tids)) != e["id"]:
                    raise OSError(errno.EBUSY, f"POSIX timer {e['id']}: made under another id")
        finally:
            _restore_ids(False)
    else:
        fillers = []
        for e in by_id:
            # (ids come in order: what comes before the wanted one is a filler, deleted after)
            while len(fillers) <= MAX_FILLERS:
                got = _create(e, tid(e), 0, _clock(e, tids))
                if got == e["id"]:
                    break
                fillers.append(got)
                if got > e["id"]:
                    raise OSError(errno.EBUSY, f"POSIX timer {e['id']}: this kernel handed out id {got} instead "
                                               "(Linux >= 6.13 makes timers under their ids)")
            else:
                raise OSError(errno.EBUSY, f"POSIX timer {e['id']}: more than {MAX_FILLERS} ids to skip to make it")
        for f in fillers:
            _sys(_NR_DELETE, ctypes.c_long(f))
    for e in by_id:
        if e["value"]:
            _sys(_NR_SETTIME, ctypes.c_long(e["id"]), ctypes.c_long(0), ctypes.create_string_buffer(_itimerspec(e), 32),
                 ctypes.c_void_p(0))


def _itimerspec(e: dict) -> bytes:
    return struct.pack("=4q", *divmod(e["interval"], 1_000_000_000), *divmod(e["value"], 1_000_000_000))


def steps(late: list[dict], made: list[dict], nthreads: int, keep: list,
          restore_ids: bool) -> tuple[list[tuple], list[int], list[tuple]]:
    """The last steps (lastword.ENTRY tuples, engine/mappings.py `become_exe`) that make the timers
    `late` (`split`'s second list) once the `nthreads` threads are made; with, per thread, the
    address (0: none) of the [address, kind] pairs where its maker writes its new tid (kind 0:
    into the struct sigevent of each timer notifying it) or CPU clock id (kind 1: into the clock
    argument of each timer_create on it), engine/threads.py `steps`; and the relocations (pairs
    array, index, step index among ours) of those clock places, which point into the program
    once it has its place. The leader's tid is our pid. Under their ids with the prctl
    (`restore_ids`), else in id order after those of `made` (made before: the kernel's next id is
    the one after the last of them), fillers notifying nothing between, deleted after; then each
    armed with its time left. `keep` holds the buffers the steps point at."""
    places: list[list] = [[] for _ in range(nthreads)]
    relocs: list[tuple] = []
    if not late:
        return [], [0] * nthreads, relocs
    pid = os.getpid()
    out = [(_NR_PRCTL, _PR_TIMER_CREATE_RESTORE_IDS, _ON, 0, 0, 0, 0, 1, 0)] if restore_ids else []
    filler_sev, scratch = ctypes.create_string_buffer(_sigevent(None, 0), 64), ctypes.c_int(0)
    keep += [filler_sev, scratch]
    next_id = max((e["id"] for e in made), default=-1) + 1
    fillers: list[int] = []
    for e in sorted(late, key=lambda e: e["id"]):
        while not restore_ids and next_id < e["id"]:
            if len(fillers) >= MAX_FILLERS:
                raise OSError(errno.EBUSY, f"POSIX timer {e['id']}: more than {MAX_FILLERS} ids to skip to make it")
            out.append((_NR_CREATE, 1, ctypes.addressof(filler_sev), ctypes.addressof(scratch), 0, 0, 0, 1, 0))
            fillers.append(next_id)
            next_id += 1
        sev = ctypes.create_string_buffer(_sigevent(e, pid), 64)
        want = ctypes.c_int(e["id"])
        keep += [sev, want]
        if e.get("thread", 0):
            places[e["thread"] - 1].append((ctypes.addressof(sev) + _TID_AT, 0))
        if e.get("clock_thread", 0):
            places[e["clock_thread"] - 1].append((len(out), 1))   # (a step: relocated)
        out.append((_NR_CREATE, e["clock"], ctypes.addressof(sev), ctypes.addressof(want), 0, 0, 0, 1, 0))
        next_id = e["id"] + 1
    if restore_ids:
        out.append((_NR_PRCTL, _PR_TIMER_CREATE_RESTORE_IDS, _OFF, 0, 0, 0, 0, 1, 0))
    out += [(_NR_DELETE, f, 0, 0, 0, 0, 0, 1, 0) for f in fillers]
    for e in late:
        if e["value"]:
            spec = ctypes.create_string_buffer(_itimerspec(e), 32)
            keep.append(spec)
            out.append((_NR_SETTIME, e["id"], 0, ctypes.addressof(spec), 0, 0, 0, 1, 0))
    fans = []
    for mine in places:
        if not mine:
            fans.append(0)
            continue
        arr = (ctypes.c_uint64 * (2 * len(mine) + 2))(*(w for pair in mine for w in pair))
        keep.append(arr)
        relocs += [(arr, 2 * k, where) for k, (where, kind) in enumerate(mine) if kind == 1]
        fans.append(ctypes.addressof(arr))
    return out, fans, relocs
