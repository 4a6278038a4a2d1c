"""engine/kernel.py's hot wrappers reuse their argument structs (openat2's open_how, mount_setattr's
mount_attr), one per value: each call must still pass its own flags, never a struct made for
another call's. Runs in a forked child in its own mount namespace (nothing mounted on the host)."""

from __future__ import annotations

import os

import pytest

from engine import forkrun, kernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a mount namespace, fsmount)")

_BENEATH = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_MAGICLINKS


def _openat2_by_resolve() -> list[str]:
    """Open a symlink to a directory with and without RESOLVE_NO_SYMLINKS, alternating."""
    mnt = kernel.scratch_tmpfs()
    try:
        os.mkdir("d", dir_fd=mnt)
        os.symlink("d", "link", dir_fd=mnt)
        seen = []
        for resolve in (_BENEATH, _BENEATH | kernel.RESOLVE_NO_SYMLINKS) * 2:
            try:
                os.close(kernel.openat2(mnt, "link", os.O_PATH | os.O_DIRECTORY, resolve))
                seen.append("opened")
            except OSError as e:
                seen.append(os.strerror(e.errno))
        return seen
    finally:
        os.close(mnt)


def _setattr_alternating() -> list[bool]:
    """Make a detached tmpfs read-only, then writable, then read-only again: whether each write works."""
    mnt = kernel.scratch_tmpfs()
    try:
        seen = []
        for attr_set, attr_clr in ((kernel.MOUNT_ATTR_RDONLY, 0), (0, kernel.MOUNT_ATTR_RDONLY),
                                   (kernel.MOUNT_ATTR_RDONLY, 0)):
            kernel.mount_setattr(mnt, "", kernel.AT_EMPTY_PATH, attr_set=attr_set, attr_clr=attr_clr)
            try:
                os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=mnt))
                seen.append(True)
            except OSError:
                seen.append(False)
        return seen
    finally:
        os.close(mnt)


def test_openat2_passes_each_calls_resolve_flags():
    assert forkrun.in_mount_ns(_openat2_by_resolve) == ["opened", os.strerror(40)] * 2  # ELOOP


def test_mount_setattr_passes_each_calls_attributes():
    assert forkrun.in_mount_ns(_setattr_alternating) == [False, True, False]


def test_flags_beyond_a_c_int_still_pass_unsigned():
    # (no syscall takes such a flag today; the bits must arrive all the same, not overflow)
    assert kernel._uint(0x80000001).value == 0x80000001
    assert kernel._uint(0x1000) == 0x1000
