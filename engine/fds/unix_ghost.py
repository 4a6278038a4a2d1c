"""Unix sockets bound to a path whose socket file was unlinked since (CRIU's ghost sockets).

A process binds a socket, other sockets connect to it, then the file is
unlinked (and its directory removed: CRIU's sk-unix01, sk-unix-dgram-ghost,
del_standalone_un): the socket keeps its name (getsockname shows it) and the
connections, and no name leads to it any more. The kernel hands us its file
(SIOCUNIXFILE): no link left (st_nlink 0) makes it a ghost, kept as the mount
its file was on and an id the sockets connected to it name.

At restore the stand-in binds the dumped name with its file in a fresh,
private directory at the root of that restored mount (unix_bind.bind_beside: the
name need not lead there, and another socket may hold the name now); the
restorer keeps an O_PATH fd on that file while its clients connect and the
datagrams queued on it are sent again (late steps, through the /proc magic
link), then unlinks the file and the directory: the socket keeps its name and
its mount, without a file, as dumped. Before Linux 6.15 (no mounts on
detached mounts) the name is bound aside from a private mount namespace
(unix_bind.attach_privately), as any name whose path no longer leads to its file.
"""

from __future__ import annotations

import errno
import fcntl
import os
from engine import rx
import stat

from engine.fds import FdError, RestoreFd, unix_bind, unix_locate

SIOCUNIXFILE = 0x89E0
GHOST_ID = rx.compile(r"^s-[0-9]{1,9}\Z")
STATE = "unix-ghosts"
CLEANUP_ORDER = 1 << 30   # (after every connect and resend: FdMaker.finish sorts late steps by it)


def unlinked_file(sock: int) -> tuple[int, os.stat_result] | None:
    """(mount id, stat) of socket `sock`'s file when it has no name left, else None (a linked file,
    an unbound socket, or a kernel without SIOCUNIXFILE)."""
    try:
        f = fcntl.ioctl(sock, SIOCUNIXFILE)
    except OSError:
        return None
    try:
        st = os.fstat(f)
        if st.st_nlink or not stat.S_ISSOCK(st.st_mode):
            return None
        with open(f"/proc/self/fdinfo/{f}") as info:
            mnt = next(int(line.split()[1]) for line in info if line.startswith("mnt_id:"))
        return mnt, st
    finally:
        os.close(f)


def place(d, name: str, sock: int) -> dict | None:
    """The `bound` location of a ghost socket (our copy `sock`, bound to `name`): the root of the
    mount of the tree its file was on, or a read-write mount of that superblock; None when its
    file still has a name."""
    got = unlinked_file(sock)
    if got is None:
        return None
    mnt = got[0]
    every = {m.mnt_id: m for _pid, mounts in [(d.pid, d.mounts)] + list(d.elsewhere) for m in mounts}
    if mnt not in every:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name}, whose socket file was deleted on a mount "
                                        "in no namespace of the tree: not supported")
    loc = unix_locate.writable(d, {"mnt": mnt, "path": "/"})
    if every[loc["mnt"]].readonly:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name}, whose socket file was deleted on a "
                                        "read-only mount (restore binds it again there): not supported")
    return loc


def number(entries: list[dict]) -> None:
    """Give each ghost socket of the dump an id ("unlinked"), and each socket connected to one the id
    to connect to (`_ghost_peer` -> connect.to); a connection to a socket file found nowhere whose
    socket is no ghost of the tree is refused with the search's line."""
    ids: dict[str, str] = {}
    for e in entries:
        if e.get("unlinked") is True:
            e["unlinked"] = ids.setdefault(e["_ino"], f"s-{len(ids)}")
    for e in entries:
        lost = e.pop("_ghost_peer", None)
        if lost is None:
            continue
        peer, why = lost
        if peer not in ids:
            raise FdError(errno.EOPNOTSUPP, why)
        e["connect"] = {k: v for k, v in e["connect"].items() if k in ("path", "order")}
        e["connect"]["to"] = ids[peer]


# --- restore ------------------------------------------------------------------------------------

def make_dir(r: RestoreFd) -> int:
    """A fresh directory at the root of the ghost's restored mount (an O_PATH fd the caller closes),
    where the stand-in binds the name; its removal is a late step (`hold`)."""
    b = r.entry["bound"]
    try:
        top = r.open_at(b["mnt"], b["path"], os.O_RDONLY | os.O_DIRECTORY)
    except KeyError:
        raise FdError(errno.EINVAL, f"{r.where}: its socket file was on mount {b['mnt']}, which the image "
                                    "does not have") from None
    name = f".mntcr-sock-{os.getpid()}-{len(r.state.setdefault(STATE, {}))}"
    try:
        # (owned by the socket file's owner, who binds there: a stand-in in a user namespace has
        # no capability over a directory of ids that namespace does not map)
        unix_bind.mapped(unix_bind.bind_ids(r.entry, r.proc), top, lambda: os.mkdir(name, 0o700, dir_fd=top))
        sub = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
    except BaseException:
        os.close(top)
        raise
    r.keep.extend([top, os.dup(sub)])
    r.state[STATE][r.entry["unlinked"]] = {"top": top, "dir": r.keep[-1], "name": name, "file": None}
    return sub


def hold(r: RestoreFd) -> None:
    """Once the stand-in bound the ghost: keep an O_PATH fd on its socket file (its clients connect
    through it) and unlink the file and its directory once every late step ran."""
    g = r.state[STATE][r.entry["unlinked"]]
    base = r.entry["path"].rsplit("/", 1)[-1]
    g["file"] = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=g["dir"])
    r.keep.append(g["file"])

    def unlink():
        os.unlink(f"{g['name']}/{base}", dir_fd=g["top"])
        os.rmdir(g["name"], dir_fd=g["top"])

    r.late.append((f"{r.where}: unlinking its socket file again", unlink, CLEANUP_ORDER))


def sock_file(r: RestoreFd, e: dict) -> int:
    """An O_PATH fd (ours) on the restored socket file of named socket `e` (an entry with `bound`,
    or a `connect` with `mnt` and `at`, or either naming a ghost by id)."""
    gid = e.get("to") or e.get("unlinked")
    if gid is not None:
        g = r.state.get(STATE, {}).get(gid)
        if g is None or g["file"] is None:
            raise FdError(errno.EINVAL, f"{r.where}: ghost socket {gid} is no socket of the image")
        return os.dup(g["file"])
    if "bound" in e:
        mnt, at = e["bound"]["mnt"], e["bound"]["path"]
    else:
        mnt, at = e["mnt"], e["at"]
    return r.open_at(mnt, at, os.O_PATH | (os.O_NOFOLLOW if at.strip("/") else 0))
