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


@pytest.mark.parametrize("stop", [False, True])
def test_reading_leaves_the_process_as_it_was(stop):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            kernel.set_pdeathsig(signal.SIGUSR2)
            time.sleep(1.0)   # (nanosleep: interrupted by the read, made again for what is left)
            os.write(w, b"s")
        finally:
            os._exit(0)
    try:
        time.sleep(0.2)
        if stop:
            os.kill(pid, signal.SIGSTOP)
            os.waitpid(pid, os.WUNTRACED)
        assert pdeathsig.read(pid) == signal.SIGUSR2
        if stop:
            # (stopped again once let go; nothing comes from it until SIGCONT)
            for _ in range(500):
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "T":
                        break
                time.sleep(0.01)
            else:
                pytest.fail("the process did not stop again after the read")
            os.kill(pid, signal.SIGCONT)
        assert os.read(r, 1) == b"s"
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(r)
        os.close(w)


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
