"""Pipes the tree shares with a process outside it (`producer | TREE`, `TREE | tee log`), and FIFOs
(`producer > fifo` outside, `tee < fifo` in the tree): refused before the stop.

Restore makes each pipe again from the ends the tree holds; an end a process outside the tree
holds is not part of the image, so the restored pipe would have no reader (the tree's next write
fails with EPIPE, or SIGPIPE kills it) or no writer (the tree reads end-of-file at once): the
restored tree would not behave as the dumped one. Dump sees this only while the tree runs, by
looking for the pipe in the other processes' fds, which is why this is a precheck (the tree is
never stopped for it). A pipe whose other end no process holds any more is restored as it is
(a reader gone is a reader gone after restore too). A pipe declared `--external pipe[INO]:KEY`
is no kind's: restore connects the tree's end to what `--external file[KEY]:PATH` gives.
"""

from __future__ import annotations

import errno
import os

from engine import forkrun, kernel

SCRATCH = "pipe-outside"
O_PATH = getattr(os, "O_PATH", 0o10000000)


def precheck(d) -> None:
    """Note which ends of pipe fd `d` (a running process's) the tree holds, for `prefinish`."""
    flags = _flags(d.pid, d.fd)
    if flags is None:
        return   # (closed meanwhile)
    ends = d.scratch.setdefault(SCRATCH, {}).setdefault(d.target, {"r": [], "w": []})
    ends["w" if flags & os.O_ACCMODE == os.O_WRONLY else "r"].append((d.pid, d.fd))


def prefinish(scratch: dict) -> None:
    """Refuse a pipe of which the tree holds only one end while a process outside it holds the
    other (its fds looked for in /proc once, only when some pipe lacks an end)."""
    from engine.fds import FdError
    pipes = scratch.pop(SCRATCH, {})
    lacking = {target: ends for target, ends in pipes.items() if not ends["r"] or not ends["w"]}
    if not lacking:
        return
    tree = set(scratch.get("pids", ()))
    for pid, fd, target in holders(set(lacking), tree):
        ends = lacking[target]
        if not _is_end(pid, fd, "r" if not ends["r"] else "w"):
            continue
        mine_pid, mine_fd = (ends["w"] or ends["r"])[0]
        side = "read" if not ends["r"] else "write"
        what = ("nothing would read what the tree writes (EPIPE)" if side == "read"
                else "the tree would read end-of-file at once")
        raise FdError(errno.EOPNOTSUPP,
                      f"process {mine_pid} fd {mine_fd} ({target}): the pipe's {side} end is held by "
                      f"process {pid} ({comm(pid)}) outside the tree, which restore cannot connect "
                      f"again: {what}; dump that process with the tree (its parent as the root), or "
                      f"declare the pipe with --external pipe[{target[6:-1]}]:KEY and restore with --external "
                      "file[KEY]:PATH (a file, a FIFO or /proc/self/fd/N of a pipe given to restore)")


FIFO_SCRATCH = "fifo-outside"


def fifo_precheck(d) -> None:
    """Note FIFO fd `d` (a running process's) by its inode, for `fifo_prefinish`: not an O_PATH fd
    (no end of the pipe: restore opens none for it), with its mount and whether its pipe holds
    data (FIONREAD on a copy of the fd: nothing read)."""
    import fcntl, termios
    try:
        st = os.stat(f"/proc/{d.pid}/fd/{d.fd}")
        info = d.info()
    except OSError:
        return   # (closed meanwhile)
    if int((info.get("flags") or ["0"])[0], 8) & O_PATH:
        return
    try:   # (d.copy(): closed with d, by the pre-stop loop)
        queued = int.from_bytes(fcntl.ioctl(d.copy(), termios.FIONREAD, bytes(4)), "little")
    except OSError:
        queued = None   # (unknown: taken as data)
    mnt = int((info.get("mnt_id") or ["0"])[0] or 0)
    d.scratch.setdefault(FIFO_SCRATCH, {}).setdefault((st.st_dev, st.st_ino), (d.pid, d.fd, d.target, mnt, queued))


def fifo_prefinish(scratch: dict) -> None:
    """Refuse a FIFO the tree holds that a process outside it holds too (an end of it, not O_PATH),
    where restore cannot join that process again: a FIFO restore makes again (its reader would read
    end-of-file, its writer get EPIPE), or a host's FIFO (a mount of an --external superblock:
    scratch "host_mnts", restore opens that very FIFO again and joins the pipe) whose pipe holds
    data, which restore would put in again (read twice)."""
    from engine.fds import FdError
    fifos = scratch.pop(FIFO_SCRATCH, {})
    if not fifos:
        return
    tree = set(scratch.get("pids", ()))
    host = scratch.get("host_mnts", set())
    me = os.getpid()
    for pid in (int(n) for n in os.listdir("/proc") if n.isdigit()):
        if pid in tree or pid == me or pid in forkrun.going_on:
            continue
        for fd, flags in _fifo_fds(pid, {ino for _, ino in fifos}):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue   # (closed meanwhile)
            held = fifos.get((st.st_dev, st.st_ino))
            if held is None or flags & O_PATH:
                continue
            mine_pid, mine_fd, target, mnt, queued = held
            if mnt in host and queued == 0:
                continue   # (restore opens the host's FIFO again: that process's pipe, empty)
            side = {os.O_RDONLY: "a read", os.O_WRONLY: "a write"}.get(flags & os.O_ACCMODE, "a read-write")
            why = ("its pipe holds data restore would put in again (read twice)" if mnt in host else
                   "restore makes the FIFO again, which that process is no end of (its reader would see "
                   "end-of-file, its writer EPIPE)")
            raise FdError(errno.EOPNOTSUPP,
                          f"process {mine_pid} fd {mine_fd} ({target}): the FIFO is held by process {pid} "
                          f"({comm(pid)}) outside the tree too ({side} end): {why}; dump that process with the "
                          "tree (its parent as the root), or once it closed the FIFO"
                          + ("" if mnt in host else ", or put the FIFO on a host directory declared --external "
                             "mnt[...] and dump it empty"))


def _fifo_fds(pid: int, inos: set[int]):
    """(fd, open flags) of each fd of process `pid` that may be on a FIFO of inode number in `inos`
    (fdinfo's ino: the others are passed over without a stat, which a file of a hung FUSE mount
    would never answer); fds closed meanwhile are passed over."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for n in names:
        try:
            with open(f"/proc/{pid}/fdinfo/{n}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        ino = info.get("ino")
        if "flags" in info and (ino is None or int(ino) in inos):
            yield int(n), int(info["flags"].strip(), 8)


def holders(targets: set[str], tree: set[int]):
    """(pid, fd, target) of each fd on one of `targets` (fd link targets: pipe:[N], socket:[N]) held by
    a process not in `tree`, nor this one or a helper it keeps (forkrun.going_on: copies of its fds)."""
    me = os.getpid()
    others = (int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in tree and int(n) != me)
    for pid, path, target in kernel.fd_links(others):
        if target in targets and pid not in forkrun.going_on:
            yield pid, int(path.rsplit("/", 1)[1]), target


def _is_end(pid: int, fd: int, side: str) -> bool:
    """Whether fd `fd` of process `pid` is the `side` ("r"/"w") end of its pipe."""
    flags = _flags(pid, fd)
    return flags is not None and (flags & os.O_ACCMODE == os.O_WRONLY) == (side == "w")


def _flags(pid: int, fd: int) -> int | None:
    """The open flags fdinfo shows for fd `fd` of process `pid`, None once it is gone."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except OSError:
        return None
    return None


def comm(pid: int) -> str:
    """The name of process `pid`, "gone" once it is."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "gone"

