"""Stand-in processes: one per dumped process, driven by the restorer over a channel.

A stand-in is forked by its parent stand-in (the root one by the restorer), so
the process tree and the pid namespaces nest as they did. It then does what
the restorer asks, each request answered by ("ok", value) or ("error", text):

  spawn    fork a child stand-in (same, new, or an existing pid namespace)
  spawn_in_userns   the same, the child starting inside its user namespace
  spawn_alone   the same, the child in a session or group whose leader is gone (engine/sessions.py)
  spawn_adopted   the same, the child adopted by an ancestor (a child subreaper: `subreaper`)
  ns       unshare or setns one namespace (uts, ipc, net, cgroup); set hostname
  fsmount  create a superblock from inside its namespaces (proc, mqueue, ...)
  enter    setns into its restored mount namespace, chroot to its root, chdir
  fds      install open files at their numbers
  map      map each file received (engine/mappings.py)
  exe      the executable to make its /proc/PID/exe when detached (mappings.become_exe)
  become   join its user namespace and take its ids there (engine/userns_cr.py)
  locks    take the process's file locks on its installed fds (engine/filelocks.py)
  kind     run an fd kind's step here (engine/fds/: a socket made in our net namespace, epoll targets)
  setsid, setpgid, foreground   our session, process group, terminal's foreground group (engine/sessions.py)
  zombie   a zombie's stand-in: take its name and ids, answer, and die with its status (engine/zombies.py)
  detach   drop every other fd, take the last steps (executable, ids, capabilities, then its
           threads: engine/threads.py), tell how they went (engine/lastword.py) and sleep until killed

If the restorer dies, the channel closes and every stand-in exits (and
PDEATHSIG covers a stand-in blocked elsewhere), so a killed restore leaves no
namespace alive. Detaching clears PDEATHSIG (the restorer exits right after),
so from then until the restore commits (its pid file published) the root
stand-in holds the tree's life instead: its detach request carries a lifeline,
a socket whose other end only `mntcr restore` holds. The root waits on it
before it sleeps: "c" (commit) lets the tree live; end of file (the restore
interrupted, killed or failed after the restorer exited) kills the whole tree:
the root is the leader of a process group of its own that every stand-in
inherits, or init of its pid namespace. After "c" the root takes its last steps (executable, ids,
capabilities) and tells how they went on the lifeline; the others tell on their channel before
(engine/lastword.py): a failed step fails the restore.
"""

from __future__ import annotations

import errno
import fcntl
import os
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import _socket   # not socket.py: its enum classes cost every restore ~7 ms (engine/channel.py)

# (imported before a stand-in chroots)
from engine import channel, fds as fdkinds, filelocks, kernel, lastword, mappings, schedattrs, threads as threadsteps
from engine import loginuid, seccomp, timens, userns_cr
from engine import itimers, pendingsigs, posixtimers, procargs, thp, timersigs, zombies
# (engine/reexec.py: restore loads it for an image with user namespaces, restore._load_for)

NS_FLAGS = {"uts": kernel.CLONE_NEWUTS, "ipc": kernel.CLONE_NEWIPC, "net": kernel.CLONE_NEWNET,
            "cgroup": kernel.CLONE_NEWCGROUP, "pid": kernel.CLONE_NEWPID, "mnt": kernel.CLONE_NEWNS}


def spawn(mode: str, pidns_fd: int | None, sock_fd: int, root: bool = False) -> int:
    """Fork a stand-in serving the channel on `sock_fd`; return its pid as the caller sees it.

    mode "same": in the caller's pid namespace; "new": in a new child pid
    namespace (the stand-in is its init); "join": in the namespace `pidns_fd`.
    The caller's pid_for_children is put back afterwards. The `root` stand-in
    leads a process group of its own, inherited by the whole tree (see detach);
    root "session": a session of its own (engine/sessions.py), which it leads too.
    """
    saved = None
    if mode != "same":
        saved = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            kernel.setns(saved, kernel.CLONE_NEWPID)   # (a no-op: whether we may put it back)
        except PermissionError:
            # We are in a user namespace that does not own our pid namespace (it was made
            # before, or the pid namespace above): what we set for our children would stay. An
            # intermediate child sets it, forks the stand-in and exits; we adopt the stand-in.
            os.close(saved)
            return _spawn_via_mid(mode, pidns_fd, sock_fd, None, root, None, None)
    me = kernel.pidfd_open(os.getpid())
    try:
        if saved is not None:
            _pidns(mode, pidns_fd)
        pid = os.fork()
        if pid == 0:
            try:
                kernel.die_with_parent(me, signal.SIGKILL)
                _lead(root)
                _drop_inherited(sock_fd)
                _serve(channel.Channel.of_fd(sock_fd))
            finally:
                os._exit(1)
        return pid
    finally:
        os.close(me)
        if saved is not None:
            kernel.setns(saved, kernel.CLONE_NEWPID)
            os.close(saved)


def _lead(root) -> None:
    """A session of our own (root "session") or a process group of our own (any other true value:
    the root stand-in's, an intermediate's "group"); nothing when false."""
    if root == "session":
        os.setsid()
    elif root:
        os.setpgid(0, 0)


_PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def spawn_in_userns(mode: str, pidns_fd: int | None, sock_fd: int, userns_fd: int, root: bool = False,
                    groups: list[int] | None = None, alone: str | None = None, again: bool = False,
                    early: list[int] = (), pid_first: bool = False, enter: tuple = (),
                    pid_userns: int | None = None, entered: bool = False, children_pid: bool = False) -> int:
    """Like `spawn`, but the stand-in starts inside user namespace `userns_fd` (so the pid, uts,
    ipc and net namespaces it makes belong to it), in a scratch mount namespace of its own there
    (superblocks it makes need one), until it enters its restored one.

    The caller cannot join the user namespace itself (it would lose its privilege), so an
    intermediate child joins and forks the stand-in, then exits; the caller, a child subreaper
    meanwhile, adopts the stand-in. `root` as in spawn; `groups`: the supplementary groups the
    stand-in holds, set before it enters (engine/userns_groups.py); `alone` as in
    `spawn_alone`; `again`: the stand-in executes the interpreter again inside, so that its
    memory, and that of the stand-ins it forks, belongs to the namespace (engine/reexec.py);
    `early`: fds of namespaces (uts, ipc) of the caller's user namespace the stand-in joins before
    it enters (engine/userns_cr.py "ns_before_userns"); `pid_first`: its pid namespace is made (or
    joined) before too, so that the caller's user namespace owns it; `enter`: (mount namespace,
    root, cwd) fds the stand-in enters before its user namespace, which does not own that mount
    namespace (`unshare -rpf` without -m: engine/userns_cr.py "enter_first"), instead of a scratch one;
    `pid_userns`: the user namespace, above `userns_fd`, that makes its pid namespace (joined first);
    `entered`: we are in `enter`'s mount namespace already (entered first too), which the user
    namespace we are in need not own: only the root and cwd are taken; `children_pid`: the stand-in
    makes its children's pid namespace before it enters `userns_fd`, so that the user namespace its
    own pid namespace is made in owns it too (engine/userns_cr.py "pidns_children_early").
    Returns its pid as the caller sees it."""
    return _spawn_via_mid(mode, pidns_fd, sock_fd, userns_fd, root, groups, alone, again, early=early,
                          pid_first=pid_first, enter=enter, pid_userns=pid_userns, entered=entered,
                          children_pid=children_pid)


def spawn_alone(mode: str, pidns_fd: int | None, sock_fd: int, alone: str) -> int:
    """Like `spawn`, but the stand-in starts in a session and group (alone "session"), or a group
    ("group"), whose leader is gone, as a daemon that forked twice (engine/sessions.py): an
    intermediate child calls setsid() (setpgid), forks the stand-in and exits; the caller, a child
    subreaper meanwhile, adopts the stand-in."""
    return _spawn_via_mid(mode, pidns_fd, sock_fd, None, False, None, alone)


def spawn_adopted(mode: str, sock_fd: int, adopter: int) -> int:
    """Like `spawn`, but from an intermediate child that exits at once, so that the stand-in is
    adopted by an ancestor of ours, `adopter` (a pidfd): a child subreaper meanwhile, nearer than any
    other above us (engine/sessions.py `adopt`: a stand-in in our session whose parent is that
    ancestor's). Returns its pid as we see it."""
    return _spawn_via_mid(mode, None, sock_fd, None, False, None, None, adopter=adopter)


def _pidns(mode: str, pidns_fd: int | None) -> None:
    """Our children's pid namespace: a new one (mode "new"), `pidns_fd` ("join"), or ours."""
    if mode == "new":
        kernel.unshare(kernel.CLONE_NEWPID)
    elif mode == "join":
        kernel.setns(pidns_fd, kernel.CLONE_NEWPID)


def _spawn_via_mid(mode: str, pidns_fd: int | None, sock_fd: int, userns_fd: int | None, root,
                   groups: list[int] | None, alone: str | None, again: bool = False,
                   adopter: int | None = None, early=(), pid_first: bool = False, enter: tuple = (),
                   pid_userns: int | None = None, entered: bool = False, children_pid: bool = False) -> int:
    me = kernel.pidfd_open(os.getpid()) if adopter is None else os.dup(adopter)
    pid_r, pid_w = os.pipe()
    go_r, go_w = os.pipe()
    if adopter is None:
        _subreaper(True)
    try:
        mid = os.fork()
        if mid == 0:
            code = 1
            try:
                os.close(pid_r)
                os.close(go_w)
                if groups is not None:
                    os.setgroups(groups)
                for fd in early:
                    kernel.setns(fd, 0)   # (while we may: the namespace's owner is ours)
                if pid_first:
                    _pidns(mode, pidns_fd)
                null = _enter(*enter, join=not entered) if enter else None
                if pid_userns is not None:   # (its pid namespace's owner, above its own: made there)
                    kernel.setns(pid_userns, kernel.CLONE_NEWUSER)
                    _pidns(mode, pidns_fd)
                if userns_fd is not None and not children_pid:
                    _into_userns(userns_fd, not enter)
                _lead(alone)   # (the session or group of a leader gone: ours, once we exit)
                if not pid_first and pid_userns is None:
                    _pidns(mode, pidns_fd)
                made_r, made_w = os.pipe() if children_pid else (None, None)
                pid = os.fork()
                if pid == 0:
                    try:
                        os.close(pid_w)
                        if children_pid:   # (our children's pid namespace, then our user namespace)
                            os.close(made_r)
                            kernel.unshare(kernel.CLONE_NEWPID)
                            _into_userns(userns_fd, not enter)
                            os.write(made_w, b"1")
                            os.close(made_w)
                        os.read(go_r, 1)   # adopted by the caller: now its death may kill us
                        os.close(go_r)
                        kernel.die_with_parent(me, signal.SIGKILL)
                        _lead(root)   # the tree's process group, as in spawn
                        _drop_inherited(sock_fd, null)
                        if again:
                            from engine import reexec   # (loaded by the restorer's parent already)
                            reexec.into_userns(sock_fd)   # (returns only where it cannot)
                        _serve(channel.Channel.of_fd(sock_fd))
                    finally:
                        os._exit(1)
                if children_pid:
                    os.close(made_w)
                    if os.read(made_r, 1) != b"1":   # (it failed, and exited)
                        os._exit(1)
                os.write(pid_w, str(pid).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(pid_w)
        os.close(go_r)
        data = os.read(pid_r, 32)
        _, status = os.waitpid(mid, 0)
        if not data or status:
            raise OSError(errno.EPERM, "cannot start a stand-in inside its user namespace" if userns_fd is not None
                          else f"cannot start a stand-in in a {alone} of its own" if alone
                          else "cannot start a stand-in for an ancestor to adopt")
        os.write(go_w, b"1")
        return int(data)
    finally:
        if adopter is None:
            _subreaper(False)
        for fd in (pid_r, go_w, me):
            try:
                os.close(fd)
            except OSError:
                pass


def _into_userns(userns_fd: int, scratch: bool) -> None:
    """Join user namespace `userns_fd`; then a scratch mount namespace of our own there when
    `scratch` (superblocks we make need one), unless we entered our restored one first."""
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    if scratch:
        kernel.unshare(kernel.CLONE_NEWNS)


def _enter(ns_fd: int, root_fd: int, cwd_fd: int, join: bool = True) -> int:
    """Join mount namespace `ns_fd` (unless not `join`: we are in it), with root `root_fd` and cwd
    `cwd_fd`; returns an fd on the /dev/null we saw before (the root entered may have none)."""
    null = os.open("/dev/null", os.O_RDWR)
    if join:
        kernel.setns(ns_fd, kernel.CLONE_NEWNS)
    os.fchdir(root_fd)
    os.chroot(".")
    os.fchdir(cwd_fd)
    return null


def _drop_inherited(keep: int, null: int | None = None) -> None:
    """Close every fd inherited from the parent but our channel; stdio onto /dev/null (`null`: an
    fd on it, else opened here).

    Otherwise a stand-in would hold the restorer's end of its own channel (and
    the caller's result pipe) and never see them close if the restorer dies.
    """
    if null is None:
        null = os.open("/dev/null", os.O_RDWR)
    for n in (0, 1, 2):
        if n != null:
            os.dup2(null, n)
    lo = 3
    for n in sorted({keep, null, 1 << 20}):
        if n >= lo:
            os.closerange(lo, n)
            lo = n + 1
    if null > 2 and null != keep:
        os.close(null)


def _fsmount(fstype: str, source: str | None, params, attr: int) -> int:
    fd = kernel.fsopen(fstype)
    try:
        if source is not None:
            kernel.fsconfig(fd, kernel.FSCONFIG_SET_STRING, "source", source)
        for key, value in params:
            if value is None:
                kernel.fsconfig(fd, kernel.FSCONFIG_SET_FLAG, key)
            else:
                kernel.fsconfig(fd, kernel.FSCONFIG_SET_STRING, key, value)
        kernel.fsconfig(fd, kernel.FSCONFIG_CMD_CREATE)
        return kernel.fsmount(fd, attr)
    finally:
        os.close(fd)


def fsmount(fstype: str, source: str | None, params, attr: int = 0) -> int:
    """Create a superblock with fsopen/fsconfig/fsmount; return the detached mount's fd (owned by
    the caller's user namespace: engine/userns_cr.py fsmount_in makes one inside another)."""
    try:
        return _fsmount(fstype, source, params, attr)
    except OSError as e:
        raise OSError(e.errno, f"creating {fstype}: {e.strerror if e.strerror else e}") from None


def _install_fds(chan: channel.Channel, items, fds) -> channel.Channel:
    """dup2 each received fd onto its dumped number; returns the (maybe moved) channel."""
    targets = {n for n, _ in items}
    top = max(targets | set(fds) | {chan.fileno()}) + 1
    # Our channel and the received fds must not sit on a number about to be filled.
    if chan.fileno() in targets:
        newfd = fcntl.fcntl(chan.fileno(), fcntl.F_DUPFD_CLOEXEC, top)
        os.close(chan.sock.detach())
        chan = channel.Channel.of_fd(newfd)
        top = newfd + 1
    moved = []
    for fd in fds:
        if fd in targets:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top)
            os.close(fd)
            top = new + 1
            fd = new
        moved.append(fd)
    for (n, cloexec), fd in zip(items, moved):
        os.dup2(fd, n, inheritable=not cloexec)
        os.close(fd)
    return chan


def _detach(keep: set[int], report_fd: int, exe_fd: int | None = None, ids: tuple | None = None,
            caps: dict | None = None, threads: list[str] = (), ignored: int = 0, filters: list | None = None,
            pdeathsig: int = 0, signals: tuple = (0, 0, 0), timers: dict | None = None, late_limits: dict | None = None,
            args: tuple | None = None) -> None:
    """Close every fd but `keep` and `report_fd`; ignore the signals the process ignored
    (`ignored`, a mask) and block those it blocked (`signals`: (blocked, pending on its main thread,
    pending on the process) masks; its threads, made after, copy the first), raise those pending again
    (engine/pendingsigs.py),
    make its `timers` (its image's "posix_timers", "itimers", "timer_sig_caught": the handlers
    first, so that no tick kills us), show its command line and environment (`args`: (cmdline,
    environ) bytes, engine/procargs.py), become the executable, take the ids and the capabilities and
    then the parent-death signal `pdeathsig` (a change of ids clears it: engine/pdeathsig.py), then make the
    threads (`threads`: (name, own mask or None) each; made last, they copy what we took), then the
    POSIX timers that notify them (engine/posixtimers.py `split`) and the resource limits `late_limits`
    ({NAME: [soft, hard]}) when given (engine/threads.py `limits_before`), then install seccomp `filters`
    on every thread (engine/seccomp.py `late`); tell how that went on
    `report_fd` (engine/lastword.py) and sleep until killed.
    A step that fails ends them: the stand-in never runs on with the restorer's identity."""
    blocked = signals[0]
    kernel.take_ignored_signals(ignored)
    kernel.take_blocked_signals(blocked)
    pendingsigs.take(signals[1], signals[2], blocked)
    kernel.close_fds_except(keep | {report_fd})
    word = lastword.OK
    try:
        late = made = ()
        restore_ids = True
        if timers:
            late, made, restore_ids = _make_timers(timers)
        shown = procargs.take(*args) if args else None
        # (become_exe does not return when it can)
        if exe_fd is not None and not mappings.become_exe(exe_fd, report_fd, ids, caps, threads, filters,
                                                          pdeathsig, blocked, (late, made, restore_ids), late_limits,
                                                          shown):
            os.close(exe_fd)
        if ids:
            userns_cr.become(None, *ids)
        if caps is not None:
            kernel.take_caps(caps)   # last: the ids and the executable needed the privilege
        if pdeathsig:
            kernel.set_pdeathsig(pdeathsig)
        tids = threadsteps.start(threads, blocked)
        if late:
            posixtimers.make(list(late), [os.getpid()] + tids)
        if late_limits:
            kernel.set_rlimits(late_limits)
        if filters:
            seccomp.install(filters, tsync=True)   # (the very last: engine/seccomp.py `late`)
    except OSError as e:
        word = lastword.failed(e)
    try:
        lastword.tell(report_fd, word)
    except OSError:
        pass   # (the restore is gone: its end of the tree kills us)
    while True:
        signal.pause()


def _make_timers(timers: dict) -> tuple[list, list, bool]:
    """The process's timers (engine/posixtimers.py, engine/itimers.py), armed once the handlers of
    the signals it caught are in (engine/timersigs.py): those that notify none of its threads but
    the leader (posixtimers.split). (Those that do, made once the threads are, the ones made now,
    whether ids are restorable.)"""
    timersigs.take(timers.get("timer_sig_caught", 0))
    restore_ids = posixtimers.ids_restorable()
    made, late = posixtimers.split(timers.get("posix_timers") or [], restore_ids)
    posixtimers.make(made, [os.getpid()])
    itimers.make(timers.get("itimers") or [])
    return late, made, restore_ids


def _await_commit(lifeline: int, kin=()) -> None:
    """The root stand-in until the restore commits: "c" on the lifeline, else the tree dies (`kin`:
    pidfds of stand-ins outside our process group). The lifeline stays open: the root's last word
    goes on it (_detach), which closes `kin`."""
    try:
        word = os.read(lifeline, 1)
    except OSError:
        word = b""
    if word == b"c":
        return
    for pidfd in kin:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)   # (stand-ins our group does not hold)
        except OSError:
            pass
    if os.getpid() != 1 and os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the tree's own group, us included
    os._exit(1)  # as init of our pid namespace, the kernel kills everything in it with us


def serve_fd(sock_fd: int) -> None:
    """Serve the channel at `sock_fd` (a stand-in executed again: engine/reexec.py); never returns."""
    _serve(channel.Channel.of_fd(sock_fd))


def _serve(chan: channel.Channel) -> None:
    """A stand-in's loop: carry out the restorer's requests (one _Server method each) and answer
    ("ok", reply) or ("error", text); the last request, detach, never returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = _Server(chan)
    while True:
        try:
            msg, fds = server.chan.recv()
        except (channel.ChannelClosed, ConnectionError):
            os._exit(1)
        fds = list(fds)
        try:
            handler = getattr(server, f"op_{msg[0]}", None)
            if handler is None:
                raise OSError(f"unknown stand-in request {msg[0]!r}")
            reply = handler(msg, fds)
            if reply is _ANSWERED:
                continue
            for fd in fds:
                if fd not in server.installed:
                    os.close(fd)
            server.chan.send(("ok", reply))
        except OSError as e:
            for fd in fds:
                try:
                    if fd not in server.installed:
                        os.close(fd)
                except OSError:
                    pass
            server.chan.send(channel.error_reply(e))


_ANSWERED = object()   # a request whose handler sent the answer (with fds) itself


class _Server:
    """What a stand-in keeps between requests: its channel (replaced when fds are installed over
    its number), the fds installed, the executable to become and the ids to take at detach.

    Each op_NAME(msg, fds) handles request NAME; `fds` came with it, and those not installed are
    closed after it (a handler that consumed them all empties the list)."""

    def __init__(self, chan: channel.Channel):
        self.chan = chan
        self.installed: set[int] = set()
        self.exe_fd = None
        self.ids = None   # (uid, gid, groups, dumpable, keep_caps) deferred to the end of detach
        self.filters = None   # seccomp filters to install before the ids or last (op_seccomp)
        self.filters_late = False
        self.kin: list[int] = []   # the root's pidfds of stand-ins outside its group (_await_commit)
        self.args = ([], [])   # (command line, environment): the pieces sent (op_args), joined at detach

    def op_spawn(self, msg, fds):
        """A child stand-in (its channel: fds[0]) in mode msg[1]."""
        _, mode = msg
        sock_fd = fds[0]
        return spawn(mode, fds[1] if len(fds) > 1 else None, sock_fd)

    def op_spawn_in_userns(self, msg, fds):
        """A child stand-in started inside a user namespace (msg[3]: as in spawn_alone, or None)."""
        mode, groups = msg[1], msg[2] if len(msg) > 2 else None
        more = msg[7] if len(msg) > 7 else {}
        pid_userns = fds[-1] if more.get("pid_userns") else None   # (the last fd: its pid namespace's owner)
        fds = fds[:-1] if more.get("pid_userns") else fds
        e = 3 if more.get("enter") else 0   # (the 3 fds before: mount namespace, root, cwd it enters first)
        fds, enter = fds[:len(fds) - e], tuple(fds[len(fds) - e:])
        n = msg[5] if len(msg) > 5 else 0   # (the last n fds before: namespaces it joins before, `early`)
        fds, early = fds[:len(fds) - n], fds[len(fds) - n:]
        return spawn_in_userns(mode, fds[2] if len(fds) > 2 else None, fds[0], fds[1], groups=groups,
                               alone=msg[3] if len(msg) > 3 else None, again=len(msg) > 4 and msg[4], early=early,
                               pid_first=len(msg) > 6 and msg[6], enter=enter, pid_userns=pid_userns,
                               entered=bool(more.get("entered")), children_pid=bool(more.get("children_pid")))

    def op_spawn_alone(self, msg, fds):
        """A child stand-in started in a session or group (msg[2]) whose leader is gone (spawn_alone)."""
        return spawn_alone(msg[1], fds[1] if len(fds) > 1 else None, fds[0], msg[2])

    def op_spawn_adopted(self, msg, fds):
        """A child stand-in (channel fds[0]) our ancestor (pidfd fds[1]) adopts (spawn_adopted)."""
        return spawn_adopted(msg[1], fds[0], fds[1])

    def op_subreaper(self, msg, fds):
        """Be a child subreaper (msg[1]) or not: while a stand-in of ours is adopted (spawn_adopted)."""
        _subreaper(bool(msg[1]))
        return None

    def op_setsid(self, msg, fds):
        """A session of our own, before our children are forked (engine/sessions.py)."""
        os.setsid()
        return None

    def op_setpgid(self, msg, fds):
        """Join the process group of process msg[1] (a pid of our pid namespace; 0: a group of our own)."""
        os.setpgid(0, os.getpgid(msg[1]) if msg[1] else 0)
        return None

    def op_foreground(self, msg, fds):
        """Make the process group of process msg[2] the foreground one of our terminal (fd msg[1], our
        /dev/tty)."""
        os.tcsetpgrp(msg[1], os.getpgid(msg[2]))
        return None

    def op_zombie(self, msg, fds):
        """Become zombie msg[1] (name; ids msg[3], msg[4] in user namespace fds[0] when sent) and die
        with status msg[2] once the restorer heard we took them (engine/zombies.py): our parent
        stand-in never reaps us."""
        _, comm, status, uid, gid = msg
        zombies.become(comm, uid, gid, fds[0] if fds else None)
        self.chan.send(("ok", None))
        zombies.die(status)

    def op_kin(self, msg, fds):
        """The root: keep pidfds of stand-ins outside our group, killed if the restore does not commit."""
        self.kin += fds
        fds.clear()
        return None

    def op_groups(self, msg, fds):
        """Hold supplementary groups msg[1] before entering a user namespace that denies setgroups
        (engine/userns_groups.py)."""
        os.setgroups(msg[1])
        return None

    def op_ns(self, msg, fds):
        """A new namespace of a kind, or join fds[0]; and a (hostname, domain name or None)."""
        _, kind, action, names = msg
        if action == "new":
            kernel.unshare(NS_FLAGS[kind])
        elif action == "join":
            kernel.setns(fds[0], NS_FLAGS[kind])
        if names is not None:
            kernel.set_uts_names(*names)
        return None

    def op_personality(self, msg, fds):
        """personality(2) msg[1] (engine/schedattrs.py; before our threads: each inherits it)."""
        schedattrs.take_personality(msg[1])
        return None

    def op_loginuid(self, msg, fds):
        """Our login uid msg[1], written through fds[0], our /proc/PID/loginuid (engine/loginuid.py)."""
        loginuid.take(msg[1], fds[0])
        return None

    def op_seccomp(self, msg, fds):
        """Seccomp filters msg[1], oldest first (engine/seccomp.py): installed as the last step of
        detach when msg[2], else before our ids are taken (op_become, after it joined our user
        namespace, or as we detach)."""
        self.filters, self.filters_late = msg[1], msg[2]
        return None

    def _install_filters(self) -> None:
        if self.filters and not self.filters_late:
            seccomp.install(self.filters)
            self.filters = None

    def op_pidns_children(self, msg, fds):
        """Our children's pid namespace: fds[0], or a new one (none: restore's last step before the
        ids, in our own user namespace, which owns it)."""
        if fds:
            kernel.setns(fds[0], kernel.CLONE_NEWPID)
        else:
            kernel.unshare(kernel.CLONE_NEWPID)
        return None

    def op_timens(self, msg, fds):
        """Enter time namespace fds[0], or make one with offsets msg[1] for our children, which we
        enter too when msg[2] (engine/timens.py)."""
        if fds:
            kernel.setns(fds[0], timens.CLONE_NEWTIME)
        else:
            timens.make(msg[1], msg[2])
        return None

    def op_fsmount(self, msg, fds):
        """A new superblock made here (in our namespaces), sent back as a detached mount."""
        _, fstype, source, params, attr = msg
        mfd = fsmount(fstype, source, params, attr)
        self.chan.send(("ok", None), [mfd])
        os.close(mfd)
        for fd in fds:
            os.close(fd)
        return _ANSWERED

    def op_enter(self, msg, fds):
        """Join the mount namespace fds[0] (unless msg[1]: we are in it already, maybe inside a user
        namespace that does not own it), with root fds[1] and cwd fds[2]."""
        ns_fd, root_fd, cwd_fd = fds
        if not (len(msg) > 1 and msg[1]):
            kernel.setns(ns_fd, kernel.CLONE_NEWNS)
        os.fchdir(root_fd)
        os.chroot(".")
        os.fchdir(cwd_fd)
        return None

    def op_fds(self, msg, fds):
        """Install the process's fds at their numbers."""
        _, items = msg
        self.chan = _install_fds(self.chan, items, fds)
        self.installed.update(n for n, _ in items)
        fds.clear()
        return None

    def op_kind(self, msg, fds):
        """A step of an fd kind that must run in this process (engine/fds/): its reply fds go back."""
        _, kind, fn, args = msg
        reply, out = fdkinds.lookup(kind).standin[fn](args, fds)
        self.chan.send(("ok", reply), out)
        for fd in out:
            os.close(fd)
        for fd in fds:
            if fd not in self.installed:
                os.close(fd)
        return _ANSWERED

    def op_locks(self, msg, fds):
        """Take the process's file locks (msg[1]: its image "locks") on its installed fds or the
        ones sent (descriptions of other processes' fds)."""
        filelocks.take(msg[1], fds)
        return None

    def op_map(self, msg, fds):
        """Map the process's files."""
        mappings.map_files(fds)
        return None

    def op_shmat(self, msg, fds):
        """Attach the process's System V segments (msg[1]: its image "shm"; msg[2]: its effective
        (uid, gid) or None)."""
        from engine import shmattach   # (only a tree that attached some loads it)
        shmattach.attach(msg[1], msg[2])
        return None

    def op_exe(self, msg, fds):
        """The executable to become once detached (mappings.become_exe)."""
        self.exe_fd = fcntl.fcntl(fds[0], fcntl.F_DUPFD_CLOEXEC, 3)   # (a free number: all fds are in)
        self.installed.add(self.exe_fd)
        return None

    def op_outer_maps(self, msg, fds):
        """Our user namespace's maps in the image's frame (msg[1], msg[2]): it is nested in another,
        where /proc/self/uid_map names ids relative to the parent (engine/fds/unix_bind.py)."""
        from engine.fds import unix_bind
        unix_bind.set_outer_maps(msg[1], msg[2])
        return None

    def op_become(self, msg, fds):
        """Last request but detach: join the process's user namespace with its ids there (its
        seccomp filters installed in between: joined, we hold CAP_SYS_ADMIN there)."""
        _, uid, gid, groups, dumpable, keep_caps = msg
        if fds and self.filters:
            userns_cr.become(fds[0], None, None, None)   # (joins only)
            fds = []
        self._install_filters()
        if not fds and uid is not None and self.exe_fd is not None and mappings.can_become_exe():
            # Other ids in our own user namespace: taking them now would drop the privilege
            # setting the executable needs, so the last step of detach takes them.
            self.ids = (uid, gid, groups, dumpable, keep_caps)   # (groups None: setgroups denied, kept)
        else:
            userns_cr.become(fds[0] if fds else None, uid, gid, groups, dumpable, keep_caps)
        return None

    def op_args(self, msg, fds):
        """A piece (msg[2]) of our command line (msg[1] 0) or environment (1), sent before detach when
        they would not fit in its message (engine/procargs.py PIECE)."""
        self.args[msg[1]].append(msg[2])   # (not bytes +=: 6 MiB in 64 KiB pieces would copy ~300 MiB)
        return None

    def op_detach(self, msg, fds):
        """Become the process (its name, bounding set; umask, no_new_privs, THP-disable bit, resource
        limits, ignored signals: msg[4]): answer, wait for the commit (the root
        stand-in), close the rest, take the last steps (msg[3]: its threads' names, made last) and
        tell how they went (_detach): a non-root stand-in on its channel, the root on the lifeline."""
        self._install_filters()   # (one without a become)
        if len(msg) > 1 and msg[1] is not None:
            kernel.set_comm(msg[1])
        caps = msg[2] if len(msg) > 2 else None
        threads = msg[3] if len(msg) > 3 else ()
        bits = msg[4] if len(msg) > 4 else {}
        if "umask" in bits:
            os.umask(bits["umask"])   # (now: files the restore made here followed the restorer's)
        if bits.get("no_new_privs"):
            kernel.set_no_new_privs()   # (before the threads: each inherits it)
        if bits.get("thp_disable"):
            thp.take()   # (its mm's: the threads share it, an exec keeps it)
        if bits.get("child_subreaper"):
            _subreaper(True)   # (after its children were made: their makers were the restore's)
        late_limits = None
        if bits.get("rlimits"):
            # (ours were the restorer's, its NOFILE raised for the restore: a runtime's 1024 lost;
            # an NPROC, DATA or AS below ours taken once the threads are made)
            limits, late_limits = threadsteps.limits_before(bits["rlimits"])
            kernel.set_rlimits(limits)
        if caps is not None:
            # (now: joining a user namespace gave a full bounding set; it never raises what we hold)
            kernel.caps_before_bounding(caps)
            kernel.drop_bounding(caps["bnd"])
        # Clear PDEATHSIG before answering: the restorer exits once the root has answered. (The
        # process's own is set by _detach, after its ids: changing them clears it.)
        kernel.set_pdeathsig(0)
        self.chan.send(("ok", None))
        report = fds[0] if fds else self.chan.fileno()
        if fds:  # the root stand-in: the tree lives only once the restore commits
            _await_commit(fds[0], self.kin)
        _detach(self.installed, report, self.exe_fd, self.ids, caps, threads, bits.get("sig_ignored", 0),
                self.filters, bits.get("pdeathsig", 0),
                (bits.get("sig_blocked", 0), bits.get("sig_pending", 0), bits.get("sig_pending_shared", 0)),
                {k: bits[k] for k in ("posix_timers", "itimers", "timer_sig_caught") if k in bits}, late_limits,
                tuple(b"".join(a) for a in self.args) if bits.get("args") == procargs.SENT else bits.get("args"))
        return None
