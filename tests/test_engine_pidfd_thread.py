"""A pidfd of a thread of the tree (PIDFD_THREAD, CRIU's pidfd_of_thread): refused before the stop
naming the thread and its process (it was "a pidfd of process N, which is not in the dumped tree")."""

from __future__ import annotations

import os

import pytest

from tests.enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)


def test_pidfd_of_a_thread_refused_before_the_stop(case):
    """The thread's own pidfd: dump names it as a thread of a process of the tree, in one line."""
    setup = STOP_WATCH + py_hold("""
import threading
ev = threading.Event()
t = threading.Thread(target=ev.wait, daemon=True); t.start()
os.dup2(os.pidfd_open(t.native_id, os.O_EXCL), 10)   # (PIDFD_THREAD is O_EXCL)
""")
    try:
        pid = case.start(setup)
    except Exception as e:  # noqa: BLE001 - a kernel before pidfs (6.9) has no PIDFD_THREAD
        pytest.skip(f"no PIDFD_THREAD here: {e}")
    with pytest.raises(CRError, match=r"fd \d+ .*a pidfd of thread \d+ of process \d+ of the tree \(PIDFD_THREAD\)") as e:
        case.dump(pid, case.new_images_dir())
    assert "\n" not in str(e.value).strip().splitlines()[-1]
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")
