"""overlayfs inside the namespace: layers recorded as (mount, path), recreated with the original strings.

Dump: overlay's mountinfo options name its layers by the strings given at
mount time. Each absolute layer path is resolved in the namespace *as it was
when the overlay was mounted*: mounts younger than the overlay (64-bit unique
mount ids only grow) are skipped, so a layer that was overmounted afterwards
is still found beneath the overmount (overlayfs-cr-thread.txt, case b).
Before Linux 6.8 there are no unique ids, and legacy ids (the lowest free
number) say nothing certain about age. Then the layer's files decide:
overlayfs shows a layer's files with their own inode numbers, sizes and times
(ovl_getattr passes them through), so where a layer path crosses more than
one mount (`stack_beneath`: the one it resolves to now, and each one a lazy
unmount of that would uncover), dump looks at the directory on each of them
in a private copy of the namespace (`look_beneath`; a layer path that is a
symlink, podman's overlay/l/ID, is followed there as the kernel followed it
when the overlay was mounted) and takes the topmost
whose files the overlay shows; else the only one that has the directory at
all (`told_by_files`). When nothing tells, the layer is taken as it resolves
now, unless that mount may have been mounted over it after the overlay (the
layer directory is its mount point and its legacy id is larger than the
overlay's: `overmounted_after`) or lacks the directory: then dump refuses it
(engine.strategy, layers=refuse-ambiguous), the tree left running. A layer
path that leads nowhere in the overlay's namespace any more, because the
namespace pivoted away from the mounts it was made on (systemd-nspawn
--overlay), is looked for at the same path in the dump's other namespaces
(`_in_namespace_made_from`), also for a nested namespace's root made so (LXC's
overlay rootfs); such a root on layers no namespace reaches (nspawn
--volatile=overlay's tmpfs upper) is refused.

Restore: a forked helper builds a private "yard" where each original layer
path leads to a clone of the recorded layer directory, chroots into it and
creates the overlay with the original option strings. The restored options
therefore show the original paths (never a temporary one), so a second C/R
works the same way.
"""

from __future__ import annotations

import errno
import os
import stat

from engine.records import record

from engine import channel, forkrun, kernel
from engine.standin import fsmount
from engine.fs import FsError, FsType, lookup, register
from engine.image import is_beneath, rel_to
from engine.mountinfo import unescape

LAYER_KEYS = ("lowerdir", "upperdir", "workdir", "lowerdir+", "datadir+")
_BENEATH = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS


def split_lower(value: str) -> list[str]:
    """Split a lowerdir value on ':' (and '::' data-only separators), honouring '\\:' escapes."""
    out, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur.append(value[i + 1])
            i += 2
            continue
        if c == ":":
            out.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return [p for p in out if p]


def layer_paths(super_opts) -> list[tuple[str, str]]:
    """(option, path) for every layer named in the overlay's super options."""
    out = []
    for opt in super_opts:
        key, sep, value = opt.partition("=")
        if key not in LAYER_KEYS or not sep:
            continue
        value = unescape(value)
        paths = split_lower(value) if key == "lowerdir" else [value]
        out.extend((key, p) for p in paths)
    return out


def _top(path: str, mounts, born: int | None, unique: bool):
    """The mount the walk of `path` ended on among the mounts that existed when unique id `born` was
    made (all of them without unique ids): a walk through the tree, not the longest mount point,
    since a directory of that name may lie on a mount that covers the longer one's parent."""
    from engine.topology import Tree
    if born is not None and unique:
        mounts = [m for m in mounts if m.unique_id is None or m.unique_id < born]
    m = Tree(mounts).walk(path)
    return m if m is not None and is_beneath(path, m.mountpoint) else None


def resolve(path: str, mounts, born: int | None, unique: bool = True) -> tuple[int, str] | None:
    """The mount a layer `path` lay on when a mount with unique id `born` was created, and the path inside it.

    `mounts` are engine.mountinfo.Mount records of one namespace with
    `unique_id` set where known. Without unique ids (or with `unique` False)
    every mount counts: the path resolves as it does now.
    """
    m = _top(path, mounts, born, unique)
    return None if m is None else (m.mnt_id, "/" + rel_to(path, m.mountpoint))


def overmounted_after(path: str, mounts, overlay_id: int):
    """Without unique ids: the mount at layer directory `path` itself when its legacy id is larger than
    the overlay's (`overlay_id`): it may have been mounted over the layer after the overlay; else None."""
    m = _top(path, mounts, None, False)
    return m if m is not None and m.mountpoint == path and m.mnt_id > overlay_id else None


def stack_beneath(path: str, mounts) -> list:
    """The mounts a walk of layer `path` ends on, topmost first: the one it resolves to now, then,
    each time that mount is taken away with what is mounted on it (a lazy unmount), the next one;
    up to the namespace root."""
    left = list(mounts)
    out = []
    while len(out) < _MAX_STACK:
        m = _top(path, left, None, False)
        if m is None:
            break
        out.append(m)
        if m.mountpoint == "/":
            break
        gone, todo = set(), [m.mnt_id]
        children: dict[int, list[int]] = {}
        for x in left:
            children.setdefault(x.parent_id, []).append(x.mnt_id)
        while todo:
            mid = todo.pop()
            if mid not in gone:
                gone.add(mid)
                todo.extend(children.get(mid, ()))
        left = [x for x in left if x.mnt_id not in gone]
    return out


_MAX_STACK = 16        # mounts stacked over one layer path that dump looks beneath
_MAX_ANCESTORS = 16    # ancestors of a process dump asks for a view of an overlay's upper layer
_MAX_ENTRIES = 256     # entries of a layer directory compared with the overlay's


def _print(st: os.stat_result) -> tuple:
    """What overlayfs passes through of a layer's file: its type, inode number (real for
    non-directories, and for directories when all layers share a filesystem), size and times."""
    kind = stat.S_IFMT(st.st_mode)
    return (kind, st.st_ino, 0 if kind == stat.S_IFDIR else st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _dev(st: os.stat_result) -> str:
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def _open_root(roots: list[str], overlay_dev: str) -> int | None:
    """An fd on the overlay's root directory: the first mount point of `roots` that leads to it."""
    for mp in roots:
        try:
            fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        if _dev(os.fstat(fd)) == overlay_dev:
            return fd
        os.close(fd)
    return None


def _listing(path: str, dev: str, follow: bool = False) -> tuple | None | bool:
    """(directory's _print, its identity, {name: _print} of up to _MAX_ENTRIES entries) of directory
    `path`; None when there is none; False when it is on another device than `dev`. `follow`: a
    symlink at `path` itself leads to the directory (only where the caller stands at the dumped
    namespace's root, so that the link resolves there, as it did for the overlay's mount)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW))
    except OSError:
        return None
    try:
        here = os.fstat(fd)
        if _dev(here) != dev:
            return False
        names = {}
        for name in sorted(os.listdir(fd))[:_MAX_ENTRIES]:
            try:
                names[name] = _print(os.stat(name, dir_fd=fd, follow_symlinks=False))
            except OSError:
                continue
        return _print(here), (here.st_dev, here.st_ino), names
    finally:
        os.close(fd)


def look_beneath(path: str, stack: list[tuple[str, str]], roots: list[str], overlay_dev: str) -> list[dict] | None:
    """In a private copy of the namespace (engine.dump's in_ns_copy, engine/nscopy.py), at its root: for each mount of
    `stack` ((mount point, device) of stack_beneath's mounts), whether directory `path` is on it, its
    identity, and how many of its files the overlay shows as its own (same name, same _print); the
    mounts are unmounted one by one to reach the next. None when the overlay's root (a mount point
    of `roots`, maybe beneath the same covers) is out of reach, or the copy is not as dump read it."""
    merged = None
    seen = []
    try:
        for i, (mountpoint, dev) in enumerate(stack):
            if merged is None:
                merged = _open_root(roots, overlay_dev)
            # A layer named by a symlink (podman's overlay/l/ID -> ../ID/diff) was followed when the
            # overlay was made: follow it too (this child stands at the namespace copy's root).
            got = _listing(path, dev, follow=True)
            if got is False:
                return None   # not the mount dump expects here: the copy differs
            seen.append(got)
            if i + 1 == len(stack):
                break
            try:
                kernel.umount2(mountpoint, kernel.MNT_DETACH)
            except OSError:
                break
        if merged is None:
            return None
        top = _print(os.fstat(merged))
        out = []
        for got in seen:
            if got is None:
                out.append({"found": False, "pos": 0, "ident": None})
                continue
            mine, ident, names = got
            pos = int(mine == top)
            for name, p in names.items():
                try:
                    pos += _print(os.stat(name, dir_fd=merged, follow_symlinks=False)) == p
                except OSError:
                    continue
            out.append({"found": True, "pos": pos, "ident": ident})
        return out
    finally:
        if merged is not None:
            os.close(merged)


def told_by_files(looked: list[dict] | None) -> int | None:
    """Which of the stack's mounts holds the layer, by look_beneath's findings: the topmost of those
    showing files of the overlay, when they are all one directory; else the only one that has the
    directory at all; None when neither tells."""
    if not looked:
        return None
    for want in (lambda x: x["pos"] > 0, lambda x: x["found"]):
        hits = [i for i, x in enumerate(looked) if want(x)]
        if hits and len({looked[i]["ident"] for i in hits}) == 1:
            return hits[0]
        if hits:
            return None   # two directories: nothing tells which
    return None


# --- restore side -------------------------------------------------------------------

def yard_binds(layers: list[dict]) -> list[tuple[str, int, str]]:
    """Group layers by their mount: (path in the yard, layer mount id, path inside that mount).

    Layers on one mount are reached through one bind of their common directory,
    because overlayfs wants upperdir and workdir under the same mount.
    """
    groups: dict[int, list[dict]] = {}
    for layer in layers:
        groups.setdefault(layer["mnt"], []).append(layer)
    out = []
    for mnt, ls in groups.items():
        common = os.path.commonpath([x["rel"] for x in ls])
        prefixes = set()
        for x in ls:
            below = len([c for c in x["rel"].split("/") if c]) - len([c for c in common.split("/") if c])
            parts = [c for c in x["path"].split("/") if c]
            prefixes.add("/" + "/".join(parts[:len(parts) - below]))
        if len(prefixes) != 1:
            raise OSError(errno.EINVAL, f"overlay layers on mount {mnt} do not sit at one place: {sorted(prefixes)}")
        out.append((prefixes.pop(), mnt, common))
    return sorted(out, key=lambda t: (len(t[0]), t[0]))


# Options a newer kernel shows for its default that older kernels lack (and refuse, EINVAL at the
# create, where they parse options): `uuid=on` (uuid= came after 5.10; 6.18 shows uuid=on when none
# was given) is how every kernel before it works. An image of 6.18 restored on 5.10 failed on it.
_SHOWN_DEFAULTS = frozenset({("uuid", "on")})


def _build(binds: list[tuple[str, int]], source: str, params: list[tuple[str, str | None]],
           userns_fd: int | None, chan: channel.Channel) -> None:
    """In a forked child: a yard where the layer clones sit at their original paths, then create the
    overlay (from inside user namespace `userns_fd` as its root, when one owns it)."""
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    yard = kernel.scratch_tmpfs()
    kernel.move_mount(yard, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    os.fchdir(yard)
    os.chroot(".")
    yard_id = kernel.statx_mnt_id("/")
    for path, layer_fd in binds:
        rel = path.strip("/")
        if rel and not os.path.isdir(rel):
            parent = os.path.dirname(rel) or "."
            while not os.path.exists(parent):
                parent = os.path.dirname(parent) or "."
            if kernel.statx_mnt_id(parent) != yard_id:
                raise OSError(errno.ENOENT, f"overlay layer directory {path} does not exist in its parent layer")
            os.makedirs(rel)
        kernel.move_mount(layer_fd, "", kernel.AT_FDCWD, "/" + rel, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        if not rel:
            # Layers whose common directory is their mount's root (podman's -v SRC:DST:O with SRC and
            # its storage on one filesystem): mounted over the yard's root, which a walk from "/"
            # never leaves; the root moves onto it. (Later layers are then on it, not on the yard:
            # nothing is made there.)
            os.fchdir(layer_fd)
            os.chroot(".")
    os.chdir("/")
    if userns_fd is not None:
        _become_owner(userns_fd)
    chan.send(("ok", None), [make(source, params)])


def make(source: str, params: list[tuple[str, str | None]]) -> int:
    """fsmount an overlay with `params`; again without the `_SHOWN_DEFAULTS` when the kernel refuses
    them (EINVAL): one that lacks such an option works only that way."""
    try:
        return fsmount("overlay", source, params)
    except OSError as e:
        lean = [p for p in params if p not in _SHOWN_DEFAULTS]
        if e.errno != errno.EINVAL or lean == params:
            raise
        return fsmount("overlay", source, lean)



def _become_owner(userns_fd: int) -> None:
    """Join the user namespace that made the overlay, in a copy of the yard it owns (fsopen needs
    that), as its root when it maps one: the overlay belongs to it and works on its layers with
    those credentials, as the one dumped did (never with the restorer's)."""
    os.setgroups([])   # (root's groups would stay with its credentials: a file of group root's open to it)
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as e:
        raise OSError(e.errno, "its user namespace maps no root to make it as") from None


def create(source: str, super_opts, binds: list[tuple[str, int]], userns_fd: int | None = None) -> int:
    """Create the overlay superblock; `binds` are (original path, O_PATH fd of the directory to show there);
    `userns_fd`: the user namespace it is made in (which owns it), None for the caller's.

    The clones are made here, in the caller's namespace (older kernels clone
    only mounts of the caller's own namespace); the helper attaches them.
    """
    params = TYPE.fsconfig_params(super_opts)
    clones = []
    try:
        for path, fd in binds:
            clones.append((path, kernel.open_tree(fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)))
        _, fds = channel.call_in_child(_build, clones, source, params, userns_fd)
    finally:
        for _, fd in clones:
            os.close(fd)
    return fds[0]


# --- a lower directory removed while held, uncovered at restore -------------------------

def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _upper_dir(pid: int, sb: dict, upper: str) -> str | None:
    """A /proc/PID/root that shows the overlay's upper layer `upper` (its option's path): `pid`'s,
    else that of an ancestor with a mount of the overlay (_same_overlay_pids), else None."""
    mine = f"/proc/{pid}/root"
    if os.path.isdir(f"{mine}/{upper.lstrip('/')}"):
        return mine
    for other in _same_overlay_pids(pid, sb):
        root = f"/proc/{other}/root"
        if os.path.isdir(f"{root}/{upper.lstrip('/')}"):
            return root
    return None


def _same_overlay_pids(pid: int, sb: dict) -> list[int]:
    """The ancestors of `pid` (at most _MAX_ANCESTORS, not init) whose mount namespace has a mount of the
    overlay (its superblock's device): the one that made it pivoted a child into it, and sees the
    layers at their options' paths where the child does not."""
    out = []
    cur = pid
    for _ in range(_MAX_ANCESTORS):
        try:
            with open(f"/proc/{cur}/stat") as f:
                cur = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if cur <= 1:
            break
        if sb.get("dev") and _shows_dev(cur, sb["dev"]):
            out.append(cur)
    return out


def _shows_dev(pid: int, dev: str) -> bool:
    """Whether process `pid`'s mountinfo has a mount of device `dev` ("MAJ:MIN")."""
    from engine import mountinfo
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return False
    return any(m.dev == dev for m in mountinfo.parse(text))


def _uncover_why(root: str, sb: dict, pid: int, link: str, sb_path: str) -> str | None:
    """None when restore can uncover the removed directory `sb_path` (held at /proc/PID/`link`):
    the topmost lower layer that has the name (seen from `root`) has a directory there with the held
    one's owner, mode and modification time, and no lower layer has anything in it (a directory the
    overlay merges from them would not be empty, and rmdir would fail); else what stands in the way."""
    try:
        held = os.stat(f"/proc/{pid}/{link}")
    except OSError:
        return "cannot be looked at (the process is gone)"
    first = None
    for key, low in layer_paths(sb["super_opts"]):
        if key not in ("lowerdir", "lowerdir+"):
            continue
        path = f"{root}/{low.lstrip('/')}/{sb_path.lstrip('/')}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            return f"cannot be looked at ({e.strerror})"
        if _whiteout(st) or (first is not None and not stat.S_ISDIR(st.st_mode)):
            break
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        try:
            if os.listdir(path):
                return "is not empty"
        except OSError as e:
            return f"cannot be looked at ({e.strerror})"
        first = first or st
    if first is None:
        return "is not seen"
    if (first.st_mode, first.st_uid, first.st_gid, first.st_mtime_ns) != \
            (held.st_mode, held.st_uid, held.st_gid, held.st_mtime_ns):
        return "differs from the removed one (its owner, mode or time changed)"
    return None


def _uncover(sid: str, sb: dict, ctx, where: str) -> None:
    """Before the overlay is made: take out of its upper layer the whiteout of each directory the
    image uncovers (ghosts with `uncover`, engine/ghosts.py Uncovered), so that the lower directory
    shows at that name again. Only a whiteout (a character device 0:0) beneath the upper layer's
    directory, on its own mount (the image format allows only a mount the image makes there)."""
    paths = [g["path"] for g in (ctx.doc.get("ghosts") or {}).values() if g["sb"] == sid and g.get("uncover")]
    if not paths:
        return
    layer = TYPE.uncover_layer(sb)
    m = None if layer is None else (ctx.detached if layer.get("detached") else ctx.mounts).get(layer["mnt"])
    if m is None:
        raise FsError(errno.EINVAL, f"{where}: the upper layer of its removed directories is not in the image")
    base, root_rel = ctx.source_of(m)
    for path in paths:
        parts = [p for p in path.split("/") if p]
        inner = "/".join(x for x in (root_rel.strip("/"), layer["rel"].strip("/"), *parts[:-1]) if x)
        d = kernel.openat2(base, inner, os.O_PATH | os.O_DIRECTORY, _BENEATH | kernel.RESOLVE_NO_XDEV) \
            if inner else os.dup(base)
        try:
            if not _whiteout(os.lstat(parts[-1], dir_fd=d)):
                raise FsError(errno.EINVAL, f"{where}: its upper layer has no whiteout at {path}, the "
                                            "removed directory the image uncovers there")
            os.unlink(parts[-1], dir_fd=d)
        except FileNotFoundError:
            raise FsError(errno.EINVAL, f"{where}: its upper layer has no whiteout at {path}, the removed "
                                        "directory the image uncovers there") from None
        finally:
            os.close(d)


# --- the type's hooks -----------------------------------------------------------------

def _gone_here(path: str, found, mounts, plan, ns_name: str) -> bool:
    """Whether layer `path` no longer leads to a directory in namespace `ns_name`, where it resolves
    to mount `found`: the path walked now where that mount is the one the walk ends on, else (a
    layer beneath covers mounted after the overlay) that mount's directory beneath them."""
    now = _top(path, mounts, None, False)
    pids = (getattr(plan, "ns_pids", None) or {}).get(ns_name) or ()
    if now is None or not pids:
        return False
    if now.mnt_id == found[0]:
        return not os.path.isdir(f"/proc/{pids[0]}/root{path}")
    return _gone_beneath(path, found, mounts, plan, ns_name)


def _gone_beneath(path: str, found, mounts, plan, ns_name: str) -> bool:
    """Whether layer `path`, resolved to mount `found` beneath covers mounted later (unique ids skip
    them), leads to no directory on that mount: its layers' mount was lazily unmounted after the
    overlay was made (a process keeps it alive, detached), and restore would look for the layer on the
    mount beneath. Looked at in a private copy of the namespace, the covers unmounted there."""
    stack = stack_beneath(path, mounts)
    i = next((k for k, m in enumerate(stack) if m.mnt_id == found[0]), None)
    if not i:
        return False   # not beneath the walk (found in another namespace), or not covered
    try:
        return bool(plan.in_ns_copy(ns_name, missing_beneath, path, [m.mountpoint for m in stack[:i]],
                                    stack[i].dev))
    except (OSError, forkrun.ChildError):
        return False   # the copy could not be looked at: nothing tells


def missing_beneath(path: str, covers: list[str], dev: str) -> bool:
    """In a private copy of the namespace, at its root: whether directory `path` is missing once the
    mounts at `covers` (mount points, topmost first) are lazily unmounted, where it resolves to a
    mount of device `dev` (a symlink at `path` is followed, as when the overlay was made)."""
    for mountpoint in covers:
        kernel.umount2(mountpoint, kernel.MNT_DETACH)
    return _listing(path, dev, follow=True) is None


def _in_namespace_made_from(path: str, sid: str, sb: dict, ns_name: str, plan) -> tuple[int, str] | None:
    """Where a layer lies that its overlay's namespace no longer reaches: a runtime (systemd-nspawn's
    --overlay) mounts the overlay in the container's new namespace, a copy of its parent's, while the
    layer paths lead to the copies of the parent's mounts, then pivots into the container root and
    unmounts the old one. The layer is then at the same path in another namespace of the dump (the
    parent's, whose mounts were copied). (mount, path inside it) of the one directory found at `path`
    in the other namespaces: the one holding files the overlay shows (overlayfs passes their inode
    numbers and times through), else the only directory found; None when nothing tells."""
    pids_of = getattr(plan, "ns_pids", None) or {}
    if not any(pids_of.get(other) for other in plan.ns_mounts if other != ns_name):
        return None   # no other namespace to look in
    roots = [f"/proc/{pids_of[ns_name][0]}/root{e['mountpoint']}" for e in plan.mntns_doc[ns_name]["mounts"]
             if e["sb"] == sid and e["root"] == "/" and pids_of.get(ns_name)]
    merged = _open_root(roots, sb["dev"])
    try:
        seen = []   # (found, files of the overlay it holds, its identity)
        for other, mounts in plan.ns_mounts.items():
            pids = pids_of.get(other)
            got = resolve(path, mounts, None, False) if other != ns_name and pids else None
            if got is None or plan.sb_of_dev.get(plan.mounts_by_id[got[0]].dev) == sid:
                continue
            listing = _listing(f"/proc/{pids[0]}/root{path}", plan.mounts_by_id[got[0]].dev)
            if not listing:
                continue
            mine, ident, names = listing
            pos = 0
            if merged is not None:
                for name, p in names.items():
                    try:
                        pos += _print(os.stat(name, dir_fd=merged, follow_symlinks=False)) == p
                    except OSError:
                        continue
            seen.append((got, pos, ident))
    finally:
        if merged is not None:
            os.close(merged)
    for hits in ([x for x in seen if x[1] > 0], seen):
        if hits and len({x[2] for x in hits}) == 1:
            return hits[0][0]
        if hits:
            return None   # two directories: nothing tells which
    return None


def _on_detached(sid: str, sb: dict, plan) -> tuple[int, dict[str, str]] | None:
    """(detached mount id, {layer path: path inside it}) of the overlay's layers that lie on a mount
    lazily unmounted since, which a file of the tree keeps alive (engine/fs/_layers_detached.py):
    found through the handle the overlay's root gives of its real layer directory, looked at on
    one of its visible mounts (beneath covers, in a private copy of its namespace). The handle is
    kept for engine/detached.py, which archives that mount whole from there (`layer_anchors`)."""
    from engine.fs import _layers_detached as ld
    anchors = getattr(plan, "layer_anchors", None)
    pids = [p for ps in (getattr(plan, "ns_pids", None) or {}).values() for p in ps]
    held = ld.held_on_detached(pids, {m.mnt_id for ms in plan.ns_mounts.values() for m in ms})
    if not held:
        return None
    fid = None
    for ns_name, ns in plan.mntns_doc.items():
        for e in ns["mounts"]:
            if e["sb"] != sid or e["root"] != "/" or not (getattr(plan, "ns_pids", None) or {}).get(ns_name):
                continue
            stack = stack_beneath(e["mountpoint"], plan.ns_mounts[ns_name])
            i = next((k for k, m in enumerate(stack) if m.mnt_id == e["id"]), None)
            if i is None:
                continue
            try:
                fid = plan.in_ns_copy(ns_name, fid_beneath, e["mountpoint"], [m.mountpoint for m in stack[:i]],
                                      sb["dev"])
            except (OSError, forkrun.ChildError):
                fid = None
            if fid:
                break
        if fid:
            break
    if not fid:
        return None
    got = ld.place(tuple(fid), layer_paths(sb["super_opts"]), held)
    if got is not None and anchors is not None:
        anchors[got[0]] = tuple(fid)
    return got


def fid_beneath(mountpoint: str, covers: list[str], dev: str):
    """In a private copy of the namespace, at its root: the real layer handle the overlay mounted at
    `mountpoint` (device `dev`) gives of its root (engine/fs/_layers_detached.py root_fid), once the
    mounts at `covers` (topmost first) are lazily unmounted; None when it gives none."""
    from engine.fs import _layers_detached as ld
    for mp in covers:
        kernel.umount2(mp, kernel.MNT_DETACH)
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return ld.root_fid(fd) if _dev(os.fstat(fd)) == dev else None
    finally:
        os.close(fd)


def _check_still_there(key: str, path: str, found, mounts, plan, ns_name: str, where: str) -> None:
    """Refuse a layer whose path no longer leads to it: the overlay's options keep the path it was
    given, and a layer whose mount was moved (`mount --move`) or unmounted since resolves to the mount now at
    that path, where the directory is missing."""
    if _gone_here(path, found, mounts, plan, ns_name):
        raise _not_there(where, key, path, plan, ns_name)


def _not_there(where: str, key: str, path: str, plan, ns_name: str) -> FsError:
    """The refusal of a layer whose path leads to no directory in namespace `ns_name` now, naming
    the last directory the path does reach (where the mount that held the layer was)."""
    pids = (getattr(plan, "ns_pids", None) or {}).get(ns_name) or ()
    detail = ""
    if pids:
        parent, name = _last_present(f"/proc/{pids[0]}/root", path)
        detail = f" ({parent} holds no {name!r})" if name else ""
    return FsError(errno.EOPNOTSUPP, f"{where}: its layer {key}={path} is no longer a directory at that path"
                                     f"{detail}: the mount the overlay was given it through was unmounted or "
                                     "moved after the overlay was made (lazily unmounted, it may live on detached, "
                                     "but no file the tree holds there leads to the layers; podman unmounts "
                                     "the idmapped layer mounts it makes for --uidmap and --userns=auto), or "
                                     "the directory was removed; dump cannot tell where the layer lies now; "
                                     "not supported")


def _kernel_why(err: FsError, plan) -> FsError:
    """`err`, naming the kernel as the reason when a file of the tree is held on a detached mount
    (where the layers may lie) but overlayfs gives no real layer handle to find them there by."""
    from engine import features
    from engine.fs import _layers_detached as ld
    pids = [p for ps in (getattr(plan, "ns_pids", None) or {}).values() for p in ps]
    feature = features.available()["overlay(AT_HANDLE_FID)"]
    if feature.present or not ld.held_on_detached(pids, {m.mnt_id for ms in plan.ns_mounts.values() for m in ms}):
        return err
    return FsError(err.errno, f"{err.strerror} (overlay layers on a detached mount are found by the real layer "
                              f"handle overlayfs gives with AT_HANDLE_FID: this kernel gives none, Linux >= "
                              f"{feature.since})")


def _last_present(root: str, path: str) -> tuple[str, str]:
    """(the longest prefix of `path` that is a directory beneath `root`, the next component), or
    (path, "") when the whole path is one."""
    here = "/"
    for name in [p for p in path.split("/") if p]:
        if not os.path.isdir(os.path.join(root + here, name)):
            return here, name
        here = os.path.join(here, name)
    return here, ""


def _oldest(sid: str, mntns_doc: dict, unique: bool):
    """(namespace name, mount entry) of the superblock's oldest mount: the overlay's creation."""
    users = [(ns_name, e) for ns_name, ns in mntns_doc.items() for e in ns["mounts"] if e["sb"] == sid]
    return min(users, key=lambda u: ((u[1]["uid"] if unique else None) or u[1]["id"]))


def _by_files(path: str, sid: str, sb: dict, ns_name: str, plan) -> tuple[tuple[int, str] | None, str]:
    """Without unique ids, where the layer path crosses mounts (each may have been mounted after the
    overlay, over what held the layer): the mount of the stack there whose directory holds files the overlay shows (overlayfs passes their inode numbers and
    times through) and the path inside it, else None; and where the path is missing: "absent" on
    the mount it resolves to now, "nowhere" on every mount of the stack (the layer's mount was moved
    away, or the directory removed), "" when it is there. Looks beneath the covers in a private copy
    of the namespace."""
    mounts = plan.ns_mounts[ns_name]
    stack = stack_beneath(path, mounts)
    roots = [e["mountpoint"] for e in plan.mntns_doc[ns_name]["mounts"] if e["sb"] == sid and e["root"] == "/"]
    if len(stack) < 2 or not roots:
        return None, ""      # nothing beneath (a layer on the namespace root), or no overlay root to compare
    try:
        looked = plan.in_ns_copy(ns_name, look_beneath, path, [(m.mountpoint, m.dev) for m in stack], roots,
                                 sb["dev"])
    except (OSError, forkrun.ChildError):
        looked = None   # the copy could not be looked at: the files tell nothing
    i = told_by_files(looked)
    if looked and not any(x["found"] for x in looked):
        return None, "nowhere"
    absent = "absent" if looked and not looked[0]["found"] else ""
    if i is None:
        return None, absent
    return (stack[i].mnt_id, "/" + rel_to(path, stack[i].mountpoint)), absent


def _makers(sid: str, sb: dict, plan) -> list:
    """(namespace name, mount entry) of the overlay's mounts, lowest legacy id first, whose namespace
    has every layer path on a mount of another superblock: where it can have been made (a namespace
    whose root is the overlay, a container that pivoted into it, sees the layer paths inside the
    overlay itself)."""
    users = sorted(((ns_name, e) for ns_name, ns in plan.mntns_doc.items() for e in ns["mounts"]
                    if e["sb"] == sid), key=lambda u: u[1]["id"])
    out = []
    for ns_name, e in users:
        mounts = plan.ns_mounts[ns_name]
        by_id = {m.mnt_id: m for m in mounts}
        places = [resolve(path, mounts, None, False) for _, path in layer_paths(sb["super_opts"])]
        if all(p is not None and plan.sb_of_dev.get(by_id[p[0]].dev) != sid for p in places):
            out.append((ns_name, e))
    return out


def _maker(sid: str, sb: dict, plan):
    """Without unique ids: (namespace name, mount entry) of the mount taken for the overlay's
    creation: the first of _makers (legacy ids after a restore say nothing about which mount came
    first), else its mount with the lowest legacy id."""
    found = _makers(sid, sb, plan)
    if found:
        return found[0]
    return min(((n, e) for n, ns in plan.mntns_doc.items() for e in ns["mounts"] if e["sb"] == sid),
               key=lambda u: u[1]["id"])


def _layers(sid: str, sb: dict, plan) -> list[dict]:
    """The overlay's layers as (mount, path) as they were at its creation, or FsError naming the layer
    dump cannot place. Only reads (a private copy of a namespace at most): `precheck` asks it of the
    running tree, `plan` of the stopped one."""
    unique = plan.strategy.layers == "unique-ids"
    ns_name, oldest = _oldest(sid, plan.mntns_doc, unique) if unique else _maker(sid, sb, plan)
    return _layers_in(sid, sb, plan, ns_name, oldest, unique, f"mount {oldest['id']} ({oldest['mountpoint']}) on overlay")


def _detached_layer(path: str, sid: str, sb: dict, plan, cache: list) -> dict | None:
    """The layers entry of the overlay's layer `path` when it lies on a mount lazily unmounted since
    that a file of the tree keeps alive (_on_detached, looked for once: `cache` keeps its answer
    across the overlay's layers), else None."""
    if not cache:
        cache.append(_on_detached(sid, sb, plan) or (0, {}))
    mnt, rels = cache[0]
    return {"path": path, "mnt": mnt, "rel": rels[path], "detached": True} if path in rels else None


def _layers_in(sid: str, sb: dict, plan, ns_name: str, oldest: dict, unique: bool, where: str) -> list[dict]:
    """_layers' answer for the layer paths resolved in namespace `ns_name` as they were when mount
    `oldest` ({id, uid, mountpoint}) was made (`where` names it in refusals)."""
    mounts = plan.ns_mounts[ns_name]
    layers = []
    on_detached: list = []   # _detached_layer's one look for the layers on a detached mount
    for key, path in layer_paths(sb["super_opts"]):
        if not path.startswith("/"):
            raise FsError(errno.EOPNOTSUPP, f"{where}: layer {key}={path} is a relative path: not supported")
        found = None
        if not unique:
            found, absent = _by_files(path, sid, sb, ns_name, plan)
            late = overmounted_after(path, mounts, oldest["id"])
            if found is None and absent == "nowhere":
                # on no mount of the stack: lazily unmounted since, kept alive by a file of the tree?
                entry = _detached_layer(path, sid, sb, plan, on_detached)
                if entry is not None:
                    layers.append(entry)
                    continue
                raise _kernel_why(_not_there(where, key, path, plan, ns_name), plan)
            if found is None and (late is not None or absent):
                late = late or _top(path, mounts, None, False)
                raise FsError(errno.EOPNOTSUPP, f"{where}: its layer {key}={path} now lies on mount "
                                                f"{late.mnt_id} ({late.mountpoint}), which may have been "
                                                "mounted over it after the overlay; no file of the layer "
                                                "that the overlay shows tells the mounts apart, and without "
                                                "unique mount ids (STATX_MNT_ID_UNIQUE, Linux >= 6.8) dump "
                                                "cannot tell which mount holds the layer")
        if found is None:
            found = resolve(path, mounts, oldest["uid"] if unique else None, unique)
        if found is None:
            # made in a copy of another namespace of the dump, then pivoted into (LXC's overlay rootfs)
            found = _in_namespace_made_from(path, sid, sb, ns_name, plan)
        if found is None:
            hint = f"; declare it with --external mnt[{oldest['mountpoint']}]:KEY" \
                if oldest["mountpoint"].startswith("/") else ""
            raise FsError(errno.ENOENT, f"{where}: no mount holds its layer {path} (made outside the dumped "
                                        f"namespaces?){hint}")
        if _gone_here(path, found, mounts, plan, ns_name):
            # made before its namespace pivoted away from the layers' mounts (nspawn --overlay)?
            other = _in_namespace_made_from(path, sid, sb, ns_name, plan)
            if other is None:
                # the layers' mount lazily unmounted since, kept alive by a file of the tree on it?
                entry = _detached_layer(path, sid, sb, plan, on_detached)
                if entry is not None:
                    layers.append(entry)
                    continue
                raise _kernel_why(_not_there(where, key, path, plan, ns_name), plan)
            found = other
            _check_still_there(key, path, found, mounts, plan, ns_name, where)
        layers.append({"path": path, "mnt": found[0], "rel": found[1]})
    return layers


def _default_on(feature: str) -> bool:
    """The overlay module's default for `feature` (its parameter), which mountinfo leaves unsaid."""
    try:
        with open(f"/sys/module/overlay/parameters/{feature}") as f:
            return f.read().strip() in ("Y", "on")
    except OSError:
        return False


def _handles_kept(super_opts) -> list[str]:
    """The options under which the overlay records its layers' files by file handle (the upper
    root's origin, the index and its entries) and checks them at the next mount."""
    opts = set(super_opts)
    if not any(o.startswith("upperdir=") for o in opts):
        return []   # (no upper layer: nowhere to record them)
    return [f"{k}=on" for k in ("index", "nfs_export")
            if f"{k}=on" in opts or (f"{k}=off" not in opts and _default_on(k))]


def _volatile(super_opts) -> bool:
    """Mounted volatile (shown `fsync=volatile` since Linux 6.18)."""
    return "volatile" in super_opts or "fsync=volatile" in super_opts


def _where(sid: str, plan) -> str:
    """'mount N (PATH) on overlay' for the superblock's first mount in the dump."""
    e = next(e for ns in plan.mntns_doc.values() for e in ns["mounts"] if e["sb"] == sid)
    return f"mount {e['id']} ({e['mountpoint']}) on overlay"


def _check_remountable(sb: dict, layers: list[dict], plan, where: str) -> None:
    """Refuse what the kernel would not mount again on the restored layers: an index (or NFS export)
    of handles on a layer restore makes afresh (its files archived: new inodes, a new fs uuid), the
    kernel failing with ESTALE; a volatile overlay whose workdir restore does not make afresh (the
    kernel refuses its work/incompat/volatile mark until someone removes it)."""
    def fresh(layer: dict) -> bool | None:
        m = plan.mounts_by_id.get(layer["mnt"])
        sid = m is not None and plan.sb_of_dev.get(m.dev)
        lsb = plan.superblocks.get(sid) if sid else None
        if lsb is None:
            return None   # (a detached layer mount: not told here)
        handler = lookup(lsb["fstype"])
        return bool(handler is not None and handler.content and not lsb.get("external"))
    kept = _handles_kept(sb["super_opts"])
    fresh_layer = next((x for x in layers if fresh(x)), None)
    if kept and fresh_layer is not None:
        raise FsError(errno.EOPNOTSUPP, f"{where}: mounted with {','.join(kept)}, which records the files of "
                                        "its layers by file handle, and its layer "
                                        f"{fresh_layer['path']} lies on a filesystem restore makes afresh "
                                        "(new inodes): the kernel would refuse the restored layers (ESTALE); "
                                        "mount it with index=off, or keep its layers on a filesystem "
                                        "declared --external")
    work = next((x for x in layers if x["path"] == dict(layer_paths(sb["super_opts"])).get("workdir")), None)
    if _volatile(sb["super_opts"]) and work is not None and fresh(work) is False:
        raise FsError(errno.EOPNOTSUPP, f"{where}: a volatile overlay whose workdir {work['path']} is not "
                                        "made afresh by restore: the kernel refuses to mount it again while "
                                        "its work/incompat/volatile mark is there; mount it without "
                                        "volatile, or its layers on a tmpfs of the tree")


def _clear_volatile_mark(sb: dict, ctx) -> None:
    """Remove work/incompat/volatile/dirty from the restored workdir: the kernel leaves that mark while a
    volatile overlay is mounted and refuses the workdir while it is there (its writes may not have
    reached the disk); the archived copy holds what the dumped overlay showed, so the new mount may
    use it. Only on a workdir restore made itself (dump refuses the others)."""
    work = dict(layer_paths(sb["super_opts"])).get("workdir")
    layer = next((x for x in sb["layers"] if x["path"] == work and not x.get("detached")), None)
    m = layer and ctx.mounts.get(layer["mnt"])
    lsb = m and ctx.doc["superblocks"].get(m["sb"])
    handler = lsb and lookup(lsb["fstype"])
    if not handler or not handler.content or lsb.get("external"):
        return
    base, root_rel = ctx.source_of(m)
    inner = "/".join(x for x in (root_rel, layer["rel"].strip("/"), "work/incompat") if x)
    try:
        fd = kernel.openat2(base, inner, os.O_PATH | os.O_DIRECTORY, _BENEATH)
    except FileNotFoundError:
        return
    try:
        for name, remove in (("volatile/dirty", os.unlink), ("volatile", os.rmdir)):
            try:
                remove(name, dir_fd=fd)   # (rmdir: only once empty, nothing else goes)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


@record(frozen=True)
class OverlayType(FsType):
    """overlayfs: layers recorded as (mount, path) at dump, a yard of layer clones at restore."""

    def layer_paths(self, super_opts) -> list[tuple[str, str]]:
        return layer_paths(super_opts)

    def made_from(self, sb: dict, mounts: dict) -> set[str]:
        return {mounts[x["mnt"]]["sb"] for x in sb.get("layers") or () if x.get("mnt") in mounts}

    def made_outside(self, sid: str, sb: dict, plan) -> bool:
        """A namespace root whose layers no older mount of its namespace holds: a runtime made it
        outside the dumped namespaces, and it is restored like a directory root."""
        ns_name, oldest = _oldest(sid, plan.mntns_doc, True)
        if oldest["uid"] is None:
            # No unique ids: made inside when some namespace of the dump sees all its layers outside it,
            # or has each at its path while the overlay's own namespace pivoted away from them.
            if _makers(sid, sb, plan):
                return False
            ns_name = _maker(sid, sb, plan)[0]
            return not all(path.startswith("/") and _in_namespace_made_from(path, sid, sb, ns_name, plan)
                           for _, path in layer_paths(sb["super_opts"]))

        def held(path: str) -> bool:
            # (without unique ids every mount counts: a path inside the overlay itself holds nothing)
            found = path.startswith("/") and resolve(path, plan.ns_mounts[ns_name], oldest["uid"])
            if not found and path.startswith("/"):
                # its namespace, a copy of another of the dump, pivoted into the overlay and dropped the
                # copies of the layers' mounts (LXC's overlay rootfs): the layer is at that path there
                found = _in_namespace_made_from(path, sid, sb, ns_name, plan)
            return bool(found) and plan.sb_of_dev.get(plan.mounts_by_id[found[0]].dev) != sid
        return not all(held(path) for _, path in layer_paths(sb["super_opts"]))

    def precheck(self, sid: str, sb: dict, plan) -> None:
        """Before the tree is stopped: what `plan` refuses of the layers (a relative layer path, a layer
        no mount holds, a layer whose mount was moved since the overlay was made, and without unique
        mount ids one whose mount the layer's files do not tell), by the same `_layers`; `plan` asks
        again, the authority, once the tree is stopped. Left to dump: a namespace root made outside
        (restored as a directory root, its layers not looked at)."""
        if any(e["id"] == ns["root"] and e["sb"] == sid for ns in plan.mntns_doc.values() for e in ns["mounts"]) \
                and self.made_outside(sid, sb, plan):
            return
        _check_remountable(sb, _layers(sid, sb, plan), plan, _where(sid, plan))

    def deleted_dir(self, where: str, sb: dict, pid: int, link: str, sb_path: str) -> dict | None:
        """A directory removed while in use is made again through the overlay (engine/ghosts.py): a
        mkdir over the whiteout its removal left, when it was a lower layer's, which the overlay must
        mark opaque. An overlay a user namespace of the image owns (`owner`), made without userxattr,
        sets no such xattr (trusted.* needs the initial namespace's CAP_SYS_ADMIN): the mkdir fails
        (EIO). Such a directory, seen as a whiteout at its name in the upper layer, is uncovered
        instead ({"uncover": True, "layer_dev": the upper layer's device}: restore takes the whiteout
        out before the overlay is made, opens
        the lower directory and removes it through the overlay), when the lower layers show it as it
        was held (`_uncover_why`); else refused. The upper layer is looked at from the process's root,
        else from the roots of the tree's other processes (`_upper_dir`); where no root shows it (a
        container pivoted into the overlay, the layers left outside: rootless crun on an overlay its
        caller mounted, the caller not dumped) nothing is refused: most such directories are the
        upper layer's own, which restore makes again, and a refusal there stopped them all."""
        if "userxattr" in sb["super_opts"] or not sb.get("owner"):
            # (restore makes an overlay no user namespace of the image owns as root of the initial
            # one, which sets trusted xattrs: a container's mount namespace in a user namespace says
            # nothing of who mounted its overlay)
            return None
        upper = [p for key, p in layer_paths(sb["super_opts"]) if key == "upperdir"]
        if not upper:
            return None   # (a read-only overlay: nothing of it was removed)
        root = _upper_dir(pid, sb, upper[0])
        if root is None:
            return None   # (no root of the tree shows the upper layer)
        try:
            st = os.lstat(f"{root}/{upper[0].lstrip('/')}/{sb_path.lstrip('/')}")
        except OSError:
            return None   # (no such name in the upper layer)
        if not _whiteout(st):
            return None
        why = _uncover_why(root, sb, pid, link, sb_path)
        if why is None:
            try:
                st = os.stat(f"{root}/{upper[0].lstrip('/')}")
            except OSError as e:
                raise FsError(e.errno or errno.EIO, f"{where}: its overlay's upper layer: {e.strerror}") from None
            # (the caller asks whether the image makes that filesystem: restore writes nowhere else)
            return {"uncover": True, "layer_dev": f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"}
        raise FsError(errno.EOPNOTSUPP, f"{where}: removed while in use on an overlay a user namespace "
                                        "mounted without userxattr, a directory of a lower layer (a whiteout "
                                        f"has its name in the upper layer) whose lower directory {why}: "
                                        "restore cannot make it again there (no opaque xattr); mount the "
                                        "overlay with userxattr, or leave the directory before dumping")

    def uncover_layer(self, sb: dict) -> dict | None:
        """The upper layer's record: restore takes an uncovered ghost's whiteout out of it."""
        upper = [p for key, p in layer_paths(sb["super_opts"]) if key == "upperdir"]
        return next((x for x in sb.get("layers") or () if upper and x["path"] == upper[0]), None)

    def plan(self, sid: str, sb: dict, plan) -> None:
        """Record the layers as (mount, path) as they were at the overlay's creation."""
        sb["layers"] = _layers(sid, sb, plan)
        _check_remountable(sb, sb["layers"], plan, _where(sid, plan))

    def plan_detached(self, sid: str, sb: dict, plan, ns_name: str, made: dict) -> None:
        """An overlay only a detached mount shows (lazily unmounted while a process keeps a file on
        it): its layers resolved in the namespace of that process, the likely maker, with the checks
        a visible overlay's get (a layer moved or gone since is refused)."""
        unique = plan.strategy.layers == "unique-ids"
        sb["layers"] = _layers_in(sid, sb, plan, ns_name, made, unique, f"detached mount {made['id']} on overlay")

    def create(self, sid: str, sb: dict, ctx, where: str) -> int:
        ctx.join_files()  # overlayfs wants its layers complete
        binds: list[tuple[str, int]] = []
        try:
            detached = {x["mnt"] for x in sb["layers"] if x.get("detached")}
            for path, mnt, rel in yard_binds(sb["layers"]):
                # (a layer on a detached mount: its mount lazily unmounted after the overlay was made)
                layer = (ctx.detached if mnt in detached else ctx.mounts).get(mnt)
                if layer is None:
                    raise FsError(errno.EINVAL, f"{where}: its layers at {path} lie on mount {mnt}, which "
                                                "is not in the image")
                ctx.check_host_layer(sid, sb, layer, rel, where)   # (a rootless tree's: its user's reach)
                # The layer directory on the layer's superblock (a detached source, not the attached mount).
                base, root_rel = ctx.source_of(layer)
                inner = "/".join(x for x in (root_rel, rel.strip("/")) if x)
                binds.append((path, kernel.openat2(base, inner, os.O_PATH | os.O_DIRECTORY, _BENEATH)
                              if inner else os.dup(base)))
            if _volatile(sb["super_opts"]):
                _clear_volatile_mark(sb, ctx)
            _uncover(sid, sb, ctx, where)
            ctx.to_service()  # the layers are cloned from the service namespace
            return create(sb["source"], sb["super_opts"], binds, ctx.owner_userns(sb))
        finally:
            for _, fd in binds:
                os.close(fd)


TYPE = register(OverlayType("overlay", layers=True, ghosts_through=True, magic=kernel.OVERLAYFS_MAGIC, path_opts=frozenset(LAYER_KEYS),
                            requires=("overlay",)))
