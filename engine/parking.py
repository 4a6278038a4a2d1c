"""Dropping detached mounts in batches.

Closing the last fd of a detached mount (fsmount, open_tree(OPEN_TREE_CLONE))
unmounts it, and the kernel then waits for an RCU grace period, once for
each such close (~0.15-0.2 ms here: ten times an open_tree; 3,600 superblocks
of a 10,000-mount restore waited about 0.5 s for it). Where the kernel
attaches a mount to a detached tree (feature "move_mount(to-detached)",
6.15+), a dropped mount is instead stacked on the one dropped before it, and
a whole chain goes at once when its first mount's fd is closed: one wait for
BATCH mounts. Two fds are held per chain, whatever its length.

Only the root of a detached tree of its own may be dropped here, and only once
nothing will clone from it any more: a chain's mounts are unmounted together,
later. Fds opened beneath a dropped mount keep working (as after a lazy
unmount).
"""

from __future__ import annotations

import os

from engine import kernel

BATCH = 256

_ONTO = kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH


class Parking:
    """Where a restore (or a dump) drops its detached mounts; `stack`: the kernel can stack them
    (else each is closed at once, as a plain close would)."""

    def __init__(self, stack: bool, anchored: bool = False):
        """`anchored`: each chain starts on a new empty detached mount of the caller's own (an
        anchor): the kernel takes a detached tree as move_mount's target only from the mount
        namespace it was made in, so mounts cloned in another one (dump's clone helper's namespace
        copy) are stacked on such a mount, never on one another's roots."""
        self.stack = stack
        self.anchored = anchored
        self._first: int | None = None  # the chain's root: closing it unmounts the chain
        self._top: int | None = None    # the last mount stacked, where the next goes
        self._count = 0

    def drop(self, fd: int) -> None:
        """Let go of `fd`, the root of a detached mount tree that nothing clones from any more."""
        if not self.stack:
            os.close(fd)
            return
        if self._first is None:
            if not self.anchored:
                self._first, self._count = fd, 1
                return
            try:
                self._first, self._count = kernel.scratch_tmpfs(), 1
            except OSError:
                os.close(fd)
                return
        try:
            kernel.move_mount(fd, "", self._first if self._top is None else self._top, "", _ONTO)
        except OSError:
            # Not stackable (a tree another user namespace owns): closing it drops it all the same.
            os.close(fd)
            return
        if self._top is not None:
            os.close(self._top)  # no longer a tree's root: a plain close
        self._top = fd
        self._count += 1
        if self._count >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Unmount what was dropped so far (one grace period)."""
        for fd in (self._top, self._first):
            if fd is not None:
                os.close(fd)
        self._first = self._top = None
        self._count = 0
