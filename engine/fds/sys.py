"""Syscalls the fd kinds need that engine.kernel does not wrap (pidfd_getfd, kcmp, tee, timerfd,
signalfd, epoll_ctl), kept here so the mount engine's bindings stay about mounts."""

from __future__ import annotations

import ctypes
import os

from engine.kernel import _ARCH, _check, _libc, _syscall

if _ARCH == "x86_64":
    _NR = dict(kcmp=312, tee=276, timerfd_create=283, timerfd_settime=286, timerfd_gettime=287,
               signalfd4=289, epoll_ctl=233, memfd_create=319, epoll_pwait=281)
else:
    _NR = dict(kcmp=272, tee=77, timerfd_create=85, timerfd_settime=86, timerfd_gettime=87,
               signalfd4=74, epoll_ctl=21, memfd_create=279, epoll_pwait=22)
_NR["pidfd_getfd"] = 438

KCMP_FILE = 0
SPLICE_F_NONBLOCK = 2
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
TFD_TIMER_ABSTIME = 1


KCMP_EPOLL_TFD = 7


class _KcmpEpollSlot(ctypes.Structure):
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


def epoll_target_is(pid: int, fd: int, efd: int, tfd: int, toff: int = 0) -> bool:
    """Whether process `pid`'s fd `fd` is the file its epoll `efd` watches as (the `toff`th) target
    `tfd` (kcmp KCMP_EPOLL_TFD, Linux 4.13); False where the kernel cannot tell."""
    slot = _KcmpEpollSlot(efd, tfd, toff)
    ret = _syscall(_NR["kcmp"], ctypes.c_int(pid), ctypes.c_int(pid), ctypes.c_int(KCMP_EPOLL_TFD),
                   ctypes.c_ulong(fd), ctypes.byref(slot))
    return ret == 0


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy of process `pidfd`'s fd `fd` (the same open file description), close-on-exec."""
    return _check(_syscall(_NR["pidfd_getfd"], ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0)),
                  lambda: f"pidfd_getfd(fd {fd})")


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Whether two fds (of two processes) are the same open file description (kcmp KCMP_FILE)."""
    ret = _check(_syscall(_NR["kcmp"], ctypes.c_int(pid1), ctypes.c_int(pid2), ctypes.c_int(KCMP_FILE),
                          ctypes.c_ulong(fd1), ctypes.c_ulong(fd2)), lambda: f"kcmp({pid1}:{fd1}, {pid2}:{fd2})")
    return ret == 0


def tee(fd_in: int, fd_out: int, length: int) -> int:
    """tee(2), non-blocking: copy up to `length` bytes between pipes without consuming them."""
    return _check(_syscall(_NR["tee"], ctypes.c_int(fd_in), ctypes.c_int(fd_out), ctypes.c_size_t(length),
                           ctypes.c_uint(SPLICE_F_NONBLOCK)), "tee")


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


def timerfd_create(clockid: int, flags: int) -> int:
    """timerfd_create(2)."""
    return _check(_syscall(_NR["timerfd_create"], ctypes.c_int(clockid), ctypes.c_int(flags)), "timerfd_create")


def timerfd_settime(fd: int, value_ns: int, interval_ns: int) -> None:
    """Arm a timerfd relative to now (value 0 leaves it disarmed)."""
    spec = _Itimerspec(_Timespec(*divmod(interval_ns, 10**9)), _Timespec(*divmod(value_ns, 10**9)))
    _check(_syscall(_NR["timerfd_settime"], ctypes.c_int(fd), ctypes.c_int(0), ctypes.byref(spec), None),
           "timerfd_settime")


def signalfd(mask: int, flags: int) -> int:
    """signalfd4(2) with a fresh fd for the 64-bit signal `mask`."""
    m = ctypes.c_uint64(mask)
    return _check(_syscall(_NR["signalfd4"], ctypes.c_int(-1), ctypes.byref(m), ctypes.c_size_t(8),
                           ctypes.c_int(flags)), "signalfd")


class _EpollEvent(ctypes.Structure):
    _pack_ = 1 if _ARCH == "x86_64" else 8   # struct epoll_event is packed on x86-64 only
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def epoll_add(epfd: int, fd: int, events: int, data: int) -> None:
    """EPOLL_CTL_ADD with the exact events mask and 64-bit data word."""
    ev = _EpollEvent(events, data)
    _check(_syscall(_NR["epoll_ctl"], ctypes.c_int(epfd), ctypes.c_int(1), ctypes.c_int(fd), ctypes.byref(ev)),
           lambda: f"epoll_ctl(ADD fd {fd})")


def epoll_wait_one(epfd: int) -> int | None:
    """The data word of one event epoll `epfd` reports now (epoll_pwait, no wait), or None."""
    ev = _EpollEvent()
    n = _check(_syscall(_NR["epoll_pwait"], ctypes.c_int(epfd), ctypes.byref(ev), ctypes.c_int(1), ctypes.c_int(0),
                        None, ctypes.c_size_t(8)), "epoll_pwait")
    return ev.data if n else None


def memfd_create(name: str, flags: int) -> int:
    """memfd_create(2)."""
    return _check(_syscall(_NR["memfd_create"], os.fsencode(name), ctypes.c_uint(flags)), "memfd_create")


__all__ = ["pidfd_getfd", "same_file", "epoll_target_is", "tee", "timerfd_create", "timerfd_settime", "signalfd", "epoll_add", "epoll_wait_one",
           "memfd_create", "_libc"]
