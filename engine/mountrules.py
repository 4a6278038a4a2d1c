"""Dump's rules for mounts (and files on them) restore cannot make again, asked twice: of the running tree, before it
is stopped (engine/prestop.py: a refusal leaves it untouched), and of the stopped tree while dump
plans the image (engine/dump.py: the authority, for what changed in between).

Each rule reads only what mountinfo shows (mount entries as dump's image has them: id, mountpoint,
root without its `//deleted` mark and `ghost` when it had one, fstype, sb, external) and what a type
declares; none looks at files, archives or devices, so both callers give the same answer on the same
tree. Which superblocks are external (declared, or a namespace root made outside the dump) is dump's
decision: `built_outside` says it for a namespace root, prestop works it out the same way where it
can (engine/prestop.py `_externals`).
"""

from __future__ import annotations

import errno
import stat

from engine import fs
from engine.image import INODE_FLAGS, is_beneath


def unknown_externals(ext_mnts, used) -> None:
    """Refuse --external mnt[MOUNTPOINT] declarations (`ext_mnts`) that name no mount point of the
    tree's own namespace (`used`: those that do)."""
    unknown = set(ext_mnts) - set(used)
    if unknown:
        raise fs.FsError(errno.ENOENT, f"--external: no mount at {', '.join(sorted(unknown))} in the dumped namespace")


def mark_roots(mntns_doc: dict, superblocks: dict, plan, root_ns: str | None, skip=frozenset()) -> None:
    """Mark each namespace root that came from outside external (criu's --root), as restore takes it:
    one of an external superblock that no external mount of it holds, one `built_outside`
    (its superblock external too). Refuses a nested namespace's root on layers no mount reaches
    (`nested_root`). `skip`: superblocks whose answer is not known yet (prestop's)."""
    for ns_name, ns in mntns_doc.items():
        root = next(e for e in ns["mounts"] if e["id"] == ns["root"])
        if root["external"] or root["sb"] in skip:
            continue
        sb = superblocks[root["sb"]]
        if sb["external"]:
            if not any(e["external"] and e["sb"] == root["sb"] and is_beneath(root["root"], e["root"])
                       for n in mntns_doc.values() for e in n["mounts"]):
                root["external"] = "root"
        elif built_outside(root["sb"], sb, plan):
            nested_root(ns_name, root_ns, root, sb, plan)
            root["external"] = "root"
            sb["external"] = True


def built_outside(sid: str, sb: dict, plan) -> bool:
    """Whether the superblock `sb` of a namespace root (not declared external) was made outside the
    dumped namespaces, so that restore takes the root as a directory (criu's --root): a type mntcr
    cannot make, a block device nobody declared (`sb["device"]` as dump planned it), a type bound to
    a namespace that is not a content type, or a root its type says was built outside (on layers no
    mount of the namespace holds)."""
    h = fs.lookup(sb["fstype"])
    return (h is None or bool((sb.get("device") or {}).get("unresolved")) or not (h.content or h.ns is None)
            or h.made_outside(sid, sb, plan))


def nested_root(ns_name: str, root_ns: str | None, root: dict, sb: dict, plan) -> None:
    """Refuse the root of a nested mount namespace (`ns_name`, not the tree's own `root_ns`) on a
    layered superblock (`sb` of mount entry `root`) whose type says it was made outside (on layers no
    mount of the dump reaches): a process of the tree made it in that namespace, then pivoted away
    from what held its layers, as systemd-nspawn's volatile mode does with its in-memory upper layer;
    no path leads to those files, and --root gives back the tree's own root, not a nested one."""
    h = fs.lookup(sb["fstype"])
    if ns_name == root_ns or h is None or not h.layers or not h.made_outside(root["sb"], sb, plan):
        return
    raise fs.FsError(errno.EOPNOTSUPP, f"mount {root['id']} (/ of mount namespace {ns_name}) on {sb['fstype']}: a "
                                       "nested namespace's root built from layers no mount of the dumped tree "
                                       "reaches (made before the namespace pivoted away from them, as "
                                       "systemd-nspawn's volatile mode does): their files cannot be dumped")


def own_mount(e: dict, sb: dict) -> None:
    """Refuse a mount `e` of a superblock dump makes again (`sb`, not external) that restore cannot
    make: a type mntcr cannot dump, a root a new instance lacks that its type cannot make (`held_root`:
    a pty is made, `held_roots` asks that the tree holds its master), a block device nobody declared (`sb["device"]` as dump planned it: prestop has none), a
    deleted root on a type whose files are not dumped."""
    handler = fs.lookup(e["fstype"])
    if handler is None:
        raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: not "
                                           f"supported; declare it with --external mnt[{e['mountpoint']}]:KEY")
    if handler.fresh_roots is not None and e["root"] not in handler.fresh_roots and not handler.held_root(e["root"]):
        raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its root "
                                           f"{e['root']} exists only in the instance it was bound from (LXC's "
                                           "/dev/console is a host pty); declare it with --external "
                                           f"mnt[{e['mountpoint']}]:KEY (restore binds the host path given "
                                           "for KEY, e.g. a new console)")
    dev = sb.get("device") or {}
    if dev.get("unresolved"):
        what = f"block device {dev['dev']}" if dev.get("dev") else "its block device"
        devflag = f"--external dev[{dev.get('dev') or 'MAJ:MIN'}]:KEY"
        if e["root"] == "/":
            how = (f"declare it with {devflag} (the device is mounted again at restore), or the mount "
                   f"with --external mnt[{e['mountpoint']}]:KEY (a host path is bound back)")
        else:
            # A volume: a directory of the host's filesystem, never the whole device again.
            how = (f"declare the mount with --external mnt[{e['mountpoint']}]:KEY (restore binds the host "
                   f"path given for KEY; {devflag} would mount the whole filesystem again)")
        raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: {what} "
                                           f"is not external; {how}")
    if e.get("ghost") and not handler.content:
        raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its "
                                           f"root {e['root']} was deleted; only a {fs.content_names()} "
                                           "can hold it again")


def held_roots(mntns_doc: dict, superblocks: dict, held, skip=frozenset()) -> None:
    """Refuse a mount of a superblock dump makes again whose root restore makes by opening an object
    of the new instance (a type's `held_root`: a pty of a devpts bound as /dev/console) when no
    process of the tree holds that object (`held`: (superblock's "MAJ:MIN", root) pairs the fd kinds
    saw): it lives outside the tree (LXC's monitor holds the console's master), and restore would
    make it with nobody holding it. `skip`: superblocks whose answer is not known yet (prestop's)."""
    for ns in mntns_doc.values():
        for e in ns["mounts"]:
            sb = superblocks[e["sb"]]
            if e["external"] or sb["external"] or e["sb"] in skip or e.get("ghost"):
                continue
            handler = fs.lookup(e["fstype"])
            if handler is None or not handler.held_root(e["root"]) or (sb["dev"], e["root"]) in held:
                continue
            raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its root "
                                               f"{e['root']} is made again only with what holds it (a pty's "
                                               "master), which no process of the tree holds (LXC binds a pty "
                                               "whose master its monitor holds); declare it with "
                                               f"--external mnt[{e['mountpoint']}]:KEY (restore binds the host "
                                               "path given for KEY, e.g. a new console)")


def ghost_names(e: dict, other: dict, same_file: bool) -> None:
    """Refuse mount `e` whose deleted root has the name of `other`'s, another mount of the same
    superblock with a deleted root, when they are not one file (`same_file`): restore makes one file
    a name (bwrap's --bind-data files when mkstemp repeats a name)."""
    if same_file:
        return
    raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}): its deleted root {e['root']} has the "
                                       "name of another deleted file of its filesystem, the root of mount "
                                       f"{other['id']} ({other['mountpoint']}): restore makes one file a name; "
                                       "not supported")


def external_mount(e: dict, ext_roots) -> None:
    """Refuse a mount `e` of an external superblock that is not itself external, which restore binds
    from an external mount of that superblock (`ext_roots`: their roots): a deleted root (no archive
    holds it), or a root beneath none of them."""
    if e.get("ghost"):
        # (systemd-nspawn binds a host file as the container's boot_id and deletes it: on a host
        # whose /run is a filesystem outside the dump, no archive can hold it)
        raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its root "
                                           f"{e['root']} was deleted on a filesystem from outside the dump; "
                                           f"declare it with --external mnt[{e['mountpoint']}]:KEY and give "
                                           "restore the file to bind there (--external mnt[KEY]:HOSTPATH)")
    if not any(is_beneath(e["root"], r) for r in ext_roots):
        raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its files lie "
                                           "outside every external mount of the same filesystem; declare it too "
                                           f"with --external mnt[{e['mountpoint']}]:KEY (restore: --external "
                                           "mnt[KEY]:HOSTPATH)")


def deleted_file(where: str, sb: dict | None, mode: int) -> None:
    """Refuse a file a process holds open under a deleted name (`where` names it) that restore cannot
    make again: one on a mount in no dumped namespace (`sb` None: detached, or outside the dump), on a
    superblock that cannot hold it again (external, or a type without ghosts: fs.holds_ghosts), or neither a regular
    file, a FIFO, a device node, a symlink nor a directory (`mode`)."""
    if sb is None:
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: a deleted file on a detached mount or one outside the dumped "
                                           "namespaces: not supported yet")
    if sb["external"] or not fs.holds_ghosts(sb["fstype"]):
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: a deleted file on {sb['fstype']} (only a "
                                           f"{fs.ghost_names()} made in the dumped tree can hold it again)")
    # (a device node is archived as a node, its device numbers only: CRIU's deleted_dev; a symlink
    # as a symlink: CRIU's symlink01 holds one by an O_PATH fd)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) or stat.S_ISLNK(mode)):
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: only deleted regular files, FIFOs, device nodes, "
                                           "symlinks and directories are supported")


def uncover_layer(where: str, layer_sb: dict | None) -> None:
    """Refuse a removed directory restore would uncover (a type's `deleted_dir`: {"uncover": True})
    in a layer on a filesystem the image does not make (`layer_sb` None: none of the tree's; or
    external): restore takes a whiteout out of that layer, and writes nothing on the host's files."""
    if layer_sb is None or layer_sb.get("external"):
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: removed while in use on an overlay a user namespace "
                                           "mounted without userxattr, a directory of a lower layer, whose "
                                           "upper layer lies on a filesystem the dump does not make (the "
                                           "host's: restore writes nothing there): restore cannot make it "
                                           "again (no opaque xattr); mount the overlay with userxattr, or "
                                           "leave the directory before dumping")


def ghost_attrs(where: str, attrs: int) -> None:
    """Refuse a deleted file or directory (`where` names it) that restore would make again from its
    own archive (a ghost, engine/ghosts.py: no other name of it is dumped) when it has inode
    attributes tar keeps none of (`attrs`, statx's: chattr i, a, d): restore makes it, opens it and
    unlinks it again, and sets none of them on it (an immutable or append-only file could not be
    unlinked). Not supported: refused rather than lost."""
    have = attrs & INODE_FLAGS
    if have:
        letters = "".join(c for bit, c in ((0x10, "i"), (0x20, "a"), (0x40, "d")) if have & bit)
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: deleted, with inode attributes (chattr +{letters}) restore "
                                           f"cannot set on a deleted file: clear them (chattr -{letters} through "
                                           "its /proc/PID link) or let the file go before dumping")


def deleted_mapping(where: str, sb: dict | None, mode: int) -> None:
    """Refuse a file a process maps under a deleted name (`where` names it) that restore cannot map
    again: what `deleted_file` refuses. (A deleted name of a file that keeps another name is mapped
    from that name, as an fd is opened: placement.want_linked; glibc's sem_open maps its temporary
    name, unlinked once the semaphore's name is linked.)"""
    deleted_file(where, sb, mode)


def executable(where: str, mode: int, noexec: bool) -> None:
    """Refuse an executable (`where` names it) that is no longer one: its x bits cleared or its
    mount made noexec since the exec. Restore makes the file the stand-in's /proc/PID/exe
    (engine/mappings.py become_exe), which the kernel refuses for such a file, failing the restore."""
    why = "on a noexec mount" if noexec else None if mode & 0o111 else f"mode {stat.S_IMODE(mode):04o}, no x bit"
    if not stat.S_ISREG(mode):
        why = "not a regular file"
    if why:
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: not executable any more ({why}): restore could not make it the "
                                           "process's executable again")


def device_outside(where: str, mode: int, nodev: bool) -> None:
    """Refuse a device node (`where` names the fd) opened through a mount outside the dumped
    namespaces whose path in the tree reaches it on a nodev mount (`nodev`): restore opens it there
    (engine/placement.py `_place_fd`, outside), which the kernel refuses for a device."""
    if nodev and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        raise fs.FsError(errno.EOPNOTSUPP, f"{where}: a device opened through a mount outside the dumped "
                                           "namespaces, whose path there lies on a nodev mount: restore could not "
                                           "open it again (give the tree the device on a mount without nodev, e.g. "
                                           "bwrap --dev-bind /dev/null /dev/null, or reopen it inside)")


def unknown_external_files(ext_files, used) -> None:
    """Refuse --external file[PATH] declarations (`ext_files`) no process of the tree holds open
    (`used`: the paths some fd shows)."""
    unknown = set(ext_files) - set(used)
    if unknown:
        raise fs.FsError(errno.ENOENT, f"--external file[]: no process of the tree has {', '.join(sorted(unknown))} "
                                       "open")
