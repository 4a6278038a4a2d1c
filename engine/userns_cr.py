"""Checkpoint/restore of user namespaces: what dump records, what restore rebuilds.

Dump (`plan`): every user namespace of the tree below the dumper's own gets a
record ``user-N`` (parent, uid and gid maps in the dumper's ids, setgroups);
a process in one names it and its credentials there (inside ids; supplementary groups it does not
map, held from before it, in the dumper's ids: engine/userns_groups.py); a mount
namespace owned by one names its owner, and its mounts say whether they are
locked and which of their flags are (engine/mntlocks.py probes it).

An idmapped mount gets its map (``idmap``: statmount's view, in the dumper's
ids); restore gives its detached clone a user namespace with that map
(mount_setattr MOUNT_ATTR_IDMAP) before attaching it.

Restore (`Rebuild`): the user namespaces are made first (engine/userns.make).
A mount namespace owned by one is assembled as usual up to its locked mounts
(with only their locked flags), then copied from inside its user namespace, so
that the kernel locks exactly those mounts and flags (engine/userns.
copy_mntns_into); the copy replaces it and its own (unlocked) mounts are
attached to the copy afterwards. A root that holds the mount lock without flag
locks (pivoted into) is pivoted into again after the copy; an unlocked root (bound
inside the user namespace: ch-run) is cloned and mounted over the locked copy. Locked mounts below
an unlocked mount (a recursive bind made inside the user namespace) are made
with it: the subtree is locked by a copy of a scratch namespace and bound
recursively from inside the user namespace (Rebuild.lock_subtree). Last, each stand-in joins its user namespace
and takes its credentials there.

A process whose pid, uts, ipc, net or cgroup namespace its own user namespace
made (rootless podman, `unshare -Urp`) gets ``userns_first``: its stand-in
starts inside the user namespace (engine/standin.spawn_in_userns) so that what
it makes belongs there. Where its mount namespace is another's (`unshare -rpf`
without -m) it gets ``enter_first`` too: its stand-in, and its descendants', are
forked late, once every mount exists, entering the mount namespace, root and cwd
before the user namespace (so are the processes in a namespace such a late process
is the first in: its pid 1 sibling's, one joined with setns, `bwrap --pidns FD`).
A pid namespace owned by an ancestor of its user
namespace is made there first (``userns_start``); its other namespaces other user
namespaces own are made by helpers and joined before it enters (``ns_made_in``), as
are a late process's own ipc and net namespaces, made before restore fills them. Its children's
pid namespace, made there too before it entered its own (`unshare -p` then `unshare -U`), its
stand-in makes there as well (``pidns_children_early``), and forks every child into it.

What is refused (at dump, the tree keeps running): namespaces owned by a user
namespace a stand-in could neither make them in nor join them from (owners not
at or below the one its parent's stand-in is in; a pid namespace of neither its
own user namespace nor an ancestor's, or of the dumper's while its parent's stand-in is inside one); a
process in a user namespace above the one its parent's stand-in is in (forked before its parent entered
that one: check_forked_inside); a late process (``enter_first`` and its
descendants) with a superblock of a namespace it is the first in (asked before the stop too: engine/
prestop.py); idmapped mounts on a
kernel that does not tell their map (before 6.15); a mount namespace whose locked mounts are not all older than its unlocked ones
(its root, made first at restore, and those below an unlocked mount aside: see lock_groups); locked mounts below an unlocked mount whose
atime is not locked, or covered there.
"""

from __future__ import annotations

import errno
import os
import stat

from engine import channel, mountinfo, remount, userns
# (engine/mntlocks.py, sbowner.py, subids.py and topology.py: imported by the dump-side functions that
# use them, for a tree with user namespaces; restore's Rebuild needs none of them)

FLAG_NAMES = ("ro", "nosuid", "nodev", "noexec")
# Namespaces the restorer makes ahead for a stand-in that starts in its user namespace, joined
# before it enters ("ns_before_userns")
EARLY_NS = ("uts", "ipc", "pid", "net", "cgroup")
# Filesystems the kernel checks against what is already visible when one is mounted in a user
# namespace (FS_USERNS_VISIBLE): the new mount takes the visible one's locked ro and atime. A
# stand-in in the user namespace makes them the same way, so such an unlocked mount with those
# locked flags comes back as it was.
_USERNS_VISIBLE = ("proc", "sysfs")


class UsernsError(OSError):
    """A tree or image this module cannot handle; one line."""

    def __reduce__(self):
        return (type(self), (self.errno, self.strerror))


# --- dump ---------------------------------------------------------------------------------------

def _dumpable(pid: int, euid: int, egid: int) -> bool:
    """Whether `pid` is dumpable: the kernel gives its /proc/PID files (not the directory) its
    effective ids when it is, else the root of its memory's user namespace. (Its stand-in changes
    ids, which clears "dumpable": it sets it back.) Where that root is the process's own ids, both
    read as dumpable, and restore gives the same owner."""
    st = os.stat(f"/proc/{pid}/status")
    return (st.st_uid, st.st_gid) == (euid, egid)


def _memory_in_userns(pid: int, maps: userns.Maps) -> bool:
    """Whether undumpable `pid`'s /proc files belong to the root of its own user namespace (its
    memory was made by an exec there: a daemon that dropped its ids in a container), not to the
    host's root (a process that made the namespace after its exec). That root being the dumper's
    own root, the two read alike: False (its stand-in need not execute again, engine/reexec.py)."""
    root = (userns.outside([0], maps.uid_map)[0], userns.outside([0], maps.gid_map)[0])
    st = os.stat(f"/proc/{pid}/status")
    return root != (0, 0) and (st.st_uid, st.st_gid) == root


def _creds(pid: int, maps: userns.Maps) -> dict | None:
    """The ids of `pid` inside its user namespace, and as "unmapped_groups" (the dumper's ids) the
    supplementary groups it does not map (held since before the namespace: `unshare -r` by a user
    of several groups; its stand-in holds them before it enters: engine/userns_groups.py); None
    when they are the dumper's root, unmapped."""
    from engine import kernel
    fields = {k: [int(x) for x in v.split()] for k, v in kernel.proc_status(pid, ("Uid", "Gid", "Groups")).items()}
    groups = fields.get("Groups", [])
    here = userns.inside(groups, maps.gid_map)
    out = {"uid": userns.inside(fields["Uid"], maps.uid_map), "gid": userns.inside(fields["Gid"], maps.gid_map),
           "groups": [g for g in here if g is not None]}
    if None not in out["uid"] + out["gid"]:
        unmapped = sorted(g for g, h in zip(groups, here) if h is None)
        if unmapped:
            out["unmapped_groups"] = unmapped
        out["dumpable"] = _dumpable(pid, fields["Uid"][1], fields["Gid"][1])
        if not out["dumpable"] and _memory_in_userns(pid, maps):
            out["memory_in_userns"] = True
        return out
    if set(fields["Uid"] + fields["Gid"] + groups) == {0}:
        # The dumper's root, unmapped there (a namespace made by root that never switched ids): a
        # stand-in keeps its own ids, which are those.
        return None
    bad = [f"{what} {i}" for what, ids in (("uid", fields["Uid"]), ("gid", fields["Gid"]))
           for i, h in dict(zip(ids, out[what])).items() if h is None]
    raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} "
                                        "not mapped in its user namespace: not supported yet")


def _check_owner_groups(pid: int, creds: dict) -> None:
    """Refuse (before the stop) supplementary groups of `pid` its user namespace does not map that
    restore would refuse: the owner of the outermost namespace a non-root user made above it must
    have them on this machine (engine/ownergroups.py; the image validator asks the same)."""
    from engine import ownergroups
    if not creds.get("unmapped_groups"):
        return
    owned = userns.outermost_owned(pid)
    if owned is None:
        return   # (root made them all: root could give any group)
    line = ownergroups.refusal(f"process {pid}", creds["unmapped_groups"], owned[0].gid_map, owned[1])
    if line is not None:
        raise UsernsError(errno.EOPNOTSUPP, line)


def plan(tree, names: dict, ns_kinds) -> dict:
    """The user-namespace part of the image for `tree` [(pid, ppid)]: {"userns": {...},
    "proc": {pid: {"userns": id, "creds": {...}}}, "mntns_owner": {mnt ns name: userns id}}.
    Raises UsernsError for what restore cannot rebuild."""
    from engine import kernel
    p = _Plan()
    ns_ino = {pid: {k: kernel.ns_ino(pid, k) for k in ns_kinds} for pid, _ in tree}
    for pid, ppid in tree:
        if None in ns_ino[pid].values():
            continue  # exited (a zombie has no namespaces): nothing of its own to restore here
        own = p.own_of[pid] = p.users.of_pid(pid)
        p.record_creds(pid, own)
        mnt_owner = p.users.owner_of(pid, "mnt")
        oname = p.name(mnt_owner)
        if oname is not None:
            p.owners[names[("mnt", ns_ino[pid]["mnt"])]] = oname
        first, made_in = p.made_where(pid, ppid, own, mnt_owner, ns_ino, ns_kinds)
        if made_in:
            p.record_made_in(pid, ppid, own, mnt_owner, made_in, first)
        if first:
            p.record_first(pid, ppid, own, mnt_owner)
        p.check_forked_inside(pid, ppid, own)
        p.record_stand(pid, ppid)
        p.check_late(pid, ppid, mnt_owner, ns_ino)
    p.check_late_shared(tree, ns_ino, names)
    from engine import userns_groups   # (it builds on this module)
    out = p.result()
    userns_groups.check(tree, out)   # (groups of namespaces that deny setgroups: engine/userns_groups.py)
    return out


class _Plan:
    """What plan() learns, process by process: the user namespaces met (named user-1.. from the
    dumper's down), each process's user namespace, ids and where its namespaces are made."""

    def __init__(self):
        self.users = userns.UsernsTree()
        self.ids: dict[int, str] = {}
        self.doc: dict[str, dict] = {}
        self.procs: dict[int, dict] = {}
        self.owners: dict[str, str] = {}
        self.own_of: dict[int, int] = {}
        self.stand: dict[int, int] = {}   # pid -> the user namespace its stand-in starts in or inherits
        self.first_kinds: dict[int, list[str]] = {}   # pid -> its namespaces its own user namespace made
        self.late: set[int] = set()   # "enter_first" processes and their descendants (check_late)
        self.late_ns: list[str] = []   # names of the namespaces a late process is the first in
        self.late_bound: list[str] = []   # the same as an nsfs root shows them ("pid:[N]")
        self.first_in: dict[tuple[str, int], int] = {}   # (kind, inode) -> the tree's first process in it

    def name(self, key: int) -> str | None:
        """The image id of user namespace `key` (its ancestors named first); None for the dumper's."""
        users = self.users
        if key == users.top:
            return None
        if key not in self.ids:
            parent = users.parent(key)
            if parent is None:
                raise UsernsError(errno.EOPNOTSUPP, "a user namespace outside the dumper's: cannot be dumped")
            pname = self.name(parent)
            self.ids[key] = f"user-{len(self.ids) + 1}"
            maps = users.maps(key)
            if maps.owner:
                # Restore refuses maps the owner could not have written here (engine/subids.py).
                from engine import subids
                line = subids.owned_refusal(self.ids[key], maps.owner, pname is None, maps.uid_map, maps.gid_map,
                                            maps.setgroups)
                if line is not None:
                    raise UsernsError(errno.EPERM, line)
            self.doc[self.ids[key]] = {"parent": pname, "uid_map": [list(r) for r in maps.uid_map],
                                       "gid_map": [list(r) for r in maps.gid_map], "setgroups": maps.setgroups,
                                       "owner": maps.owner}
            if users.limits(key):
                self.doc[self.ids[key]]["limits"] = users.limits(key)
        return self.ids[key]

    def record_creds(self, pid: int, own: int) -> None:
        """The process's user namespace and its ids there."""
        uname = self.name(own)
        if uname is not None:
            self.procs[pid] = {"userns": uname}
            creds = _creds(pid, self.users.maps(own))
            if creds is not None:
                _check_owner_groups(pid, creds)
                self.procs[pid]["creds"] = creds
        else:
            # In the dumper's user namespace under other ids than root's (bwrap's unprivileged
            # monitor): its stand-in takes them last, too.
            ident = userns.Maps(((0, 0, (1 << 32) - 1),), ((0, 0, (1 << 32) - 1),), "allow")
            creds = _creds(pid, ident)
            # (root with supplementary groups, e.g. runc's group 0, or group 0 as initgroups leaves it:
            # schroot, su, cron; a stand-in would keep the restorer's, none)
            if creds is not None and (set(creds["uid"] + creds["gid"]) != {0} or creds["groups"]):
                self.procs[pid] = {"creds": creds}

    def made_where(self, pid: int, ppid, own: int, mnt_owner: int, ns_ino: dict, ns_kinds) -> tuple[bool, dict]:
        """(first, made_in): whether the process made namespaces of its own from inside its user
        namespace (its stand-in starts there: "userns_first"), and {kind: owner} of those another
        user namespace owns (a helper makes them inside that one)."""
        users = self.users
        # Namespaces this process's user namespace owns (besides mount namespaces) are made by its
        # stand-in from inside it: the stand-in starts there ("userns_first").
        first = False
        first_kinds: list[str] = []
        outside: list[str] = []
        made_in: dict[str, int] = {}
        for kind in ns_kinds:
            if kind == "mnt":
                continue
            owner = users.owner_of(pid, kind)
            inherited = ppid in ns_ino and ns_ino[ppid][kind] == ns_ino[pid][kind]
            if owner == users.top and not inherited and not _dumpers(kind, ns_ino[pid][kind]):
                outside.append(kind)
            if owner == users.top and not inherited and kind == "pid" and self.stand.get(ppid) is not None:
                self._refuse_top_pid(pid, self.stand[ppid])
            if owner == users.top or inherited:
                continue
            if owner != own:
                # Made before its user namespace (unshare -p, then -U in the child) or joined (setns)
                # from another one: a stand-in makes namespaces only in the user namespace it starts
                # in, so restore has a helper make this one inside its owner, and the stand-in
                # (still the restorer's) joins it (Rebuild.premade).
                made_in[kind] = owner
                continue
            first = True
            first_kinds.append(kind)
        self.first_kinds[pid] = first_kinds
        if first and mnt_owner != own and "pid" not in first_kinds and "pid" not in made_in:
            # Its stand-in could not enter its mount namespace from inside its user namespace: it
            # stays the restorer's, and a helper makes these namespaces there (as for joined ones).
            made_in = {**made_in, **{kind: own for kind in first_kinds}}
            first = False
        if first and outside:
            self.record_outside(pid, ppid, own, outside)
        return first, made_in

    def _refuse_top_pid(self, pid: int, at: int) -> None:
        """Refuse a pid namespace of the dumper's user namespace, not the parent's (made by the
        parent before it entered its own: `unshare -p` then `unshare -U`), where the parent's stand-in
        is inside user namespace `at`: a pid namespace has no process to be made ahead in, and that
        stand-in could neither make it there nor join it (it came back owned by `at`)."""
        raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its pid namespace, not its parent's, belongs to the "
                                            "dumper's user namespace, which the stand-in of its parent, inside "
                                            f"{self.users.describe(at)}, could neither make nor join: not "
                                            "supported yet")

    def record_outside(self, pid: int, ppid, own: int, outside: list[str]) -> None:
        """A process whose stand-in starts in its user namespace but whose `outside` namespaces the
        dumper's user namespace owns (the tree's root in a container's uts and ipc namespaces, made
        before `unshare -U`): the restorer makes them and the stand-in joins them before it enters
        ("ns_before_userns"), else they would belong to its user namespace. Refused where its
        parent's stand-in, already inside that user namespace, would fork it."""
        parent = self.procs.get(ppid, {})
        if parent.get("userns_first") and self.own_of.get(ppid) == own:
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {outside[0]} namespace belongs to the dumper's "
                                                "user namespace, not its own, and its parent made namespaces inside "
                                                "that user namespace too: not supported yet")
        self.procs.setdefault(pid, {})["ns_before_userns"] = sorted(outside)

    def record_made_in(self, pid: int, ppid, own: int, mnt_owner: int, made_in: dict, first: bool) -> None:
        """Where the namespaces other user namespaces own are made ("userns_start", "ns_made_in"),
        or refuse what a stand-in could not do."""
        users, procs = self.users, self.procs
        if first and self._pid_above(pid, ppid, own, made_in):
            return
        at = self.stand.get(ppid)
        if first and "pid" not in made_in and (at is None or self._reachable_from(at, list(made_in.values()))):
            # Its stand-in starts in its user namespace and joins these first, made by a helper
            # inside their owners (Rebuild.premade, Rebuild.early), where the parent's stand-in is.
            procs.setdefault(pid, {})["ns_made_in"] = {k: self.name(o) for k, o in made_in.items()}
            return
        if first:
            kind = next(iter(made_in))
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {kind} namespace belongs to "
                                                f"{users.describe(made_in[kind])}, others of its namespaces to "
                                                f"its own user namespace ({users.describe(own)}): not supported "
                                                "yet")
        at = self.stand.get(ppid)
        if at is not None and (made_in.get("pid") == at or self._children_early(pid, ppid, made_in)):
            # Its pid namespace's owner is the user namespace its parent's stand-in is inside, or
            # passed through before it entered its own: the stand-in's fork makes it there, as the
            # parent did.
            made_in = {k: o for k, o in made_in.items() if k != "pid"}
        below = "pid" not in made_in or _is_ancestor(users, at, made_in["pid"])
        if at is not None and not self._reachable_from(at, [own, *made_in.values()], below):
            # (its parent's stand-in, which forks its, is inside user namespace `at`, which can make
            # and join only namespaces owned at or below it, and start it only below: userns_start)
            owners = ", ".join(sorted(set(map(users.describe, made_in.values() or [own]))))
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {', '.join(sorted(made_in) or ['user'])} "
                                                f"namespaces belong to "
                                                f"{owners} (its own user namespace: {users.describe(own)}), which the "
                                                f"stand-in of its parent, inside {users.describe(at)}, could neither "
                                                "make nor join: not supported yet")
        if "pid" in made_in:
            # A pid namespace cannot be made ahead and joined (it has no init to open it by):
            # the stand-in starts inside its owner, makes it there, and joins its own user
            # namespace last, which must lie below; so must its mount namespace's owner.
            o = made_in["pid"]
            where = f"its pid namespace belongs to {users.describe(o)}"
            if not _is_ancestor(users, o, own):
                raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: {where}, which is no ancestor of its own "
                                                    f"({users.describe(own)}; joined with setns): not supported yet")
            procs.setdefault(pid, {})["userns_start"] = self.name(o)
            rest = {k: self.name(x) for k, x in made_in.items() if x != o}
            if rest:
                # Owned by a third user namespace (`unshare -u` between two `unshare -U`): made there
                # by a helper and joined by the stand-in, still the restorer's, before it enters `o`
                # (Rebuild.early; joined_before).
                procs[pid]["ns_made_in"] = rest
            if mnt_owner != o and not _is_ancestor(users, o, mnt_owner):
                # A stand-in starting there could not enter its mount namespace: it enters it first,
                # forked late (as `unshare -rpf` without -m: record_first).
                procs[pid]["enter_first"] = True
        elif made_in:
            procs.setdefault(pid, {})["ns_made_in"] = {k: self.name(o) for k, o in made_in.items()}

    def _children_early(self, pid: int, ppid, made_in: dict) -> bool:
        """Whether `pid`'s pid namespace is its parent's children's (`unshare -p`, then `unshare -U`
        and a fork), owned by the user namespace above its own the parent's stand-in starts in
        (``userns_start`` with ``userns_first``): that stand-in makes it there before it enters its
        own (``pidns_children_early``), and forks every child into it: a child in the parent's own
        pid namespace was forked before the parent entered its user namespace, and stays in the one
        above, which check_forked_inside refuses."""
        from engine import kernel
        parent = self.procs.get(ppid, {})
        o = made_in.get("pid")
        if o is None or not parent.get("userns_first") or parent.get("userns_start") != self.name(o):
            return False
        if kernel.ns_ino(pid, "pid") != kernel.ns_ino(ppid, "pid_for_children"):
            return False
        parent["pidns_children_early"] = True
        return True

    def _pid_above(self, pid: int, ppid, own: int, made_in: dict) -> bool:
        """For a process whose stand-in starts in its user namespace: whether its pid namespace is
        owned by an ancestor of its own, which its parent's stand-in is in or can enter, so that its
        stand-in makes it there first (``userns_start``), then enters its own to make the rest; its
        other namespaces other user namespaces own (``ns_made_in``) made by helpers and joined
        before, where the parent's stand-in can join them."""
        o = made_in.get("pid")
        rest = {k: v for k, v in made_in.items() if k != "pid"}
        at = self.stand.get(ppid)
        if o is None or not _is_ancestor(self.users, o, own) or (at is not None and (
                (at != o and not _is_ancestor(self.users, at, o)) or not self._reachable_from(at, list(rest.values())))):
            return False
        self.procs.setdefault(pid, {})["userns_start"] = self.name(o)
        if rest:
            self.procs[pid]["ns_made_in"] = {k: self.name(v) for k, v in rest.items()}
        return True

    def _reachable_from(self, at: int, owners: list[int], ok: bool = True) -> bool:
        """Whether a stand-in inside user namespace `at` may join namespaces `owners` own (each at
        or below it), given `ok`."""
        return ok and all(o == at or _is_ancestor(self.users, at, o) for o in owners)

    def record_first(self, pid: int, ppid, own: int, mnt_owner: int) -> None:
        """The process's stand-in starts in its user namespace ("userns_first"), where it can."""
        users = self.users
        if mnt_owner != own and ("pid" in self.first_kinds[pid] or self.procs[pid].get("userns_start")):
            # `unshare -rpf` without -m: its stand-in, forked once every mount exists, enters its
            # mount namespace, root and cwd before its user namespace (restore's late stand-ins).
            self.procs[pid]["enter_first"] = True
        elif mnt_owner != own:
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: it made namespaces inside its user namespace "
                                                f"but its mount namespace belongs to another "
                                                f"({users.describe(mnt_owner)}; its own is {users.describe(own)}): "
                                                "not supported yet")
        # The parent's stand-in is still the restorer's (it joins its user namespace last) unless
        # it started in one itself, or was forked by one that did: then only that one can be
        # joined from it.
        parent_stand = self.stand.get(ppid)
        if parent_stand is not None and parent_stand != own and not _is_ancestor(users, parent_stand, own):
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: it made namespaces inside a user namespace "
                                                f"({users.describe(own)}) nested in its parent's "
                                                f"({users.describe(parent_stand)}), which made namespaces too: "
                                                "not supported yet")
        self.procs[pid]["userns_first"] = True

    def check_forked_inside(self, pid: int, ppid, own: int) -> None:
        """Refuse a process whose stand-in is a plain fork of its parent's, inside a user namespace
        (the parent's started in one), where its own user namespace is neither that one nor below
        it, so that the stand-in could not join it: a child forked before its parent made and
        entered its user namespace (`unshare -U` after a fork; its other namespaces, made or joined
        from inside its own, are owned there or below). Restore failed 'setns: Operation not
        permitted'."""
        at, rec = self.stand.get(ppid), self.procs.get(pid, {})
        if at is None or rec.get("userns_first") or rec.get("userns_start"):
            return
        if own != at and not _is_ancestor(self.users, at, own):
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its user namespace ({self.users.describe(own)}) "
                                                "is neither that of its parent's stand-in "
                                                f"({self.users.describe(at)}) nor below it, which forks its stand-in: "
                                                "not supported yet")

    def record_stand(self, pid: int, ppid) -> None:
        """Where the process's stand-in is until it takes its ids (restore's Rebuild._started_in):
        the user namespace it starts in, else its parent stand-in's, which its fork stays in."""
        rec = self.procs.get(pid, {})
        if rec.get("userns_first"):
            self.stand[pid] = self.own_of[pid]
        elif rec.get("userns_start"):
            self.stand[pid] = next(k for k, n in self.ids.items() if n == rec["userns_start"])
        elif ppid in self.stand:
            self.stand[pid] = self.stand[ppid]

    def check_late(self, pid: int, ppid, mnt_owner: int, ns_ino: dict) -> None:
        """Refuse what a stand-in forked late (its own "enter_first", or an ancestor's: restore forks
        them once every mount exists) could not make: namespaces other steps of restore fill before
        (ipc, net), a mount namespace its stand-in, inside a user namespace, could not join."""
        shared = self._shares_late(pid, ns_ino[pid])
        if not (self.procs.get(pid, {}).get("enter_first") or ppid in self.late or shared):
            return
        self.late.add(pid)
        why = "its stand-in, or an ancestor's, enters its mount namespace before its user namespace " \
              "(`unshare -rpf` without -m)"
        if ppid not in ns_ino:
            return
        for kind in ("ipc", "net"):   # (a cgroup namespace has no step of its own: its superblocks, see
            if ns_ino[pid][kind] != ns_ino[ppid][kind]:   # check_late_superblocks)
                self._premade_late(pid, ppid, kind, why)
        # (one that enters first does so before it leaves its parent stand-in's user namespace)
        stand = self.stand.get(ppid if self.procs.get(pid, {}).get("enter_first") else pid)
        if ns_ino[pid]["mnt"] != ns_ino[ppid]["mnt"] and stand is not None and mnt_owner != stand \
                and not _is_ancestor(self.users, stand, mnt_owner):
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its mount namespace belongs to "
                                                f"{self.users.describe(mnt_owner)}, outside the user namespace its "
                                                f"stand-in is in, and {why}: not supported yet")

    def _shares_late(self, pid: int, mine: dict) -> bool:
        """Whether `pid` is in a namespace whose first process in the tree's order is late (its
        sibling that is pid 1 of their pid namespace, a pid namespace joined with setns): its
        stand-in is forked late too, after that one's, and joins it (restore's Rebuild.late asks
        the same). Records the namespaces it is the first in (`first_in`)."""
        out = False
        for kind, ino in mine.items():
            if ino is not None:
                first = self.first_in.setdefault((kind, ino), pid)
                out = out or (first != pid and first in self.late)
        return out

    def _premade_late(self, pid: int, ppid, kind: str, why: str) -> None:
        """A late process's own ipc or net namespace, which restore fills (System V objects, devices,
        sysctls) before late stand-ins exist: made ahead by a helper inside its owner and joined by
        the stand-in (``ns_made_in``, as a namespace another user namespace made), unless the
        restorer makes it already (``ns_before_userns``). Refused where the stand-in, inside the
        user namespace its parent's is in, could not join it."""
        rec = self.procs.setdefault(pid, {})
        if kind in (rec.get("ns_before_userns") or ()) or kind in (rec.get("ns_made_in") or {}):
            return
        owner = self.users.owner_of(pid, kind)
        at = self.stand.get(ppid)
        if owner == self.users.top or (at is not None and not self._reachable_from(at, [owner])):
            where = "the dumper's user namespace" if owner == self.users.top else self.users.describe(owner)
            raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {kind} namespace, not its parent's, belongs to "
                                                f"{where}, which its stand-in could not join there, and {why}: "
                                                "not supported yet")
        rec["ns_made_in"] = {**(rec.get("ns_made_in") or {}), kind: self.name(owner)}

    def check_late_shared(self, tree, ns_ino: dict, names: dict) -> None:
        """Refuse a namespace a late process (check_late) is the first of the tree in, that another
        process, forked before it at restore, is in too: it would not exist yet. Those namespaces'
        names go to `late_ns` (check_late_superblocks)."""
        first: dict[tuple[str, int], int] = {}
        for pid, _ in tree:
            for kind, ino in ns_ino[pid].items():
                if ino is None:
                    continue
                maker = first.setdefault((kind, ino), pid)
                if maker == pid and pid in self.late and (kind, ino) in names:
                    self.late_ns.append(names[(kind, ino)])
                    self.late_bound.append(f"{kind}:[{ino}]")
                if maker in self.late and pid not in self.late:
                    raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {kind} namespace is that of process "
                                                        f"{maker}, whose stand-in enters its mount namespace before "
                                                        "its user namespace, late: not supported yet")

    def result(self) -> dict:
        """plan()'s document."""
        ids = self.ids
        return {"userns": self.doc, "proc": self.procs, "mntns_owner": self.owners, "late_ns": self.late_ns,
                "late_bound": self.late_bound,
                "ino_name": {key: n for key, n in ids.items()},
                "depth": {n: self.users.depth(k) for k, n in ids.items()}}


def _dumpers(kind: str, ino: int) -> bool:
    """Whether namespace `ino` of `kind` is the dumper's own (restore's stand-ins inherit the restorer's)."""
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino == ino
    except OSError:
        return False


def _is_ancestor(users: userns.UsernsTree, a: int, b: int) -> bool:
    """Whether learnt user namespace `a` is a strict ancestor of `b`."""
    cur = users.parent(b)
    while cur is not None:
        if cur == a:
            return True
        cur = users.parent(cur)
    return False


def check_late_superblocks(superblocks: dict, mntns: dict, users_plan: dict) -> None:
    """Refuse a superblock restore would make before the late stand-ins that it needs exist (a
    late process: one whose stand-in enters its mount namespace before its user namespace, or its
    descendant): one tagged with a namespace a late process is the first in (a proc of the pid
    namespace of `unshare -rpf`), or of a type bound to a namespace mounted only in mount
    namespaces late processes made (its maker is found among the processes that see it); and a
    bind of such a namespace on a file (`mount --bind /proc/PID/ns/pid_for_children F`: restore
    binds it before its first process exists). Asked before the stop (engine/prestop.py, with the
    superblocks its probes tagged) and once stopped."""
    from engine import fs
    late = set(users_plan.get("late_ns") or ())
    if not late:
        return
    _check_late_binds(mntns, late, set(users_plan.get("late_bound") or ()))
    early = {m["sb"] for name, ns in mntns.items() if name not in late for m in ns["mounts"]}
    why = "enters its mount namespace before its user namespace (`unshare -rpf` without -m), late: not supported yet"
    for sid, sb in superblocks.items():
        handler = fs.lookup(sb["fstype"])
        key = handler.ns_key if handler is not None else None
        if key and sb.get(key) in late:
            raise UsernsError(errno.EOPNOTSUPP, f"superblock {sid} ({sb['fstype']}): it belongs to {sb[key]}, made "
                                                f"by a process whose stand-in, or an ancestor's, {why}")
    for name in sorted(late & set(mntns)):
        for m in mntns[name]["mounts"]:
            handler = fs.lookup(superblocks[m["sb"]]["fstype"])
            if handler is not None and handler.ns and m["sb"] not in early:
                raise UsernsError(errno.EOPNOTSUPP, f"mount {m['id']} ({m['mountpoint']}) on "
                                                    f"{superblocks[m['sb']]['fstype']}: made in {name}, whose "
                                                    f"processes' stand-ins are forked late: the first {why}")


def _check_late_binds(mntns: dict, late: set[str], late_roots: set[str]) -> None:
    """Refuse a mount that binds a namespace a late process is the first in: by the image's name
    once the type planned it (`bound_ns`), by its root ("/pid:[N]") before the stop."""
    for ns in mntns.values():
        for m in ns["mounts"]:
            bound = m.get("bound_ns") if m.get("bound_ns") in late else \
                m["root"].lstrip("/") if m["root"].lstrip("/") in late_roots else None
            if bound is not None:
                raise UsernsError(errno.EOPNOTSUPP, f"mount {m['id']} ({m['mountpoint']}): it binds namespace {bound}, "
                                                    "whose first process's stand-in is forked late (it, or an "
                                                    "ancestor, enters its mount namespace before its user "
                                                    "namespace) and restore binds the namespace before: not "
                                                    f"supported yet; unmount it before dump (umount "
                                                    f"{m['mountpoint']}, in the tree's mount namespace)")


def sb_owner_candidates(tree, users_plan: dict) -> list[tuple[str, int]]:
    """(user-N, fd) for each user namespace of the image, deepest first (engine/sbowner.probe):
    opened from a process in it or one of whose namespaces it owns."""
    want = users_plan["ino_name"]
    found: dict[str, int] = {}
    try:
        for pid, _ in tree:
            for kind in ("user", "mnt", "pid", "ipc", "net", "uts"):
                try:
                    path = f"/proc/{pid}/ns/{kind}"
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if kind == "user" else userns.ns_owner_fd(path)
                except OSError:
                    continue
                name = want.get(userns.ino(fd))
                if name is None or name in found:
                    os.close(fd)
                else:
                    found[name] = fd
    except BaseException:
        for fd in found.values():
            os.close(fd)
        raise
    return sorted(found.items(), key=lambda kv: -users_plan["depth"][kv[0]])


def record_sb_owners(pid: int, mounts, sb_of_dev: dict, superblocks: dict, tree, users_plan: dict,
                     clone=None) -> None:
    """Give each superblock `pid` sees that a user namespace of the image owns its ``owner``
    (user-N): restore makes it from inside the restored one (engine/sbowner.py tells it). `clone`:
    mount -> a detached clone of it or None, for superblocks whose every mount is covered."""
    from engine import fs, sbowner
    candidates = sb_owner_candidates(tree, users_plan)
    try:
        for dev, name in sbowner.probe(pid, mounts, candidates, clone).items():
            sb = superblocks[sb_of_dev[dev]]
            handler = fs.lookup(sb["fstype"])
            if handler is not None and (handler.device or handler.daemon):
                # Made by its type's own create hook, which makes no superblock inside a user namespace.
                m = next(x for x in mounts if x.dev == dev)
                raise UsernsError(errno.EOPNOTSUPP, f"mount {m.mnt_id} ({m.mountpoint}) on {sb['fstype']}: its "
                                                    "superblock was made inside a user namespace, which restore "
                                                    f"cannot do for {sb['fstype']} yet")
            sb["owner"] = name
    finally:
        for _, fd in candidates:
            os.close(fd)


def owner_ids(users: dict, name: str) -> tuple[int, int]:
    """(uid, gid) in the restorer's ids of the root of user namespace `name` (its first id when
    it maps no 0): what writes files into a superblock it owns."""
    rec = users[name]

    def pick(ranges):
        return next((o for i, o, _ in ranges if i == 0), ranges[0][1] if ranges else 0)
    return pick(rec["uid_map"]), pick(rec["gid_map"])


def ids_inside(rec: dict | None, name: str, params, id_opts: tuple[tuple[str, str], ...]) -> list:
    """fsconfig `params` with the value of each id option (`id_opts`: (option, "uid" | "gid"))
    rewritten from the restorer's ids into those of user namespace `name` (record `rec`), where a
    superblock it owns is configured. An id the namespace does not map is refused with one line:
    the superblock could not have been made there with it."""
    kinds = dict(id_opts)
    out = []
    for key, value in params:
        kind = kinds.get(key)
        if kind is not None and value is not None and rec is not None:
            try:
                mine = int(value)
            except ValueError:
                raise OSError(errno.EINVAL, f"its option {key}={value} is no id") from None
            inside = userns.inside([mine], rec[f"{kind}_map"])[0]
            if inside is None:
                raise OSError(errno.EINVAL, f"its option {key}={value} names a {kind} that user namespace {name}, "
                                            "which owns it, does not map")
            value = str(inside)
        out.append((key, value))
    return out


def owner_to_join(mntns_fd: int) -> int | None:
    """An fd on the user namespace owning mount namespace `mntns_fd`, or None when it is the
    caller's: a helper that copies the namespace joins it first, so that the copy keeps its locks
    and adds none."""
    owner = userns.ns_owner_fd(mntns_fd)
    if userns.ino(owner) == userns.own_userns_ino():
        os.close(owner)
        return None
    return owner


def record_idmaps(pid: int, entries: list[dict]) -> None:
    """Give each idmapped mount of `pid`'s mount namespace its map (``idmap``: uid_map, gid_map in
    the dumper's ids); refuse one whose map the kernel does not tell (statmount, Linux 6.15)."""
    marked = [e for e in entries if "idmapped" in e["mount_opts"]]
    if not marked:
        return
    mounts = mountinfo.read_pid(pid)
    got = userns.idmaps(pid, mounts)
    for e in marked:
        idmap = userns.parse_idmap(got.get(e["id"], "unknown (not seen by its process)"))
        if idmap is None:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}): idmapped, and this kernel "
                                                f"does not tell its map ({got.get(e['id'])}; statmount shows it "
                                                "from Linux 6.15)")
        e["idmap"] = idmap


def _state_flags(state: str) -> tuple[bool, list[str]]:
    head, _, rest = state.partition(" flags=")
    return head != "unlocked", [f for f in rest.split(",") if f] if rest else []


def locks(pid: int, entries: list[dict], nsname: str, owned_sbs: set | None = None) -> None:
    """Probe which mounts of `pid`'s mount namespace are locked and mark its image entries
    (``locked``, ``locked_flags``); refuse what restore cannot reproduce. `owned_sbs`: the
    superblocks a user namespace of the tree owns (None: all may be)."""
    from engine import mntlocks, topology   # (before mntlocks' helper forks: it uses topology too)
    mounts = mountinfo.read_pid(pid)
    canon = topology.canonical(mounts)
    got = mntlocks.probe(pid, mounts, canon.text)
    if isinstance(got, str):
        raise UsernsError(errno.EIO, f"mount namespace {nsname}: {got}")
    by_id = {e["id"]: e for e in entries}
    if set(by_id) != {m.mnt_id for m in mounts}:
        raise UsernsError(errno.EOPNOTSUPP, f"mount namespace {nsname}: process {pid} sees only part of it "
                                            "(a chroot): locks cannot be told")
    root = next(e for e in entries if e.get("parent") is None)
    unlocked_flags: dict[int, list[str]] = {}
    hidden: set[int] = set()
    for m in mounts:
        e = by_id[m.mnt_id]
        state = got[canon.label(m.mnt_id)]
        if state == "hidden":
            # Beneath a locked mount: part of what was copied, so locked with what it had set.
            locked, flags = True, [f for f in FLAG_NAMES if f in m.mount_opts] + ["atime"]
            hidden.add(m.mnt_id)
        else:
            locked, flags = _state_flags(state)
        if not locked:
            unlocked_flags[m.mnt_id] = flags
        if locked:
            e["locked"] = True
            e["locked_flags"] = flags
        elif flags and not (m.fstype in _USERNS_VISIBLE and set(flags) <= {"atime", "ro"}
                            and (owned_sbs is None or e.get("sb") in owned_sbs)):
            # (a proc or sysfs of the host's bound inside, as ch-run binds /sys: restore clones it, the
            # kernel checks nothing then, so its locks are made as any bind's)
            # A bind made inside the user namespace of an inherited (locked) mount: unlocked, with
            # its source's locked flags. Restore clones it the same way (Rebuild.lock_flags).
            e["locked_flags"] = flags
    if not root.get("locked"):
        # Bound inside the user namespace (ch-run binds its image and pivots into the bind): restore
        # mounts a clone over the root the copy locked, which hides whatever is locked on that.
        stray = next((e for e in entries if e.get("locked") and e.get("parent") == root["id"]), None)
        if stray is not None:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {stray['id']} ({stray['mountpoint']}): locked on the root "
                                                f"of mount namespace {nsname}, which is not locked (bound inside "
                                                "its user namespace): not supported yet")
    elif _pivoted(root):
        # Its root took the mount lock from the root it pivoted from (pivot_root); restore does the
        # same after copying the namespace, which drops whatever the copy locked on the old root.
        stray = next((e for e in entries if e.get("locked") and e.get("parent") == root["id"]), None)
        if stray is not None:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {stray['id']} ({stray['mountpoint']}): locked on the root "
                                                f"of mount namespace {nsname}, which was pivoted into (its root "
                                                "has no locked flags): not supported yet")
    for e in entries:
        if e["id"] in hidden and (e.get("shared") or e.get("master") or e.get("unbindable")):
            # Restore sets propagation once the namespace is copied into its user namespace, where
            # no path reaches beneath a locked mount and none can be unmounted.
            raise UsernsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}): locked, covered by a locked "
                                                f"mount of mount namespace {nsname} and shared, slave or unbindable: "
                                                "its propagation cannot be rebuilt yet")
    groups = lock_groups(entries)
    for top, members in groups.items():
        _check_group(by_id[top], members, unlocked_flags[top], hidden)
        # Recorded whatever its type: restore makes its flag locks with the group's.
        by_id[top]["locked_flags"] = unlocked_flags[top]
    grouped = {x["id"] for members in groups.values() for x in members}
    # The root is left out: restore makes it first whatever its age (crun attaches volumes it cloned
    # before pivoting into the root, so they are older than the root, which took the old root's lock).
    newest_locked = max((e.get("uid") or 0 for e in entries
                         if e.get("locked") and e["id"] not in grouped and e is not root), default=0)
    for e in entries:
        if not e.get("locked") and e is not root and (e.get("uid") or 0) < newest_locked:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}): unlocked but older than "
                                                "a locked mount: not supported yet")


def lock_groups(entries: list[dict]) -> dict[int, list[dict]]:
    """Locked mounts below an unlocked one (not the root), by that unlocked mount: a recursive bind
    made inside the user namespace of a locked subtree (crun binds /sys so) is unlocked itself and
    keeps what it copied locked. Each top -> its locked mounts beneath it (every mount between them
    locked too), in creation order. `entries`: one mount namespace's image mounts."""
    by_id = {e["id"]: e for e in entries}
    groups: dict[int, list[dict]] = {}
    for e in entries:
        if not e.get("locked") or e.get("parent") is None:
            continue
        p = by_id.get(e["parent"])
        while p is not None and p.get("locked") and p.get("parent") is not None:
            p = by_id.get(p["parent"])
        if p is not None and not p.get("locked"):
            groups.setdefault(p["id"], []).append(e)
    for members in groups.values():
        members.sort(key=lambda x: (x.get("uid") or 0, x["id"]))
    return groups


def _check_group(top: dict, members: list[dict], top_flags: list[str], hidden: set[int]) -> None:
    """Refuse a group of locked mounts below unlocked `top` that restore cannot rebuild (one line).
    (Where peer groups are built while mounting, engine/construct.py refuses a group with sharing.)"""
    where = f"mount {members[0]['id']} ({members[0]['mountpoint']}): locked below the unlocked mount " \
            f"{top['id']} ({top['mountpoint']})"
    if "atime" not in top_flags:
        # Restore binds the subtree from a locked copy, which locks the atime of what it binds.
        raise UsernsError(errno.EOPNOTSUPP, f"{where}, whose atime is not locked: not supported yet")
    seen = set()
    for x in members:
        if x["id"] in hidden or (x["parent"], x["mountpoint"]) in seen:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {x['id']} ({x['mountpoint']}): locked below the unlocked "
                                                f"mount {top['id']} ({top['mountpoint']}) and covered there: "
                                                "not supported yet")
        seen.add((x["parent"], x["mountpoint"]))


# --- restore ------------------------------------------------------------------------------------

_ATTR = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8}  # MOUNT_ATTR_*


def construct_copies(mntns: dict) -> dict[str, tuple[set[int], set[int]]]:
    """For building peer groups while mounting (engine/construct.py): each mount namespace owned by
    a user namespace -> (the mounts made before it is copied into that user namespace: its root and
    locked mounts, which the copy locks; the mounts made in the copy). `mntns`: the image's."""
    out = {}
    for ns_id, ns in mntns.items():
        if ns.get("owner"):
            grouped = {x["id"] for members in lock_groups(ns["mounts"]).values() for x in members}
            before = {m["id"] for m in ns["mounts"]
                      if m["id"] == ns["root"] or (m.get("locked") and m["id"] not in grouped)}
            out[ns_id] = (before, {m["id"] for m in ns["mounts"]} - before)
    return out


def creation_uid(mntns: dict) -> dict[int, int]:
    """Each root of a namespace owned by a user namespace that is younger than another of its
    mounts -> the lowest unique id of that namespace, to order it by: restore copies the
    namespace with its root before its first own mount is attached (crun, as root, clones
    volumes before pivoting into the root, which takes the old root's lock). `mntns`: the image's."""
    out = {}
    for ns in mntns.values():
        if not ns.get("owner"):
            continue
        uids = [m["uid"] for m in ns["mounts"] if m.get("uid")]
        root = next((m for m in ns["mounts"] if m["id"] == ns["root"]), None)
        if ns.get("owner") and root is not None and root.get("uid") and uids and min(uids) < root["uid"]:
            out[root["id"]] = min(uids)
    return out


def construct_subtrees(mntns: dict) -> dict[int, list[int]]:
    """For engine/construct.py: each unlocked mount with locked mounts below it (lock_groups) -> their
    ids, in the order lock_groups gives. `mntns`: the image's."""
    return {top: [x["id"] for x in members] for ns in mntns.values() if ns.get("owner")
            for top, members in lock_groups(ns["mounts"]).items()}


def _maps_of(rec: dict) -> userns.Maps:
    return userns.Maps(tuple(tuple(r) for r in rec["uid_map"]), tuple(tuple(r) for r in rec["gid_map"]),
                       rec["setgroups"], rec.get("owner"))


class Rebuild:
    """The user-namespace side of one restore (hooks called by engine/restore.py)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.users = doc.get("userns") or {}
        self.fd: dict[str, int] = {}
        self.owned = {ns_id: ns["owner"] for ns_id, ns in doc["mntns"].items() if ns.get("owner")}
        self.copied: set[str] = set()
        self.idmap_fd: dict[str, int] = {}   # maps (repr) -> user namespace giving them to idmapped mounts
        self._ns_of: dict[int, str] | None = None   # mount id -> mount namespace id (lock_flags)
        self._stands: dict[int, str | None] | None = None   # pid -> _started_in's answer (stands_in)
        # Locked mounts below an unlocked one (lock_groups): made with it, from a locked copy.
        self.groups: dict[int, list[dict]] = {}
        for ns_id in self.owned:
            self.groups.update(lock_groups(doc["mntns"][ns_id]["mounts"]))
        self.grouped = {x["id"]: top for top, members in self.groups.items() for x in members}

    def make_userns(self) -> None:
        """Every user namespace of the image, parents first, after checking that the restoring
        user may map the ids (one line naming the namespace and the id otherwise); and one per
        distinct map of the idmapped mounts."""
        self._idmap_userns()
        if not self.users:
            return
        have_uid, have_gid = userns.caller_ranges()
        todo = list(self.users)
        while todo:
            uid = next(u for u in todo if self.users[u].get("parent") in (None, *self.fd))
            todo.remove(uid)
            rec = self.users[uid]
            parent = rec.get("parent")
            if parent is None:
                for key, have in (("uid_map", have_uid), ("gid_map", have_gid)):
                    bad = userns.uncovered(rec[key], have)
                    if bad is not None:
                        raise UsernsError(errno.EPERM, f"user namespace {uid}: {key} maps id {bad}, which the "
                                                       "restoring user's namespace does not have")
            self.fd[uid] = userns.make(_maps_of(rec), self.fd.get(parent),
                                       _maps_of(self.users[parent]) if parent else None)

    def _idmap_userns(self) -> None:
        """A user namespace per distinct idmap of the image (made before restore leaves /proc)."""
        for ns in self.doc["mntns"].values():
            for m in ns["mounts"]:
                if "idmap" not in m:
                    continue
                key = repr((m["idmap"]["uid_map"], m["idmap"]["gid_map"]))
                if key in self.idmap_fd:
                    continue
                maps = userns.Maps(tuple(map(tuple, m["idmap"]["uid_map"])),
                                   tuple(map(tuple, m["idmap"]["gid_map"])), "allow")
                have_uid, have_gid = userns.caller_ranges()
                for name, ranges, have in (("uid", maps.uid_map, have_uid), ("gid", maps.gid_map, have_gid)):
                    bad = userns.uncovered(ranges, have)
                    if bad is not None:
                        raise UsernsError(errno.EPERM, f"mount {m['id']} ({m['mountpoint']}): its idmap maps {name} "
                                                       f"{bad}, which the restoring user's namespace does not have")
                self.idmap_fd[key] = userns.make(maps)

    def idmap(self, m: dict, fd: int) -> None:
        """Give the freshly cloned (detached) mount m its idmap (mount_setattr MOUNT_ATTR_IDMAP)."""
        if "idmap" not in m:
            return
        key = repr((m["idmap"]["uid_map"], m["idmap"]["gid_map"]))
        try:
            userns.set_idmap(fd, self.idmap_fd[key])
        except OSError as e:
            raise UsernsError(e.errno, f"mount {m['id']} ({m['mountpoint']}): idmapping it: "
                                       f"{os.strerror(e.errno)}") from None

    def lock_flags(self, m: dict, fd: int) -> int:
        """For an unlocked mount whose flags are locked (``locked_flags`` without ``locked``): a
        clone of the detached mount `fd` (which is used up) made inside its namespace's user
        namespace from a locked copy, as the kernel made the original (a bind of an inherited
        mount keeps its source's flag locks); else `fd` itself."""
        flags = m.get("locked_flags")
        if m.get("locked") or not flags:
            return fd
        if self._ns_of is None:
            self._ns_of = {x["id"]: ns_id for ns_id, ns in self.doc["mntns"].items() for x in ns["mounts"]}
        owner = self.owned.get(self._ns_of.get(m["id"]))
        if owner is None:
            raise UsernsError(errno.EINVAL, f"mount {m['id']} ({m['mountpoint']}): locked flags in a mount "
                                            "namespace no user namespace owns")
        lock = sum(_ATTR[f] for f in FLAG_NAMES if f in flags)
        rest = sum(_ATTR[f] for f in FLAG_NAMES if f in m["mount_opts"] and f not in flags)
        from engine import channel
        try:
            _, fds = channel.call_in_child(_locked_clone, self.fd[owner], fd, lock, rest, _legacy_opts(m))
        except OSError as e:
            raise UsernsError(e.errno or errno.EIO, f"mount {m['id']} ({m['mountpoint']}): cloning it with locked "
                                                    f"flags ({','.join(flags)}): {e.strerror or e}") from None
        os.close(fd)
        return fds[0]

    def lock_subtree(self, r, top: dict, fd: int) -> int:
        """For an unlocked mount with locked mounts below it (``groups``): the subtree made as the
        kernel made it, a recursive clone inside its user namespace of a locked copy (the clone is
        unlocked, keeps its flag locks, and what it copied stays locked). `fd`: the detached clone
        of `top` (used up); the members' clones are made here and their fds, on the restored
        subtree, left in r.mnt_fd. Returns the subtree's fd."""
        from engine import channel
        members = self.groups[top["id"]]
        owner = self.owned[self._ns_of_mount(top["id"])]
        fds = {top["id"]: fd}
        made = []
        try:
            spec = []
            for m in members:
                fds[m["id"]] = r._clone(m, base=r.subtree_base(m))
                mp = r._mountpoint_fd(r.mounts[m["parent"]], m, fds[m["parent"]])
                made.append(mp)
                lock, _ = _lock_bits(m)
                spec.append((fds[m["id"]], mp, lock, _rel(m["mountpoint"], top["mountpoint"]), _legacy_opts(m)))
            lock, rest = _lock_bits(top)
            try:
                _, got = channel.call_in_child(_locked_subtree, self.fd[owner], fd, lock, rest, spec,
                                               _legacy_opts(top))
            except OSError as e:
                raise UsernsError(e.errno or errno.EIO, f"mount {top['id']} ({top['mountpoint']}): binding it with "
                                                        f"the locked mounts below it: {e.strerror or e}") from None
        finally:
            for x in [*fds.values(), *made]:
                os.close(x)
        for m, mfd in zip(members, got[1:]):
            r.mnt_fd[m["id"]] = mfd
        return got[0]

    def attached(self, r, m: dict) -> None:
        """Member m of a group (lock_subtree) is attached with its top: its flags that are not
        locked are set now (on a detached tree only its top could be changed)."""
        _, rest = _lock_bits(m)
        if rest and not r.legacy:   # flags=remount: restore sets every mount's options once attached
            from engine import kernel
            r.enter(self._ns_of_mount(m["id"]))
            kernel.mount_setattr(r.mnt_fd[m["id"]], "", kernel.AT_EMPTY_PATH, attr_set=rest)

    def _ns_of_mount(self, mid: int) -> str | None:
        if self._ns_of is None:
            self._ns_of = {x["id"]: ns_id for ns_id, ns in self.doc["mntns"].items() for x in ns["mounts"]}
        return self._ns_of.get(mid)

    def fsmount_in(self, owner: str, fstype: str, source: str | None, params, attr: int,
                   id_opts: tuple[tuple[str, str], ...] = ()) -> int:
        """A new superblock made wholly inside restored user namespace `owner` (fsopen, fsconfig,
        create, fsmount), which then owns it as the dumped one was owned; returns the detached mount.
        The create runs there too: a type still on the legacy mount interface (devpts before its
        fs_context conversion, Linux 6.1 among them) takes the owner from the task that creates
        it (sget: current_user_ns), not from the context, and parses its options then. Its id
        options (`id_opts`: (option, "uid" | "gid")), shown in the initial namespace's ids, are
        given in `owner`'s."""
        from engine import channel
        params = ids_inside(self.users.get(owner), owner, params, id_opts)
        _, fds = channel.call_in_child(_fsmount_child, self.fd[owner], fstype, source, params, attr)
        return fds[0]

    def premade(self, p: dict, nsfd_of: dict, uts_names, hostproc: int) -> None:
        """Make p's namespaces that another user namespace than its own made (``ns_made_in``), each
        from inside that one, once; their fds go to `nsfd_of` ((kind, ns id) -> fd), from where
        p's stand-in joins them as it joins any namespace made before it (`hostproc`: an fd on a
        /proc, which the restorer's root may lack; `uts_names(ns id)`: a UTS namespace's
        (hostname, domain name) or None)."""
        from engine import channel
        for kind, owner in (p.get("ns_made_in") or {}).items():
            key = (kind, p["ns"][kind])
            if key not in nsfd_of:
                names = uts_names(p["ns"][kind]) if kind == "uts" else None
                _, fds = channel.call_in_child(_make_ns_child, self.fd[owner], kind, names, hostproc)
                nsfd_of[key] = fds[0]

    def early(self, p: dict, nsfd_of: dict, uts_names, hostproc: int) -> list[int]:
        """The fds of p's namespaces the restorer's user namespace owns though p's stand-in starts in
        its own (``ns_before_userns``), made here once (into `nsfd_of`, as `premade`): the stand-in
        joins them before it enters its user namespace (engine/standin.spawn_in_userns); and those
        other user namespaces made (``ns_made_in``: `premade` made them)."""
        from engine import channel
        out = [nsfd_of[(k, p["ns"][k])] for k in p.get("ns_made_in") or ()]
        for kind in p.get("ns_before_userns") or ():
            if kind == "pid":
                continue   # (made, or joined, as it forks: engine/standin.spawn_in_userns `pid_first`)
            key = (kind, p["ns"][kind])
            if key not in nsfd_of:
                names = uts_names(p["ns"][kind]) if kind == "uts" else None
                _, fds = channel.call_in_child(_make_ns_child, None, kind, names, hostproc)
                nsfd_of[key] = fds[0]
            out.append(nsfd_of[key])
        return out

    def writer_ids(self, owner: str) -> tuple[int, int]:
        """(uid, gid) that may create files in a superblock `owner` owns (its root's, in ours)."""
        return owner_ids(self.users, owner)

    def close(self) -> None:
        """Close the namespace and idmap fds kept for the restore."""
        for fd in [*self.fd.values(), *self.idmap_fd.values()]:
            os.close(fd)
        self.fd.clear()
        self.idmap_fd.clear()

    # -- locked mounts -------------------------------------------------------------------------

    def must_copy_before(self, ns_id: str, m: dict) -> bool:
        """Whether namespace ns_id must be copied into its user namespace before mount m is attached
        (m is the first of its own, unlocked, mounts)."""
        return ns_id in self.owned and ns_id not in self.copied and not m.get("locked") \
            and m["id"] != self.doc["mntns"][ns_id]["root"]

    def copy(self, r, ns_id: str, attached: set[int]) -> None:
        """Replace restored namespace ns_id (root and locked mounts attached, nothing else) by its copy
        made inside its user namespace; re-point the restorer's fds at the copies."""
        from engine import kernel
        ns = self.doc["mntns"][ns_id]
        mine = [m for m in ns["mounts"] if m["id"] == ns["root"] or (m.get("locked") and m["id"] not in self.grouped)]
        missing = [m for m in mine if m["id"] not in attached]
        if missing:
            raise UsernsError(errno.EINVAL, f"mount {missing[0]['id']} ({missing[0]['mountpoint']}): locked but "
                                            f"not attached before {ns_id} is copied into its user namespace")
        covered = _out_of_reach(mine, r.mounts)
        extra = {}
        for m in mine:
            locked = set(m.get("locked_flags") or ())
            bits = sum(_ATTR[f] for f in FLAG_NAMES if f in m["mount_opts"] and f not in locked)
            if bits:
                extra[m["id"]] = bits
        r.enter(ns_id)
        # A root locked without locked flags: the namespace pivoted into a mount made inside it
        # (bwrap into its own tmpfs), and pivot_root passed the old root's mount lock to it. A
        # clone of the root, made before the copy locks anything, gets it the same way.
        root = r.mounts[ns["root"]]
        fresh = self._clone_root(r, ns) if _pivoted(root) or not root.get("locked") else None
        if fresh is not None and not root.get("locked"):
            # An unlocked root (a bind made inside the user namespace): a clone keeping its flag
            # locks, mounted over the locked copy below (hidden, as the root it was bound over).
            fresh = self.lock_flags(root, fresh)
        # Flags set later than the copy are not locked: off while the kernel copies, on again after.
        for mid, bits in extra.items():
            if mid not in covered:
                fd = self._open(r.mounts[mid])
                try:
                    _set_attached(r, fd, r.mounts[mid], clear=bits)
                finally:
                    os.close(fd)
        # A covered mount a process's cwd or file lies on: reached through the copier's cwd or root.
        beneath = [mid for mid in sorted(covered) if mid in r.referenced and mid in r.mnt_fd
                   and stat.S_ISDIR(os.fstat(r.mnt_fd[mid]).st_mode)]
        reached: list[int] = []
        new = userns.copy_mntns_into(self.fd[ns["owner"]], r.ns_fd[ns_id], r.hostproc,
                                     tuple(r.mnt_fd[mid] for mid in beneath), reached)
        r.to_service()
        os.close(r.ns_fd[ns_id])
        r.ns_fd[ns_id] = new
        self.copied.add(ns_id)
        r.enter(ns_id)
        if fresh is not None and root.get("locked"):
            self._pivot_to(r, ns_id, fresh)
        elif fresh is not None:
            self._cover_root(r, ns_id, fresh)
        for m in mine:
            mid = m["id"]
            old = r.mnt_fd.pop(mid, None)
            if old is not None:
                os.close(old)
            mp = r.mp_fd.pop(mid, None)
            if mp is not None and mid != ns["root"] and m.get("parent") in r.referenced:
                # What m covers, which a process's file or socket lies in: no path of the copy
                # reaches beneath a locked mount, this fd on its mount point before the copy (the
                # same directory of the same superblock) still does.
                r.mp_fd[mid] = mp
            elif mp is not None:
                os.close(mp)   # reached what the staging mount covered: nothing in the copy
            if mid in covered:
                if mid in beneath:
                    r.mnt_fd[mid] = reached[beneath.index(mid)]
                continue       # beneath another locked mount: nothing else can reach it
            fd = self._open(m)
            self._reopen_ghosts(r, mid, fd)
            if mid in extra:
                _set_attached(r, fd, m, set_=extra[mid])
            if mid in r.shared_ids:
                r.new_id[mid] = kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH)
            if old is not None or mid == ns["root"]:
                r.mnt_fd[mid] = fd
            else:
                os.close(fd)

    @staticmethod
    def _reopen_ghosts(r, mid: int, fd: int) -> None:
        """The restorer's fds on deleted files of mount `mid` (still linked: see restore's _ghost),
        taken again through its copy `fd`: opened on the mount before the copy, a process's fd would
        be on no mount of its namespace (CRIU's mntns_deleted and mntns_ghost01 in the uns flavor).
        One the copy cannot reach (beneath a locked mount) keeps the old mount."""
        from engine import kernel
        for gid, path in r.ghost_fds_on.get(mid, ()):
            if (gid, mid, path) not in r.ghost_fd:
                continue
            try:
                new = kernel.openat2(fd, path.lstrip("/"), os.O_PATH | os.O_NOFOLLOW,
                                     kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_XDEV | kernel.RESOLVE_NO_SYMLINKS
                                     | kernel.RESOLVE_NO_MAGICLINKS)
            except OSError:
                continue
            os.close(r.ghost_fd[gid, mid, path])
            r.ghost_fd[gid, mid, path] = new

    def _clone_root(self, r, ns: dict) -> int:
        """A detached clone of namespace `ns`'s root (we stand in it, not copied yet): no lock."""
        from engine import kernel
        fd = self._open(r.mounts[ns["root"]])
        try:
            return kernel.open_tree(fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
        finally:
            os.close(fd)

    @staticmethod
    def _pivot_to(r, ns_id: str, fresh: int) -> None:
        """In the copy: mount `fresh` over the locked root and pivot into it as the original did; the
        kernel moves the root's mount lock to it (not its flag locks), and the old root, unlocked by
        that, is unmounted with what it held."""
        from engine import kernel
        top = os.open("/..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(top)
            os.chroot(".")
            kernel.move_mount(fresh, "", top, "", kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH)
            os.fchdir(fresh)
            kernel.pivot_root(".", ".")
            kernel.umount2(".", kernel.MNT_DETACH)
        finally:
            os.close(top)
            os.close(fresh)
            # Back on the namespace's hidden root, where the next steps expect to stand.
            r.to_service()
            r.enter(ns_id)

    @staticmethod
    def _cover_root(r, ns_id: str, fresh: int) -> None:
        """In the copy: mount `fresh` (an unlocked clone of the root) over the locked root, where
        "/.." and so every later step and stand-in finds it; the locked root stays hidden beneath."""
        from engine import kernel
        top = os.open("/..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            kernel.move_mount(fresh, "", top, "", kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(top)
            os.close(fresh)
            r.to_service()
            r.enter(ns_id)

    @staticmethod
    def _open(m: dict) -> int:
        # setns put us on the namespace's hidden root, below the restored "/": "/.." is what is
        # mounted over it, and mount points resolve from there.
        top = os.open("/..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        rel = m["mountpoint"].strip("/")
        if not rel:
            return top
        try:
            return os.open(rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
        finally:
            os.close(top)

    def copy_rest(self, r, attached: set[int]) -> None:
        """Namespaces that have no mount of their own: copied once everything is attached."""
        for ns_id in self.owned:
            if ns_id not in self.copied:
                self.copy(r, ns_id, attached)

    # -- stand-ins ---------------------------------------------------------------------------------

    def become(self, chans: dict, hostproc: int | None = None) -> None:
        """Each stand-in of a process in a user namespace joins it and takes its ids there (last:
        it gives up its privilege over everything else). One that is in it already (it started
        there, or was forked by one that did) only takes its ids: setns into one's own user
        namespace is EINVAL, and a stand-in that pivoted into a root without /proc (CRIU's
        mntns_pivot_root under the uns flavor) cannot look which one it is in."""
        # The user namespaces' limits last: the restore has made every namespace in them by now
        # (a limit of 0, or of what exists, would have refused that).
        for name, rec in self.users.items():
            userns.set_limits(self.fd[name], rec.get("limits") or {}, hostproc)
        started = self._started_in()
        for p in self.doc["processes"]:
            try:
                self._become_one(p, chans, started)
            except channel.ChannelClosed:   # (killed, or its answer denied by the seccomp filters it installed)
                raise OSError(errno.EIO, f"process {p['pid']}: it ended before it took its ids") from None

    def _become_one(self, p: dict, chans: dict, started: dict) -> None:
        """Stand-in of process `p` joins its user namespace and takes its ids (`become`)."""
        if "userns" not in p and p.get("creds"):
            c = p["creds"]
            chans[p["pid"]].call(("become", c["uid"], c["gid"], c["groups"], c.get("dumpable"), _keeps(p)), [])
        if "userns" in p:
            creds = p.get("creds")
            # (where it denies setgroups, or they are not all mapped, the stand-in holds them already)
            held = self.users[p["userns"]]["setgroups"] == "deny" or (creds or {}).get("unmapped_groups")
            chans[p["pid"]].call(("become", creds and creds["uid"], creds and creds["gid"],
                                  None if held or not creds else creds["groups"],
                                  creds and creds.get("dumpable"), _keeps(p)),
                                 [] if started.get(p["pid"]) == p["userns"] else [self.fd[p["userns"]]])

    def send_outer_maps(self, chans: dict) -> None:
        """Before the fds: each stand-in in a nested user namespace gets that namespace's maps as the
        image has them (the restorer's frame), which it cannot read itself: /proc/self/uid_map shows
        them relative to the parent. An inet socket's owner (rootless podman's --userns=keep-id, a
        user namespace inside a container's) was "not mapped in the process's user namespace"."""
        for pid, name in self._started_in().items():
            rec = self.users.get(name) if name is not None else None
            if rec is not None and rec.get("parent") is not None and pid in chans:
                chans[pid].call(("outer_maps", rec["uid_map"], rec["gid_map"]), [])

    def _started_in(self) -> dict[int, str | None]:
        """{pid: the user namespace its stand-in is in until `become`}: the one `spawn_in` starts it
        in, else its parent stand-in's (a fork stays in it); None for the restorer's."""
        out: dict[int, str | None] = {}
        by_pid = {p["pid"]: p for p in self.doc["processes"]}
        for p in self.doc["processes"]:   # (parents first)
            parent = by_pid.get(p.get("ppid"))
            at = out.get(parent["pid"]) if parent else None
            name = self._spawn_name(p, at)
            out[p["pid"]] = name if name is not None else at
        return out

    def late(self) -> set[int]:
        """The processes whose stand-ins are forked once every mount exists: those that enter their
        mount namespace before their user namespace (``enter_first``), their descendants, and those
        in a namespace whose first process (in the image's order) is late, which they join (dump's
        _Plan.check_late)."""
        out: set[int] = set()
        first: dict[tuple[str, str], int] = {}
        for p in self.doc["processes"]:   # (parents first)
            shared = False
            for key in p["ns"].items():
                shared = shared or first.setdefault(key, p["pid"]) in out
            if p.get("enter_first") or p.get("ppid") in out or shared:
                out.add(p["pid"])
        return out

    def stands_in(self, p: dict) -> str | None:
        """The user namespace p's stand-in stands in until it takes its ids (become): the one it
        started in, or its parent stand-in's that its fork stayed in (the children of pid 1 of
        `unshare -Urpf`, which starts in its user namespace); None for the restorer's."""
        if self._stands is None:
            self._stands = self._started_in()
        return self._stands.get(p["pid"])

    def spawn_in(self, p: dict, parent: dict | None) -> int | None:
        """The user namespace fd p's stand-in must start in (its own namespaces belong to it), or
        None: it starts where its parent's stand-in is and joins its user namespace last."""
        name = self._spawn_name(p, self._parent_at(parent))
        return None if name is None else self.fd[name]

    def joined_before(self, p: dict, parent: dict | None) -> set[str]:
        """The kinds of p's namespaces its stand-in joined before it entered its user namespace
        (`early`), when it starts there; none when its fork inherits that user namespace from its
        parent's stand-in (`parent`: the one that forks it), which joins them once forked."""
        if self.spawn_in(p, parent) is None:
            return set()
        if not p.get("userns_first"):
            return set(p.get("ns_made_in") or ())   # (``userns_start``: joined before it entered that one)
        return set(p.get("ns_before_userns") or ()) | set(p.get("ns_made_in") or ())

    def pid_in(self, p: dict, parent: dict | None) -> int | None:
        """The fd of the user namespace, above p's own, whose pid namespace p's stand-in starts in
        before it enters its own (``userns_start`` with ``userns_first``), else None (also where
        the parent's stand-in is in it already: `pid_first`)."""
        start = p.get("userns_start") if p.get("userns_first") else None
        return None if start is None or start == self._parent_at(parent) else self.fd[start]

    def pid_first(self, p: dict, parent: dict | None) -> bool:
        """Whether p's stand-in's pid namespace is made (or joined) before it enters its user
        namespace, where its maker is: the dumper's user namespace owns it (``ns_before_userns``),
        or the one p's parent's stand-in is in (``userns_start``)."""
        return "pid" in (p.get("ns_before_userns") or ()) or bool(
            p.get("userns_first") and p.get("userns_start") and p["userns_start"] == self._parent_at(parent))

    def again(self, p: dict, parent: dict | None) -> bool:
        """Whether p's stand-in, started inside a user namespace (`spawn_in`), executes the
        interpreter again there (engine/reexec.py): where a process of that namespace is not
        dumpable and its memory was made there (`memory_in_userns`: its /proc files are that
        namespace's root's)."""
        name = self._spawn_name(p, self._parent_at(parent))
        return name is not None and any(q.get("userns") == name and (q.get("creds") or {}).get("memory_in_userns")
                                        for q in self.doc["processes"])

    def _parent_at(self, parent: dict | None) -> str | None:
        """The user namespace the parent's stand-in is in (`stands_in`; None: the restorer's)."""
        return None if parent is None else self.stands_in(parent)

    @staticmethod
    def _spawn_name(p: dict, parent_at: str | None) -> str | None:
        """The name of the user namespace `spawn_in` starts p's stand-in in (None: its parent's);
        `parent_at`: the one its parent's stand-in is in."""
        if p.get("userns_start") and not p.get("userns_first"):
            return p["userns_start"]   # the owner of its pid namespace, above its own
        if not p.get("userns_first"):
            return None
        if parent_at == p["userns"]:
            # The parent's stand-in is in it already (started there, or forked by one that was):
            # the fork inherits it (setns into one's own user namespace is EINVAL).
            return None
        return p["userns"]


def _out_of_reach(mine: list[dict], mounts: dict) -> set[int]:
    """The ids of `mine` (a namespace's root and locked mounts) no path reaches once the namespace
    is copied into its user namespace (locked, none can be unmounted there): each one another of
    them hides, mounted at its mount point on top of it (a cover) or at a path above its mount
    point while not below it (a cover over a parent's directory, made after it)."""
    ids = {m["id"] for m in mine}
    at: dict[str, list[int]] = {}
    for m in mine:
        at.setdefault(m["mountpoint"], []).append(m["id"])

    def chain(mid) -> set[int]:
        out = set()
        while mid in ids and mid not in out:
            out.add(mid)
            mid = mounts[mid].get("parent")
        return out

    hidden = set()
    for m in mine:
        mine_up = chain(m["id"])
        mp = m["mountpoint"].rstrip("/")
        above = [mp[:k] or "/" for k in range(len(mp)) if mp[k] == "/"]   # (its proper prefixes)
        if any(c not in mine_up for p in above for c in at.get(p, ())) or any(
                c != m["id"] and m["id"] in chain(c) for c in at.get(m["mountpoint"], ())):
            hidden.add(m["id"])
    return hidden


def _lock_bits(m: dict) -> tuple[int, int]:
    """(MOUNT_ATTR_* bits of m's locked flags, of its other set flags)."""
    flags = set(m.get("locked_flags") or ())
    return (sum(_ATTR[f] for f in FLAG_NAMES if f in flags),
            sum(_ATTR[f] for f in FLAG_NAMES if f in m["mount_opts"] and f not in flags))


def _legacy_opts(m: dict) -> list[str] | None:
    """m's per-mount options when flags are changed with mount(2) (strategy flags=remount), else None."""
    return list(m["mount_opts"]) if remount.legacy() else None


def _only_locked(opts, lock: int) -> set[str]:
    """`opts` with only the lockable flags of `lock` (MOUNT_ATTR_* bits) among ro, nosuid, nodev,
    noexec: what a mount carries when the copy into the user namespace locks it."""
    return remount.lockable_off(opts) | {name for name, bit in remount.ATTR.items() if bit & lock}


def _set_attached(r, fd: int, m: dict, clear: int = 0, set_: int = 0) -> None:
    """Clear or set flags (MOUNT_ATTR_* bits) of the attached mount `fd` (mount m) of the namespace
    we stand in: mount_setattr, or with flags=remount mount(2) with m's options less the cleared."""
    from engine import kernel
    if r.legacy:
        remount.at_fd(fd, remount.without(m["mount_opts"], clear), r.hostproc)
    else:
        kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_set=set_, attr_clr=clear)


def _rel(path: str, base: str) -> str:
    return path[len(base):].strip("/") if base != "/" else path.strip("/")


def _locked_subtree(userns_fd: int, top_fd: int, lock: int, rest: int, spec: list, opts: list[str] | None,
                    chan) -> None:
    """In a forked child: attach the detached top and, on their mount points, its members, each
    with only the flags to lock, in a scratch namespace; copy that namespace into the user
    namespace (the kernel locks all of it) and clone the top recursively there: the clone is
    unlocked with the top's flag locks, the members stay locked. Sends the clone and an fd on each
    member in it (the kernel lets a mount below a detached one be changed only once attached:
    Rebuild.attached sets their other flags). With `opts` (strategy flags=remount: the top's
    options; each member's in `spec`) the flags are set with mount(2) on the attached mounts, with
    the atime mode the copy locks, and the rest set in the copy before the clone."""
    import stat
    from engine import kernel
    every = sum(_ATTR.values())
    kernel.unshare(kernel.CLONE_NEWNS)
    scratch = kernel.scratch_tmpfs()
    if stat.S_ISDIR(os.fstat(top_fd).st_mode):
        os.mkdir("m", 0o700, dir_fd=scratch)
    else:
        os.close(os.open("m", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=scratch))
    kernel.move_mount(scratch, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    os.fchdir(scratch)
    os.chroot(".")
    kernel.move_mount(top_fd, "", kernel.AT_FDCWD, "/m", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    if opts is not None:
        remount.at_path("/m", _only_locked(opts, lock))
    else:
        kernel.mount_setattr(top_fd, "", kernel.AT_EMPTY_PATH, attr_set=lock, attr_clr=every & ~lock)
    for mfd, mp, mlock, rel, mopts in spec:
        kernel.move_mount(mfd, "", mp, "", kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH)
        if opts is not None:
            remount.at_path(f"/m/{rel}", _only_locked(mopts, mlock))
        else:
            kernel.mount_setattr(mfd, "", kernel.AT_EMPTY_PATH, attr_set=mlock, attr_clr=every & ~mlock)
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)
    if opts is not None:
        # Flags set in the copy are not locked; a clone keeps them (a detached one mount(2) cannot change).
        remount.at_path("/m", opts)
        for _, _, _, rel, mopts in spec:
            remount.at_path(f"/m/{rel}", mopts)
    clone = kernel.open_tree(kernel.AT_FDCWD, "/m", kernel.OPEN_TREE_CLONE | kernel.AT_RECURSIVE)
    if rest and opts is None:
        kernel.mount_setattr(clone, "", kernel.AT_EMPTY_PATH, attr_set=rest)
    out = [clone]
    for _, _, _, rel, _ in spec:
        out.append(kernel.openat2(clone, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS))
    chan.send(("ok", None), out)


def _pivoted(root: dict) -> bool:
    """Whether a namespace root's locks are those pivot_root leaves: the mount lock alone (a copy
    into a user namespace locks the atime flag with every mount it locks)."""
    return bool(root.get("locked")) and "atime" not in (root.get("locked_flags") or ())


def _locked_clone(userns_fd: int, mount_fd: int, lock: int, rest: int, opts: list[str] | None, chan) -> None:
    """In a forked child: attach the detached mount in a scratch namespace with only the flags to
    lock, copy that namespace into the user namespace (the kernel locks the mount and its flags,
    atime included), and clone it there: the clone keeps the flag locks, not the mount lock. With
    `opts` (strategy flags=remount: the mount's options) through mount(2), as in _locked_subtree."""
    from engine import kernel
    kernel.unshare(kernel.CLONE_NEWNS)
    scratch = kernel.scratch_tmpfs()
    import stat
    if stat.S_ISDIR(os.fstat(mount_fd).st_mode):
        os.mkdir("m", 0o700, dir_fd=scratch)
    else:  # a file bind (bwrap's /dev/null): a file to mount it on
        os.close(os.open("m", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=scratch))
    kernel.move_mount(scratch, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    os.fchdir(scratch)
    os.chroot(".")
    kernel.move_mount(mount_fd, "", kernel.AT_FDCWD, "/m", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    if opts is not None:
        remount.at_path("/m", _only_locked(opts, lock))
    else:
        kernel.mount_setattr(kernel.AT_FDCWD, "/m", 0, attr_set=lock, attr_clr=sum(_ATTR.values()) & ~lock)
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)
    if opts is not None:
        remount.at_path("/m", opts)   # in the copy: set, not locked
    clone = kernel.open_tree(kernel.AT_FDCWD, "/m", kernel.OPEN_TREE_CLONE)
    if rest and opts is None:
        kernel.mount_setattr(clone, "", kernel.AT_EMPTY_PATH, attr_set=rest)
    chan.send(("ok", None), [clone])


_NS_FLAG = {"pid": 0x20000000, "uts": 0x04000000, "ipc": 0x08000000, "net": 0x40000000, "cgroup": 0x02000000}


class Joined:
    """The maker of a superblock tagged with a namespace the restorer made for a stand-in that
    starts in its own user namespace (``ns_before_userns``: a container's ipc namespace, whose
    mqueue only its owner, ours, may make): answers a stand-in channel's "fsmount" request from a
    child of ours that joins it."""

    def __init__(self, ns_fd: int, kind: str):
        self.ns_fd, self.kind = ns_fd, kind

    def call(self, request):
        """(None, [detached mount fd]) for ("fsmount", fstype, source, params, attr)."""
        from engine import channel
        op, fstype, source, params, attr = request
        if op != "fsmount":
            raise OSError(errno.EINVAL, f"no {op!r} in a namespace made for a stand-in")
        return None, channel.call_in_child(_fsmount_joined, self.ns_fd, self.kind == "pid", fstype, source,
                                           params, attr)[1]


def _fsmount_joined(ns_fd: int, fork: bool, fstype: str, source: str | None, params, attr: int, chan) -> None:
    from engine import channel, kernel, standin
    if ns_fd is not None:
        kernel.setns(ns_fd, 0)
    if fork:   # (a pid namespace is our children's: a proc is made by a child born in it)
        chan.send(("ok", None), channel.call_in_child(_fsmount_joined, None, False, fstype, source, params, attr)[1])
        return
    chan.send(("ok", None), [standin.fsmount(fstype, source, params, attr)])


def _make_ns_child(userns_fd: int | None, kind: str, names: tuple | None, hostproc: int, chan) -> None:
    from engine import kernel
    if userns_fd is not None:   # (None: in ours)
        kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    kernel.unshare(_NS_FLAG[kind])
    if names is not None:
        kernel.set_uts_names(*names)
    # A new pid namespace is the one our children would be born in (it has no process yet: the
    # stand-in that joins it and forks makes its pid 1).
    path = "self/ns/pid_for_children" if kind == "pid" else f"self/ns/{kind}"
    chan.send(("ok", None), [os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=hostproc)])


def _fsmount_child(userns_fd: int, fstype: str, source: str | None, params, attr: int, chan) -> None:
    from engine import kernel, standin
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)   # fsopen and fsmount need a mount namespace the user namespace owns
    chan.send(("ok", None), [standin.fsmount(fstype, source, params, attr)])


def _member_of(userns_fd: int) -> bool:
    try:   # (/proc is the stand-in's restored one here: a tree without one just tries setns)
        return os.fstat(userns_fd).st_ino == os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def _keeps(p: dict) -> bool:
    """Whether p's stand-in must keep its permitted set through taking p's ids: it sets p's
    capabilities after (its bounding set too, which needs CAP_SETPCAP)."""
    return p.get("caps") is not None


def become(userns_fd: int | None, uid: list[int], gid: list[int], groups: list[int] | None,
           dumpable: bool | None = None, keep_caps: bool = False) -> None:
    """In a stand-in: join the user namespace and take the dumped ids (real, effective, saved, fs),
    and the dumped "dumpable" (changing ids cleared it: /proc/PID files would be root's, setns and
    ptrace by the process's own user refused). `keep_caps`: keep the permitted set through the
    change (kernel.take_caps lowers it to the dumped one later, and clears PR_SET_KEEPCAPS)."""
    from engine import kernel
    # A stand-in forked by one that started in the namespace is in it already (CRIU's zdtm tests
    # under the uns flavor: the test's pid 1 forks the test), and setns to it again is EINVAL.
    if userns_fd is not None and not _member_of(userns_fd):
        kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    if uid is None:
        return  # the process kept the dumper's (unmapped) ids: so does the stand-in
    if groups is not None:
        os.setgroups(groups)
    os.setresgid(gid[0], gid[1], gid[2])
    if keep_caps:   # (leaving root clears the permitted set, which capset cannot raise again)
        kernel.set_keep_caps(True)
    # The file system ids after the others, which set them to the effective ones: the fsgid while
    # still root (one none of the others is takes CAP_SETGID), the fsuid last (one of the three
    # takes; another cannot be had without the privilege, and set_fs_ids refuses it).
    kernel.set_fs_ids(gid=gid[3] if len(gid) > 3 else None)
    os.setresuid(uid[0], uid[1], uid[2])
    kernel.set_fs_ids(uid=uid[3] if len(uid) > 3 else None)
    if dumpable is not None:   # (last: a change of the fsuid clears it too)
        kernel.set_dumpable(dumpable)
