"""Binding a unix socket's dumped name again at restore, its socket file in the directory it was in.

The name as the image keeps it (`name_of`), the file system ids to bind with (its dumped owner, as
the stand-in's user namespace names them), and the bind itself: `bind_beside` binds the dumped
name with its file in a given directory whatever the name leads to from the stand-in (beneath an
overmount, on a detached mount, in another namespace of the tree), from a forked child chrooted
to a fresh tmpfs; before Linux 6.15 (strategy sources=yard) that tmpfs is attached first in a
private mount namespace of the child (`attach_privately`).
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
from engine import rx
import socket
import stat

from engine import forkrun, kernel, threadids
from engine.fds import FdError


def name_of(raw) -> dict:
    """A socket name as getsockname/getpeername give it, as the image keeps it: {"abstract": base64}, {"path": name}, or {} for none."""
    if isinstance(raw, bytes):
        name = raw[1:] if raw[:1] == b"\0" else raw
        return {"abstract": binascii.b2a_base64(name, newline=False).decode()} if raw else {}
    if not raw:
        return {}
    return {"path": raw}


MAGIC = rx.compile(r"^/proc/(?:self|thread-self|[0-9]+)/fd/([0-9]+)/([^/]+)$")


# A stand-in in a nested user namespace: its maps as the image names the ids, the restorer's (the
# dumper's) frame, which /proc/self reads only relative to the parent namespace (`set_outer_maps`).
_OUTER: dict[str, list[tuple[int, int, int]]] = {}


def set_outer_maps(uid_map, gid_map) -> None:
    """In a stand-in whose user namespace is nested in another: its maps in the image's frame (the
    restorer sends them, engine/userns_cr.py send_outer_maps), so that `_map` names an image's
    owner ids (a socket's sk_uid, a socket file's owner) as they are, not relative to the parent."""
    _OUTER["uid_map"] = [tuple(r) for r in uid_map]
    _OUTER["gid_map"] = [tuple(r) for r in gid_map]


def _map(map_name: str, proc: int = -1) -> list[tuple[int, int, int]]:
    """Our user namespace's map /proc/self/`map_name` (read from inside: outside ids relative to
    its parent, the initial namespace for a first-level one; a nested one's as the restorer sent it,
    `set_outer_maps`). `proc`: an fd on /proc, where our "/" has none (the restorer's yard)."""
    if proc < 0 and map_name in _OUTER:
        return list(_OUTER[map_name])
    path = f"/proc/self/{map_name}" if proc < 0 else f"self/{map_name}"
    with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=None if proc < 0 else proc)) as f:
        return [tuple(int(x) for x in line.split()) for line in f]


def _here(kid: int, map_name: str, proc: int = -1, ranges=None) -> int | None:
    """The id that outside id `kid` is in our user namespace (map `ranges`, else read: _map), or
    None when unmapped."""
    for inside, outside, count in _map(map_name, proc) if ranges is None else ranges:
        if outside <= kid < outside + count:
            return inside + kid - outside
    return None


def bind_ids(spec: dict, proc: int = -1) -> tuple[int, int] | None:
    """The file system ids to make `spec`'s socket file with: its dumped owner, as our user namespace
    names it; None (our own) when there is none, it is ours, or we cannot name it. `proc`: as _here's."""
    owner = spec.get("owner")
    if not owner:
        return None
    ids = _here(owner[0], "uid_map", proc), _here(owner[1], "gid_map", proc)
    if None in ids or ids == (os.geteuid(), os.getegid()):
        return None
    return ids


SO_PEERGROUPS = 59


def listener_groups(s: socket.socket) -> list[int]:
    """The supplementary groups listening socket `s` recorded at listen() (what SO_PEERGROUPS shows
    its clients), as our user namespace names them."""
    import ctypes
    n = 64
    while True:
        buf = (ctypes.c_uint * n)()
        size = ctypes.c_uint(ctypes.sizeof(buf))
        if ctypes.CDLL(None, use_errno=True).getsockopt(s.fileno(), socket.SOL_SOCKET, SO_PEERGROUPS, buf,
                                                        ctypes.byref(size)) == 0:
            return list(buf[:size.value // 4])
        e = ctypes.get_errno()
        if e != errno.ERANGE:
            raise OSError(e, f"getsockopt(SO_PEERGROUPS): {os.strerror(e)}")
        n = size.value // 4   # (the kernel said how much it needs)


def _held(groups: list[int | None]) -> bool:
    """Whether we hold supplementary `groups` (as our user namespace names them, None: unmapped
    here), those unmapped read as the overflow gid: a stand-in holds the process's own, unmapped
    ones too, from before it entered (engine/userns_groups.py), and the validator lets a listener
    name no other unmapped ones (imageformat._check_fd_ids)."""
    if None not in groups:
        return sorted(groups) == sorted(os.getgroups())
    with open("/proc/sys/kernel/overflowgid") as f:
        overflow = int(f.read())
    return sorted(overflow if g is None else g for g in groups) == sorted(os.getgroups())


def as_creds(spec: dict, fn) -> None:
    """fn() (a listen(), which records the caller's credentials for SO_PEERCRED and SO_PEERGROUPS)
    with the dumped listener's effective ids and groups (`spec["cred"]`, `spec["cred_groups"]`, as
    the dumper's user namespace names them), by a thread of ours that takes them for itself alone
    (engine/threadids.py): the kernel records our pid, the clients see the process that holds
    the socket; by ourselves when they are our own; by a short-lived child when it listened in a
    process that is gone (`spec["cred_gone"]`)."""
    cred = spec.get("cred")
    if not cred:
        fn()
        return
    gids = _map("gid_map")   # (read once: a listener may list 65536 groups)
    ids = (_here(cred[0], "uid_map"), _here(cred[1], "gid_map", ranges=gids))
    groups = [_here(g, "gid_map", ranges=gids) for g in spec["cred_groups"]] if "cred_groups" in spec else None
    if groups is not None and _held(groups):
        groups = None   # (ours already: a user namespace that denies setgroups would refuse the call)
    if None in ids or None in (groups or ()):
        raise FdError(errno.EOPNOTSUPP, f"listened as uid {cred[0]} gid {cred[1]} groups {spec.get('cred_groups')}, "
                                        "which the process's user namespace does not map")
    if spec.get("cred_gone"):
        def body():
            if groups is not None:
                os.setgroups(groups)
            os.setresgid(-1, ids[1], -1)
            os.setresuid(-1, ids[0], -1)
            fn()

        forkrun.run(body)   # (its clients see the pid of a process that is gone, as they did)
    elif ids == (os.geteuid(), os.getegid()) and groups is None:
        fn()
    else:
        threadids.call_as(ids[0], ids[1], groups, fn)


def _as(ids: tuple[int, int] | None, fn, *args) -> None:
    """fn(*args), by a child with file system ids `ids` when they are given (they would stay with
    the stand-in, and SECBIT_NO_SETUID_FIXUP with them)."""
    if ids is None:
        fn(*args)
        return

    def body():
        kernel.fs_ids_keeping_caps(*ids)
        fn(*args)

    forkrun.run(body)


def mapped(ids: tuple[int, int] | None, where, fn, *args) -> None:
    """fn(*args) (which makes a file in directory `where`, an fd or a path) with file system ids
    `ids`, or our own; where the filesystem's user namespace does not map those (EOVERFLOW: a
    tmpfs mounted inside a user namespace, our ids the restorer's), again as the directory's owner."""
    try:
        _as(ids, fn, *args)
    except OSError as e:
        if e.errno != errno.EOVERFLOW:
            raise
        st = os.fstat(where) if isinstance(where, int) else os.stat(where)
        if (st.st_uid, st.st_gid) == ids:
            raise
        _as((st.st_uid, st.st_gid), fn, *args)


def bind_path(s: socket.socket, spec: dict, fds: list[int]) -> None:
    """Bind to the dumped name (`_bind_path`); a name another file holds there is refused in one line
    that says so (the kernel's "Address already in use" does not)."""
    try:
        _bind_path(s, spec, fds)
    except FdError:
        raise
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        raise FdError(errno.EADDRINUSE, f"{spec['path']}: another file has that name (a unix socket is bound "
                                        "again only where the name is free or a stale socket's): Address already "
                                        "in use; remove that file, or restore where the name is free") from None


def _bind_path(s: socket.socket, spec: dict, fds: list[int]) -> None:
    """Bind to the dumped name, the socket file landing in the directory received (fds[0]).

    A name through /proc/self/fd/N/ is bound the same way, with that directory at N for the
    call; any other name is bound as it reads, from the stand-in's restored root."""
    name, d = spec["path"], fds[0] if fds else None
    ids = bind_ids(spec)
    if d is not None:
        try:
            if stat.S_ISSOCK(os.lstat(spec["base"], dir_fd=d).st_mode):
                if _live(d, spec["base"]):
                    raise FdError(errno.EADDRINUSE, f"{name}: its socket file's name {spec['base']!r} is a live "
                                                    "socket's (someone listens or is bound there): not taken over")
                os.unlink(spec["base"], dir_fd=d)   # the dumped socket's node: bind makes a new one
        except FileNotFoundError:
            pass
    m = MAGIC.match(name)
    if m is None and d is not None and not spec.get("ghost") and name.rsplit("/", 1)[-1] != spec["base"]:
        _bind_renamed(s, spec, d, name, ids)
        _chmod(spec, d)
        return
    if m is None and d is not None and bind_beside(s, d, name, ids):
        _chmod(spec, d)
        return
    if spec.get("ghost"):
        raise FdError(errno.EOPNOTSUPP, f"{name}: a deleted socket file is bound again aside, which a name with "
                                        "'.' or '..' components cannot be")
    if m is None or d is None:
        mapped(ids, d if d is not None else os.path.dirname(name) or ".", s.bind, name)
        _chmod(spec, d)
        return
    n = int(m[1])
    import fcntl
    # Whatever the stand-in holds at N (its channel, maybe) steps aside for the call: it is
    # single-threaded, and N holds the same description again right after.
    try:
        saved = fcntl.fcntl(n, fcntl.F_DUPFD_CLOEXEC, 1024)
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        saved = None
    cloexec = saved is not None and not os.get_inheritable(n)
    os.dup2(d, n)
    try:
        mapped(ids, d, s.bind, name)
        _chmod(spec, d)
    finally:
        if saved is None:
            os.close(n)
        else:
            os.dup2(saved, n, inheritable=not cloexec)
            os.close(saved)


def _live(d: int, base: str) -> bool:
    """Whether socket file `base` in directory `d` is bound by a live socket (one of the host's on an
    external mount, never the dumped socket's stale node). Asked by a datagram connect, which reaches
    no listener: the kernel answers EPROTOTYPE for a socket of another type bound there, ECONNREFUSED
    for none (a stream connect would queue a connection on a host daemon's listener, and take one
    bound but not listening yet, refusing it likewise, for a stale node)."""
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as c:
            os.fchdir(d)   # (the name relative to it: a stand-in is single-threaded)
            try:
                c.connect(base)
            except ConnectionRefusedError:
                return False
            except OSError:
                return True   # (EPROTOTYPE: a socket of another type is bound there)
            finally:
                os.fchdir(here)
    finally:
        os.close(here)
    return True


def _bind_renamed(s: socket.socket, spec: dict, d: int, name: str, ids: tuple[int, int] | None) -> None:
    """Bind `name` whose socket file had another name in directory `d` (`spec["base"]`: linked or
    renamed there after the bind, as supervisord and daemons that bind a temporary name do): bound
    in a fresh directory beside it (the name's own last part may be another file's now), then
    renamed into place; the socket keeps the name it was bound to."""
    made = name.rsplit("/", 1)[-1]
    sub = f".mntcr-sock-{os.getpid()}"
    mapped(ids, d, lambda: os.mkdir(sub, 0o700, dir_fd=d))
    try:
        at = os.open(sub, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            if not bind_beside(s, at, name, ids):
                raise FdError(errno.EOPNOTSUPP, f"{name}: its socket file has another name ({spec['base']}), "
                                                "which a name with '.' or '..' components cannot be bound beside")
            try:
                mapped(ids, d, _rename_noreplace, at, made, d, spec["base"])
            except FileExistsError:
                # (a socket file of that name was unlinked above: this one is no socket, maybe the
                # host's own on an external mount, which a rename would have replaced)
                raise FdError(errno.EEXIST, f"{name}: its socket file's name {spec['base']!r} is another file "
                                            "(no socket) in its directory: not replaced; remove it first") from None
        finally:
            os.close(at)
    finally:
        def clean():
            try:
                os.unlink(f"{sub}/{made}", dir_fd=d)   # (left there only when the rename failed)
            except FileNotFoundError:
                pass
            os.rmdir(sub, dir_fd=d)

        mapped(ids, d, clean)


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): FileExistsError when `dst` exists."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), 1) != 0:   # (RENAME_NOREPLACE)
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def _chmod(spec: dict, d: int | None) -> None:
    """Give the socket file just bound in directory `d` its dumped mode."""
    if "mode" in spec and d is not None:
        os.chmod(spec["base"], spec["mode"], dir_fd=d)


def bind_beside(s: socket.socket, d: int, name: str, ids: tuple[int, int] | None = None) -> bool:
    """Bind `s` to `name` with its socket file in directory `d`, wherever `name` leads from here
    (the file may lie beneath an overmount, on a detached mount, or in another mount namespace of
    the tree). A forked child chroots to a detached tmpfs where `name`'s directory is a symlink
    to `d` through a procfs of its own (/P/self/fd/D; `proc_mount`), and binds there: the name is the dumped
    one, the file lands in `d`. Before Linux 6.15 (no mounts on a detached mount: strategy
    sources=yard) that tmpfs is attached first, in a private mount namespace of the child
    (attach_privately). False where the name has dot components: then the caller binds the
    name as it reads from the stand-in's root. `ids`: the file system ids to bind with (bind_ids, mapped)."""
    from engine import strategy
    absolute = name.startswith("/")
    parts = [p for p in name.split("/")[:-1] if p]
    if any(p in (".", "..") for p in parts):
        return False
    private = strategy.current().sources == "yard"

    def body(ids):
        if ids is not None:
            kernel.fs_ids_keeping_caps(*ids)
        if not parts:
            os.fchdir(d)
            if absolute:
                os.chroot(".")
            s.bind(name)
            return True
        top = fresh_mount("tmpfs")
        sub = parts if absolute else ["w"] + parts
        procdir = next(p for p in ("p", "q") if p != sub[0])
        os.mkdir(procdir, 0o555, dir_fd=top)
        proc = proc_mount()   # (before attach_privately: a copy of our /proc is taken from our root)
        if private:
            attach_privately(top)   # (no mounts on detached mounts before Linux 6.15)
        kernel.move_mount(proc, "", top, procdir, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        for i in range(len(sub) - 1):
            os.mkdir("/".join(sub[: i + 1]), 0o755, dir_fd=top)
        os.symlink(f"/{procdir}/self/fd/{d}", "/".join(sub), dir_fd=top)
        os.fchdir(top)
        os.chroot(".")
        if not absolute:
            os.chdir("w")
        s.bind(name)
        return True

    try:
        return forkrun.run(body, ids)
    except OSError as e:
        st = os.fstat(d)
        if e.errno != errno.EOVERFLOW or (st.st_uid, st.st_gid) == ids:
            raise
        return forkrun.run(body, (st.st_uid, st.st_gid))   # as in mapped


def attach_privately(top: int) -> None:
    """In a forked child: attach detached mount `top` over the root of a mount namespace of the
    child's own, whose mounts are all private (nothing it mounts propagates back to the tree's).
    setns through our own pidfd puts our root at the new namespace's root, where a recursive
    make-private can start even when the caller's root is not a mount's root (a chroot)."""
    kernel.unshare(kernel.CLONE_NEWNS)
    me = kernel.pidfd_open(os.getpid())
    try:
        kernel.setns(me, kernel.CLONE_NEWNS)
    finally:
        os.close(me)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    kernel.move_mount(top, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)


def proc_mount() -> int:
    """A detached proc mount in which `self` is the caller (in a child that exits soon): a new proc
    superblock, or, where the caller may not make one (a user namespace that does not own its pid
    namespace: `unshare -Urm` without -p, EPERM), a recursive copy of its root's /proc."""
    try:
        return fresh_mount("proc")
    except PermissionError:
        pass
    try:
        fd = kernel.open_tree(kernel.AT_FDCWD, "/proc", kernel.OPEN_TREE_CLONE | kernel.AT_RECURSIVE)
    except OSError:
        fd = None
    if fd is not None and kernel.fstatfs_type(fd) == _PROC_SUPER_MAGIC:
        return fd
    if fd is not None:
        os.close(fd)
    raise PermissionError(errno.EPERM, "binding a socket name through a directory needs a proc, which a process "
                                       "in a user namespace that does not own its pid namespace cannot make, and "
                                       "its root has no proc at /proc to copy: mount proc on /proc in its mount "
                                       "namespace and dump again")


_PROC_SUPER_MAGIC = 0x9FA0


def fresh_mount(fstype: str) -> int:
    """A detached mount of a new superblock of `fstype` (in a child that exits soon)."""
    fs = kernel.fsopen(fstype)
    kernel.fsconfig(fs, kernel.FSCONFIG_CMD_CREATE)
    return kernel.fsmount(fs)
