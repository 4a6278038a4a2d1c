"""Checkpoint/restore of user namespaces: what dump records, what restore rebuilds.

Dump (`plan`): every user namespace of the tree below the dumper's own gets a
record ``user-N`` (parent, uid and gid maps in the dumper's ids, setgroups);
a process in one names it and its credentials there (inside ids); a mount
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
attached to the copy afterwards. Last, each stand-in joins its user namespace
and takes its credentials there.

A process whose pid, uts, ipc, net or cgroup namespace its own user namespace
made (rootless podman, `unshare -Urp`) gets ``userns_first``: its stand-in
starts inside the user namespace (engine/standin.spawn_in_userns) so that what
it makes belongs there.

What is refused (at dump, the tree keeps running): pid, uts, ipc, net and
cgroup namespaces owned by another user namespace of the tree than the
process's own, or made inside a user namespace nested in the parent's; idmapped mounts on a
kernel that does not tell their map (before 6.15); a mount namespace whose locked mounts are not all older than its unlocked ones
or hang below an unlocked one; an unlocked mount with locked flags.
"""

from __future__ import annotations

import errno
import os

from engine import mntlocks, mountinfo, topology, userns

FLAG_NAMES = ("ro", "nosuid", "nodev", "noexec")
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

def _inside(ids, ranges) -> list[int]:
    """Reader's ids -> ids inside a namespace with `ranges` (inside, outside, count)."""
    out = []
    for i in ids:
        hit = next((ins + (i - o) for ins, o, c in ranges if o <= i < o + c), None)
        out.append(hit)  # None: unmapped there
    return out


def _creds(pid: int, maps: userns.Maps) -> dict | None:
    """The ids of `pid` inside its user namespace; None when they are the dumper's root, unmapped."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(x) for x in value.split()]
    out = {"uid": _inside(fields["Uid"], maps.uid_map), "gid": _inside(fields["Gid"], maps.gid_map),
           "groups": _inside(fields.get("Groups", []), maps.gid_map)}
    if None not in out["uid"] + out["gid"] + out["groups"]:
        return out
    if set(fields["Uid"] + fields["Gid"] + fields.get("Groups", [])) == {0}:
        # The dumper's root, unmapped there (a namespace made by root that never switched ids): a
        # stand-in keeps its own ids, which are those.
        return None
    raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: ids {fields['Uid']} / {fields['Gid']} not all mapped in "
                                        "its user namespace: not supported yet")


def _ns_ino(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        return None


def plan(tree, names: dict, ns_kinds) -> dict:
    """The user-namespace part of the image for `tree` [(pid, ppid)]: {"userns": {...},
    "proc": {pid: {"userns": id, "creds": {...}}}, "mntns_owner": {mnt ns name: userns id}}.
    Raises UsernsError for what restore cannot rebuild."""
    users = userns.UsernsTree()
    ids: dict[int, str] = {}
    doc: dict[str, dict] = {}

    def name(key: int) -> str | None:
        if key == users.top:
            return None
        if key not in ids:
            parent = users.parent(key)
            if parent is None:
                raise UsernsError(errno.EOPNOTSUPP, "a user namespace outside the dumper's: cannot be dumped")
            pname = name(parent)
            ids[key] = f"user-{len(ids) + 1}"
            maps = users.maps(key)
            doc[ids[key]] = {"parent": pname, "uid_map": [list(r) for r in maps.uid_map],
                             "gid_map": [list(r) for r in maps.gid_map], "setgroups": maps.setgroups}
        return ids[key]

    procs: dict[int, dict] = {}
    owners: dict[str, str] = {}
    own_of: dict[int, int] = {}
    ns_ino = {pid: {k: _ns_ino(pid, k) for k in ns_kinds} for pid, _ in tree}
    for pid, ppid in tree:
        if None in ns_ino[pid].values():
            continue  # exited (a zombie has no namespaces): nothing of its own to restore here
        own = own_of[pid] = users.of_pid(pid)
        uname = name(own)
        if uname is not None:
            procs[pid] = {"userns": uname}
            creds = _creds(pid, users.maps(own))
            if creds is not None:
                procs[pid]["creds"] = creds
        mnt_owner = users.owner_of(pid, "mnt")
        oname = name(mnt_owner)
        if oname is not None:
            owners[names[("mnt", ns_ino[pid]["mnt"])]] = oname
        # Namespaces this process's user namespace owns (besides mount namespaces) are made by its
        # stand-in from inside it: the stand-in starts there ("userns_first").
        first = False
        for kind in ns_kinds:
            if kind == "mnt":
                continue
            owner = users.owner_of(pid, kind)
            inherited = ppid in ns_ino and ns_ino[ppid][kind] == ns_ino[pid][kind]
            if owner == users.top or inherited:
                continue
            if owner != own:
                raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: its {kind} namespace belongs to another user "
                                                    f"namespace than its own: not supported yet")
            first = True
        if first:
            if mnt_owner != own:
                raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: it made namespaces inside its user namespace "
                                                    f"but its mount namespace belongs to another: not supported yet")
            parent_first = procs.get(ppid, {}).get("userns_first")
            # The parent's stand-in is still the restorer's (it joins its user namespace last) unless
            # it started in one itself: then only that one can be joined from it.
            if parent_first and own_of[ppid] != own:
                raise UsernsError(errno.EOPNOTSUPP, f"process {pid}: it made namespaces inside a user namespace "
                                                    f"nested in its parent's: not supported yet")
            procs[pid]["userns_first"] = True
    return {"userns": doc, "proc": procs, "mntns_owner": owners}


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


def locks(pid: int, entries: list[dict], nsname: str) -> None:
    """Probe which mounts of `pid`'s mount namespace are locked and mark its image entries
    (``locked``, ``locked_flags``); refuse what restore cannot reproduce."""
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
    for m in mounts:
        e = by_id[m.mnt_id]
        state = got[canon.label(m.mnt_id)]
        if state == "hidden":
            # Beneath a locked mount: part of what was copied, so locked with what it had set.
            locked, flags = True, [f for f in FLAG_NAMES if f in m.mount_opts] + ["atime"]
        else:
            locked, flags = _state_flags(state)
        if e is root and not locked:
            # A restored root sits on the hidden root of its namespace (pivot_root), so the copy
            # into the user namespace always locks it; an unlocked one cannot be reproduced.
            raise UsernsError(errno.EOPNOTSUPP, f"mount {m.mnt_id} ({m.mountpoint}): the root of mount "
                                                f"namespace {nsname} is not locked: not supported yet")
        if locked:
            e["locked"] = True
            e["locked_flags"] = flags
        elif flags and not (m.fstype in _USERNS_VISIBLE and set(flags) <= {"atime", "ro"}):
            raise UsernsError(errno.EOPNOTSUPP, f"mount {m.mnt_id} ({m.mountpoint}): unlocked with locked flags "
                                                f"({','.join(flags)}): not supported yet")
    locked_ids = {e["id"] for e in entries if e.get("locked")}
    for e in entries:
        if e.get("locked") and e.get("parent") is not None and e["parent"] != root["id"] \
                and e["parent"] not in locked_ids:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}): locked below an unlocked "
                                                "mount: not supported yet")
    newest_locked = max((e.get("uid") or 0 for e in entries if e.get("locked")), default=0)
    for e in entries:
        if not e.get("locked") and e is not root and (e.get("uid") or 0) < newest_locked:
            raise UsernsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}): unlocked but older than "
                                                "a locked mount: not supported yet")


# --- restore ------------------------------------------------------------------------------------

_ATTR = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8}  # MOUNT_ATTR_*


def construct_copies(mntns: dict) -> dict[str, tuple[set[int], set[int]]]:
    """For building peer groups while mounting (engine/construct.py): each mount namespace owned by
    a user namespace -> (the mounts made before it is copied into that user namespace: its root and
    locked mounts, which the copy locks; the mounts made in the copy). `mntns`: the image's."""
    out = {}
    for ns_id, ns in mntns.items():
        if ns.get("owner"):
            before = {m["id"] for m in ns["mounts"] if m["id"] == ns["root"] or m.get("locked")}
            out[ns_id] = (before, {m["id"] for m in ns["mounts"]} - before)
    return out


def _maps_of(rec: dict) -> userns.Maps:
    return userns.Maps(tuple(tuple(r) for r in rec["uid_map"]), tuple(tuple(r) for r in rec["gid_map"]),
                       rec["setgroups"])


class Rebuild:
    """The user-namespace side of one restore (hooks called by engine/restore.py)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.users = doc.get("userns") or {}
        self.fd: dict[str, int] = {}
        self.owned = {ns_id: ns["owner"] for ns_id, ns in doc["mntns"].items() if ns.get("owner")}
        self.copied: set[str] = set()
        self.idmap_fd: dict[str, int] = {}   # maps (repr) -> user namespace giving them to idmapped mounts

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

    def close(self) -> None:
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
        mine = [m for m in ns["mounts"] if m["id"] == ns["root"] or m.get("locked")]
        missing = [m for m in mine if m["id"] not in attached]
        if missing:
            raise UsernsError(errno.EINVAL, f"mount {missing[0]['id']} ({missing[0]['mountpoint']}): locked but "
                                            f"not attached before {ns_id} is copied into its user namespace")
        ids = {m["id"] for m in mine}
        covered = {m["parent"] for m in mine if m.get("parent") in ids
                   and r.mounts[m["parent"]]["mountpoint"] == m["mountpoint"]}
        extra = {}
        for m in mine:
            locked = set(m.get("locked_flags") or ())
            bits = sum(_ATTR[f] for f in FLAG_NAMES if f in m["mount_opts"] and f not in locked)
            if bits:
                extra[m["id"]] = bits
        r.enter(ns_id)
        # Flags set later than the copy are not locked: off while the kernel copies, on again after.
        for mid, bits in extra.items():
            if mid not in covered:
                fd = self._open(r.mounts[mid])
                try:
                    kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_clr=bits)
                finally:
                    os.close(fd)
        new = userns.copy_mntns_into(self.fd[ns["owner"]], r.ns_fd[ns_id], r.hostproc)
        r.to_service()
        os.close(r.ns_fd[ns_id])
        r.ns_fd[ns_id] = new
        self.copied.add(ns_id)
        r.enter(ns_id)
        for m in mine:
            mid = m["id"]
            old = r.mnt_fd.pop(mid, None)
            if old is not None:
                os.close(old)
            mp = r.mp_fd.pop(mid, None)
            if mp is not None:
                os.close(mp)   # reached what the staging mount covered: nothing in the copy
            if mid in covered:
                continue       # beneath another locked mount: nothing can reach it, nor needs to
            fd = self._open(m)
            if mid in extra:
                kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_set=extra[mid])
            if mid in r.shared_ids:
                r.new_id[mid] = kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH)
            if old is not None or mid == ns["root"]:
                r.mnt_fd[mid] = fd
            else:
                os.close(fd)

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

    def become(self, chans: dict) -> None:
        """Each stand-in of a process in a user namespace joins it and takes its ids there (last:
        it gives up its privilege over everything else)."""
        for p in self.doc["processes"]:
            if "userns" in p:
                creds = p.get("creds")
                deny = self.users[p["userns"]]["setgroups"] == "deny"
                chans[p["pid"]].call(("become", creds and creds["uid"], creds and creds["gid"],
                                      None if deny or not creds else creds["groups"]),
                                     [] if p.get("userns_first") else [self.fd[p["userns"]]])

    def spawn_in(self, p: dict, parent: dict | None) -> int | None:
        """The user namespace fd p's stand-in must start in (its own namespaces belong to it), or
        None: it starts where its parent's stand-in is and joins its user namespace last."""
        if not p.get("userns_first"):
            return None
        if parent is not None and parent.get("userns_first") and parent.get("userns") == p["userns"]:
            return None  # the parent's stand-in is in it already: the fork inherits it
        return self.fd[p["userns"]]


def become(userns_fd: int | None, uid: list[int], gid: list[int], groups: list[int] | None) -> None:
    """In a stand-in: join the user namespace and take the dumped ids (real, effective, saved, fs)."""
    from engine import kernel
    if userns_fd is not None:
        kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    if uid is None:
        return  # the process kept the dumper's (unmapped) ids: so does the stand-in
    if groups is not None:
        os.setgroups(groups)
    os.setresgid(gid[0], gid[1], gid[2])
    os.setresuid(uid[0], uid[1], uid[2])
