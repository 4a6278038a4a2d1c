"""Engine failure behaviour: missing kernel features, unsupported filesystems at dump, images that
fail validation, and SIGKILL of `mntcr restore` at every step.

Every refusal must be: exit status 2, one line on stderr naming the problem,
nothing mounted in the test's (host) namespace, the image directory
unchanged, and no restore process left behind.
"""

from __future__ import annotations

import os
import re
import tarfile
import time

import pytest

import enginecase
from enginecase import (EngineCase, case, copy_image, host_mountinfo, load_manifest, mntcr, py_hold,  # noqa: F401
                        mounts_added, procs_with, save_manifest, tree_hash)

# --- seccomp: make chosen syscalls fail with ENOSYS in one child (a kernel "without" them) -----

NR = enginecase.NR
_without = enginecase.without_syscalls


def _run_without(names, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=enginecase.ENGINE_ROOT,
                          env=dict(os.environ, PYTHONPATH=enginecase.ENGINE_ROOT), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, preexec_fn=_without(*names))


needs_seccomp = enginecase.needs_seccomp


def assert_refused(r, pattern: str, verb: str = "restore") -> str:
    """Exit 2 and exactly one stderr line, matching `pattern`; returns the line."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"exit {r.returncode}, stderr:\n{r.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert lines[0].startswith(f"mntcr {verb}: "), lines[0]
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    return lines[0]


# --- `mntcr check` ---------------------------------------------------------------------------

ISSUE_FEATURES = ["open_tree", "move_mount", "MOVE_MOUNT_SET_GROUP", "fsopen/fsmount", "mount_setattr",
                  "statmount/listmount", "STATX_MNT_ID_UNIQUE", "open_tree(detached)", "statmount(idmap)",
                  "move_mount(to-detached)", "statmount(fd)", "overlay(AT_HANDLE_FID)"]
_CHECK_LINE = re.compile(r"^(\S+)\s+(present|MISSING)\s+(required|optional)\b")


def _parse_check(out: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in out.splitlines():
        m = _CHECK_LINE.match(line)
        if m:
            assert m[1] not in found, f"{m[1]} listed twice"
            found[m[1]] = (m[2], m[3])
    return found


def test_check_lines_and_status_agree():
    """Every feature of issue 3 has one line; exit 0 exactly when no required one is missing."""
    r = mntcr("check")
    found = _parse_check(r.stdout)
    assert sorted(found) == sorted(ISSUE_FEATURES), r.stdout
    missing_required = [n for n, (state, need) in found.items() if state == "MISSING" and need == "required"]
    assert r.returncode == (2 if missing_required else 0), r.stdout


def _needed(name: str) -> str:
    """"required" or "optional", as `mntcr check` declares feature `name` on this machine."""
    return _parse_check(mntcr("check").stdout)[name][1]


@needs_seccomp
@pytest.mark.parametrize("blocked,feature", [("open_tree", "open_tree"),
                                             ("fsopen", "fsopen/fsmount"),
                                             ("mount_setattr", "mount_setattr"), ("move_mount", "move_mount")])
def test_check_sees_missing_feature(blocked, feature):
    """A kernel without a syscall (seccomp: ENOSYS) is reported missing (and only what depends on
    it with it); check exits 2 exactly when a required feature is missing."""
    r = _run_without([blocked], "check")
    found = _parse_check(r.stdout)
    assert found[feature][0] == "MISSING", r.stdout
    # statx is not blocked: a probe that is unrelated must still be present.
    assert found["STATX_MNT_ID_UNIQUE"][0] == "present", r.stdout
    independent = {"open_tree": ["fsopen/fsmount", "move_mount"], "fsopen": ["open_tree", "move_mount"],
                   "mount_setattr": ["open_tree", "move_mount", "fsopen/fsmount"],
                   "move_mount": ["open_tree", "fsopen/fsmount"]}[blocked]
    for name in independent:
        assert found[name][0] == "present", f"{name} reported missing without {blocked}:\n{r.stdout}"
    missing_required = [n for n, (state, need) in found.items() if state == "MISSING" and need == "required"]
    assert r.returncode == (2 if missing_required else 0), r.stdout


# --- images for the failure tests --------------------------------------------------------------

BASE_SETUP = """
mkdir /mnt/t /mnt/s /mnt/s2
mount -t tmpfs t /mnt/t; mkdir /mnt/t/d; echo x > /mnt/t/f
mount -t tmpfs d /mnt/t/d
mount -t tmpfs s /mnt/s; mount --make-shared /mnt/s; mount --bind /mnt/s /mnt/s2
exec 5</mnt/t/f
cd /mnt/t
hold
"""


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """A valid image (tmpfs with a child mount, a peer group, an fd, cwd on a tmpfs)."""
    yield from enginecase.dumped_image(tmp_path_factory, BASE_SETUP, "engine tests need root")


_copy, _doc, _save = copy_image, load_manifest, save_manifest


def _root_ns(doc) -> dict:
    name = doc["processes"][0]["ns"]["mnt"]
    return doc["mntns"][name]


def _mount(doc, mountpoint: str) -> dict:
    return next(m for m in _root_ns(doc)["mounts"] if m["mountpoint"] == mountpoint)


def _archive_of(doc, mountpoint: str) -> str:
    """The archive file holding the files of the mount at `mountpoint`."""
    sb = doc["superblocks"][_mount(doc, mountpoint)["sb"]]
    return sb["archives"][0]["file"]


def _member_of(doc, mountpoint: str, rel: str) -> str:
    """The archive member name of file `rel` of that mount (one archive may hold several
    superblocks, each under its own member directory)."""
    prefix = doc["superblocks"][_mount(doc, mountpoint)["sb"]]["archives"][0].get("member")
    return f"{prefix}/{rel}" if prefix else f"./{rel}"


def _forge_manifest(img: str, name: str) -> None:
    """After an archive was rewritten, make the manifest vouch for it again (size, sha256), as an
    attacker who edits both would: so the check under test is the path check, not the digest."""
    import hashlib
    doc = _doc(img)
    meta = (doc.get("files") or {}).get(name)
    if meta is not None:
        with open(os.path.join(img, name), "rb") as f:
            data = f.read()
        meta.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        _save(img, doc)


def restore_refused(img: str, pattern: str, tmp_path) -> str:
    """Restore `img`; it must be refused (see module docstring) with a line matching `pattern`."""
    mounts = host_mountinfo()
    before = tree_hash(img)
    pidfile = os.path.join(str(tmp_path), "refused.pid")
    r = mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--pidfile", pidfile)
    if r.returncode == 0:  # it must not have worked; clean up what it started before failing
        from zdtm.snapshot import kill_tree
        with open(pidfile) as f:
            kill_tree(int(f.read()))
    line = assert_refused(r, pattern)
    assert mounts_added(mounts, host_mountinfo()) == []
    assert tree_hash(img) == before, "restore changed the image directory"
    assert not os.path.exists(pidfile)
    _assert_no_restore_left(img)
    return line


def _assert_no_restore_left(img: str) -> None:
    deadline = time.monotonic() + 60
    while procs_with(img) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_with(img) == [], "restore processes (stand-ins) left behind"


def test_base_image_restores(case, base_image, tmp_path):
    """Control: the unmodified copy restores, so each refusal below comes from its one change."""
    img = _copy(base_image, tmp_path)
    pid = case.restore(img)
    assert pid > 0


def test_restore_without_a_pidfile_prints_the_pid(base_image, tmp_path):
    """`mntcr restore -D DIR`, as the README and criu spell it: the pid file is optional and the
    restored root's pid is printed; that pid runs the restored tree."""
    from zdtm.snapshot import kill_tree
    img = _copy(base_image, tmp_path)
    r = mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS)
    assert r.returncode == 0, r.stderr
    m = re.search(r"^restored: root stand-in pid (\d+)$", r.stdout, re.M)
    assert m, r.stdout
    pid = int(m.group(1))
    try:
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    finally:
        kill_tree(pid)


def _mutate_cycle(doc):
    ns = _root_ns(doc)
    a = _mount(doc, "/mnt/t/d")
    b = dict(a, id=max(m["id"] for m in ns["mounts"]) + 1, parent=a["id"])
    a["parent"] = b["id"]
    ns["mounts"].append(b)


def _mutate_duplicate(doc):
    _mount(doc, "/mnt/t/d")["id"] = _mount(doc, "/mnt/t")["id"]


def _mutate_parent_missing(doc):
    _mount(doc, "/mnt/t/d")["parent"] = 987654


BAD_DOCS = {
    "version": (lambda d: d.update(version=999), r"version 999"),
    "format": (lambda d: d.update(format="criu"), r"format"),
    "duplicate-mount-id": (_mutate_duplicate, r"duplicate mount id"),
    "parent-missing": (_mutate_parent_missing, r"parent 987654"),
    "parent-cycle": (_mutate_cycle, r"cycle"),
    "dotdot-mountpoint": (lambda d: _mount(d, "/mnt/t/d").update(mountpoint="/mnt/t/../../etc"), r"\.\."),
    "dotdot-root": (lambda d: _mount(d, "/mnt/s2").update(root="/../.."), r"\.\."),
    "dotdot-fd-path": (lambda d: d["processes"][0]["fds"][-1].update(path="/../../etc/shadow"), r"\.\."),
    "dotdot-cwd": (lambda d: d["processes"][0]["cwd"].update(path="/d/../../.."), r"\.\."),
    "dotdot-archive-root": (lambda d: next(sb for sb in d["superblocks"].values() if sb.get("archives"))
                            ["archives"][0].update(root="/x/../../.."), r"\.\."),
    "relative-mountpoint": (lambda d: _mount(d, "/mnt/t/d").update(mountpoint="mnt/t/d"), r"absolute"),
    "archive-name-escapes": (lambda d: next(sb for sb in d["superblocks"].values() if sb.get("archives"))
                             ["archives"][0].update(file="../../etc/passwd"), re.escape("../../etc/passwd")),
    "absurd-processes": (lambda d: d.update(processes=[0] * 100_001), r"absurd"),
    "absurd-mounts": (lambda d: _root_ns(d).update(mounts=[0] * 1_000_001), r"absurd"),
    "fd-unknown-mount": (lambda d: d["processes"][0]["fds"][-1].update(mnt=424242), r"unknown mount 424242"),
}


@pytest.mark.parametrize("kind", sorted(BAD_DOCS))
def test_bad_manifest(base_image, tmp_path, kind):
    """Each class of bad manifest is refused before anything is built."""
    img = _copy(base_image, tmp_path)
    mutate, pattern = BAD_DOCS[kind]
    doc = _doc(img)
    mutate(doc)
    _save(img, doc)
    restore_refused(img, pattern, tmp_path)


def test_manifest_not_json(base_image, tmp_path):
    img = _copy(base_image, tmp_path)
    with open(os.path.join(img, "mntcr.json"), "a") as f:
        f.write("}{")
    restore_refused(img, r"not valid JSON", tmp_path)


def test_missing_archive(base_image, tmp_path):
    img = _copy(base_image, tmp_path)
    name = _archive_of(_doc(img), "/mnt/t")
    os.unlink(os.path.join(img, name))
    restore_refused(img, rf"{re.escape(name)} is missing", tmp_path)


@pytest.mark.parametrize("where", ["data", "header"])
def test_truncated_archive(base_image, tmp_path, where):
    """Cut inside a member's data, or inside a member's header (GNU tar takes that for the end)."""
    img = _copy(base_image, tmp_path)
    name = _archive_of(_doc(img), "/mnt/t")
    path = os.path.join(img, name)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    # (Cutting only the zero padding at the end would leave a whole archive.)
    if where == "data":
        f = next(m for m in members if m.name == _member_of(_doc(img), "/mnt/t", "f"))
        os.truncate(path, f.offset_data + 1)
    else:
        os.truncate(path, members[-1].offset + 100)
    restore_refused(img, re.escape(name), tmp_path)


def _rewrite_archive(path: str, replace: dict[str, tarfile.TarInfo], add=()) -> None:
    """Rewrite the tar at `path`: members named in `replace` swapped for the given entries, plus `add`."""
    tmp = path + ".new"
    with tarfile.open(path) as src, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as dst:
        for member in src.getmembers():
            if member.name in replace:
                dst.addfile(replace[member.name])
            else:
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        for info, data in add:
            import io
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    os.rename(tmp, path)


@pytest.mark.parametrize("member", ["/abs-evil", "../../../../../evil", "./d/../../../evil"])
def test_archive_member_escapes(base_image, tmp_path, member):
    """An archive member with an absolute name or `..` is refused; nothing is written outside."""
    img = _copy(base_image, tmp_path)
    name = _archive_of(_doc(img), "/mnt/t")
    info = tarfile.TarInfo(member)
    info.size = 5
    _rewrite_archive(os.path.join(img, name), {}, add=[(info, b"evil\n")])
    _forge_manifest(img, name)
    restore_refused(img, re.escape(name), tmp_path)
    for where in ("/abs-evil", "/evil", os.path.join(str(tmp_path), "evil")):
        assert not os.path.exists(where)


@pytest.mark.parametrize("target", ["absolute", "relative", "file"])
def test_symlink_in_restore_path(base_image, tmp_path, target):
    """A tmpfs content whose mount point directory (/mnt/t/d) became a symlink pointing outside
    (to a host directory), or a plain file: refused, and nothing is mounted on the host directory.
    Files are extracted while mounts are attached: whichever comes first at /mnt/t/d, the restore
    must refuse (a file put in place of an attached mount point detaches the mount)."""
    img = _copy(base_image, tmp_path)
    victim = os.path.join(str(tmp_path), "victim")
    os.mkdir(victim)
    doc = _doc(img)
    name, member = _archive_of(doc, "/mnt/t"), _member_of(doc, "/mnt/t", "d")
    link = tarfile.TarInfo(member)
    if target == "file":
        link.type, link.size = tarfile.REGTYPE, 0
    else:
        link.type = tarfile.SYMTYPE
        link.linkname = victim if target == "absolute" else "../../../../../../.." + victim
    _rewrite_archive(os.path.join(img, name), {member: link})
    _forge_manifest(img, name)
    restore_refused(img, r"/mnt/t/d", tmp_path)
    assert os.listdir(victim) == []


# --- dump refusals -------------------------------------------------------------------------------

def test_unsupported_filesystem(case, tmp_path):
    """`mount -t debugfs` in the container, dumped by an engine without engine/fs/debugfs.py (every
    type this kernel mounts without a device has a module): dump refuses with the mount named,
    leaves no image (restore refuses the path), and resumes the tree."""
    pid = case.start("mkdir /mnt/b; mount -t debugfs debugfs /mnt/b\nhold\n")
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS,
              engine_root=enginecase.engine_without(str(tmp_path / "engine"), "debugfs"))
    assert_refused(r, r"^mntcr dump: mount \d+ \(/mnt/b\) on debugfs: not supported; declare it with --external "
                      r"mnt\[/mnt/b\]:KEY$", verb="dump")
    assert not os.path.exists(images)
    assert [n for n in os.listdir(case.workdir) if n.startswith(".images")] == []
    r2 = mntcr("restore", "-D", images, *enginecase.RESTORE_EXTERNALS, "--pidfile", images + ".pid")
    assert_refused(r2, re.escape(images))
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state in ("S", "R"), f"the tree was left in state {state} after a refused dump"


def test_unsupported_filesystems_one_line(case, tmp_path):
    """A tree with several mounts of types the engine cannot dump (as one that inherited a host's
    mounts has): ONE line with their count, the first four (id, mount point, type) and how to
    declare them, before the tree is stopped; declared, the dump goes through."""
    kinds = ["debugfs", "tracefs", "securityfs", "pstore", "bpf"]
    setup = "".join(f"mkdir /mnt/{k}; mount -t {k} {k} /mnt/{k}\n" for k in kinds) + "hold\n"
    pid = case.start(setup)
    engine = enginecase.engine_without(str(tmp_path / "engine"), *kinds)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS, engine_root=engine)
    named = ", ".join(rf"\d+ \(/mnt/{k}\) on {k}" for k in kinds[:4])
    assert_refused(r, rf"^mntcr dump: 5 mounts of types mntcr cannot dump: {named} and 1 more; declare each "
                      r"with --external mnt\[MOUNTPOINT\]:KEY", verb="dump")
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R"), "a refused dump left the tree stopped"
    declared = [a for k in kinds for a in ("--external", f"mnt[/mnt/{k}]:{k}")]
    r = mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS, *declared, engine_root=engine)
    assert r.returncode == 0, r.stderr


# --- missing kernel feature at restore ------------------------------------------------------------

@needs_seccomp
@pytest.mark.parametrize("blocked", ["open_tree", "fsopen", "move_mount",
                                     "mount_setattr"])
def test_restore_without_feature(case, base_image, tmp_path, blocked):
    """Restore on a kernel without a syscall: when `mntcr check` calls it required, one line naming it
    and nothing touched; when optional, restore must work without it."""
    feature = {"fsopen": "fsopen/fsmount"}.get(blocked, blocked)
    img = _copy(base_image, tmp_path)
    mounts = host_mountinfo()
    before = tree_hash(img)
    pidfile = os.path.join(str(tmp_path), "p.pid")
    r = _run_without([blocked], "restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--pidfile", pidfile)
    if _needed(feature) == "optional":
        assert r.returncode == 0, f"{feature} is optional per `mntcr check`, but restore failed: {r.stderr}"
        with open(pidfile) as f:
            case.trees.append(int(f.read()))
        return
    assert_refused(r, re.escape(feature))
    assert mounts_added(mounts, host_mountinfo()) == []
    assert tree_hash(img) == before
    assert not os.path.exists(pidfile)
    _assert_no_restore_left(img)


# --- SIGKILL of restore at every step -----------------------------------------------------------

FAULT_SETUP = """
mkdir /mnt/t /mnt/s /mnt/sl
mount -t tmpfs t /mnt/t; mkdir /mnt/t/o; echo x > /mnt/t/f; echo o > /mnt/t/o/g
mount -t tmpfs s /mnt/s; mkdir /mnt/s/x; mount --make-shared /mnt/s
mount --bind /mnt/s /mnt/sl; mount --make-slave /mnt/sl
exec 5</mnt/t/f
exec 6</mnt/t/o/g
mount -t tmpfs cover /mnt/t/o
unshare -m --propagation unchanged sh -c '
    mount -t tmpfs child /mnt/s/x
    touch /tmp/child-ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /tmp/child-ready
hold
"""


def _killed_restore(img: str, k: int, pidfile: str, mounts: str, digest: str) -> list[str]:
    """Restore with MNTCR_FAULT_STEP=k; return the problems seen (a list, maybe empty), or None if it
    succeeded. Leftover processes are killed (by pid) so the walk can go on."""
    import subprocess
    try:
        r = mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--pidfile", pidfile,
                  env={"MNTCR_FAULT_STEP": str(k)}, timeout=120)   # (a loaded machine: minutes, not a hang)
    except subprocess.TimeoutExpired:
        r = None
    if r is not None and r.returncode == 0:
        return None
    problems = []
    if r is None:
        problems.append(f"step {k}: mntcr restore hung after its restorer was killed")
    # (killed stand-ins wait for a CPU to exit on a loaded machine; the loop ends when they are gone)
    deadline = time.monotonic() + (0 if r is None else 30)
    while procs_with(img) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = procs_with(img)
    if left:
        problems.append(f"step {k}: processes left behind: {left}")
        for p in left:
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
    if os.path.exists(pidfile):
        problems.append(f"step {k}: a killed restore wrote its pidfile")
    added = mounts_added(mounts, host_mountinfo())
    if added:
        problems.append(f"step {k}: mounts left on the host: {added}")
    if tree_hash(img) != digest:
        problems.append(f"step {k}: the image changed")
    return problems


def test_sigkill_at_every_restore_step(case, tmp_path):
    """MNTCR_FAULT_STEP=k kills the restorer at its k-th step; walk k = 1.. until restore succeeds.
    Each killed restore: exit != 0, no stand-in left, host mounts and the image unchanged.
    Step 2 (right after the first stand-in is forked) is tried a few more times: what can go wrong
    there is a race with the new stand-in."""
    pid = case.start(FAULT_SETUP)
    before = enginecase.take(pid)
    img = case.new_images_dir()
    case.dump(pid, img)
    digest = tree_hash(img)
    mounts = host_mountinfo()
    problems = []
    k = 0
    while True:
        k += 1
        assert k <= 500, "restore never succeeded"
        pidfile = os.path.join(str(tmp_path), f"k{k}.pid")
        seen = _killed_restore(img, k, pidfile, mounts, digest)
        if seen is None:
            with open(pidfile) as f:
                new = int(f.read())
            case.trees.append(new)
            break
        problems += seen
    assert k > 5, f"restore succeeded at step {k}: the fault hook did not fire (MNTCR_FAULT_STEP ignored?)"
    # The restore that was allowed to finish is complete.
    enginecase.assert_same(before, enginecase.take(new))
    from zdtm.snapshot import kill_tree
    kill_tree(new)  # (its stand-ins' command lines name the image too)
    for i in range(3):
        seen = _killed_restore(img, 2, os.path.join(str(tmp_path), f"again{i}.pid"), mounts, digest)
        assert seen is not None, "step 2: restore succeeded although it should have been killed"
        problems += seen
    assert problems == [], "\n".join(problems)


def test_a_traced_process_is_refused_and_left_traced(case):
    """A process of the tree under ptrace (as `strace -p` or gdb attach it; the tracer in the tree
    too): restore could not attach it again, and our SIGSTOP would be the tracer's to report.
    Refused before the stop, naming tracee and tracer; no image; both run on, still attached."""
    pid = case.start("hold & t=$!\n" + "T=$t " + py_hold("""
import ctypes
if ctypes.CDLL(None, use_errno=True).ptrace(0x4206, int(os.environ["T"]), 0, 0):   # PTRACE_SEIZE: no stop
    raise SystemExit(f"ptrace: {os.strerror(ctypes.get_errno())}")
"""))
    from engine.freeze import process_tree
    traced = [p for p, _ in process_tree(pid) if _status(p, "TracerPid") not in ("0", None)]
    assert len(traced) == 1, traced
    images = case.new_images_dir()
    r = enginecase.mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS)
    assert_refused(r, r"^mntcr dump: process \d+ \(mntcr-hold\) is traced by process \d+ \(mntcr-hold\): ptrace is "
                      r"not restored; detach the tracer and dump again; the tree keeps running$", "dump")
    assert not os.path.exists(images)
    assert _status(traced[0], "State")[0] == "S", _status(traced[0], "State")
    assert _status(traced[0], "TracerPid") != "0"


def _status(pid: int, field: str) -> str | None:
    """A field of /proc/PID/status (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def test_a_zombie_as_the_root_is_refused_and_its_parent_untouched(case):
    """Zombies of the tree are dumped (engine/zombies.py); a zombie given as the root is no tree at
    all: dump names it and refuses, writes no image, and its parent's tree is never stopped."""
    # The child waits until its parent is the holder (which never reaps), then exits.
    pid = case.start("sh -c 'while [ \"$(cat /proc/$PPID/comm)\" != mntcr-hold ]; do sleep 0.05; done; "
                     "exit 0' &\nhold\n")
    deadline = time.monotonic() + 60
    while True:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
        zombie = next((k for k in kids if (_status(k, "State") or "").startswith("Z")), None)
        if zombie is not None:
            break
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    images = case.new_images_dir()
    r = enginecase.mntcr("dump", "-t", str(zombie), "-D", images, *enginecase.DUMP_EXTERNALS)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"mntcr dump: process {zombie} has exited (a zombie): there is no tree to dump", \
        r.stderr
    assert not os.path.exists(images)
    assert _status(zombie, "State").startswith("Z")
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state in ("S", "R"), f"the tree was left in state {state} after a refused dump"
