"""Which mounts of a mount namespace are locked, and which of their flags are.

A mount namespace copied into a less privileged user namespace gets its
mounts locked (MNT_LOCKED: they cannot be unmounted from inside, so nothing
beneath them is revealed) and their flags locked (MNT_LOCK_READONLY, _NODEV,
_NOSUID, _NOEXEC when set, and MNT_LOCK_ATIME: they cannot be cleared or
changed). mountinfo shows none of it, so it is probed: a forked child joins
the namespace's owning user namespace and the namespace itself, takes the
target process's root, and unshares a private copy. A copy made in the same
user namespace keeps every lock and adds none, so the child may try, on the
copy only, what a lock refuses: clearing a flag (EPERM when locked), changing
atime (EPERM when locked), unmounting (EINVAL when locked). Nothing is ever
done to the real namespace; the copy dies with the child.

Mounts the probe cannot reach by path (beneath a locked overmount, or below a
mount hidden that way) are reported as ``hidden``: the container cannot reach
them either.
"""

from __future__ import annotations

import errno
import os

from engine import forkrun, kernel, mountinfo, remount

_FLAGS = (("ro", kernel.MOUNT_ATTR_RDONLY), ("nosuid", kernel.MOUNT_ATTR_NOSUID),
          ("nodev", kernel.MOUNT_ATTR_NODEV), ("noexec", kernel.MOUNT_ATTR_NOEXEC))
_UMOUNT_NOFOLLOW = 8


def _flag_locks(path: str, m: mountinfo.Mount, legacy: bool = False) -> list[str]:
    """The locked flags of the (copied) mount at `path`: each set flag is cleared, and atime
    changed, one at a time; EPERM means the flag is locked. With `legacy` (no mount_setattr,
    strategy flags=remount) through mount(2) remounts, which the same locks refuse the same way."""
    if legacy:
        return _flag_locks_remount(path, m)
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    out = []
    try:
        for name, bit in _FLAGS:
            if name in m.mount_opts:
                if _refused(fd, attr_clr=bit):
                    out.append(name)
        # Any change of the atime mode is refused under MNT_LOCK_ATIME.
        other = kernel.MOUNT_ATTR_NOATIME if "noatime" not in m.mount_opts else kernel.MOUNT_ATTR_STRICTATIME
        if _refused(fd, attr_set=other, attr_clr=kernel.MOUNT_ATTR__ATIME):
            out.append("atime")
    finally:
        os.close(fd)
    return out


def _flag_locks_remount(path: str, m: mountinfo.Mount) -> list[str]:
    """_flag_locks with mount(2): a remount sets every flag at once, so each try gives the mount's
    options less the one flag (a flag cleared by an earlier try is set again, which no lock
    refuses), then its options with another atime mode."""
    opts = set(m.mount_opts)
    out = [name for name, _ in _FLAGS if name in opts and _remount_refused(path, opts - {name})]
    atime = opts - {"noatime", "relatime", "strictatime"}
    if _remount_refused(path, atime | ({"noatime"} if "noatime" not in opts else set())):
        out.append("atime")
    return out


def _remount_refused(path: str, opts: set[str]) -> bool:
    try:
        remount.at_path(path, opts)
    except OSError as e:
        if e.errno == errno.EPERM:
            return True
        raise
    return False


def _refused(fd: int, attr_set: int = 0, attr_clr: int = 0) -> bool:
    try:
        kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_set=attr_set, attr_clr=attr_clr)
    except OSError as e:
        if e.errno == errno.EPERM:
            return True
        if e.errno == errno.ENOSYS:
            return False  # no mount_setattr (< 5.12): flag locks cannot be told; mount locks still can
        raise
    return False


def _resolve(path: str, tree) -> int | None:
    """Which mount of `tree` (the copy, as the child sees it) the path walk of `path` ends on."""
    m = tree.walk(path)
    return None if m is None else m.mnt_id


def _umount_probe(path: str) -> bool:
    """Whether the (copied) mount at `path` is locked: a lazy unmount of it is refused with EINVAL
    exactly then (and detaches it, with what is below it, when it is not)."""
    try:
        kernel.umount2(path, kernel.MNT_DETACH | _UMOUNT_NOFOLLOW)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return True
    return False


def _state(locked: bool, flags: list[str]) -> str:
    return ("locked" if locked else "unlocked") + (f" flags={','.join(flags)}" if flags else "")


def _probe_in_copy(proc_fd: int, full: bool, legacy: bool = False) -> list[tuple[str, str]]:
    """In the private copy: ("canonical", text) then (label, state) per mount. Without `full`,
    unmounting is tried only when some reachable mount has a locked flag (every lock comes with a
    locked atime: the kernel sets both when it locks a tree)."""
    from engine import topology
    with os.fdopen(os.open(f"{os.getpid()}/mountinfo", os.O_RDONLY, dir_fd=proc_fd)) as f:
        mounts = _bindable(mountinfo.parse(f.read()))
    canon = topology.canonical(mounts)
    out = [("canonical", canon.text)]
    # Unmounts in the copy must not propagate to the real namespace's peers.
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    tree = canon.tree
    root_id = tree.roots[0].mnt_id if tree.roots else None
    flags = {}
    for m in tree.mounts:
        if m.mnt_id == root_id:
            flags[m.mnt_id] = _flag_locks("/", m, legacy)
        elif _resolve(m.mountpoint, tree) == m.mnt_id:
            flags[m.mnt_id] = _flag_locks(m.mountpoint, m, legacy)
    if not full and not any(flags.values()):
        return out + [(canon.label(m.mnt_id), _state(False, flags[m.mnt_id]) if m.mnt_id in flags else "hidden")
                      for m in mounts]
    alive = {m.mnt_id for m in mounts}
    state: dict[int, str] = {}
    live = tree
    changed = True
    while changed:
        changed = False
        for m in sorted(live.mounts, key=lambda x: -live.depth[x.mnt_id]):
            if m.mnt_id in state or m.mnt_id == root_id or _resolve(m.mountpoint, live) != m.mnt_id:
                continue
            if any(c.mnt_id not in state and _resolve(c.mountpoint, live) == c.mnt_id
                   for c in live.children[m.mnt_id]):
                continue  # its reachable children first: detaching it would take them unprobed
            if m.mnt_id not in flags:  # reachable only now that a cover is gone
                flags[m.mnt_id] = _flag_locks(m.mountpoint, m, legacy)
            locked = _umount_probe(m.mountpoint)
            state[m.mnt_id] = _state(locked, flags[m.mnt_id])
            changed = True
            if not locked:
                gone = [m.mnt_id]
                while gone:
                    x = gone.pop()
                    alive.discard(x)
                    gone.extend(c.mnt_id for c in live.children.get(x, ()))
                live = topology.Tree([x for x in mounts if x.mnt_id in alive])
                break  # what was beneath may be reachable now
    if root_id is not None:
        # The root last: only a lazy unmount may take the caller's root, and it takes everything.
        state[root_id] = _state(_umount_probe("/"), flags[root_id])
    return out + [(canon.label(m.mnt_id), state.get(m.mnt_id, "hidden")) for m in mounts]


def _bindable(mounts) -> list:
    """`mounts` with no mount unbindable: the copy a namespace unshare makes drops MNT_UNBINDABLE
    (Linux 6.18 at least: its unbindable mounts come out private), so the probe's copy and the
    namespace it copied are compared, and their mounts labelled, without it."""
    return [m.with_(unbindable=False) if m.unbindable else m for m in mounts]


def _copied(mounts) -> list:
    """`mounts` without what a namespace unshare leaves out of its copy: a mount namespace bound on a
    file (`unshare --mount=PATH`, root mnt:[N]) and every mount on it (the probe's copy lacks them)."""
    gone = {m.mnt_id for m in mounts if m.root.startswith("mnt:[")}
    if not gone:
        return list(mounts)
    by_parent: dict[int, list[int]] = {}
    for m in mounts:
        by_parent.setdefault(m.parent_id, []).append(m.mnt_id)
    todo = list(gone)
    while todo:
        for c in by_parent.get(todo.pop(), ()):
            if c not in gone:
                gone.add(c)
                todo.append(c)
    return [m for m in mounts if m.mnt_id not in gone]


def _child(pid: int, owner_fd: int | None, proc_fd: int, legacy: bool) -> list[tuple[str, str]]:
    mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if owner_fd is not None:
        kernel.setns(owner_fd, kernel.CLONE_NEWUSER)
    kernel.setns(mnt_fd, kernel.CLONE_NEWNS)
    os.fchdir(root_fd)
    os.chroot(".")
    os.chdir("/")
    kernel.unshare(kernel.CLONE_NEWNS)
    try:
        return _probe_in_copy(proc_fd, full=owner_fd is not None, legacy=legacy)
    except PermissionError as e:
        raise OSError(errno.EACCES, _unsearchable(proc_fd) or f"{e}") from None


def _unsearchable(proc_fd: int) -> str | None:
    """The refusal of a probe that met a directory it may not search (in the copy): the first mount
    point beneath one, and that directory, and what to do; None when none is found again."""
    with os.fdopen(os.open(f"{os.getpid()}/mountinfo", os.O_RDONLY, dir_fd=proc_fd)) as f:
        points = sorted({m.mountpoint for m in mountinfo.parse(f.read())})
    for mp in points:
        parts = mp.strip("/").split("/")
        for k in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:k])
            try:
                os.stat(path, follow_symlinks=False)
            except PermissionError:
                where = "/" + "/".join(parts[:k - 1])
                return (f"the mount at {mp} lies beneath {where}, a directory root of the tree's user namespace "
                        "may not search (its owner is not mapped there and it grants others no search "
                        "permission), so the mounts' locks cannot be probed: make it searchable from inside "
                        f"(chmod o+x {where}, or chown it to an id the namespace maps) and dump again")
            except OSError:
                break
    return None


def probe(pid: int, mounts, canon_text: str) -> dict[str, str] | str:
    """Locks of the mounts `pid` sees: canonical label -> ``locked|unlocked|hidden [flags=...]``.

    Returns a one-line reason (str) instead when the probe cannot tell (the copy's tree differs
    from `canon_text`, which a concurrent mount change would cause)."""
    from engine import topology, userns
    kept = _copied(mounts)
    plain = topology.canonical(_bindable(kept))
    if plain.text != canon_text:
        # the caller's labels name unbindable mounts or mount namespace files: translate the probe's back to them
        canon = topology.canonical(mounts)
        if canon.text != canon_text:
            return "lock probe failed: the mounts given differ from their canonical text"
        relabel = {plain.label(m.mnt_id): canon.label(m.mnt_id) for m in kept}
    else:
        relabel = None
    owner = userns.ns_owner_fd(f"/proc/{pid}/ns/mnt")
    proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        same = userns.ino(owner) == userns.own_userns_ino()
        result = forkrun.run(_child, pid, None if same else owner, proc_fd, remount.legacy())
    except (OSError, forkrun.ChildError) as e:
        if isinstance(e, OSError) and e.errno == errno.EACCES and e.strerror:
            return f"lock probe failed: {e.strerror}"   # (_unsearchable's: it says what to do)
        return f"lock probe failed: {e}"
    finally:
        os.close(owner)
        os.close(proc_fd)
    if result[0][1] != plain.text:
        seen, want = result[0][1].splitlines(), plain.text.splitlines()
        first = next((i for i, (x, y) in enumerate(zip(seen, want)) if x != y), min(len(seen), len(want)))
        got = seen[first].strip() if first < len(seen) else "(end)"
        return (f"lock probe failed: the namespace changed while it was probed (its copy shows {got!r} where "
                f"the dump saw {want[first].strip() if first < len(want) else '(end)'!r})")
    if relabel is not None:
        return {relabel[label]: state for label, state in result[1:]}
    return dict(result[1:])


def summary(locks: dict[str, str]) -> list[str]:
    """The compared lines: only mounts that are not plain unlocked ones (a namespace without
    locks prints nothing, so trees without user namespaces read as before)."""
    return [f"{label}: {state}" for label, state in sorted(locks.items()) if state != "unlocked"]


def diff(a: dict[str, str], b: dict[str, str], names=("before", "after")) -> list[str]:
    """One line per mount whose lock or locked flags differ, naming what appeared or vanished."""
    out = []
    for label in sorted(set(a) | set(b)):
        sa, sb = a.get(label, "absent"), b.get(label, "absent")
        if sa == sb:
            continue
        la, lb = sa.split(" ")[0], sb.split(" ")[0]
        if la == "unlocked" and lb == "locked":
            out.append(f"lock appeared on {label} ({names[0]}: {sa}; {names[1]}: {sb})")
        elif la == "locked" and lb == "unlocked":
            out.append(f"lock vanished from {label} ({names[0]}: {sa}; {names[1]}: {sb})")
        else:
            out.append(f"locks differ on {label} ({names[0]}: {sa}; {names[1]}: {sb})")
    return out
