"""zdtm/itemserver.py: the guest's item server, driven here through its own shell jobs on the host.

The vm flavor sends exactly these scripts (start_script, client_script) as
agent jobs; running them under sh on the host checks the protocol, the
outcome, the exit status and the job's stdout/stderr without booting a VM.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from zdtm import item, itemserver, scenario

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the ns place needs root (namespaces, mounts)")


def _sh(text: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", text], cwd=PROJECT, env=dict(os.environ, PYTHONPATH=PROJECT),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def server(tmp_path):
    rundir = str(tmp_path / "run")
    r = _sh(itemserver.start_script(sys.executable, rundir))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(rundir, itemserver.PIDFILE)) as f:
        pid = int(f.read())
    yield rundir, pid
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:   # a test killed it, and an init that reaps at once (a VM guest's) reaped it
        pass


def _spec(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    sc = scenario.load(str(p)).render_all()[0]
    return item.ItemSpec(scenario=sc, backend="mntcr", flavor="vm", iters=1)


@root_only
def test_items_run_in_children_of_one_server_and_their_outcomes_come_back(server, tmp_path):
    rundir, pid = server
    seen = []
    for n, (setup, want) in enumerate((("exec zdtm-hold", "pass"), ("echo oops; exit 7", "setup-error"),
                                       ("exec zdtm-hold", "pass"))):
        wd = str(tmp_path / f"w{n}")
        os.makedirs(wd)
        item.write_spec(_spec(tmp_path, f"description: d\nsetup: {setup}\n"), wd)
        r = _sh(itemserver.client_script(rundir, wd))
        assert r.returncode == 0, r.stderr
        out = item.read_outcome(wd)
        assert out is not None and out.outcome == want, (out, r.stderr)
        seen.append(out)
    assert "status 7" in seen[1].message and "oops" in seen[1].message
    os.kill(pid, 0)  # the server outlives its items


def test_a_crashing_item_gives_its_status_and_stderr_to_the_job(server, tmp_path):
    rundir, _ = server
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / item.SPEC_FILE).write_bytes(b"not a pickle")
    r = _sh(itemserver.client_script(rundir, str(wd)))
    assert r.returncode == 0, r.stderr  # zdtm.item.main reports a broken spec as an outcome
    assert item.read_outcome(str(wd)).message.startswith("item runner in the VM: UnpicklingError")
    gone = str(tmp_path / "gone")  # no result can be written there: the child dies with a traceback
    r = _sh(itemserver.client_script(rundir, gone))
    assert r.returncode == 1
    assert "FileNotFoundError" in r.stderr.strip().splitlines()[-1]


def test_the_client_says_so_when_no_server_runs(tmp_path):
    r = _sh(itemserver.client_script(str(tmp_path), str(tmp_path)))
    assert r.returncode == 125
    assert r.stderr.strip() == "the item server in the VM is not running"


def test_a_server_that_cannot_start_fails_its_start_job(tmp_path):
    r = _sh(itemserver.start_script("/nonexistent/python3", str(tmp_path / "run")))
    assert r.returncode == 125


def test_a_dead_server_is_noticed_even_as_a_zombie(tmp_path):
    """A server killed but not yet reaped is a zombie: the client must not write to its fifo."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (rundir / itemserver.PIDFILE).write_text(f"{proc.pid}\n")
        os.mkfifo(rundir / itemserver.REQUESTS)
        os.kill(proc.pid, signal.SIGKILL)
        import time
        deadline = time.monotonic() + 60
        while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = _sh(itemserver.client_script(str(rundir), str(tmp_path)), timeout=30)
        assert (r.returncode, r.stderr.strip()) == (125, "the item server in the VM is not running")
    finally:
        proc.wait()


def test_a_server_dying_during_an_item_ends_the_job_at_once(server, tmp_path):
    """The client gets EOF when the server dies mid-item (it held the status fifo's writing end),
    instead of waiting out the job's timeout (up to ~25 minutes under TCG)."""
    import time
    rundir, pid = server
    wd = tmp_path / "w"
    wd.mkdir()
    os.mkfifo(wd / item.SPEC_FILE)  # the item's child blocks opening its spec: a long item
    out, err = open(tmp_path / "out", "w"), open(tmp_path / "err", "w")
    client = subprocess.Popen(["sh", "-c", itemserver.client_script(rundir, str(wd))], stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not any(n.startswith("done.") for n in os.listdir(rundir)) or client.poll() is not None:
            assert client.poll() is None and time.monotonic() < deadline, open(tmp_path / "err").read()
            time.sleep(0.05)
        # the request is being served: the server holds the client's done fifo and its child waits on
        # its spec (a kill before the server opened the fifo left the client waiting for a writer)
        while not open(f"/proc/{pid}/task/{pid}/children").read().split():
            assert client.poll() is None and time.monotonic() < deadline, open(tmp_path / "err").read()
            time.sleep(0.05)
        assert client.poll() is None
        os.kill(pid, signal.SIGKILL)
        assert client.wait(timeout=20) == 125
        assert open(tmp_path / "err").read().strip().splitlines()[-1] == \
            "the item server in the VM died during the item"
    finally:
        if client.poll() is None:
            client.kill()
        # let the orphaned item child go: it reads a broken spec and exits. It may not have reached
        # its open of the spec yet (forked, waiting for a CPU): no reader is ENXIO, so wait for it.
        stop = time.monotonic() + 60
        while True:
            try:
                fd = os.open(wd / item.SPEC_FILE, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO or time.monotonic() > stop:
                    raise
                time.sleep(0.05)
                continue
            os.write(fd, b"x")
            os.close(fd)
            break
        out.close()
        err.close()
