"""A call made by a thread of ours with other effective ids and supplementary groups.

The kernel keeps credentials per thread; glibc's setresuid/setgroups change every thread's (they
signal the others to follow), the raw syscalls only the caller's. A thread that takes ids with the
raw syscalls and calls listen() makes the kernel record those ids and groups (SO_PEERCRED,
SO_PEERGROUPS) with our process's pid (its thread group's): a listening unix socket restored
with the listener's credentials by the process that holds it, not by a short-lived child.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

from engine import kernel

_NO_CHANGE = 0xFFFFFFFF   # (uid_t)-1


def _take(uid: int, gid: int, groups: list[int] | None) -> None:
    """In the calling thread only: supplementary groups `groups` (None: kept), effective gid and uid."""
    if groups is not None:
        arr = (ctypes.c_uint * max(len(groups), 1))(*groups)
        kernel.syscall("setgroups", ctypes.c_size_t(len(groups)), arr)
    kernel.syscall("setresgid", ctypes.c_uint(_NO_CHANGE), ctypes.c_uint(gid), ctypes.c_uint(_NO_CHANGE))
    kernel.syscall("setresuid", ctypes.c_uint(_NO_CHANGE), ctypes.c_uint(uid), ctypes.c_uint(_NO_CHANGE))


def _gone(tid: int, timeout: float = 10) -> None:
    """Wait until thread `tid` of ours is no member of our thread group (tgkill answers ESRCH): a
    joined Python thread may still be exiting, and setns into a user namespace or unshare of a
    mount namespace refuses a process with another thread (EINVAL)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kernel.syscall("tgkill", ctypes.c_int(os.getpid()), ctypes.c_int(tid), ctypes.c_int(0))
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"thread {tid} did not exit")
        time.sleep(0.001)


def call_as(uid: int, gid: int, groups: list[int] | None, fn):
    """fn() in a new thread that first takes effective ids `uid`/`gid` and supplementary groups
    `groups` (None: ours) for itself alone; returns fn's result or raises its exception, once the
    thread is gone (we are one thread again) and our "dumpable" is what it was. A thread that
    cannot be made raises OSError (EAGAIN)."""
    out: dict = {}

    def body():
        out["tid"] = threading.get_native_id()
        try:
            _take(uid, gid, groups)
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - raised again by the caller's thread
            out["error"] = e

    was_dumpable = kernel.dumpable()
    t = threading.Thread(target=body, name="mntcr-ids")
    try:
        t.start()
    except RuntimeError as e:   # (the stand-in's loop answers OSErrors only: anything else kills it)
        raise OSError(errno.EAGAIN, f"making a thread to take ids {uid}/{gid}: {e}") from None
    t.join()
    _gone(out["tid"])
    # (a change of ids clears "dumpable" of the memory the threads share: the process's, set back)
    kernel.set_dumpable(was_dumpable)
    if "error" in out:
        raise out["error"]
    return out.get("value")
