"""A process's threads: recorded at dump, made again at restore, refused when they hold a state of
their own.

The image keeps, per process, its threads other than the leader, each by its name
(/proc/PID/task/TID/comm); tids are not restored (as pids are not). A stand-in makes them last,
once it has taken the process's executable, ids and capabilities (engine/standin.py `_detach`):
raw setresuid and capset change only the calling thread, and a thread copies its maker's ids,
capabilities and name when it is made, so threads made after those steps hold the process's and
need no step of their own. Each is named by its maker: the stand-in takes the thread's name,
makes it, and takes its own back at the end. In machine code (engine/mappings.py `become_exe`) a
thread is a clone step whose new thread parks at once; in Python (elsewhere) a thread blocked on
a lock for good. Either way the steps are told through engine/lastword.py like the others.

What a thread holds apart from its leader, a restored one would lose: its own fs (a root or
working directory of its own after unshare(CLONE_FS)), its own namespaces (setns or
unshare in one thread), other ids or capabilities (raw per-thread setresuid, capset). Those are
refused before the tree is stopped (engine/prestop.py) and again once it is (a thread made
in between is recorded or refused like the others).
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import mmap
import os

from engine import kernel
from engine.image import MAX_THREADS

# Lines of /proc/PID/task/TID/status that a thread keeps of its own and restore gives it from the
# process, with how a refusal names them.
# (Not the umask: it lives with the root and cwd, shared by threads that share those.)
_STATUS = {"Uid": "uids", "Gid": "gids", "Groups": "supplementary groups", "NoNewPrivs": "no_new_privs bit",
           "CapInh": "inheritable capabilities", "CapPrm": "permitted capabilities",
           "CapEff": "effective capabilities", "CapBnd": "capability bounding set",
           "CapAmb": "ambient capabilities",
           # (a thread's own filters: the process's are restored, engine/seccomp.py; runtimes and
           # sandboxes install them with TSYNC, every thread alike)
           "Seccomp": "seccomp mode", "Seccomp_filters": "number of seccomp filters"}
_PLACES = {"root": "root directory", "cwd": "working directory"}


class ThreadError(OSError):
    """A thread whose state mntcr would not restore (one line naming the process and the thread)."""


def tids(pid: int) -> list[int]:
    """The ids of `pid`'s threads other than its leader, in creation order (as the kernel lists
    them; [] when it is gone)."""
    try:
        names = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return sorted(int(t) for t in names if t.isdigit() and int(t) != pid)


def _state(task: str) -> dict[str, object]:
    """What restore gives a thread from its process, read from /proc/`task` ("PID/task/TID")."""
    out: dict[str, object] = {k: " ".join(v.split()) for k, v in kernel.proc_status(task, _STATUS).items()}
    for what in _PLACES:
        link = f"/proc/{task}/{what}"
        st = os.stat(link)
        out[what] = (os.readlink(link), kernel.statx_mnt_id(link), st.st_dev, st.st_ino)
    for kind in sorted(os.listdir(f"/proc/{task}/ns")):
        out[f"ns/{kind}"] = os.stat(f"/proc/{task}/ns/{kind}").st_ino
    return out


def _rank(key: str) -> tuple:
    """The order differences are told in: the cause before what it brings (another mount namespace
    moves the root and cwd onto other mounts; other uids empty the effective capabilities)."""
    order = ["ns/", *_PLACES, *_STATUS]
    return (order.index("ns/") if key.startswith("ns/") else order.index(key), key)


def _named(key: str, value) -> tuple[str, str]:
    """(what a state key is, its value as a refusal shows it)."""
    if key in _STATUS:
        return _STATUS[key], str(value)
    if key in _PLACES:
        return _PLACES[key], f"{value[0]} on mount {value[1]}"
    return f"{key[3:]} namespace", f"{key[3:]}:[{value}]"


def task_state(task: str) -> str:
    """The state letter of /proc/`task` ("PID" or "PID/task/TID"; "" when it is gone)."""
    try:
        fd = os.open(f"/proc/{task}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)   # (one read: polled while the tree stops)
        finally:
            os.close(fd)
        return data.rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def check_leader(pid: int) -> None:
    """Refuse (ThreadError) a process whose main thread has exited while other threads run
    (pthread_exit in main: /proc/PID/stat shows the leader as a zombie, task/ lists live threads):
    a stand-in is its main thread, and the kernel makes no process without one."""
    if task_state(str(pid)) not in ("Z", "X"):
        return
    live = [t for t in tids(pid) if task_state(f"{pid}/task/{t}") not in ("Z", "X", "")]
    if live:
        raise ThreadError(errno.EOPNOTSUPP, f"process {pid} ({_comm(str(pid))}): its main thread has exited while "
                                            f"threads {', '.join(map(str, live))} run; mntcr cannot restore a "
                                            "process without its main thread; the tree keeps running")


def check(pid: int) -> None:
    """Refuse (ThreadError) a process whose main thread has exited (check_leader), a thread of `pid`
    whose state differs from its leader's (see the module docstring), or more threads than an image
    keeps. A thread gone meanwhile is skipped."""
    others = tids(pid)
    if not others:
        return
    check_leader(pid)
    if len(others) > MAX_THREADS:
        raise ThreadError(errno.EOPNOTSUPP, f"process {pid} ({_comm(str(pid))}): {len(others) + 1} threads, "
                                            f"more than an image keeps ({MAX_THREADS + 1}); the tree keeps running")
    try:
        ours = _state(f"{pid}/task/{pid}")
    except FileNotFoundError:
        return   # (gone: dump tells)
    for tid in others:
        try:
            theirs = _state(f"{pid}/task/{tid}")
        except FileNotFoundError:
            continue   # (it exited)
        for key in sorted(set(ours) | set(theirs), key=_rank):
            if ours.get(key) != theirs.get(key):
                what, mine = _named(key, theirs.get(key))
                raise ThreadError(errno.EOPNOTSUPP, f"process {pid} ({_comm(str(pid))}): thread {tid} "
                                                    f"({_comm(f'{pid}/task/{tid}')}) has its own {what} ({mine}; "
                                                    f"the process's: {_named(key, ours.get(key))[1]}): a restored "
                                                    "thread holds its process's; the tree keeps running")


_comm = kernel.comm_shown


def read(pid: int) -> list[dict]:
    """The image's threads of stopped process `pid` ([{"comm"}], its leader aside), checked (check)."""
    check(pid)
    out = []
    for tid in tids(pid):
        try:
            out.append({"comm": kernel.read_comm(f"{pid}/task/{tid}")})
        except FileNotFoundError:
            continue
    return out


def own_name() -> str:
    """The calling thread's name (prctl PR_GET_NAME: /proc may not be ours any more)."""
    buf = ctypes.create_string_buffer(16)
    if ctypes.CDLL(None, use_errno=True).prctl(16, buf, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_GET_NAME)")
    return buf.value.decode("utf-8", "surrogateescape")


def _park(lock) -> None:
    lock.acquire()   # (held by its maker for good: the thread sleeps until the process is killed)


def start(names: list[str]) -> None:
    """In a detached stand-in, its ids and capabilities taken: a thread named each of `names`,
    each parked for good; our own name is kept. Python's threads, where become_exe's machine
    code is not used."""
    if not names:
        return
    mine = own_name()
    lock = _thread.allocate_lock()
    lock.acquire()
    try:
        for name in names:
            kernel.set_comm(name)   # (the thread copies it when it is made)
            try:
                _thread.start_new_thread(_park, (lock,))
            except RuntimeError as e:
                raise OSError(errno.EAGAIN, f"making thread {name!r}: {e}") from None
    finally:
        kernel.set_comm(mine)


# clone(2) flags of a thread: one memory, fs, fd table, signal handlers and undo list; one process.
CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
_PR_SET_NAME = 15


def steps(names: list[str], mine: str, keep: list) -> list[tuple]:
    """become_exe's steps (lastword.ENTRY tuples) making a thread named each of `names`: take its
    name (prctl PR_SET_NAME), clone (check 3: the new thread, answer 0, parks at once; its stack
    a page of its own, never used while it waits), then our own name `mine` back. `keep` holds
    the buffers the steps point at."""
    if not names:
        return []
    stacks = mmap.mmap(-1, mmap.PAGESIZE * len(names), prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(stacks))
    keep.append(stacks)
    out = []
    for i, name in enumerate(names + [mine]):
        buf = ctypes.create_string_buffer(name.encode("utf-8", "surrogateescape")[:15], 16)
        keep.append(buf)
        out.append((157, _PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0, 0, 1, 0))
        if i < len(names):
            out.append((56, CLONE_THREAD_FLAGS, base + mmap.PAGESIZE * (i + 1), 0, 0, 0, 0, 3, 0))
    return out
