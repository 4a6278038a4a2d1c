"""Filesystem types: what dump keeps of a superblock and how restore creates it again.

One module per type in this package (CRIU's `struct fstype`, the Python way):
each module builds an `FsType` (or a subclass overriding its hooks) and
`register`s it. Modules are found by discovery (every module of the package
is imported; names starting with "_" are shared helpers, not types), so a new
type is one new file. Dump asks `lookup(fstype)`; an unknown type is refused
with "not supported" rather than guessed at.

What a type declares:
- identity: `name` (the mountinfo fstype; ``fuse.x`` looks up ``fuse``), and
  `magic` (statfs f_type) for a superblock no mount shows;
- dump: `mount_root` (a mount's root when mountinfo's is not it), `content` (its files go into an archive),
  `ghosts_through` (unlinked open files are made again through a mount of it), `device` (it lives on a block
  device: `device_of`, `plan_device`), `layers` (built on other mounts: `plan`,
  `made_outside`; `precheck`: what a running tree already shows refused), `ns` / `ns_key`
  (the namespace that owns it: `probe`);
- roots: `fresh_roots` (the mount roots a new instance has), `held_root`/`make_root` (a root it lacks
  that restore makes from an object a process of the tree holds: a pty bound as /dev/console);
- restore: `mount_source` (`per_mount`: each mount made from an object of its own, never from a
  superblock restore makes: nsfs binds the restored namespace a mount names);
  `create` (make the superblock; None: plain fsopen/fsconfig/fsmount)
  and `when` it can be made; options shown vs given (`drop_opts`, `no_opts`,
  `path_opts`, `fsconfig_params`, `id_opts`); `keep_source`;
- kernel: `requires` (names /proc/filesystems must list);
- the --fstype battery: `recipe` (scenarios/battery/), or None.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from engine.records import record, field

from engine.mountinfo import unescape

# Superblock flags mountinfo shows among the super options; fsconfig takes them as flags.
SB_FLAG_OPTS = frozenset({"ro", "sync", "dirsync", "lazytime", "mand"})


class FsError(OSError):
    """A type hook refuses (dump) or fails (restore): one line naming the mount and the reason."""

    def __reduce__(self):
        return (type(self), (self.errno, self.strerror))


# When restore can create a superblock of a type:
PLAIN = "plain"            # at once (from a stand-in in its namespace for `ns` types)
def open_image_file(base: int, path: str, flags: int, what: str, dirs: bool = False) -> int:
    """A regular file (or, with `dirs`, a directory) of a superblock the image filled (`path` beneath
    its root fd `base`, through no symlink and no other mount), opened without blocking; FsError
    "WHAT PATH is no regular file" for anything else (a FIFO of a hostile archive would block the
    open forever)."""
    from engine import kernel
    fd = kernel.open_unblocked(lambda f: kernel.openat2(
        base, path.lstrip("/") or ".", f, kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS
        | kernel.RESOLVE_NO_MAGICLINKS | kernel.RESOLVE_NO_XDEV), flags)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or dirs and stat.S_ISDIR(mode)):
        os.close(fd)
        raise FsError(errno.EINVAL, f"{what} {path} is no regular file{' or directory' if dirs else ''}")
    return fd


AFTER_FILES = "after-files"  # after every archive is extracted (a loop image file may be among them)
ON_USE = "on-use"          # when a mount of it is first cloned (its layers are mounts restored before it)


@record(frozen=True)
class Recipe:
    """How the --fstype battery (scenarios/battery/) makes a fresh superblock of a type.

    `make` is sh run in the scenario's container as root with FS (an empty directory to mount it
    on), SRC (a directory tree the battery's files are in: f, d/sub/g) and WORK (a tmpfs for
    images) set. It mounts a new superblock at $FS holding SRC's files when `tree` (else the
    battery uses only its root). Everything it makes lives in the container and dies with it
    (loop devices are set to clear themselves); a daemon it starts is a process of the container
    (restarted at restore: `restart`); a server the tree is only a client of is `server`, run
    outside the container.
    """

    make: str
    commands: tuple[str, ...] = ()   # commands the recipe runs (a missing one skips, naming it)
    tree: bool = True                # $FS holds SRC's files after `make` (a pseudo filesystem cannot)
    loop: bool = False               # it needs loop device nodes in the container's private /dev
    # Battery scenarios mntcr is known to fail on this type: (scenario name, reason) -> crfail.
    known_failures: tuple[tuple[str, str], ...] = ()
    # (key, command) pairs the battery's restore gives as --fuse-restart KEY=COMMAND (a daemon type).
    restart: tuple[tuple[str, str], ...] = ()
    # A server outside the dumped tree that `make` mounts from (an external-server type): sh the runner
    # runs in a network and mount namespace of its own, which the container, dump and restore share
    # (zdtm/fsserver.py); SERVER is an empty directory for its exports. `server_stop` ends it.
    server: str | None = None
    server_stop: str = ""
    # Why the battery cannot run this recipe yet (its items skip saying so), or None.
    unfinished: str | None = None


def block_recipe(mkfs: str, size: str = "64M", options: str = "", copy: str = "cp -a",
                 known_failures: tuple[tuple[str, str], ...] = ()) -> Recipe:
    """A battery recipe for a writable block type: an empty image file formatted with `mkfs`
    (its command line up to the image path), mounted from a loop device, SRC copied in."""
    opts = f",{options}" if options else ""
    return Recipe(make=f'truncate -s {size} "$WORK/img"\n{mkfs} "$WORK/img" >/dev/null\n'
                       f'mount -o loop{opts} "$WORK/img" "$FS"\n{copy} "$SRC/." "$FS/"\nsync',
                  commands=(mkfs.split()[0], "losetup"), loop=True, known_failures=known_failures)


def pseudo_recipe(name: str, known_failures: tuple[tuple[str, str], ...] = ()) -> Recipe:
    """A battery recipe for a pseudo filesystem: mounted empty (or as the kernel fills it)."""
    return Recipe(make=f'mount -t {name} battery "$FS"', tree=False, known_failures=known_failures)


@record(frozen=True)
class FsType:
    """How one filesystem type is dumped and recreated. Hooks are methods with neutral defaults."""

    name: str
    # Dump the superblock's files into an archive (tmpfs, ramfs).
    content: bool = False
    # Not archived, but a file unlinked while open (or a directory removed while a cwd) may be made
    # again through a mount of it and unlinked there (overlay: the new file lies in the upper layer,
    # and unlinking it whites the name out again), as on a `content` type (engine/ghosts.py).
    ghosts_through: bool = False
    # statfs magic: names a superblock that only a detached mount shows (content types, whose files
    # are archived from it; `layers` types, made again from the layers its options name).
    magic: int | None = None
    # Namespace the superblock is tagged with: created by a process inside it.
    ns: str | None = None  # "pid" | "ipc" | "net" | "cgroup"
    # The superblock record's key naming its namespace (dump's `probe` finds it); None: the
    # namespace of the processes that see the mount.
    ns_key: str | None = None
    # Super options that cannot be passed back to fsconfig (shown but not settable).
    drop_opts: frozenset[str] = field(default_factory=frozenset)
    # Super options whose value is a path of the dumped tree, not of the host (the validator lets them be).
    path_opts: frozenset[str] = field(default_factory=frozenset)
    # Pass no super options at all (e.g. cgroup2: they belong to the one hierarchy).
    no_opts: bool = False
    # Super options whose value is a user or group id: (option, "uid" | "gid"). mountinfo shows
    # them in the initial user namespace's ids; a superblock a user namespace owns is made inside
    # it and given them in that namespace's ids (engine/userns_cr.py fsmount_in).
    id_opts: tuple[tuple[str, str], ...] = ()
    # Keep the mountinfo source string when creating (fsconfig "source").
    keep_source: bool = True
    # A new mount of the type in the same namespace joins its superblock (mqueue, sysfs, cgroup2:
    # keyed by their namespace), so restore mounts it again for a mount shown with another source
    # than the superblock's first (mountinfo's source is per mount; a bind keeps its source's).
    # Types without it may do so with `mount_again` (block devices); dump refuses the others.
    joins_by_ns: bool = False
    # Built on layers that are other mounts: the image has its layers record, made `ON_USE`.
    layers: bool = False
    # Lives on a block device: the image has its device record (external or a loop file of the image).
    device: bool = False
    # Mount roots a new instance has (None: any). A bind of another root (a pseudo-terminal of
    # a devpts instance, LXC's /dev/console) cannot be recreated: it must be declared external.
    fresh_roots: frozenset[str] | None = None
    # Served by a daemon process: restore starts a new one with the user's restart command (fuse.py);
    # dump neither stops nor dumps the tree's processes `serves` says hold such a connection.
    daemon: bool = False
    # One superblock for the whole machine (devtmpfs, debugfs, tracefs...; binfmt_misc: one a user
    # namespace): a mount of it in the tree is the host's, so an --external naming an overmount
    # stack that holds one applies to it, not to the stack's top; restore mounts it again only for
    # an image it trusts (--devices all).
    host_global: bool = False
    # Names /proc/filesystems must list for the kernel to make it.
    requires: tuple[str, ...] = ()
    # How the --fstype battery makes a fresh superblock of this type (scenarios/battery/), or None.
    recipe: Recipe | None = None
    # What to do when a mount's root is missing on a superblock of this type that restore neither
    # fills nor makes the roots of (a cgroup an image from elsewhere names), or None.
    missing_root: str | None = None

    @property
    def when(self) -> str:
        """When restore creates it: PLAIN, AFTER_FILES or ON_USE."""
        return ON_USE if self.layers or self.per_mount else AFTER_FILES if self.device else PLAIN

    @property
    def per_mount(self) -> bool:
        """Whether each mount is made from an object of its own (`mount_source`), never from a
        superblock restore makes (nsfs: each bind is the restored namespace it names)."""
        return type(self).mount_source is not FsType.mount_source

    def fsconfig_params(self, super_opts: tuple[str, ...] | list[str]) -> list[tuple[str, str | None]]:
        """(key, value) pairs for fsconfig; value None means a flag."""
        if self.no_opts:
            return []
        params: list[tuple[str, str | None]] = []
        for opt in super_opts:
            key, sep, value = opt.partition("=")
            if key == "rw" or key in self.drop_opts or key in _ALWAYS_DROP:
                continue
            if sep:
                params.append((key, unescape(value)))
            else:
                params.append((key, None))
        return params

    # -- dump hooks (defaults: nothing to do) ---------------------------------------------

    def sb_source(self, sources: list[str]) -> str:
        """The source restore makes the superblock from, given its mounts' sources in mountinfo order
        (default: the first one's)."""
        return sources[0]

    def mount_root(self, root: str, source: str, sb_source: str, where: str) -> str:
        """The root of a mount in its superblock, as restore binds it from the superblock it makes with
        `sb_source` (what `sb_source` picked): mountinfo's root by default. A type whose
        mountinfo root says nothing (nfs shows "/" and puts the path in the source) derives it."""
        return root

    def device_of(self, mount) -> str | None:
        """Inside the dumped namespace: "MAJ:MIN" of the block device mount `mount` lives on, when
        mountinfo's device number is not it (None: take mountinfo's)."""
        return None

    def host_device(self, found: str | None) -> str | None:
        """Outside the dumped namespace: "MAJ:MIN" for what `device_of` found inside it (default: as is)."""
        return found

    def plan_device(self, sid: str, sb: dict, plan) -> bool:
        """Resolve sb["device"] when no external device was declared (e.g. a loop device over a file
        the dump archives); return False when it cannot be (dump then refuses or takes it external)."""
        return False

    def plan(self, sid: str, sb: dict, plan) -> None:
        """Complete the record of an in-namespace superblock (e.g. an overlay's layers)."""

    def precheck(self, sid: str, sb: dict, plan) -> None:
        """Before the tree is stopped (engine/prestop.py): refuse what `plan` would refuse that a
        running tree already shows. `plan` has the same fields `plan` gets, read from mountinfo (no
        archives, no devices); `sb` has fstype, source, super_opts and dev. Reads only: the tree runs."""

    def deleted_dir(self, where: str, sb: dict, pid: int, link: str, sb_path: str) -> dict | None:
        """Refuse (FsError) a directory of this superblock that process `pid` holds (`link` under
        /proc/PID: "cwd", "root" or "fd/N") after it was removed, when restore cannot make it again at
        `sb_path` (its old path in the superblock; `where` names it). Reads only: asked before the stop
        and again once the tree is stopped. Returns None (made again from its archive), or
        {"uncover": True, "layer_dev": "MAJ:MIN"}: restore uncovers it instead (`uncover_layer`) in
        that layer, whose filesystem the image must make (mountrules.uncover_layer). Default: nothing
        refused."""
        return None

    def uncover_layer(self, sb: dict) -> dict | None:
        """The layer record (sb["layers"]) in which restore takes out the whiteout a removed directory
        left (a ghost with `uncover`), before the superblock is made, so that the directory beneath
        shows again (overlay: its upper layer); None when the type uncovers nothing."""
        return None

    def plan_detached(self, sid: str, sb: dict, plan, ns_name: str, made: dict) -> None:
        """Complete the record of a `layers` superblock that only a detached mount shows (its
        options read through a file on it): its layers resolved in mount namespace `ns_name` (of
        the process holding the file), as they were when mount `made` ({id, uid, mountpoint}) was
        made; FsError naming what cannot be. Reads only: also asked before the stop."""
        raise FsError(errno.EOPNOTSUPP, f"a {self.name} only a detached mount shows cannot be made again")

    def held_root(self, root: str) -> bool:
        """Whether `root`, a mount root a new instance lacks (not in `fresh_roots`), is made at
        restore by opening an object of the instance that a process of the tree holds (devpts: pty N,
        whose master is opened through the instance's ptmx): `make_root` makes it, and dump asks that
        the tree holds the object (its fd kind names it in scratch "held", engine/mountrules.py)."""
        return False

    def made_outside(self, sid: str, sb: dict, plan) -> bool:
        """Whether this namespace-root superblock was built outside the dumped namespaces."""
        return False

    def layer_paths(self, super_opts) -> list[tuple[str, str]]:
        """(option, path) of every layer its options name (types with `layers`)."""
        return []

    def serves(self, st: os.stat_result) -> bool:
        """Whether an open file with this stat is the connection a daemon of this type serves on."""
        return False

    def restart_refusal(self, pid: int, ext_mnts) -> str | None:
        """Before the stop, for daemon `pid` of this type (`serves`): why its restart at restore
        could not serve the restored superblock (what it serves from lies where the restarted
        daemon cannot reach it; `ext_mnts`: the external mount points), or None."""
        return None

    def wants_probe(self) -> bool:
        """Whether dump clones one mount of the superblock and hands it to `probe`."""
        return False

    def probe(self, sid: str, mid: int, mount_fd: int, plan) -> None:
        """With a detached clone `mount_fd` of mount `mid`: record what the type needs (its namespace)."""

    def check_payload(self, what: str, sb: dict) -> str | None:
        """Validate sb["payload"] (what `probe` recorded beyond files and options) of an untrusted
        image: None when restore may `fill` it in, else why not (default: the type has none)."""
        return f"{what}: a {self.name} superblock carries no payload"

    # -- restore hooks ----------------------------------------------------------------

    def fill(self, sb: dict, mount_fd: int, where: str) -> None:
        """Give a superblock restore has just made what dump recorded of it that is neither files nor
        options (sb["payload"], checked by `check_payload`), through `mount_fd`, its new detached
        mount (binfmt_misc: registered formats). Default: nothing. Called where restore settles a
        superblock it made itself (restore._settle); the helper that makes plain superblocks outside
        any user namespace (engine/filler.py) does not call it, so a payload needs an `owner`."""

    def made_from(self, sb: dict, mounts: dict) -> set[str]:
        """Superblock ids `create` reads from (a device's backing file, layers): their fds stay open
        until the superblock is made. `mounts` maps the image's mount ids (and its detached mounts'
        ids) to their records."""
        return set()

    def mount_again(self, sb: dict, source: str, sb_fd: int, where: str) -> int:
        """A new mount of the superblock of `sb` (whose mount `sb_fd` restore made) shown with
        `source`, another name than its first (types that `joins_by_ns` are mounted again in their
        namespace by restore itself). The default cannot: dump refuses such a tree, and restore
        such an image."""
        raise FsError(errno.EOPNOTSUPP, f"{where}: a {self.name} superblock cannot be mounted again under "
                                        f"another source ({source!r})")

    @property
    def mounts_again(self) -> bool:
        """Whether restore can give a mount of it another source than its superblock's first."""
        return (self.joins_by_ns and self.keep_source and self.ns is not None) or \
            type(self).mount_again is not FsType.mount_again

    @property
    def source_names_root(self) -> bool:
        """Whether a mount's source names its root (nfs: "host:/path", with mountinfo's root "/"):
        mounts of one superblock then differ in source by their roots alone, which `mount_root`
        turns into roots, and the kernel shows each restored bind with its own path again."""
        return type(self).mount_root is not FsType.mount_root

    def make_root(self, ctx, m: dict) -> dict[int, int]:
        """Make the root of mount `m` (one `held_root` accepts) on its new superblock, through the
        restorer `ctx` (its `doc`, `sb(sid)`, `open_at`), before m is cloned; return {number: fd} of
        every object opened to make it, which restore hands to the fd kinds (keyed by the
        superblock's device: a process of the tree holds one of them)."""
        raise FsError(errno.EOPNOTSUPP, f"{self.name}: cannot make root {m['root']}")

    def mount_source(self, ctx, m: dict, sb: dict, where: str) -> int:
        """A detached mount restore clones mount `m` (of superblock record `sb`) from, for a type that
        makes each mount from an object of its own (`per_mount`: nsfs opens the restored namespace `m`
        binds, through the restorer `ctx`, its `namespace_fd`); asked once per object, kept by restore."""
        raise FsError(errno.EOPNOTSUPP, f"{where}: {self.name} makes no mount of its own")

    def create(self, sid: str, sb: dict, ctx, where: str) -> int:
        """Make the superblock; return a detached mount fd. Only for types whose `when` is not PLAIN
        (PLAIN types are made by fsopen/fsconfig/fsmount from the image's options)."""
        raise FsError(95, f"{where}: {self.name} has no restore hook")


# Shown by the LSM layer, never accepted back.
_ALWAYS_DROP = frozenset({"seclabel"})

_REGISTRY: dict[str, FsType] = {}
_MODULE_OF: dict[str, str] = {}
_BY_MODULE: dict[str, list[FsType]] = {}
_current_module: list[str] = []


def register(fs: FsType) -> FsType:
    """Add a filesystem type to the registry (from its module, at import)."""
    _REGISTRY[fs.name] = fs
    _FOUND.clear()
    if _current_module:
        _MODULE_OF[fs.name] = _current_module[-1]
        _BY_MODULE.setdefault(_current_module[-1], []).append(fs)
    return fs


def lookup(fstype: str) -> FsType | None:
    """The FsType for a mountinfo fstype (``fuse.x`` looks up ``fuse``), or None if unsupported.

    The module named like the type (engine/fs/NAME.py) is imported first, alone: a restore of a
    few types then loads a few modules, not all of them (~10 ms of CPU a run). Any other name
    (ext2 lives in ext4.py) or one no module registers imports them all, as before.
    """
    found = _FOUND.get(fstype)   # (restore asks ~3 times a mount)
    if found is not None:
        return found
    base = fstype.split(".", 1)[0]
    found = _REGISTRY.get(fstype) or _REGISTRY.get(base)
    if found is None and not _loaded:
        if base in _module_names():
            _import(base)
            found = _REGISTRY.get(fstype) or _REGISTRY.get(base)
        if found is None:
            _load()
            found = _REGISTRY.get(fstype) or _REGISTRY.get(base)
    if found is not None:
        _FOUND[fstype] = found
    return found


_FOUND: dict[str, FsType] = {}   # names looked up -> their type (emptied when a type registers)


def refusal(mount, pids) -> str | None:
    """Why dump refuses `mount` (engine.mountinfo.Mount) of a type no module registers, when the
    module named like the type says it better than "not supported; declare it --external" (a module
    that registers no type but defines `refuse`); None otherwise. `pids`: the dumped tree."""
    base = mount.fstype.split(".", 1)[0]
    if lookup(mount.fstype) is not None or base not in _module_names():
        return None
    __import__(f"{__name__}.{base}")   # (not importlib: its package and warnings, ~1.4 M instructions a verb)
    refuse = getattr(sys.modules[f"{__name__}.{base}"], "refuse", None)
    return refuse(mount, pids) if refuse is not None else None


def supported() -> list[str]:
    """Names of all supported filesystem types."""
    _load()
    return sorted(_REGISTRY)


def held_roots_last(order: list[dict]) -> list[dict]:
    """`order` (image mount records, as restore makes them) with each mount whose root its type makes
    from an object the tree holds (`held_root`: a pty bound as /dev/console) moved after the last
    other mount of its superblock, through which that object is opened (/dev/pts/ptmx), unless
    something is mounted on it (restore then fails naming it, as before)."""
    parents = {m.get("parent") for m in order}
    held = [m for m in order if m["id"] not in parents and m.get("fstype")
            and (h := lookup(m["fstype"])) is not None
            and h.held_root(m["root"])]
    if not held:
        return order
    out = [m for m in order if m not in held]
    for m in held:
        last = max((i for i, x in enumerate(out) if x["sb"] == m["sb"]), default=None)
        at = order.index(m) if last is None else last + 1
        out.insert(max(at, next((i + 1 for i, x in enumerate(out) if x["id"] == m.get("parent")), 0)), m)
    return out


def types() -> list[FsType]:
    """Every registered type, by name."""
    _load()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def module_of(name: str) -> str | None:
    """The module (short name) that registered type `name`."""
    _load()
    return _MODULE_OF.get(name)


def battery() -> dict[str, FsType]:
    """Battery name -> type, for every type with a recipe; the name is its module's (engine/fs/NAME.py),
    so a module copied under a new name is a new battery entry (the last type with a recipe in it)."""
    _load()
    out = {}
    for module in sorted(_BY_MODULE):
        with_recipe = [t for t in _BY_MODULE[module] if t.recipe is not None]
        if with_recipe:
            out[module] = with_recipe[-1]
    return out


# The modules that register a daemon type (`daemon`): `daemons` loads these alone, not all
# 29 type modules (~40 M instructions of a small dump). tests/test_engine_fs.py checks this
# list against what the modules register.
DAEMON_MODULES = ("fuse",)


def daemons(pids) -> set[int]:
    """The processes among `pids` that serve a filesystem (hold a connection a daemon type's `serves`
    recognizes): dump leaves them running and out of the image; restore restarts them."""
    for name in DAEMON_MODULES:
        _import(name)
    from engine import kernel
    serving = [t for t in _REGISTRY.values() if t.daemon]
    out = set()
    for pid, path, target in kernel.fd_links(pids):
        if pid in out or not target.startswith("/"):
            continue   # (found already; or a pipe, socket or anonymous inode)
        try:
            st = os.stat(path)   # the open file itself (the tree still runs)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and any(t.serves(st) for t in serving):
            out.add(pid)
    return out


def daemon_refusal(daemons, ext_mnts) -> str | None:
    """Before the stop: the first reason a daemon of `daemons` could not be restarted at restore
    (a type's `restart_refusal`), or None."""
    serving = [t for t in _REGISTRY.values() if t.daemon]
    for pid in sorted(daemons):
        for t in serving:
            why = t.restart_refusal(pid, ext_mnts)
            if why:
                return why
    return None


def made_for_image(fstype: str) -> bool:
    """Whether restore makes a superblock of this type that only the restored tree reaches: filled
    from the image (tmpfs, ramfs), built on its layers (overlay) or served by a new daemon (FUSE).
    Others may be the host's own: devtmpfs, a cgroup v1 hierarchy, a block device the host has
    mounted too, a namespace-bound one of a namespace shared with the host (and any external one)."""
    t = lookup(fstype)
    return t is not None and (t.content or t.layers or t.daemon)


def holds_ghosts(fstype: str) -> bool:
    """Whether an unlinked file of a superblock of this type can be made again at restore (a ghost)."""
    handler = lookup(fstype)
    return handler is not None and (handler.content or handler.ghosts_through)


def ghost_names() -> str:
    """'tmpfs, ramfs or overlay' style list of the types that can hold a ghost (for messages)."""
    names = [t.name for t in types() if t.content or t.ghosts_through]
    return (", ".join(names[:-1]) + " or " + names[-1]) if len(names) > 1 else (names[0] if names else "(none)")


def content_names() -> str:
    """'tmpfs or ramfs' style list of the types whose files are dumped (for messages)."""
    names = [t.name for t in types() if t.content]
    return " or ".join(names) if names else "(none)"


def by_magic(magic: int) -> FsType | None:
    """The type whose statfs magic is `magic` (a superblock only a detached mount shows): a content
    type (archived from it) or a `layers` one (made again from its layers, `plan_detached`)."""
    return next((t for t in types() if t.magic == magic and (t.content or t.layers)), None)


_loaded = False


def _load() -> None:
    """Import every module of this package (each registers its types); "_name" modules are helpers."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        for name in sorted(_module_names()):
            _import(name)
    except FsError:
        _loaded = False   # (a registry left partial would call a known type unsupported)
        raise


_names: frozenset[str] | None = None


def _module_names() -> frozenset[str]:
    """The type modules of the package (helpers, "_name", left out), as pkgutil.iter_modules lists
    them, without importing pkgutil (and typing with it: ~7 ms of every dump and restore)."""
    global _names
    if _names is None:
        _names = frozenset(n[:-3] for d in __path__ for n in os.listdir(d)
                           if n.endswith(".py") and not n.startswith("_"))
    return _names


def _import(name: str) -> None:
    """Import type module `name` (once), noting which types it registers."""
    _current_module.append(name)
    try:
        __import__(f"{__name__}.{name}")
    except (ImportError, OSError) as e:
        # A dump helper inside the tree's root (engine/nsinspect.py) imports a type first seen
        # there: the engine's files are out of reach. Said so, not an internal error.
        raise FsError(errno.ENOENT, f"the module of filesystem type {name} (engine/fs/{name}.py) cannot be "
                                    f"loaded here ({type(e).__name__}: {e}): a helper inside the dumped tree's "
                                    "root met a type no mount showed before (a mount made while dump ran?); "
                                    "dump again") from None
    finally:
        _current_module.pop()


def load(fstypes=None) -> None:
    """Import the modules of the types `fstypes` (mountinfo names), or of every type, now: the
    restorer looks types up after it pivots into a restored root, where this package is out of
    reach."""
    if fstypes is None:
        _load()
        return
    for name in fstypes:
        lookup(name)


# The memory filesystem the engine makes for its own work (restore's yard), never a dumped one.
SCRATCH = "tmpfs"
