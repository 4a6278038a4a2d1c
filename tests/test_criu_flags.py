"""Flags the criu backend derives from the dumped tree: --enable-external-masters.

A mount is "externally enslaved" when its master peer group has no shared
member in any mount namespace of the dumped tree (a container's rslave bind of
a host mount). The backend finds that from the live tree's mountinfo, passes
the flag to dump and restore, and records the choice in its images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from engine import forkrun, kernel, mountinfo
from test_criu_backend import BUSYBOX, EPILOGUE, PROLOGUE, backend  # noqa: F401 - fixture
from zdtm.criu_backend import CriuBackend, unreachable_masters

HOST_LIKE = """\
20 1 0:20 / / rw - tmpfs ct rw
21 20 0:21 / /a rw shared:5 - tmpfs a rw
22 20 0:21 / /b rw master:5 - tmpfs a rw
23 20 0:22 / /ext rw master:9 - tmpfs e rw
24 20 0:23 / /both rw shared:11 master:9 - tmpfs e rw
"""


def test_unreachable_masters_names_only_masters_outside_the_tree():
    """/b's master (5) is shared in the tree; /ext's and /both's (9) are not."""
    found = unreachable_masters([HOST_LIKE])
    assert found == ["ns 0: /ext (master:9)", "ns 0: /both (master:9)"]


def test_unreachable_masters_looks_across_namespaces():
    """A master shared in another mount namespace of the tree is reachable."""
    other = "30 1 0:20 / / rw - tmpfs ct rw\n31 30 0:22 / /src rw shared:9 - tmpfs e rw\n"
    assert unreachable_masters([HOST_LIKE, other]) == []
    assert unreachable_masters(["20 1 0:20 / / rw - tmpfs ct rw\n"]) == []


def _external_slave_tree(workdir: str, crit: CriuBackend) -> dict:
    """In a private mount ns (the "host" here): a shared tmpfs W/ext; a container tree whose /ext
    is a slave bind of it; dump + restore with ext external. Returns what the test checks."""
    ext, ctroot = os.path.join(workdir, "ext"), os.path.join(workdir, "ctroot")
    os.makedirs(ext)
    os.makedirs(ctroot)
    kernel.mount("extsrc", ext, "tmpfs", 0, None)
    with open(os.path.join(ext, "f"), "w") as f:
        f.write("hi\n")
    kernel.mount(None, ext, None, kernel.MS_SHARED)
    script = (PROLOGUE.format(busybox=BUSYBOX)
              + f'mkdir -p "$R/ext"\nmount --bind "{ext}" "$R/ext"\nmount --make-slave "$R/ext"\n'
              + EPILOGUE.format(before_exec=""))
    # --propagation unchanged: the container's copy of W/ext stays a peer of ours, so the bind
    # made from it is a slave of our group, which the container cannot see after pivot_root.
    proc = subprocess.Popen(["unshare", "-mpf", "--propagation", "unchanged", "sh", "-c", script, "sh", ctroot],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pid = None
    deadline = time.monotonic() + 60
    while pid is None and time.monotonic() < deadline and proc.poll() is None:
        kids = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        for k in kids:
            try:
                if b"sleep" in open(f"/proc/{k}/cmdline", "rb").read() and os.getsid(int(k)) == int(k):
                    pid = int(k)
            except OSError:
                pass
        time.sleep(0.02)
    if pid is None:
        proc.kill()
        raise RuntimeError(f"tree setup failed: {proc.stderr.read().decode(errors='replace')[-300:]}")
    ours = next(m for m in mountinfo.parse(open("/proc/self/mountinfo").read()) if m.mountpoint == ext)
    before = open(f"/proc/{pid}/mountinfo").read()
    out = {"ours_shared": ours.shared, "before": before}
    images, logs = os.path.join(workdir, "images"), os.path.join(workdir, "logs")
    try:
        crit.dump(pid, images, {"/ext": "ext"}, logs)
        proc.wait(timeout=10)
        rpid = crit.restore(images, {"ext": ext}, None, logs)
    except Exception as e:  # noqa: BLE001 - reported to the test as text
        os.kill(pid, signal.SIGKILL) if os.path.exists(f"/proc/{pid}") else None
        proc.wait(timeout=10)
        out["error"] = str(e)
        return out
    try:
        out["after"] = open(f"/proc/{rpid}/mountinfo").read()
        out["content"] = open(f"/proc/{rpid}/root/ext/f").read()
    finally:
        os.kill(rpid, signal.SIGKILL)
    out["args"] = crit.last_args
    out["meta"] = crit.read_meta(images)
    return out


def test_external_slave_gets_the_flag_and_keeps_its_master(backend, tmp_path):  # noqa: F811
    """The container's /ext is a slave of a group outside the tree: the backend passes
    --enable-external-masters to dump and restore, and the restored /ext is a slave of that
    same group again (master id = our shared id), with its content."""
    res = forkrun.in_mount_ns(_external_slave_tree, str(tmp_path), backend)
    assert "error" not in res, res.get("error")
    ext_before = next(m for m in mountinfo.parse(res["before"]) if m.mountpoint == "/ext")
    assert ext_before.master == res["ours_shared"] and ext_before.shared is None
    assert res["meta"]["unreachable_masters"] == [f"ns 0: /ext (master:{res['ours_shared']})"]
    assert "--enable-external-masters" in res["args"]["dump"]
    assert "--enable-external-masters" in res["args"]["restore"]
    ext_after = next(m for m in mountinfo.parse(res["after"]) if m.mountpoint == "/ext")
    assert ext_after.master == res["ours_shared"] and ext_after.shared is None, res["after"]
    assert res["content"] == "hi\n"


def test_no_flag_without_external_slavery(backend, tmp_path):  # noqa: F811
    """A tree whose only slave has its master inside: no flag at dump or restore."""
    from test_criu_backend import SHARED_BIND, spawn_tree
    tree = spawn_tree(str(tmp_path), SHARED_BIND)
    try:
        images, logs = str(tmp_path / "images"), str(tmp_path / "logs")
        backend.dump(tree.pid, images, {}, logs)
        tree.proc.wait(timeout=10)
        assert backend.read_meta(images)["unreachable_masters"] == []
        assert "--enable-external-masters" not in backend.last_args["dump"]
        root = backend.prepare_root(images, str(tmp_path / "root"))
        pid = backend.restore(images, {}, root, logs)
        os.kill(pid, signal.SIGKILL)
        assert "--enable-external-masters" not in backend.last_args["restore"]
    finally:
        tree.kill()
