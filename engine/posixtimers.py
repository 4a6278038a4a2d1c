"""A process's POSIX timers (timer_create(2)): recorded at dump, made again by its stand-in.

A timer lives in the process's signal state, armed or not, with its id, clock, and what it
delivers (a signal and its value, to the process or its leader thread, or nothing); glibc makes
one for timer_create users (a daemon's periodic tick, vim's redraw timeout). /proc/PID/timers
shows the id, signal, value, notify and clock; only the process reads its time left, interval
and overrun (timer_gettime, timer_getoverrun: made in the stopped process, engine/inject.py).
Restore makes each in the stand-in under the same id (`make`: prctl PR_TIMER_CREATE_RESTORE_IDS
on Linux >= 6.13, else ids come in order from 0 in a process that never made one: fillers are
made up to each id and deleted, as CRIU does) and arms it with the time it had left.

Refused before the stop (`check`): a timer on a CPU clock named by a pid (another process's, or
its own by number: restore changes pids), one that notifies a thread other than the leader (a glibc SIGEV_THREAD helper's:
a stand-in's threads are made after its timers, under other tids), a notify the kernel reports
otherwise. The overrun count is recorded, not made again (no call sets it).
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


def _why_not(pid: int, t: dict) -> str | None:
    if t.get("notify") not in _SIGEV:
        return f"notifies by {t.get('notify')!r}, which is not restored"
    if t["notify"] == "thread" and t.get("tid") != pid:
        return (f"signals thread {t.get('tid')}, not the leader (a glibc SIGEV_THREAD helper's, or a thread's "
                "own): restore makes a stand-in's threads after its timers")
    if t.get("clock") not in CLOCKS:
        return f"runs on clock {t.get('clock')} (a CPU clock named by a pid, which restore changes): not restored"
    return None


def check(pids) -> None:
    """Refuse (TimerError) the first process of `pids` with a POSIX timer that is not restored, or
    more than MAX_TIMERS, or past MAX_ALL in all."""
    from engine import inject
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
        for t in timers:
            why = _why_not(pid, t)
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
        if t["notify"] != "none":
            e.update(signo=t["signo"], sigval=t["sigval"])
        if t["notify"] == "thread":
            e["thread"] = 0   # (the leader: `check` refused any other)
        out.append(e)
    return out


# --- in the stand-in ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys(nr: int, *args) -> int:
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"POSIX timer: system call {nr}: {errno.errorcode.get(e, e)}")
    return ret


def _create(e: dict | None, tid: int, want: int) -> int:
    """timer_create for entry `e` (None: a filler notifying nothing); `want`: the id asked for
    when ids are restored (else ignored by the kernel). The id made."""
    how = _SIGEV[e["notify"]] if e else _SIGEV["none"]
    sev = struct.pack("=Qiii", e.get("sigval", 0) if e else 0, e.get("signo", 0) if e else 0, how, tid)
    sev_buf = ctypes.create_string_buffer(sev.ljust(64, b"\0"), 64)
    out = ctypes.c_int(want)
    _sys(_NR_CREATE, ctypes.c_long(e["clock"] if e else 1), sev_buf, ctypes.byref(out))
    return out.value


def _restore_ids(on: bool) -> bool:
    return _libc.syscall(ctypes.c_long(_NR_PRCTL), ctypes.c_long(_PR_TIMER_CREATE_RESTORE_IDS),
                         ctypes.c_long(_ON if on else _OFF), ctypes.c_long(0), ctypes.c_long(0),
                         ctypes.c_long(0)) == 0


def make(entries: list[dict], tid: int) -> None:
    """In a stand-in that never made a timer: make each timer of `entries` (image "posix_timers")
    under its id, notifying thread `tid` (our leader's tid, as we see it) for a "thread" one, then
    arm each with its time left and interval (OSError naming what failed)."""
    by_id = sorted(entries, key=lambda e: e["id"])
    if _restore_ids(True):
        try:
            for e in by_id:
                if _create(e, tid, e["id"]) != e["id"]:
                    raise OSError(errno.EBUSY, f"POSIX timer {e['id']}: made under another id")
        finally:
            _restore_ids(False)
    else:
        fillers = []
        for e in by_id:
            # (ids come in order: what comes before the wanted one is a filler, deleted after)
            while len(fillers) <= MAX_FILLERS:
                got = _create(e, tid, 0)
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
            spec = struct.pack("=4q", *divmod(e["interval"], 1_000_000_000), *divmod(e["value"], 1_000_000_000))
            _sys(_NR_SETTIME, ctypes.c_long(e["id"]), ctypes.c_long(0), ctypes.create_string_buffer(spec, 32),
                 ctypes.c_void_p(0))
