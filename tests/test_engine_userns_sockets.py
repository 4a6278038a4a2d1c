"""Unix socket files on a tmpfs a user namespace owns (CRIU's sk-unix-mntns and overmount_sock under
the uns flavor). Such a superblock takes a new file only from ids its user namespace maps; the
restorer's stand-in sits in the user namespace with the restorer's own (unmapped) ids until its
last step, and its binds and the socket files restored with the tmpfs's files failed with
EOVERFLOW ("Value too large for defined data type")."""

from __future__ import annotations

from enginecase import assert_same, case, py_hold, take  # noqa: F401  (fixture)

# The tree's process: a new user and mount namespace, waiting for the setup to write its maps, then
# its root (uid 0 there is 20000 outside).
USERNS = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x00020000) == 0   # CLONE_NEWUSER | CLONE_NEWNS
open("/tmp/unshared", "w").close()
while not os.path.exists("/tmp/mapped"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
"""

BODY = USERNS + """
import socket
assert libc.mount(b"own", b"/mnt", b"tmpfs", 0, None) == 0      # owned by the user namespace
lst = socket.socket(socket.AF_UNIX); lst.bind("/mnt/listen"); lst.listen(1)       # bound again at restore
gone = socket.socket(socket.AF_UNIX); gone.bind("/mnt/gone"); gone.listen(1)
c = socket.socket(socket.AF_UNIX); c.connect("/mnt/gone"); a, _ = gone.accept()
gone.close()   # its socket file stays (made again with the tmpfs's files); c-a connected through it
"""

SETUP = "(" + py_hold(BODY).strip() + ") </dev/null >/dev/null 2>&1 &\n" + """
wait_for /tmp/unshared
echo "0 20000 20000" > /proc/$!/uid_map; echo "0 400000 50000" > /proc/$!/gid_map; touch /tmp/mapped
hold
"""

def _socket_files(state) -> dict[str, tuple[int, int]]:
    """{name: (uid, gid)} of the socket files in /mnt of the tree's process that holds them."""
    import os
    import stat
    for p in state.snap.procs:
        try:
            names = os.listdir(f"/proc/{p.pid}/root/mnt")
        except OSError:
            continue
        found = {n: os.lstat(f"/proc/{p.pid}/root/mnt/{n}") for n in names}
        if found:
            return {n: (st.st_uid, st.st_gid) for n, st in found.items() if stat.S_ISSOCK(st.st_mode)}
    return {}


def test_sockets_on_a_tmpfs_of_a_user_namespace(case):
    pid = case.start(SETUP)
    before = take(pid)
    files = _socket_files(before)
    assert files == {"listen": (20000, 400000), "gone": (20000, 400000)}
    after = take(case.cr(pid))
    assert_same(before, after)      # (the fds: the listener, the pair, their names)
    # the same socket files, owned by the user namespace's root as before (not by the restorer)
    assert _socket_files(after) == files


# Deleted files in a user namespace's own mount namespace: one on its tmpfs (made again as ids it
# maps), one on the namespace's locked root (taken again through the root's copy in the user
# namespace, not left on the mount the copy replaced: it came back "detached"); and a tmpfs with a
# locked mount on it that only that namespace has (dump clones it recursively: it raised NameError;
# then tar archived the locked proc on it too, and failed).
GHOSTS = USERNS + """
assert libc.mount(b"own", b"/mnt/own", b"tmpfs", 0, None) == 0
g1 = open("/mnt/own/ghost", "w+"); g1.write("on the tmpfs of the user namespace"); g1.flush(); os.unlink("/mnt/own/ghost")
g2 = open("/tmp/ghost", "w+"); g2.write("on the locked root"); g2.flush(); os.unlink("/tmp/ghost")
"""

GHOST_SETUP = """
mkdir -p /mnt/own /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/c /mnt/t/p; mount -t tmpfs c /mnt/t/c
mount -t proc proc /mnt/t/p; echo kept > /mnt/t/f
""" + "(" + py_hold(GHOSTS).strip() + ") </dev/null >/dev/null 2>&1 &\n" + """
wait_for /tmp/unshared
echo "0 20000 20000" > /proc/$!/uid_map; echo "0 400000 50000" > /proc/$!/gid_map; touch /tmp/mapped
umount -l /mnt/t
hold
"""


def test_deleted_files_and_a_locked_tmpfs_of_a_user_namespace(case):
    pid = case.start(GHOST_SETUP)
    before = take(pid)
    ghosts = [f for p in before.snap.procs for f in p.fds if "(deleted)" in str(f)]
    assert len(ghosts) == 2 and not any("detached" in str(f) for f in ghosts), ghosts
    after = take(case.cr(pid))
    assert_same(before, after)      # the deleted files on the same mounts, with what they read
