"""engine/pendingsigs.py: blocked pending signals read from a stopped process and raised again."""

import os
import signal
import threading
import time

from engine import kernel, pendingsigs

USR1, HUP, CHLD = 1 << (signal.SIGUSR1 - 1), 1 << (signal.SIGHUP - 1), 1 << (signal.SIGCHLD - 1)


def _stopped_child(body) -> int:
    """A child that runs `body` and stops itself; its pid once it is stopped."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
            os.kill(os.getpid(), signal.SIGSTOP)
            time.sleep(60)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    return pid


def _end(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _mask(pid: int, key: str) -> int:
    return int(kernel.proc_status(pid, {key})[key], 16)


def test_read_keeps_blocked_pending_and_drops_sigchld_without_a_zombie():
    def body():
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD])
        os.kill(os.getpid(), signal.SIGUSR1)                       # the process's queue
        signal.pthread_kill(threading.get_ident(), signal.SIGHUP)  # its main thread's
        os.kill(os.getpid(), signal.SIGCHLD)
    pid = _stopped_child(body)
    try:
        blocked = _mask(pid, "SigBlk")
        assert pendingsigs.read(pid, blocked) == {"sig_pending": HUP, "sig_pending_shared": USR1}
        assert pendingsigs.read(pid, blocked, zombie_child=True) == {"sig_pending": HUP,
                                                                     "sig_pending_shared": USR1 | CHLD}
        # one a thread does not block is on its way to that thread: not kept
        assert pendingsigs.read(pid, blocked, [blocked & ~USR1]) == {"sig_pending": HUP}
    finally:
        _end(pid)


def test_take_leaves_them_pending():
    def body():
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGHUP])
        pendingsigs.take(HUP | CHLD, USR1, USR1 | HUP)   # (SIGCHLD not blocked: not raised)
    pid = _stopped_child(body)
    try:
        assert _mask(pid, "SigPnd") == HUP
        assert _mask(pid, "ShdPnd") == USR1
    finally:
        _end(pid)


def test_signals():
    assert pendingsigs.signals(USR1 | HUP) == [signal.SIGHUP, signal.SIGUSR1]
