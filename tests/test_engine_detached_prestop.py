"""Refusals of files on detached (lazily unmounted) mounts told before the stop (engine/prestop.py
asks engine/detached.py `precheck`, which asks what `plan` asks once the tree is stopped): a
filesystem mounted nowhere visible whose files mntcr does not dump (a lazily unmounted overlay),
and a file outside every visible mount of its filesystem that is no regular file or directory.
Each is refused with dump's line and a non-zero exit, and the tree was never stopped (they used
to be refused once it was). The same refusals once stopped stay (a mount unmounted in between).
A file no external mount reaches: tests/test_engine_outside_mounts.py."""

from __future__ import annotations

import os
import re

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

OVERLAY = """
mkdir -p /mnt/t /mnt/o; mount -t tmpfs t /mnt/t; mkdir /mnt/t/l /mnt/t/u /mnt/t/w; echo x > /mnt/t/l/f
mount -t overlay o -o lowerdir=/mnt/t/l,upperdir=/mnt/t/u,workdir=/mnt/t/w /mnt/o
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _refused_unstopped(case, setup: str, pattern: str) -> None:
    """Start `setup` behind STOP_WATCH: dump must exit non-zero with one line matching `pattern`,
    the tree never stopped and still running."""
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(pattern, msg), msg
    assert len(err.value.args[0].strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"


def _needs_unixfile():
    """Skip where the kernel hands out no bound socket's file (SIOCUNIXFILE, 6.x): dump then refuses
    such a socket in its own search, once stopped."""
    import fcntl
    import socket
    import tempfile
    with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(d, "s"))
        try:
            os.close(fcntl.ioctl(s.fileno(), 0x89E0))
        except OSError as e:
            pytest.skip(f"no SIOCUNIXFILE on this kernel ({e.strerror})")


def _needs_overlay():
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            pytest.skip("overlay is not in /proc/filesystems (kernel without CONFIG_OVERLAY_FS)")


def _statmount_by_fd() -> bool:
    from engine import features
    return features.available()["statmount(fd)"].present


# The refusal of an overlay only a detached mount shows, where the kernel does not show its options.
# (It keeps the line of a detached filesystem no visible mount shows, which the random trees accept.)
NO_OPTIONS = (r"is mounted nowhere visible \(only a detached ramfs or tmpfs can be dumped whole\); overlay is made "
              r"again from the layers its mount options name, which this kernel shows of no mount in no namespace "
              r"\(statmount by fd, STATMOUNT_BY_FD, comes after Linux 6.18\)")


@pytest.mark.parametrize("held", ["fd", "cwd"])
def test_lazily_unmounted_overlay_refused_unstopped(case, held):
    """An fd (or the cwd) on a file of an overlay lazily unmounted since, its only mount: no visible
    mount shows the overlay, an overlay is not dumped whole from a detached mount, and this kernel
    shows no options (so no layers) of a mount in no namespace. Where it does, the overlay is made
    again from its layers: scenarios/lazy_umount/fd_on_detached_overlay.yaml."""
    _needs_overlay()
    if _statmount_by_fd():
        pytest.skip("statmount by fd shows the detached overlay's options: it is restored "
                    "(scenarios/lazy_umount/fd_on_detached_overlay.yaml)")
    hold = "exec 5</mnt/o/f; umount -l /mnt/o\nhold\n" if held == "fd" else "cd /mnt/o; umount -l /mnt/o\nhold\n"
    what = r"fd 5 \(/f\)" if held == "fd" else r"cwd \(/\)"
    _refused_unstopped(case, OVERLAY + hold,
                       rf"process \d+ {what} on mount \d+, in no dumped namespace: its filesystem \(magic 0x794c7630\) "
                       + NO_OPTIONS)


def test_lazily_unmounted_overlay_whose_upper_is_detached_too_refused_unstopped(case):
    """Where the kernel shows a detached overlay's options (statmount by fd): an overlay whose upper
    layer's own mount was lazily unmounted too. Its upperdir path now leads to the directory beneath
    that mount, which holds no such directory: the layer is nowhere the holder's namespace shows,
    refused with the line a visible overlay's moved layer gets (engine/fs/overlay.py _not_there)."""
    _needs_overlay()
    if not _statmount_by_fd():
        pytest.skip("no statmount by fd: every detached overlay is refused before its layers are looked at")
    _refused_unstopped(case, """
mkdir -p /mnt/t /mnt/o; mount -t tmpfs t /mnt/t; mkdir /mnt/t/l /mnt/t/up; echo x > /mnt/t/l/f
mount -t tmpfs up /mnt/t/up; mkdir /mnt/t/up/u /mnt/t/up/w
mount -t overlay o -o lowerdir=/mnt/t/l,upperdir=/mnt/t/up/u,workdir=/mnt/t/up/w /mnt/o
exec 5</mnt/o/f; umount -l /mnt/o; umount -l /mnt/t/up
hold
""", r"process \d+ fd 5 \(/f\) on mount \d+, in no dumped namespace: detached mount \d+ on overlay: its layer "
     r"upperdir=/mnt/t/up/u is no longer a directory at that path \(/mnt/t/up holds no 'u'\)")


def test_lazily_unmounted_overlay_in_a_tree_with_user_namespaces_refused_unstopped(case):
    """Where the kernel shows a detached overlay's options, in a tree with a user namespace: which
    one owns the overlay is told (engine/sbowner.py) through a mount's root, which no fd on the
    detached mount gives; refused rather than made by the restorer's own."""
    _needs_overlay()
    if not _statmount_by_fd():
        pytest.skip("no statmount by fd: every detached overlay is refused before its owner is asked")
    _refused_unstopped(case, OVERLAY + "exec 5</mnt/o/f; umount -l /mnt/o\n"
                       "unshare -U -r /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &\nhold\n",
                       r"process \d+ fd 5 \(/f\) on mount \d+, in no dumped namespace: this overlay, which only a "
                       r"detached mount shows, is in a tree with user namespaces \(which one owns the overlay is not "
                       r"told\): not supported")


def test_lazily_unmounted_overlay_recorded_with_its_layers(case):
    """Where the kernel shows a detached overlay's options: the image has a superblock that no
    namespace mounts, with the overlay's options and its layers on the visible tmpfs, and the
    detached entry of the fd's mount names it (the validator takes the image; restore:
    scenarios/lazy_umount/fd_on_detached_overlay.yaml)."""
    from enginecase import load_manifest
    _needs_overlay()
    if not _statmount_by_fd():
        pytest.skip("no statmount by fd: the detached overlay is refused (test above)")
    pid = case.start(OVERLAY + "exec 5</mnt/o/f; umount -l /mnt/o\nhold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = load_manifest(images)
    (det,) = doc["detached"].values()
    sb = doc["superblocks"][det["sb"]]
    assert (sb["fstype"], det["root"]) == ("overlay", "/"), (sb, det)
    assert not any(e["sb"] == det["sb"] for ns in doc["mntns"].values() for e in ns["mounts"])
    assert {o for o in sb["super_opts"] if o.partition("=")[0] in ("lowerdir", "upperdir", "workdir")} == \
        {"lowerdir=/mnt/t/l", "upperdir=/mnt/t/u", "workdir=/mnt/t/w"}, sb
    mounts = {e["id"]: e for ns in doc["mntns"].values() for e in ns["mounts"]}
    assert sorted((x["path"], mounts[x["mnt"]]["mountpoint"], x["rel"]) for x in sb["layers"]) == [
        ("/mnt/t/l", "/mnt/t", "/l"), ("/mnt/t/u", "/mnt/t", "/u"), ("/mnt/t/w", "/mnt/t", "/w")], sb["layers"]


def test_fifo_outside_every_visible_mount_refused_unstopped(case):
    """A FIFO of a tmpfs whose only visible mount is a bind of another directory of it: only a
    regular file or directory can be located there (engine/detached.py `_anchorable`)."""
    _refused_unstopped(case, """
mkdir -p /mnt/t /mnt/va; mount -t tmpfs t /mnt/t; mkdir /mnt/t/a /mnt/t/b; mkfifo /mnt/t/b/p
mount --bind /mnt/t/a /mnt/va
exec 5<>/mnt/t/b/p; umount -l /mnt/t
hold
""", r"process \d+ fd 5 \(/b/p\) on mount \d+, in no dumped namespace: only a regular file or directory outside "
     r"every visible mount of its filesystem can be located; declare it with --external file\[/b/p\]:KEY")


def test_file_outside_a_file_bind_refused_unstopped(case):
    """A file of a tmpfs whose only visible mount is a bind of one of its files: no directory to
    locate the detached mount's root from (engine/detached.py `anchor`)."""
    _refused_unstopped(case, """
mkdir -p /mnt/t; touch /mnt/f; mount -t tmpfs t /mnt/t; mkdir /mnt/t/a /mnt/t/b; echo x > /mnt/t/a/file
echo y > /mnt/t/b/g; mount --bind /mnt/t/a/file /mnt/f
exec 5</mnt/t/b/g; umount -l /mnt/t
hold
""", r"process \d+ fd 5 \(/b/g\) on mount \d+, in no dumped namespace: no visible mount of its filesystem is a "
     r"directory to locate it from; declare it with --external file\[/b/g\]:KEY")


def test_socket_bound_on_a_lazily_unmounted_overlay_refused_unstopped(case):
    """A unix socket bound on the overlay before it was lazily unmounted (the socket keeps the mount
    alive): its file lies on a filesystem mounted nowhere visible. The line names the socket's fd
    (and no --external file[] hint: a socket file is no file to declare). Where the kernel shows
    the overlay's options, a socket's file on it is refused as such (restore binds sockets on
    attached mounts)."""
    _needs_overlay()
    _needs_unixfile()
    _refused_unstopped(case, OVERLAY + py_hold("""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind("/mnt/o/sock"); s.listen(1)
os.dup2(s.fileno(), 5); s.close()
assert os.system("umount -l /mnt/o") == 0
"""), r"process \d+ fd 5 \(socket:\[\d+\]\): its file \(/sock\) on mount \d+, in no dumped namespace: "
      + (r"a socket's file on this overlay, which only a detached mount shows: not supported$" if _statmount_by_fd()
         else r"its filesystem \(magic 0x794c7630\) " + NO_OPTIONS + "$"))


def test_our_fds_on_socket_files_closed_when_another_fd_is_refused(monkeypatch):
    """prestop keeps an fd of ours on each socket file a kind found on a detached mount (for
    detached.precheck); a refusal of a later fd (or a prefinish) must close them too, not only the
    path that reaches the detached check (they keep a lazily unmounted mount alive)."""
    import subprocess
    from engine import fds as fdkinds, prestop
    from engine.fds import FdError
    ours: list[int] = []

    def precheck(d):
        if not ours:   # (the first fd: a socket file noted, as unix_locate.note_detached does)
            ours.append(os.open("/", os.O_PATH | os.O_CLOEXEC))
            d.scratch.setdefault("unplaced", []).append(({"mnt": -1, "path": "/s", "holder": "x"}, os.getpid(),
                                                         f"fd/{ours[0]}"))
            return
        raise FdError(95, "refused")   # (the next fd)

    fake = fdkinds.FdKind(name="fake", matches=lambda t, m: True, dump=None, open=None, precheck=precheck,
                          prefinish=lambda scratch: None)
    monkeypatch.setattr(fdkinds, "classify", lambda target, mode: fake)
    child = subprocess.Popen(["sh", "-c", "exec 5</dev/null 6</dev/null; exec sleep 30"])
    try:
        import enginecase
        enginecase.wait_until(lambda: os.path.exists(f"/proc/{child.pid}/fd/6")
                              and os.readlink(f"/proc/{child.pid}/exe").endswith("sleep"),
                              "the child's exec of sleep holding fds 5 and 6")
        with pytest.raises(FdError, match="refused"):
            prestop._check_fds([child.pid], prestop.View(None), False, set())
    finally:
        child.kill()
        child.wait()
    assert ours, "the fake kind's precheck never ran"
    with pytest.raises(OSError):
        os.fstat(ours[0])   # (closed by prestop)


# A mount namespace whose first process (the one dump met first) is chrooted, and a child of it
# at the namespace's root whose cwd is an overlay mounted only there, its stdio on that
# namespace's /dev: both mounts lie outside the chroot.
CHROOTED_FIRST = """
mkdir -p /mnt/c /mnt/t /mnt/o; mount -t tmpfs c /mnt/c; mkdir /mnt/c/dev; touch /mnt/c/dev/null
mount --bind /dev/null /mnt/c/dev/null
mount -t tmpfs t /mnt/t; mkdir /mnt/t/l /mnt/t/u /mnt/t/w; echo x > /mnt/t/l/f
cat > /run/chrooted.py <<'PY'
import os, ctypes, signal
os.chroot("/mnt/c"); os.chdir("/")
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
while True:
    signal.pause()
PY
unshare -m --propagation private sh -c 'mount -t overlay o -o lowerdir=/mnt/t/l,upperdir=/mnt/t/u,workdir=/mnt/t/w /mnt/o
  (cd /mnt/o && exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1) &
  sleep 0.3; exec python3 /run/chrooted.py' </dev/null >/dev/null 2>&1 &
sleep 1
hold
"""


def test_namespace_first_seen_through_a_chroot_is_not_refused(case):
    """A chrooted process's mountinfo leaves out the mounts outside its root: read through it,
    the child's cwd (the overlay) and fds (/dev) looked detached, and a lazily unmounted overlay's
    refusal was told before the stop. Dump reads each namespace through a process at its root
    when there is one (and the detached check is not asked of a namespace seen only through a
    chroot): the tree is dumped and restored."""
    from enginecase import assert_same, take
    from zdtm.snapshot import tree_pids
    _needs_overlay()
    pid = case.start(CHROOTED_FIRST)
    seen = [(os.readlink(f"/proc/{q}/root"), os.readlink(f"/proc/{q}/cwd")) for q in tree_pids(pid)]
    assert ("/mnt/c", "/mnt/c") in seen and ("/", "/mnt/o") in seen, seen   # (the tree is what it says)
    before = take(pid)
    assert_same(before, take(case.cr(pid)))
