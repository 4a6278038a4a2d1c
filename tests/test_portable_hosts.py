"""Images restored on another machine than the one that dumped them, as far as one host can play
it: the host's external bind at another path, a restorer with another hostname or fewer
capabilities or no root at all, an image directory reached through a symlink, copied with hard links, rsync (modes
and times lost) or sparse, on FUSE storage without xattrs (dumped there and restored from there),
an image an older mntcr wrote, and one dumped on a kernel that reports an I/O priority otherwise.
Each restores exactly or is refused in one line that says what to do, with nothing left mounted.
(Across kernels for real: tests/test_portable_kernels.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import portable_guest
from enginecase import (DUMP_EXTERNALS, ENGINE_ROOT, PROJECT_ROOT, RESTORE_EXTERNALS, SetupError, assert_same,  # noqa: F401
                        case, copy_image, dumped_image, host_mountinfo, load_manifest, mntcr, mounts_added, save_manifest,
                        take, was_stopped)

# tmpfs with content, a bind of a subdirectory, a shared/slave pair, an fd on a file, a ghost.
SETUP = """
mkdir -p /mnt/t /mnt/b /mnt/s /mnt/sl
mount -t tmpfs -o size=4m t /mnt/t; mkdir -p /mnt/t/d; echo hello > /mnt/t/d/f; echo gone > /mnt/t/g
mount --bind /mnt/t/d /mnt/b
mount -t tmpfs s /mnt/s; mount --make-shared /mnt/s; mount --bind /mnt/s /mnt/sl; mount --make-slave /mnt/sl
echo shared > /mnt/s/x; dd if=/dev/zero of=/mnt/t/big bs=64k count=16 2>/dev/null
exec 7</mnt/t/d/f 8</mnt/t/g
rm /mnt/t/g
hold
"""
CHECK = "cat /mnt/b/f /mnt/sl/x; hostname; cat /proc/self/mountinfo >/dev/null"


def _restore(case, img: str, *extra: str, wrap: tuple = (), cwd: str | None = None) -> subprocess.CompletedProcess:
    """`mntcr restore -D img` with the usual externals (and `extra`), from `cwd`, under `wrap`."""
    cmd = [*wrap, sys.executable, "-m", "engine.cli", "restore", "-D", img, *RESTORE_EXTERNALS, "--devices", "all",
           *extra, "--pidfile", os.path.join(case.workdir, "r.pid")]
    before = host_mountinfo()
    r = subprocess.run(cmd, cwd=cwd or ENGINE_ROOT, env=dict(os.environ, PYTHONPATH=ENGINE_ROOT),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    r.mounts_before = before   # (for _refused: what the host had before this restore)
    return r


def _restored(case, r: subprocess.CompletedProcess) -> int:
    """The root pid of a restore that succeeded (killed with the case)."""
    assert r.returncode == 0, r.stderr
    with open(os.path.join(case.workdir, "r.pid")) as f:
        pid = int(f.read())
    os.unlink(os.path.join(case.workdir, "r.pid"))
    case.trees.append(pid)
    return pid


def _refused(case, r: subprocess.CompletedProcess) -> str:
    """The one error line of a refused restore (`_restore`) that left nothing behind."""
    assert r.returncode == 2, f"exit {r.returncode}:\n{r.stdout}{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mntcr restore: ") and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(case.workdir, "r.pid"))
    assert not mounts_added(r.mounts_before, host_mountinfo())
    return lines[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    yield from dumped_image(tmp_path_factory, SETUP, "dumps a tree: needs root")


# --- the image directory as another machine receives it ------------------------------------------

def _symlinked(img: str, w: str) -> tuple[str, dict]:
    """Reached through a symlink to it (and one to its parent), by a relative path."""
    os.symlink(os.path.dirname(img), os.path.join(w, "parent-link"))
    os.symlink(os.path.join("parent-link", os.path.basename(img)), os.path.join(w, "img-link"))
    return "img-link", {"cwd": w}


def _hard_linked(img: str, w: str) -> tuple[str, dict]:
    """`cp -al`: every file of the copy a second name of the original's (two links each)."""
    new = os.path.join(w, "linked")
    subprocess.run(["cp", "-al", img, new], check=True)
    return new, {}


def _rsynced_sparse(img: str, w: str) -> tuple[str, dict]:
    """`rsync -r --sparse` (no -a: modes from the umask, times of the copy, no owners kept)."""
    new = os.path.join(w, "rsynced")
    subprocess.run(["rsync", "-r", "--sparse", "--chmod=D700,F600", img + "/", new], check=True)
    return new, {}


@pytest.mark.parametrize("move", [_symlinked, _hard_linked, _rsynced_sparse], ids=lambda f: f.__name__[1:])
def test_image_restores_exactly_as_received(case, move):
    """The archives are checked by size and sha256 alone: links, modes, times and holes of the copy
    do not matter, nor how the directory is reached."""
    if move is _rsynced_sparse and not shutil.which("rsync"):
        pytest.skip("rsync is not installed")
    pid = case.start(SETUP)
    before = take(pid, CHECK)
    img = case.new_images_dir()
    case.dump(pid, img)
    where, how = move(img, case.workdir)
    r = _restore(case, where, **how)
    assert "older mntcr" not in r.stderr, r.stderr
    assert_same(before, take(_restored(case, r), CHECK))


def test_dumped_onto_and_restored_from_fuse_storage_without_xattrs(case):
    """An image directory on FUSE (bindfs --xattr-none: no xattrs, no O_TMPFILE, like many network
    filesystems): dump writes it there and restore reads it from there, exactly."""
    if not shutil.which("bindfs"):
        pytest.skip("bindfs is not installed (apt-get install bindfs)")
    pid = case.start(SETUP)
    before = take(pid, CHECK)
    backing, fuse = os.path.join(case.workdir, "backing"), os.path.join(case.workdir, "fuse")
    os.mkdir(backing)
    os.mkdir(fuse)
    # Each command in a mount namespace of its own with the FUSE mount; the daemon ends with it.
    wrap = ("unshare", "-m", "--propagation", "private", "sh", "-ec",
            'b=$0 f=$1; shift; bindfs --xattr-none "$b" "$f"; "$@" && rc=0 || rc=$?; '
            'fusermount -u "$f" || umount -l "$f"; exit $rc', backing, fuse)
    mounts = host_mountinfo()
    r = mntcr("dump", "-t", str(pid), "-D", os.path.join(fuse, "img"), *DUMP_EXTERNALS, wrap=wrap)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(os.path.join(backing, "img", "mntcr.json")), "the dump did not write through FUSE"
    r = _restore(case, os.path.join(fuse, "img"), wrap=wrap)
    assert_same(before, take(_restored(case, r), CHECK))
    assert not mounts_added(mounts, host_mountinfo())


# --- the restoring machine ---------------------------------------------------------------------------

DATA_SETUP = """
mkdir -p /mnt/data; cd /mnt/data; exec 7</mnt/data/f
hold
"""


def test_external_bind_given_at_another_host_path(case):
    """The host directory an external bind showed lies elsewhere on the restoring machine: without
    `--external mnt[KEY]:NEWPATH` restore says so in one line; with it the tree binds the new path,
    its fd on a file there reopened by its path relative to the bind."""
    old, new = os.path.join(case.workdir, "old"), os.path.join(case.workdir, "new")
    os.mkdir(old)
    with open(os.path.join(old, "f"), "w") as f:
        f.write("data\n")
    pid = case.start(DATA_SETUP, binds=((old, "/mnt/data"),))
    before = portable_guest.comparable(take(pid, "cat /mnt/data/f; pwd"), externals=("/mnt/data",))
    img = case.new_images_dir()
    case.dump(pid, img, ("--external", "mnt[/mnt/data]:data"))
    shutil.copytree(old, new)
    shutil.rmtree(old)
    with open(os.path.join(new, "only-here"), "w") as f:
        f.write("the restoring machine's\n")
    line = _refused(case, _restore(case, img))
    assert "--external mnt[data]:HOSTPATH" in line, line
    pid = _restored(case, _restore(case, img, "--external", f"mnt[data]:{new}"))
    assert_same(before, portable_guest.comparable(take(pid, "cat /mnt/data/f; pwd"), externals=("/mnt/data",)))
    with open(f"/proc/{pid}/root/mnt/data/only-here") as f:
        assert f.read() == "the restoring machine's\n"


def test_restorer_with_another_hostname(case, image):
    """A restorer whose hostname differs: the tree gets its own UTS namespace's name back, the
    restorer keeps its own."""
    img = copy_image(image, case.workdir)
    wrap = ("unshare", "--uts", "sh", "-ec", 'hostname restoring-host; "$@"; test "$(hostname)" = restoring-host', "sh")
    pid = _restored(case, _restore(case, img, wrap=wrap))
    assert take(pid, "hostname").snap.check_output.strip() == "mntcr-test"


def test_restorer_lacking_a_capability_is_told_which(case, image):
    """A restorer whose bounding set lacks a capability the tree holds (a container's root) cannot
    give it: one line naming it and what to do."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed (util-linux)")
    with open("/proc/self/status") as f:
        if not int(next(line for line in f if line.startswith("CapBnd:")).split()[1], 16) >> 23 & 1:
            pytest.skip("this runner lacks cap_sys_nice already")
    img = copy_image(image, case.workdir)
    line = _refused(case, _restore(case, img, wrap=("setpriv", "--bounding-set", "-sys_nice")))
    assert "cap_sys_nice" in line and "capsh --drop=cap_sys_nice" in line, line


@pytest.mark.parametrize("wrap", [("unshare", "-Urm", "--propagation", "private"),
                                  ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")],
                         ids=["userns-root", "nobody"])
def test_rootless_restorer_and_dumper_are_told_to_run_as_root(case, image, wrap):
    """Restore makes mounts, namespaces and devices of the host's: as root of a user namespace (the
    kernel's EINVAL there read as "kernel lacks open_tree" before) or as a user it is refused in one
    line saying to run it as the host's root; a rootless tree is restored by root too."""
    img = copy_image(image, case.workdir)
    subprocess.run(["chmod", "-R", "a+rX", case.workdir], check=True)   # (the user may read it: the refusal is not that)
    os.chmod(case.workdir, 0o777)
    line = _refused(case, _restore(case, img, wrap=wrap))
    assert "restore needs root of the host" in line and "outside any user namespace" in line, line
    # and dump, which read "Permission denied: '/proc/N/ns/mnt'" before, the tree left running
    pid = case.start("hold\n")
    r = mntcr("dump", "-t", str(pid), "-D", os.path.join(case.workdir, "img2"), *DUMP_EXTERNALS, wrap=wrap)
    assert r.returncode == 2 and r.stderr.strip().startswith("mntcr dump: dump needs root of the host"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not was_stopped(pid) and os.path.exists(f"/proc/{pid}")


def test_cpu_affinity_on_cpus_this_machine_lacks_is_told(case, image):
    """A process pinned to a CPU of the dumping machine (taskset -c 4095) that this one lacks: one
    line naming the CPUs restore may use and what to do, nothing left."""
    if 4095 in os.sched_getaffinity(0):
        pytest.skip("this machine has CPU 4095")
    img = copy_image(image, case.workdir)
    doc = load_manifest(img)
    for p in doc["processes"]:
        p["sched"]["cpus"] = [4095]
    save_manifest(img, doc)
    line = _refused(case, _restore(case, img))
    assert "CPU affinity [4095]" in line and "restore where those CPUs exist" in line, line

# --- images of other kernels and other mntcrs ----------------------------------------------------------

def test_io_priority_of_none_set_as_an_older_kernel_reports_it(case, image):
    """Linux 5.10 reports a process that set no I/O priority as class NONE level 4, which this kernel
    refuses to set (EINVAL): restored as none set, as it was."""
    img = copy_image(image, case.workdir)
    doc = load_manifest(img)
    for p in doc["processes"]:
        p["sched"]["ioprio"] = 4
    save_manifest(img, doc)
    pid = _restored(case, _restore(case, img))
    from engine import schedattrs
    assert schedattrs.values(pid)["ioprio"] == 0


def test_overlay_default_an_older_kernel_lacks_is_left_out(monkeypatch):
    """`uuid=on` (6.18 shows it for its default) is refused by a kernel without uuid= (5.10: EINVAL
    at the create): the overlay is made without it, which is that kernel's only way; any other
    refusal stands."""
    import errno

    from engine.fs import overlay
    asked = []

    def old_kernel(fstype, source, params, attr=0):
        asked.append(list(params))
        if ("uuid", "on") in params or ("xino", "frob") in params:
            raise OSError(errno.EINVAL, "creating overlay: fsconfig(6): Invalid argument")
        return 99

    monkeypatch.setattr(overlay, "fsmount", old_kernel)
    params = [("lowerdir", "/l"), ("upperdir", "/u"), ("workdir", "/w"), ("uuid", "on")]
    assert overlay.make("ov", params) == 99
    assert asked[-1] == params[:3]
    with pytest.raises(OSError):
        overlay.make("ov", params + [("xino", "frob")])


def test_image_of_an_older_mntcr_restores_with_a_note(case, image):
    """An older mntcr wrote fewer per-process records (the format grows by optional fields): the
    restore works and says, in one note, what the image does not tell and the tree gets instead."""
    img = copy_image(image, case.workdir)
    doc = load_manifest(img)
    for p in doc["processes"]:
        for key in ("caps", "rlimits", "sched", "sid", "pgid", "umask"):
            p.pop(key, None)
    save_manifest(img, doc)
    r = _restore(case, img)
    _restored(case, r)
    notes = [line for line in r.stderr.splitlines() if "older mntcr" in line]
    assert len(notes) == 1 and "capabilities, resource limits, scheduling attributes" in notes[0], r.stderr
    assert "dump again with this mntcr" in notes[0]
    # refused for another reason (an option this kernel lacks), the line stays the only one
    sb = next(sb for sb in doc["superblocks"].values() if sb["fstype"] == "tmpfs" and sb.get("archives"))
    sb["super_opts"] = sb["super_opts"] + ["frobnicate_99"]
    save_manifest(img, doc)
    assert "frobnicate_99" in _refused(case, _restore(case, img))


def test_image_of_a_newer_mntcr_is_refused_saying_so(case, image):
    img = copy_image(image, case.workdir)
    doc = load_manifest(img)
    doc["version"] = 2
    save_manifest(img, doc)
    line = _refused(case, _restore(case, img))
    assert "format version 2" in line and "newer mntcr" in line, line


OLD_MNTCR = "454777e3"   # next of 2026-12-04: before capabilities, limits, sessions... were kept


def test_image_dumped_by_a_real_older_mntcr(case, tmp_path):
    """The engine of an older commit dumps, this one restores: the mounts, fds and files are exact,
    the note names what that mntcr did not keep."""
    old = tmp_path / "old"
    old.mkdir()
    got = subprocess.run(f"git -C '{PROJECT_ROOT}' archive {OLD_MNTCR} engine | tar -x -C '{old}'", shell=True,
                         capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"commit {OLD_MNTCR} is not in this checkout (a shallow clone?): {got.stderr.strip()[:200]}")
    pid = case.start(SETUP)
    before = take(pid, CHECK)
    img = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", img, *DUMP_EXTERNALS, engine_root=str(old))
    if r.returncode:
        raise SetupError(f"the older mntcr's dump failed: {r.stderr.strip()}")
    r = _restore(case, img)
    after = take(_restored(case, r), CHECK)
    assert "the image is an older mntcr's" in r.stderr and "session" in r.stderr, r.stderr
    assert before.snap.check_output == after.snap.check_output
    for p, q in zip(before.snap.procs, after.snap.procs, strict=True):
        assert (p.tree_text, p.fds, p.root, p.cwd) == (q.tree_text, q.fds, q.root, q.cwd)
    assert before.fd_data == after.fd_data
