"""An executable or mapped file on a mount of a mount namespace no dumped process is in any more
(engine/nsinspect.py `_visible`, engine/placement.py): `unshare -m unshare -m -p -f ...` (and
lxc-usernsexec, which unshares and execs its command) leaves the waiting second unshare running a
file of the first namespace, gone since. The kernel names such a file relative to its mount's root
(/bin/unshare of /usr); dump refused it ('not beneath its mount's /usr'). It is placed on the mount
its path reaches in the process's own namespace, at the real path it has there, and restored so.
An executable on a mount of another namespace that IS dumped (a program that unshared without exec,
CRIU's mntns_open) keeps that mount."""

from __future__ import annotations

import hashlib
import os

import pytest

from enginecase import case, load_manifest  # noqa: F401  (fixture)

SETUP = """
unshare -m --propagation private unshare -m -p -f --mount-proc --propagation private \\
    /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
python3 -c '
import ctypes, os, signal
assert ctypes.CDLL(None).unshare(0x20000) == 0   # CLONE_NEWNS, no exec: python3 stays of the first namespace
open("/run/unshared", "w").close()
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
while True:
    signal.pause()
' </dev/null >/dev/null 2>&1 &
wait_for /run/unshared
hold
"""


def _exe_mounts(doc: dict) -> dict[str, tuple[str, str, str]]:
    """{comm or 'python3': (its namespace, namespace of its executable's mount, that mount's mountpoint
    + the executable's path)} of the image's processes (the holder shell's sleep as 'pid1')."""
    where = {m["id"]: (ns, m["mountpoint"]) for ns, d in doc["mntns"].items() for m in d["mounts"]}
    out = {}
    for p in doc["processes"]:
        ns, mountpoint = where[p["exe"]["mnt"]]
        name = p["comm"]
        if name == "mntcr-hold":
            name = "python3" if "python3" in p["exe"]["path"] else "sleep-" + p["ns"]["mnt"]
        out[name] = (p["ns"]["mnt"], ns, mountpoint + "|" + p["exe"]["path"])
    return out


def test_executable_of_a_gone_namespace_and_of_a_dumped_one(case):
    pid = case.start(SETUP, daemons=("unshare",))
    img = case.new_images_dir()
    case.dump(pid, img)
    doc = load_manifest(img)
    exes = _exe_mounts(doc)
    # the waiting unshare: its own namespace's /usr, the file's real path there
    own, mount_ns, path = exes["unshare"]
    assert (mount_ns, path) == (own, "/usr|/bin/unshare"), exes
    # python3 unshared without exec: its executable stays on the first namespace's (the holder's) /usr
    holder_ns = next(p["ns"]["mnt"] for p in doc["processes"] if p["pid"] == pid)
    own, mount_ns, path = exes["python3"]
    assert own != holder_ns and mount_ns == holder_ns and path.startswith("/usr|/bin/python3"), exes
    restored = case.restore(img)
    from zdtm.snapshot import tree_pids
    names = {}
    for p in tree_pids(restored):
        with open(f"/proc/{p}/comm") as f:
            names.setdefault(f.read().strip(), []).append(os.readlink(f"/proc/{p}/exe"))
    assert names.get("unshare") == ["/usr/bin/unshare"], names


LAZY_EXE = """
mkdir -p /run/lazy && mount -t tmpfs lazy /run/lazy && cp /usr/bin/sleep /run/lazy/mntcr-hold
echo data > /run/lazy/data
(exec 7<{held}; exec /run/lazy/mntcr-hold 100000 </dev/null >/dev/null 2>&1) &
wait_for /proc/$!/exe
n=0; until [ "$(readlink /proc/$!/exe)" = /run/lazy/mntcr-hold ]; do n=$((n + 1)); [ $n -lt 600 ]; sleep 0.05; done
umount -l /run/lazy
hold
"""


def _lazy_exes(root: int) -> list[tuple[str, str]]:
    """(name, sha256 of the contents) of the executables of the tree at `root` that lie on no mount of the tree's
    namespaces but a detached one (named relative to its root: no /usr, no interpreter)."""
    from zdtm.snapshot import tree_pids
    out = []
    for p in tree_pids(root):
        name = os.readlink(f"/proc/{p}/exe")
        if not name.startswith(("/usr/", "/bin/")):
            with open(f"/proc/{p}/exe", "rb") as f:
                out.append((name, hashlib.sha256(f.read()).hexdigest()))
    return out


@pytest.mark.parametrize("held", ["/dev/null", "/run/lazy/data"], ids=["exe_only", "fd_too"])
def test_executable_on_a_lazily_unmounted_mount(case, held):
    """A program run from a mount lazily unmounted since (an updater's scratch, a FUSE image
    unmounted while in use): its executable comes back on the restored detached mount, the same
    file; the stand-in kept its own interpreter before. `fd_too`: it holds a file there too, and the
    invisible tmpfs's archive, made for the fds, has the program as well (restore failed: 'mapped
    file /mntcr-hold ... No such file or directory')."""
    pid = case.start(LAZY_EXE.format(held=held))
    before = _lazy_exes(pid)
    with open("/usr/bin/sleep", "rb") as f:
        assert before == [("/mntcr-hold", hashlib.sha256(f.read()).hexdigest())]
    restored = case.cr(pid)
    assert _lazy_exes(restored) == before
