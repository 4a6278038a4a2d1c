"""System V segments a process attached (engine/shmattach.py): its stand-in attaches them again, as
many times and read-only where they were, so a segment's nattch is what it was (a PostgreSQL
postmaster's interlock reads it: scenarios/runtimes/app_containers.yaml); the validator's rule."""

from __future__ import annotations

import pytest

from enginecase import IPC_LIBC, case, py_hold  # noqa: F401  (fixture)

_ATTACH = """
import ctypes
""" + IPC_LIBC + """a = ok(libc.shmget(0x1111, 8192, 0o1600))
b = ok(libc.shmget(0x2222, 4096, 0o1600))   # (made, never attached)
gone = ok(libc.shmget(0x3333, 4096, 0o1600))
kept = [ok(libc.shmat(a, None, 0)), ok(libc.shmat(a, None, 0o10000)), ok(libc.shmat(gone, None, 0))]
ctypes.memmove(kept[0], b"data", 4)
libc.shmctl(gone, 0, None)   # IPC_RMID while attached: gone with its last detach, not dumped
"""

# Each segment's key and nattch; the holder's SysV mappings by key and permissions (the removed
# segment, key 0 since, and its mapping left out: not made again).
_LIST = ("sed 1d /proc/sysvipc/shm | awk '$1 != 0 {print $1, $7}' | sort\n"
         "grep SYSV /proc/1/maps | grep -v SYSV00003333 | awk '{print $6, $2}' | sort")


def test_attachments_restored(case):
    """A segment attached twice (once read-only) is attached twice again, one of them read-only; one
    never attached stays so; one removed while attached is left out without a refusal."""
    before, after = case.roundtrip(py_hold(_ATTACH), _LIST)
    assert before.snap.check_output.split("\n") == [
        "4369 2", "8738 0", "/SYSV00001111 r--s", "/SYSV00001111 rw-s", ""], before.snap.check_output
    assert after.snap.check_output == before.snap.check_output


def _doc(shm):
    return {"processes": [{"pid": 1, "ns": {"ipc": "ipc-0"}, "shm": shm}],
            "sysvipc": {"ipc-0": {"shm": [{"id": 5}]}}}


@pytest.mark.parametrize("shm, pattern", [
    ([[6, False]], "segment 6 is not a System V segment of the process's ipc namespace"),
    ([[5, 1]], r"\[segment id, read-only flag\]"),
    ([5], r"\[segment id, read-only flag\]"),
    ("x", "must be a list"),
])
def test_validator(shm, pattern):
    """A process's "shm" names only segments its own ipc namespace has in the image."""
    from engine import imageformat
    with pytest.raises(imageformat.ImageError, match=pattern):
        imageformat._check_shm_attachments(_doc(shm))
    imageformat._check_shm_attachments(_doc([[5, True], [5, False]]))


def test_validator_host_namespace():
    """No attachment of a process in the host's ipc namespace (restore makes no object there)."""
    from engine import imageformat
    doc = _doc([[5, False]])
    doc["processes"][0]["host_ns"] = ["ipc"]
    with pytest.raises(imageformat.ImageError, match="segment 5 is not"):
        imageformat._check_shm_attachments(doc)


def test_validator_without_objects():
    """An image with attachments but no System V objects at all is refused too."""
    from engine import imageformat
    doc = _doc([[5, False]])
    del doc["sysvipc"]
    with pytest.raises(imageformat.ImageError, match="segment 5 is not"):
        imageformat._check_sysvipc(doc)
