"""A lower layer's directory removed (rmdir through the overlay) while it is a process's cwd or an
open directory: the overlay leaves a whiteout at its name in the upper layer, and restore makes the
directory again by a mkdir over that whiteout, which the overlay must mark opaque with an xattr. An
overlay a user namespace mounted without userxattr sets none (trusted.* is refused to it): the
mkdir fails (EIO). Dump succeeded and restore failed ("recreating its deleted file /data/lgone:
Input/output error") until session 34, which made dump refuse it before the stop; since session 35
restore uncovers it (the whiteout taken out of the upper layer before the overlay is made, the lower
directory opened and removed through the overlay again: engine/ghosts.py Uncovered), and dump refuses
only what that cannot make the same (a lower directory with files, one changed since it was copied
up). The cases around it (userxattr, a lower file held open, an overlay of the initial user
namespace) restore."""

from __future__ import annotations

import os
import re
import stat

import pytest

from enginecase import (STOP_WATCH, assert_same, case, mntcr, py_hold, take, userns_setup,  # noqa: F401  (fixture)
                        was_stopped)


def _skip_without_overlay() -> None:
    with open("/proc/filesystems") as f:
        if "\toverlay\n" not in f.read():
            pytest.skip("the kernel has no overlayfs (not in /proc/filesystems)")


# An overlay of a tmpfs of the process's own whose lower layer has data/lgone (mode 751), data/lfile
# and data/lfull (a whiteout in it hides the file of the lower layer beneath); `HOLD` then removes
# one of them through the overlay while holding it.
OVERLAY = """
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mount(b"own", b"/mnt", b"tmpfs", 0, None) == 0
for d in ("lower/data/lgone", "lower/data/lfull", "lower2/data/lfull", "upper", "work", "merged"):
    os.makedirs("/mnt/" + d)
os.chmod("/mnt/lower/data/lgone", 0o751)
open("/mnt/lower2/data/lfull/inner", "w").close()
os.mknod("/mnt/lower/data/lfull/inner", 0o20600, 0)   # (a whiteout: the top lower layer hides it)
with open("/mnt/lower/data/lfile", "w") as f:
    f.write("lower content")
opts = b"lowerdir=/mnt/lower:/mnt/lower2,upperdir=/mnt/upper,workdir=/mnt/work{opts}"
assert libc.mount(b"ovl", b"/mnt/merged", b"overlay", 0, opts) == 0, os.strerror(ctypes.get_errno())
"""
HOLD = {
    "cwd": 'os.chdir("/mnt/merged/data/lgone")\nos.rmdir("/mnt/merged/data/lgone")\n',
    "dirfd": 'd = os.open("/mnt/merged/data/lgone", os.O_RDONLY | os.O_DIRECTORY)\nos.rmdir("/mnt/merged/data/lgone")\n'
             'open("/tmp/removed", "w").close()\n',
    "file": 'f = open("/mnt/merged/data/lfile")\nos.unlink("/mnt/merged/data/lfile")\n',
    # the lower directories hold a file and a whiteout hiding it: empty in the overlay, not in a layer
    "full": 'os.chdir("/mnt/merged/data/lfull")\nos.rmdir("/mnt/merged/data/lfull")\n',
    # a child pivoted into the overlay (its layers left outside its root, as rootless crun's), its
    # parent (which mounted the overlay) keeping the namespace that shows them
    "pivot": """r, w = os.pipe()
if os.fork() == 0:
    assert libc.unshare(0x00020000) == 0
    assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0   # MS_REC | MS_PRIVATE
    os.mkdir("/mnt/merged/old")
    assert libc.syscall(155, b"/mnt/merged", b"/mnt/merged/old") == 0, "pivot_root"   # (x86_64)
    os.chdir("/")
    assert libc.umount2(b"/old", 2) == 0
    os.rmdir("/old")
    os.chdir("/data/lgone")
    os.rmdir("/data/lgone")
    os.write(w, b"x")
    os.close(r); os.close(w)
    libc.prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
assert os.read(r, 1) == b"x"
os.close(r); os.close(w)
""",
    # copied up and changed (its mode) before it was removed: the lower one is not the held one
    "changed": 'os.chmod("/mnt/merged/data/lgone", 0o700)\nos.chdir("/mnt/merged/data/lgone")\n'
               'os.rmdir("/mnt/merged/data/lgone")\n',
}


def _setup(what: str, userns: bool, opts: str = "") -> str:
    body = OVERLAY.replace("{opts}", opts) + HOLD[what] + 'open("/tmp/removed", "w").close()\n'
    if userns:
        return userns_setup(0x00020000, body, ready="/tmp/removed")   # CLONE_NEWNS
    return "(" + py_hold("import ctypes\nassert ctypes.CDLL(None).unshare(0x00020000) == 0\n" + body).strip() \
        + ") </dev/null >/dev/null 2>&1 &\nwait_for /tmp/removed\nhold\n"


@pytest.mark.parametrize("what", ["cwd", "dirfd", "pivot"])
def test_lower_directory_removed_uncovered(case, what):
    """A user namespace's overlay without userxattr: dumped (refused before session 35; where the
    process had pivoted into the overlay, dumped and then not restored: EIO) and restored the same,
    the process holding the same removed directory (its deleted path, the lower one's mode), the
    upper layer's whiteout at its name again."""
    _skip_without_overlay()
    if what == "pivot" and os.uname().machine != "x86_64":
        pytest.skip("the setup calls pivot_root by its x86_64 number")
    pid = case.start(_setup(what, userns=True))
    before = take(pid)
    after = take(case.cr(pid))
    assert_same(before, after)
    name = "/data/lgone" if what == "pivot" else "/mnt/merged/data/lgone"
    held = [p for p in _tree_pids(after.pid) if _holds_removed(p, needle=name + " (deleted)")]
    assert held, f"no process of the restored tree holds {name} (deleted)"
    link = f"/proc/{held[0]}/cwd" if what != "dirfd" else next(
        f"/proc/{held[0]}/fd/{n}" for n in os.listdir(f"/proc/{held[0]}/fd")
        if os.readlink(f"/proc/{held[0]}/fd/{n}") == name + " (deleted)")
    assert oct(os.stat(link).st_mode & 0o7777) == "0o751"
    assert not os.path.exists(f"/proc/{held[0]}/root{name}")
    upper = [f"/proc/{p}/root/mnt/upper/data/lgone" for p in _tree_pids(after.pid)
             if os.path.isdir(f"/proc/{p}/root/mnt/upper/data")]
    assert upper, "no process of the restored tree shows the upper layer"
    st = os.lstat(upper[0])
    assert (stat.S_ISCHR(st.st_mode), st.st_rdev) == (True, 0), "the upper layer has no whiteout at data/lgone"


@pytest.mark.parametrize("what,why", [("full", "is not empty"),
                                      ("changed", r"differs from the removed one \(its owner, mode or time changed\)")])
def test_lower_directory_removed_refused_before_the_stop(case, what, why):
    """What uncovering cannot make the same: refused, naming the process, the directory, why and
    what to do, before the tree is stopped; the tree keeps running."""
    _skip_without_overlay()
    pid = case.start(STOP_WATCH + _setup(what, userns=True))
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, "--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc")
    assert r.returncode == 2, r.stderr
    name = "lfull" if what == "full" else "lgone"
    assert re.fullmatch(rf"mntcr dump: process \d+ cwd \(/mnt/merged/data/{name} \(deleted\)\): removed while in "
                        r"use on an overlay a user namespace mounted without userxattr, a directory of a lower layer "
                        rf"\(a whiteout has its name in the upper layer\) whose lower directory {why}: restore "
                        r"cannot make it again there \(no opaque xattr\); mount the overlay with userxattr, or "
                        r"leave the directory before dumping\n", r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    held = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/root/tmp/removed")
            and _holds_removed(int(p), name)]
    assert held, "no process of the tree holds the removed directory any more"


def _tree_pids(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _holds_removed(pid: int, name: str = "lgone", needle: str | None = None) -> bool:
    try:
        links = [os.readlink(f"/proc/{pid}/cwd")] + [os.readlink(f"/proc/{pid}/fd/{n}")
                                                    for n in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return (needle or f"/mnt/merged/data/{name} (deleted)") in links


@pytest.mark.parametrize("what,userns,opts", [
    ("cwd", True, ",userxattr"),      # user.overlay.opaque can be set: the mkdir over the whiteout works
    ("file", True, ""),               # a file over a whiteout needs no opaque xattr
    ("file", True, ",userxattr"),
    ("cwd", False, ""),               # the initial user namespace's overlay sets trusted.overlay.opaque
    ("dirfd", False, ""),
    ("file", False, ""),
])
def test_lower_object_removed_restores(case, what, userns, opts):
    """The other lower-layer objects removed while held: dump and restore give the same tree, the
    removed object held again (its deleted path, mode and content)."""
    _skip_without_overlay()
    pid = case.start(_setup(what, userns, opts))
    before = take(pid)
    after = take(case.cr(pid))
    assert_same(before, after)
    needle = "/mnt/merged/data/" + ("lfile" if what == "file" else "lgone") + " (deleted)"
    for p in after.snap.procs:
        links = {p.cwd.split(" mnt=")[0]} | {f.split(" flags=")[0].split(": ", 1)[1] for f in p.fds}
        if needle in links:
            path = f"/proc/{p.pid}/cwd" if what == "cwd" else next(
                f"/proc/{p.pid}/fd/{n}" for n in os.listdir(f"/proc/{p.pid}/fd")
                if os.readlink(f"/proc/{p.pid}/fd/{n}") == needle)
            if what == "file":
                with open(path) as f:
                    assert f.read() == "lower content"
            else:
                assert oct(os.stat(path).st_mode & 0o7777) == "0o751"
            break
    else:
        raise AssertionError(f"no process of the restored tree holds {needle}")


def test_hostile_uncover_records_are_refused(case):
    """An image's uncovered ghost makes restore remove a whiteout as root: the image is refused, with
    one line, where it has an archive too, lies on a type with no layer to uncover in, or names an
    upper layer on a mount of the host's files (declared external), or a path out of the layer."""
    import copy
    import json
    from engine import image
    _skip_without_overlay()
    pid = case.start(_setup("cwd", userns=True))
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = image.load(images)
    gid = next(gid for gid, g in doc["ghosts"].items() if g.get("uncover"))
    sid = doc["ghosts"][gid]["sb"]
    assert doc["ghosts"][gid] == {"sb": sid, "path": "/data/lgone", "uncover": True}
    mounts = {e["id"]: e for ns in doc["mntns"].values() for e in ns["mounts"]}
    host = next(i for i, e in mounts.items() if doc["superblocks"][e["sb"]].get("external"))
    other = next(s for s, sb in doc["superblocks"].items() if s != sid and not sb.get("external"))

    def refused(mutate, match):
        bad = copy.deepcopy(doc)
        mutate(bad)
        with open(os.path.join(images, image.MANIFEST), "w") as f:
            json.dump(bad, f)
        with pytest.raises(image.ImageError, match=match):
            image.load(images)

    def upper_on_host(d):
        sb = d["superblocks"][sid]
        next(x for x in sb["layers"] if x["path"] == "/mnt/upper")["mnt"] = host

    refused(lambda d: d["ghosts"][gid].update(file="files-0.tar", member="sb-0", only="lgone"), "no archive")
    refused(lambda d: d["ghosts"][gid].update(sb=other), "no layer to uncover it in")
    refused(upper_on_host, "a filesystem the image makes")
    refused(lambda d: d["ghosts"][gid].update(path="/../../etc/x"), r"\.\.")
