"""Finding a path-bound unix socket's file at dump: which mount of the tree holds its inode.

The name's path in the process's namespace or another namespace of the tree (a runtime binds
inside the container it builds), else a bounded search of that filesystem's mounts, covered ones
too (through clones, beneath an overmount of the mount or of a directory of it); a file on a mount lazily unmounted since is handed
over by the kernel itself (SIOCUNIXFILE). Where the mount found is read-only, the same directory
through a read-write mount of the superblock (restore binds there again).
"""

from __future__ import annotations

import errno
import os
import stat

from engine import kernel
from engine.fds import FdError, unix_bind


MAX_WALK = 100_000


def vfs_dev(vfs) -> int:
    """The st_dev of sock_diag's VFS (ino, dev) pair of a socket file (the kernel's dev_t encoding)."""
    return os.makedev(vfs[1] >> 20, vfs[1] & 0xFFFFF)


def socket_at(path: str, vfs) -> int | None:
    """The mount id of `path` (not followed) when it is the socket file sock_diag's `vfs` names,
    else None (another file, or none: gone or out of reach)."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISSOCK(st.st_mode) and (st.st_ino, st.st_dev) == (vfs[0], vfs_dev(vfs)):
            return kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW)
    except OSError:
        pass
    return None


def locate(d, name: str, vfs) -> dict:
    """{mnt, path} of the socket file a path-bound socket made (its name may be relative, or go
    through /proc/self/fd/N/, as conmon binds its attach socket): the name when it leads to the
    socket's inode (sock_diag's VFS dev and ino), else a bounded search of the visible mounts of
    that filesystem; first in the process's mount namespace, then in the tree's others (a
    runtime binds a socket inside the container it builds: systemd-nspawn's /run/host/notify)."""
    if vfs is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name}, but its socket file is gone: not supported")
    ino, dev = vfs[0], vfs_dev(vfs)
    spaces = [(d.pid, d.mounts)] + list(d.elsewhere)
    detached = _on_detached(d, known_mounts(d))
    if detached is not None:
        return detached
    if name.startswith("/") and not unix_bind.MAGIC.match(name):
        for pid, _mounts in spaces:
            mnt_id = socket_at(f"/proc/{pid}/root{name}", vfs)
            try:
                if mnt_id is not None:
                    return d.place(name, mnt_id, "socket")
            except OSError:
                pass   # (not placed by its name: searched for below)
    budget = [MAX_WALK]
    want = f"{os.major(dev)}:{os.minor(dev)}"
    covered = []
    for pid, mounts in spaces:
        root = f"/proc/{pid}/root"
        hidden = []
        parents = {m.parent_id for m in mounts}
        for m in sorted((m for m in mounts if m.dev == want), key=lambda m: (len(m.mountpoint), m.mnt_id)):
            top = root + ("" if m.mountpoint == "/" else m.mountpoint)
            try:
                visible = kernel.statx_mnt_id(top) == m.mnt_id   # (following /proc/PID/root itself)
            except OSError:
                visible = False
            if visible:
                found = _search(d, name, top, m, dev, ino, budget)
                if found is not None:
                    return found
            if not visible or m.mnt_id in parents:   # (a visible one's directories may be overmounted)
                hidden.append(m.mnt_id)
        if hidden:
            covered.append((pid, mounts, hidden))
    # Beneath an overmount: the covered mounts of that filesystem, and the visible ones with mounts on
    # them, cloned (where their covers are gone, in a private copy of the namespace, as dump reaches
    # any covered mount): a clone shows what their mounts cover.
    for pid, mounts, hidden in covered:
        found = _search_clones(d, name, pid, mounts, hidden, dev, ino, budget)
        if found is not None:
            return found
    raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name}: its socket file is on no mount of the tree "
                                    "(a detached mount): not supported")


SIOCUNIXFILE = 0x89E0   # SIOCPROTOPRIVATE: an O_PATH fd on a bound socket's file (what CRIU uses)


def known_mounts(d) -> set[int]:
    """The ids of the mounts of the tree's namespaces, as fd `d` sees them (its own and `elsewhere`)."""
    return {m.mnt_id for _pid, mounts in [(d.pid, d.mounts)] + list(d.elsewhere) for m in mounts}


def detached_file(d, known: set[int]) -> tuple[int, int] | None:
    """(our O_PATH fd on the socket file of socket fd `d`, its mount id) when that file lies on a mount
    not in `known` (a mount in no namespace of the tree: bound on a mount lazily unmounted since, which
    the socket keeps alive), else None. The kernel hands us the file itself (SIOCUNIXFILE), on its very
    mount. Without SIOCUNIXFILE: None (the search refuses such a file). The caller closes the fd."""
    import fcntl
    try:
        f = fcntl.ioctl(d.copy(), SIOCUNIXFILE)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.ENOENT):
            return None
        raise
    try:
        with open(f"/proc/self/fdinfo/{f}") as info:
            mnt = next(int(line.split()[1]) for line in info if line.startswith("mnt_id:"))
    except BaseException:
        os.close(f)
        raise
    if mnt in known:
        os.close(f)
        return None
    return f, mnt


def _on_detached(d, known: set[int]) -> dict | None:
    """The socket file's place when it lies on a mount in no namespace of the tree (detached_file),
    else None; our fd on it stays open for dump's plan of detached mounts (FdTable.unplaced)."""
    got = detached_file(d, known)
    if got is None:
        return None
    f, mnt = got
    keep = False
    try:
        loc = d.place(os.readlink(f"/proc/self/fd/{f}"), mnt, "socket")
        if not loc.get("detached"):
            return None
        # (a copy naming the socket: engine/detached.py tells a refusal so)
        d.scratch.setdefault("unplaced", []).append(({**loc, "holder": d.where}, os.getpid(), f"fd/{f}"))
        keep = True
        return loc
    finally:
        if not keep:
            os.close(f)


def note_detached(d) -> None:
    """Before the stop (engine/fds/unix_prestop.py): add the socket file of fd `d` to
    d.scratch["unplaced"] as dump's plan gets it, when it lies on a detached mount (engine/prestop.py
    asks engine/detached.py `precheck` about it, then closes our fd on it)."""
    got = detached_file(d, known_mounts(d))
    if got is not None:
        f, mnt = got
        try:
            path = os.readlink(f"/proc/self/fd/{f}")
        except BaseException:
            os.close(f)
            raise
        d.scratch.setdefault("unplaced", []).append(({"mnt": mnt, "path": path, "holder": d.where}, os.getpid(),
                                                     f"fd/{f}"))


def file_stat(d) -> os.stat_result | None:
    """The stat of the socket's file (its owner as this, the initial, user namespace sees it), by the
    file the kernel hands us (SIOCUNIXFILE); None without it. Restore binds as that owner: the socket
    file is the same user's again, and a filesystem of a user namespace takes no file from an id it
    does not map (bind: EOVERFLOW); then gives it the same mode (bind's follows the umask)."""
    import fcntl
    try:
        f = fcntl.ioctl(d.copy(), SIOCUNIXFILE)
    except OSError:
        return None
    try:
        return os.fstat(f)
    finally:
        os.close(f)


def writable(d, loc: dict) -> dict:
    """The socket file's directory through a read-write mount of its superblock, where the mount
    it was found on is read-only (systemd-nspawn binds /run/host/notify, then makes /run/host a
    read-only bind): restore binds the socket again where a bind can create its file. The inode
    is the superblock's, so any mount that reaches the directory gives the same socket file."""
    from engine.image import is_beneath, rel_to
    every = [m for _pid, mounts in [(d.pid, d.mounts)] + list(d.elsewhere) for m in mounts]
    here = next((m for m in every if m.mnt_id == loc.get("mnt")), None)
    if here is None or not here.readonly or "ro" in here.super_opts or loc.get("detached"):
        return loc
    full = here.root.rstrip("/") + loc["path"]
    for m in every:
        if m.dev == here.dev and not m.readonly and "deleted" not in m.root and is_beneath(full, m.root):
            return {**loc, "mnt": m.mnt_id, "path": "/" + rel_to(full, m.root)}
    return loc


def _search_clones(d, name: str, pid: int, mounts, hidden: list[int], dev: int, ino: int, budget: list):
    from engine import channel
    from engine.nscopy import clone_mounts
    by_id = {m.mnt_id: m for m in mounts}
    found = None
    nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for mids, fds in channel.fork_stream(clone_mounts, nsfd, [pid], hidden, mounts):
            try:
                for mid, mfd in zip(mids, fds):
                    if found is None:
                        found = _search(d, name, f"/proc/self/fd/{mfd}", by_id[mid], dev, ino, budget)
            finally:
                for x in fds:
                    os.close(x)
    finally:
        os.close(nsfd)
    return found


def _search(d, name: str, top: str, m, dev: int, ino: int, budget: list) -> dict | None:
    """Search mount `m`, reached at path `top`, for socket inode `ino` of device `dev`."""
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        budget[0] -= len(entries)
        if budget[0] < 0:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: socket file of {name} not found within {MAX_WALK} "
                                            "entries: not supported")
        for ent in entries:
            try:
                st = ent.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue   # another mount (its own filesystem is searched as its own mount)
            if stat.S_ISDIR(st.st_mode):
                stack.append(ent.path)
            elif stat.S_ISSOCK(st.st_mode) and st.st_ino == ino:
                rel = ent.path[len(top):]
                return d.place(rel if m.mountpoint == "/" else m.mountpoint + rel, m.mnt_id, "socket")
    return None
