"""An fd of a kind no module dumps is refused before the stop, in one line that says what it is and,
where there is something to do, what (engine/fds/__init__.py `unsupported`): an io_uring instance,
which MariaDB's InnoDB holds (scenarios/runtimes/app_containers.yaml)."""

from __future__ import annotations

import os

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

_RING = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)   # struct io_uring_params
ring = libc.syscall(425, 4, params)         # io_uring_setup
if ring < 0:
    raise SystemExit(f"io_uring_setup: {os.strerror(ctypes.get_errno())}")
"""


def _io_uring_enabled() -> bool:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip() == "0"
    except FileNotFoundError:
        return True   # (kernels before 6.6 have no switch)


@pytest.mark.skipif(not _io_uring_enabled(), reason="io_uring is disabled here (kernel.io_uring_disabled)")
def test_io_uring_refused_unstopped_saying_what_to_do(case):
    """A process holding an io_uring instance: dump refuses naming the fd and telling to run the
    program without io_uring, before the stop; the tree keeps running."""
    pid = case.start(STOP_WATCH + py_hold(_RING))
    with pytest.raises(CRError, match=r"fd \d+ \(anon_inode:\[io_uring\]\): io_uring fds are not supported "
                                      r"\(.*\): run the program without io_uring to dump it"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")


def test_other_kinds_say_what_they_are():
    """A kind with nothing to do about it: the refusal names it, nothing more."""
    from engine import fds
    assert fds.unsupported(7, 3, "anon_inode:[fscontext]") == (
        "process 7 fd 3 (anon_inode:[fscontext]): fscontext fds are not supported")
