"""The criu backend against a real criu: a small container tree dumped and restored.

Each tree is built by `spawn_tree` in its own mount and pid namespaces
(``unshare -mpf``): a tmpfs root holding a static busybox, the test's mounts,
pivot_root into it, then busybox sleep as the namespace's pid 1 and session
leader with stdio on a file inside its root. Nothing is mounted on the host.
Tests skip with criu's own reason when criu cannot run here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from engine import mountinfo
from zdtm import criu_env
from zdtm.criu_backend import BackendError, CriuBackend

BUSYBOX = "/bin/busybox"

# Runs as: sh -c PROLOGUE+setup+EPILOGUE sh ROOT, inside unshare -mpf --propagation private.
PROLOGUE = """set -e
R=$1
mount -t tmpfs -o mode=755 ctroot "$R"
mkdir -p "$R/bin" "$R/proc" "$R/old"
cp {busybox} "$R/bin/busybox"
"""
EPILOGUE = """cd "$R"
pivot_root . old
/bin/busybox umount -l /old
/bin/busybox rmdir /old
/bin/busybox mount -t proc proc /proc
: > /log
{before_exec}
exec /bin/busybox setsid /bin/busybox sleep 100000 </log >/log 2>&1
"""


class Tree:
    """A spawned container tree: ``pid`` is its init (host pid), ``proc`` the unshare process."""

    def __init__(self, proc: subprocess.Popen, pid: int, workdir: str):
        self.proc, self.pid, self.workdir = proc, pid, workdir

    def kill(self) -> None:
        """SIGKILL the tree's init (the pid namespace goes with it) and reap unshare."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def spawn_tree(workdir: str, setup: str = "", before_exec: str = "", unshare: str = "-mpf") -> Tree:
    """Build a container tree; ``setup`` runs before pivot_root with $R the new root,
    ``before_exec`` after it (busybox only, e.g. to open fds the sleeper inherits)."""
    root = os.path.join(workdir, "ctroot")
    os.makedirs(root, exist_ok=True)
    script = PROLOGUE.format(busybox=BUSYBOX) + setup + EPILOGUE.format(before_exec=before_exec)
    errpath = os.path.join(workdir, "setup.err")
    with open(errpath, "w") as err:
        proc = subprocess.Popen(["unshare", unshare, "--propagation", "private", "sh", "-c", script, "sh", root],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err, close_fds=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in _children(proc.pid):
            try:
                cmd = open(f"/proc/{child}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"sleep" in cmd and os.getsid(child) == child:
                return Tree(proc, child, workdir)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise RuntimeError(f"tree setup failed: {open(errpath).read().strip()[-500:]}")


def shape(text: str) -> list[tuple]:
    """Mountinfo reduced to what a restore must keep: per mount its mountpoint, fs, source,
    root, and propagation with peer groups renamed in order of first appearance."""
    groups: dict[int, int] = {}

    def g(n):
        return None if n is None else groups.setdefault(n, len(groups) + 1)

    out = []
    for m in sorted(mountinfo.parse(text), key=lambda m: m.mountpoint):
        out.append((m.mountpoint, m.fstype, m.source, m.root, g(m.shared), g(m.master)))
    return out


@pytest.fixture(scope="module")
def backend():
    if os.geteuid() != 0:
        pytest.skip("criu needs root")
    if not os.path.exists(BUSYBOX) or not shutil.which("unshare"):
        pytest.skip(f"needs {BUSYBOX} (busybox-static) and unshare for the test trees")
    b = CriuBackend(os.environ.get("MNTCR_CRIU", "auto"))
    ok, reason = b.available()
    if not ok:
        pytest.skip(reason)
    return b


@pytest.fixture
def trees(tmp_path):
    made: list[Tree] = []
    restored: list[int] = []
    yield made, restored
    for t in made:
        t.kill()
    for pid in restored:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)


SHARED_BIND = """mkdir -p "$R/a" "$R/b" "$R/c"
mount -t tmpfs shsrc "$R/a"
echo hello > "$R/a/file"
mount --make-shared "$R/a"
mount --bind "$R/a" "$R/b"
mount --bind "$R/a" "$R/c"
mount --make-slave "$R/c"
"""


def test_roundtrip_shared_bind(backend, trees, tmp_path):
    """A shared tmpfs, a peer bind of it and a slave bind survive dump + restore with the same shape."""
    made, restored = trees
    tree = spawn_tree(str(tmp_path), SHARED_BIND)
    made.append(tree)
    before = open(f"/proc/{tree.pid}/mountinfo").read()
    images, logs = str(tmp_path / "images"), str(tmp_path / "logs")
    backend.dump(tree.pid, images, {}, logs)
    tree.proc.wait(timeout=10)  # criu killed the dumped tree; unshare reaps it and exits
    root = backend.prepare_root(images, str(tmp_path / "restore-root"))
    pid = backend.restore(images, {}, root, logs)
    restored.append(pid)
    after = open(f"/proc/{pid}/mountinfo").read()
    # criu gives back the root mount as a bind of --root (not the dumped tmpfs): compare the rest.
    assert shape(after)[1:] == shape(before)[1:], f"before:\n{before}\nafter:\n{after}"
    assert shape(after)[0][0] == "/" and mountinfo.parse(after)[0].root == root
    with open(f"/proc/{pid}/root/b/file") as f:
        assert f.read() == "hello\n"  # tmpfs content came back through criu's images
    # the root mount's own files came back through prepare_root's copy
    assert os.path.samefile(f"/proc/{pid}/exe", f"/proc/{pid}/root/bin/busybox")
    assert os.stat(os.path.join(root, "bin/busybox")).st_size == os.stat(BUSYBOX).st_size
    assert open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[1:3] == [b"sleep", b"100000"]
    assert os.path.isfile(os.path.join(logs, "restore.log"))
    for action in ("dump", "restore"):
        t = backend.timings[action]
        assert t["criu"] is not None and 0 < t["criu"] <= t["wall"]


def test_roundtrip_tmpfs_root(backend, trees, tmp_path):
    """Without a root directory, a dumped tmpfs root comes back as a tmpfs with the same source and
    options (made inside criu's namespace), so the whole mount table matches, root included."""
    made, restored = trees
    tree = spawn_tree(str(tmp_path), SHARED_BIND)
    made.append(tree)
    before = open(f"/proc/{tree.pid}/mountinfo").read()
    images, logs = str(tmp_path / "images"), str(tmp_path / "logs")
    backend.dump(tree.pid, images, {}, logs)
    tree.proc.wait(timeout=10)
    host_mounts = open("/proc/self/mountinfo").read()
    pid = backend.restore(images, {}, None, logs)
    restored.append(pid)
    after = open(f"/proc/{pid}/mountinfo").read()
    assert shape(after) == shape(before), f"before:\n{before}\nafter:\n{after}"
    root = next(m for m in mountinfo.parse(after) if m.mountpoint == "/")
    assert (root.fstype, root.source, root.super_opts) == ("tmpfs", "ctroot", ("rw", "mode=755"))
    assert os.path.samefile(f"/proc/{pid}/exe", f"/proc/{pid}/root/bin/busybox")
    assert open("/proc/self/mountinfo").read() == host_mounts  # the tmpfs never reached the host


def test_external_host_usr(backend, trees, tmp_path):
    """The host's /usr bound read-only into the tree, declared external: restored as a bind of the
    host's /usr again (inside criu's userland it is reached under another path, not over its own /usr)."""
    made, restored = trees
    setup = 'mkdir -p "$R/usr"; mount --bind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"\n'
    tree = spawn_tree(str(tmp_path), setup)
    made.append(tree)
    before = open(f"/proc/{tree.pid}/mountinfo").read()
    images, logs = str(tmp_path / "images"), str(tmp_path / "logs")
    backend.dump(tree.pid, images, {"/usr": "usr"}, logs)
    tree.proc.wait(timeout=10)
    root = backend.prepare_root(images, str(tmp_path / "restore-root"))
    pid = backend.restore(images, {"usr": "/usr"}, root, logs)
    restored.append(pid)
    after = open(f"/proc/{pid}/mountinfo").read()
    usr = [m for m in mountinfo.parse(after) if m.mountpoint == "/usr"]
    assert len(usr) == 1 and usr[0].root == "/usr" and "ro" in usr[0].mount_opts, after
    assert shape(after)[1:] == shape(before)[1:]
    assert os.path.samefile(f"/proc/{pid}/root/usr/bin", "/usr/bin")


def test_dump_error_reaches_message(backend, trees, tmp_path):
    """An fd on a mount the tree cannot see: criu's own error line is the BackendError message."""
    made, _ = trees
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    # fd 3 is opened before pivot_root, on a host file the container cannot see afterwards.
    tree = spawn_tree(str(tmp_path), setup=f'exec 3<"{outside}"\n')
    made.append(tree)
    assert os.readlink(f"/proc/{tree.pid}/fd/3") == str(outside)
    logs = str(tmp_path / "logs")
    with pytest.raises(BackendError) as info:
        backend.dump(tree.pid, str(tmp_path / "images"), {}, logs)
    msg = str(info.value)
    assert "Can't lookup mount" in msg
    # the line is criu's, from its log, not ours
    err_line = msg.split(": ", 1)[1].split(" [log:")[0]
    assert err_line in open(os.path.join(logs, "dump.log")).read()


def test_restore_error_reaches_message(backend, tmp_path):
    """Restoring from an empty images dir fails with criu's error line."""
    images = tmp_path / "empty"
    images.mkdir()
    with pytest.raises(BackendError) as info:
        backend.restore(str(images), {}, None, str(tmp_path / "logs"))
    assert "Error" in str(info.value)
    assert str(info.value).startswith("criu restore failed")


def test_check_is_cached(backend):
    """criu check runs once per env; the verdict is criu's own line."""
    env = backend.env()
    first = env.check()
    assert first[0] is True and first[1]
    assert env.check() is first


def test_userland_leaves_no_mounts(backend, tmp_path):
    """Running criu pivoted into its userland leaves no mount and no created mountpoint behind."""
    env = backend.env()
    if env.root is None:
        pytest.skip("host criu: no userland to enter")
    before = open("/proc/self/mountinfo").read()
    bound = tmp_path / "deep" / "dir"
    bound.mkdir(parents=True)
    proc = env.run(["--version"], binds=[str(bound)])
    assert proc.returncode == 0 and "Version" in proc.stdout
    assert open("/proc/self/mountinfo").read() == before
    assert not os.path.exists(os.path.join(env.root, str(tmp_path).lstrip("/")))


def test_first_error_skips_timestamps_and_benign_lines():
    """first_error returns criu's first real error without its timestamp."""
    log = ("(00.020693) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"
           "(00.025278) Error (criu/files-reg.c:1790): Can't lookup mount=24 for fd=10 path=/dev/null\n"
           "(00.032881) Error (criu/cr-dump.c:2111): Dumping FAILED.\n")
    assert criu_env.first_error(log) == "Error (criu/files-reg.c:1790): Can't lookup mount=24 for fd=10 path=/dev/null"
    assert criu_env.first_error("all fine\n") is None


def test_debian_mirror_is_a_url():
    """The mirror comes from the host's apt sources and is an http(s) URL."""
    assert criu_env.debian_mirror().startswith(("http://", "https://"))
