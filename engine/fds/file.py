"""Files, directories, device nodes and O_PATH fds: reopened by path on the same mount."""

from __future__ import annotations

import errno
import os
import re
import stat

from engine import deadpid
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.imageformat import O_TMPFILE_BIT

# Flags that only mattered when the file was opened (or that we set ourselves).
OPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC


def _matches(target: str, mode: int) -> bool:
    return target.startswith("/") and (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISCHR(mode)
                                       or stat.S_ISBLK(mode) or stat.S_ISLNK(mode))


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
    else:
        fd = r.open_at(e["mnt"], e["path"], flags)
    if e["pos"] and e.get("type") != "dir" and not e["flags"] & os.O_PATH:
        os.lseek(fd, e["pos"], os.SEEK_SET)
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


def _dump(d) -> dict:
    out = {"type": "dir" if stat.S_ISDIR(d.mode) else "file"}
    gone = _refuse_gone_pid_dir(d)
    if gone is not None:
        out["dead_pid"] = gone
        if d.target.endswith(DELETED):
            # /proc/N itself (CRIU's remap_dead_pid_root): its dentry is unhashed, no ghost is made
            # of it; placed here, by its path on that proc mount.
            loc = d.place(d.target[: -len(DELETED)], d.mnt, f"fd {d.fd}")
            out.update({"placed": False, "mnt": loc["mnt"], "path": loc["path"]})
    return out


DELETED = deadpid.DELETED
_PID_DIR = re.compile(r"/(\d+)(?:/|$)")


def _precheck(d) -> None:
    """Before the tree is stopped: the same refusal, the fd's mount read from its fdinfo only for a
    path beneath a proc mount."""
    key = ("proc-mounts", id(d.mounts))   # (one list a namespace: a tree may have 90,000 mounts)
    prefixes = d.scratch.get(key)
    if prefixes is None:
        prefixes = d.scratch[key] = tuple({m.mountpoint.rstrip("/") + "/" for m in d.mounts if m.fstype == "proc"})
    if prefixes and d.target.startswith(prefixes):
        d.mnt = int(d.info()["mnt_id"][0])
        _refuse_gone_pid_dir(d)


def _refuse_gone_pid_dir(d) -> int | None:
    """A file of /proc/N/ (restore reopens paths): refused here, naming it, when process N is gone
    (CRIU's remap_dead_pid: /proc/N/... names no file then, or another process's), and when it is
    there but not its pid namespace's init (CRIU's fanotify00 keeps /proc/self/fdinfo/N open):
    restore gives the stand-ins other pid numbers, so the name would lead to another process's
    file. A pid namespace made again has the same init."""
    m = next((m for m in d.mounts if m.mnt_id == d.mnt), None)
    if m is None or m.fstype != "proc" or not d.target.startswith(m.mountpoint.rstrip("/") + "/"):
        return
    rel = d.target[len(m.mountpoint.rstrip("/")):]
    if deadpid.gone_pid_dir(d.target, m):
        rel = rel[: -len(DELETED)]
    hit = _PID_DIR.match(m.root.rstrip("/") + rel)
    if not hit:
        return
    if not os.path.lexists(f"/proc/{d.pid}/root{m.mountpoint.rstrip('/')}/{hit[1]}"):
        # Restore opens it while a process of its own has that number (_of_dead_pid), on a mount
        # of the whole proc (its path then starts with the number).
        if m.root != "/":
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a file of process {hit[1]}'s /proc directory, and that "
                                            "process is gone, on a proc mount of a subdirectory: not supported")
        return int(hit[1])
    if hit[1] != "1":
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a file of process {hit[1]}'s /proc directory: restore "
                                        "keeps no pid numbers, so that name would lead to another process's "
                                        "file: not supported")
    return None


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    n = entry.get("dead_pid")
    if n is not None and (entry.get("ghost") or entry.get("path") != f"/{n}"
                          and not str(entry.get("path", "")).startswith(f"/{n}/")):
        _fail(f"{what}: bad pid of a /proc file whose process is gone")


register(FdKind(name="file", matches=_matches, dump=_dump, open=_open, placed=True, order=90, precheck=_precheck,
                check=_check))
