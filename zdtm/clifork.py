"""Run an engine verb (`mntcr dump|restore ...`) in a forked child of the runner, not a fresh interpreter.

A fresh `python -S -m engine.cli dump` pays for the interpreter's start-up and
for importing the engine every time: ~0.1 s on the host, 3-5 s in a TCG guest
(where each import reads and stats over 9p, emulated), twice per item. A child
forked from a runner that has imported the verb's module (`prepare`) starts
the verb at once. It is still a process of its own that runs the CLI's own
`main` (its argument parsing, its one-line errors, its exit status) and ends
with it: a crash or a leaked fd ends with the verb, and the runner sees an
exit status and stdout/stderr, as from the command line.

What the child gets is what `subprocess.run(engine.cli.command(...),
stdin=DEVNULL, close_fds=True, cwd=CWD)` gave the fresh interpreter: stdin on
/dev/null, stdout and stderr captured (in memory files: a process the verb
leaves running, a stand-in, can hold no pipe the runner waits on), no other
fd, the runner's environment, the signal dispositions an interpreter starts
with (handlers the runner installed are reset; SIGPIPE stays ignored).
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import signal
import sys

# The modules each verb imports (engine/cli.py's _cmd_*): imported in the runner once, so that
# a child starts with them loaded.
_VERB_MODULES = {"dump": ("engine.cli", "engine.dump"), "restore": ("engine.cli", "engine.restore")}


_KEPT: list = []


class Timeout(Exception):
    """The verb did not finish in time; it was killed."""


def prepare(verb: str) -> None:
    """Import what `verb` needs here, in the runner (once; later calls cost nothing)."""
    for name in _VERB_MODULES.get(verb, ("engine.cli",)):
        importlib.import_module(name)


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _child(args: list[str], cwd: str, out: int, err: int) -> None:
    """In the forked child: the fresh interpreter's fds, signals and cwd, then engine.cli.main. Never returns."""
    code = 125
    # Nothing the runner made may be freed here: a file object finalized in the child closes its
    # fd number, by then another file of the verb's. The collector leaves frozen objects alone, and
    # the runner's std streams (which a caller may have made with closefd) stay referenced.
    gc.disable()
    gc.freeze()
    _KEPT.extend((sys.stdin, sys.stdout, sys.stderr))
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, 1 << 20)
        sys.stdin = open(0, "r", closefd=False)   # noqa: SIM115 - the process's own, never closed
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        for sig in signal.valid_signals():
            try:
                if callable(signal.getsignal(sig)):
                    signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass   # (SIGKILL, SIGSTOP and the real-time signals Python does not name)
        signal.signal(signal.SIGINT, signal.default_int_handler)   # as an interpreter starts
        os.chdir(cwd)
        from engine import cli
        sys.argv = [cli.__file__, *args]
        code = cli.main()
    except SystemExit as e:   # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - the child must never return into the runner
        try:
            os.write(2, f"mntcr: {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run(args: list[str], timeout: float | None, cwd: str) -> tuple[int, bytes, bytes]:
    """Run `mntcr ARGS...` in a forked child in `cwd`: (exit status, stdout, stderr).

    A child killed by a signal gives the negative signal number, as subprocess does.
    Raises Timeout after killing the child when it runs longer than `timeout` seconds.
    """
    prepare(args[0] if args else "")
    out = os.memfd_create("mntcr-stdout", os.MFD_CLOEXEC)
    err = os.memfd_create("mntcr-stderr", os.MFD_CLOEXEC)
    try:
        sys.stdout.flush()   # else the child would write out what the runner had buffered
        sys.stderr.flush()
        # SIGINT held over the fork: a Ctrl-C there must not run the runner's handler in the child.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            _child(args, cwd, out, err)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        status = _wait(pid, timeout)
        return os.waitstatus_to_exitcode(status), _read(out), _read(err)
    finally:
        os.close(out)
        os.close(err)


def _wait(pid: int, timeout: float | None) -> int:
    """Wait for child `pid`; its wait status. Kill it and raise Timeout after `timeout` seconds."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        try:
            ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        except BaseException:
            os.kill(pid, signal.SIGKILL)   # Ctrl-C in the runner: the verb goes with it
            os.waitpid(pid, 0)
            raise
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise Timeout(f"killed after {timeout:g}s")
        return os.waitpid(pid, 0)[1]
    finally:
        os.close(pidfd)
