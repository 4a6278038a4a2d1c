"""The dumped process tree: found from /proc, stopped (SIGSTOP) while dump reads it, checked for
processes that exited meanwhile, then killed or resumed; a watchdog child resumes it if the dump itself dies.
"""

from __future__ import annotations

import errno
import os
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import time

from engine import kernel, procstat, threads
from engine.dumperror import DumpError


_PF_KTHREAD = 0x00200000   # (task flags, /proc/PID/stat field 9)


def process_tree(root_pid: int) -> list[tuple[int, int | None]]:
    """[(pid, ppid)] of the tree rooted at root_pid, parents first, siblings in the order they were
    made (start time, then pid: pids wrap). Each process's children are read from its threads'
    /proc children lists: the tree's own processes, not every process of the host (a scan of
    /proc grew with the host: ~1.5 ms at 160 processes, 50 ms at 700 under load); a kernel built
    without those lists (CONFIG_PROC_CHILDREN) gets the scan."""
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fields = _stat_fields(proc, root_pid)
        if fields is None:
            raise DumpError(errno.ESRCH, f"no such process: {root_pid}")
        if int(fields[procstat.FLAGS]) & _PF_KTHREAD:
            raise DumpError(errno.EPERM, f"process {root_pid} ({kernel.comm_shown(root_pid)}) is a kernel thread: "
                                         "give the pid of a process tree's root")
        children = (lambda pid: _children_listed(proc, pid)) if has_children_lists() else _children_scanned(proc).get
        order = [(root_pid, None)]
        i = 0
        while i < len(order):
            pid = order[i][0]
            order += [(c, pid) for c in fork_order(children(pid) or ())]
            i += 1
        return order
    finally:
        os.close(proc)


def fork_order(born) -> list[int]:
    """The pids of `born` [(start time, pid)] in the order they were made: by start time, then, within
    one clock tick, by pid, unless that tick's pids lie more than half of kernel.pid_max apart: pids
    wrapped within the tick, and its low pids came after its high ones."""
    out: list[int] = []
    group: list[int] = []
    last = None
    for tick, pid in sorted(born) + [(None, 0)]:
        if tick != last and group:
            if group[-1] - group[0] > _pid_max() // 2:
                group.sort(key=lambda p: p + _pid_max() if p < _pid_max() // 2 else p)
            out += group
            group = []
        group.append(pid)
        last = tick
    return out


def _pid_max() -> int:
    """kernel.pid_max (read once)."""
    global _PID_MAX
    if _PID_MAX is None:
        with open("/proc/sys/kernel/pid_max") as f:
            _PID_MAX = int(f.read())
    return _PID_MAX


_PID_MAX = None


def _read_at(proc: int | None, path: str) -> bytes | None:
    """The whole of a /proc file (relative to the `proc` fd; None: `path` as it is), None when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            data = os.read(fd, 65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    except OSError:
        return None   # (gone since the open)
    finally:
        os.close(fd)


def _stat_fields(proc: int, pid) -> list[bytes] | None:
    """engine.procstat's fields of `pid` under the /proc fd `proc`, None when the process is gone."""
    try:
        return procstat.fields(pid, None, proc)
    except OSError:
        return None


_HAS_CHILDREN: bool | None = None


def has_children_lists() -> bool:
    """Whether the kernel has /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN: Debian's kernels
    and this project's hosts do, not every kernel does); asked once a process."""
    global _HAS_CHILDREN
    if _HAS_CHILDREN is None:
        _HAS_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
    return _HAS_CHILDREN


def children(pid: int, proc: int | None = None) -> list[int]:
    """The children of `pid`, from each of its threads' children list (a child is listed by the
    thread that forked it; CONFIG_PROC_CHILDREN); [] when it is gone. `proc`: an fd on /proc to
    read them under (None: the path /proc)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    where = f"{pid}/task" if proc is not None else f"/proc/{pid}/task"
    return [int(c) for tid in tids for c in (_read_at(proc, f"{where}/{tid}/children") or b"").split()]


def _children_listed(proc: int, pid: int) -> list[tuple[int, int]]:
    """[(start time, pid)] of pid's children (`children`); one gone since is left out."""
    out = []
    for c in children(pid, proc):
        fields = _stat_fields(proc, c)
        if fields is not None:
            out.append((int(fields[procstat.STARTTIME]), c))
    return out


def _children_scanned(proc: int) -> dict[int, list[tuple[int, int]]]:
    """ppid -> [(start time, pid)] of every process of the host, one stat read each (os.open/os.read
    under the /proc fd: a file object each cost ~40% more)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir(proc):
        if name.isdigit():
            fields = _stat_fields(proc, name)
            if fields is not None:
                children.setdefault(int(fields[procstat.PPID]), []).append((int(fields[procstat.STARTTIME]), int(name)))
    return children


def signal_all(pids, sig) -> None:
    """Send `sig` to each of `pids` (one that is gone already is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_in_order(pids, each: float = 0.05) -> None:
    """SIGSTOP each of `pids` (parents first), waiting a moment (`each` seconds at most) until it
    stopped before stopping the next: a child that stops sends its parent SIGCHLD, which woke a
    parent still running (a shell in `wait` runs its handler and blocks every signal before it
    waits again: stopped then, its blocked set was a moment's). A stopped parent keeps the
    signal pending. (One that does not stop at once, a vfork parent, is not waited for longer:
    wait_stopped waits for the whole tree.)"""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + each
        while state(pid) not in ("T", "t", "Z", "X", "") and time.monotonic() < deadline:
            time.sleep(0.0002)


def wait_gone(pids, timeout: float = 10.0) -> None:
    """Wait (up to `timeout` seconds in all) until each of `pids` is gone or a zombie."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            if procstat.state(pid) in (b"Z", b""):
                break  # a zombie waiting for its (non-dumped) parent: gone for us
            time.sleep(0.005)


def kill_all(pids, timeout: float = 10.0) -> None:
    """SIGKILL each of `pids` and wait (up to `timeout` seconds in all) until each is gone or a
    zombie: on a pidfd opened before the kill, readable once the process has exited, instead of
    looking at /proc every few ms (a killed tree's exit takes the kernel a while: its mounts and
    namespaces go with it). A pid pidfd_open refuses but ESRCH (gone) is waited for as wait_gone does."""
    import select
    fds: dict[int, int] = {}
    rest = []
    try:
        for pid in pids:
            try:
                fds[kernel.pidfd_open(pid)] = pid
            except OSError as e:
                if e.errno != errno.ESRCH:
                    rest.append(pid)
        signal_all(list(fds.values()) + rest, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        left = len(fds)
        while left:
            ms = (deadline - time.monotonic()) * 1000
            if ms <= 0:
                break
            for fd, _ in poller.poll(ms):
                poller.unregister(fd)
                left -= 1
    finally:
        for fd in fds:
            os.close(fd)
    wait_gone(rest, max(0.0, deadline - time.monotonic()))


def refuse_zombies(tree) -> None:
    """A live process of the tree (zombies were set apart before: engine/zombies.py) that has exited
    since, now a zombie, is refused, naming it (the tree is resumed): it was looked at alive, its
    children left the tree. A process whose main thread alone exited shows its leader so too: told
    as such (threads.py)."""
    for pid, ppid in tree:
        try:
            threads.check_leader(pid)
        except threads.ThreadError as e:
            raise DumpError(e.errno, e.strerror) from None
        if state(pid) in ("Z", "X", ""):
            comm = _comm(pid)
            raise DumpError(errno.EAGAIN, f"process {pid} ({comm}, child of {ppid} ({_comm(ppid)})) has exited "
                                          "while the dump began (a zombie now, or gone): dump again; the tree "
                                          "keeps running")


def settle(root_pid: int, known, skip=(), rounds: int = 50, ours=()) -> tuple[list[tuple[int, int | None]], list[int]]:
    """Once the processes `known` (pids) are stopped: the tree as it is now ([(pid, ppid)], parents
    first, `skip`'s processes and their children left out) and the processes found running in it
    and stopped here (to resume). A shell loop forks its next command between dump's look at the
    tree and its stop: that child is stopped too and the tree looked at again, until a look finds
    no process running (a stopped parent forks no more: a few looks). One that exited meanwhile
    is a zombie in the tree now, or gone: the caller takes it as such. A vfork parent whose child
    was stopped before its exec (`ours`: the processes this dump stopped) gets past its vfork
    (finish_vforks)."""
    known = set(known)
    started: list[int] = []
    for _ in range(rounds):
        tree = [(p, pp) for p, pp in process_tree(root_pid) if p not in skip and pp not in skip]
        new = [p for p, _ in tree if p not in known and state(p) not in ("Z", "X", "")]
        if not new:
            if finish_vforks(tree, set(ours) | set(started)):
                continue   # (the child that exec'd may have forked: look again)
            return tree, started
        started += [p for p in new if state(p) not in ("T", "t")]   # (one stopped already stays so)
        stop_in_order(new)
        wait_stopped(new)
        known.update(new)
    raise DumpError(errno.EAGAIN, f"the tree of process {root_pid} kept starting processes while dump stopped "
                                  "it: dump again; the tree keeps running")


def finish_vforks(tree, ours, timeout: float = 3.0) -> bool:
    """Let the tree's vfork parents get past their vfork: a parent waits there (uninterruptibly, so it
    does not stop, and no call runs in it) until its child execs or exits, and the stop caught the
    child before that (a busy shell loop: dash vforks its commands). Each such child this dump
    stopped (`ours`) runs again until its parent left the wait (`timeout` seconds at most) and is
    stopped again; the parent stops on the SIGSTOP it had pending. Whether any child ran (the tree
    is to be looked at again); a parent still waiting is refused later (engine/inject.py)."""
    waiting = [p for p, _ in tree if state(p) == "D" and _in_vfork(p)]
    kids = [c for c, pp in tree if pp in waiting and c in ours and state(c) == "T"]
    if not kids:
        return False
    signal_all(kids, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_in_vfork(p) for p in waiting):
        time.sleep(0.0005)
    stop_in_order(kids)
    wait_stopped(kids + waiting)
    return True


def _in_vfork(pid) -> bool:
    from engine import inject   # (only when a process is in an uninterruptible wait: rare)
    return inject.in_vfork(pid)


def refuse_left(pids, tree) -> None:
    """Refuse a process of `pids` (the tree as dump first saw it) that lives but is no longer in
    `tree` (as it is once stopped): its parent exited meanwhile and it was adopted outside."""
    now = {p for p, _ in tree}
    for pid in pids:
        if pid not in now and state(pid) not in ("Z", "X", ""):
            raise DumpError(errno.EAGAIN, f"process {pid} ({_comm(pid)}) left the tree while dump stopped it (its "
                                          "parent exited): dump again; the tree keeps running")


def refuse_traced(tree) -> None:
    """A process of the tree under ptrace (strace -p, gdb attached) is refused, naming it and its
    tracer: a stand-in is nobody's tracee, and the tracer's hold (its stops, its syscall reports)
    is not restored; what our SIGSTOP would do to it is the tracer's to see. Every thread: one
    traced alone was dumped (its tracer may run it while the rest is stopped)."""
    for pid, _ in tree:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue   # (gone: told by the checks after the stop)
        for tid in sorted(tids, key=lambda t: t != str(pid)):
            try:
                tracer = int(kernel.proc_status(f"{pid}/task/{tid}", ("TracerPid",)).get("TracerPid", 0))
            except OSError:
                continue
            if tracer:
                what = f"process {pid}" if tid == str(pid) else f"thread {tid} of process {pid}"
                raise DumpError(errno.EOPNOTSUPP, f"{what} ({_comm(pid)}) is traced by process {tracer} "
                                                  f"({_comm(tracer)}): ptrace is not restored; detach the tracer "
                                                  "and dump again; the tree keeps running")


_comm = kernel.comm_shown


def wait_stopped(pids, timeout: float = 5.0) -> None:
    """Wait (up to `timeout` seconds in all) until each of `pids` is stopped (or gone), every
    thread of it: threads are read once the tree is stopped (engine/threads.py)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            tasks = [f"{pid}/task/{t}" for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for task in tasks:
            pause = 0.0001   # (a sleeping task stops within microseconds: look again soon, then less often)
            while time.monotonic() < deadline:
                st = threads.task_state(task)
                if st in ("T", "t", "Z", "X", "") or st == "D" and _in_vfork(task):
                    break   # ("": gone; a vfork parent stops once its child execs: settle's finish_vforks)
                time.sleep(pause)
                pause = min(pause * 2, 0.002)


def state(pid: int) -> str:
    """The state letter of a process (R, S, T...), "" when it is gone."""
    return threads.task_state(str(pid))


def watchdog(pids: list[int]) -> int:
    """A child that resumes the stopped tree if this dump dies (SIGKILL included)."""
    me = kernel.pidfd_open(os.getpid())
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGUSR1, lambda *_: (signal_all(pids, signal.SIGCONT), os._exit(0)))
            kernel.set_pdeathsig(signal.SIGUSR1)
            while not kernel.exited(me):
                signal.pause()
        finally:
            signal_all(pids, signal.SIGCONT)
            os._exit(0)
    os.close(me)
    return pid
