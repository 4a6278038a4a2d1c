"""engine.content's tar runner (posix_spawn, not subprocess) and its archive digests (builtin sha256
under a MiB, OpenSSL's above): what the callers rely on, checked against the real outcome."""

import hashlib
import os
import signal

import pytest

from engine import content


def _sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_run_returns_status_and_both_outputs():
    code, out, err = content.run(_sh("echo out; echo err >&2; exit 3"))
    assert (code, out, err) == (3, b"out\n", b"err\n")


def test_run_stdin_fd_and_stdout_fd(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(b"abc\n" * 1000)
    with open(src, "rb") as i, open(dst, "wb") as o:
        code, out, err = content.run(["/bin/cat"], stdin=i.fileno(), stdout=o.fileno())
    assert (code, out, err) == (0, b"", b"")
    assert dst.read_bytes() == src.read_bytes()


def test_run_stdin_defaults_to_dev_null():
    assert content.run(["/bin/cat"])[:2] == (0, b"")


def test_run_large_output_does_not_block():
    # More than a pipe holds (64 KiB): the output goes to a memory file, read after the exit.
    code, out, _ = content.run(_sh("head -c 1000000 /dev/zero"))
    assert code == 0 and len(out) == 1000000


def test_run_passes_only_pass_fds():
    inherited = os.open("/dev/null", os.O_RDONLY)   # not close-on-exec: subprocess's close_fds closed it too
    os.set_inheritable(inherited, True)
    passed = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        code, out, _ = content.run(_sh("ls /proc/self/fd"), pass_fds=(passed,))
        fds = {int(x) for x in out.split()}
        assert passed in fds and inherited not in fds, fds
        assert os.get_inheritable(passed) is False   # as it was before the spawn
        content.run(["/bin/true"], pass_fds=(inherited,))
        assert os.get_inheritable(inherited) is True
    finally:
        os.close(inherited)
        os.close(passed)


def test_run_restores_sigpipe_default():
    # Python ignores SIGPIPE, and an ignored signal stays ignored through exec: tar must die of it
    # as from a shell, as subprocess arranged.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    code, out, _ = content.run(_sh("grep SigIgn /proc/self/status"))
    assert code == 0
    assert not int(out.split()[1], 16) & (1 << (signal.SIGPIPE - 1))


@pytest.mark.parametrize("closed", ["0", "0 1", "0 1 2"])
def test_run_with_our_stdio_closed(tmp_path, closed):
    """A caller whose fds 0-2 are closed (a verb started with `<&-`): the memory files for the
    program's outputs land there unless moved, and the dup2 of the fd before them overwrote them
    (the program's output went to its stdin, its error message nowhere)."""
    script = tmp_path / "run.py"
    result = tmp_path / "result"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from engine import content
r, w = os.pipe()
os.write(w, b"in"); os.close(w)
r = os.dup2(r, 10)
for fd in ({closed.replace(" ", ", ")},):
    os.close(fd)
a = content.run(["/bin/cat"], stdin=10)
b = content.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
open({str(result)!r}, "w").write(repr((a, b)))
""")
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/usr/bin/python3", ["python3", str(script)])
        finally:
            os._exit(127)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert result.read_text() == repr(((0, b"in", b""), (3, b"out\n", b"err\n")))


def test_run_env():
    code, out, _ = content.run(_sh('echo "$LC_ALL"'), env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert (code, out) == (0, b"C\n")


def test_run_missing_program_raises():
    with pytest.raises(FileNotFoundError):
        content.run(["/nonexistent/tar"])


@pytest.mark.parametrize("size", [0, 1, content.BIG - 1, content.BIG, content.BIG + 12345])
def test_digest_is_sha256_on_both_sides_of_big(tmp_path, size):
    p = tmp_path / "a"
    data = os.urandom(size)
    p.write_bytes(data)
    assert content.digest_path(str(p)) == {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
