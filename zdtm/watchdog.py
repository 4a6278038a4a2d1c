"""The runner's watchdog: kills the trees a runner process started when it dies without its teardown.

A tree the runner starts or restores is pid 1 of its own pid namespace (or a holder that
ignores the signals a `kill -TERM` of the runner's process group sends): when the runner is
killed (a CI job's timeout, `kill` of pytest), its fixtures' teardown never runs and the tree,
with its mount namespace and its mounts, stays until someone kills it by hand.

`guard(pid)` hands a pidfd of the tree's root to a watchdog process started on the first call,
in a session of its own (a signal to the runner's group does not reach it). It holds one end of
a socket whose other end only the runner process holds (close-on-exec, and the runner's forked
children close every fd they are not given: zdtm/freshfork.py). When that end closes (the runner
exited, however), the watchdog SIGKILLs each guarded root still alive, and its descendants, then
exits. A root that ends on its own is forgotten (its pidfd turns readable). A runner that ends
normally has killed its trees: the watchdog finds none alive and exits.

The runner process keeps a pidfd of each root too: `left_running` names those still alive when an
item is over (the leak guard of zdtm/item.py): a restored stand-in shows the dumped process's
command line and environment, so the session's leftover scan cannot tell it from a host process.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_runner_end: socket.socket | None = None
_owner_pid = 0   # the process that started the watchdog (a forked child must start its own)
_enabled = True
# (pidfd, pid) of every root guarded by this process since the last `left_running`: a root still
# alive once its item is over is one the runner forgot to stop (zdtm/item.py reports it).
_held: list[tuple[int, int]] = []


def disable() -> None:
    """No watchdog in this process: where the runner's death ends its trees anyway (a VM guest's
    item runner: the VM goes with it), an interpreter started for it only costs the item time."""
    global _enabled
    _enabled = False


def guard(pid: int) -> None:
    """Have the watchdog SIGKILL the tree of `pid` if this process dies while it is alive."""
    global _runner_end, _owner_pid
    if not _enabled:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return   # gone already: nothing to guard
    try:
        if _runner_end is None or _owner_pid != os.getpid():
            _runner_end, _owner_pid = _start(), os.getpid()
        socket.send_fds(_runner_end, [b"p"], [pidfd])
    except BaseException:
        os.close(pidfd)
        raise
    if len(_held) >= 64:   # (callers that never ask, e.g. a long differential run: keep the live ones)
        _held[:] = _prune(_held)
    _held.append((pidfd, pid))


def _prune(held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`held` without the roots that have exited (their pidfds closed)."""
    poll = select.poll()
    for pidfd, _ in held:
        poll.register(pidfd, select.POLLIN)
    ended = {fd for fd, _ in poll.poll(0)}
    for fd in ended:
        os.close(fd)
    return [(pidfd, pid) for pidfd, pid in held if pidfd not in ended]


def left_running(grace: float = 15.0) -> list[int]:
    """The pids of the roots `guard`ed by this process since the last call that are still alive after
    up to `grace` seconds (a killed tree's root ends once its pid namespace's last process is reaped);
    forgets them all."""
    held, _held[:] = list(_held), []
    poll = select.poll()
    for pidfd, _ in held:
        poll.register(pidfd, select.POLLIN)   # (readable once the process has exited)
    deadline = time.monotonic() + grace
    alive = {pidfd for pidfd, _ in held}
    try:
        while alive:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poll.poll(left * 1000):
                alive.discard(fd)
                poll.unregister(fd)
        return [pid for pidfd, pid in held if pidfd in alive]
    finally:
        for pidfd, _ in held:
            os.close(pidfd)


def _start() -> socket.socket:
    """Start the watchdog; the runner's end of its socket."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        subprocess.Popen([sys.executable, "-S", "-m", "zdtm.watchdog", str(theirs.fileno())],
                         pass_fds=(theirs.fileno(),), start_new_session=True, cwd=_PROJECT_ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    finally:
        theirs.close()
    return mine


def _pid_of(pidfd: int) -> int | None:
    """The pid a pidfd refers to (its fdinfo), None once the process is gone."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                pid = int(line.split()[1])
                return pid if pid > 0 else None
    return None


def _kill(pidfd: int) -> None:
    """SIGKILL the process of `pidfd` and its descendants (listed first: once the root of a pid
    namespace dies the kernel kills the rest, but a root that is not one leaves them)."""
    from zdtm.snapshot import tree_pids
    pid = _pid_of(pidfd)
    if pid is None:
        return
    # (pidfds of the descendants before the root dies: their pids, freed as the root's death takes
    # them, could name a process of the host by the time a kill by number would be sent)
    rest = []
    for p in tree_pids(pid)[1:]:
        try:
            rest.append(os.pidfd_open(p))
        except ProcessLookupError:
            pass
    try:
        for fd in [pidfd, *rest]:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        for fd in rest:
            os.close(fd)


def serve(sock: socket.socket) -> None:
    """The watchdog's loop: take pidfds from `sock`, forget those whose process ended, and when the
    runner's end closes kill the ones still alive."""
    guarded: set[int] = set()
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    while True:
        for fd, _ in poll.poll():
            if fd in guarded:   # that root ended on its own
                poll.unregister(fd)
                guarded.discard(fd)
                os.close(fd)
                continue
            msg, fds, _, _ = socket.recv_fds(sock, 16, 16)
            for pidfd in fds:
                guarded.add(pidfd)
                poll.register(pidfd, select.POLLIN)
            if not msg:   # the runner is gone
                for pidfd in guarded:
                    _kill(pidfd)
                return


def main(argv: list[str]) -> int:
    """`python -m zdtm.watchdog FD`: serve the socket at FD (started by `guard`)."""
    serve(socket.socket(fileno=int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
