"""engine/pdeathsig.py: a process's parent-death signal (prctl PR_SET_PDEATHSIG), read by the call
made in the stopped process, is dumped and taken again by its stand-in; reading it leaves the
process as it was (its interrupted call made again, its stop kept); the comparison reads it too."""

from __future__ import annotations

import os
import signal
import time

import pytest

from engine import kernel, pdeathsig
from enginecase import assert_same, case, py_hold, take  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

pytestmark = pytest.mark.skipif(not pdeathsig.supported(), reason="engine/pdeathsig.py reads it on x86_64 only")

# (the holder forks a child that becomes user 1000, then asks for SIGUSR1 when its parent dies; both
# hold: its stand-in takes the ids, which clears the signal, before it takes the signal)
SETUP = py_hold("import ctypes\n"
                "if os.fork() == 0:\n"
                "    os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)\n"
                "    assert ctypes.CDLL(None).prctl(1, 10, 0, 0, 0) == 0   # PR_SET_PDEATHSIG, SIGUSR1\n")


def test_pdeathsig_survives_restore(case):
    pid = case.start(SETUP)
    before = take(pid)
    assert [pdeathsig.read(p) for p in tree_pids(pid)[1:]] == [signal.SIGUSR1]
    restored = case.cr(pid)
    assert [pdeathsig.read(p) for p in tree_pids(restored)[1:]] == [signal.SIGUSR1]   # (not the root's)
    assert_same(before, take(restored))


def _in_sleep(pid: int) -> bool:
    """Whether `pid` waits in its sleep: state S in clock_nanosleep (230) or nanosleep (35)."""
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    with open(f"/proc/{pid}/syscall") as f:
        return state == "S" and f.read().split()[0] in ("230", "35")


@pytest.mark.parametrize("stop", [False, True])
def test_reading_leaves_the_process_as_it_was(stop):
    import enginecase
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            kernel.set_pdeathsig(signal.SIGUSR2)

            def done(*_):
                raise InterruptedError
            signal.signal(signal.SIGUSR1, done)   # (the test ends the sleep once it has seen it made again)
            try:
                time.sleep(600)   # (nanosleep: interrupted by the read, made again for what is left)
            except InterruptedError:
                os.write(w, b"s")
        finally:
            os._exit(0)
    os.close(w)   # (the child's end only: its death without "s" reads as EOF)
    try:
        enginecase.wait_until(lambda: _in_sleep(pid), "the child's sleep")
        if stop:
            os.kill(pid, signal.SIGSTOP)
            os.waitpid(pid, os.WUNTRACED)
        assert pdeathsig.read(pid) == signal.SIGUSR2
        if stop:
            # (stopped again once let go; nothing comes from it until SIGCONT)
            deadline = time.monotonic() + 60
            while True:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "T":
                        break
                if time.monotonic() > deadline:
                    pytest.fail("the process did not stop again after the read")
                time.sleep(0.01)
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while not _in_sleep(pid):   # (its sleep made again: not ended, not failed)
            assert time.monotonic() < deadline, "the process did not go back to its sleep after the read"
            time.sleep(0.01)
        os.kill(pid, signal.SIGUSR1)
        assert os.read(r, 1) == b"s"
        status, pid = os.waitpid(pid, 0)[1], 0
        assert status == 0
    finally:
        os.close(r)
        if pid:   # (a failure above: the child sleeps on)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_the_image_keeps_it_for_non_roots_only(case):
    import json
    from engine import image, imageformat
    pid = case.start(SETUP)
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    assert [p.get("pdeathsig") for p in good["processes"]] == [None, signal.SIGUSR1]
    imageformat.validate(json.loads(json.dumps(good)))
    for where, value, words in ((0, 9, "the root's parent-death signal is not kept"), (1, 0, "pdeathsig"),
                                (1, 65, "pdeathsig")):
        doc = json.loads(json.dumps(good))
        doc["processes"][where]["pdeathsig"] = value
        with pytest.raises(image.ImageError, match=words):
            imageformat.validate(doc)
