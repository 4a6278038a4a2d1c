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

A thread's signal mask is kept when it differs from its leader's (`sig_blocked`): the maker
blocks that mask as it makes the thread, which copies it. It matters for a timer that signals
that thread (engine/posixtimers.py): glibc's SIGEV_THREAD helper blocks every signal and takes
SIGTIMER (32) by sigwaitinfo; a restored one that did not block it would take the tick at its
default action, which kills the process.

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

from engine import kernel, procstat
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
    return procstat.state(task).decode()


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
    whose state differs from its leader's (see the module docstring), more threads than an image
    keeps, or threads in a process whose children go to another pid namespace than its own. A
    thread gone meanwhile is skipped."""
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
    if kernel.ns_ino(pid, "pid_for_children") != kernel.ns_ino(pid, "pid"):
        # (its threads too: one of them alone would have been refused above)
        raise ThreadError(errno.EOPNOTSUPP, f"process {pid} ({_comm(str(pid))}): it has threads and its children go "
                                            "to another pid namespace than its own: restore makes a process's "
                                            "threads last, and the kernel refuses a thread to a task whose "
                                            "children's pid namespace is not its own: not supported; the tree "
                                            "keeps running")


_comm = kernel.comm_shown


def read(pid: int, blocked: int = 0, caught: int = 0) -> list[dict]:
    """The image's threads of stopped process `pid` ([{"comm", "sig_blocked"?}], its leader
    aside), checked (check); `blocked`: its leader's mask as recorded (a thread's own is kept
    when it differs); `caught`: the timer signals it catches (a thread stopped inside a handler
    of one keeps the mask outside it, engine/timersigs.py, else its timer's ticks would wait on
    the restored thread for good)."""
    return [e for _, e in listed(pid, blocked, caught)]


def listed(pid: int, blocked: int = 0, caught: int = 0) -> list[tuple[int, dict]]:
    """(tid, image entry) of each thread `read` records, in its order."""
    from engine import timersigs
    check(pid)
    out = []
    for tid in tids(pid):
        task = f"{pid}/task/{tid}"
        try:
            e = {"comm": kernel.read_comm(task)}
            mine = kernel.read_blocked_signals(task).get("sig_blocked", 0)
        except FileNotFoundError:
            continue
        if mine & caught:
            outside = timersigs.mask_outside_handler(task, mine, caught)
            mine = mine if outside is None else outside
        if mine != blocked:
            e["sig_blocked"] = mine
        out.append((tid, e))
    return out


def own_name() -> str:
    """The calling thread's name (prctl PR_GET_NAME: /proc may not be ours any more)."""
    buf = ctypes.create_string_buffer(16)
    if ctypes.CDLL(None, use_errno=True).prctl(16, buf, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_GET_NAME)")
    return buf.value.decode("utf-8", "surrogateescape")


def _park(lock, ready, blocked: int, out: list) -> None:
    # (its mask by the raw call: glibc's new thread leaves out its own signals, 32 and 33)
    kernel.take_blocked_signals(blocked)
    out.append(_thread.get_native_id())
    ready.release()
    lock.acquire()   # (held by its maker for good: the thread sleeps until the process is killed)


def start(threads: list, blocked: int = 0) -> list[int]:
    """In a detached stand-in, its ids and capabilities taken: a thread for each (name, mask or
    None: `blocked`, its leader's) of `threads`, each parked for good; our own name is kept. Their
    tids, in order. Python's threads, where become_exe's machine code is not used."""
    if not threads:
        return []
    threads = _pairs(threads)
    mine = own_name()
    lock, ready = _thread.allocate_lock(), _thread.allocate_lock()
    lock.acquire()
    made: list[int] = []
    try:
        for name, mask in threads:
            kernel.set_comm(name)   # (the thread copies it when it is made)
            ready.acquire()
            try:
                _thread.start_new_thread(_park, (lock, ready, blocked if mask is None else mask, made))
            except RuntimeError as e:
                raise OSError(errno.EAGAIN, f"making thread {name!r}: {e}") from None
            ready.acquire()   # (its tid told)
            ready.release()
    finally:
        kernel.set_comm(mine)
    return made


def limits_before(limits: dict) -> tuple[dict, dict]:
    """(the resource limits `limits` ({NAME: [soft, hard]}, -1 unlimited) to take before the last
    steps, {NAME: [soft, hard]} to take after them). Each of _LATE is kept at least ours until the
    threads are made, then lowered to the process's (lowering needs no privilege): a process that
    lowered RLIMIT_NPROC once its threads were made (haproxy forbids forking so: 0, 0) would not get
    them again as a non-root stand-in (clone: EAGAIN); a stand-in holds the restorer's memory, which
    a process's RLIMIT_DATA or RLIMIT_AS (`ulimit -d`, `ulimit -v`) need not cover: with either
    taken first, PR_SET_MM_MAP (its brk and data against RLIMIT_DATA) and the stand-in's own
    allocations (a buffer, a thread's stack) failed on a tree that ran under them."""
    import resource
    big = lambda v: float("inf") if v == -1 or v == resource.RLIM_INFINITY else v   # noqa: E731
    early, late = dict(limits), {}
    for name, nr in _LATE.items():
        want = limits.get(name)
        if want is None:
            continue
        now = resource.getrlimit(nr)
        first = [w if big(w) >= big(n) else n for w, n in zip(want, now)]
        first = [-1 if v == resource.RLIM_INFINITY else v for v in first]
        if first != list(want):
            early[name], late[name] = first, list(want)
    return early, late


def late_steps(late: dict, keep: list) -> list[tuple]:
    """The steps (prlimit64 on ourselves) taking each of `late` ({NAME: [soft, hard]}, -1 unlimited)."""
    steps = []
    for name, pair in sorted(late.items()):
        buf = (ctypes.c_uint64 * 2)(*(v & (1 << 64) - 1 for v in pair))
        keep.append(buf)
        steps.append((302, 0, _LATE[name], ctypes.addressof(buf), 0, 0, 0, 1, 0))
    return steps


_LATE = {"NPROC": 6, "DATA": 2, "AS": 9}   # (RLIMIT_*)

# clone(2) flags of a thread: one memory, fs, fd table, signal handlers and undo list; one process.
CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
_PR_SET_NAME = 15
_NR_RT_SIGPROCMASK, _SIG_SETMASK = 14, 2
_STACK = 4 * mmap.PAGESIZE   # (a page would not hold a signal frame with AVX-512 state)


def steps(threads: list, mine: str, keep: list, blocked: int = 0, fans: list | None = None) -> list[tuple]:
    """become_exe's steps (lastword.ENTRY tuples) making a thread for each (name, mask or None) of
    `threads`: take its name (prctl PR_SET_NAME) and its mask when it has one of its own
    (rt_sigprocmask), clone (check 3: the new thread, answer 0, parks at once; its stack of its
    own, used only by a timer's signal its process caught, engine/timersigs.py: room for the
    kernel's signal frame, AVX-512 state and all; fans[i], when not 0, the address of the places
    the maker writes thread i's tid or CPU clock id into: engine/mappings.py's clone check), then
    our own name `mine` and mask `blocked` back. `keep` holds the buffers the steps point at."""
    if not threads:
        return []
    threads = _pairs(threads)
    stacks = mmap.mmap(-1, _STACK * len(threads), prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(stacks))
    keep.append(stacks)
    out = []
    own_mask = False
    for i, (name, mask) in enumerate(list(threads) + [(mine, None)]):
        buf = ctypes.create_string_buffer(name.encode("utf-8", "surrogateescape")[:15], 16)
        keep.append(buf)
        out.append((157, _PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0, 0, 1, 0))
        if i == len(threads):
            break
        if mask is not None or own_mask:
            out.append(_setmask(blocked if mask is None else mask, keep))
            own_mask = mask is not None
        out.append((56, CLONE_THREAD_FLAGS, base + _STACK * (i + 1), 0, 0, 0, 0, 3, fans[i] if fans else 0))
    if own_mask:
        out.append(_setmask(blocked, keep))
    return out


def _pairs(threads) -> list[tuple[str, int | None]]:
    """(name, mask or None) of each of `threads`, given so or by name alone."""
    return [(t, None) if isinstance(t, str) else (t[0], t[1]) for t in threads]


def _setmask(mask: int, keep: list) -> tuple:
    """The step blocking exactly `mask` (as kernel.take_blocked_signals: the raw call)."""
    buf = ctypes.c_uint64(mask & ~(1 << 8 | 1 << 18) & (1 << 64) - 1)
    keep.append(buf)
    return (_NR_RT_SIGPROCMASK, _SIG_SETMASK, ctypes.addressof(buf), 0, 8, 0, 0, 1, 0)
