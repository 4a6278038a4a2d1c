"""Private copies of a dumped mount namespace: a forked helper stands at the root of a copy (made
as the namespace's owner), where it may lazily unmount what covers a mount (an overmount, or a
mount over one of its ancestors' paths) without touching the original, and sends back detached
clones of the mounts dump archives or a type module probes (engine/fs/ `probe`, `in_ns_copy`).
"""

from __future__ import annotations

import errno
import os

from engine import channel, kernel, mountinfo, nsinspect, userns_cr
from engine.dumperror import DumpError
from engine.image import rel_to



def enter_copy(ns_fd: int, pids: list[int]) -> int:
    """In a forked child: stand at the root of a private copy of the namespace (made as its owner)
    where what covers a mount may be unmounted without touching the original; returns an fd on /proc."""
    hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    # A copy made from another user namespace than the owner's would lock every mount of it.
    owner = userns_cr.owner_to_join(ns_fd)
    nsinspect.enter_root(ns_fd, pids, hostproc)
    if owner is not None:
        kernel.setns(owner, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    return hostproc


def run_in_copy(ns_fd: int, pids: list[int], fn, args) -> object:
    """In a forked child: fn(*args) at the root of a private copy of the namespace (enter_copy)."""
    os.close(enter_copy(ns_fd, pids))
    return fn(*args)


def clone_mounts(ns_fd: int, pids: list[int], wanted: list[int], orig: list, chan: channel.Channel) -> None:
    """In a forked child: clone each wanted mount (original ids) of the namespace and send the fds.

    `orig` is the namespace's mount list as dump read it (the tree is stopped).
    Works in a private copy of the namespace so it may unmount what covers a
    mount (an overmount, or a mount over one of its ancestors' paths) without
    touching the original: visible mounts are cloned at once, covered ones
    after their covers are gone (see _uncover).
    """
    owner = userns_cr.owner_to_join(ns_fd)   # (not None: mounts of the copy may carry locked ones)
    if owner is not None:
        os.close(owner)
    hostproc = enter_copy(ns_fd, pids)
    with os.fdopen(os.open("thread-self/mountinfo", os.O_RDONLY, dir_fd=hostproc),
                   encoding="utf-8", errors="surrogateescape") as f:
        copy = mountinfo.brief(f.read())  # ids and mount points are all we need of the copy
    o_root, o_children, to_copy = _twins(orig, copy)
    del copy
    want = set(wanted)
    # Clones go out 200 at a time as they are made and are closed here once sent: this helper
    # never holds more (a 90,000-mount tree has tens of thousands to clone).
    pending: list[tuple[int, int]] = []

    def send(final: bool = False) -> None:
        if pending and (final or len(pending) >= 200):
            chan.send([mid for mid, _ in pending], [fd for _, fd in pending])
            for _, fd in pending:
                os.close(fd)
            pending.clear()

    def top_path(mp: str) -> str:
        # "/" names the root we stand on, never what is mounted over it; "/.." does.
        return "/.." if mp == "/" else mp

    def clone(m: mountinfo.Mount) -> None:
        path = top_path(m.mountpoint)
        if kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) != to_copy[m.mnt_id]:
            raise DumpError(errno.EIO, f"mount {m.mnt_id} ({m.mountpoint}) is still covered in the copy")
        try:
            fd = kernel.open_tree(kernel.AT_FDCWD, path, kernel.OPEN_TREE_CLONE | kernel.AT_SYMLINK_NOFOLLOW)
        except OSError as e:
            if e.errno != errno.EINVAL or owner is None:
                raise
            # Locked mounts on it (a namespace a user namespace owns): the kernel clones it only with
            # them; their files lie on other superblocks (tar stays on one), and nothing of the
            # container reaches what they cover.
            fd = kernel.open_tree(kernel.AT_FDCWD, path,
                                  kernel.OPEN_TREE_CLONE | kernel.AT_RECURSIVE | kernel.AT_SYMLINK_NOFOLLOW)
        pending.append((m.mnt_id, fd))
        send()

    # Fast path: mounts whose path already leads to them.
    orig_by_id = {m.mnt_id: m for m in orig}
    slow = []
    for mid in sorted(want):
        m = orig_by_id[mid]
        try:
            if kernel.statx_mnt_id(top_path(m.mountpoint), flags=kernel.AT_SYMLINK_NOFOLLOW) == to_copy[mid]:
                clone(m)
                continue
        except OSError:
            pass
        slow.append(mid)
    if slow:
        _uncover(slow, orig_by_id, o_children, o_root, to_copy, clone, top_path)
    send(final=True)
    chan.send("done")


def _twins(orig: list, copy: list) -> tuple:
    """(root, {parent id: children}, {original id: copy id}) of the namespace's mounts `orig` and the
    copy's (`copy`, mountinfo.brief). Twins are matched by (parent, mount point): unique since the
    kernel tucks a mount propagated onto an occupied mount point under the existing one."""
    o_ids = {m.mnt_id for m in orig}
    c_ids = {mid for mid, *_ in copy}
    o_root = next(m for m in orig if m.parent_id not in o_ids)
    c_root = next(mid for mid, parent, *_ in copy if parent not in c_ids)
    c_children: dict[tuple[int, str], int] = {(parent, mp): mid for mid, parent, _, mp, _ in copy}
    o_children: dict[int, list[mountinfo.Mount]] = {}
    for m in orig:
        if m.mnt_id != o_root.mnt_id:
            o_children.setdefault(m.parent_id, []).append(m)
    to_copy = {o_root.mnt_id: c_root}
    stack = [o_root]
    while stack:
        m = stack.pop()
        for c in o_children.get(m.mnt_id, ()):
            cid = c_children.get((to_copy[m.mnt_id], c.mountpoint))
            if cid is None:
                raise DumpError(errno.EIO, f"mount {c.mnt_id} ({c.mountpoint}) has no twin in the namespace copy")
            to_copy[c.mnt_id] = cid
            stack.append(c)
    return o_root, o_children, to_copy


def clone_one(pids: list[int], mounts: list, mnt_id: int) -> int | None:
    """A detached clone of mount `mnt_id` of the mount namespace `pids` live in (`mounts`: its
    mount list), even if covered (clone_mounts uncovers it); None when it cannot be made."""
    nsfd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY)
    try:
        for _, fds in channel.fork_stream(clone_mounts, nsfd, pids, [mnt_id], mounts):
            for fd in fds[1:]:
                os.close(fd)
            return fds[0] if fds else None
    except OSError:
        return None
    finally:
        os.close(nsfd)
    return None


def _uncover(targets, by_id, children, root, to_copy, clone, top_path) -> None:
    """Clone covered targets by lazily unmounting what covers them (in a private namespace copy).

    A cover is a sibling mounted over a directory above a target's mount
    point, or a mount over its (or an ancestor's) root. One umount takes a
    cover's whole subtree, so only covers holding no pending target are
    unmounted; repeat until every target is visible.
    """
    remaining = set(targets)
    # Children by (parent, mount point): a cover is found by looking up the few
    # directories above a target, never by scanning all siblings (a parent may
    # have thousands of children).
    at: dict[tuple[int, str], list[int]] = {}
    for parent, cs in children.items():
        for c in cs:
            at.setdefault((parent, c.mountpoint), []).append(c.mnt_id)

    def above(n, p) -> list[str]:
        """Mount points of p's directories that hide n's: p's own root and each proper ancestor of n's."""
        r = rel_to(n.mountpoint, p.mountpoint)
        if not r:
            return []
        parts = r.split("/")
        base = "" if p.mountpoint == "/" else p.mountpoint
        return [p.mountpoint] + [base + "/" + "/".join(parts[:i]) for i in range(1, len(parts))]

    def chain(mid):
        out = []
        while mid in by_id and by_id[mid] is not root:
            out.append(mid)
            mid = by_id[mid].parent_id
        return out + [root.mnt_id]

    while remaining:
        for mid in sorted(remaining):
            path = top_path(by_id[mid].mountpoint)
            try:
                visible = kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) == to_copy[mid]
            except OSError:
                visible = False
            if visible:
                clone(by_id[mid])
                remaining.discard(mid)
        if not remaining:
            return
        inside = set()
        for mid in remaining:
            inside.update(chain(mid))
        covers = set()
        for mid in remaining:
            ids = chain(mid)
            for node, parent in zip(ids, ids[1:] + [None]):
                n = by_id[node]
                for c in at.get((node, n.mountpoint), ()):
                    if c not in inside:
                        covers.add(c)   # a mount over this node's root
                if parent is None:
                    continue
                for mp in above(n, by_id[parent]):
                    for c in at.get((parent, mp), ()):
                        if c != node and c not in inside:
                            covers.add(c)   # a sibling over a directory above it
        # A cover may itself be overmounted (a stack at its mount point, e.g. propagated there):
        # its path leads to the top of that stack, which goes first.
        stack = list(covers)
        while stack:
            c = stack.pop()
            for top in at.get((c, by_id[c].mountpoint), ()):
                if top not in covers and top not in inside:
                    covers.add(top)
                    stack.append(top)
        # Outer covers first: what an outer cover hides is reachable only once it is gone.
        progress, locked = False, None
        for c in sorted(covers, key=lambda x: (len(by_id[x].mountpoint), x)):
            path = top_path(by_id[c].mountpoint)
            try:
                # Only if its path leads to it: else it is gone already (unmounting the path
                # would take whatever is there now, maybe a target) or still out of reach.
                if kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) != to_copy[c]:
                    continue
                kernel.umount2(path, kernel.MNT_DETACH)
                progress = True
            except OSError as e:
                if e.errno == errno.EINVAL:
                    locked = c
        if not progress:
            mid = min(remaining)
            if locked is not None:
                # (MNT_LOCKED: the kernel refuses to unmount it even for the host's root)
                raise DumpError(errno.EOPNOTSUPP, f"mount {mid} ({by_id[mid].mountpoint}) is covered by mount {locked} "
                                                  f"({by_id[locked].mountpoint}), locked over it (a user namespace's "
                                                  "mount namespace copied from its parent's keeps such stacks locked "
                                                  "together): what it holds cannot be read; dump a tree whose user "
                                                  "namespace mounts its own root (pivot_root), as container runtimes do")
            raise DumpError(errno.EIO, f"mount {mid} ({by_id[mid].mountpoint}) stays covered in the copy")
