"""Files, directories, device nodes and O_PATH fds: reopened by path on the same mount.

An O_PATH fd on a unix socket's file (the only open a socket file takes: a program that connects
to a path too long for sun_path through /proc/self/fd/N, a runtime keeping a container's socket)
is one more file ("type": "sock"), reopened O_PATH once every process holds its other fds: by
then the restored socket bound to that path made its file again.
"""

from __future__ import annotations

import errno
import os
from engine import rx
import stat

from engine import deadpid, dirpos
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.imageformat import O_TMPFILE_BIT

# Flags that only mattered when the file was opened (or that we set ourselves).
OPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC


def _matches(target: str, mode: int) -> bool:
    return target.startswith("/") and (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISCHR(mode)
                                       or stat.S_ISBLK(mode) or stat.S_ISLNK(mode) or stat.S_ISSOCK(mode))


def _open(r: RestoreFd) -> int:
    e = r.entry
    flags = e["flags"] & ~OPEN_DROP
    if flags & O_TMPFILE_BIT and e.get("type") == "file":
        if e.get("ghost"):
            fd = _tmpfile(r, e, flags)
        else:   # made by O_TMPFILE, linked since: a name like any other
            fd = r.open_at(e["mnt"], e["path"], flags & ~(O_TMPFILE_BIT | os.O_DIRECTORY))
    elif e.get("ghost"):
        fd = r.open_ghost(e["ghost"], flags, e["mnt"], e["path"])   # unlinked at restore too (engine/ghosts.py)
    elif "dead_pid" in e:
        fd = _of_dead_pid(r, e, flags)
    elif "live_pid" in e:
        fd = _of_live_pid(r, e, flags)
    else:
        fd = r.open_at(e["mnt"], e["path"], flags)
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) != (e.get("type") == "sock"):
        # (dump gives FIFOs and sockets kinds of their own: the image's file is not what it says)
        os.close(fd)
        raise FdError(errno.EINVAL, f"{r.where}: {e['path']} is a {'FIFO' if stat.S_ISFIFO(mode) else 'socket'}, "
                                    "where the image has a file")
    try:
        if e.get("type") == "dir" and not e["flags"] & os.O_PATH:
            dirpos.restore(fd, e)
        elif e["pos"] and not e["flags"] & os.O_PATH:
            os.lseek(fd, e["pos"], os.SEEK_SET)
    except OSError as err:
        os.close(fd)
        raise FdError(err.errno, f"{r.where}: {e['path']}: its offset {e['pos']} is not one the file takes "
                                 f"({err.strerror or err}): was it changed since the dump?") from None
    return fd


def _tmpfile(r: RestoreFd, e: dict, flags: int) -> int:
    """A file made by O_TMPFILE and never linked (CRIU's fd01: tmpfile(3)): made the same way in the
    same directory of the same mount, with the deleted file's data, mode and owner, so that its
    flags (__O_TMPFILE, O_DIRECTORY) are the dumped ones; its name is the kernel's ("#INODE")."""
    src = r.open_ghost(e["ghost"], os.O_RDONLY, e["mnt"], e["path"])
    try:
        d = r.open_at(e["mnt"], os.path.dirname(e["path"]) or "/", os.O_PATH | os.O_DIRECTORY)
        try:
            fd = os.open(".", flags | os.O_CLOEXEC, 0o600, dir_fd=d)
        finally:
            os.close(d)
        try:
            st = os.fstat(src)
            left = st.st_size
            while left > 0:
                n = os.copy_file_range(src, fd, left, 0, st.st_size - left)
                if n <= 0:
                    break
                left -= n
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(src)


def _of_dead_pid(r: RestoreFd, e: dict, flags: int) -> int:
    """A file of /proc/N/ whose process N was gone at dump (engine/deadpid.py)."""
    try:
        return deadpid.reopen(r.open_at, r.proc, e["mnt"], e["path"], e["dead_pid"], flags)
    except OSError as err:
        raise FdError(err.errno, f"{r.where}: {err.strerror or err}") from None


def _of_live_pid(r: RestoreFd, e: dict, flags: int) -> int:
    """A file of /proc/N/ of a live process of the tree: /proc/M/... of the process restored for it,
    M its number in that proc mount's pid namespace (engine/deadpid.py pid_in)."""
    host = r.pid_of(e["live_pid"]) if r.pid_of is not None else None
    if host is None:
        raise FdError(errno.EINVAL, f"{r.where}: {e['path']}: process {e['live_pid']} is not in the image")
    view = r.open_at(e["mnt"], "/", os.O_PATH | os.O_DIRECTORY)
    try:
        n = deadpid.pid_in(view, host, r.proc)
    finally:
        os.close(view)
    if n is None:
        raise FdError(errno.ESRCH, f"{r.where}: {e['path']}: the restored process {e['live_pid']} is not in that "
                                   "proc's pid namespace")
    return r.open_at(e["mnt"], _PID_DIR.sub(f"/{n}/", e["path"], count=1).rstrip("/") or "/", flags)


def _refuse_tun(d) -> None:
    """A node of the tun device (10:200) not called tun (engine/fds/tun.py claims those): reopened as
    a file, it would come back attached to no device."""
    if stat.S_ISCHR(d.mode):
        rdev = os.fstat(d.copy()).st_rdev
        if (os.major(rdev), os.minor(rdev)) == (10, 200):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: the tun device (10:200) under another name than tun, "
                                            "whose device restore would not attach: not supported")


def _dump(d) -> dict:
    _refuse_tun(d)
    if stat.S_ISSOCK(d.mode):
        return {"type": "sock"}   # (an O_PATH fd: no other open of a socket file succeeds)
    out = {"type": "dir" if stat.S_ISDIR(d.mode) else "file"}
    if stat.S_ISDIR(d.mode) and not d.flags & os.O_PATH:
        out.update(dirpos.dump(d.where, f"/proc/{d.pid}/fd/{d.fd}", d.pos))
    pid_fields = _refuse_gone_pid_dir(d)
    out.update(pid_fields)
    if "dead_pid" in pid_fields:
        if d.target.endswith(DELETED):
            # /proc/N itself (CRIU's remap_dead_pid_root): its dentry is unhashed, no ghost is made
            # of it; placed here, by its path on that proc mount.
            loc = d.place(d.target[: -len(DELETED)], d.mnt, f"fd {d.fd}")
            out.update({"placed": False, "mnt": loc["mnt"], "path": loc["path"]})
    return out


DELETED = deadpid.DELETED
_PID_DIR = rx.compile(r"/(\d+)(?:/|$)")


def _precheck(d) -> None:
    """Before the tree is stopped: the same refusal, the fd's mount read from its fdinfo only for a
    path beneath a proc mount."""
    _refuse_tun(d)
    if stat.S_ISDIR(d.mode):   # (an O_PATH fd's offset is 0)
        dirpos.dump(d.where, f"/proc/{d.pid}/fd/{d.fd}", int(d.info()["pos"][0]))
    key = ("proc-mounts", id(d.mounts))   # (one list a namespace: a tree may have 90,000 mounts)
    prefixes = d.scratch.get(key)
    if prefixes is None:
        prefixes = d.scratch[key] = tuple({m.mountpoint.rstrip("/") + "/" for m in d.mounts if m.fstype == "proc"})
    if prefixes and d.target.startswith(prefixes):
        d.mnt = int(d.info()["mnt_id"][0])
        _refuse_gone_pid_dir(d)


def _refuse_gone_pid_dir(d) -> dict:
    """A file of /proc/N/ (restore reopens paths, and gives the stand-ins other pid numbers): the
    entry's fields that say how restore names it again. {"dead_pid": N} when process N is gone
    (CRIU's remap_dead_pid: reopened while a process of restore's has that number); {"live_pid":
    PID} when it is a process of the tree other than its pid namespace's init (CRIU's fanotify00
    keeps /proc/self/fdinfo/N open: reopened under the number that process has then); {} for the
    init (a pid namespace made again has the same) and any other file. Refused: one of a process
    outside the tree, or of a gone one on a proc mount of a subdirectory."""
    m = next((m for m in d.mounts if m.mnt_id == d.mnt), None)
    if m is None or m.fstype != "proc" or not d.target.startswith(m.mountpoint.rstrip("/") + "/"):
        return {}
    rel = d.target[len(m.mountpoint.rstrip("/")):]
    if deadpid.gone_pid_dir(d.target, m):
        rel = rel[: -len(DELETED)]
    hit = _PID_DIR.match(m.root.rstrip("/") + rel)
    if not hit:
        return {}
    if not os.path.lexists(f"/proc/{d.pid}/root{m.mountpoint.rstrip('/')}/{hit[1]}"):
        # Restore opens it while a process of its own has that number (_of_dead_pid), on a mount
        # of the whole proc (its path then starts with the number).
        if m.root != "/":
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a file of process {hit[1]}'s /proc directory, and that "
                                            "process is gone, on a proc mount of a subdirectory: not supported")
        return {"dead_pid": int(hit[1])}
    if hit[1] != "1":
        return {"live_pid": _tree_process(d, m, int(hit[1]))}
    return {}


def _tree_process(d, m, n: int) -> int:
    """The process of the tree (its pid here) that is process `n` of proc mount `m`: restore reopens
    its file under the number it then has (engine/deadpid.py pid_in). Refused: one outside the tree,
    or on a proc mount of a subdirectory."""
    what = f"{d.where}: a file of process {n}'s /proc directory"
    if m.root != "/":
        raise FdError(errno.EOPNOTSUPP, f"{what}, on a proc mount of a subdirectory: not supported")
    cache = d.scratch.setdefault("proc-pids", {})
    key = (d.pid, m.mnt_id)
    if key not in cache:
        view = os.open(f"/proc/{d.pid}/root{m.mountpoint}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                cache[key] = {deadpid.pid_in(view, pid, hostproc): pid for pid in d.scratch.get("pids", ())}
            finally:
                os.close(hostproc)
        finally:
            os.close(view)
    pid = cache[key].get(n)
    if pid is None:
        raise FdError(errno.EOPNOTSUPP, f"{what}, a process outside the dumped tree: restore cannot name it again")
    return pid


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if entry.get("type") == "sock" and (not entry["flags"] & os.O_PATH or entry.get("ghost") or "dead_pid" in entry
                                        or "live_pid" in entry):
        _fail(f"{what}: a socket file is reopened only O_PATH, by its name")
    if entry.get("dir_end") and entry.get("type") != "dir":
        _fail(f"{what}: 'dir_end' on an fd that is no directory")
    n = entry.get("dead_pid")
    if n is not None and (entry.get("ghost") or entry.get("path") != f"/{n}"
                          and not str(entry.get("path", "")).startswith(f"/{n}/")):
        _fail(f"{what}: bad pid of a /proc file whose process is gone")
    if "live_pid" in entry and (n is not None or entry.get("ghost") or entry.get("detached")
                                or not _PID_DIR.match(str(entry.get("path", "")))):
        _fail(f"{what}: a /proc file of a live process must be /N/... on a mount of the tree")


def _refs(entry: dict) -> list:
    """A /proc file of a process: on a proc mount of the image, a live one a process of the image."""
    out = [("proc", entry, f"a /proc file ({key!r})") for key in ("dead_pid", "live_pid") if key in entry]
    if "live_pid" in entry:
        out.append(("process", entry["live_pid"], f"'live_pid' {entry['live_pid']}"))
    return out


register(FdKind(name="file", matches=_matches, dump=_dump, open=_open, placed=True, order=90, precheck=_precheck,
                check=_check, deferred=lambda e: "live_pid" in e or e.get("type") == "sock", refs=_refs))
