"""engine/freeze.py's waits without a running tree: kill_all (dump's end) and wait_stopped."""

from __future__ import annotations

import os
import signal
import subprocess

from engine import freeze


def _state(pid: int) -> str:
    return freeze.state(pid)


def test_kill_all_returns_with_every_process_gone_or_a_zombie():
    """kill_all kills each process and returns once each has exited (a zombie here: the caller, its
    parent, has not reaped it), a pid already gone among them; a stopped one is killed too."""
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    try:
        os.kill(kids[1].pid, signal.SIGSTOP)
        gone = subprocess.Popen(["true"])
        gone.wait()
        freeze.kill_all([k.pid for k in kids] + [gone.pid])
        assert [_state(k.pid) for k in kids] == ["Z", "Z", "Z"]
    finally:
        for k in kids:
            k.kill()
            k.wait()
    assert all(k.returncode == -signal.SIGKILL for k in kids)


def test_wait_stopped_sees_each_process_stopped():
    """wait_stopped returns once each process shows T (its backoff starts at 0.1 ms)."""
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    try:
        freeze.signal_all([k.pid for k in kids], signal.SIGSTOP)
        freeze.wait_stopped([k.pid for k in kids])
        assert [_state(k.pid) for k in kids] == ["T", "T", "T"]
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_a_kernel_thread_is_refused_as_the_root():
    """A kernel thread (kthreadd, pid 2 of the host's pid namespace) is no process tree: dump says so
    in one line instead of failing at its first ptrace."""
    import pytest
    from engine.dumperror import DumpError
    kthread = next((int(n) for n in os.listdir("/proc") if n.isdigit() and _is_kthread(int(n))), None)
    if kthread is None:
        pytest.skip("no kernel thread is visible in this pid namespace's /proc")
    with pytest.raises(DumpError, match="is a kernel thread"):
        freeze.process_tree(kthread)
    assert freeze.process_tree(os.getpid())[0] == (os.getpid(), None)


def _is_kthread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return bool(int(data[data.rindex(b")") + 2:].split()[6]) & 0x00200000)


def test_dump_and_restore_refuse_a_proc_of_another_pid_namespace(tmp_path):
    """Run in a new pid namespace under the host's /proc (`unshare -p -f` without --mount-proc), the
    verbs would name other processes by their pids (a dump of pid 2 stopped at kthreadd, or hung):
    both refuse in one line before reading anything."""
    import sys
    mntcr = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "mntcr")
    script = (f"sleep 60 & {sys.executable} -S {mntcr} dump -t $! -D {tmp_path}/img; echo dump=$?; "
              f"{sys.executable} -S {mntcr} restore -D {tmp_path}/img; echo restore=$?; kill $! 2>/dev/null; true")
    out = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "dump=2" in out.stdout and "restore=2" in out.stdout, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all("/proc is not this pid namespace's proc" in l for l in lines), out.stderr
    assert not os.path.exists(f"{tmp_path}/img")
