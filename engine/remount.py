"""Per-mount flags through mount(2): the path without mount_setattr (strategy flags=remount, < 5.12).

mount(2) with MS_REMOUNT|MS_BIND changes one attached mount of the caller's mount namespace (never
a detached one, never recursively), and it sets the flags all at once: a flag not given is
cleared. So callers give the whole set of per-mount options the mount is to have, as mountinfo
spells them. The atime mode is always given explicitly: a remount that names none keeps the old
one, but one naming nodiratime alone falls back to relatime, and under MNT_LOCK_ATIME any change of
it is refused (as clearing a locked ro, nosuid, nodev or noexec is: EPERM, which the lock probe of
engine/mntlocks.py relies on).
"""

from __future__ import annotations

import os

from engine import kernel

_MS = {"ro": kernel.MS_RDONLY, "nosuid": kernel.MS_NOSUID, "nodev": kernel.MS_NODEV,
       "noexec": kernel.MS_NOEXEC, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
       "nosymfollow": 256}
_MS_STRICTATIME = 1 << 24
# MOUNT_ATTR_* bits of the flags a lock can hold, by mountinfo name (userns C/R speaks both).
ATTR = {"ro": kernel.MOUNT_ATTR_RDONLY, "nosuid": kernel.MOUNT_ATTR_NOSUID,
        "nodev": kernel.MOUNT_ATTR_NODEV, "noexec": kernel.MOUNT_ATTR_NOEXEC}


def flags_of(opts) -> int:
    """The mount(2) flags that give a mount exactly the per-mount options `opts` (mountinfo names)."""
    opts = set(opts)
    flags = kernel.MS_REMOUNT | kernel.MS_BIND | sum(f for name, f in _MS.items() if name in opts)
    if not opts & {"noatime", "relatime"}:
        flags |= _MS_STRICTATIME
    return flags


def at_path(path: str, opts) -> None:
    """Give the attached mount whose root is `path` exactly the per-mount options `opts`."""
    kernel.mount(None, path, None, flags_of(opts))


def at_fd(fd: int, opts, proc_fd: int) -> None:
    """Give the attached mount `fd` (an fd on its root) exactly the options `opts`. `proc_fd`: a
    /proc of the caller's pid namespace, whose self/fd/N names the mount itself (also a file bind)."""
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(proc_fd)
        at_path(f"self/fd/{fd}", opts)
    finally:
        os.fchdir(here)
        os.close(here)


def without(opts, attr_bits: int) -> set[str]:
    """`opts` less the lockable flags whose MOUNT_ATTR_* bits are in `attr_bits`."""
    return {o for o in opts if not ATTR.get(o, 0) & attr_bits}


def lockable_off(opts) -> set[str]:
    """`opts` without ro, nosuid, nodev and noexec (the atime mode and the rest kept)."""
    return {o for o in opts if o not in ATTR}


def legacy() -> bool:
    """Whether this kernel's strategy changes flags with mount(2) (engine/strategy.py, axis flags)."""
    from engine import strategy
    return strategy.current().flags == "remount"
