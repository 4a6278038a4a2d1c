"""A FIFO the tree shares with a process outside it (`producer > fifo` outside, `tee < fifo` in the
tree; engine/fds/pipe_outside.py): restore opens the FIFO again and refills its pipe, which the
outside process would not reach (the restored reader sees end-of-file, the writer EPIPE) or,
on a FIFO of the host's, still holds with the data in (read twice). Refused before the stop
(dumped before session 33, the restored tee read end-of-file once restore let go of the FIFO)."""

from __future__ import annotations

import os
import re
import time

import pytest

from enginecase import STOP_WATCH, CRError, case, was_stopped  # noqa: F401  (fixture)

TEE_FIFO = STOP_WATCH + """
mkfifo /run/fifo
sh -c 'exec tee /run/copy </run/fifo' >/dev/null 2>&1 &
hold
"""


def _tee_started(pid: int, w: int) -> None:
    """Write a line into the FIFO (writer `w`) and wait until the tree's tee copied it."""
    os.write(w, b"hello\n")
    copy = f"/proc/{pid}/root/run/copy"
    deadline = time.monotonic() + 30
    while not (os.path.exists(copy) and os.path.getsize(copy)):
        assert time.monotonic() < deadline, "tee copied nothing"
        time.sleep(0.05)


def test_fifo_writer_outside_refused_unstopped(case):
    """This test (outside the tree) writes into the FIFO tee reads."""
    pid = case.start(TEE_FIFO, daemons=("sh", "tee"))
    w = os.open(f"/proc/{pid}/root/run/fifo", os.O_WRONLY)
    try:
        _tee_started(pid, w)
        _refused(case, pid, r"process \d+ fd 0 \(/run/fifo\)", "a write")
    finally:
        os.close(w)


def test_fifo_reader_outside_refused_unstopped(case):
    """The tree holds the FIFO's write end only (`sleep > fifo`), this test reads it."""
    pid = case.start(STOP_WATCH + """
mkfifo /run/fifo
sh -c 'exec sleep 1000 >/run/fifo' </dev/null >/dev/null 2>&1 &
hold
""", daemons=("sh", "sleep"))
    r = os.open(f"/proc/{pid}/root/run/fifo", os.O_RDONLY)
    try:
        deadline = time.monotonic() + 30
        while not any(os.path.exists(f"/proc/{p}/fd/1") and os.readlink(f"/proc/{p}/fd/1") == "/run/fifo"
                      for p in _tree(pid)):
            assert time.monotonic() < deadline, "sleep did not open the FIFO"
            time.sleep(0.05)
        _refused(case, pid, r"process \d+ fd 1 \(/run/fifo\)", "a read")
    finally:
        os.close(r)


def _tree(pid: int) -> list[int]:
    from zdtm.snapshot import tree_pids
    return list(tree_pids(pid))


def _refused(case, pid: int, fd: str, side: str) -> None:
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(rf"{fd}: the FIFO is held by process {os.getpid()} \(\S+\) outside the tree too "
                     rf"\({side} end\)", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_empty_host_fifo_read_outside_dumped_and_joined_again(case, tmp_path):
    """An empty FIFO of the host's (an external mount: a host log collector reading a FIFO bound into
    a container, systemd's ListenFIFO=) that a process outside the tree reads: restore opens that
    very FIFO again by its path, which joins the pipe the outside reader still holds: nothing lost,
    nothing read twice. Dumped and restored (refused at first in session 33)."""
    store = tmp_path / "st"
    store.mkdir()
    os.mkfifo(store / "fifo")
    r = os.open(store / "fifo", os.O_RDONLY | os.O_NONBLOCK)   # the host's reader, outside the tree
    try:
        pid = case.start("sh -c 'exec sleep 1000 >/run/st/fifo' </dev/null >/dev/null 2>&1 &\nhold\n",
                         binds=((str(store), "/run/st"),), daemons=("sh", "sleep"))
        images = case.new_images_dir()
        case.dump(pid, images, ("--external", "mnt[/run/st]:st"))
        assert os.read(r, 1) == b""   # (the dumped writer is gone: end-of-file)
        restored = case.restore(images, ("--external", f"mnt[st]:{store}"))
        assert restored
        with pytest.raises(BlockingIOError):   # a writer again: the restored sleep's, on the same pipe
            os.read(r, 1)
    finally:
        os.close(r)


def test_fifo_the_tree_holds_o_path_read_outside_dumped(case):
    """A FIFO the tree holds only an O_PATH fd on (containerd-shim's) and a process outside reads: the
    tree holds no end of its pipe and restore opens none: dumped (refused at first in session 33)."""
    holder = ("python3 -c 'import os, time; fd = os.open(\"/run/fifo\", os.O_PATH); "
              "os.set_inheritable(fd, True); time.sleep(1000)' </dev/null >/dev/null 2>&1 &\n")
    pid = case.start("mkfifo /run/fifo\n" + holder + "hold\n", daemons=("python3",))
    r = os.open(f"/proc/{pid}/root/run/fifo", os.O_RDONLY | os.O_NONBLOCK)   # an end, outside the tree
    try:
        images = case.new_images_dir()
        case.dump(pid, images)
        restored = case.restore(images)
        assert restored
    finally:
        os.close(r)


def test_host_fifo_with_data_read_outside_refused_unstopped(case, tmp_path):
    """The same host FIFO whose pipe holds data the tree's writer wrote and the outside reader has
    not read: restore would put the data in again (read twice): refused before the stop."""
    store = tmp_path / "st"
    store.mkdir()
    os.mkfifo(store / "fifo")
    r = os.open(store / "fifo", os.O_RDONLY | os.O_NONBLOCK)   # the host's reader, outside the tree
    try:
        pid = case.start(STOP_WATCH + "sh -c 'echo queued; exec sleep 1000' >/run/st/fifo 2>/dev/null </dev/null &\n"
                         "hold\n", binds=((str(store), "/run/st"),), daemons=("sh", "sleep"))
        images = case.new_images_dir()
        with pytest.raises(CRError) as e:
            case.dump(pid, images, ("--external", "mnt[/run/st]:st"))
        assert re.search(r"the FIFO is held by process \d+ \(.*\) outside the tree too \(a read end\): its pipe "
                         r"holds data restore would put in again", str(e.value)), str(e.value)
        assert not was_stopped(pid), "dump stopped the tree before it refused"
        assert os.read(r, 64) == b"queued\n"
    finally:
        os.close(r)
