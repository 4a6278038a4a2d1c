"""nsfs: a namespace bound on a file (`ip netns add NAME`, dockerd's exec-root/netns/ID, CNI's
/var/run/netns, `unshare --net=PATH`): mountinfo shows the type nsfs and a root like net:[N].

No type is registered: mntcr does not make such a mount again yet (restore would open the restored
namespace and open_tree + move_mount it onto the file). This module only says why dump refuses it,
and what to do, in place of the generic "declare it --external" advice, which binds a host path
where the tree needs its own namespace (`refuse`, asked by fs.refusal before the stop).
"""

from __future__ import annotations

import os
import re

from engine import kernel

_ROOT = re.compile(r"^([a-z_]+):\[([0-9]+)\]\Z")
# Where `ip netns add` binds a network namespace (iproute2's NETNS_RUN_DIR, /var/run a link to /run).
_NETNS_DIRS = ("/run/netns", "/var/run/netns")


def refuse(mount, pids) -> str | None:
    """The one-line refusal of `mount` (engine.mountinfo.Mount of type nsfs) in a tree of `pids`:
    the tree's own namespace (some process of the tree is in it) or another one (the host's, or one
    only the bind keeps alive); None for a root that names no namespace (the generic line then)."""
    m = _ROOT.match(mount.root)
    if m is None:
        return None
    kind, ino = m.group(1), int(m.group(2))
    where = f"mount {mount.mnt_id} ({mount.mountpoint})"
    ours = any(kernel.ns_ino(pid, kind) == ino for pid in pids)
    undo = _undo(kind, mount.mountpoint)
    if ours:
        return (f"{where}: the tree's {kind} namespace is bound on it (nsfs, as `ip netns add` makes): mntcr "
                f"does not restore namespace binds yet; unmount it before dump ({undo})")
    return (f"{where}: a {kind} namespace no process of the tree is in is bound on it (nsfs: the host's, or one "
            f"only the bind keeps alive, as a bare `ip netns add` makes): mntcr cannot make it again; unmount it "
            f"before dump ({undo})")


def _undo(kind: str, mountpoint: str) -> str:
    """How the user removes the bind, in the tree's mount namespace."""
    parent, name = os.path.split(mountpoint)
    if kind == "net" and parent in _NETNS_DIRS:
        return f"ip netns delete {name}, in the tree's mount namespace"
    return f"umount {mountpoint}, in the tree's mount namespace"
