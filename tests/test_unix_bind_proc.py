"""engine/fds/unix_bind.proc_mount where a stand-in may make no proc (a user namespace that does not
own its pid namespace: `unshare -Urm` without -p): a copy of its root's /proc, and where its root
has none, one line that says what to do instead of the kernel's bare error from a later lookup."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user and mount namespaces)")


def _in_rootless_child(chroot_to: str | None) -> str:
    """In a forked child inside a new user and mount namespace (root mapped to our uid, no pid
    namespace of its own), optionally chrooted: what proc_mount gives ("proc 0x9fa0" or the error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            from engine import kernel
            from engine.fds import unix_bind
            kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS)
            for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            if chroot_to:
                os.chroot(chroot_to)
            try:
                out = f"proc {hex(kernel.fstatfs_type(unix_bind.proc_mount()))}"
            except OSError as e:
                out = f"error {e.errno} {e.strerror}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    return got


def test_a_copy_of_the_roots_proc():
    assert _in_rootless_child(None) == "proc 0x9fa0"


def test_no_proc_in_the_root_says_what_to_do(tmp_path):
    got = _in_rootless_child(str(tmp_path))
    assert got.startswith("error 1 binding a socket name through a directory needs a proc"), got
    assert got.endswith("mount proc on /proc in its mount namespace and dump again"), got
