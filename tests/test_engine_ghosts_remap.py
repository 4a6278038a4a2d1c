"""Engine round trips of the file objects CRIU's zdtm tests leave behind (issue 14/15 remainder):
socket files whose listener is gone (overmount_sock), deleted FIFOs held open (fifo-ghost) and
deleted names of files that are open under several names or still linked elsewhere
(mntns_link_remap: CRIU's link-remap). Each case is built in a throwaway container
(tests/enginecase.py), dumped, restored and compared; the tests also read the restored state.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from enginecase import case  # noqa: F401  (fixture)


def test_socket_files_without_listener(case):
    """Socket files left by listeners that closed (tar archives no sockets): one in plain sight
    with its mode and owner, one beneath an overmount; both come back as socket inodes."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir -p /mnt/t/d/e
python3 -c '
import os, socket
for p in ("/mnt/t/d/s1", "/mnt/t/d/e/s2"):
    s = socket.socket(socket.AF_UNIX); s.bind(p); s.close()
os.chmod("/mnt/t/d/s1", 0o640); os.chown("/mnt/t/d/s1", 12, 34)'
mount -t tmpfs over /mnt/t/d/e
hold
"""
    check = """
stat -c '%n %F %a %u %g' /mnt/t/d/s1
unshare -m --propagation private sh -c 'umount /mnt/t/d/e; stat -c "%n %F" /mnt/t/d/e/s2'
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert "/mnt/t/d/s1 socket 640 12 34" in out
    assert "/mnt/t/d/e/s2 socket" in out
