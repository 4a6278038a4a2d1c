"""Hostile images (issue 12): a real dumped image, changed by the test the way an attacker would.

Every variant must be refused with exit status 2 and one line on stderr that
names the image element and the rule it broke; and after each: no mount
added to or changed in the test's (host) namespace, no restore process left,
no loop device attached, no file written or changed outside the restore's own
namespaces (the victim directory the hostile paths point at, the host's /etc
and /dev/mqueue listings), the image directory unchanged, no pid file.

Classes (the issue's numbering): 1 block superblock without its device record,
2 overlay without its layers record, 3 archives for namespace-bound
superblocks (also on the pre-6.15 attached-sources path), 4 atomic restore
(pid file), 5 hangs and unclear refusals, 6 resource bounds and ranges,
7 dump leftovers; then traversal, symlink and hard-link escapes, cycles,
duplicate ids, huge counts, truncated files, unknown versions and fields,
device nodes.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import enginecase
from enginecase import (EngineCase, case, copy_image, load_manifest, mntcr, procs_with,  # noqa: F401
                        save_manifest, tree_hash)
from zdtm import leakguard

BASE_SETUP = """
mkdir /mnt/t /mnt/u /mnt/mq
mount -t tmpfs -o size=8m t /mnt/t; mkdir /mnt/t/d; echo data > /mnt/t/f
mount -t tmpfs u /mnt/u; echo u > /mnt/u/g
mount -t mqueue mq /mnt/mq
exec 5</mnt/t/f
cd /mnt/t
hold
"""


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """A valid image: two tmpfs (one with a size limit), an mqueue, an fd and a cwd on a tmpfs."""
    yield from enginecase.dumped_image(tmp_path_factory, BASE_SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


# --- what must hold after every refused restore -------------------------------------------------

def _loops() -> set[str]:
    """Attached loop devices (name and backing file)."""
    out = set()
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                out.add(f"{name} {f.read().strip()}")
        except OSError:
            pass
    return out


def _new_loops(before: set[str], img: str, victim: str) -> set[str]:
    """Loop devices attached since `before` over a file of this test (the image, the victim, a host
    disk image the hostile manifest names). Other sessions on the machine attach their own, with
    backing files in their private namespaces: those are not this restore's."""
    ours = (img, victim, os.path.dirname(victim))
    return {x for x in _loops() - before if x.split(" ", 1)[1].startswith(ours)}


# Host files the hostile images aim at. (Not all of /etc: other sessions on the machine may
# install packages meanwhile.)
ETC_TARGETS = ("passwd", "shadow", "group", "hostname", "hosts", "evil", "file")


def _listing(path: str, names=None) -> str:
    """Names, sizes and mtimes of a directory's entries, or of `names` in it (a change is a write)."""
    try:
        names = sorted(os.listdir(path)) if names is None else names
    except OSError:
        return ""
    out = []
    for n in names:
        try:
            st = os.lstat(os.path.join(path, n))
            out.append(f"{n} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}")
        except OSError:
            pass
    return "\n".join(out)


class Host:
    """A picture of what a restore must not touch, taken before it runs."""

    def __init__(self, img: str, victim: str):
        self.img, self.victim = img, victim
        self.guard = leakguard.Guard()
        self.image = tree_hash(img)
        self.victim_hash = tree_hash(victim)
        self.loops = _loops()
        self.etc = _listing("/etc", ETC_TARGETS)
        self.mqueue = _listing("/dev/mqueue")

    def assert_untouched(self, pidfile: str | None = None) -> None:
        deadline = time.monotonic() + 60
        while procs_with(self.img) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs_with(self.img) == [], "restore processes (stand-ins) left behind"
        leaked = self.guard.own_leaks(self.img, self.victim)
        assert not leaked, leakguard.describe(leaked)
        assert not self.guard.gone(), "a host mount disappeared"
        assert not self.guard.changed(), leakguard.describe_changed(self.guard.changed())
        assert not _new_loops(self.loops, self.img, self.victim), "a loop device was left attached"
        assert tree_hash(self.victim) == self.victim_hash, "a file outside the restore was written"
        assert _listing("/etc", ETC_TARGETS) == self.etc, "a file of the host's /etc changed"
        assert _listing("/dev/mqueue") == self.mqueue, "the host's message queues changed"
        assert tree_hash(self.img) == self.image, "restore changed the image directory"
        if pidfile is not None:
            assert not os.path.exists(pidfile), "a refused restore wrote its pid file"


def refused(img: str, pattern: str, tmp_path, extra=(), env=None, victim=None, timeout=60, subids=None) -> str:
    """Restore `img`: exit 2, one line matching `pattern`, and nothing touched (see Host); within
    `timeout` seconds; `subids` as enginecase.mntcr's."""
    victim = victim or _victim(tmp_path)
    host = Host(img, victim)
    pidfile = os.path.join(str(tmp_path), "refused.pid")
    r = mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, *extra, "--pidfile", pidfile, env=env,
              timeout=timeout, subids=subids)
    if r.returncode == 0:  # it must not have worked: clean up what it started, then fail
        from zdtm.snapshot import kill_tree
        with open(pidfile) as f:
            kill_tree(int(f.read()))
        os.unlink(pidfile)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"exit {r.returncode}, stderr:\n{r.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert lines[0].startswith("mntcr restore: "), lines[0]
    assert "Traceback" not in r.stderr and "internal error" not in lines[0], lines[0]
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    host.assert_untouched(pidfile)
    return lines[0]


def _victim(tmp_path) -> str:
    """A directory hostile paths point at; nothing may appear in it."""
    v = os.path.join(str(tmp_path), "victim")
    if not os.path.isdir(v):
        os.makedirs(os.path.join(v, "up"))
        os.makedirs(os.path.join(v, "work"))
        with open(os.path.join(v, "file"), "w") as f:
            f.write("victim\n")
    return v


# --- helpers to change an image -----------------------------------------------------------------

def _ns(doc) -> dict:
    return doc["mntns"][doc["processes"][0]["ns"]["mnt"]]


def _mount(doc, mountpoint: str) -> dict:
    return next(m for m in _ns(doc)["mounts"] if m["mountpoint"] == mountpoint)


def _sb(doc, mountpoint: str) -> dict:
    return doc["superblocks"][_mount(doc, mountpoint)["sb"]]


def _mutated(base: str, tmp_path, mutate) -> str:
    img = copy_image(base, tmp_path)
    doc = load_manifest(img)
    mutate(doc)
    save_manifest(img, doc)
    return img


def _rewrite_archive(img: str, mountpoint: str, add: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """Add members to the archive of the tmpfs at `mountpoint`, then make the manifest vouch for the
    new archive (size, sha256) as an attacker who edits both would."""
    doc = load_manifest(img)
    arc = _sb(doc, mountpoint)["archives"][0]
    path = os.path.join(img, arc["file"])
    tmp = path + ".new"
    with tarfile.open(path) as src, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        for info, data in add:
            if info.name.startswith("MEMBER/"):
                info.name = arc["member"] + info.name[6:]
            if info.linkname.startswith("MEMBER/"):
                info.linkname = arc["member"] + info.linkname[6:]
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    os.rename(tmp, path)
    with open(path, "rb") as f:
        data = f.read()
    doc["files"][arc["file"]] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    save_manifest(img, doc)


def _info(name: str, kind=tarfile.REGTYPE, size: int = 0, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_base_image_restores(case, base_image, tmp_path):
    """Control: the unchanged copy restores, so each refusal below comes from its one change."""
    assert case.restore(copy_image(base_image, tmp_path)) > 0


# --- 1. block filesystems without a device record -----------------------------------------------

def _to_ext4(doc, **device):
    sb = _sb(doc, "/mnt/u")
    sb.update(fstype="ext4", source="/dev/vda", super_opts=["rw"], archives=[])
    sb.pop("empty_root", None)
    sb.pop("empty_roots", None)
    if device:
        sb["device"] = device
    for m in _ns(doc)["mounts"]:
        if m["sb"] == _mount(doc, "/mnt/u")["sb"]:
            m.update(fstype="ext4", source="/dev/vda")


BLOCK = {
    "no-device-record": (lambda d: _to_ext4(d), r"superblock sb-\d+ \(ext4\): a block filesystem is mounted only "
                                                r"from the device the user maps"),
    "empty-device-record": (lambda d: _to_ext4(d, dev="254:0"), r"\(ext4\).*needs a device record"),
    "key-not-mapped": (lambda d: _to_ext4(d, key="hostdisk"), r"--external dev\[hostdisk\]:PATH"),
    "loop-on-non-content": (lambda d: _to_ext4(d, loop={"sb": _mount(d, "/mnt/mq")["sb"], "path": "/x",
                                                        "offset": 0, "sizelimit": 0, "ro": False}),
                            r"loop file must lie on a tmpfs or ramfs of the image"),
    "source-outside-dev": (lambda d: (_to_ext4(d, key="k"), _sb(d, "/mnt/u").update(source="/etc/x")),
                           r"source '/etc/x' is not a device name under /dev"),
    "journal-path-option": (lambda d: (_to_ext4(d, key="k"),
                                       _sb(d, "/mnt/u").update(super_opts=["rw", "journal_path=/dev/vda2"])),
                            r"super option 'journal_path' names a device or file of the host"),
    "device-on-tmpfs": (lambda d: _sb(d, "/mnt/u").update(device={"key": "k"}),
                        r"a device record only belongs to a block filesystem"),
}


@pytest.mark.parametrize("kind", sorted(BLOCK))
def test_block_superblock_needs_its_device_record(base_image, tmp_path, kind):
    """Class 1: a tmpfs turned into `ext4 /dev/vda` (the host's disk), with an fd and cwd on it."""
    mutate, pattern = BLOCK[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path)


# --- 2. overlay without a layers record -----------------------------------------------------------

def _to_overlay(doc, victim: str, layers=None):
    sb = _sb(doc, "/mnt/u")
    sb.update(fstype="overlay", source="overlay", archives=[],
              super_opts=["rw", "lowerdir=/etc", f"upperdir={victim}/up", f"workdir={victim}/work"])
    if layers is not None:
        sb["layers"] = layers


def test_overlay_without_layers_is_refused(base_image, tmp_path):
    """Class 2: overlay options naming host /etc and a host upperdir, no layers record."""
    victim = _victim(tmp_path)
    img = _mutated(base_image, tmp_path, lambda d: _to_overlay(d, victim))
    refused(img, r"\(overlay\): an overlay needs its layers record", tmp_path)


def test_overlay_layer_not_in_its_record_is_refused(base_image, tmp_path):
    """Class 2: a layers record that does not cover every path the options name."""
    victim = _victim(tmp_path)
    img = _mutated(base_image, tmp_path, lambda d: _to_overlay(
        d, victim, [{"path": "/etc", "mnt": _mount(d, "/mnt/t")["id"], "rel": "/"}]))
    refused(img, r"layer upperdir=/\S+ is not in its layers record", tmp_path)


def test_overlay_layer_cycle_is_refused(base_image, tmp_path):
    """An overlay whose layer lies on its own mount."""
    def mutate(d):
        me = _mount(d, "/mnt/u")["id"]
        sb = _sb(d, "/mnt/u")
        sb.update(fstype="overlay", source="overlay", archives=[], super_opts=["rw", "lowerdir=/mnt/u/l"],
                  layers=[{"path": "/mnt/u/l", "mnt": me, "rel": "/l"}])
    refused(_mutated(base_image, tmp_path, mutate), r"layer cycle", tmp_path)


def test_overlay_layer_on_an_unknown_detached_mount_is_refused(base_image, tmp_path):
    """A layer marked `detached` (its mount lazily unmounted after the overlay) must lie on a detached
    mount of the image: a mount id of the tree does not pass for one."""
    def mutate(d):
        sb = _sb(d, "/mnt/u")
        sb.update(fstype="overlay", source="overlay", archives=[], super_opts=["rw", "lowerdir=/l"],
                  layers=[{"path": "/l", "mnt": _mount(d, "/mnt/t")["id"], "rel": "/", "detached": True}])
    refused(_mutated(base_image, tmp_path, mutate), r"layer /l lies on detached mount \d+, which is not in the image",
            tmp_path)


# --- FUSE: the daemon's command comes from the user, never from the image ---------------------------

def _to_fuse(doc, source: str = "/mnt/t/f", **extra):
    """The mqueue at /mnt/mq (no archive) turned into a squashfuse superblock (fstype fuse.squashfuse)."""
    sb = _sb(doc, "/mnt/mq")
    sid = _mount(doc, "/mnt/mq")["sb"]
    sb.update(fstype="fuse.squashfuse", source=source, archives=[], super_opts=["rw", "user_id=0", "group_id=0"],
              **extra)
    sb.pop("empty_root", None)
    sb.pop("empty_roots", None)
    sb.pop("payload", None)   # (an mqueue's root owner and mode: engine/fs/mqueue.py)
    for m in _ns(doc)["mounts"]:
        if m["sb"] == sid:
            m.update(fstype="fuse.squashfuse", source=source)


FUSE = {
    # no --fuse-restart: nothing is run, restore names the option
    # (its example names {source} only when the image holds the source file: fuse-overlayfs has none)
    "no-restart-command": (lambda d: _to_fuse(d), (), r"on fuse\.squashfuse: its daemon is not restored; give the "
                                                      r"command that serves it with --fuse-restart squashfuse="
                                                      r"COMMAND \(e\.g\. 'squashfuse -f OPTIONS \{conn\}'\)"),
    # the user's command must take the connection: one that does not is refused before anything runs
    "command-without-conn": (lambda d: _to_fuse(d, input={"sb": _mount(d, "/mnt/t")["sb"], "path": "/f"}),
                             ("--fuse-restart", "squashfuse=touch {source}"),
                             r"put \{conn\} where the mount point goes"),
    "input-on-its-own-sb": (lambda d: _to_fuse(d, input={"sb": _mount(d, "/mnt/mq")["sb"], "path": "/x"}), (),
                            r"its input file must lie on a tmpfs or ramfs of the image"),
    "input-escapes": (lambda d: _to_fuse(d, input={"sb": _mount(d, "/mnt/t")["sb"], "path": "/../../etc/passwd"}),
                      (), r"'input\.path' path has '\.' or '\.\.'"),
    "input-on-tmpfs": (lambda d: _sb(d, "/mnt/u").update(input={"sb": _mount(d, "/mnt/t")["sb"], "path": "/f"}),
                       (), r"an input file only belongs to a filesystem served by a daemon"),
    "command-in-image": (lambda d: _to_fuse(d, command="touch /tmp/pwned"),
                         ("--fuse-restart", "squashfuse=squashfuse -f {source} {conn}"), r"unknown field 'command'"),
}


@pytest.mark.parametrize("kind", sorted(FUSE))
def test_fuse_daemon_runs_only_the_users_command(base_image, tmp_path, kind):
    """A FUSE superblock is made only with the user's --fuse-restart command, fed only files of the image."""
    mutate, extra, pattern = FUSE[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path, extra=extra)


# --- 3. archives for namespace-bound superblocks ---------------------------------------------------

@pytest.mark.parametrize("attached", [False, True], ids=["default", "attached-sources"])
def test_no_archive_for_a_namespace_bound_superblock(base_image, tmp_path, attached):
    """Class 3: the tmpfs's archive pointed at the mqueue superblock, whose processes are made to
    share the restoring host's IPC namespace; on both restore paths (MNTCR_STRATEGY=sources=yard is the
    pre-6.15 one)."""
    def mutate(d):
        arc = dict(_sb(d, "/mnt/t")["archives"][0])
        _sb(d, "/mnt/t")["archives"] = []
        _sb(d, "/mnt/mq")["archives"] = [arc]
        for p in d["processes"]:
            p["host_ns"] = sorted(set(p.get("host_ns") or []) | {"ipc"})
    env = {"MNTCR_STRATEGY": "sources=yard"} if attached else None
    refused(_mutated(base_image, tmp_path, mutate), r"superblock sb-\d+ \(mqueue\): only a tmpfs or ramfs",
            tmp_path, env=env)


def test_no_empty_root_for_a_namespace_bound_superblock(base_image, tmp_path):
    """Class 3: an empty_root record (owner and mode of a root) on the mqueue superblock."""
    img = _mutated(base_image, tmp_path, lambda d: _sb(d, "/mnt/mq").update(
        empty_root={"root": "/", "mode": 0o777, "uid": 1234, "gid": 1234}))
    refused(img, r"\(mqueue\): only a tmpfs or ramfs", tmp_path)


# --- 4. atomic restore ------------------------------------------------------------------------------

def _restore(img: str, pidfile: str, env=None) -> subprocess.CompletedProcess:
    return mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--pidfile", pidfile, env=env)


def test_pidfile_in_a_missing_directory_is_refused_first(base_image, tmp_path):
    """Class 4: --pidfile /nonexistent/dir/pid: refused before anything is built."""
    img = copy_image(base_image, tmp_path)
    host = Host(img, _victim(tmp_path))
    pidfile = os.path.join(str(tmp_path), "no", "such", "pid")
    r = _restore(img, pidfile)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(r"pid file .*/no/such/pid: directory .* does not exist", r.stderr), r.stderr
    host.assert_untouched(pidfile)


def test_existing_pidfile_is_refused_and_kept(base_image, tmp_path):
    """Class 4: two restores must not share one pid file."""
    img = copy_image(base_image, tmp_path)
    pidfile = os.path.join(str(tmp_path), "taken.pid")
    with open(pidfile, "w") as f:
        f.write("4242\n")
    host = Host(img, _victim(tmp_path))
    r = _restore(img, pidfile)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "exists" in r.stderr, r.stderr
    with open(pidfile) as f:
        assert f.read() == "4242\n"
    host.assert_untouched()


def test_pidfile_on_a_full_filesystem_kills_the_tree(base_image, tmp_path):
    """Class 4: the pid file's filesystem is full when the tree is ready: exit 2, the tree is
    killed, no pid file. (The full tmpfs lives in a private mount namespace of the test.)"""
    img = copy_image(base_image, tmp_path)
    full = os.path.join(str(tmp_path), "full")
    os.mkdir(full)
    host = Host(img, _victim(tmp_path))
    args = " ".join(f"'{a}'" for a in ("restore", "-D", img, *enginecase.RESTORE_EXTERNALS,
                                       "--pidfile", f"{full}/pid"))
    script = (f"mount -t tmpfs -o size=4k full {full} && "
              f"(dd if=/dev/zero of={full}/fill bs=4k count=8 2>/dev/null || true) && "
              f"exec {sys.executable} -m engine.cli {args}")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120, cwd=enginecase.ENGINE_ROOT, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=enginecase.ENGINE_ROOT))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pid file" in lines[0] and "killed" in lines[0], r.stderr
    host.assert_untouched(os.path.join(full, "pid"))


def _first_child(pid: int, timeout: float = 60) -> None:
    """Until process `pid` has forked (the restorer: the restore is under way) or exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                if f.read().strip():
                    return
        except OSError:
            return
        time.sleep(0.002)


PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(int(on)), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _descendants() -> list[int]:
    """Every live descendant of this process (through each of its threads)."""
    out, todo = [], [(os.getpid(), tid) for tid in os.listdir("/proc/self/task")]
    while todo:
        pid, tid = todo.pop()
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out.append(k)
            try:
                todo.extend((k, t) for t in os.listdir(f"/proc/{k}/task"))
            except OSError:
                pass
    return out


def _in_new_namespaces(pids: list[int]) -> list[str]:
    """Those of `pids` living in a pid or mount namespace other than ours: made by the restore."""
    mine = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("pid", "mnt")}
    found = []
    for p in pids:
        try:
            theirs = {k: os.readlink(f"/proc/{p}/ns/{k}") for k in ("pid", "mnt")}
        except OSError:
            continue  # gone, or a zombie (it holds no namespace any more)
        if theirs != mine:
            found.append(f"pid {p} (pid ns {theirs['pid']}, mnt ns {theirs['mnt']})")
    return found


def _reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _restore_leftovers(before: set[int], timeout: float = 60) -> list[str]:
    """What the restore left alive in namespaces of its own. This process is the child subreaper
    while the restore runs, so the restore's orphans (a stand-in whose restorer and `mntcr restore`
    are gone) are reparented here and found as descendants, whatever their command line; those
    `before` the test (a fixture's) are not the restore's. A tree being killed gets `timeout` to
    die (a slow machine, not a pass condition)."""
    deadline = time.monotonic() + timeout
    while True:
        _reap_children()
        left = _in_new_namespaces([p for p in _descendants() if p not in before])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def subreaper():
    """This process as child subreaper for the test: the restore's orphans come to us (and are reaped).
    Yields the descendants there were before (not the restore's); what the test left is killed."""
    before = set(_descendants())
    _set_subreaper(True)
    try:
        yield before
    finally:
        _set_subreaper(False)
        for p in set(_descendants()) - before:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _restore_leftovers(before, timeout=10)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.6])
def test_ctrl_c_leaves_a_named_tree_or_nothing(base_image, tmp_path, delay, subreaper):
    """Class 4: SIGINT to the restore's process group (what Ctrl-C does) `delay` seconds after the
    restorer was forked: either the restore finished (exit 0, the pid file names a live tree) or it
    exits 130 with one line and nothing of it is left: no process in a namespace the restore made
    (found by namespace, not command line: see _restore_leftovers). (Before that, Python itself may
    still be starting up: a Ctrl-C there is the interpreter's, and nothing was done.)"""
    img = copy_image(base_image, tmp_path)
    host = Host(img, _victim(tmp_path))
    pidfile = os.path.join(str(tmp_path), "c.pid")
    p = subprocess.Popen([sys.executable, "-m", "engine.cli", "restore", "-D", img, *enginecase.RESTORE_EXTERNALS,
                          "--pidfile", pidfile], cwd=enginecase.ENGINE_ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env=dict(os.environ, PYTHONPATH=enginecase.ENGINE_ROOT))
    _first_child(p.pid)
    time.sleep(delay)
    try:
        os.killpg(p.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    out, err = p.communicate(timeout=60)
    if p.returncode == 0:
        with open(pidfile) as f:
            pid = int(f.read())
        assert os.path.exists(f"/proc/{pid}"), "exit 0 but the pid file names no live process"
        from zdtm.snapshot import kill_tree
        kill_tree(pid)
        os.unlink(pidfile)
        assert _restore_leftovers(subreaper) == [], "the committed tree was killed, yet parts of it live on"
        return
    assert p.returncode == 130, f"exit {p.returncode} (SIGINT {delay}s after the restorer was forked): {err}"
    lines = err.strip().splitlines()
    assert lines == ["mntcr restore: interrupted: nothing was restored"], err
    left = _restore_leftovers(subreaper)
    assert left == [], f"an interrupted restore left processes in namespaces it made: {', '.join(left)}"
    host.assert_untouched(pidfile)


# --- 5. hangs and unclear refusals ------------------------------------------------------------------

def test_fifo_manifest_does_not_hang(base_image, tmp_path):
    """Class 5: a FIFO named mntcr.json (opening it used to block before the type check)."""
    img = copy_image(base_image, tmp_path)
    os.unlink(os.path.join(img, "mntcr.json"))
    os.mkfifo(os.path.join(img, "mntcr.json"))
    refused(img, r"mntcr\.json is not a regular file", tmp_path)


WRONG_TYPES = {
    "uts-not-a-string": (lambda d: d["processes"][0]["ns"].update(uts=5), r"uts namespace '5' is not uts-N"),
    "ns-missing-uts": (lambda d: d["processes"][0]["ns"].pop("uts"), r"'ns' must name exactly"),
    "process-a-string": (lambda d: d["processes"].__setitem__(0, "x"), r"process #0: must be an object"),
    "fds-an-object": (lambda d: d["processes"][0].update(fds={}), r"process #0: 'fds' must be a list"),
    "mounts-a-number": (lambda d: _ns(d).update(mounts=7), r"'mounts' must be a list"),
    "superblocks-a-list": (lambda d: d.update(superblocks=[]), r"manifest: 'superblocks' must be an object"),
    "mountpoint-a-list": (lambda d: _mount(d, "/mnt/t").update(mountpoint=["/"]),
                          r"mount \d+: 'mountpoint' must be a string"),
    "shared-a-bool": (lambda d: _mount(d, "/mnt/t").update(shared=True),
                      r"'shared' must be an integer or null"),
    "archive-root-relative": (lambda d: _sb(d, "/mnt/t")["archives"][0].update(root="etc"),
                              r"'archives\[0\]\.root' not an absolute path"),
    "unknown-field": (lambda d: _mount(d, "/mnt/t").update(exec="/bin/sh"), r"unknown field 'exec' in mount"),
    "deep-nesting": (None, r"nested too deeply"),
    "nan": (None, r"not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_TYPES))
def test_wrong_types_are_refused_by_name(base_image, tmp_path, kind):
    """Class 5: wrong JSON types (a KeyError, AttributeError or TypeError before): one line naming
    the element and the rule."""
    mutate, pattern = WRONG_TYPES[kind]
    if mutate is not None:
        img = _mutated(base_image, tmp_path, mutate)
    else:
        img = copy_image(base_image, tmp_path)
        with open(os.path.join(img, "mntcr.json"), "w") as f:
            f.write("[" * 200000 + "]" * 200000 if kind == "deep-nesting" else '{"format": NaN}')
    refused(img, pattern, tmp_path)


def test_bad_fd_number_is_refused_by_range(base_image, tmp_path):
    """Class 5/6: an fd number no process can have (was a bare "[Errno 9]")."""
    img = _mutated(base_image, tmp_path, lambda d: d["processes"][0]["fds"][-1].update(fd=1 << 20))
    refused(img, r"process \d+ fd 1048576: 'fd' out of range", tmp_path)


def test_fd_number_above_the_open_file_limit_is_refused(base_image, tmp_path):
    """Class 5: an fd number the format allows but this machine's RLIMIT_NOFILE does not."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard > (1 << 20) - 1:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} admits every fd number the format allows")
    img = _mutated(base_image, tmp_path, lambda d: d["processes"][0]["fds"][-1].update(fd=hard))
    refused(img, rf"process \d+ fd {hard}: above this machine's open-file limit", tmp_path)


def test_tar_failure_names_its_reason(base_image, tmp_path):
    """Class 5: a damaged archive is refused with tar's reason, not "Exiting with failure status"."""
    img = copy_image(base_image, tmp_path)
    name = _sb(load_manifest(img), "/mnt/t")["archives"][0]["file"]
    path = os.path.join(img, name)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 200)   # a header's checksum no longer matches
    doc = load_manifest(img)
    with open(path, "rb") as f:
        data = f.read()
    doc["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    save_manifest(img, doc)
    line = refused(img, re.escape(name), tmp_path)
    assert "Exiting with failure status" not in line


# --- 6. resource bounds and ranges ------------------------------------------------------------------

def test_huge_manifest_is_refused_before_reading(base_image, tmp_path):
    """Class 6: a 900 MB manifest (sparse) is refused by its size."""
    img = copy_image(base_image, tmp_path)
    os.truncate(os.path.join(img, "mntcr.json"), 900 << 20)
    refused(img, r"mntcr\.json is absurdly large", tmp_path)


def _lock(d: dict, **kw) -> None:
    """Give the first process a file lock on its fd 5 (a POSIX write lock on bytes 0-9), changed by kw."""
    d["processes"][0]["locks"] = [{"fd": 5, "type": "posix", "mode": "write", "start": 0, "end": 9, **kw}]


RANGES = {
    "lock-start-huge": (lambda d: _lock(d, start=1 << 70), r"'locks\[0\]\.start' out of range"),
    "lock-end-before-start": (lambda d: _lock(d, start=9, end=3), r"lock on fd 5: its range ends before it starts"),
    "lock-on-no-fd": (lambda d: _lock(d, fd=77), r"lock on fd 77: the process has no such fd"),
    "lock-of-itself": (lambda d: _lock(d, type="flock", start=0, end=None, of=d["processes"][0]["pid"]),
                       r"'of' names a flock lock's holder, another process of the image"),
    "lock-gone-posix": (lambda d: _lock(d, gone=True), r"'gone' is for a flock lock on the process's own fd"),
    "fd-flags-1<<70": (lambda d: d["processes"][0]["fds"][-1].update(flags=1 << 70), r"'flags' has bits"),
    "fd-pos-negative": (lambda d: d["processes"][0]["fds"][-1].update(pos=-1), r"'pos' out of range"),
    "mount-id-negative": (lambda d: _mount(d, "/mnt/u").update(id=-5), r"'id' out of range"),
    "empty-root-mode": (lambda d: _sb(d, "/mnt/t").update(empty_root={"root": "/x", "mode": 0o170000,
                                                                      "uid": 0, "gid": 0}),
                        r"'empty_root\.mode' out of range"),
    "mount-option-unknown": (lambda d: _mount(d, "/mnt/t")["mount_opts"].append("remount"),
                             r"is no per-mount option"),
    # (counts are checked before any record is looked at: lists of zeros are enough)
    "too-many-processes": (lambda d: d.update(processes=[0] * 100_001), r"100001 processes and 0 zombies is absurd"),
    "too-many-mounts": (lambda d: _ns(d).update(mounts=[0] * 500_001), r"500001 mounts is absurd"),
    "too-many-fds": (lambda d: d["processes"][0].update(fds=[0] * 1_000_001), r"1000001 fds is absurd"),
    "hostname-too-long": (lambda d: d.update(hostnames={d["processes"][0]["ns"]["uts"]: "h" * 65}),
                          r"hostname of uts-0: must be a string of at most 64"),
    "domainname-unknown-uts": (lambda d: d.update(domainnames={"uts-99": "example"}),
                               r"domain name for 'uts-99', a uts namespace no process is in"),
}


def test_archive_beyond_the_size_limit_is_refused(base_image, tmp_path):
    """Class 6: an archive far larger than its tmpfs superblocks may hold (size=, nr_inodes=)."""
    img = copy_image(base_image, tmp_path)
    _rewrite_archive(img, "/mnt/t", [(_info("MEMBER/big", size=256 << 10), b"x" * (256 << 10))])
    doc = load_manifest(img)
    for sb in doc["superblocks"].values():
        if sb.get("archives"):
            sb["super_opts"] = ["rw", "size=4k", "nr_inodes=16"]
    save_manifest(img, doc)
    refused(img, r"archive files-\d+\.tar: \d+ bytes is more than its superblocks may hold", tmp_path)


@pytest.mark.parametrize("kind", sorted(RANGES))
def test_ranges_and_counts(base_image, tmp_path, kind):
    """Class 6: every field's range, every count bounded."""
    mutate, pattern = RANGES[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path)


# --- 7. dump leftovers ----------------------------------------------------------------------------

def test_dump_removes_stale_temporary_images(case, tmp_path):
    """Class 7: a dump killed before its commit left .IMG.tmp-PID-* with a partial archive; the next
    dump into the same place removes it (a live dump's directory is kept)."""
    pid = case.start("hold\n")
    images = case.new_images_dir()
    parent, base = os.path.dirname(images), os.path.basename(images)
    stale = os.path.join(parent, f".{base}.tmp-999999999-x")
    os.makedirs(stale)
    with open(os.path.join(stale, "files-0.tar"), "wb") as f:
        f.write(b"partial")
    live = os.path.join(parent, f".{base}.tmp-{os.getpid()}-y")
    os.makedirs(live)
    case.dump(pid, images)
    assert not os.path.exists(stale), "the stale temporary image was left"
    assert os.path.isdir(live), "a live dump's temporary image was removed"
    os.rmdir(live)


def test_leave_running_keeps_a_stopped_process_stopped(case, tmp_path):
    """Class 7: --leave-running on a tree that was stopped already leaves it stopped."""
    pid = case.start("hold\n")
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while _state(pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), *enginecase.DUMP_EXTERNALS, "--leave-running")
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    assert _state(pid) == "T", "dump resumed a process that was stopped before it"
    os.kill(pid, signal.SIGCONT)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# --- traversal, escapes, cycles, duplicates, truncation, versions -----------------------------------

def _cycle(d):
    ns = _ns(d)
    a = _mount(d, "/mnt/t")
    b = dict(a, id=max(m["id"] for m in ns["mounts"]) + 1, parent=a["id"])  # both at /mnt/t
    a["parent"] = b["id"]
    ns["mounts"].append(b)


def _process_cycle(d):
    p = dict(d["processes"][0], pid=77777, ppid=d["processes"][0]["pid"])
    d["processes"][0]["ppid"] = 77777
    d["processes"].append(p)


def _userns(d, **user):
    """Put the first process in a user namespace user-1 (maps of a rootless container unless given)."""
    d["userns"] = {"user-1": dict({"parent": None, "uid_map": [[0, 100000, 65536]],
                                   "gid_map": [[0, 100000, 65536]], "setgroups": "allow"}, **user)}
    d["processes"][0]["userns"] = "user-1"


def _owned(d, **mount):
    """The namespace owned by user-1, its root locked; `mount` changes the /mnt/u entry."""
    _userns(d)
    ns = _ns(d)
    ns["owner"] = "user-1"
    next(m for m in ns["mounts"] if m["id"] == ns["root"])["locked"] = True
    _mount(d, "/mnt/u").update(mount)


STRUCTURE = {
    "userns-overlapping-map": (lambda d: _userns(d, uid_map=[[0, 100000, 10], [5, 200000, 10]]),
                               r"user namespace user-1: 'uid_map' ranges overlap on the inside"),
    "userns-map-too-long": (lambda d: _userns(d, gid_map=[[i, 100000 + i, 1] for i in range(341)]),
                            r"user namespace user-1: 'gid_map' has 341 ranges, at most 340"),
    "userns-map-past-32-bits": (lambda d: _userns(d, uid_map=[[0, 4294967000, 65536]]),
                                r"runs past the last 32-bit id"),
    "userns-cycle": (lambda d: (_userns(d, parent="user-2"), d["userns"].update(
        {"user-2": dict(d["userns"]["user-1"], parent="user-1")})), r"user namespace user-\d: parent cycle"),
    "userns-child-maps-more": (lambda d: (_userns(d, uid_map=[[0, 100000, 10]], gid_map=[[0, 100000, 10]]),
                                          d["userns"].update({"user-2": dict(d["userns"]["user-1"], parent="user-1",
                                                                             uid_map=[[0, 0, 1]])})),
                               r"user namespace user-2: uid_map maps id 0, which its parent user-1 does not map"),
    "userns-unknown": (lambda d: (_userns(d), d["processes"][0].update(userns="user-9")),
                       r"unknown user namespace 'user-9'"),
    "userns-bad-setgroups": (lambda d: _userns(d, setgroups="maybe"), r"must be allow or deny"),
    "locked-without-owner": (lambda d: _mount(d, "/mnt/u").update(locked=True),
                             r"locked in mnt-\d+, which no user namespace of the image owns"),
    "locked-flag-not-set": (lambda d: _owned(d, locked=True, locked_flags=["noexec", "atime"]),
                            r"flag noexec is locked but not set"),
    # (an unlocked root alone is ch-run's: restore covers the locked copy with it, hiding what is locked on that)
    "owned-root-unlocked": (lambda d: (_owned(d, locked=True, parent=_ns(d)["root"]),
                                       next(m for m in _ns(d)["mounts"] if m["id"] == _ns(d)["root"]).pop("locked")),
                            r"mount \d+: locked on the unlocked root of mnt-\d+, owned by user-1"),

    "traversal-mountpoint": (lambda d: _mount(d, "/mnt/u").update(mountpoint="/mnt/../../etc"), r"'\.\.'"),
    "traversal-fd-path": (lambda d: d["processes"][0]["fds"][-1].update(path="/../../etc/shadow"), r"'\.\.'"),
    "traversal-layer": (lambda d: _sb(d, "/mnt/u").update(fstype="overlay", archives=[],
                                                          super_opts=["rw", "lowerdir=/mnt/t/../../etc"],
                                                          layers=[{"path": "/mnt/t/../../etc",
                                                                   "mnt": _mount(d, "/mnt/t")["id"], "rel": "/"}]),
                        r"layers\[0\]\.path' path has '\.' or '\.\.'"),
    "mount-cycle": (_cycle, r"cycle"),
    "pidns-cycle": (lambda d: d["pidns"].update({"pid-0": {"parent": "pid-1"}, "pid-1": {"parent": "pid-0"}}),
                    r"pid namespace pid-\d: parent cycle"),
    "process-cycle": (_process_cycle, r"has no parent in it|not listed before it"),
    "duplicate-mount-id": (lambda d: _mount(d, "/mnt/u").update(id=_mount(d, "/mnt/t")["id"]),
                           r"duplicate mount id"),
    "duplicate-process": (lambda d: d["processes"].append(dict(d["processes"][0], ppid=d["processes"][0]["pid"])),
                          r"duplicate process"),
    "duplicate-fd": (lambda d: d["processes"][0]["fds"].append(d["processes"][0]["fds"][-1]),
                     r"duplicate fd number"),
    "duplicate-archive-member": (lambda d: _sb(d, "/mnt/u")["archives"].append(_sb(d, "/mnt/t")["archives"][0]),
                                 r"duplicate archive member"),
    "unknown-superblock": (lambda d: _mount(d, "/mnt/u").update(sb="sb-999"), r"unknown superblock 'sb-999'"),
    "unknown-version": (lambda d: d.update(version=2), r"format version 2 is not supported"),
    "unknown-format": (lambda d: d.update(format="criu"), r"format is 'criu'"),
    "unsupported-fstype": (lambda d: _sb(d, "/mnt/u").update(fstype="ceph", archives=[]),
                           r"filesystem type 'ceph' is not supported"),
    "host-path-option": (lambda d: _sb(d, "/mnt/u").update(super_opts=["rw", "huge=/etc/passwd"]),
                         r"names a host path"),
    "pidns-on-tmpfs": (lambda d: _sb(d, "/mnt/u").update(pidns=d["processes"][0]["ns"]["pid"]),
                       r"a pid namespace only belongs to a proc superblock"),
}


@pytest.mark.parametrize("kind", sorted(STRUCTURE))
def test_structure(base_image, tmp_path, kind):
    """Traversal, cycles, duplicate ids, unknown references, versions and types."""
    mutate, pattern = STRUCTURE[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path)


def test_truncated_manifest_is_refused(base_image, tmp_path):
    img = copy_image(base_image, tmp_path)
    path = os.path.join(img, "mntcr.json")
    os.truncate(path, os.path.getsize(path) // 2)
    refused(img, r"mntcr\.json is not valid JSON", tmp_path)


def test_truncated_archive_is_refused(base_image, tmp_path):
    img = copy_image(base_image, tmp_path)
    name = _sb(load_manifest(img), "/mnt/t")["archives"][0]["file"]
    path = os.path.join(img, name)
    os.truncate(path, os.path.getsize(path) - 512)
    refused(img, rf"archive {re.escape(name)} is damaged", tmp_path)


ARCHIVES = {
    "symlink-then-beneath": ([(_info("MEMBER/esc", tarfile.SYMTYPE, linkname=None), None),
                              (_info("MEMBER/esc/file", size=5), b"evil\n")], r"beneath a symlink of the archive"),
    "hardlink-out": ([(_info("MEMBER/h", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
                     r"is a hard link to 'etc/passwd', outside the archive"),
    "dotdot-member": ([(_info("MEMBER/../../evil", size=5), b"evil\n")], r"unsafe member"),
    "block-device": ([(_info("MEMBER/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
                     r"member '.*/sda' is a block device 8:0, which the device policy \(container\) refuses"),
    "kmem-device": ([(_info("MEMBER/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), None)],
                    r"character device 1:1"),
}


@pytest.mark.parametrize("kind", sorted(ARCHIVES))
def test_archive_escapes(base_image, tmp_path, kind):
    """Symlink, hard-link and `..` escapes out of a superblock, and device nodes outside the policy."""
    victim = _victim(tmp_path)
    add, pattern = ARCHIVES[kind]
    for info, _ in add:
        if info.type == tarfile.SYMTYPE:
            info.linkname = victim
    img = copy_image(base_image, tmp_path)
    _rewrite_archive(img, "/mnt/t", add)
    refused(img, pattern, tmp_path, victim=victim)


def test_container_device_nodes_are_restored(case, tmp_path):
    """The device policy's other side: /dev/null-like nodes in a tmpfs (a container's /dev) restore;
    --devices none refuses them."""
    # /mnt/dev/wh: an overlay whiteout (char 0:0), which every overlay upper that hid a file holds.
    pid = case.start("mkdir /mnt/dev; mount -t tmpfs d /mnt/dev; mknod -m 666 /mnt/dev/null c 1 3\n"
                     "mknod /mnt/dev/wh c 0 0\nhold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    host = Host(images, _victim(tmp_path))
    r = mntcr("restore", "-D", images, *enginecase.RESTORE_EXTERNALS, "--devices", "none",
              "--pidfile", os.path.join(str(tmp_path), "none.pid"))
    # The first node found may be the container's own /dev (1:5 before 1:3): any real one, never 0:0.
    assert r.returncode == 2 and re.search(r"character device [1-9][0-9]*:[0-9]+,", r.stderr) \
        and "(none)" in r.stderr, r.stderr
    host.assert_untouched(os.path.join(str(tmp_path), "none.pid"))
    pidfile = os.path.join(str(tmp_path), "default.pid")
    r = mntcr("restore", "-D", images, *enginecase.RESTORE_EXTERNALS, "--pidfile", pidfile)  # the default policy
    assert r.returncode == 0, r.stderr
    with open(pidfile) as f:
        new = int(f.read())
    case.trees.append(new)
    with open(f"/proc/{new}/root/mnt/dev/null", "w") as f:
        f.write("x")   # a real null device
    assert os.stat(f"/proc/{new}/root/mnt/dev/null").st_rdev == os.makedev(1, 3)
    assert os.stat(f"/proc/{new}/root/mnt/dev/wh").st_rdev == os.makedev(0, 0)


def test_validator_errors_cross_process_boundaries():
    """ImageError (raised in forked helpers too) survives pickling with its text."""
    import pickle
    from engine import imageformat
    from engine.image import ImageError
    try:
        imageformat.validate({"format": "mntcr-image", "version": 1})
    except ImageError as e:
        again = pickle.loads(pickle.dumps(e))
        assert str(again) == str(e) and "is missing" in str(e)
    else:
        pytest.fail("an empty manifest validated")


@pytest.mark.parametrize("comm", ["\ud800", "\u00f6" * 8])
def test_process_name_the_stand_in_cannot_take_is_refused(base_image, tmp_path, comm):
    """A `comm` no UTF-8 encoding takes (it would fail in the stand-in once the tree is made), or one
    over the kernel's 15 bytes (it would be cut), is refused before anything runs."""
    img = _mutated(base_image, tmp_path, lambda d: d["processes"][0].__setitem__("comm", comm))
    refused(img, r"comm.*at most 15 bytes", tmp_path)


@pytest.mark.parametrize("threads, why", [
    ([{"comm": "\u00f6" * 8}], r"threads\[0\]\.comm.*at most 15 bytes"),
    ([{"comm": "a\0b"}], r"threads\[0\]\.comm.*without NUL"),
    ([{"comm": "t", "tid": 5}], r"threads\[0\].*unknown field 'tid'"),
    ({"comm": "t"}, r"threads.*must be a list"),
    ([{"comm": "t"}] * (1 << 16 | 1), r"threads.*at most 65536"),
])
def test_threads_restore_cannot_make_are_refused(base_image, tmp_path, threads, why):
    """A process's threads (engine/threads.py): a name the stand-in cannot take, a field restore
    does not know, or more threads than a process keeps are refused before anything runs."""
    img = _mutated(base_image, tmp_path, lambda d: d["processes"][0].__setitem__("threads", threads))
    refused(img, why, tmp_path)
