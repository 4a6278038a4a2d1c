"""The own limits of the tree's ipc namespace (engine/ipcvars.py): raised ones come back before the
objects that need them are made (a System V message longer than the default msgmax, a POSIX queue
longer than the default msg_max), and are compared after restore; what restore cannot keep is
refused before the stop; the validator's rule."""

from __future__ import annotations

import os

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

_RAISE = """
import ctypes, struct
for name, v in (("kernel/msgmax", "65536"), ("kernel/msgmnb", "200000"), ("fs/mqueue/msg_max", "50"),
                ("kernel/shm_next_id", "77"), ("fs/mqueue/msgsize_default", "4096")):
    with open("/proc/sys/" + name, "w") as f:
        f.write(v)
libc = ctypes.CDLL(None, use_errno=True)
q = libc.msgget(0x9abc, 0o1600)
assert q >= 0, ctypes.get_errno()
body = b"x" * 20000                  # (longer than a fresh namespace's msgmax, 8192)
assert libc.msgsnd(q, ctypes.create_string_buffer(struct.pack("l", 1) + body), len(body), 0) == 0, ctypes.get_errno()
rt = ctypes.CDLL("librt.so.1", use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
# (longer than a fresh namespace's msg_max, 10; the tree has no CAP_SYS_RESOURCE to pass it)
mq = rt.mq_open(b"/long", os.O_RDWR | os.O_CREAT, 0o600, ctypes.byref(Attr(0, 40, 64, 0)))
assert mq >= 0 and rt.mq_send(mq, b"first", 5, 0) == 0, ctypes.get_errno()
os.close(mq)
"""

_SHOW = ("for v in kernel/msgmax kernel/msgmnb kernel/shm_next_id kernel/msg_next_id fs/mqueue/msg_max "
         "fs/mqueue/msgsize_default fs/mqueue/queues_max; do echo $v=$(cat /proc/sys/$v); done\n"
         "sed 1d /proc/sysvipc/msg | awk '{print $1, $2, $4, $5}'\n"
         "python3 -c 'import ctypes, os; rt = ctypes.CDLL(\"librt.so.1\"); a = (ctypes.c_long * 8)(); "
         "q = rt.mq_open(b\"/long\", os.O_RDONLY); rt.mq_getattr(q, a); print(\"mq\", list(a[1:4]))'")


def test_raised_limits_restored_before_their_objects(case):
    """msgmax raised for a 20000-byte message, mqueue msg_max raised for a 40-message queue, a set
    shm_next_id and msgsize_default: restored with the message and the queue (made after the
    limits), every value as it was (the snapshot compares them too)."""
    before, after = case.roundtrip(py_hold(_RAISE), _SHOW)
    out = before.snap.check_output
    for line in ("kernel/msgmax=65536", "kernel/msgmnb=200000", "kernel/shm_next_id=77", "fs/mqueue/msg_max=50",
                 "fs/mqueue/msgsize_default=4096", "39612 0 20000 1", "mq [40, 64, 1]"):
        assert line in out, out
    assert after.snap.check_output == out


def test_image_keeps_only_what_differs(case):
    """The image's "vars" holds the changed values alone."""
    from enginecase import load_manifest
    pid = case.start(py_hold(_RAISE))
    img = case.new_images_dir()
    case.dump(pid, img)
    kept = next(iter(load_manifest(img)["sysvipc"].values()))["vars"]
    assert kept == {"kernel/msgmax": 65536, "kernel/msgmnb": 200000, "fs/mqueue/msg_max": 50,
                    "kernel/shm_next_id": 77, "fs/mqueue/msgsize_default": 4096}, kept


def test_rmid_forced_with_a_segment_refused_unstopped(case):
    """shm_rmid_forced with a segment in the namespace: restore makes it before any process
    attaches it, so writing it would remove it; refused before the stop, in one line."""
    setup = STOP_WATCH + py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
seg = libc.shmget(0x1234, 4096, 0o1600)
assert seg >= 0
p = libc.shmat(seg, None, 0)   # (attached: shm_rmid_forced keeps it)
with open("/proc/sys/kernel/shm_rmid_forced", "w") as f:
    f.write("1")
""")
    pid = case.start(setup)
    with pytest.raises(CRError, match=r"shm_rmid_forced = 1 and System V shared memory segments") as e:
        case.dump(pid, case.new_images_dir())
    assert "\n" not in str(e.value).strip().splitlines()[-1]
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("kept, objs, pattern", [
    ({"kernel/msgmax": -1}, {}, r"kernel/msgmax: out of range"),
    ({"fs/mqueue/msg_max": 65537}, {}, r"fs/mqueue/msg_max: out of range"),
    ({"fs/mqueue/msgsize_max": 127}, {}, r"fs/mqueue/msgsize_max: out of range"),
    ({"kernel/sem": [1, 2, 3]}, {}, r"kernel/sem: out of range"),
    ({"kernel/sem": [1, 2, 3, (1 << 24) + 1]}, {}, r"kernel/sem: out of range"),
    ({"kernel/sem": [1, 2, 3, -1]}, {}, r"kernel/sem: out of range"),
    ({"kernel/sem": [1 << 31, 2, 3, 4]}, {}, r"kernel/sem: out of range"),
    ({"fs/mqueue/queues_max": -(1 << 31) - 1}, {}, r"fs/mqueue/queues_max: out of range"),
    ({"kernel/shmmax": 1 << 64}, {}, r"kernel/shmmax: out of range"),
    ({"kernel/shm_rmid_forced": 2}, {}, r"kernel/shm_rmid_forced: out of range"),
    ({"kernel/msg_next_id": True}, {}, r"kernel/msg_next_id: out of range"),
    ({"kernel/auto_msgmni": 1}, {}, r"must be an object of"),
    ({"../../../etc/passwd": 1}, {}, r"must be an object of"),
    ([], {}, r"must be an object of"),
    ({"kernel/shm_rmid_forced": 1}, {"shm": [{}]}, r"shm_rmid_forced with segments"),
])
def test_validator(kept, objs, pattern):
    """Each value within what the kernel takes; known names only."""
    from engine import ipcvars

    def fail(text):
        raise ValueError(text)
    with pytest.raises(ValueError, match=pattern):
        ipcvars.check(kept, objs, "sysvipc ipc-0 vars", fail)
    # (what the kernel takes: a negative semmsl or queues_max too)
    ipcvars.check({"kernel/sem": [-1, 32000, 32, 128], "fs/mqueue/msg_max": 65536, "fs/mqueue/queues_max": -1},
                  {}, "v", fail)


def test_need_raises_limits_for_objects():
    """A limit dumped lower than what an object needs (queue made by a privileged process, msgmax
    lowered after a long message) is raised while the objects are made."""
    from engine import ipcvars
    doc = {"vars": {"fs/mqueue/msg_max": 5, "kernel/msgmax": 100},
           "msg": [{"msgs": [[1, "eHh4" * 1000]]}],
           "mqueue": [{"maxmsg": 30, "msgsize": 64}]}
    need = ipcvars._need(doc)
    assert ipcvars._first("fs/mqueue/msg_max", 5, need["fs/mqueue/msg_max"]) == 30
    assert ipcvars._first("kernel/msgmax", 100, need["kernel/msgmax"]) == 3000


def test_snapshot_compares_ipc_sysctls(case):
    """The snapshot tells a changed sysctl of the tree's ipc namespace (so a restore that lost one
    fails), and leaves the host's untouched."""
    from zdtm.snapshot import compare, run_check, take
    host = open("/proc/sys/kernel/msgmax").read()
    pid = case.start(py_hold("pass"))
    first = take(pid)
    assert "kernel/msgmax=8192" in first.procs[0].text()
    run_check(pid, "echo 100 > /proc/sys/kernel/msgmax", 30)
    equal, report = compare(first, take(pid))
    assert not equal and "-ipc sysctls:" in report and "kernel/msgmax=100 " in report, report
    assert open("/proc/sys/kernel/msgmax").read() == host


def test_message_past_a_lowered_msgmax_refused_unstopped(case):
    """msgmax lowered after a 20000-byte message was sent: MSG_COPY reads no message longer than
    msgmax, so dump cannot read it (it failed after the stop); refused before it, in one line."""
    setup = STOP_WATCH + py_hold(_RAISE + """
with open("/proc/sys/kernel/msgmax", "w") as f:
    f.write("8192")
""")
    pid = case.start(setup)
    with pytest.raises(CRError, match=r"System V message queue 0 holds a message longer than 8192 bytes "
                                      r"\(the namespace's msgmax, lowered after it was sent\)"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")


_USERNS = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000) == 0   # CLONE_NEWUSER
open("/tmp/unshared", "w").close()
while not os.path.exists("/tmp/mapped"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
assert libc.unshare(0x08000000) == 0   # CLONE_NEWIPC, its user namespace's
""" + _RAISE

_IN_USERNS = "(" + py_hold(_USERNS).strip() + ") </dev/null >/dev/null 2>&1 &\n" + """
wait_for /tmp/unshared
echo "0 100000 65536" > /proc/$!/uid_map; echo "0 100000 65536" > /proc/$!/gid_map; touch /tmp/mapped
hold
"""


def test_limits_of_a_namespace_a_user_namespace_owns(case):
    """An ipc namespace a user namespace owns (root is host uid 100000 there): its sysctls are that
    root's to write, not the host's root's (EACCES); restored as they were (the snapshot compares
    them per process)."""
    before, after = case.roundtrip(_IN_USERNS)
    inner = [p for p in after.snap.procs if "kernel/msgmax=65536" in p.ipc]
    assert inner and "fs/mqueue/msg_max=50" in inner[0].ipc and "kernel/shm_next_id=77" in inner[0].ipc, \
        [p.ipc for p in after.snap.procs]
