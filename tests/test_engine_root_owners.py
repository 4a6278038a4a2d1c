"""Owners a fresh instance would not have (session 21): an mqueue root's and a pty node's.

An mqueue superblock's root belongs to the fsuid of its ipc namespace's creator (a rootless
runtime's user namespace root) and may be chowned since; a pty's slave node belongs to whoever
opened the ptmx, and login, getty or sshd chown it to the user (mode 620, group tty). Restore
makes the ipc namespace and opens the ptmx itself, as root: each comes back root's unless the
image keeps its owner and mode (the mqueue type's payload; the pty object's `node`). The snapshot
compares both (mount roots' owners: zdtm/snapshot.py `_root_modes`; pty fds' `node`:
zdtm/fdkinds.py).
"""

from __future__ import annotations

import json
import os

import pytest

from enginecase import assert_same, case, py_hold, take  # noqa: F401  (case: fixture)
from engine import image, imageformat, topology
from engine.fds import pty
from zdtm import snapshot

MQUEUE = """
mkdir -p /dev/mqueue; mount -t mqueue mqueue /dev/mqueue
chown 1000:1001 /dev/mqueue; chmod 1770 /dev/mqueue
"""

DEVPTS = "mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts; touch /dev/console\n"

# Pty 0: master at fd 10, slave at fd 11, chowned as a login would (620, group tty 5); pty 1 bound
# as the console, chowned to a user of its own, its master at fd 12.
PTYS = DEVPTS + py_hold("""
import fcntl, struct, subprocess
def pty():
    m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
    return m
m0, m1 = pty(), pty()
os.chown("/dev/pts/0", 1000, 5); os.chmod("/dev/pts/0", 0o620)
s0 = os.open("/dev/pts/0", os.O_RDWR | os.O_NOCTTY)
os.chown("/dev/pts/1", 1234, 4321); os.chmod("/dev/pts/1", 0o640)
subprocess.run(["mount", "--bind", "/dev/pts/1", "/dev/console"], check=True)
for fd, to in ((m0, 10), (s0, 11), (m1, 12)):
    os.dup2(fd, to); os.close(fd)
""")


def _root_of(state, mountpoint: str) -> str | None:
    proc = state.root
    canon = topology.canonical(proc.mounts)
    return next((proc.roots.get(canon.label(m.mnt_id)) for m in proc.mounts if m.mountpoint == mountpoint), None)


def _fd(state, n: int) -> str:
    return next(f for f in state.root.fds if f.startswith(f"{n}: "))


def test_mqueue_root_keeps_owner_and_mode(case):
    """A chowned mqueue root (the container's ipc namespace's) comes back with its owner and mode."""
    pid = case.start(MQUEUE + "hold\n")
    before = take(pid)
    assert _root_of(before, "/dev/mqueue") == "41770 1000:1001"
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, image.MANIFEST)) as f:
        doc = json.load(f)
    mq = next(sb for sb in doc["superblocks"].values() if sb["fstype"] == "mqueue")
    assert mq["payload"] == {"root": {"mode": 0o1770, "uid": 1000, "gid": 1001}}
    after = take(case.restore(images))
    assert _root_of(after, "/dev/mqueue") == "41770 1000:1001"
    assert_same(before, after)


def test_pty_nodes_keep_owner_and_mode(case):
    """A pty a login chowned (held by its master and its slave) and a chowned pty bound as the
    console come back with their nodes' owners and modes."""
    pid = case.start(PTYS)
    before = take(pid)
    assert "node=620 1000:5" in _fd(before, 10) and "node=620 1000:5" in _fd(before, 11)
    assert "node=640 1234:4321" in _fd(before, 12)
    assert _root_of(before, "/dev/console") == "20640 1234:4321"
    after = take(case.cr(pid))
    assert "node=620 1000:5" in _fd(after, 11), _fd(after, 11)
    assert _root_of(after, "/dev/console") == "20640 1234:4321"
    assert_same(before, after)


# A rootless runtime's shape: the ipc namespace (and the mount namespace that mounts its mqueue)
# made by the user namespace's root, host uid 100000: its mqueue root is that uid's.
USERNS_MQUEUE = "chmod 1777 /run /tmp\n(" + py_hold("""
import ctypes, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000) == 0   # CLONE_NEWUSER
open("/run/u1", "w").close()
while not os.path.exists("/run/u2"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
assert libc.unshare(0x08000000 | 0x00020000) == 0   # CLONE_NEWIPC | CLONE_NEWNS
subprocess.run("mount --make-rprivate /; mkdir -p /tmp/mq; mount -t mqueue mqueue /tmp/mq; touch /run/mq-in",
               shell=True, check=True)
""").strip() + """) </dev/null >/run/mq-log 2>&1 &
wait_for /run/u1
echo "0 100000 65536" > /proc/$!/uid_map; echo "0 100000 65536" > /proc/$!/gid_map; touch /run/u2
wait_for /run/mq-in || { cat /run/mq-log; exit 1; }
hold
"""


def test_mqueue_root_of_a_user_namespace_root_keeps_its_owner(case):
    """The ipc namespace a user namespace's root made (host uid 100000) comes back with its
    mqueue root that uid's, not the restorer's."""
    pid = case.start(USERNS_MQUEUE)
    inner = next(p for p in snapshot.tree_pids(pid) if os.readlink(f"/proc/{p}/ns/ipc") != os.readlink(
        f"/proc/{pid}/ns/ipc"))
    st = os.stat(f"/proc/{inner}/root/tmp/mq")
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    before = take(pid)
    after = take(case.cr(pid))
    assert_same(before, after)


def _check(sb):
    imageformat._check_superblocks({"sb-1": sb}, {}, {}, {}, {})


@pytest.mark.parametrize("payload", [
    {"root": {"mode": 0o17777, "uid": 0, "gid": 0}},
    {"root": {"mode": 0o1777, "uid": -1, "gid": 0}},
    {"root": {"mode": 0o1777, "uid": 0}},
    {"root": {"mode": 0o1777, "uid": 0, "gid": 0}, "more": 1},
    {"root": {"mode": "1777", "uid": 0, "gid": 0}},
])
def test_hostile_mqueue_payload_refused(payload):
    with pytest.raises(image.ImageError, match="payload is not"):
        _check({"fstype": "mqueue", "source": "mqueue", "super_opts": ["rw"], "payload": payload})


def test_mqueue_payload_validates():
    _check({"fstype": "mqueue", "source": "mqueue", "super_opts": ["rw"],
            "payload": {"root": {"mode": 0o1770, "uid": 1000, "gid": 1001}}})


@pytest.mark.parametrize("node", [{"mode": 0o620, "uid": 1 << 32, "gid": 5}, {"mode": 0o620, "uid": 0},
                                  {"mode": 0o20620, "uid": 0, "gid": 5}])
def test_hostile_pty_node_refused(node):
    with pytest.raises(image.ImageError):
        pty._check_object({"kind": "pty", "index": 0, "node": node}, "object pty-0")


def test_mqueue_root_of_the_restorers_own_ipc_namespace_is_never_given_an_owner(case, tmp_path):
    """A forged image: the chowned mqueue's payload, the tree now said to share the restorer's ipc
    namespace. Restore mounts that namespace's mqueue (the host's) and refuses to chown its root,
    in one line; the host's root keeps its owner and mode."""
    from enginecase import CRError, copy_image, load_manifest, save_manifest
    from engine import standin

    def host_root():
        fd = standin.fsmount("mqueue", None, [])
        try:
            st = os.fstat(fd)
            return st.st_mode, st.st_uid, st.st_gid
        finally:
            os.close(fd)

    pid = case.start(MQUEUE + "hold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    img = copy_image(images, tmp_path)
    doc = load_manifest(img)
    for p in doc["processes"]:
        p["host_ns"] = sorted(set(p.get("host_ns") or []) | {"ipc"})
    save_manifest(img, doc)
    before = host_root()
    with pytest.raises(CRError, match="the superblock made is \\(or may be\\) the restorer's own ipc namespace's"):
        case.restore(img)
    assert host_root() == before
