"""Run a Python function in a forked child and get its result back.

Entering a mount namespace (setns) or unsharing one changes the calling
process for good, and setns needs a single-threaded caller: both are done in a
forked child, never in the caller. The child's return value (or exception)
comes back pickled over a pipe.
"""

from __future__ import annotations

import os
try:   # the C pickler pickle.py re-exports; pickle.py's own Python (and its re) costs ~4.6 M instructions
    import _pickle as pickle
except ImportError:   # an interpreter without it
    import pickle
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import sys

from engine import kernel


class ChildError(Exception):
    """The child raised; carries the child's exception text and traceback."""

    def __init__(self, exc: BaseException | None, text: str, tb: str):
        self.exc = exc
        self.text = text
        self.tb = tb
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.exc, self.text, self.tb), self.__dict__)


def format_tb(e: BaseException, limit: int | None = None) -> str:
    """e's traceback as traceback.format_exc writes it (the first `limit` frames), without the
    source lines: a helper that left the host's root could not read them, and the traceback
    module (linecache, tokenize) is ~4% of a small dump's or restore's CPU time to import."""
    frames = []
    tb = e.__traceback__
    while tb is not None and (limit is None or len(frames) < limit):
        code = tb.tb_frame.f_code
        frames.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
        tb = tb.tb_next
    name = type(e).__qualname__
    if type(e).__module__ not in ("builtins", "__main__"):
        name = f"{type(e).__module__}.{name}"
    text = str(e)
    return ("Traceback (most recent call last):\n" if frames else "") + "".join(frames) + \
        (f"{name}: {text}\n" if text else f"{name}\n")


def signame(sig: int) -> str:
    """The name signal.Signals gives signal number `sig` (of aliases the first by name: SIGABRT, not
    SIGIOT), from _signal's constants; the number itself for one without a name."""
    return min((k for k, v in vars(signal).items() if k.startswith("SIG") and "_" not in k and v == sig),
               default=str(sig))


def read_all(fd: int) -> bytes:
    """Everything fd `fd` reads until its end of file."""
    chunks = []
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


# Helpers forked with `then` and not reaped yet: each holds copies of this process's fds, which
# are not another process's (engine/fds/pipe_outside.py `holders` leaves them out).
going_on: set[int] = set()


def run(fn, *args, unshare_flags: int = 0, private: bool = True, pass_fds: tuple[int, ...] = (),
        then=None, then_args: tuple = (), **kwargs):
    """Call ``fn(*args, **kwargs)`` in a forked child and return its result.

    With ``unshare_flags`` containing CLONE_NEWNS the child first gets its own
    mount namespace, made recursively private when ``private`` (so nothing it
    mounts reaches the caller's namespace). An exception in the child is
    re-raised here: OSError and ValueError keep their type (so callers can
    report them as one line), anything else becomes ChildError.

    With ``then``, a child that answered goes on with ``then(*then_args)`` (its further work for
    the caller, over a channel of theirs) instead of exiting, and (result, child pid) is returned:
    the caller reaps it (and discards its pid from `going_on`). A child that raised exits as without.
    """
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    me = kernel.pidfd_open(os.getpid())
    # Ctrl-C during the fork must not hit the child's after-fork hooks (a stray "Exception ignored"
    # traceback): SIGINT waits until the child has its default action (die, silently) back.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pid = os.fork()
    if pid == 0:  # child
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            # A helper never outlives its caller (a killed dump must not leave one spinning).
            kernel.die_with_parent(me, signal.SIGKILL)
            os.close(rfd)
            if unshare_flags:
                kernel.unshare(unshare_flags)
                if unshare_flags & kernel.CLONE_NEWNS and private:
                    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
            code, data = _outcome(fn, args, kwargs)
        except BaseException as e:  # noqa: BLE001 - (unshare or mount failed) back to the parent
            code, data = _outcome(_reraise, (e,), {})
        try:
            write_all(wfd, data)
            if then is not None and code == 0:
                os.close(wfd)   # (the caller reads up to this end of file)
                then(*then_args)
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(wfd)
    os.close(me)
    status, data = None, b""
    try:
        data = read_all(rfd)
    except BaseException:
        if then is not None:
            os.kill(pid, signal.SIGKILL)   # (it would wait for the caller's work forever)
        raise
    finally:
        os.close(rfd)
        if then is None or not data:
            _, status = os.waitpid(pid, 0)
    if not data:
        if os.WIFSIGNALED(status):
            raise ChildError(None, f"child killed by {signame(os.WTERMSIG(status))}", "")
        raise ChildError(None, f"child exited with status {os.waitstatus_to_exitcode(status)} and no result", "")
    kind, payload = pickle.loads(data)
    if then is not None:
        if kind != "ok":
            os.waitpid(pid, 0)   # (it exits without going on to `then`)
        else:
            going_on.add(pid)
            return payload, pid
    if kind == "ok":
        return payload
    exc, text, tb = payload
    if isinstance(exc, (OSError, ValueError)):
        raise exc
    raise ChildError(exc, text, tb)


def _reraise(e: BaseException):
    raise e


def _outcome(fn, args, kwargs) -> tuple[int, bytes]:
    """In the child: (exit code, the pickled ("ok", result) or ("err", (exception or None, text,
    traceback))) of fn(*args, **kwargs)."""
    try:
        result = ("ok", fn(*args, **kwargs))
        code = 0
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        code = 1
        try:
            pickle.loads(pickle.dumps(e))  # an exception that cannot be rebuilt goes back as text
            exc = e
        except Exception:
            exc = None
        result = ("err", (exc, f"{type(e).__name__}: {e}", format_tb(e)))
    try:
        return code, pickle.dumps(result)
    except Exception as e:  # noqa: BLE001
        return 1, pickle.dumps(("err", (None, f"unpicklable result: {e}", "")))


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to fd `fd` (a pipe or file may take it in parts)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def in_mount_ns(fn, *args, extra_flags: int = 0, **kwargs):
    """Run ``fn`` in a forked child inside a fresh, recursively private mount namespace."""
    return run(fn, *args, unshare_flags=kernel.CLONE_NEWNS | extra_flags, **kwargs)
