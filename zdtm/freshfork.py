"""Children of the runner that start like a fresh interpreter, forked instead: engine verbs, the ns keeper.

A fresh `python -S -m engine.cli dump` pays for the interpreter's start-up and
for importing what it runs every time: ~0.1 s on the host, 2-5 s in a TCG
guest (where each import reads and stats over 9p, emulated). Per item the
runner started three (the ns flavor's keeper, dump, restore). A child forked
from a runner that has imported the modules starts at once. It is still a
process of its own that ends with its work: a crash or a leaked fd ends with
it, and the runner sees an exit status and what it printed.

What the child gets is what `subprocess` gave the fresh interpreter (stdin,
stdout, stderr as asked, `close_fds`, `pass_fds`, `cwd`, `env`): those fds and
no other, that environment, the signal dispositions an interpreter starts with
(handlers the runner installed are reset; SIGPIPE stays ignored). And it shows
the command line and environment the interpreter showed in /proc/PID/cmdline
and /proc/PID/environ (prctl PR_SET_MM), and so do the processes it forks
(stand-ins): the leak guard knows ours by them (zdtm/leakguard.py: the
session's mark in the environment, the module in the command line), and `ps`
says what each is. A forked child would otherwise show the runner's (and not
the session mark, which the runner put in its environment after it started).
PR_SET_MM needs CAP_SYS_RESOURCE: a VM guest's root has it; a runner without
it (a container's root may lack it: this project's CI host does) starts fresh
interpreters, as before (`forkable`): slower, the same otherwise.

- `run_verb(args, timeout, cwd)`: engine.cli's own `main` (its argument
  parsing, its one-line errors, its exit status), stdout and stderr captured
  in memory files (a stand-in the verb leaves running holds no pipe the runner
  waits on);
- `spawn(target, ...)`: `target()` in a child; a `Child` to wait for or kill.
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import signal
import subprocess
import sys

# The modules each verb imports (engine/cli.py's _cmd_*): imported in the runner once, so that
# a child starts with them loaded.
_VERB_MODULES = {"dump": ("engine.cli", "engine.dump"), "restore": ("engine.cli", "engine.restore")}
_KEPT: list = []


_CAP_SYS_RESOURCE = 24


def forkable() -> bool:
    """Whether this runner can show a child's command line and environment (CAP_SYS_RESOURCE in
    its effective set, which PR_SET_MM needs). Without it, children are fresh interpreters, as
    before: slower, otherwise the same."""
    global _FORKABLE
    if _FORKABLE is None:
        with open("/proc/self/status") as f:
            eff = next((line.split()[1] for line in f if line.startswith("CapEff:")), "0")
        _FORKABLE = bool(int(eff, 16) >> _CAP_SYS_RESOURCE & 1)
    return _FORKABLE


_FORKABLE: bool | None = None


def prepare(verb: str) -> None:
    """Import what `verb` needs here, in the runner (once; later calls cost nothing)."""
    for name in _VERB_MODULES.get(verb, ("engine.cli",)):
        importlib.import_module(name)


_PR_SET_MM = 35
_PR_SET_MM_ARG_START, _PR_SET_MM_ARG_END, _PR_SET_MM_ENV_START, _PR_SET_MM_ENV_END = 8, 9, 10, 11


def _show(start: int, end: int, strings: list[str]) -> None:
    """Point the kernel's record of this process's argv (`start`, `end`: the ARG or ENV pair of
    PR_SET_MM) at a copy of `strings`, NUL-terminated, as exec would have laid them out."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(b"".join(os.fsencode(a) + b"\0" for a in strings) or b"\0")
    _KEPT.append(buf)   # the kernel reads it for as long as the process (and its forks) live
    lo = ctypes.addressof(buf)
    hi = lo + len(buf.raw) - 1   # len(raw) counts create_string_buffer's extra NUL
    # The kernel keeps start <= end after each call: move the side that keeps it so first.
    for first, second in (((start, lo), (end, hi)), ((end, hi), (start, lo))):
        if libc.prctl(_PR_SET_MM, first[0], ctypes.c_ulong(first[1]), 0, 0) == 0:
            if libc.prctl(_PR_SET_MM, second[0], ctypes.c_ulong(second[1]), 0, 0) == 0:
                return
    err = ctypes.get_errno()
    raise OSError(err, f"prctl(PR_SET_MM) showing {strings[:1]}...: {os.strerror(err)}")


def _fresh(fds: tuple[int, int, int], pass_fds: tuple[int, ...], cwd: str, sigint, argv: list[str],
           env: dict[str, str]) -> None:
    """In a forked child: stdin/stdout/stderr from `fds`, no other fd but `pass_fds`, an
    interpreter's signal dispositions (SIGINT: `sigint`), cwd `cwd`, environment `env`, and
    `argv` and `env` shown as its command line and environment."""
    # Nothing the runner made may be freed here: a file object finalized in the child closes its
    # fd number, by then another file of the child's. The collector leaves frozen objects alone, and
    # the runner's std streams (which a caller may have made with closefd) stay referenced.
    gc.disable()
    gc.freeze()
    _KEPT.extend((sys.stdin, sys.stdout, sys.stderr))
    # dup2 onto 0-2 in two steps: a source may itself be 0, 1 or 2
    high = [os.dup(fd) for fd in fds]
    for n, fd in enumerate(high):
        os.dup2(fd, n)
    keep = sorted({0, 1, 2, *pass_fds})
    low = 0
    for n in keep + [1 << 20]:
        if n > low:
            os.closerange(low, n)
        low = n + 1
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    sys.stdin = open(0, "r", closefd=False)   # noqa: SIM115 - the process's own, never closed
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass   # (SIGKILL, SIGSTOP and the real-time signals Python does not name)
    signal.signal(signal.SIGINT, sigint)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _show(_PR_SET_MM_ARG_START, _PR_SET_MM_ARG_END, argv)
    _show(_PR_SET_MM_ENV_START, _PR_SET_MM_ENV_END, [f"{k}={v}" for k, v in env.items()])
    gc.enable()


def _fork(target, fds: tuple[int, int, int], pass_fds: tuple[int, ...], cwd: str, sigint, argv, env) -> int:
    """Fork; the child runs `target()` after `_fresh` and exits with its return value. The child's pid."""
    sys.stdout.flush()   # else the child would write out what the runner had buffered
    sys.stderr.flush()
    # SIGINT held over the fork: a Ctrl-C there must not run the runner's handler in the child.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return pid
    code = 125
    try:
        # (the mask is restored in _fresh's wake: SIGINT gets its handler first)
        _fresh(fds, pass_fds, cwd, sigint, argv, env)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        code = target()
    except SystemExit as e:   # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - the child must never return into the runner
        try:
            os.write(2, f"{type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


class Child:
    """A forked child: `pid`, `stdin` and `stdout` (files of pipes to it, or None), `wait`, `poll`, `kill`."""

    def __init__(self, pid: int, stdin=None, stdout=None):
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status (negative: killed by that signal); subprocess.TimeoutExpired after `timeout` seconds."""
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(_wait(self.pid, timeout))
        return self.returncode

    def poll(self) -> int | None:
        """Its exit status when it has ended (reaped then), else None (Popen.poll's meaning)."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it, unless it has been waited for."""
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def spawn(target, argv: list[str], env: dict[str, str], *, stdin: int | None, stdout: int | None, stderr: int,
          cwd: str, pass_fds: tuple[int, ...] = (), sigint=signal.SIG_DFL) -> Child:
    """`target()` in a forked child started like a fresh interpreter running `argv` in `env`; its exit
    status is what target returns. `stdin`/`stdout`: an fd to give it, or None for a pipe
    (`Child.stdin`/`.stdout`). Without `forkable()`: a subprocess.Popen of `argv`, as a `Child` (`_Fresh`)."""
    if not forkable():
        return _Fresh(subprocess.Popen(argv, env=env, stdin=subprocess.PIPE if stdin is None else stdin,
                                       stdout=subprocess.PIPE if stdout is None else stdout, stderr=stderr,
                                       pass_fds=pass_fds, cwd=cwd))
    to_child = from_child = None   # (read end, write end) of the pipes asked for
    if stdin is None:
        to_child = os.pipe()
        stdin = to_child[0]
    if stdout is None:
        from_child = os.pipe()
        stdout = from_child[1]
    try:
        pid = _fork(target, (stdin, stdout, stderr), pass_fds, cwd, sigint, argv, env)
    except BaseException:
        for fd in (to_child or ())[1:] + (from_child or ())[:1]:
            os.close(fd)
        raise
    finally:
        for fd in (to_child or ())[:1] + (from_child or ())[1:]:
            os.close(fd)
    return Child(pid, os.fdopen(to_child[1], "wb") if to_child else None,
                 os.fdopen(from_child[0], "rb") if from_child else None)


class _Fresh(Child):
    """A fresh interpreter (subprocess.Popen) as a `Child`: waited for on a pidfd. Popen.wait with a
    timeout looks every 0.5 ms doubling to 50 ms: a verb's end was seen up to 50 ms late (a ~65 ms
    small restore took 114 ms in benchmarks/backends.py). Popen reaps it, so it never waits again."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(proc.pid, proc.stdin, proc.stdout)
        self.proc = proc

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status (negative: killed by that signal); subprocess.TimeoutExpired after `timeout` seconds."""
        if self.returncode is None:
            _exited(self.pid, timeout)
            self.returncode = self.proc.wait()
        return self.returncode

    def poll(self) -> int | None:
        """Its exit status when it has ended (reaped then), else None (Popen.poll's meaning)."""
        if self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it, unless it has been waited for."""
        if self.returncode is None:
            self.proc.kill()


def project_env(root: str) -> dict[str, str]:
    """The runner's environment with `root` first on PYTHONPATH: what a `python -m` of the project got."""
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _verb(args: list[str]) -> int:
    from engine import cli
    if "engine.strategy" in sys.modules:
        # chosen from MNTCR_STRATEGY when first asked: a fresh interpreter reads it now
        sys.modules["engine.strategy"].reset()
    if "engine.restore" in sys.modules:
        sys.modules["engine.restore"].read_environment()   # (its fault step, read at import)
    sys.argv = [cli.__file__, *args]
    return cli.main()


def run_verb(args: list[str], timeout: float | None, cwd: str) -> tuple[int, bytes, bytes]:
    """Run `mntcr ARGS...` (engine.cli) in a forked child in `cwd` (the project root), shown as
    engine.cli.command(ARGS...): (exit status, stdout, stderr).

    A child killed by a signal gives the negative signal number, as subprocess does.
    Raises subprocess.TimeoutExpired after killing the child when it runs longer than `timeout`
    seconds. Without `forkable()`, a fresh interpreter runs that command line.
    """
    if forkable():
        prepare(args[0] if args else "")
    from engine import cli, content
    out = os.memfd_create("mntcr-stdout", os.MFD_CLOEXEC)
    err = os.memfd_create("mntcr-stderr", os.MFD_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        child = spawn(lambda: _verb(args), cli.command(*args), project_env(cwd), stdin=null, stdout=out,
                      stderr=err, cwd=cwd, sigint=signal.default_int_handler)
        try:
            code = child.wait(timeout)
        except BaseException:   # a timeout, or Ctrl-C in the runner: the verb goes with it
            child.kill()
            child.wait()
            raise
        return code, content.read_from_start(out), content.read_from_start(err)
    finally:
        for fd in (out, err, null):
            os.close(fd)


def _wait(pid: int, timeout: float | None) -> int:
    """Wait for child `pid`: its wait status; subprocess.TimeoutExpired (it still runs) after `timeout` seconds."""
    _exited(pid, timeout)
    return os.waitpid(pid, 0)[1]


def _exited(pid: int, timeout: float | None) -> None:
    """Return once child `pid` has exited (not reaped); subprocess.TimeoutExpired after `timeout` seconds."""
    if timeout is not None:
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(max(0, int(timeout * 1000))):
                raise subprocess.TimeoutExpired(f"pid {pid}", timeout)
        finally:
            os.close(pidfd)
