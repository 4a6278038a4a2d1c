"""Files reached through mounts outside the dumped namespaces (issue 14 items 5 and 6).

A process that opened a file and then unshared its mount namespace holds the
file through a mount of the parent namespace: when only the child's tree is
dumped, that mount is in no dumped namespace. Dump locates the file at the same
path on a visible mount of the same superblock and restore opens it there (the
outside mount itself is not recreated: its fd then names the visible mount);
a file no dumped mount reaches is refused, naming it and --external file[].
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

import enginecase
from enginecase import case, mntcr, take  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

# pid 1 keeps the parent namespace; its child opened /dev/null and a tmpfs file there, then unshared.
OPENED_BEFORE_UNSHARE = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; printf abcdef > /mnt/t/f
sh -c 'exec 7</dev/null 8</mnt/t/f; dd bs=2 count=1 <&8 >/dev/null 2>&1
       exec unshare -m sh -c "mkdir /mnt/t/sub; mount -t tmpfs mine /mnt/t/sub
                              exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1"' &
hold
"""


def _child(pid: int) -> int:
    kids = [p for p in tree_pids(pid) if p != pid]
    assert len(kids) == 1, kids
    return kids[0]


def _fds(state) -> dict[int, tuple[str, str]]:
    """{fd: (line without its mount, mount label)} of the root process."""
    out = {}
    for line in state.root.fds:
        m = re.match(r"(\d+): (.*) mnt=(\S+)(.*)$", line)
        out[int(m[1])] = (m[2] + m[4], m[3])
    return out


def test_fd_opened_before_unshare(case):
    """fds 7 (/dev/null) and 8 (a tmpfs file at offset 2) of the parent namespace: same file, flags
    and offset after restore, on the child namespace's mount at that path."""
    pid = case.start(OPENED_BEFORE_UNSHARE)
    child = _child(pid)
    before = take(child)
    assert _fds(before)[7][1] == "detached" and _fds(before)[8][1] == "detached"
    after = take(case.cr(child))
    a, b = _fds(before), _fds(after)
    assert {n: v[0] for n, v in a.items()} == {n: v[0] for n, v in b.items()}
    assert b[7][1] == "/dev" and b[8][1] == "/mnt/t"
    assert before.fd_data[0] == after.fd_data[0]
    assert before.root.tree_text == after.root.tree_text


# The child opens /etc/passwd (the container's /etc is a bind of the host's, declared external), then
# unshares and unmounts /etc: no dumped mount reaches the file any more (a runtime's host log).
HOST_FILE = """
sh -c 'exec 7</etc/passwd; dd bs=3 count=1 <&7 >/dev/null 2>&1
       exec unshare -m sh -c "umount /etc; exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1"' &
hold
"""


def test_host_file_refused_with_the_flag(case):
    """Dump refuses (naming the file and --external file[...]) and leaves the tree running."""
    pid = case.start(HOST_FILE)
    child = _child(pid)
    r = _dump(case, child)
    assert r.returncode != 0, "dump accepted an fd that restore cannot reopen"
    err = r.stderr
    assert "fd 7 (/etc/passwd)" in err and "--external file[/etc/passwd]:KEY" in err, err
    assert os.path.exists(f"/proc/{child}") and _state(child) not in ("T", "Z"), "the tree was not left running"


def test_host_file_declared_external(case):
    """--external file[/etc/passwd]:pw at dump, file[pw]:/etc/passwd at restore: the same file at
    the same offset, still on a mount outside the tree."""
    pid = case.start(HOST_FILE)
    child = _child(pid)
    before = take(child)
    images = case.new_images_dir()
    r = _dump(case, child, "--external", "file[/etc/passwd]:pw", images=images)
    assert r.returncode == 0, r.stderr
    _hostile_external_fd_refused(images)
    after = take(case.restore(images, ("--external", "file[pw]:/etc/passwd")))
    assert _fds(before)[7] == _fds(after)[7] == (_fds(before)[7][0], "detached")
    assert "pos=3" in _fds(after)[7][0]
    assert before.fd_data[0] == after.fd_data[0]


def _set_owner(pid: int, fd: int, owner: int, sig: int) -> None:
    """F_SETOWN `owner` (negative: a process group) and F_SETSIG `sig` on fd `fd` of `pid`, through
    our copy of it (the same open file description). (No O_ASYNC: a regular file without a fasync
    hook does not keep it.)"""
    import fcntl
    from engine import fown
    c = enginecase.grab_fd(pid, fd)
    try:
        fcntl.fcntl(c, fcntl.F_SETOWN, owner)
        fcntl.fcntl(c, fown.F_SETSIG, sig)
    finally:
        os.close(c)


def test_host_file_declared_external_keeps_its_owner(case):
    """The external file's fd has an owner (F_SETOWN: the process itself, as a lease's taker is) and
    a signal (F_SETSIG SIGUSR1): both come back on the restored fd, the owner being the restored
    process (they used to be dropped silently: no more SIGIO)."""
    import signal
    from engine import fown, image
    pid = case.start(HOST_FILE)
    child = _child(pid)
    _set_owner(child, 7, child, signal.SIGUSR1)
    before = take(child)
    assert "async-owner=pid:P0 sig=10" in _fds(before)[7][0], _fds(before)
    images = case.new_images_dir()
    r = _dump(case, child, "--external", "file[/etc/passwd]:pw", images=images)
    assert r.returncode == 0, r.stderr
    fd = next(f for p in image.load(images)["processes"] for f in p["fds"] if f["fd"] == 7)
    assert fd["async_owner"] and fd["async_signal"] == signal.SIGUSR1, fd
    restored = case.restore(images, ("--external", "file[pw]:/etc/passwd"))
    after = take(restored)
    assert _fds(before)[7] == _fds(after)[7]
    c = enginecase.grab_fd(restored, 7)
    try:
        assert fown.read(c) == (fown.F_OWNER_PID, restored, signal.SIGUSR1)
    finally:
        os.close(c)


# HOST_FILE with a STOP_WATCH process in the dumped child's tree (the child's namespace unmounted /etc).
_INNER = ("umount /etc\n" + enginecase.STOP_WATCH.replace(
    "wait_for /run/.watching", "while [ ! -e /run/.watching ]; do sleep 0.05; done")
    + "exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1\n")
HOST_FILE_WATCHED = ("cat > /run/inner.sh <<'EOF'\n" + _INNER + "EOF\n"
                     "sh -c 'exec 7</etc/passwd; exec unshare -m sh /run/inner.sh' </dev/null >/dev/null 2>&1 &\n"
                     "hold\n")


def test_host_file_declared_external_with_group_owner_refused_unstopped(case):
    """The external file's owner is a process group (F_SETOWN -pgid), which restore cannot give
    back: refused before the stop (as for any other fd), naming the fd and the group; the tree was
    never stopped."""
    import signal
    pid = case.start(HOST_FILE_WATCHED)
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        child, = (int(x) for x in f.read().split())   # (the watcher is its child)
    _set_owner(child, 7, -os.getpgid(child), signal.SIGUSR1)
    r = _dump(case, child, "--external", "file[/etc/passwd]:pw")
    assert r.returncode != 0, "dump accepted a process group as owner"
    assert re.search(r"process \d+ fd 7 \(/etc/passwd\): process group \d+ as its signal owner", r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not enginecase.was_stopped(child), "dump stopped the tree before it refused"
    assert _state(child) not in ("T", "Z"), "the tree was not left running"


def test_host_file_refused_unstopped(case):
    """HOST_FILE without --external file[]: refused before the stop (it used to be refused once the
    tree was stopped, in engine/detached.py), with the line naming the file and the flag; the
    tree was never stopped."""
    pid = case.start(HOST_FILE_WATCHED)
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        child, = (int(x) for x in f.read().split())
    r = _dump(case, child)
    assert r.returncode != 0, "dump accepted an fd that restore cannot reopen"
    assert re.search(r"process \d+ fd 7 \(/etc/passwd\) on mount \d+, in no dumped namespace: no external mount "
                     r"of its filesystem reaches the file; declare it with --external file\[/etc/passwd\]:KEY",
                     r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not enginecase.was_stopped(child), "dump stopped the tree before it refused"
    assert _state(child) not in ("T", "Z"), "the tree was not left running"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _dump(case, pid: int, *extra: str, images: str | None = None):
    """mntcr dump with /usr external only (the child unmounted /etc)."""
    return mntcr("dump", "-t", str(pid), "-D", images or case.new_images_dir(), "--external", "mnt[/usr]:usr", *extra)


def test_external_slavery_refused_at_dump(case):
    """A slave of an outside group with no --external for it: refused at dump (it used to be
    accepted and fail at restore), naming the mount and the flag, before the tree is stopped."""
    outer = case.outer()
    pid = case.start(enginecase.STOP_WATCH + "mount --make-slave /ext\nhold\n", outer=outer,
                     binds=((outer.path, "/ext"),))
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), "--external", "mnt[/usr]:usr",
              "--external", "mnt[/etc]:etc")
    assert r.returncode != 0, "dump accepted a master it cannot give back"
    assert "(/ext)" in r.stderr and "--external mnt[/ext]:KEY" in r.stderr, r.stderr
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) not in ("T", "Z"), "the tree was not left running"


def test_volume_of_host_disk_asks_for_the_mount(case, tmp_path):
    """A volume (a bind of a directory) of a host block device that is not external: the message
    names --external mnt[VOLUME] (binding the host path back), not the device (issue 14 item 8)."""
    for cmd in ("mkfs.ext4", "losetup"):
        if shutil.which(cmd) is None:
            pytest.skip(f"{cmd} is not installed (Debian packages e2fsprogs, mount)")
    _, dev = enginecase.ext4_on_loop(tmp_path)
    try:
        rdev = os.stat(dev).st_rdev
        pid = case.start(enginecase.STOP_WATCH + f"mknod /dev/disk b {os.major(rdev)} {os.minor(rdev)}; "
                         "mkdir /mnt/fs /mnt/vol\n"
                         "mount /dev/disk /mnt/fs; mkdir /mnt/fs/data; mount --bind /mnt/fs/data /mnt/vol\n"
                         "umount /mnt/fs; hold\n")
        r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), "--external", "mnt[/usr]:usr",
                  "--external", "mnt[/etc]:etc")
        assert r.returncode != 0
        assert "(/mnt/vol)" in r.stderr and "declare the mount with --external mnt[/mnt/vol]:KEY" in r.stderr, r.stderr
        assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_covered_unsupported_mount_declared_external(case):
    """devtmpfs at /mnt/d under a tmpfs: --external mnt[/mnt/d] applies to the devtmpfs (the host's
    one superblock, as a runtime's /dev tmpfs stacks on the host's /dev), the tmpfs over it is
    dumped (issue 14 item 6)."""
    if not os.path.exists("/dev/null") or "devtmpfs" not in open("/proc/filesystems").read():
        pytest.skip("no devtmpfs on this kernel")
    host = next((line.split() for line in open("/proc/self/mountinfo") if " - devtmpfs " in line), None)
    if host is None or host[3] != "/":
        pytest.skip("the host has no devtmpfs mount at its root to bind back")
    before, after = case.roundtrip(
        "mkdir /mnt/d; mount -t devtmpfs devtmpfs /mnt/d; mount -t tmpfs cover /mnt/d; echo top > /mnt/d/f\nhold\n",
        check="cat /mnt/d/f; unshare -m --propagation private sh -c 'umount /mnt/d; ls /mnt/d/null'",
        dump_extra=("--external", "mnt[/mnt/d]:devs"), restore_extra=("--external", f"mnt[devs]:{host[4]}"))
    stack = [m.fstype for m in after.root.mounts if m.mountpoint == "/mnt/d"]
    assert sorted(stack) == ["devtmpfs", "tmpfs"]


def test_console_pty_bind(case):
    """LXC's /dev/console: a file bind of a host pty (root /N of the host's devpts). Undeclared it is
    refused at dump (it used to fail at restore: "cannot bind root /N"); declared external it
    round-trips, bound from the host path given at restore (issue 14 item 6)."""
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        pid = case.start(enginecase.STOP_WATCH + "hold\n", binds=((name, "/dev/console"),))
        r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), "--external", "mnt[/usr]:usr",
                  "--external", "mnt[/etc]:etc", "--leave-running")
        assert r.returncode != 0, "dump accepted a pty bind that restore cannot recreate"
        assert "(/dev/console) on devpts" in r.stderr and "--external mnt[/dev/console]:KEY" in r.stderr, r.stderr
        assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
        assert _state(pid) not in ("T", "Z")
        before = take(pid)
        after = take(case.cr(pid, ("--external", "mnt[/dev/console]:console"),
                             ("--external", f"mnt[console]:{name}")))
        enginecase.assert_same(before, after)
        m = next(m for m in after.root.mounts if m.mountpoint == "/dev/console")
        assert m.fstype == "devpts" and m.root == "/" + name.rsplit("/", 1)[1]
    finally:
        os.close(master)
        os.close(slave)


def test_overlay_root_made_outside(case):
    """A container whose root is an overlay its runtime made outside (layers in the outer "host"
    namespace): treated like a directory root (restored with --root), not refused with "no mount
    holds its layer" (issue 14 item 8)."""
    if "overlay" not in open("/proc/filesystems").read():
        pytest.skip("overlay is not in /proc/filesystems")
    outer = case.outer()
    p = outer.path
    # Private: the keeper's lazy umount of its old root would otherwise propagate to the overlay.
    outer.sh(f"mount --make-private {p}")
    outer.sh(f"mkdir -p {p}/l/usr {p}/l/.hold {p}/u {p}/w {p}/merged && echo image > {p}/l/os-release && "
             f"for b in bin lib lib64 sbin; do ln -s usr/$b {p}/l/$b; done && "
             f"ln -s {os.path.realpath(shutil.which('sleep'))} {p}/l/.hold/mntcr-hold && "
             f"mount -t overlay overlay -o lowerdir={p}/l,upperdir={p}/u,workdir={p}/w {p}/merged")
    pid = case.start("""
unshare -m sh -c 'mount --rbind /usr /ovl/usr; mkdir -p /ovl/old; cd /ovl; pivot_root . old; cd /
                  python3 -c "import ctypes; assert ctypes.CDLL(None).umount2(b\\"/old\\", 2) == 0"
                  exec 0</os-release 1>/state 2>&1; exec /.hold/mntcr-hold 100000' &
hold
""", outer=outer, binds=((f"{p}/merged", "/ovl"),))
    child = _child(pid)
    before = take(child)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(child), "-D", images, "--external", "mnt[/usr]:usr")
    assert r.returncode == 0, r.stderr
    after = take(case.restore(images, ("--root", f"{p}/merged"), outer=outer))
    enginecase.assert_same(before, after)
    assert next(m for m in after.root.mounts if m.mountpoint == "/").fstype == "overlay"


def _hostile_external_fd_refused(images: str) -> None:
    """The external fd record passes the validator as dump wrote it (and `mntcr show` names it);
    one with a mount too, or a key that is no key, is refused with one line."""
    import copy
    import json
    from engine import image
    doc = image.load(images)
    assert "external file pw" in image.render(doc)
    manifest = os.path.join(images, image.MANIFEST)
    good = open(manifest).read()
    fd = next(f for p in doc["processes"] for f in p["fds"] if f.get("external"))
    try:
        for change, match in (({"mnt": 1, "path": "/x"}, "unknown field .mnt."), ({"external": "../x"}, "external"),
                              ({"external": 7}, "external"), ({"async_owner": 99999}, "signal owner"),
                              ({"async_tid": True}, "'async_tid' without 'async_owner'")):
            bad = copy.deepcopy(doc)
            next(f for p in bad["processes"] for f in p["fds"] if f["fd"] == fd["fd"]).update(change)
            with open(manifest, "w") as f:
                json.dump(bad, f)
            with pytest.raises(image.ImageError, match=match):
                image.load(images)
    finally:
        with open(manifest, "w") as f:
            f.write(good)


def test_external_peers_with_disjoint_roots(case):
    """Two external binds of one outside tmpfs (roots /x and /y) in one peer group, and no mount of
    the group covering both (no helper of an outside filesystem's root can be made): restore
    puts /b in /a's group through a clone of /a rooted at /b's root, reached by its file handle
    (issue 14 item 6; it used to be refused at dump)."""
    outer = case.outer()
    p = outer.path
    outer.sh(f"mkdir {p}/x {p}/y; echo in-y > {p}/y/f")
    pid = case.start("umount /o\nhold\n", outer=outer, binds=((p, "/o"), (f"{p}/x", "/a"), (f"{p}/y", "/b")))
    before = take(pid, check="cat /b/f")
    a, b = (next(m for m in before.root.mounts if m.mountpoint == mp) for mp in ("/a", "/b"))
    assert a.shared is not None and a.shared == b.shared, (a, b)
    new = case.cr(pid, dump_extra=("--external", "mnt[/a]:a", "--external", "mnt[/b]:b"),
                  restore_extra=("--external", f"mnt[a]:{p}/x", "--external", f"mnt[b]:{p}/y"), outer=outer)
    after = take(new, check="cat /b/f")
    enginecase.assert_same(before, after)
    a, b = (next(m for m in after.root.mounts if m.mountpoint == mp) for mp in ("/a", "/b"))
    assert a.shared is not None and a.shared == b.shared, (a, b)
