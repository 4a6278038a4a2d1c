"""Snapshot of a scenario's process tree, compared up to renumbering before and after C/R.

Per process: the canonical mount tree of its mount namespace as it sees it
(/proc/PID/mountinfo, relative to its root), its fd table (number, flags,
offset, path, mount by canonical label or ``detached``, and per kind what the
fd holds: buffered bytes, counters, masks, timers, epoll targets, socket state;
see zdtm/fdkinds.py; the file locks it shows: flock, POSIX, OFD, leases), cwd and root (path and mount label),
its name and the number and sorted names of its other threads (tids are not compared), whether it is
stopped (state T), its umask, no_new_privs and THP-disable bits, the signals it ignores and
those it blocks, whether a parent is a child subreaper, its parent-death signal (not the root's),
its POSIX and interval timers (`_timers`: which, on what, notifying whom, armed or not, their interval),
whether it made a time namespace for its children, its resource limits, whether it leads its session
and process group, its controlling terminal and that terminal's foreground group, the sysctls of
its ipc namespace when it is not the runner's (msgmax, mqueue's msg_max...: engine/ipcvars.py), the host
and domain names of its UTS namespace when it is not the runner's, the sysctls of its network namespace
that differ from a fresh one's and its interfaces, addresses and routes when it is not the runner's
(engine/netvars.py, engine/fds/inet_net.py). Which fds are one
pipe, FIFO or socket pair and which are one open file description. For the tree: which processes share which namespaces (a
partition, plus whether a namespace is the runner's own), which processes share a session and a
process group (a partition, with its leader or "outside"), the zombies of the tree's processes
(parent, name, exit status, session and group: `_zombie_text`), peer groups that span
several mount namespaces, and the output of the scenario's `check` script run
inside the scenario's namespaces and root.

Processes are identified by their state, not by pid (pids change on restore):
the per-process texts are sorted, and the partition names processes by that
order. Parentage is not compared (a restore may re-parent stand-ins). A process
serving a filesystem (a FUSE daemon: engine.fs.daemons) is left out: restore
restarts it outside the tree; what it serves is compared.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field

from engine import loginuid, mntlocks, mountinfo, procstat, sbowner, schedattrs, timens, userns
from zdtm import fdkinds, holder

# (time and cgroup: None on a kernel without them)
NS_TYPES = ("mnt", "pid", "uts", "ipc", "net", "user", "time", "cgroup")
OWNED_NS_TYPES = ("mnt", "pid", "uts", "ipc", "net")
_O_LARGEFILE = 0o100000  # forced on 64-bit; says nothing about the program


def _pty_slave(pid: int, fd: str) -> bool:
    """Whether fd `fd` of `pid` is on a Unix98 pty slave (majors 136..143)."""
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) < 144
_O_TMPFILE = 0o20000000   # __O_TMPFILE
_TMPFILE = re.compile(r"^(.*/)#\d+ \(deleted\)$")
_ANON = re.compile(r"^(pipe|socket|anon_inode:[^\[]*|anon_inode):\[\d+\]$")
CHECK_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "HOME": "/root"}


class SnapshotError(Exception):
    """The tree could not be read (a process vanished, check timed out...)."""


# --- process trees -----------------------------------------------------------

def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = procstat.fields(name)
        except OSError:
            continue
        if fields[procstat.STATE] != b"Z":
            out[int(name)] = int(fields[procstat.PPID])
    return out


def _children(pid: int) -> list[int]:
    """The children of `pid` (of each of its threads); [] when it is gone."""
    from engine import freeze
    return freeze.children(pid)


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants (host pids), root first, parents before children.

    Read from the tree's own children files when the kernel has them: a scan of every
    process's stat costs ~0.2 s a call in a TCG guest (100 entries), three calls a snapshot.
    """
    from engine import freeze
    if not freeze.has_children_lists():
        return _tree_from_scan(root)
    if not alive(root):
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(freeze.fork_order(filter(None, map(_live_start, _children(pid)))))
    return out


def _live_start(pid: int) -> tuple[int, int] | None:
    """(start time, pid) of `pid`, None when it is gone or a zombie (one read: `alive` and the
    key). Siblings sort by it in the order they were made: by pid alone, the order turned over
    when pids wrapped (pid_max is 32768 on a busy host) between two siblings' forks, and a
    restored tree's processes were paired with the wrong originals (engine.freeze.fork_order: also
    when they wrapped within one clock tick)."""
    try:
        fields = procstat.fields(pid)
    except OSError:
        return None
    return None if fields[procstat.STATE] == b"Z" else (int(fields[procstat.STARTTIME]), pid)


def _tree_from_scan(root: int) -> list[int]:
    """tree_pids from every process's parent (kernels without children files)."""
    from engine import freeze
    ppids = _ppids()
    if root not in ppids:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(freeze.fork_order(_live_start(k) or (0, k) for k in children.get(pid, ())))
    return out


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    return procstat.state(pid) not in (b"Z", b"")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until `pid` is gone (or a zombie); False when it still runs after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _busy(root: int) -> bool:
    """Whether a thread of the tree at `root` runs or waits to run (R), or waits on I/O (D)."""
    for pid in tree_pids(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            if procstat.state(f"{pid}/task/{tid}") in (b"R", b"D"):
                return True
    return False


def settle(root: int, timeout: float = 5.0) -> bool:
    """Wait until every thread of the tree at `root` sleeps (twice in a row: a thread seen asleep
    may be woken by one seen later): a test that said it is ready may still be finishing what it
    started (CRIU's mountpoints: both halves of a fork write to a pipe its parent reads once, the
    second maybe after the parent wrote its pid file), and a snapshot taken meanwhile races with
    it. False when it is still busy after `timeout` seconds (a test that spins)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        quiet = 0 if _busy(root) else quiet + 1
        if quiet < 2:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
    return True


def _tentative_here() -> bool:
    """Whether our network namespace has an IPv6 address in duplicate address detection (tentative,
    not failed) on a link with carrier (one without never ends it)."""
    import socket
    from engine import rtnl
    running = {rtnl.IFINFO.unpack_from(m)[2] for _t, m in rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(0, 0, 0, 0, 0))
               if rtnl.IFINFO.unpack_from(m)[3] & 0x40}   # (IFF_RUNNING)
    for _t, msg in rtnl.dump(rtnl.RTM_GETADDR, rtnl.IFADDR.pack(socket.AF_INET6, 0, 0, 0, 0)):
        _fam, _prefix, flags8, _scope, index = rtnl.IFADDR.unpack_from(msg)
        flags = rtnl.u32(rtnl.attrs(msg, rtnl.IFADDR.size).get(rtnl.IFA_FLAGS)) or flags8
        if index in running and flags & 0x40 and not flags & 0x08:   # (IFA_F_TENTATIVE, IFA_F_DADFAILED)
            return True
    return False


def _tentative_in(fd: int) -> bool:
    from engine import kernel
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return _tentative_here()


def settle_dad(root: int, timeout: float = 5.0) -> bool:
    """Wait until no IPv6 address of the tree's network namespaces (but the runner's) is in duplicate
    address detection (a second or two after a link comes up): a test that said it is ready right
    after adding one would have a snapshot taken before its local route exists and one restored
    after it does. False when one still is after `timeout` seconds."""
    from engine import forkrun
    own = os.stat("/proc/self/ns/net").st_ino
    nets = {}
    for pid in tree_pids(root):
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ino != own:
            nets.setdefault(ino, pid)
    deadline = time.monotonic() + timeout
    for pid in nets.values():
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            while forkrun.run(_tentative_in, fd):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        finally:
            os.close(fd)
    return True


def kill_tree(root: int, timeout: float = 10.0) -> None:
    """SIGKILL `root` and its descendants and wait until they are gone (or zombies)."""
    pids = tree_pids(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when it is ours
            except ChildProcessError:
                pass
            time.sleep(0.01)


# --- one process ----------------------------------------------------------------

@dataclass
class Proc:
    """The compared state of one process (pid only for reference, never compared)."""

    pid: int
    comm: str                    # its name (/proc/PID/comm): a stand-in takes the dumped one
    mounts: list                 # engine.mountinfo.Mount, as read
    tree_text: str               # canonical mount tree
    root: str
    cwd: str
    fds: list[str]
    ns: dict[str, int] = field(default_factory=dict)
    maps: list[str] = field(default_factory=list)   # mapped files (and exe) off the ignored mounts
    userns: str = "init"         # its user namespace, by place in the tree of user namespaces and maps
    owners: str = ""             # which user namespace owns each of its other namespaces
    creds: str = ""              # uid/gid/groups as the runner sees them
    locks: dict = field(default_factory=dict)       # mount label -> lock state (engine/mntlocks.py)
    idmaps: dict = field(default_factory=dict)      # mount label -> idmap of an idmapped mount
    # mount label -> the user namespace owning its superblock, when not the runner's (engine/sbowner.py)
    sb_owners: dict = field(default_factory=dict)
    threads: list = field(default_factory=list)     # the names of its threads but the leader, sorted
    stopped: bool = False        # stopped by a signal (state T: SIGSTOP, Ctrl-Z)
    bits: str = ""               # its umask, no_new_privs bit and ignored signals
    rlimits: str = ""            # its resource limits, NAME=soft:hard
    sid: int = 0                 # its session and process group ids, as the runner sees them (never
    pgid: int = 0                # compared: `job` and the partition say what they mean)
    job: str = ""                # whether it leads its session and its process group (`_jobs`)
    tty_nr: int = 0              # its controlling terminal's device (/proc/PID/stat; never compared:
    tpgid: int = -1              # `ctty` says which terminal and whose group is in its foreground)
    masters: frozenset = frozenset()   # the numbers of the pty masters it holds (fdinfo tty-index)
    ctty: str = ""               # its controlling terminal, named (`_cttys`)
    ipc: str = ""                # its ipc namespace's sysctls, when not the runner's (`_ipc_sysctls`)
    uts: str = ""                # its UTS namespace's host and domain names, when not the runner's (`_uts_names`)
    net: str = ""                # its network namespace's sysctls and devices, when not the runner's (`_net_sysctls`)
    roots: dict = field(default_factory=dict)       # mount label -> its root's type, mode and owner (`_root_modes`)
    args: str = ""               # /proc/PID/cmdline and /proc/PID/environ (engine/procargs.py)

    def text(self) -> str:
        """The compared text of this process."""
        out = [f"comm: {self.comm!r}", f"threads: {len(self.threads)} {self.threads!r}"]
        out += ["state: stopped"] if self.stopped else []
        out += [f"job: {self.job}"] if self.job else []
        out += [f"ctty: {self.ctty}"] if self.ctty else []
        out += [f"bits: {self.bits}"] if self.bits else []
        out += [self.args] if self.args else []
        out += [f"rlimits: {self.rlimits}"] if self.rlimits else []
        out += [f"ipc sysctls: {self.ipc}"] if self.ipc else []  # (and its System V objects)
        out += [f"uts names: {self.uts}"] if self.uts else []
        out += [f"net namespace: {self.net}"] if self.net else []
        out += ["mounts:"]
        out += ["  " + line for line in self.tree_text.splitlines()]
        out += [f"lock {line}" for line in self.lock_lines()]
        out += [f"idmap {label}: {idmap}" for label, idmap in sorted(self.idmaps.items())]
        out += [f"mount root {label}: {what}" for label, what in sorted(self.roots.items())]
        out += [f"sb owner {label}: {owner}" for label, owner in sorted(self.sb_owners.items())]
        out += [f"user ns: {self.userns}", f"ns owners: {self.owners}", f"creds: {self.creds}"]
        out += [f"root: {self.root}", f"cwd: {self.cwd}"]
        out += [f"fd {fd}" for fd in self.fds]
        out += [f"map {m}" for m in self.maps]
        return "\n".join(out) + "\n"

    def lock_lines(self) -> list[str]:
        """Locked mounts and locked flags; nothing for a namespace without any."""
        if isinstance(self.locks, str):
            return [self.locks]
        return mntlocks.summary(self.locks)


def _args(pid: int) -> str:
    """Its command line and environment, as a stand-in must show them again (engine/procargs.py)."""
    out = []
    for name in ("cmdline", "environ"):
        with open(f"/proc/{pid}/{name}", "rb") as f:
            out.append(f"{name}: {f.read()!r}")
    return "\n".join(out)


def _fdinfo(pid: int, fd: str) -> dict:
    """fdinfo as {key: value}; its "lock" lines (several) as a list."""
    out: dict = {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "lock":
                out.setdefault("locks", []).append(value.strip())
            else:
                out[key.strip()] = value.strip()
    return out


def _locks(pid: int, lines: list[str]) -> str:
    """The file locks an fd shows, as compared: kind, state, mode, range, and whose they are ("self":
    this process took it, "other": another process, none for an OFD lock); the inode is the fd's
    file (its path is compared), lock numbers and pids change on restore."""
    out = []
    for line in lines:
        words = line.split()[1:]       # (without the "N:" number)
        if words and words[0] == "->":
            words = words[1:]
        if len(words) < 7:
            out.append(line)
            continue
        kind, state, mode, owner, _inode, start, end = words[:7]
        who = "" if owner == "-1" else " self" if int(owner) == pid else " other"
        out.append(f"{kind} {state} {mode}{who} {start}-{end}")
    return " locks=[" + "; ".join(sorted(out)) + "]" if out else ""


def _where(canon, mnt_id: int | None, elsewhere: dict) -> str:
    """The mount's label in this namespace; ``other-ns:LABEL`` for a mount of another namespace
    of the tree; ``detached`` for a mount no namespace of the tree has."""
    if mnt_id is None:
        return "?"
    try:
        return canon.label(mnt_id)
    except KeyError:
        pass
    if mnt_id in elsewhere:
        return f"other-ns:{elsewhere[mnt_id]}"
    return "detached"


def _maps(pid: int, canon, elsewhere: dict, ignore: tuple) -> list[str]:
    """Files `pid` maps (its executable among them), with their mount labels, except those on mounts
    labelled in `ignore` (or beneath them) and those on no mount of the tree."""
    from engine import kernel
    out = set()

    def ignored(label: str) -> bool:
        # A process whose root hides a host mount (chroot) sees it as another namespace's: the same
        # host mount, where a stand-in maps its own interpreter and libraries too.
        bare = label.removeprefix("other-ns:")
        return any(bare == i or bare.startswith(i.rstrip("/") + "/") for i in ignore)

    # /proc/PID/exe too: a stand-in makes the original its own (engine/mappings.py become_exe).
    links = [f"/proc/{pid}/map_files/{n}" for n in os.listdir(f"/proc/{pid}/map_files")]
    try:
        path = os.readlink(f"/proc/{pid}/exe")
        label = _where(canon, kernel.statx_mnt_id(f"/proc/{pid}/exe"), elsewhere)
        if label != "detached" and not ignored(label):
            out.add(f"exe {path} mnt={label}")
    except OSError:
        pass
    for link in links:
        try:
            path = os.readlink(link)
            label = _where(canon, kernel.statx_mnt_id(link), elsewhere)
        except OSError:
            continue
        if path.startswith("socket:["):   # (a packet socket's ring: its size, whatever the socket's number)
            start, _, end = os.path.basename(link).partition("-")
            out.add(f"socket ring {int(end, 16) - int(start, 16)} bytes")
            continue
        # A stand-in's interpreter may live outside the tree altogether ("detached": on no mount of
        # the tree's namespaces); mappings there are not compared (nor restored: engine/mappings.py).
        if label == "detached" or ignored(label):
            continue
        out.add(f"{path} mnt={label}")
    return sorted(out)


def _user_side(pid: int, users: userns.UsernsTree, canon, mounts, lock_cache: dict,
               sb_candidates: list | None = None) -> dict:
    """What user namespaces say about `pid`: its own (by maps), the owners of its other
    namespaces, its credentials, the locks and idmaps of the mounts it sees, and which user
    namespace of `sb_candidates` ((description, fd), deepest first) owns each superblock."""
    own = users.of_pid(pid)
    owners = []
    for t in OWNED_NS_TYPES:
        o = users.owner_of(pid, t)
        owners.append(f"{t}=" + ("own" if o == own else users.describe(o)))
    key = (os.stat(f"/proc/{pid}/ns/mnt").st_ino, os.readlink(f"/proc/{pid}/root"))
    if key not in lock_cache:
        lock_cache[key] = mntlocks.probe(pid, mounts, canon.text)
    idmaps = {canon.label(i): text for i, text in userns.idmaps(pid, mounts).items()}
    sb_key = ("sb owners", *key)
    if sb_key not in lock_cache:
        lock_cache[sb_key] = sbowner.probe(pid, mounts, sb_candidates or [])
    sb_owners = {canon.label(m.mnt_id): lock_cache[sb_key][m.dev] for m in mounts if m.dev in lock_cache[sb_key]}
    roots_key = ("roots", *key)
    if roots_key not in lock_cache:
        lock_cache[roots_key] = _root_modes(pid, mounts)
    roots = {canon.label(i): what for i, what in lock_cache[roots_key].items()}
    return dict(userns=users.describe(own), owners=" ".join(owners), creds=userns.creds(pid),
                locks=lock_cache[key], idmaps=idmaps, sb_owners=sb_owners, roots=roots)


def _root_modes(pid: int, mounts) -> dict[int, str]:
    """mount id -> "MODE UID:GID" (st_mode in octal, ids as the runner sees them) of the root of
    each mount `pid`'s root reaches by path: a restore that makes a root directory afresh (an
    empty one no archive holds) and loses its mode or owner differs. Read from the kernel's cache
    (AT_STATX_DONT_SYNC): a FUSE daemon or a network server is not asked. Covered mounts are left out."""
    from engine import kernel
    out = {}
    for m in mounts:
        try:
            mnt_id, mode, uid, gid = kernel.statx_mnt_id_owner(f"/proc/{pid}/root{m.mountpoint}", flags=(
                kernel.AT_SYMLINK_NOFOLLOW | kernel.AT_STATX_DONT_SYNC))
        except OSError:
            continue
        # (a FUSE or network root's cached attributes are what the mount said until its server is
        # first asked - a FUSE root is its rootmode= option, 40000 - and a restore asks: not compared)
        if m.fstype.startswith("fuse") or m.fstype in ("nfs", "nfs4", "cifs", "smb3", "9p", "ceph"):
            continue
        if mnt_id == m.mnt_id:
            out[m.mnt_id] = f"{mode:o} {uid}:{gid}"
    return out


def _proc_pid_path(pid: int, path: str, m, tree: tuple) -> str:
    """`path` of an fd of `pid` on proc mount `m` with a leading /proc/N/ of a process of the tree
    (`tree`: host pids) named as "<self>" (the process itself) or "<tree>" (another of the tree):
    restore keeps no pid numbers, and the fd is on the same file of the process that number became
    (engine/deadpid.py)."""
    if m.root != "/" or not path.startswith(m.mountpoint.rstrip("/") + "/"):
        return path
    top = m.mountpoint.rstrip("/")
    hit = re.match(r"/(\d+)(?=/|$)", path[len(top):])
    if not hit:
        return path
    from engine import deadpid
    try:
        view = os.open(f"/proc/{pid}/root{m.mountpoint}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return path
    try:
        n = int(hit[1])
        name = "<self>" if deadpid.pid_in(view, pid, hostproc) == n else \
            "<tree>" if any(deadpid.pid_in(view, t, hostproc) == n for t in tree if t != pid) else None
    finally:
        os.close(view)
        os.close(hostproc)
    return path if name is None else f"{top}/{name}{path[len(top) + hit.end():]}"


def read_proc(pid: int, topology, elsewhere: dict | None = None, mounts=None, ignore_maps_on=None,
              users: userns.UsernsTree | None = None, lock_cache: dict | None = None,
              sb_candidates: list | None = None, tree: tuple = ()) -> Proc:
    """Read the compared state of process `pid` (host pid); `elsewhere` maps mount ids of the
    tree's other namespaces to their labels there. Mappings are read only when
    `ignore_maps_on` (mount labels whose mappings are not compared) is given. `tree`: the host pids
    of the tree, whose /proc/N/ files are named by what they are (`_proc_pid_path`)."""
    from engine import kernel
    elsewhere = elsewhere or {}
    users = users or userns.UsernsTree()
    lock_cache = {} if lock_cache is None else lock_cache
    try:
        comm = kernel.read_comm(pid)
        threads = _threads(pid)
        stat = procstat.fields(pid)
        stopped, pgid, sid = stat[procstat.STATE] == b"T", int(stat[procstat.PGRP]), int(stat[procstat.SESSION])
        tty_nr, tpgid = int(stat[procstat.TTY_NR]), int(stat[procstat.TPGID])
        status = kernel.proc_status(pid, {"Umask", "NoNewPrivs", "SigIgn", "Seccomp", "Seccomp_filters", "Cpus_allowed_list",
                                          "THP_enabled"})
        bits = " ".join(f"{k.lower()}={v.strip()}" for k, v in sorted(status.items()))
        bits += f" loginuid={loginuid.value(pid)}" + _signal_bits(pid)
        # (nice, policy, ioprio, oom_score_adj, timer slack, personality: engine/schedattrs.py)
        bits += "".join(f" {k}={v:#x}" if k in ("policy", "personality") else f" {k}={v}"
                        for k, v in sorted(schedattrs.values(pid).items()))
        rlimits = " ".join(f"{k}={s}:{h}" for k, (s, h) in sorted(kernel.read_rlimits(pid).items()))
        args = _args(pid)
        mounts = mounts if mounts is not None else mountinfo.read_pid(pid)
        canon = topology.canonical(mounts)
        proc_mounts = {m.mnt_id: m for m in mounts if m.fstype == "proc"}
        fds = []
        masters = set()
        tmpfiles: dict[str, str] = {}
        for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            try:
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
                info = _fdinfo(pid, fd)
            except FileNotFoundError:
                continue  # closed while we looked
            extra = fdkinds.details(pid, int(fd), path)
            path = _ANON.sub(r"\1", path)
            flags = int(info.get("flags", "0"), 8)
            if not _pty_slave(pid, fd):
                # (a pty slave's tells how it was opened: TIOCGPTPEER, glibc's openpty, adds none)
                flags &= ~_O_LARGEFILE
            if "tty-index" in info:
                masters.add(int(info["tty-index"]))
            # (who gets its signals, and which: engine/fown.py; with or without O_ASYNC)
            extra = f"{extra} {fdkinds.async_owner(pid, int(fd), flags)}".strip()
            if path.endswith(kernel.DELETED):
                # An open-time flag only: a file reopened through its /proc/self/fd link (a deleted
                # one, at restore) cannot take it (engine/restore.py _open_ghost).
                flags &= ~os.O_NOFOLLOW
            hit = _TMPFILE.match(path) if flags & _O_TMPFILE else None
            if hit:
                # A file made by O_TMPFILE: "#INODE" is the kernel's name for it, not the program's;
                # compared as the first, second... such file of the process (which fds share it shows).
                path = f"{hit[1]}#tmpfile{tmpfiles.setdefault(path, str(len(tmpfiles) + 1))} (deleted)"
            mnt = int(info["mnt_id"]) if "mnt_id" in info else None
            if mnt in proc_mounts:
                path = _proc_pid_path(pid, path, proc_mounts[mnt], tree or (pid,))
            # (a tun fd's position counts the bytes read(2) and write(2) moved, which the device never
            # looks at and llseek cannot set: not kept, engine/fds/tun.py)
            pos = "-" if extra.startswith("tun ") else info.get("pos", "?")
            fds.append(f"{fd}: {path} flags={flags:o} pos={pos} mnt={_where(canon, mnt, elsewhere)}"
                       + (f" {extra}" if extra else "") + _locks(pid, info.get("locks", ())))
        places = {}
        for what in ("root", "cwd"):
            path = os.readlink(f"/proc/{pid}/{what}")
            try:
                mnt_id = kernel.statx_mnt_id(f"/proc/{pid}/{what}")
            except PermissionError:
                # On a FUSE mount made in a user namespace without allow_other (rootless podman's
                # fuse-overlayfs root): the kernel lets only its owner in, not the runner.
                mnt_id = None
            places[what] = f"{path} mnt={_where(canon, mnt_id, elsewhere)}"
        ns = {t: _ns_ino(pid, t) for t in NS_TYPES}
        # (no link: `unshare --pid` made one that has no init yet: NEW_PIDNS, not its own)
        ns["pid_for_children"] = _ns_ino(pid, "pid_for_children") or NEW_PIDNS
        if ns["time"] is not None:
            bits += " timens=" + ",".join(f"{k}:{s}.{n:09d}" for k, (s, n) in timens.offsets(pid).items())
            # (unshare(CLONE_NEWTIME) made one for its children, which it is not in: CRIU's timens_for_kids)
            if _ns_ino(pid, "time_for_children") != ns["time"]:
                bits += " timens_children=own"
        maps = _maps(pid, canon, elsewhere, tuple(ignore_maps_on)) if ignore_maps_on is not None else []
        user_side = _user_side(pid, users, canon, mounts, lock_cache, sb_candidates)
    except FileNotFoundError as e:
        raise SnapshotError(f"process {pid} vanished while being read ({e.filename})") from None
    return Proc(pid=pid, comm=comm, mounts=mounts, tree_text=canon.text, root=places["root"], cwd=places["cwd"],
                fds=fds, ns=ns, maps=maps, threads=threads, stopped=stopped, bits=bits, rlimits=rlimits, sid=sid,
                pgid=pgid, tty_nr=tty_nr, tpgid=tpgid, masters=frozenset(masters), args=args, **user_side)


def _syscall(pid: int) -> str:
    """The first word of /proc/PID/syscall: the number of the call it waits in, "running" or "-1"."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return (f.read().split() or ["?"])[0]
    except OSError:
        return "?"


def _signal_bits(pid: int) -> str:
    """" sigblk=MASK" (its main thread's blocked signals, read in a ptrace stop when it waits in
    sigtimedwait, which blocks less meanwhile: tini, dumb-init), " sigpnd=MASK" when some of them
    are pending on it or on the process (engine/pendingsigs.py; SIGCHLD only with a zombie child) and, for a process with children,
    " subreaper=1" when set (asked in the process: engine/subreaper.py; "?" when it cannot be)."""
    from engine import freeze, inject, kernel, pendingsigs, subreaper
    before = _syscall(pid)
    keys = {"SigBlk", "SigPnd", "ShdPnd"}
    status = kernel.proc_status(pid, keys)
    # (in rt_sigtimedwait (x86-64: 128) or between two calls ("running": one may come) before or
    # after that read: read again in a stop)
    if inject.SUPPORTED and (before in ("128", "running") or _syscall(pid) in ("128", "running")):
        try:
            status = inject.status_at_rest(pid, keys)
        except OSError:
            pass   # (traced by another: as read)
    out = f" sigblk={status.get('SigBlk', '?').strip()}"
    try:
        pending = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
        pending &= int(status["SigBlk"], 16)
    except (KeyError, ValueError):
        pending = 0
    zombie_child = bool(pending) and any(freeze.state(c) == "Z" for c in _children(pid))
    pending = pendingsigs.kept(pending, zombie_child)
    out += f" sigpnd={pending:016x}" if pending else ""
    # (only a set flag is shown: a parent whose children are not made again, as a FUSE daemon a
    # restore starts afresh, reads as "not asked" after, which is the flag's default)
    if _children(pid):
        try:
            out += " subreaper=1" if subreaper.read(pid) else ""
        except OSError:
            out += " subreaper=?"   # (traced by another, or filters that would deny the call)
    return out


def _ipc_sysctls(procs: list[Proc]) -> None:
    """Each process's `ipc`: the sysctls and System V objects of its ipc namespace (read once per
    namespace), when it is not the runner's (a restore makes the tree's own; the host's is not its
    to change)."""
    from engine import ipcvars, sysvipc
    own = os.stat("/proc/self/ns/ipc").st_ino
    seen: dict[int, str] = {}
    for p in procs:
        ino = p.ns.get("ipc")
        if ino is None or ino == own:
            continue
        if ino not in seen:
            try:
                vals = ipcvars.of_process(p.pid)
                objs = sysvipc.describe(p.pid)
            except FileNotFoundError:
                raise SnapshotError(f"process {p.pid} vanished while being read") from None
            seen[ino] = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                                 for k, v in sorted(vals.items())) + "".join(f"; {o}" for o in objs)
        p.ipc = seen[ino]


def _net_sysctls(procs: list[Proc]) -> None:
    """Each process's `net`: the sysctls of its network namespace that differ from a fresh one's
    (engine/netvars.py), its interfaces (up or not), addresses, routes and multicast memberships
    (engine/fds/inet_net.py), read once per namespace, when it is not the runner's."""
    from engine import forkrun, netvars
    from engine.fds import inet_net
    own = os.stat("/proc/self/ns/net").st_ino
    seen: dict[int, str] = {}
    for p in procs:
        ino = p.ns.get("net")
        if ino is None or ino == own:
            continue
        if ino not in seen:
            try:
                fd = os.open(f"/proc/{p.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    state = inet_net.state_of(fd)
                    state["link attrs"] = forkrun.run(_link_attrs_in, fd)
                finally:
                    os.close(fd)
                seen[ino] = netvars.of_process(p.pid) + "".join(f"; {k} {state[k]}" for k in sorted(state))
            except FileNotFoundError:
                raise SnapshotError(f"process {p.pid} vanished while being read") from None
        p.net = seen[ino]


def _link_attrs_in(fd: int) -> list[str]:
    """In a child: join network namespace `fd` and name each of its interfaces' MTU and MAC address
    ("NAME mtu=N mac=M", sorted), which restore makes again (engine/netlinks_make.py) and
    inet_net.state leaves out: a veth made with a new random address would show only here."""
    import socket
    from engine import kernel, rtnl
    kernel.setns(fd, kernel.CLONE_NEWNET)
    out = []
    for _t, msg in rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        a = rtnl.attrs(msg, rtnl.IFINFO.size)
        mac = a.get(rtnl.IFLA_ADDRESS) or b""
        out.append(f"{rtnl.text(a.get(rtnl.IFLA_IFNAME))} mtu={rtnl.u32(a.get(rtnl.IFLA_MTU))} mac={mac.hex(':')}")
    return sorted(out)


def _pdeath_signals(procs: list[Proc]) -> None:
    """Add each process's parent-death signal to its `bits` when it has one and it can be read
    (engine/pdeathsig.py: the process, stopped a moment, makes the call); not the root's, whose
    parent is outside the tree."""
    from engine import pdeathsig
    for p in procs:
        sig = pdeathsig.read(p.pid)
        if sig:
            p.bits += f" pdeathsig={sig}"


def _clock_text(pid: int, clock) -> str:
    """A timer's clock as compared: a CPU clock named by a number, which restore changes: its
    process's or its leader's as the caller's own (pid 0: -8..-1), another thread's by its kind."""
    from engine import posixtimers
    if type(clock) is not int or clock >= -8:
        return str(clock)
    return str(clock & 7 | -8) if posixtimers.clock_owner(pid, clock) == pid else f"cpu{clock & 7}.other"


def _timers(procs: list[Proc]) -> None:
    """Add each process's timers to its `bits`: its POSIX timers (id, clock, notify (a thread: the
    leader or another), signal and value, armed or not and interval) and its armed interval timers
    (which and interval); not their time left. Read in the process (engine/inject.py) when it can
    be, else its POSIX timers as /proc shows them and "?"."""
    from engine import inject, itimers, posixtimers
    for p in procs:
        timers = posixtimers.parse(p.pid)
        try:
            got = inject.calls(p.pid, itimers.CALLS + posixtimers.calls(timers), skip_denied=True)
        except OSError:
            got = None
        out = []
        for i, t in enumerate(timers):
            who = "" if t.get("notify") != "thread" else ".leader" if t.get("tid") == p.pid else ".other"
            clock = _clock_text(p.pid, t.get("clock"))
            text = f"{t['id']}:{clock}:{t.get('notify')}{who}:{t.get('signo')}/{t.get('sigval'):#x}"
            spec = got[3 + 2 * i] if got else None
            if spec is None or spec[0] != 0:
                out.append(text + ":?")
            else:
                out.append(text + (":armed" if any(spec[1][2:]) else ":disarmed") + f"/{spec[1][0]}.{spec[1][1]:09d}")
        if timers:
            p.bits += " posix_timers=" + ",".join(out)
        # (none shown when they cannot be read: a vfork parent in its D wait, whose stand-in is not)
        armed = itimers.read(p.pid, got[:3]) if got else []
        if armed:
            p.bits += " itimers=" + ",".join(f"{itimers.NAMES[a['which']]}/{a['interval']}" for a in armed)


def _uts_names(procs: list[Proc]) -> None:
    """Each process's `uts`: the nodename and NIS domain name of its UTS namespace (read once per
    namespace, this thread joining it and coming back), when it is not the runner's."""
    from engine import kernel
    own = os.stat("/proc/self/ns/uts").st_ino
    seen: dict[int, str] = {}
    for p in procs:
        ino = p.ns.get("uts")
        if ino is None or ino == own:
            continue
        if ino not in seen:
            try:
                fd = os.open(f"/proc/{p.pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise SnapshotError(f"process {p.pid} vanished while being read") from None
            back = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            try:
                kernel.setns(fd, kernel.CLONE_NEWUTS)
                try:
                    seen[ino] = f"host={os.uname().nodename!r} domain={kernel.domainname()!r}"
                finally:
                    kernel.setns(back, kernel.CLONE_NEWUTS)
            finally:
                os.close(fd)
                os.close(back)
        p.uts = seen[ino]


def _ns_ino(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        if os.path.exists(f"/proc/{pid}/ns"):
            return None   # (a kind this kernel lacks)
        raise


def _threads(pid: int) -> list[str]:
    """The sorted names of `pid`'s threads but its leader (tids are not restored: never compared)."""
    from engine import kernel
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        if tid != str(pid):
            try:
                out.append(kernel.read_comm(f"{pid}/task/{tid}"))
            except FileNotFoundError:
                continue   # (it exited while we looked)
    return sorted(out)


# --- the whole tree ---------------------------------------------------------------

@dataclass
class Snapshot:
    """Compared state of a process tree (see the module docstring)."""

    procs: list[Proc]            # sorted by text
    namespaces: str              # partition text
    cross_peers: str             # peer groups spanning mount namespaces
    check_output: str | None
    sharing: str = ""            # fds that are one pipe/FIFO or one open file description (zdtm/fdkinds.py)
    zombies: str = ""            # children of the tree's processes that exited, not reaped (`_zombie_text`)
    settled: bool = True         # every thread slept before it was read (`settle`); never compared

    def text(self) -> str:
        """Everything compared, as one text."""
        out = []
        for i, p in enumerate(self.procs):
            out.append(f"process P{i}:")
            out += ["  " + line for line in p.text().splitlines()]
        out.append("namespaces:")
        out += ["  " + line for line in self.namespaces.splitlines()]
        if self.cross_peers:
            out.append("peer groups across mount namespaces:")
            out += ["  " + line for line in self.cross_peers.splitlines()]
        if self.sharing:
            out.append("fd sharing:")
            out += ["  " + line for line in self.sharing.splitlines()]
        if self.zombies:
            out.append("zombies:")
            out += ["  " + line for line in self.zombies.splitlines()]
        if self.check_output is not None:
            out.append("check output:")
            out += ["  | " + line for line in self.check_output.splitlines()]
        return "\n".join(out) + "\n"

    def to_json(self) -> dict:
        """A JSON-able form (for the report): per process the raw mountinfo and the text."""
        return {"procs": [{"pid": p.pid, "mountinfo": mountinfo.format_all(p.mounts), "text": p.text()}
                          for p in self.procs],
                "namespaces": self.namespaces, "cross_peers": self.cross_peers, "sharing": self.sharing,
                "zombies": self.zombies, "check_output": self.check_output}


_PIDFD_ANY = re.compile(r"pidfd=-?\d+")
_NSFD_INO = re.compile(r"\b(mnt|pid|uts|ipc|net|cgroup|user|time):\[\d+\]")
_NSFD = re.compile(r"^(\d+): (mnt|pid|uts|ipc|net|cgroup|user|time):\[(\d+)\]( .*)$")


def _name_ns_roots(procs: list[Proc], topology) -> None:
    """A mount that binds a namespace (nsfs, `ip netns add`: root "net:[4026532181]") names it as an fd
    on one does: by the first process of the tree in it ("net:[P1]"), "host" for the runner's own, and
    one no process is in by first appearance ("net:[lone1]"): the inode changes across C/R, the
    namespace it stands for must not. The process's mounts get the named roots too (a tree diff
    compares them), and its canonical tree is made again from them."""
    from engine import kernel
    from engine.records import replace
    lone: dict[tuple[str, int], str] = {}

    def named(hit) -> str:
        kind, ino = hit[1], int(hit[2])
        inos = [q.ns.get(kind) for q in procs] if kind in NS_TYPES else [kernel.ns_ino(q.pid, kind) for q in procs]
        who = next((f"P{j}" for j, x in enumerate(inos) if x == ino), None)
        if who is None and kernel.ns_ino(os.getpid(), kind) == ino:
            who = "host"
        if who is None:
            who = lone.setdefault((kind, ino), f"lone{len(lone) + 1}")
        return f"{kind}:[{who}]"

    for p in procs:
        if not any(_NS_ROOT.match(m.root) for m in p.mounts):
            continue
        p.mounts = [replace(m, root=_NS_ROOT.sub(named, m.root)) if _NS_ROOT.match(m.root) else m for m in p.mounts]
        p.tree_text = topology.canonical(p.mounts).text


_NS_ROOT = re.compile(r"^(mnt|pid|uts|ipc|net|cgroup|user|time):\[(\d+)\]\Z")
_PIDFD = re.compile(r" pidfd=(-?\d+)$")
_OWNER = re.compile(r"\b(async-owner|peercred)=(tid|pid|pgrp|\d+):(\d+)")


def _name_ns_fds(procs: list[Proc]) -> None:
    """An fd on a namespace ("net:[4026532181]") names it by the first process of the tree in it
    ("net:[P1]"; "net:[outside]" when none is): the inode number changes across C/R. So does a
    pidfd's process ("pidfd=P2"), the signal owner of an fd ("async-owner=pid:P0") and the process a
    listening unix socket's clients see as the server ("peercred=pid:P1")."""
    from engine import kernel

    def named(pid: int) -> str:
        return next((f"P{j}" for j, q in enumerate(procs) if q.pid == pid), "outside")

    for p in procs:
        for i, line in enumerate(p.fds):
            line = p.fds[i] = _OWNER.sub(lambda m: f"{m[1]}={m[2]}:{named(int(m[3]))}", line)
            pidfd = _PIDFD.search(line)
            if pidfd is not None:
                p.fds[i] = line[:pidfd.start()] + f" pidfd={named(int(pidfd[1]))}"
                continue
            hit = _NSFD.match(line)
            if hit is None:
                continue
            fd, kind, ino, rest = hit.groups()
            inos = [q.ns.get(kind) for q in procs] if kind in NS_TYPES else \
                [kernel.ns_ino(q.pid, kind) for q in procs]
            who = next((f"P{j}" for j, x in enumerate(inos) if x == int(ino)), "outside")
            p.fds[i] = f"{fd}: {kind}:[{who}]{rest}"




def _partition(procs: list[Proc]) -> str:
    own = {}
    for t in NS_TYPES:
        try:
            own[t] = os.stat(f"/proc/self/ns/{t}").st_ino
        except OSError:
            own[t] = None
    lines = []
    for t in NS_TYPES:
        groups: dict[int, list[str]] = {}
        for i, p in enumerate(procs):
            groups.setdefault(p.ns[t], []).append(f"P{i}")
        parts = sorted(("{" + ",".join(members) + "}" + ("=runner's" if ino == own[t] else ""))
                       for ino, members in groups.items())
        lines.append(f"{t}: " + " ".join(parts))
    return "\n".join(lines + _pid_for_children(procs))


NEW_PIDNS = -1   # (Proc.ns["pid_for_children"] of a process whose next child will be init of a new one)


def _pid_for_children(procs: list[Proc]) -> list[str]:
    """Where each process whose children go to another pid namespace than its own sends them: the
    first process in that namespace, or "no process" (`unshare --pid --fork` then pid 1 forked), or
    "a new one" (`unshare --pid` that forked nothing yet)."""
    first: dict[int, str] = {NEW_PIDNS: "a new one, no process yet"}
    for i, p in enumerate(procs):
        first.setdefault(p.ns["pid"], f"P{i}")
    return [f"pid_for_children P{i}: {first.get(p.ns['pid_for_children'], 'no process')}'s"
            for i, p in enumerate(procs)
            if p.ns.get("pid_for_children") not in (None, p.ns["pid"])]


@dataclass
class Zombie:
    """A child of a process of the tree that exited and was not reaped (state Z)."""

    pid: int
    ppid: int
    comm: str
    status: int                  # its wait status (/proc/PID/stat exit_code)
    sid: int
    pgid: int
    own_pidns: bool = False      # in a pid namespace below its parent's (NSpid one deeper)


def _zombies(pids: list[int]) -> list[Zombie]:
    """The zombie children of `pids` (host pids of the tree's live processes)."""
    from engine import kernel
    out = []
    for parent in pids:
        for pid in sorted(_children(parent)):
            try:
                comm = kernel.read_comm(pid)
                stat = procstat.fields(pid)
            except OSError:
                continue   # (reaped meanwhile)
            if stat[procstat.STATE] in (b"Z", b"X"):
                deeper = _nspid_depth(pid) > _nspid_depth(parent)
                out.append(Zombie(pid, parent, comm, int(stat[procstat.EXIT_CODE]), int(stat[procstat.SESSION]),
                                  int(stat[procstat.PGRP]), deeper))
    return out


def _nspid_depth(pid: int) -> int:
    from engine import kernel
    try:
        return len(kernel.proc_status(pid, ("NSpid",)).get("NSpid", "").split())
    except OSError:
        return 0


def _zombie_text(zombies: list[Zombie], procs: list[Proc], root_pgid: int) -> str:
    """One line a zombie, sorted: its parent (by place), name, exit status, and its session and
    process group (itself, a process of the tree by place, another zombie, or outside). The core
    flag of a status (0x80) is not compared: restore cannot make the kernel write a core
    (engine/zombies.py). `root_pgid`: the root's group as read, compared as the root's own when it
    is outside the tree (as `_jobs` does)."""
    place = {p.pid: f"P{i}" for i, p in enumerate(procs)}
    dead = {z.pid for z in zombies}
    if procs and root_pgid not in place and root_pgid not in dead:
        place[root_pgid] = place[procs[0].pid]

    def who(n: int, z: Zombie) -> str:
        return "self" if n == z.pid else place.get(n) or ("a zombie" if n in dead else "outside")

    return "\n".join(sorted(f"child of {place.get(z.ppid, 'outside')}: comm={z.comm!r} state=Z "
                            f"status={z.status & ~0x80:#06x} session={who(z.sid, z)} pgrp={who(z.pgid, z)}"
                            + (" pidns=own" if z.own_pidns else "")
                            for z in zombies))


def _jobs(procs: list[Proc], dead: frozenset = frozenset()) -> None:
    """Each process's `job`: whether it leads its session and its process group, or which of the
    tree leads them (pids change on restore, so only what they mean is compared). The root
    (procs[0]) in a group outside the tree is compared as that group's leader: the restored root
    leads a group of its own, which those of the tree in the outside group share (engine/sessions.py)."""
    pids = {p.pid for p in procs} | dead   # (a zombie leads its group still: `dead`, their pids)
    root = procs[0] if procs else None
    outside = None
    if root is not None and root.pgid not in pids:
        outside = root.pgid
        for p in procs:
            if p.pgid == outside:
                p.pgid = root.pid
    for p in procs:
        if p.tpgid == outside:
            p.tpgid = root.pid
    for p in procs:
        p.job = " ".join(f"{what} " + ("leader" if n == p.pid else "member" if n in pids else "outside")
                         for what, n in (("session", p.sid), ("pgrp", p.pgid)))


def _cttys(procs: list[Proc]) -> None:
    """Each process's `ctty`: its controlling terminal by what it is (a pty by number, and whether a
    process of the tree holds its master; /dev/console; a virtual console; none) and, for one, which
    process group is in its foreground (its own, another of the tree by its members' names, or one
    outside the tree). A member of a session loses its terminal silently when its stand-in is forked
    before its leader took the terminal: this is what shows it (engine/ctty.py). Run after `_jobs`."""
    held = set().union(*(p.masters for p in procs)) if procs else set()
    for p in procs:
        if not p.tty_nr:
            p.ctty = "none"
            continue
        major, minor = (p.tty_nr >> 8) & 0xFFF, (p.tty_nr & 0xFF) | ((p.tty_nr >> 12) & 0xFFF00)
        if 136 <= major < 144:
            n = minor + (major - 136) * 256
            name = f"pty {n} (master " + ("in the tree)" if n in held else "outside the tree)")
        elif (major, minor) == (5, 1):
            name = "/dev/console"
        elif major == 4 and minor < 64:
            name = f"virtual console {minor}"
        else:
            name = f"device {major}:{minor}"
        members = sorted(q.comm for q in procs if q.pgid == p.tpgid)
        fg = ("none" if p.tpgid <= 0 else "its own group" if p.tpgid == p.pgid
              else f"the group of {','.join(members)}" if members else "a group outside the tree")
        p.ctty = f"{name} foreground={fg}"


def _job_partition(procs: list[Proc]) -> str:
    """Lines "session: {P0*,P1} {P2}" and "pgrp: ...": which processes share a session and a process
    group, their leader starred; a group whose leader is not in the tree is named once, as it is."""
    lines = []
    for what in ("sid", "pgid"):
        groups: dict[int, list[str]] = {}
        for i, p in enumerate(procs):
            groups.setdefault(getattr(p, what), []).append(f"P{i}" + ("*" if getattr(p, what) == p.pid else ""))
        lines.append(("session: " if what == "sid" else "pgrp: ")
                     + " ".join(sorted("{" + ",".join(members) + "}" for members in groups.values())))
    return "\n" + "\n".join(lines)


def _cross_peers(procs: list[Proc], topology) -> str:
    """Peer groups with members in more than one mount namespace, by process and mount label."""
    by_ns: dict[int, int] = {}
    members: dict[int, set] = {}
    for i, p in enumerate(procs):
        if p.ns["mnt"] in by_ns:
            continue  # one process per namespace is enough
        by_ns[p.ns["mnt"]] = i
        canon = topology.canonical(p.mounts)
        for m in p.mounts:
            if m.shared is not None:
                members.setdefault(m.shared, set()).add((f"P{i}", canon.label(m.mnt_id), "peer"))
            if m.master is not None:
                members.setdefault(m.master, set()).add((f"P{i}", canon.label(m.mnt_id), "slave"))
    lines = []
    for group in members.values():
        if len({proc for proc, _, _ in group}) > 1:
            lines.append(" ".join(f"{proc}:{label}({kind})" for proc, label, kind in sorted(group)))
    return "\n".join(sorted(lines))


def run_check(pid: int, script: str, timeout: float) -> str:
    """Run `script` with sh inside the mount, UTS, IPC and PID namespaces and the root of `pid`.

    Returns stdout and stderr together, plus ``[exit N]`` when it fails: all of it is compared.
    """
    cmd = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-p", "-r", "sh", "-c", holder.CHECK_PRELUDE + "cd / && " + script]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=CHECK_ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"check script did not finish within {timeout:g}s") from None
    out = proc.stdout.decode(errors="replace")
    if proc.returncode:
        out += f"[exit {proc.returncode}]\n"
    return out


def _userns_candidates(pids, users: userns.UsernsTree) -> list[tuple[str, int]]:
    """(description, fd) of each user namespace the tree's processes are in or whose namespaces
    belong to, except the runner's own, deepest first: those a superblock's owner is told among."""
    found: dict[int, int] = {}
    try:
        for pid in pids:
            paths = [f"/proc/{pid}/ns/user"] + [f"/proc/{pid}/ns/{t}" for t in OWNED_NS_TYPES]
            for i, path in enumerate(paths):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if i == 0 else userns.ns_owner_fd(path)
                except OSError:
                    continue
                key = userns.ino(fd)
                if key in found or key == users.top:
                    os.close(fd)
                    continue
                found[key] = fd
                if i == 0:
                    users.of_pid(pid)   # its maps read from the process: no helper needed
                else:
                    users.learn(fd)
    except BaseException:
        for fd in found.values():
            os.close(fd)
        raise
    order = sorted(found, key=lambda k: -users.depth(k))
    return [(users.describe(k), found[k]) for k in order]


def _exited(pid: int, root: int) -> bool:
    """Whether `pid`, whose read just failed, is a process of the tree other than the root that
    has exited since the tree was listed: it is left out (a short-lived child the tree keeps
    starting, as buildah's runtime monitor runs `RUNTIME state` every 100 ms), not an error."""
    return pid != root and not alive(pid)


def take(root: int, check: str | None = None, timeout: float = 30.0, topology=None,
         ignore_maps_on=None) -> Snapshot:
    """Snapshot the tree rooted at host pid `root` (and run `check` in it when given); mapped files
    are compared when `ignore_maps_on` names the mounts (labels) whose mappings are not."""
    if topology is None:
        from engine import topology
    if not alive(root):
        raise SnapshotError(f"process {root} is not running")
    # A tree that said it is ready may still be busy: a holder found by its name right after its
    # exec still has the loader's /etc/ld.so.cache open, a booted init still arms its watches.
    # (A tree that never sleeps is snapshot as it is after the wait.)
    settled = settle(root, min(timeout, 5.0))
    settle_dad(root, min(timeout, 5.0))
    check_output = run_check(root, check, timeout) if check else None
    if check:
        settled = settle(root, min(timeout, 5.0))
    # A filesystem's daemon (a FUSE server) is restarted by restore, not restored: a new process
    # outside the tree (engine/fs/fuse.py). What it serves is compared, the process is not.
    from engine import fs
    pids = tree_pids(root)
    daemons = fs.daemons(pids)
    pids = [p for p in pids if p not in daemons]
    tables, labels = {}, {}
    for pid in pids:
        try:
            tables[pid] = mountinfo.read_pid(pid)
        except FileNotFoundError:
            if not _exited(pid, root):
                raise SnapshotError(f"process {pid} vanished while being read") from None
            continue
        canon = topology.canonical(tables[pid])
        labels.update({m.mnt_id: canon.label(m.mnt_id) for m in tables[pid]})
    pids = [p for p in pids if p in tables]
    users, lock_cache = userns.UsernsTree(), {}
    candidates = _userns_candidates(pids, users)
    procs = []
    try:
        for pid in pids:
            try:
                procs.append(read_proc(pid, topology, labels, tables[pid], ignore_maps_on, users, lock_cache,
                                       candidates, tuple(pids)))
            except (SnapshotError, OSError):
                if not _exited(pid, root):
                    raise
    finally:
        for _, fd in candidates:
            os.close(fd)
    pids = [p.pid for p in procs]
    _ipc_sysctls(procs)
    _uts_names(procs)
    _net_sysctls(procs)
    _pdeath_signals(procs[1:])
    _timers(procs)
    zombies = _zombies(pids)
    root_pgid = procs[0].pgid if procs else 0
    _jobs(procs, frozenset(z.pid for z in zombies))
    _cttys(procs)
    procs.sort(key=lambda p: _PIDFD_ANY.sub("pidfd=", _OWNER.sub(r"\1=", _NSFD_INO.sub(r"\1:[]", p.text()))))
    _name_ns_fds(procs)
    _name_ns_roots(procs, topology)
    return Snapshot(procs=procs, namespaces=_partition(procs) + _job_partition(procs),
                    cross_peers=_cross_peers(procs, topology),
                    check_output=check_output, sharing=fdkinds.sharing([p.pid for p in procs]), settled=settled,
                    zombies=_zombie_text(zombies, procs, root_pgid))


# --- comparison -----------------------------------------------------------------

_TIMENS_BIT = re.compile(r" timens=\S+")


def clocks_carried(before: Snapshot, after: Snapshot) -> Snapshot:
    """`after` with its time namespace taken for the runner's when a backend that carries clocks
    (criu: its restore makes a time namespace whose monotonic and boottime clocks go on from their
    values at dump, by design) restored a tree that sat wholly in the runner's time namespace into
    one new namespace. Any other difference in time namespaces (a process left in the runner's, two
    namespaces, a tree that had its own) stays compared."""
    own = os.stat("/proc/self/ns/time").st_ino
    inos = {q.ns.get("time") for q in after.procs}
    if not before.procs or any(p.ns.get("time") != own for p in before.procs) or len(inos) != 1 or own in inos:
        return after
    runner = " timens=" + ",".join(f"{k}:{s}.{n:09d}" for k, (s, n) in timens.offsets("self").items())
    for q in after.procs:
        q.ns["time"] = own
        q.bits = _TIMENS_BIT.sub(runner, q.bits)
    after.namespaces = _partition(after.procs) + _job_partition(after.procs)
    return after

def _pair(a: list[Proc], b: list[Proc]) -> list[tuple[Proc | None, Proc | None]]:
    """Pair processes: identical texts first, then the rest in order."""
    left, right = list(a), list(b)
    pairs = []
    for p in list(left):
        q = next((q for q in right if q.text() == p.text()), None)
        if q is not None:
            left.remove(p)
            right.remove(q)
    for i in range(max(len(left), len(right))):
        pairs.append((left[i] if i < len(left) else None, right[i] if i < len(right) else None))
    return pairs


def compare(before: Snapshot, after: Snapshot, names=("before", "after"), topology=None) -> tuple[bool, str]:
    """(equal, report): the report leads with what differs, then a tree diff per differing process."""
    if topology is None:
        from engine import topology
    if before.text() == after.text():
        return True, ""
    out = []
    if before.check_output != after.check_output:
        out.append(f"check output differs ({names[0]} vs {names[1]}):")
        out += ["  " + line.rstrip("\n") for line in difflib.unified_diff(
            (before.check_output or "").splitlines(True), (after.check_output or "").splitlines(True),
            names[0], names[1], n=2)]
    if len(before.procs) != len(after.procs):
        out.append(f"process count differs: {len(before.procs)} {names[0]}, {len(after.procs)} {names[1]}")
    for p, q in _pair(before.procs, after.procs):
        if p is None or q is None:
            extra = p or q
            out.append(f"a process only {names[0] if q is None else names[1]} (pid {extra.pid}):")
            out += ["  " + line for line in extra.text().splitlines()]
            continue
        head = f"process (pid {p.pid} {names[0]}, {q.pid} {names[1]}):"
        if p.tree_text != q.tree_text:
            _, tree_report = topology.diff_report(p.mounts, q.mounts, names=names)
            out.append(head + " mount tree differs")
            out += ["  " + line for line in tree_report.rstrip("\n").splitlines()]
            head = ""
        if p.lock_lines() != q.lock_lines():
            out.append((head or "  same process:") + " mount locks differ")
            if isinstance(p.locks, dict) and isinstance(q.locks, dict):
                out += ["  " + line for line in mntlocks.diff(p.locks, q.locks, names)]
            else:
                out += [f"  {names[0]}: {p.lock_lines()}", f"  {names[1]}: {q.lock_lines()}"]
            head = ""
        if p.sb_owners != q.sb_owners:
            out.append((head or "  same process:") + " superblock owners differ")
            out += ["  " + line for line in sbowner.diff(p.sb_owners, q.sb_owners, names)]
            head = ""
        skip = ("mounts:", "  ", "lock ", "sb owner ")
        rest_a = [line for line in p.text().splitlines() if not line.startswith(skip)]
        rest_b = [line for line in q.text().splitlines() if not line.startswith(skip)]
        if rest_a != rest_b:
            out.append((head or "  same process:") + " root/cwd/fds differ")
            out += ["  " + line for line in difflib.unified_diff(rest_a, rest_b, names[0], names[1], n=1,
                                                                 lineterm="")]
    for what, a, b in (("namespaces", before.namespaces, after.namespaces),
                       ("peer groups across mount namespaces", before.cross_peers, after.cross_peers),
                       ("fd sharing", before.sharing, after.sharing), ("zombies", before.zombies, after.zombies)):
        if a != b:
            out.append(f"{what} differ:")
            out += ["  " + line for line in difflib.unified_diff(a.splitlines(), b.splitlines(), names[0],
                                                                 names[1], n=1, lineterm="")]
    if not out:  # sorted order differed only through ties: show the whole texts
        out += [line for line in difflib.unified_diff(before.text().splitlines(), after.text().splitlines(),
                                                      names[0], names[1], lineterm="")]
    return False, "\n".join(out) + "\n"
