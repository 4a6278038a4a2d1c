"""A process's name (/proc/PID/comm) goes into the image and its stand-in takes it (prctl
PR_SET_NAME); every engine round trip compares it (zdtm.snapshot), this checks the bytes a name
can hold that UTF-8 cannot decode, and the kernel's 15-byte limit."""

from __future__ import annotations

import os
import signal
import time

import pytest

from engine import imageformat, kernel
from enginecase import case, py_hold  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids


@pytest.mark.parametrize("name, shown", [
    ("w\u00f6rk er", "w\u00f6rk er"),
    ("raw\udcff\udcfebytes", "raw\udcff\udcfebytes"),          # b"raw\xff\xfebytes"
    ("0123456789abcdefghij", "0123456789abcde"),               # the kernel keeps 15 bytes
    ("ends with nl\n", "ends with nl\n"),                       # only the kernel's newline is taken off
])
def test_a_name_survives_set_and_read(name, shown):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            kernel.set_comm(name)
            os.write(w, b"x")
            os.read(os.open("/dev/null", os.O_RDONLY), 1)
            os.pause()
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        assert kernel.read_comm(pid) == shown
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)


def test_the_image_takes_a_name_of_at_most_15_bytes():
    rule = imageformat.PROCESS.fields["comm"].rule
    assert rule("mntcr-hold") is None
    assert rule("raw\udcff\udcfebytes") is None
    assert rule("\u00f6" * 7) is None                            # 14 bytes
    assert "at most 15" in rule("x" * 16)
    assert "at most 15" in rule("\u00f6" * 8)                  # 8 characters, 16 bytes: not cut at restore
    assert "NUL" in rule("a\0b")
    assert rule("\ud800") is not None                            # JSON can carry it; no encoding takes it


# A child of the tree's root that takes a name of bytes UTF-8 cannot decode on SIGUSR1 (once the
# harness saw every process hold): every /proc/N/stat and status reader on the way (freeze, creds,
# snapshot) must take them.
RAW_NAME = py_hold("""
import ctypes, signal
c = os.fork()
if c == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    signal.signal(signal.SIGUSR1, lambda *a: ctypes.CDLL(None).prctl(15, b"raw\\xff\\xfebytes", 0, 0, 0))
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
""")



def test_a_name_of_undecodable_bytes_is_dumped_and_restored(case):
    pid = case.start(RAW_NAME)
    child = next(p for p in tree_pids(pid) if p != pid)
    os.kill(child, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while kernel.read_comm(child) != RAW and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernel.read_comm(child) == RAW
    after = case.cr(pid)
    names = [kernel.read_comm(p) for p in tree_pids(after)]
    assert RAW in names, names


RAW = "raw\udcff\udcfebytes"
