"""Fd kinds: what dump keeps of an open file description and how restore makes it again.

One module per kind (file, pipe, unix socket, eventfd, ...) registers an
`FdKind`; modules are discovered, so dump.py, restore.py and standin.py name no
kind. Dump classifies each fd by its /proc link target and mode (`classify`);
an fd no kind claims is refused naming the fd and what it is, before anything
is written, and the tree is resumed.

An image fd entry always has `fd`, `flags`, `pos` and `kind` (absent: a file,
for images of earlier dumps); `desc` names an open file description held by
several fds (restore makes it once and hands the same description to each);
`obj` names an object in the image's `objects` (a pipe, a socket pair) that
several descriptions refer to. Everything else in the entry is the kind's own
payload, checked by its `check`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from engine.records import record, field


class FdError(OSError):
    """An fd that cannot be dumped or restored (one line naming it)."""


@record
class DumpFd:
    """One fd of a stopped process, as a kind's dump hook sees it."""

    pid: int
    fd: int
    target: str          # readlink of /proc/PID/fd/N
    mode: int            # st_mode of the file
    flags: int
    pos: int
    pidfd: int           # pidfd of the process (the tree is stopped)
    objects: dict        # the image's "objects", shared by all fds of the dump
    mnt: int = 0         # fdinfo mnt_id
    # Per-dump caches of the kinds (e.g. sock_diag tables); scratch["takes"]: FdTable's `takes`;
    # scratch["after_reads"]: (what, fn) steps run once the dump read the tree's files, before the
    # tree resumes (not when it is killed): undo what those reads did to it (inotify events).
    scratch: dict = field(default_factory=dict)
    in_ns: object = None                          # what the kind's in_ns hook read
    place: Callable | None = None                 # place(abs path, mnt id, what) -> {mnt, path[, detached]}
    mounts: list = field(default_factory=list)    # engine.mountinfo.Mount of the process's namespace
    # The tree's other mount namespaces: [(a pid in it, its engine.mountinfo.Mount list)] (a socket
    # file a process bound inside a container it made, as systemd-nspawn binds /run/host/notify).
    elsewhere: list = field(default_factory=list)
    _copy: int | None = None

    @property
    def where(self) -> str:
        """The fd as refusals name it: process, number and target."""
        return f"process {self.pid} fd {self.fd} ({self.target})"

    def info(self) -> dict[str, list[str]]:
        """/proc/PID/fdinfo/N as {key: [values of each line with that key]}."""
        out: dict[str, list[str]] = {}
        with open(f"/proc/{self.pid}/fdinfo/{self.fd}") as f:
            for line in f:
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), []).append(value.strip())
        return out

    def copy(self) -> int:
        """Our own fd on the same open file description (closed by `close`)."""
        if self._copy is None:
            from engine.fds import sys as fsys
            self._copy = fsys.pidfd_getfd(self.pidfd, self.fd)
        return self._copy

    def close(self) -> None:
        """Close our copy of the fd (`copy`), if one was made."""
        if self._copy is not None:
            os.close(self._copy)
            self._copy = None


@record
class RestoreFd:
    """What a kind's open hook gets at restore: the entry, the image's objects, helpers."""

    entry: dict
    objects: dict        # image "objects"
    state: dict          # per-object state shared by the hooks of one restore (e.g. made pipe ends)
    open_at: Callable    # open_at(mnt, path, flags) on the restored mount (restore.py)
    standin: Callable    # standin(kind, fn, args, fds) -> (reply, fds): run a kind's hook in the stand-in
    keep: list           # fds to close only after every process got its fds (fifo keepers)
    proc: int = -1       # an fd on the host's /proc (to name our fds by path: proc/self/fd/N)
    open_ghost: Callable | None = None   # open_ghost(ghost id, flags, mount id, name): a file unlinked while open
    # Steps run by the restorer once every process got its fds (a datagram socket connected to a
    # named socket of another process, made by then): (what, fn()) or (what, fn(), order) each.
    late: list = field(default_factory=list)
    # pid_of(image pid) -> the host pid of the process restored for it (a file of /proc/N/ of a live one).
    pid_of: Callable | None = None
    # ns_fd(namespace id of the image) -> the restorer's fd on that restored namespace, or None.
    ns_fd: Callable | None = None
    # standin_of(image pid) -> a `standin`-like call into that process's stand-in (this kind's
    # hooks), or None when the image has no such process (a listener another process listened on).
    standin_of: Callable | None = None
    # share(desc id, make) -> our fd on the description an image "desc" names: made by make() the
    # first time (an fd in flight that shares it: engine/fds/unix_queue.py open_inflight), else a dup.
    share: Callable | None = None
    # reach(mnt, at, fn) -> fn(): fn run only where the tree's user could reach the host's file of
    # mount `mnt` (an O_PATH fd at()): as that user first, as root on a file of ids it maps (a
    # rootless tree: engine/restore.py host_reach); None: fn() as root.
    reach: Callable | None = None

    @property
    def where(self) -> str:
        """The fd as errors name it: number and kind."""
        return f"fd {self.entry['fd']} ({self.entry.get('kind', 'file')})"

    def reopen(self, fd: int, flags: int) -> int:
        """A new open file description of our fd `fd` (open of /proc/self/fd/N) with `flags`.

        Through the host's /proc (`proc`) when given: with a yard (sources=yard, Linux < 6.15)
        the restorer's "/" is the yard, where /proc does not exist.
        """
        if self.proc >= 0:
            return os.open(f"self/fd/{fd}", flags, dir_fd=self.proc)
        return os.open(f"/proc/self/fd/{fd}", flags)


def _no_payload(entry: dict, what: str) -> None:
    return None


@record(frozen=True)
class FdKind:
    """How one kind of open file is dumped and recreated."""

    name: str
    # Does a /proc link target with this st_mode belong to this kind? Kinds are asked in `order`.
    matches: Callable[[str, int], bool]
    # dump(DumpFd) -> extra entry fields (may add to DumpFd.objects); runs with the tree stopped.
    dump: Callable[[DumpFd], dict]
    # open(RestoreFd) -> an fd (ours, closed by the caller) on a new open file description.
    open: Callable[[RestoreFd], int]
    order: int = 50
    # The fd names a file on a mount (entry has mnt, path, maybe detached), placed like a file.
    placed: bool = False
    # check(entry, what): raise image.ImageError (via image._fail) on a bad payload.
    check: Callable[[dict, str], None] = _no_payload
    # check_object(obj, what): the same for an image object whose "kind" is this kind's name.
    check_object: Callable[[dict, str], None] = _no_payload
    # deferred(entry) -> whether the entry is made only once every process holds its other fds
    # (a file of /proc/N/fdinfo/M needs process N's fd M), then installed at its number.
    deferred: Callable[[dict], bool] = lambda entry: False
    # after(entry) -> a stand-in step run once its fds are installed: (fn, args) or None (epoll).
    after: Callable[[dict], tuple | None] = lambda entry: None
    # Functions a stand-in may run for this kind: name -> fn(args, fds) -> (reply, fds).
    standin: dict = field(default_factory=dict)
    # in_ns(hostproc, pid, fd, mounts) -> picklable facts read inside the process's mount namespace,
    # chrooted to its root (paths as the namespace sees them); given to dump as DumpFd.in_ns.
    in_ns: Callable | None = None
    # mounts(entry) -> ids of the attached mounts restore opens for this entry besides its own
    # `mnt` (inotify watches); restore keeps an fd on each.
    mounts: Callable[[dict], list] = lambda entry: []
    # Its own fields of an image fd entry: name -> engine.imageformat.F (types; `check` does the rest).
    fields: dict = field(default_factory=dict)
    # refs(entry) -> what the entry names elsewhere in the image, checked by the validator against
    # it (a field's form says nothing of whose process or namespace it is): (what, value, text)
    # each, what one of "process" (an image pid), "namespace" (an image namespace id), "proc" (a
    # location {mnt, detached?} on a proc mount of the image), "private" (a location {mnt} on a
    # filesystem only the restored tree reaches, fs.made_for_image); text names it in the refusal.
    refs: Callable[[dict], list] = lambda entry: []
    # ids(entry) -> {"uid": [...], "gid": [...], "groups": [...] or None (the stand-in's own)}: ids
    # (the dumper's) restore takes for the fd alone, outside the process's user namespace (a
    # listener's credentials); the validator refuses one its tree's rootless user namespace does
    # not map, and groups left to the stand-in (the restorer's, then) there.
    ids: Callable[[dict], dict] = lambda entry: {}
    # forks(entry) -> a key (str) of a process restore forks for it (entries with one key share one;
    # a pidfd of an exited process), None: none. Counted with the image's processes by the validator.
    forks: Callable[[dict], str | None] = lambda entry: None
    # The kind of the image object its `obj` names (empty: an object of its own kind), checked by the validator.
    obj_kind: str = ""
    # prepare(key, object, [(entry, chan)], call) -> fds kept as the object's restore state, made
    # before any fd once all stand-ins entered their roots (call(chan, fn, args, fds) -> fds).
    prepare: Callable | None = None
    # finish(objects, entries): once every fd is dumped, complete or refuse (a pty slave without master).
    finish: Callable[[dict, list], None] = lambda objects, entries: None
    # precheck(DumpFd) before the tree is stopped (engine/prestop.py): refuse (FdError, the line
    # `dump` would give) what the fd of a running process already shows, changing nothing the
    # process could notice; `dump` checks again once the tree is stopped (what changed since).
    # The DumpFd has no flags, pos, mnt, objects, place or in_ns (0, empty); facts for `prefinish` go
    # into its scratch, shared by every fd of the tree (scratch["leave_running"]: the option;
    # scratch["pids"]: the tree's processes; scratch["members"]: pid -> the tree's processes in its mount
    # namespace; scratch["host_mnts"]: ids of the mounts of --external superblocks).
    precheck: Callable[[DumpFd], None] | None = None
    # prefinish(scratch): once every fd of the tree was prechecked, refuse what takes several.
    prefinish: Callable[[dict], None] = lambda scratch: None
    # Its fds are made in their process's network namespace (inet sockets bound to its ports): the
    # validator refuses one of a process in the restorer's own (host_ns "net"), which an image
    # must never make restore bind in.
    own_netns: bool = False


_REGISTRY: dict[str, FdKind] = {}
_loaded = False


def register(kind: FdKind) -> FdKind:
    """Add a kind to the registry."""
    _REGISTRY[kind.name] = kind
    return kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in sorted(_module_names()):
        __import__(f"{__name__}.{name}")   # (not importlib: its package and warnings, ~1.4 M instructions a verb)


_names: frozenset[str] | None = None


def _module_names() -> frozenset[str]:
    """The kind modules, as pkgutil.iter_modules lists them, without importing pkgutil (and typing
    with it: ~7 ms of every dump and restore)."""
    global _names
    if _names is None:
        _names = frozenset(n[:-3] for d in __path__ for n in os.listdir(d)
                           if n.endswith(".py") and n[:-3] not in ("sys", "__init__"))
    return _names


def load(names=None) -> None:
    """Import the modules of the kinds `names`, or of every kind, now: restore's stand-ins run
    their kinds' hooks in their roots, where this package is out of reach (dump's helpers that
    chroot into containers get their tree's kinds from `load_tree`)."""
    if names is None:
        _load()
        return
    for name in names:
        lookup(name)


def lookup(name: str) -> FdKind | None:
    """The kind called `name` (None when unknown).

    The module named like the kind (fds/NAME.py, or _MODULE_OF's: fifo lives in pipe.py) is
    imported first, alone: a restore of files and pipes does not load the others (~8% of a small
    restore's start-up). A name no such module registers imports them all, as before.
    """
    found = _REGISTRY.get(name)
    if found is None and not _loaded:
        module = _MODULE_OF.get(name, name)
        if module in _module_names():
            __import__(f"{__name__}.{module}")
            found = _REGISTRY.get(name)
        if found is None:
            _load()
            found = _REGISTRY.get(name)
    return found


# Which modules' kinds may claim an fd, from its link target: dump imports those alone (a tree
# without sockets then never loads socket.py, selectors, threading, ipaddress: 27% of the
# instructions of dump's imports, benchmarks/HISTORY.md). A target this does not route loads every
# kind, so a new kind on a target of its own is found without an entry here (at the old cost); a
# new kind of path targets ("/...") must be added to _by_path. tests/test_engine_dump_imports.py
# checks the routes against every kind.
_ANON = {"[eventpoll]": "epoll", "[eventfd]": "eventfd", "[fanotify]": "fanotify", "inotify": "inotify",
         "[pidfd]": "pidfd", "[signalfd]": "signalfd", "[timerfd]": "timerfd"}
_PREFIX = {"pipe": "pipe", "socket": "unix",   # (unix.py hands netlink and inet sockets to their modules)
           **{ns: "nsfs" for ns in ("mnt", "pid", "uts", "ipc", "net", "cgroup", "user", "time")}}
_SHMEM = "/dev/zero (deleted)"   # (memfd.SHMEM)
# Kinds registered by a module of another name (`lookup`).
_MODULE_OF = {"fifo": "pipe", "ctty": "pty", "shmem": "memfd"}


def _by_path(target: str, mode: int) -> tuple[str, ...]:
    out = ("file",)
    if stat.S_ISFIFO(mode):
        out += ("pipe",)
    elif stat.S_ISCHR(mode) and target.rsplit("/", 1)[-1] == "tun":
        out += ("tun",)   # (/dev/net/tun: engine/fds/tun.py)
    elif stat.S_ISCHR(mode) and ("pts" in target or "ptmx" in target or "tty" in target):
        out += ("pty",)   # (/dev/null and the like do not load pty.py, termios and select)
    if target.startswith("/memfd:") or target == _SHMEM:
        out += ("memfd",)
    return out


def modules_of(target: str, mode: int) -> tuple[str, ...] | None:
    """The kind modules one of whose kinds may claim an fd with this link target and mode (None:
    any, import them all)."""
    if target.startswith("/"):
        return _by_path(target, mode)
    if target.startswith("anon_inode:"):
        name = _ANON.get(target[len("anon_inode:"):])
    else:
        name = _PREFIX.get(target.split(":[", 1)[0]) if ":[" in target else None
    return (name,) if name is not None else None


def load_for(target: str, mode: int) -> None:
    """Import the modules whose kinds may claim this fd (`modules_of`), or every kind."""
    if _loaded:
        return
    names = modules_of(target, mode)
    if names is None:
        _load()
        return
    for name in names:
        if f"{__name__}.{name}" not in _imported:
            __import__(f"{__name__}.{name}")
            _imported.add(f"{__name__}.{name}")


_imported: set[str] = set()


def load_tree(pids) -> None:
    """Import the kind modules the fds of processes `pids` need (`load_for` each), reading /proc
    now: dump's helpers (engine/nsinspect.py) classify fds after they entered and chrooted into a
    container, where this package is out of reach. Run with the tree stopped (no fd comes after);
    a process or fd gone meanwhile is passed over (whoever reads it next tells)."""
    from engine import kernel
    for _, link, target in kernel.fd_links(pids):
        try:
            mode = os.stat(link).st_mode if target.startswith("/") else 0   # (only paths' routes use it)
        except OSError:
            continue
        load_for(target, mode)
        if _loaded:
            return


def classify(target: str, mode: int) -> FdKind | None:
    """The kind of an fd from its /proc link target and mode, or None when no kind handles it.

    Imports the modules that may claim it first (`load_for`), when not all are loaded."""
    load_for(target, mode)
    for kind in sorted(_REGISTRY.values(), key=lambda k: (k.order, k.name)):
        if kind.matches(target, mode):
            return kind
    return None


def inspect_in_ns(target: str, mode: int, hostproc: int, pid: int, fd: int, mounts) -> object:
    """Run the in-namespace hook of the fd's kind, if it has one (else None)."""
    kind = classify(target, mode)
    if kind is None or kind.in_ns is None:
        return None
    return kind.in_ns(hostproc, pid, fd, mounts)


def deferred(entry: dict) -> bool:
    """Whether fd entry `entry` is made only once every process holds its other fds (FdKind.deferred)."""
    kind = lookup(entry.get("kind", "file"))
    return kind is not None and kind.deferred(entry)


def mounts_used(entry: dict) -> list[int]:
    """Ids of the attached mounts restore opens files on for fd entry `entry`."""
    kind = lookup(entry.get("kind", "file"))
    own = [entry["mnt"]] if "mnt" in entry and not entry.get("detached") else []
    return own + (list(kind.mounts(entry)) if kind is not None else [])


# What to do about an fd of a kind no module dumps, where there is something to do (by `describe`).
_WHAT_TO_DO = {
    "io_uring": " (its rings and requests in flight are kernel state no interface gives back): run the program "
                "without io_uring to dump it (MariaDB: --innodb-use-native-aio=0)",
    "userfaultfd": " (its registered ranges and the faults waiting on it are kernel state no interface gives back): "
                   "dump it once the program closed it (QEMU: after its postcopy migration ends)",
    "perf_event": " (its counters and sample buffer are kernel state no interface gives back): stop the profiler "
                  "(perf record, perf stat) to dump it",
    "bpf": " (bpf maps, programs and links are kernel objects restore cannot load again): run the program "
           "without its bpf objects (or stop the tool that loaded them) to dump it",
}


def unsupported(pid: int, fd: int, target: str) -> str:
    """The refusal of fd `fd` of process `pid`, of a kind no module dumps: what it is, and what to do
    where there is something (`_WHAT_TO_DO`)."""
    name = describe(target)
    # (bpf-map, bpf-prog, bpf_link...: one advice)
    todo = _WHAT_TO_DO.get(name) or _WHAT_TO_DO.get("bpf" if name.startswith("bpf") else "", "")
    return f"process {pid} fd {fd} ({target}): {name} fds are not supported{todo}"


def describe(target: str) -> str:
    """A short name of what an unsupported fd is, for the refusal ("socket:[123]" -> "socket")."""
    if target.startswith("anon_inode:"):
        return target[len("anon_inode:"):].strip("[]")
    return target.split(":", 1)[0] if ":[" in target else target


# Which kinds are loaded is up to the caller: dump loads the kinds of the tree's fds (`classify`,
# `load_tree`), restore its image's (`load`).
