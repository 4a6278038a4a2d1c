"""System V IPC objects of the tree's ipc namespace (engine/sysvipc.py): made again with their
keys, ids, owners and contents (scenarios/fds/sysv_ipc.yaml runs real programs); more than an
image keeps is refused before the stop; the validator's rule."""

from __future__ import annotations

import os

import pytest

from enginecase import IPC_LIBC, STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

_MAKE = """
import ctypes
""" + IPC_LIBC + """libc.shmget(0, 4096, 0o1600)   # (id 0: the next one gets 1)
seg = ok(libc.shmget(0x1234, SIZE, 0o1640))
p = ok(libc.shmat(seg, None, 0)); ctypes.memmove(p, b"kept", 4); libc.shmdt(ctypes.c_void_p(p))
libc.shmctl(0, 0, None)        # (removed: the kept one keeps id 1)
s = ok(libc.semget(0x5678, 2, 0o1600)); ok(libc.semctl(s, 0, 17, (ctypes.c_ushort * 2)(3, 7)))
"""

_LIST = ("for t in shm sem; do sed 1d /proc/sysvipc/$t | awk '{print $1, $2, $3}'; done\n"
         "python3 -c 'import ctypes; l = ctypes.CDLL(None); l.shmat.restype = ctypes.c_void_p; "
         "print(ctypes.string_at(l.shmat(1, None, 0o10000), 4))'")


def test_objects_restored_with_ids_and_contents(case):
    """A segment (id 1: the id before it was removed) with content and a semaphore set with values
    come back in the restored namespace with their keys, ids and modes; the segment's content too."""
    before, after = case.roundtrip(py_hold(_MAKE.replace("SIZE", "4096")), _LIST)
    assert before.snap.check_output.split() == ["4660", "1", "640", "22136", "0", "600", "b'kept'"], \
        before.snap.check_output
    assert after.snap.check_output == before.snap.check_output


def test_more_than_an_image_keeps_refused_unstopped(case):
    """A segment larger than an image keeps (sysvipc.MAX_BYTES): refused before the stop."""
    from engine import sysvipc
    pid = case.start(STOP_WATCH + py_hold(_MAKE.replace("SIZE", str(sysvipc.MAX_BYTES + 4096))))
    with pytest.raises(CRError, match=r"more than 64 MiB of System V shared memory and messages"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("doc, pattern", [
    ({"ipc-9": {}}, "an ipc namespace no process is in"),
    ({"ipc-0": {"mqueue": [{"name": "a/b", "mode": 0o600, "uid": 0, "gid": 0, "maxmsg": 1, "msgsize": 8,
                            "msgs": []}]}}, "bad or repeated queue name"),
    ({"ipc-0": {"mqueue": [{"name": "q", "mode": 0o600, "uid": 0, "gid": 0, "maxmsg": 1, "msgsize": 2,
                            "msgs": [[0, "YWJj"]]}]}}, "longer than its msgsize"),
    ({"ipc-0": {"mqueue": [{"name": "q", "mode": 0o600, "uid": 0, "gid": 0, "maxmsg": 1, "msgsize": 8,
                            "msgs": [[0, ""], [1, ""]]}]}}, "more messages than it holds"),
    ({"ipc-0": {"shm": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0}]}},
     "exactly key, id"),
    ({"ipc-0": {"sem": [{"key": 1, "id": 0, "mode": 0o4600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                         "vals": [1]}]}}, "bad key, id, mode"),
    ({"ipc-0": {"sem": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                         "vals": [40000]}]}}, "bad semaphore values"),
    ({"ipc-0": {"msg": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                         "msgs": [[0, ""]]}]}}, "mtype >= 1"),
    ({"ipc-0": {"shm": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                         "size": 4, "data": "!!"}]}}, "not base64"),
])
def test_validator(doc, pattern):
    """The image's "sysvipc" is checked before restore reads it."""
    from engine import sysvipc

    def fail(text):
        raise ValueError(text)
    with pytest.raises(ValueError, match=pattern):
        sysvipc.check(doc, {"ipc-0"}, fail)
    sysvipc.check({"ipc-0": {"sem": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                                      "vals": [1]}]}}, {"ipc-0"}, fail)


def test_posix_message_queue_notified_refused_unstopped(case):
    """A POSIX message queue a process asked to be notified on (mq_notify): the registration is not
    restored; refused before the stop, naming the queue and the process. (Queues themselves are
    restored: scenarios/fds/posix_mq.yaml.)"""
    pid = case.start(STOP_WATCH + py_hold("""
import ctypes, struct
rt = ctypes.CDLL("librt.so.1", use_errno=True)
q = rt.mq_open(b"/jobs", os.O_RDWR | os.O_CREAT, 0o600, None)
assert q >= 0, ctypes.get_errno()
ev = ctypes.create_string_buffer(struct.pack("iii", 0, 10, 0), 64)   # SIGEV_SIGNAL, SIGUSR1
assert rt.mq_notify(q, ev) == 0, ctypes.get_errno()
os.dup2(q, 7)
"""))
    with pytest.raises(CRError, match=r"POSIX message queue /jobs: process \d+ asked to be notified on it"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_queue_bound_as_a_mount_root(case):
    """A queue made by a file's creation on an mqueue mount (touch), bound as a file mount: the queue
    is made again with the namespace (its messages too), and the bind's root is that queue."""
    setup = ("mkdir /mnt/q; mount -t mqueue q /mnt/q; touch /mnt/q/x /mnt/f; mount --bind /mnt/q/x /mnt/f\n"
             + py_hold("""
import ctypes
rt = ctypes.CDLL("librt.so.1", use_errno=True)
q = rt.mq_open(b"/x", os.O_WRONLY)
assert q >= 0 and rt.mq_send(q, b"m", 1, 5) == 0, ctypes.get_errno()
os.close(q)
"""))
    check = "ls /mnt/q; head -c 7 /mnt/f; echo; stat -c '%i' /mnt/q/x /mnt/f | uniq | wc -l"
    before, after = case.roundtrip(setup, check)
    assert before.snap.check_output.split() == ["x", "QSIZE:1", "1"], before.snap.check_output


def test_objects_never_go_to_the_host_namespace():
    """An image whose ipc namespace one process has as the host's (host_ns) and another as its own:
    the validator refuses objects for it (restore would join the host's namespace for it)."""
    from engine import imageformat
    from engine.image import ImageError
    procs = [{"ns": {"ipc": "ipc-0"}, "host_ns": ["ipc"]}, {"ns": {"ipc": "ipc-0"}}]
    doc = {"processes": procs, "sysvipc": {"ipc-0": {"sem": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0,
                                                             "cuid": 0, "cgid": 0, "vals": [1]}]}}}
    with pytest.raises(ImageError, match="an ipc namespace no process is in"):
        imageformat._check_sysvipc(doc)


def test_dumper_thread_back_in_its_own_namespace(case):
    """Dump reads a namespace's objects and checks its limits with its own thread joined to it (no
    helper to fork): the thread is back in its own ipc namespace after a read and after a refusal."""
    from engine import sysvipc
    own = os.stat("/proc/thread-self/ns/ipc").st_ino
    pid = case.start(py_hold(_MAKE.replace("SIZE", "4096")))
    assert os.stat(f"/proc/{pid}/ns/ipc").st_ino != own
    got = sysvipc.read(pid, [pid])
    assert [s["key"] for s in got["shm"]] == [0x1234] and got["sem"][0]["vals"] == [3, 7], got
    assert os.stat("/proc/thread-self/ns/ipc").st_ino == own
    big = case.start(py_hold(_MAKE.replace("SIZE", str(sysvipc.MAX_BYTES + 4096))))
    with pytest.raises(sysvipc.IpcError, match="more than 64 MiB"):
        sysvipc.precheck([big])
    assert os.stat("/proc/thread-self/ns/ipc").st_ino == own


_QBYTES = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def ok(r):
    if r == -1:
        raise OSError(ctypes.get_errno(), "ipc")
    return r
def qbytes(q, value):
    buf = ctypes.create_string_buffer(512)
    ok(libc.msgctl(q, 2, buf)); ctypes.c_ulong.from_buffer(buf, 88).value = value; ok(libc.msgctl(q, 1, buf))
def msgmnb(value):
    with open("/proc/sys/kernel/msgmnb", "w") as f:
        f.write(value)
msgmnb("60000")          # (root here lacks CAP_SYS_RESOURCE: qbytes past msgmnb is refused)
low = ok(libc.msgget(0x71, 0o1600)); high = ok(libc.msgget(0x72, 0o1600))
body = b"x" * 900
ok(libc.msgsnd(low, ctypes.create_string_buffer(b"\\1" + b"\\0" * 7 + body), len(body), 0))
qbytes(low, 1000)        # lowered: a second message of 900 bytes no longer fits
qbytes(high, 50000)      # past msgmnb once it is back to a fresh namespace's 16384
msgmnb("16384")
"""

_QBYTES_LIST = ("python3 -c 'import ctypes; l = ctypes.CDLL(None)\n"
                "for q in (0, 1):\n"
                "    b = ctypes.create_string_buffer(512); l.msgctl(q, 2, b)\n"
                "    print(q, ctypes.c_ulong.from_buffer(b, 88).value, ctypes.c_ulong.from_buffer(b, 72).value)'")


def test_message_queue_qbytes_kept(case):
    """A queue's msg_qbytes lowered below what it holds and another's past msgmnb (made while msgmnb
    was higher) come back as they were (restore made them with the namespace's msgmnb before), and the
    snapshot compares them (a restore that loses one fails `assert_same`)."""
    before, after = case.roundtrip(py_hold(_QBYTES), _QBYTES_LIST)
    assert before.snap.check_output.split() == ["0", "1000", "900", "1", "50000", "0"], before.snap.check_output
    assert after.snap.check_output == before.snap.check_output
    assert "qbytes=1000" in before.root.ipc and "qbytes=50000" in before.root.ipc, before.root.ipc


def test_qbytes_validator():
    """qbytes: a message queue's only, 0..2^31-1; images without it are read."""
    from engine import sysvipc

    def fail(text):
        raise ValueError(text)
    q = {"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "msgs": []}
    sysvipc.check({"ipc-0": {"msg": [q]}}, {"ipc-0"}, fail)
    sysvipc.check({"ipc-0": {"msg": [dict(q, qbytes=1 << 20)]}}, {"ipc-0"}, fail)
    for bad in (-1, 1 << 31, "9", True):
        with pytest.raises(ValueError, match="qbytes"):
            sysvipc.check({"ipc-0": {"msg": [dict(q, qbytes=bad)]}}, {"ipc-0"}, fail)
    with pytest.raises(ValueError, match="exactly key"):
        sysvipc.check({"ipc-0": {"sem": [{"key": 1, "id": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0,
                                           "cgid": 0, "vals": [1], "qbytes": 5}]}}, {"ipc-0"}, fail)


def test_locked_segment_stays_locked(case):
    """A segment locked in memory (shmctl SHM_LOCK: SHM_LOCKED in its mode) comes back locked, an
    unlocked one unlocked; the snapshot compares it."""
    body = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
locked = libc.shmget(0x81, 4096, 0o1600); libc.shmget(0x82, 4096, 0o1600)
assert libc.shmctl(locked, 11, None) == 0, ctypes.get_errno()
"""
    check = "sed 1d /proc/sysvipc/shm | awk '{print $1, $3}'"
    before, after = case.roundtrip(py_hold(body), check)
    assert before.snap.check_output.split() == ["129", "2600", "130", "600"], before.snap.check_output
    assert after.snap.check_output == before.snap.check_output
    assert before.root.ipc.count(" locked") == 1, before.root.ipc
