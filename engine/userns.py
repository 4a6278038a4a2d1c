"""User namespaces: who owns a namespace, the tree of user namespaces, their maps.

Namespaces are named by what survives a restore: a user namespace by its
place in the tree below the reader's own (the chain of uid/gid maps and
setgroups from the top down), never by inode. Maps are read from the
caller's user namespace (the runner's or the dumper's, normally the initial
one), where /proc/PID/uid_map shows every range in the caller's ids, so the
same namespace reads the same before and after a restore.

An idmapped mount's maps come from statmount (Linux 6.15: STATMOUNT_MNT_UIDMAP
/ STATMOUNT_MNT_GIDMAP), also as the caller sees them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from engine.records import record

from engine import forkrun, kernel
from engine.image import USERNS_LIMITS

# linux/nsfs.h
NS_GET_USERNS = 0xB701
NS_GET_PARENT = 0xB702
NS_GET_OWNER_UID = 0xB704

STATMOUNT_MNT_UIDMAP = 0x2000
STATMOUNT_MNT_GIDMAP = 0x4000


def ns_owner_fd(ns_path_or_fd) -> int:
    """A new fd on the user namespace that owns the namespace at `ns_path_or_fd`."""
    fd = os.open(ns_path_or_fd, os.O_RDONLY | os.O_CLOEXEC) if isinstance(ns_path_or_fd, str) else ns_path_or_fd
    try:
        return fcntl.ioctl(fd, NS_GET_USERNS)
    finally:
        if isinstance(ns_path_or_fd, str):
            os.close(fd)


def parent_fd(userns_fd: int) -> int | None:
    """A new fd on the parent of user namespace `userns_fd`, or None at the top the caller may see."""
    try:
        return fcntl.ioctl(userns_fd, NS_GET_PARENT)
    except OSError as e:
        if e.errno == errno.EPERM:  # the parent is outside the caller's user namespace (or none)
            return None
        raise


def owner_uid(userns_fd: int) -> int:
    """The uid (in the caller's ids) that made the user namespace at `userns_fd`: the kernel gives
    it every capability there from the parent namespace (it may setns into it, ptrace its processes)."""
    buf = fcntl.ioctl(userns_fd, NS_GET_OWNER_UID, b"\0" * 4)
    return struct.unpack("=I", buf)[0]


def ino(fd: int) -> int:
    """The inode number that names the namespace at `fd` on this boot."""
    return os.fstat(fd).st_ino


def own_userns_ino() -> int:
    """The inode of the caller's user namespace."""
    return os.stat("/proc/self/ns/user").st_ino


@record(frozen=True)
class Maps:
    """The id maps of one user namespace as the reader sees them."""

    uid_map: tuple[tuple[int, int, int], ...]
    gid_map: tuple[tuple[int, int, int], ...]
    setgroups: str            # "allow" or "deny"
    owner: int | None = None  # the uid that made it (a user namespace's, not an idmapped mount's)

    def text(self) -> str:
        """One stable line: ``uid 0 100000 65536 gid 0 100000 65536 setgroups allow [owner 1000]`` (the
        owner when not root: root made most)."""
        def ranges(m):
            return ",".join(f"{a} {b} {c}" for a, b, c in m) or "-"
        owner = f" owner {self.owner}" if self.owner else ""
        return f"uid {ranges(self.uid_map)} gid {ranges(self.gid_map)} setgroups {self.setgroups}{owner}"


def inside(ids, ranges) -> list[int | None]:
    """Reader's ids -> ids inside a namespace with `ranges` (inside, outside, count); None: unmapped there."""
    return [next((ins + (i - o) for ins, o, c in ranges if o <= i < o + c), None) for i in ids]


def outside(ids, ranges) -> list[int | None]:
    """Ids inside a namespace with `ranges` (inside, outside, count) -> the reader's; None: unmapped."""
    return [next((o + (i - ins) for ins, o, c in ranges if ins <= i < ins + c), None) for i in ids]


def parse_map(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse a uid_map / gid_map text into (inside, outside, count) triples."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts:
            out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return tuple(out)


def read_maps_of_pid(pid: int) -> Maps:
    """The maps of the user namespace process `pid` is in."""
    with open(f"/proc/{pid}/uid_map") as f:
        uid = parse_map(f.read())
    with open(f"/proc/{pid}/gid_map") as f:
        gid = parse_map(f.read())
    with open(f"/proc/{pid}/setgroups") as f:
        sg = f.read().strip()
    return Maps(uid, gid, sg)


def read_maps_of_fd(userns_fd: int) -> Maps:
    """The maps of the user namespace at `userns_fd` (which may hold no process): a forked child
    joins it and waits while the caller reads the child's /proc files, so that the maps are shown
    in the caller's ids."""
    pid, ready_r, go_w = _hold_in(lambda keep: kernel.setns(userns_fd, kernel.CLONE_NEWUSER))
    try:
        if not os.read(ready_r, 1):
            raise OSError(errno.EPERM, "cannot enter a user namespace to read its maps")
        return read_maps_of_pid(pid)
    finally:
        _release(pid, ready_r, go_w)


def outermost_owned(pid: int) -> tuple[Maps, int] | None:
    """(its maps, its owner's uid) of the outermost user namespace at or above `pid`'s, below the
    caller's own, that a non-root user made (every id that user could give is one it maps); None
    when root made them all."""
    top = own_userns_ino()
    fd: int | None = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    found: tuple[int, int] | None = None
    try:
        while fd is not None and ino(fd) != top:
            uid = owner_uid(fd)
            if uid:
                if found is not None:
                    os.close(found[0])
                found = (os.dup(fd), uid)
            par = parent_fd(fd)
            os.close(fd)
            fd = par
        return None if found is None else (read_maps_of_fd(found[0]), found[1])
    finally:
        # (every path: a namespace that cannot be read keeps no fd of ours on it)
        for left in (fd, None if found is None else found[0]):
            if left is not None:
                os.close(left)


LIMIT_DEFAULT = (1 << 31) - 1                    # what a new user namespace starts with


def _read_limits() -> dict[str, int]:
    out = {}
    for name in USERNS_LIMITS:
        try:
            with open(f"/proc/sys/user/max_{name}") as f:
                value = int(f.read())
        except FileNotFoundError:
            continue   # a kernel without that limit
        if value != LIMIT_DEFAULT:
            out[name] = value
    return out


def read_limits(userns_fd: int) -> dict[str, int]:
    """The limits (user.max_*) of the user namespace at `userns_fd` that differ from a new one's
    (bwrap --disable-userns sets max_user_namespaces): /proc/sys/user shows the reader's namespace's,
    so a forked child that joined it reads them."""
    def read():
        kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
        return _read_limits()
    return forkrun.run(read)


def set_limits(userns_fd: int, limits: dict[str, int], proc_fd: int | None = None) -> None:
    """Give the user namespace at `userns_fd` the `limits` read_limits read, from a forked child
    that joined it (it has every capability there); `proc_fd`: a /proc to write them through, when
    the caller's root has none."""
    def write():
        kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
        for name, value in limits.items():
            path = f"sys/user/max_{name}"
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_fd) if proc_fd is not None \
                else os.open("/proc/" + path, os.O_WRONLY | os.O_CLOEXEC)
            with os.fdopen(fd, "w") as f:
                f.write(str(value))
    if limits:
        forkrun.run(write)


class UsernsTree:
    """The user namespaces met while reading a process tree, below the reader's own.

    `describe(fd)` names a user namespace by its chain of maps from the reader's
    namespace down (``init`` is the reader's own; ``init > [maps] > [maps]`` a
    grandchild), which is what a restore must reproduce.
    """

    def __init__(self):
        self.top = own_userns_ino()
        self._desc: dict[int, str] = {self.top: "init"}
        self._maps: dict[int, Maps] = {}
        self._limits: dict[int, dict[str, int]] = {}
        self._parent: dict[int, int | None] = {self.top: None}

    def _learn(self, fd: int, pid: int | None = None) -> int:
        key = ino(fd)
        if key in self._desc:
            return key
        par = parent_fd(fd)
        if par is None:
            self._parent[key] = None
            self._desc[key] = "outside"
            return key
        try:
            pkey = self._learn(par)
        finally:
            os.close(par)
        maps = read_maps_of_pid(pid) if pid is not None else read_maps_of_fd(fd)
        maps = Maps(maps.uid_map, maps.gid_map, maps.setgroups, owner_uid(fd))
        self._maps[key] = maps
        self._limits[key] = limits = read_limits(fd)
        self._parent[key] = pkey
        shown = "".join(f" max_{k} {v}" for k, v in sorted(limits.items()))
        self._desc[key] = f"{self._desc[pkey]} > [{maps.text()}{shown}]"
        return key

    def of_pid(self, pid: int) -> int:
        """The inode of `pid`'s user namespace (learnt with its ancestors)."""
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self._learn(fd, pid)
        finally:
            os.close(fd)

    def learn(self, fd: int) -> int:
        """The inode of the user namespace at `fd` (learnt with its ancestors)."""
        return self._learn(fd)

    def owner_of(self, pid: int, nstype: str) -> int:
        """The inode of the user namespace owning `pid`'s namespace of type `nstype` (``mnt``, ``pid``...)."""
        fd = ns_owner_fd(f"/proc/{pid}/ns/{nstype}")
        try:
            return self._learn(fd)
        finally:
            os.close(fd)

    def describe(self, key: int) -> str:
        """The chain-of-maps name of a learnt user namespace."""
        return self._desc[key]

    def maps(self, key: int) -> Maps | None:
        """The maps of a learnt user namespace (None for the reader's own)."""
        return self._maps.get(key)

    def limits(self, key: int) -> dict[str, int]:
        """The limits of a learnt user namespace that differ from a new one's (read_limits)."""
        return self._limits.get(key, {})

    def parent(self, key: int) -> int | None:
        """The inode of a learnt user namespace's parent (None at the top)."""
        return self._parent.get(key)

    def depth(self, key: int) -> int:
        """0 for the reader's own user namespace, 1 for a child, ..."""
        d = 0
        while self._parent.get(key) is not None:
            key = self._parent[key]
            d += 1
        return d


def set_idmap(mount_fd: int, userns_fd: int) -> None:
    """Make the detached mount at `mount_fd` idmapped with user namespace `userns_fd` (mount_setattr
    MOUNT_ATTR_IDMAP, Linux 5.12; only a mount not attached yet can take one)."""
    attr = kernel._MountAttr(kernel.MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    ret = kernel._syscall(kernel.NR["mount_setattr"], ctypes.c_int(mount_fd), b"", ctypes.c_uint(kernel.AT_EMPTY_PATH),
                          ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr(MOUNT_ATTR_IDMAP): {os.strerror(err)}")


def parse_idmap(text: str) -> dict | None:
    """``uid A B C,... gid A B C,...`` (as `idmaps` gives it) -> {"uid_map": [...], "gid_map": [...]};
    None when the kernel could not tell."""
    if text.startswith("unknown") or " gid " not in text:
        return None
    u, g = text[len("uid "):].split(" gid ", 1)

    def ranges(part: str):
        if part in ("-", "?"):
            return None if part == "?" else []
        return [[int(x) for x in r.split()] for r in part.split(",")]
    uid, gid = ranges(u), ranges(g)
    if uid is None or gid is None:
        return None
    return {"uid_map": uid, "gid_map": gid}


def _statmount_idmap(mnt_id: int, ns_id: int) -> tuple[str, str]:
    """(uid map, gid map) of an idmapped mount as statmount shows them (``inside outside count``
    ranges joined by ``,``), in the caller's ids."""
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    req = kernel._mnt_id_req(mnt_id, STATMOUNT_MNT_UIDMAP | STATMOUNT_MNT_GIDMAP, ns_id)
    ret = kernel._syscall(kernel.NR["statmount"], req, buf, ctypes.c_size_t(size), ctypes.c_uint(0))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statmount({mnt_id}) idmap: {os.strerror(err)}")
    raw = buf.raw
    got = struct.unpack_from("<Q", raw, 8)[0]
    # struct statmount: the idmap fields follow sb_source, opt_num/array, opt_sec_num/array and
    # supported_mask (offset 0x88 after the fields engine.kernel.statmount decodes).
    uid_num, uid_off, gid_num, gid_off = struct.unpack_from("<IIII", raw, 0x98)

    def strings(num: int, off: int, bit: int) -> str:
        if not got & bit:
            return "?"
        out, pos = [], 512 + off
        for _ in range(num):
            end = raw.index(b"\0", pos)
            out.append(raw[pos:end].decode())
            pos = end + 1
        return ",".join(" ".join(s.split()) for s in out) or "-"

    return strings(uid_num, uid_off, STATMOUNT_MNT_UIDMAP), strings(gid_num, gid_off, STATMOUNT_MNT_GIDMAP)


def _idmaps_inside(mntns_fd: int, wanted: list[tuple[int, int]]) -> dict[int, str]:
    """In a forked child: join the mount namespace, statmount each (old id, unique id) there."""
    kernel.setns(mntns_fd, kernel.CLONE_NEWNS)
    out = {}
    for old, unique in wanted:
        try:
            u, g = _statmount_idmap(unique, 0)
            out[old] = f"uid {u} gid {g}"
        except OSError as e:
            out[old] = f"unknown ({e.strerror})"
    return out


def idmaps(pid: int, mounts) -> dict[int, str]:
    """mountinfo id -> ``uid RANGES gid RANGES`` for the idmapped mounts of `pid`'s namespace.

    Empty when no mount is idmapped; ``unknown (why)`` per mount when the kernel cannot say
    (statmount's idmap fields are Linux 6.15) or the mount is covered. Each mount is found by its
    path as `pid` sees it (statx gives its unique id), and statmount asked from inside its
    namespace (a namespace id lookup does not find every namespace)."""
    marked = [m for m in mounts if "idmapped" in m.mount_opts]
    if not marked:
        return {}
    out, wanted = {}, []
    for m in marked:
        path = f"/proc/{pid}/root{m.mountpoint}"
        try:
            if kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) != m.mnt_id:
                out[m.mnt_id] = "unknown (covered)"
                continue
            wanted.append((m.mnt_id, kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW, unique=True)))
        except OSError as e:
            out[m.mnt_id] = f"unknown ({e.strerror})"
    if wanted:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            out.update(forkrun.run(_idmaps_inside, fd, wanted))
        except (OSError, forkrun.ChildError) as e:
            out.update({old: f"unknown ({e})" for old, _ in wanted})
        finally:
            os.close(fd)
    return out


def creds(pid: int) -> str:
    """``uid R,E,S,F gid R,E,S,F groups G,... proc U:G caps inh X prm X eff X bnd X amb X`` of `pid`
    in the reader's ids; `proc` is the owner of its /proc/PID files, which says whether it is dumpable
    (its ids when it is)."""
    fields = {}
    with open(f"/proc/{pid}/status", errors="surrogateescape") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                fields[key] = value.split()
    caps = " ".join(f"{k[3:].lower()} {fields[k][0]}" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
                    if k in fields)
    st = os.stat(f"/proc/{pid}/status")   # (not /proc/PID: a directory is always its euid's)
    return (f"uid {','.join(fields.get('Uid', []))} gid {','.join(fields.get('Gid', []))} "
            f"groups {','.join(sorted(fields.get('Groups', []), key=int)) or '-'} proc {st.st_uid}:{st.st_gid} caps {caps}")


# --- restore: making user namespaces and locked mount namespaces --------------------------------

def _hold_in(prepare) -> tuple[int, int, int]:
    """Fork a child that runs `prepare(keep)` (setns/unshare; `keep`: the child's two pipe fds, for
    one that closes fds) and then waits; return (pid, ready_r, go_w). The caller reads one byte from
    ready_r (empty: the child failed) and closes go_w to let it go."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            prepare((ready_w, go_r))
            os.write(ready_w, b"1")
            os.read(go_r, 1)
            code = 0
        except BaseException:  # noqa: BLE001 - the empty pipe tells the parent
            pass
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    return pid, ready_r, go_w


NOGROUP = 65534   # the kernel's overflow gid


def become_owner(owner: int, nested: bool, keep: tuple[int, ...]) -> None:
    """In the child that unshares a user namespace the image says user `owner` made: become that
    uid holding nothing of the restorer's. Its owner may ptrace it once it is in the namespace
    (every capability there; dumpable, for its maps), so it must hold no more than that user
    would: every fd but `keep` closed (the restorer's lifeline among them), and, unless `nested`
    (ids of a parent user namespace the image made), no group of root's (gid nogroup, no
    supplementary groups)."""
    kernel.close_fds_except(keep)
    if not nested:
        os.setgroups([])
        os.setresgid(NOGROUP, NOGROUP, NOGROUP)
    os.setresuid(owner, owner, owner)
    kernel.set_dumpable(True)   # (its maps are written through /proc/PID, as for a parent's root)


def _release(pid: int, ready_r: int, go_w: int) -> None:
    os.close(ready_r)
    os.close(go_w)
    os.waitpid(pid, 0)


def translate(ranges, parent_ranges) -> list[tuple[int, int, int]]:
    """Ranges whose outside ids are the reader's, rewritten with outside ids as a parent user
    namespace (whose own map is `parent_ranges`, also in the reader's ids) sees them: a child's map
    is written from inside its parent. ValueError when an id is not mapped in the parent (the
    kernel would refuse the map too). `parent_ranges` None: the parent is the reader's namespace."""
    if parent_ranges is None:
        return [tuple(r) for r in ranges]
    out = []
    for inside, outside, count in ranges:
        while count:
            hit = next(((pi, po, pc) for pi, po, pc in parent_ranges if po <= outside < po + pc), None)
            if hit is None:
                raise ValueError(f"id {outside} is not mapped in the parent user namespace")
            pi, po, pc = hit
            n = min(count, po + pc - outside)
            out.append((inside, pi + (outside - po), n))
            inside, outside, count = inside + n, outside + n, count - n
    return out


def make(maps: Maps, parent_fd: int | None = None, parent_maps: Maps | None = None) -> int:
    """A new user namespace with `maps` (outside ids in the caller's ids), as a child of the
    caller's user namespace or of `parent_fd` (whose maps are `parent_maps`); returns an fd on it.

    A child process unshares it and waits; the maps are written by a process in the parent
    namespace (the caller, or a second child that joined the parent), as the kernel requires."""
    def become_parent_root():
        # In the parent, act as an id it maps (its root when it has one): the new namespace's owner,
        # and the writer of its maps, must be ids the parent knows.
        kernel.setns(parent_fd, kernel.CLONE_NEWUSER)
        gid = 0 if any(i == 0 for i, _, _ in parent_maps.gid_map) else parent_maps.gid_map[0][0]
        uid = 0 if any(i == 0 for i, _, _ in parent_maps.uid_map) else parent_maps.uid_map[0][0]
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # Changing ids cleared "dumpable", which makes /proc/PID files root's (the initial
        # namespace's, unmapped here): the maps could not be written.
        kernel.set_dumpable(True)

    # The uid that unshares a user namespace owns it (every capability there from the parent): the
    # dumped owner, as the parent sees it (a rootless runtime's user, not the restorer's root).
    try:
        owner = None if maps.owner is None else \
            translate(((0, maps.owner, 1),), parent_maps.uid_map if parent_maps else None)[0][1]
    except ValueError:
        raise OSError(errno.EINVAL, f"making a user namespace ({maps.text()}): its owner is not mapped in "
                                    "its parent") from None

    def unshare_user(keep):
        if parent_fd is not None:
            become_parent_root()
        if owner is not None and owner != os.geteuid():
            become_owner(owner, parent_fd is not None, keep)
        kernel.unshare(kernel.CLONE_NEWUSER)

    child = _hold_in(unshare_user)
    pid, ready_r, go_w = child
    try:
        if not os.read(ready_r, 1):
            raise OSError(errno.EPERM, "cannot create a user namespace")
        uid = translate(maps.uid_map, parent_maps.uid_map if parent_maps else None)
        gid = translate(maps.gid_map, parent_maps.gid_map if parent_maps else None)

        def write_maps():
            if parent_fd is not None:
                become_parent_root()
            for name, text in (("setgroups", maps.setgroups), ("uid_map", _map_text(uid)),
                               ("gid_map", _map_text(gid))):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(text)

        if parent_fd is None:
            write_maps()
        else:
            forkrun.run(write_maps)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"making a user namespace ({maps.text()}): {e.strerror or e}") from None
    finally:
        _release(*child)


def _map_text(ranges) -> str:
    return "".join(f"{a} {b} {c}\n" for a, b, c in ranges)


def copy_mntns_into(userns_fd: int, mntns_fd: int, proc_fd: int | None = None, reach: tuple[int, ...] = (),
                    reached: list | None = None) -> int:
    """A copy of mount namespace `mntns_fd` made from inside user namespace `userns_fd`; returns an
    fd on the copy (`proc_fd`: a /proc to find it in, when the caller's root has none). The kernel
    locks what it copies into a less privileged user namespace (every
    mount but the root, and each mount's flags), as it did when the dumped namespace was made.
    `reach`: up to two fds on directories of that namespace no path of the copy will reach (beneath
    a locked cover); the copier makes them its cwd and root, which the kernel moves onto their
    copies (as it moved the dumped process's), and `reached` gets an O_PATH fd on each copy."""
    if len(reach) > 2:
        raise OSError(errno.EOPNOTSUPP, "more than two covered mounts to reach in one copied mount namespace")

    def prepare(keep):
        kernel.setns(mntns_fd, kernel.CLONE_NEWNS)     # as the caller: needs its privilege
        if len(reach) > 1:
            os.fchdir(reach[1])
            os.chroot(".")
        if reach:
            os.fchdir(reach[0])
        kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
        kernel.unshare(kernel.CLONE_NEWNS)
    held = _hold_in(prepare)
    pid, ready_r, _ = held
    base = "/proc/" if proc_fd is None else ""
    try:
        if not os.read(ready_r, 1):
            raise OSError(errno.EPERM, "cannot copy a mount namespace into a user namespace")
        for link in ("cwd", "root")[:len(reach)]:
            reached.append(os.open(f"{base}{pid}/{link}", os.O_PATH | os.O_CLOEXEC, dir_fd=proc_fd))
        return os.open(f"{base}{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    finally:
        _release(*held)


def caller_ranges() -> tuple[tuple, tuple]:
    """(uid ranges, gid ranges) the caller's user namespace maps: ids a map may use as outside ids."""
    m = read_maps_of_pid(os.getpid())
    return tuple((i, c) for i, _, c in m.uid_map), tuple((i, c) for i, _, c in m.gid_map)


def uncovered(ranges, have) -> int | None:
    """The first outside id of `ranges` that no (start, count) of `have` covers, or None."""
    for _, outside, count in ranges:
        pos, end = outside, outside + count
        while pos < end:
            hit = next(((s, c) for s, c in have if s <= pos < s + c), None)
            if hit is None:
                return pos
            pos = hit[0] + hit[1]
    return None


def host_gate(p: dict, users: dict, known: dict | None = None) -> tuple[str, tuple[int, int, list[int]]] | None:
    """(the outermost user namespace a non-root user made, (uid, gid, groups) of that user as the
    host names them) when image process `p` lies beneath such a namespace (a rootless tree), else
    None. Restore reaches the host's files for such a process only as far as that user could
    (engine/restore.py open_at, host_reach): as root it would hand the user a file it could not open
    (an fd on /etc/shadow) or a connection it could not make. The user, not the process's own ids:
    a process may hold what it opened before it dropped them (a log its container's root opened,
    then setuid to www-data), which its user could open as well. `known`: owner -> its (uid, gid,
    groups), kept by the caller for one restore (the user database is read once per owner)."""
    top = owned_top(p.get("userns"), users)
    if top is None:
        return None
    owner = users[top]["owner"]
    if known is None:
        known = {}
    if owner not in known:
        known[owner] = user_ids(owner)
    return top, known[owner]


def owned_top(name: str | None, users: dict) -> str | None:
    """The outermost user namespace at or above image user namespace `name` that a non-root user
    made, or None (root made them all)."""
    top = None
    while name is not None:
        if users[name].get("owner"):
            top = name
        name = users[name].get("parent")
    return top


def user_ids(uid: int) -> tuple[int, int, list[int]]:
    """(uid, gid, groups) of user `uid` as the host's user database names them (nogroup and no
    groups for a uid it does not know)."""
    import pwd
    try:
        ent = pwd.getpwuid(uid)
        return uid, ent.pw_gid, os.getgrouplist(ent.pw_name, ent.pw_gid)
    except (KeyError, OSError):
        return uid, NOGROUP, []


def may_search(ids: tuple, d: int, maps) -> bool:
    """Whether user `ids` ((uid, gid, groups)) may search directory `d` (an O_PATH fd): as that user,
    or as its namespace's root on a directory whose stat `maps(st)` says that namespace maps. Dump's
    look (engine/hostfiles.py) and restore's gate (engine/restore.py) ask it alike."""
    try:
        with kernel.as_user_for_a_while(*ids):
            os.close(os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=d))   # (a walk's first check)
        return True
    except PermissionError:
        return maps(os.fstat(d))


def reach(ids: tuple, maps, fn, at, dirs=None):
    """fn(), the one rule by which a rootless tree gets a file of the host's (restore's gate,
    engine/restore.py host_reach, and dump's look before the stop, engine/hostfiles.py, ask it
    alike): fn runs as user `ids` ((uid, gid, groups)) first; denied that (PermissionError), as root
    only on a file (an O_PATH fd at()) whose stat `maps(st)` says the tree's outermost owned user
    namespace maps, reached through directories (O_PATH fds dirs(), the mount's root first) each of
    which the user may search or whose ids it maps too (may_search): its root passes a walk's
    search checks only so (a file of mapped ids in root's 0700 directory stays out of reach).
    Else that PermissionError is raised."""
    try:
        with kernel.as_user_for_a_while(*ids):
            return fn()
    except PermissionError:
        fd = at()
        try:
            if not maps(os.fstat(fd)):
                raise
        finally:
            os.close(fd)
        if dirs is not None:
            try:
                walked = dirs()
            except PermissionError:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES)) from None
            try:
                if not all(may_search(ids, d, maps) for d in walked):
                    raise
            finally:
                for d in walked:
                    os.close(d)
    return fn()


def dirs_to(open_at, path: str) -> list[int]:
    """reach's `dirs` for `path`: O_PATH fds (the caller's) on each directory a walk to it searches,
    from the top (`open_at("")`) down to the file's own directory, opened by `open_at(rel, flags)`;
    the file itself is opened (not followed) to see it is no symlink, and closed. PermissionError
    when a directory on the way is a symlink: the walk would search directories not named here
    (reach grants its fallback on the named ones only)."""
    parts = [x for x in path.split("/") if x]
    out: list[int] = []
    try:
        for k in range(len(parts) + 1):
            out.append(open_at("/".join(parts[:k]), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC))
            if k < len(parts) and not stat.S_ISDIR(os.fstat(out[-1]).st_mode):
                raise PermissionError(errno.EACCES, "a symlink on the way")
        if parts and stat.S_ISLNK(os.fstat(out[-1]).st_mode):
            raise PermissionError(errno.EACCES, "a symlink at the end")
    except BaseException:
        for fd in out:
            os.close(fd)
        raise
    os.close(out.pop())
    return out


def may_walk(ids: tuple, top: int, rel: str, maps, resolve: int) -> bool:
    """Whether user `ids` may walk from directory `top` (an fd) to `rel` beneath it: each directory
    above `rel` one it may search (may_search, `maps`), opened with openat2's `resolve`, no symlink
    on the way."""
    parts = [x for x in rel.split("/") if x]
    for k in range(len(parts)):
        try:
            d = kernel.openat2(top, "/".join(parts[:k]) or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, resolve)
        except OSError:
            return False   # (a symlink on the way, or nothing there: not a walk its user could make)
        try:
            if not stat.S_ISDIR(os.fstat(d).st_mode) or not may_search(ids, d, maps):
                return False
        finally:
            os.close(d)
    return True


def maps_file(top: str, users: dict, st: os.stat_result) -> bool:
    """Whether user namespace `top` maps both the owner and the group of a file with stat `st`: its
    root, which its user may become, then passes the permission check by CAP_DAC_OVERRIDE (the
    kernel's capable_wrt_inode_uidgid)."""
    ns = users[top]
    return (inside([st.st_uid], ns["uid_map"])[0] is not None
            and inside([st.st_gid], ns["gid_map"])[0] is not None)
