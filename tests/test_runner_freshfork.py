"""zdtm/freshfork.py: an engine verb in a forked child gives what the fresh interpreter gave."""

import os
import signal
import subprocess
import sys
import time

import pytest

from engine import cli
from zdtm import freshfork

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_error_is_one_line_and_exit_2(tmp_path):
    code, out, err = freshfork.run_verb(["show", str(tmp_path / "no-such-mountinfo")], 60, cwd=PROJECT)
    assert code == cli.EXIT_ERROR
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mntcr show: "), err


def test_usage_error_exits_2():
    code, _, err = freshfork.run_verb(["dump", "--no-such-option"], 60, cwd=PROJECT)
    assert code == 2
    assert b"mntcr dump: error: " in err


def test_stdout_captured():
    code, out, err = freshfork.run_verb(["show", f"pid:{os.getpid()}"], 60, cwd=PROJECT)
    assert code == 0, err
    assert out.startswith(b"ID TARGET"), out[:200]


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        return bool(int(next(ln.split()[1] for ln in f if ln.startswith("CapEff:")), 16) >> 24 & 1)


def _fake_main(monkeypatch, fn):
    """The fork path with engine.cli.main replaced (the child runs it as the runner has it: patched
    here, it is patched there). Without CAP_SYS_RESOURCE (the runner then starts fresh interpreters)
    the fork path runs all the same, minus showing the command line (its own test needs the cap)."""
    monkeypatch.setattr(freshfork, "_FORKABLE", True)
    if not _has_cap_sys_resource():
        monkeypatch.setattr(freshfork, "_show", lambda *_: None)
    monkeypatch.setattr(cli, "main", fn)


def test_child_starts_like_a_fresh_interpreter(monkeypatch, tmp_path):
    def report():
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
        print(fds[:3], os.getcwd(), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
              signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN, sys.stdin.read() == "", sys.argv[1:])
        return 0
    _fake_main(monkeypatch, report)
    leaked = os.open(tmp_path, os.O_RDONLY)   # inheritable: the child must not hold it all the same
    os.set_inheritable(leaked, True)
    old = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        sys.stdout.write("runner's unflushed text")
        code, out, err = freshfork.run_verb(["check", "x"], 60, cwd=str(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, old)
        os.close(leaked)
    assert code == 0, err
    # fds 0-2 and the one listdir reads /proc/self/fd through
    assert out.decode() == f"[0, 1, 2] {tmp_path} True True True ['check', 'x']\n"


def test_exit_status_and_signal(monkeypatch):
    _fake_main(monkeypatch, lambda: 7)
    assert freshfork.run_verb(["check"], 60, cwd=PROJECT)[0] == 7
    _fake_main(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert freshfork.run_verb(["check"], 60, cwd=PROJECT)[0] == -signal.SIGKILL


def test_timeout_kills_the_child(monkeypatch, tmp_path):
    mark = tmp_path / "pid"

    def hang():
        mark.write_text(str(os.getpid()))
        time.sleep(60)
    _fake_main(monkeypatch, hang)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        freshfork.run_verb(["check"], 1.0, cwd=PROJECT)
    assert time.monotonic() - started < 20
    assert not os.path.exists(f"/proc/{mark.read_text()}")


def test_runner_garbage_never_closes_the_verbs_fds(monkeypatch):
    """A file object the runner dropped in a cycle (not yet collected) holds an fd number the child
    reuses: collected in the child, it would close the verb's file."""
    import gc

    class Cycle:
        pass
    gc.disable()
    try:
        junk = Cycle()
        junk.me = junk
        junk.f = open(os.devnull, "rb")  # noqa: SIM115 - dropped on purpose
        number = junk.f.fileno()
        del junk

        def verb():
            fds = []
            while not fds or fds[-1] < number:
                fds.append(os.open(os.devnull, os.O_RDONLY))
            gc.collect()
            os.fstat(number)   # EBADF when the garbage was collected here
            return 0
        _fake_main(monkeypatch, verb)
        code, _, err = freshfork.run_verb(["check"], 60, cwd=PROJECT)
    finally:
        gc.enable()
        gc.collect()
    assert code == 0, err


@pytest.mark.skipif(not _has_cap_sys_resource(), reason="needs CAP_SYS_RESOURCE (prctl PR_SET_MM): this "
                    "runner starts fresh interpreters; a VM guest has it (mntcr vm run ... pytest this file)")
def test_child_shows_the_interpreter_it_stands_for(monkeypatch):
    """/proc/PID/cmdline and environ say what the fresh interpreter said, the runner's own
    environment changes (the leak guard's session mark) included; so do the child's forks."""
    def report():
        kid = os.fork()
        if kid == 0:
            time.sleep(30)
            os._exit(0)
        try:
            for pid in (os.getpid(), kid):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    print(f.read().split(b"\0")[:-1])
                with open(f"/proc/{pid}/environ", "rb") as f:
                    print(b"ZDTM_TEST_MARK=x-y" in f.read().split(b"\0"))
        finally:
            os.kill(kid, signal.SIGKILL)
        return 0
    _fake_main(monkeypatch, report)
    monkeypatch.setenv("ZDTM_TEST_MARK", "x-y")
    code, out, err = freshfork.run_verb(["dump", "-t", "1"], 60, cwd=PROJECT)
    assert code == 0, err
    want = str([a.encode() for a in cli.command("dump", "-t", "1")])
    assert out.decode() == f"{want}\nTrue\n{want}\nTrue\n"


def test_verb_reads_the_fault_step_of_its_own_environment(monkeypatch):
    """engine.restore, imported by the runner, reads MNTCR_FAULT_STEP again in the child: the
    verb's environment has it, the runner's had not when it imported the module."""
    from engine import restore
    monkeypatch.setattr(restore, "_FAULT_AT", 0)
    _fake_main(monkeypatch, lambda: restore._FAULT_AT)
    monkeypatch.setenv("MNTCR_FAULT_STEP", "9")
    assert freshfork.run_verb(["check"], 60, cwd=PROJECT)[0] == 9


def test_fresh_interpreter_waited_for_without_polling(monkeypatch, tmp_path):
    """Without the fork path (no CAP_SYS_RESOURCE), a verb's end is seen when it comes: Popen.wait
    with a timeout sleeps between looks (up to 50 ms: benchmarks/backends.py timed that sleep)."""
    monkeypatch.setattr(freshfork, "_FORKABLE", False)
    slept = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (slept.append(s), real_sleep(s)))
    code, _, err = freshfork.run_verb(["show", str(tmp_path / "no-such-mountinfo")], 60, cwd=PROJECT)
    assert code == cli.EXIT_ERROR and err.startswith(b"mntcr show: "), err
    assert slept == []


def test_fresh_interpreter_times_out_and_is_killed(monkeypatch):
    monkeypatch.setattr(freshfork, "_FORKABLE", False)
    child = freshfork.spawn(None, [sys.executable, "-S", "-c", "import time; time.sleep(30)"], dict(os.environ),
                            stdin=None, stdout=None, stderr=2, cwd=PROJECT)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    child.kill()
    assert child.wait() == -signal.SIGKILL
    child.kill()   # (waited for: nothing to do)
    assert child.stdout.read() == b""
    child.stdin.close()
    child.stdout.close()
