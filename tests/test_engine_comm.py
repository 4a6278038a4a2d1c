"""A process's name (/proc/PID/comm) goes into the image and its stand-in takes it (prctl
PR_SET_NAME); every engine round trip compares it (zdtm.snapshot), this checks the bytes a name
can hold that UTF-8 cannot decode, and the kernel's 15-byte limit."""

from __future__ import annotations

import os

import pytest

from engine import imageformat, kernel


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
