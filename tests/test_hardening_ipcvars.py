"""Hostile images against an ipc namespace's own sysctls (engine/ipcvars.py): the real dump of
tests/test_hardening_s19.py (a tree in its own ipc namespace with a segment, a semaphore set, a
message queue and a POSIX queue), its "vars" changed as an attacker with write access to the image
would. Each is refused with exit status 2 and one line, nothing left running or mounted, nothing of
the host touched, the host's own ipc sysctls the same."""

from __future__ import annotations

import base64
import os

import pytest

from engine import ipcvars
from enginecase import case  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, refused
from test_hardening_s19 import _invalid, _ipc, image_dir  # noqa: F401  (fixture)


def _host_values() -> dict:
    return {name: open(f"/proc/sys/{name}").read() for name in ipcvars.VARS}


@pytest.mark.parametrize("kept, pattern", [
    ({"fs/mqueue/msg_max": 70000}, r"sysvipc ipc-\d+ vars fs/mqueue/msg_max: out of range \(1\.\.65536\)"),
    ({"fs/mqueue/msgsize_max": 1 << 30}, r"vars fs/mqueue/msgsize_max: out of range"),
    ({"kernel/msgmax": 1 << 31}, r"vars kernel/msgmax: out of range"),
    ({"kernel/sem": [250, 32000, 32, -1]}, r"vars kernel/sem: out of range"),
    ({"kernel/shm_next_id": -1}, r"vars kernel/shm_next_id: out of range"),
    ({"kernel/core_pattern": 1}, r"vars: must be an object of"),
    ({"kernel/shm_rmid_forced": 1}, r"vars: kernel/shm_rmid_forced with segments"),
])
def test_out_of_range_refused(image_dir, tmp_path, kept, pattern):
    """A value the kernel does not take, a name that is no ipc namespace's, shm_rmid_forced that
    would remove the restored segments: refused before anything is made."""
    host = _host_values()
    _invalid(image_dir, lambda d: _ipc(d).update(vars=kept), pattern)
    refused(_mutated(image_dir, tmp_path, lambda d: _ipc(d).update(vars=kept)), pattern, tmp_path)
    assert _host_values() == host


def test_value_the_kernel_refuses_fails_in_one_line(image_dir, tmp_path):
    """msgmni within the validator's bound (ipcmni_extend's) above this kernel's: the write in the
    new namespace fails, restore stops in one line; the host's value is the same."""
    if _ipcmni_extended():
        pytest.skip("kernel booted with ipcmni_extend: msgmni up to 1 << 24 is taken")
    host = _host_values()
    refused(_mutated(image_dir, tmp_path, lambda d: _ipc(d).update(vars={"kernel/msgmni": 1 << 24})),
            r"ipc namespace sysctl kernel/msgmni = 16777216: Invalid argument", tmp_path)
    assert _host_values() == host


def _ipcmni_extended() -> bool:
    with open("/proc/cmdline") as f:
        return "ipcmni_extend" in f.read().split()


@pytest.mark.parametrize("change", [
    lambda o: o["msg"][0].update(msgs=[[1, "QUJD" * 4000]]),        # (12000 bytes: past msgmax, 8192)
    lambda o: o["msg"][0].update(msgs=[[1, "QUJD" * 2000]] * 3),    # (18000 bytes: past msgmnb, 16384)
    lambda o: o["mqueue"][0].update(maxmsg=40),                     # (past msg_max, 10)
])
def test_objects_past_the_limits_made_then_limits_as_dumped(image_dir, tmp_path, change):
    """Objects past the limits the image keeps (a fresh namespace's here): restore raises each limit
    while it makes them (the restorer has no CAP_SYS_RESOURCE to pass it), then sets it back as
    dumped; the objects are all there."""
    import enginecase
    from engine import posixmq, sysvipc
    from zdtm.snapshot import kill_tree
    img = _mutated(image_dir, tmp_path, lambda d: change(_ipc(d)))
    pid = enginecase.EngineCase(str(tmp_path)).restore(img)
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        ns = os.open(f"{pid}/ns/ipc", os.O_RDONLY, dir_fd=proc)
        # (the table, not the messages: MSG_COPY reads none longer than the namespace's msgmax)
        rows = sysvipc.joined(ns, proc, lambda: sysvipc._table(proc, "msg"))
        queues = sysvipc.joined(ns, proc, posixmq.read_here)
        os.close(ns)
        vals = ipcvars.of_process(pid)
    finally:
        os.close(proc)
        kill_tree(pid)
    want = _ipc(enginecase.load_manifest(img))
    assert [(r["qnum"], r["cbytes"]) for r in rows] == \
        [(len(q["msgs"]), sum(len(base64.b64decode(m[1])) for m in q["msgs"])) for q in want["msg"]], rows
    assert [q["maxmsg"] for q in queues] == [q["maxmsg"] for q in want["mqueue"]]
    assert vals["kernel/msgmax"] == 8192 and vals["kernel/msgmnb"] == 16384 and vals["fs/mqueue/msg_max"] == 10, vals
