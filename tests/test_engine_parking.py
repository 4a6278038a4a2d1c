"""engine/parking.py: detached mounts let go of in batches hold two fds whatever their number, and
what was opened beneath them stays usable after their batch went (as after a lazy unmount); an fd
that is no detached tree of its own is simply closed."""

from __future__ import annotations

import os

import pytest

from engine import features, forkrun, kernel, parking

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _scenario(stack: bool) -> dict:
    park = parking.Parking(stack)
    base = _open_fds()
    kept = None
    for i in range(parking.BATCH + 10):
        mnt = kernel.scratch_tmpfs()
        if i == 3:
            os.mkdir("d", dir_fd=mnt)
            with open(os.open("d/f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=mnt), "w") as f:
                f.write("kept")
            kept = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=mnt)
        park.drop(mnt)
    held = _open_fds() - base - 1   # less `kept`
    with open(os.open("f", os.O_RDONLY, dir_fd=kept)) as f:
        readable = f.read()   # after its own batch went (BATCH reached): as after a lazy unmount
    plain = os.open("/proc/self/status", os.O_RDONLY)
    park.drop(plain)          # not a mount: closed
    park.flush()
    os.close(kept)
    return {"held": held, "readable": readable, "after": _open_fds() - base, "plain_closed": not os.path.exists(
        f"/proc/self/fd/{plain}")}


@pytest.mark.parametrize("stack", [True, False])
def test_parking_bounds_fds_and_drops(stack):
    if stack and not features.available()["move_mount(to-detached)"].present:
        pytest.skip("kernel cannot attach mounts to detached trees (move_mount(to-detached))")
    got = forkrun.in_mount_ns(_scenario, stack)
    assert got["readable"] == "kept"
    assert got["held"] <= 2, got
    assert got["after"] == 0, got
    assert got["plain_closed"]


def _from_another_namespace(n: int) -> dict:
    """Mounts cloned in a child's own mount namespace (as dump's clone helper sends them), dropped
    here without and with an anchor of our own."""
    import socket
    kernel.mount("tmpfs", "/mnt", "tmpfs", 0)
    for i in range(n):
        os.mkdir(f"/mnt/{i}")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def clones():
        kernel.unshare(kernel.CLONE_NEWNS)
        fds = [kernel.open_tree(kernel.AT_FDCWD, f"/mnt/{i}", kernel.OPEN_TREE_CLONE) for i in range(n)]
        socket.send_fds(theirs, [b"x"], fds)
    out = {}
    for name, anchored in (("plain", False), ("anchored", True)):
        forkrun.run(clones)
        _, fds, _, _ = socket.recv_fds(mine, 1, n)
        park = parking.Parking(True, anchored)
        for fd in fds:
            park.drop(fd)
        out[name] = park._top == fds[-1]   # (the last one stacked on the chain, not closed alone)
        park.flush()
        out[name + "_left"] = [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]
    return out


def test_mounts_of_another_namespace_stack_on_an_anchor():
    """The kernel refuses a detached tree cloned in another mount namespace as move_mount's target
    (EINVAL), so such mounts stack only on an anchor of our own (a new empty mount): without
    one each is closed alone; with one they form a chain; none is left open either way."""
    if not features.available()["move_mount(to-detached)"].present:
        pytest.skip("kernel cannot attach mounts to detached trees (move_mount(to-detached))")
    got = forkrun.in_mount_ns(_from_another_namespace, 5)
    assert got == {"plain": False, "plain_left": [], "anchored": True, "anchored_left": []}, got
