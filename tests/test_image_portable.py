"""Images restored elsewhere than where they were dumped: the image directory moved, copied
(cp -a, tar), on a read-only bind, owned by another user, or with the dumper's cwd and /tmp files
gone. Restore is exact from each, or refuses with one line and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import sys

from enginecase import (ENGINE_ROOT, RESTORE_EXTERNALS, EngineCase, assert_same, case, copy_image, dumped_image,  # noqa: F401
                        host_mountinfo, load_manifest, mounts_added, py_hold, save_manifest, take)

# tmpfs with content, a bind of a subdirectory, a shared/slave pair, an fd on a file, a ghost.
SETUP = """
mkdir -p /mnt/t /mnt/b /mnt/s /mnt/sl
mount -t tmpfs -o size=4m t /mnt/t; mkdir -p /mnt/t/d; echo hello > /mnt/t/d/f; echo gone > /mnt/t/g
mount --bind /mnt/t/d /mnt/b
mount -t tmpfs s /mnt/s; mount --make-shared /mnt/s; mount --bind /mnt/s /mnt/sl; mount --make-slave /mnt/sl
echo shared > /mnt/s/x
exec 7</mnt/t/d/f 8</mnt/t/g
rm /mnt/t/g
hold
"""
CHECK = "cat /mnt/b/f /mnt/sl/x; cat /proc/self/mountinfo >/dev/null"

# A tmpfs with content and a memfd with seals (which Linux 6.3 added F_SEAL_EXEC to).
SMALL = """
mkdir -p /mnt/t; mount -t tmpfs t /mnt/t; echo hi > /mnt/t/f
""" + py_hold("""
import fcntl
m = os.memfd_create("m", os.MFD_ALLOW_SEALING); os.write(m, b"sealed"); fcntl.fcntl(m, 1033, 0x8); os.dup2(m, 9)
""")


def _restore(img: str, workdir: str, *, cwd: str | None = None, wrap: str = "") -> subprocess.CompletedProcess:
    """`mntcr restore -D img` (optionally from `cwd`, or inside `sh -c WRAP` that ends in "$@")."""
    cmd = [sys.executable, "-m", "engine.cli", "restore", "-D", img, *RESTORE_EXTERNALS, "--devices", "all",
           "--pidfile", os.path.join(workdir, "r.pid")]
    if wrap:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-ec", wrap, "sh"] + cmd
    return subprocess.run(cmd, cwd=cwd or ENGINE_ROOT, env=dict(os.environ, PYTHONPATH=ENGINE_ROOT),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def _refused(r: subprocess.CompletedProcess, workdir: str, before_mounts: str) -> str:
    """The one error line of a refused restore that left nothing behind."""
    assert r.returncode == 2, f"exit {r.returncode}:\n{r.stdout}{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mntcr restore: ") and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(workdir, "r.pid"))
    assert not mounts_added(before_mounts, host_mountinfo())
    return lines[0]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    yield from dumped_image(tmp_path_factory, SMALL, "dumps a tree: needs root")


def test_option_this_kernel_lacks_names_the_dumping_kernel(small_image, tmp_path):
    """An image from a newer kernel whose tmpfs has an option this one lacks (`noswap` on 6.1):
    the refusal says which kernel dumped it, so the user knows what to do (restore on that one)."""
    img = copy_image(small_image, tmp_path)
    doc = load_manifest(img)
    doc["kernel"] = "99.1.0-future"
    sb = next(sb for sb in doc["superblocks"].values() if sb["fstype"] == "tmpfs" and sb.get("archives"))
    sb["super_opts"] = sb["super_opts"] + ["frobnicate_99"]
    save_manifest(img, doc)
    before = host_mountinfo()   # (before the restore: an argument after it would see its leaks)
    line = _refused(_restore(img, str(tmp_path)), str(tmp_path), before)
    assert "frobnicate_99" in line and "dumped on Linux 99.1.0-future" in line, line


def test_unknown_memfd_seals_are_refused(small_image, tmp_path):
    """Seal bits no kernel defines are refused by the validator, naming them, before anything is built."""
    img = copy_image(small_image, tmp_path)
    doc = load_manifest(img)
    obj = next(o for o in doc["objects"].values() if o["kind"] == "memfd")
    obj["seals"] |= 0x4000
    save_manifest(img, doc)
    before = host_mountinfo()   # (before the restore: an argument after it would see its leaks)
    line = _refused(_restore(img, str(tmp_path)), str(tmp_path), before)
    assert "seals" in line and "0x4000" in line, line


def _moved(img: str, w: str) -> tuple[str, dict]:
    new = os.path.join(w, "elsewhere", "we ird:name")
    os.makedirs(os.path.dirname(new))
    os.rename(img, new)
    return new, {}


def _tar_copy_read_only(img: str, w: str) -> tuple[str, dict]:
    """Copied with tar (another directory, new inodes and times), restored from a read-only bind."""
    new = os.path.join(w, "copied")
    os.mkdir(new)
    subprocess.run(f"tar -C '{img}' -cf - . | tar -C '{new}' -xf -", shell=True, check=True)
    shutil.rmtree(img)
    return new, {"wrap": f"mount --bind -o ro '{new}' '{new}'; cd /; exec \"$@\""}


def _other_owner_relative(img: str, w: str) -> tuple[str, dict]:
    """cp -a to another name, owned by nobody, mode 0700, given as a relative path."""
    new = os.path.join(w, "theirs")
    subprocess.run(["cp", "-a", img, new], check=True)
    shutil.rmtree(img)
    subprocess.run(["chown", "-R", "65534:65534", new], check=True)
    os.chmod(new, 0o700)
    return "theirs", {"cwd": w}


@pytest.mark.parametrize("move", [_moved, _tar_copy_read_only, _other_owner_relative], ids=lambda f: f.__name__[1:])
def test_image_restores_exactly_from_elsewhere(case, move):
    """The image holds no path of its own directory and writes nothing into it: moved, copied, read-only,
    owned by another user or named relatively, it restores the same tree (mounts, sharing, fds, ghost)."""
    pid = case.start(SETUP)
    before = take(pid, CHECK)
    img = case.new_images_dir()
    case.dump(pid, img)
    where, how = move(img, case.workdir)
    r = _restore(where, case.workdir, **how)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(case.workdir, "r.pid")) as f:
        pid = int(f.read())
    case.trees.append(pid)
    assert_same(before, take(pid, CHECK))


def test_seal_this_kernel_lacks_is_named(monkeypatch):
    """A kernel older than the image's seals (F_SEAL_EXEC before 6.3) refuses F_ADD_SEALS with EINVAL:
    the line names the newest seal asked for and the kernel it needs, not a bare "Invalid argument"."""
    import errno
    import fcntl
    import types

    from engine.fds import FdError, memfd

    real = fcntl.fcntl

    def old_kernel(fd, cmd, arg=0):
        if cmd == 1033 and arg & 0x20:   # F_ADD_SEALS with F_SEAL_EXEC, as Linux 6.1 answers
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(memfd.fcntl, "fcntl", old_kernel)
    r = types.SimpleNamespace(where="process 7 fd 9 (memfd)")
    with pytest.raises(FdError) as e:
        memfd._make_memfd(r, {"name": "m", "data": "", "seals": 0x2a})
    assert e.value.errno == errno.EINVAL
    assert str(e.value.strerror).startswith("memfd seals 0x2a refused by this kernel"), e.value
    assert "F_SEAL_EXEC needs Linux >= 6.3" in e.value.strerror


def test_kernel_note_only_for_a_newer_dumping_kernel():
    """The note is added only when the failure looks like a missing facility and the image's kernel is newer."""
    import errno

    from engine import restore

    here = os.uname().release
    lacking = OSError(errno.EINVAL, "mount 5 (/x) on tmpfs: Invalid argument")
    assert "dumped on Linux 99.0.1" in restore._older_kernel_note({"kernel": "99.0.1"}, lacking)
    assert restore._older_kernel_note({"kernel": here}, lacking) == ""
    assert restore._older_kernel_note({"kernel": "3.10.0-1160.el7"}, lacking) == ""
    assert restore._older_kernel_note({}, lacking) == ""
    assert restore._older_kernel_note({"kernel": "99.0.1"}, OSError(errno.ENOENT, "no such file")) == ""


def test_helper_errors_keep_their_errno():
    """An OSError a helper process raises reaches the caller with its errno and without "[Errno N]" in the
    text, so the caller can tell a kernel's EINVAL from a missing file."""
    import errno

    from engine import channel

    def fails(chan):
        raise OSError(errno.EOPNOTSUPP, "mount 3 (/m) on tmpfs: Operation not supported")

    with pytest.raises(OSError) as e:
        list(channel.fork_stream(fails))
    assert e.value.errno == errno.EOPNOTSUPP and e.value.strerror == "mount 3 (/m) on tmpfs: Operation not supported"


def test_helper_errors_with_a_file_name_say_errno_once():
    """An OSError with a file name (FileNotFoundError from os.open) keeps it in the text, with one
    "[Errno N]" in str(): error_reply sent str(e), to which the raised OSError added its own."""
    import errno

    from engine import channel

    def fails(chan):
        os.open("/nonexistent-mntcr-review", os.O_RDONLY)

    with pytest.raises(OSError) as e:
        list(channel.fork_stream(fails))
    assert e.value.errno == errno.ENOENT, e.value
    assert str(e.value) == "[Errno 2] No such file or directory: '/nonexistent-mntcr-review'", str(e.value)
