"""Findings of session 18's review, each held by a test that fails without its fix."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from engine import ctty, image, imageformat
from enginecase import STOP_WATCH, CRError, case, py_hold, wait_until, was_stopped  # noqa: F401  (fixture)
from test_engine_ctty import _pty_tree

# A session leader whose terminal is a pty of the host (its master outside the tree: a shell started
# from a terminal emulator, the host's /dev/pts bound in), holding the slave as an fd and /dev/tty.
_HOST_TERMINAL = """
mknod /dev/tty c 5 0; chmod 666 /dev/tty
""" + py_hold("""
if os.fork() == 0:
    os.setsid()
    s = os.open("/dev/pts/NUM", os.O_RDWR)   # (it acquires the host pty as its terminal)
    os.dup2(s, 10); os.close(s)
    os.dup2(os.open("/dev/tty", os.O_RDWR), 11)
""")


def test_leader_on_a_host_pty_with_dev_tty(case):
    """The slave fd of a terminal from outside the tree is reopened as a file: its `ctty` mark must go
    with its pty fields (the leader takes the terminal through its /dev/tty). The mark stayed, and dump
    ended with "dump produced an image restore would refuse (unknown field 'ctty' in fd)", after the stop."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        pid = case.start(STOP_WATCH + _HOST_TERMINAL.replace("NUM", name.rsplit("/", 1)[1]),
                         binds=(("/dev/pts", "/dev/pts"),))
        got = case.cr(pid, ("--external", "mnt[/dev/pts]:pts"), ("--external", "mnt[pts]:/dev/pts"))
        with open(f"/proc/{got}/task/{got}/children") as f:
            leader = next(k for k in map(int, f.read().split()) if os.getsid(k) == k)
        assert ctty.device(ctty.tty_nr(leader)) == (os.major(os.stat(name).st_rdev), os.minor(os.stat(name).st_rdev))
        assert os.readlink(f"/proc/{leader}/fd/10") == name
    finally:
        os.close(master)


_QUEUE = py_hold("""
import ctypes
rt = ctypes.CDLL("librt.so.1", use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
q = rt.mq_open(b"/jobs", os.O_RDWR | os.O_CREAT, 0o600, ctypes.byref(Attr(0, 1, 8, 0)))
assert q >= 0 and rt.mq_send(q, b"first", 5, 0) == 0, ctypes.get_errno()
os.close(q)
""")

_SENDER = """
import ctypes, os
rt = ctypes.CDLL("librt.so.1", use_errno=True)
q = rt.mq_open(b"/jobs", os.O_WRONLY)
print(rt.mq_send(q, b"second", 6, 0), flush=True)
"""

_DRAIN = """
import ctypes, os
rt = ctypes.CDLL("librt.so.1", use_errno=True)
q = rt.mq_open(b"/jobs", os.O_RDONLY | os.O_NONBLOCK)
b = ctypes.create_string_buffer(8)
while (n := rt.mq_receive(q, b, 8, None)) >= 0:
    print(b.raw[:n].decode())
"""


def test_posix_queue_of_an_ipc_namespace_shared_with_a_process_outside(case):
    """A process outside the tree in the tree's ipc namespace, blocked sending to its full POSIX queue:
    dump's read (taking each message, sending it back) took that process's message in with the
    queue's, whose send-back then found the queue full: the message was lost (its sender told it was
    sent) and dump failed after the stop. A full queue with a process outside the tree in its namespace
    is refused before the stop now, the queue left alone. (Such a process is common: `unshare -i --fork`
    and the tests' own keeper wait there; a queue that is not full is read as before.)"""
    pid = case.start(STOP_WATCH + _QUEUE)
    sender = subprocess.Popen(["nsenter", f"--ipc=/proc/{pid}/ns/ipc", "python3", "-c", _SENDER],
                              stdout=subprocess.PIPE, text=True)
    try:
        def blocked():   # (in mq_timedsend, 242: the queue holds its one message)
            with open(f"/proc/{sender.pid}/syscall") as f:
                return f.read().split()[0] == "242"
        wait_until(blocked, "the sender's blocked send")
        with pytest.raises(CRError, match=r"POSIX message queue /jobs is full and process \d+, outside the tree, "
                                          r"is in its ipc namespace \(it may be waiting to send to it\)"):
            case.dump(pid, case.new_images_dir(), ("--leave-running",))
        assert not was_stopped(pid), "dump stopped the tree before it refused"
        assert sender.poll() is None, "the sender's message was taken"
    finally:
        sender.kill()
        sender.wait()
    left = subprocess.run(["nsenter", f"--ipc=/proc/{pid}/ns/ipc", "python3", "-c", _DRAIN],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == ["first"], left


def test_image_ctty_node_on_an_external_devpts_refused(case):
    """A leader's `ctty_node` on a devpts the image marks external (the host's, which --external
    would bind in): its number is a host terminal, which TIOCSCTTY would make the stand-in's. The
    validator refuses it whatever the number (the node is its own pty's only on a devpts restore makes)."""
    pid = _pty_tree(case, "no_fd")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    imageformat.validate(json.loads(json.dumps(good)))
    leader = next(i for i, p in enumerate(good["processes"]) if "ctty_node" in p)
    doc = json.loads(json.dumps(good))
    mnt = doc["processes"][leader]["ctty_node"]["mnt"]
    m = next(m for ns in doc["mntns"].values() for m in ns["mounts"] if m["id"] == mnt)
    sb = doc["superblocks"][m["sb"]]
    assert sb["fstype"] == "devpts", sb
    sb.update(external=True, archives=[])
    m["external"] = "pts"
    with pytest.raises(image.ImageError, match="not the node of its pty on a devpts mount the restore makes"):
        imageformat.validate(doc)


def test_image_semaphores_bounded():
    """The image's semaphore sets are checked against a bound of semaphores in all (sysvipc.MAX_SEMS):
    each set may hold 32000 values and a namespace 4096 sets, so a 128 MiB manifest named ~64 million
    semaphores, which restore made (a kernel struct sem, a cache line, each: ~4 GiB the host's kernel
    keeps). A count within it passes."""
    from engine import sysvipc

    def fail(text):
        raise ValueError(text)

    def sets(n):
        return {"ipc-0": {"sem": [{"key": i, "id": i, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                                   "vals": [0] * 32000} for i in range(n)]}}
    sysvipc.check(sets(sysvipc.MAX_SEMS // 32000), {"ipc-0"}, fail)
    with pytest.raises(ValueError, match=r"more than \d+ semaphores in all"):
        sysvipc.check(sets(sysvipc.MAX_SEMS // 32000 + 1), {"ipc-0"}, fail)


def test_image_dev_tty_names_only_a_pty_node(case):
    """A /dev/tty fd's terminal (`tty`, which its stand-in takes with TIOCSCTTY) is a pty's node on a
    devpts mount, on an external one a host terminal the user gave; another device of an external
    mount (a console, a virtual terminal of the host's /dev) is refused by the validator."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        pid = case.start(STOP_WATCH + _HOST_TERMINAL.replace("NUM", name.rsplit("/", 1)[1]),
                         binds=(("/dev/pts", "/dev/pts"),))
        images = case.new_images_dir()
        case.dump(pid, images, ("--external", "mnt[/dev/pts]:pts"))
    finally:
        os.close(master)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    imageformat.validate(json.loads(json.dumps(good)))
    where = next((i, j) for i, p in enumerate(good["processes"]) for j, f in enumerate(p["fds"])
                 if f.get("kind") == "ctty" and "tty" in f)
    usr = next(m for ns in good["mntns"].values() for m in ns["mounts"] if m.get("external") == "usr")
    for change in ({"mnt": usr["id"], "path": "/bin/sh"}, {"path": "/ptmx"}):
        doc = json.loads(json.dumps(good))
        doc["processes"][where[0]]["fds"][where[1]]["tty"].update(change)
        with pytest.raises(image.ImageError, match="not the node of a pty on a devpts mount"):
            imageformat.validate(doc)


@pytest.mark.parametrize("field", [{"out": "QUJ\n"}, {"in": ["QUJ\n"]}])
def test_image_pty_bytes_with_a_newline_last_refused(field):
    """The pty object's waiting bytes are base64 checked by imageformat.b64, whose pattern ended in
    `$`, which also matches before a newline last: "QUJ\\n" passed the rule, then its decoding raised
    binascii.Error out of the validator (no one-line refusal). Refused as the rule says now."""
    from engine.fds import pty
    obj = {"kind": "pty", "index": 1, "termios": [0] * 6 + [[0] * 32], "winsize": [0] * 4, **field}
    with pytest.raises(image.ImageError, match=r"must be base64 of at most \d+ bytes"):
        pty._check_object(obj, "object pty-1")


def test_image_names_with_a_newline_last_refused(case):
    """The validator's name patterns ended in `$`, which re.match also takes before a newline last: an
    external key "usr\\n" passed (restore's refusal then asked for `--external mnt[usr` and a second
    line), and a superblock id "sb-N\\n" too. They end in \\Z now."""
    pid = case.start(STOP_WATCH + "hold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    imageformat.validate(json.loads(json.dumps(good)))
    doc = json.loads(json.dumps(good))
    usr = next(m for ns in doc["mntns"].values() for m in ns["mounts"] if m.get("external") == "usr")
    usr["external"] = "usr\n"
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "external" in str(e.value), e.value
    doc = json.loads(json.dumps(good))
    sid = next(iter(doc["superblocks"]))
    doc["superblocks"][sid + "\n"] = doc["superblocks"].pop(sid)
    with pytest.raises(image.ImageError, match="is not sb-N"):
        imageformat.validate(doc)
