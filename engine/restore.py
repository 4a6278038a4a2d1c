"""Restore: image directory -> fresh namespaces with stand-in processes (the mounts-v2 way).

The restorer is a forked child that first unshares a *service* mount
namespace (a slave copy of the host's, so nothing propagates back), then:

 1. stand-ins: one per dumped process, forked parents first, in the same pid
    namespace nesting; uts, ipc, net namespaces and those of cgroups unshared or joined so
    processes share them as they did;
 2. superblocks: each created once with fsopen/fsconfig/fsmount (from a
    stand-in inside the right namespace for namespace-bound types), or by its
    type module's `create` hook (engine/fs/: devices, layers); external mounts
    cloned from host paths. Archived files are extracted by a helper
    (engine/filler.py) *while* steps 3-5 run: a mount point or bind root not
    extracted yet is made as a directory (tar keeps it and sets its
    attributes), anything else waits for them (join_files), as do types made
    after the files or on use, and step 6. After the wait, a mount lost
    meanwhile (tar replaced its mount point: a hostile archive) fails the restore;
 3. mounts: every mount a plain, private, detached clone (open_tree
    OPEN_TREE_CLONE) of its superblock at its root, with its per-mount flags
    (mount_setattr);
 4. namespaces: for each, unshare a copy of the service namespace, put the root
    mount over /, pivot_root into it and drop the rest; then move every other
    mount onto (parent, mount point), parents first and, among siblings, deeper
    mount points first so no path walk crosses a mount. The fd on each mount
    point taken before the move (mp_fd) still reaches what gets covered;
 5. sharing: group mounts by (shared, master); walk groups parents first: copy
    the parent group with MOVE_MOUNT_SET_GROUP, make slave, then shared; copy
    the other members from the group's first mount. Unbindable last.
    Without MOVE_MOUNT_SET_GROUP (strategy sharing=construct) steps 3-5 are
    one: engine/construct.py makes each mount in its group as it attaches it;
 6. stand-ins enter their mount namespace, root and cwd, and receive their
    fds, each opened from the equivalent mount (through mp_fd when covered).

Nothing is ever built in a namespace that existed before, and every helper dies
with the restorer, so a killed restore leaves nothing mounted.
"""

from __future__ import annotations

import bisect
import collections
import errno
import functools
import gc
import itertools
import marshal
import os
from engine import rx
import resource
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import _socket   # not socket.py: its enum classes cost every restore ~7 ms (engine/channel.py)
import stat
from operator import itemgetter, methodcaller

from engine import (channel, content, ctty, deadpid, features, filelocks, filler, forkrun, fs,
                    hostidmap, image, imageformat, kernel, lastword, mountinfo, parking, procargs, remount, schedattrs, seccomp, sessions, sharing,
                    standin,
                    strategy, timens, userns_cr, userns_groups, zombies)
from engine import pidfile as pidfile_mod
from engine import fds as fdkinds
from engine.fds import sys as fsys
from engine.fdmaker import FdMaker
from engine.image import is_beneath, rel_to

# Every module the restorer uses after it pivots into a restored root must be imported here, or
# for the images that need it by _load_for; the filesystem type modules (discovered) of the
# image's superblocks are, in _restore().

# Namespaces a stand-in unshares or joins after its pid namespace (image.NS_KINDS past mnt and pid).
_OTHER_NS = tuple(k for k in image.NS_KINDS if k not in ("mnt", "pid"))
_EXT_MNT = rx.compile(r"^(?P<kind>mnt|dev|file|veth)\[(?P<key>[^\]]+)\]:(?P<path>.+)$")

_ATTR_FLAGS = {"ro": kernel.MOUNT_ATTR_RDONLY, "nosuid": kernel.MOUNT_ATTR_NOSUID,
               "nodev": kernel.MOUNT_ATTR_NODEV, "noexec": kernel.MOUNT_ATTR_NOEXEC,
               "nodiratime": kernel.MOUNT_ATTR_NODIRATIME, "nosymfollow": kernel.MOUNT_ATTR_NOSYMFOLLOW}
_ALL_FLAGS = sum(_ATTR_FLAGS.values())
# Superblock mounts kept at most until the filling helper is done with them (fds, at 90,000 mounts);
# up to four times more where the fd limit leaves room (_Restorer.after_fill_max). One closed
# before the helper's own close makes that one the last: an RCU grace period each, in the helper
# (10,000 mounts, 1,800 filled superblocks: ~0.2 s of its path while the restorer waited for it).
_AFTER_FILL = 512
_MOVE_FLAGS = kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH
_CLONE = kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH
_SET_GROUP = kernel.MOVE_MOUNT_SET_GROUP | _MOVE_FLAGS
_BENEATH = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS
_O_CLOEXEC_DUMPED = 0o2000000
_PLAIN = frozenset({"rw", "relatime"})   # what fsmount gives without attributes
# Options a superblock's base mount may be made with (fsmount attributes; never "ro").
_BASE_OK = frozenset({"rw", "relatime", "noatime", "strictatime"}) | (frozenset(_ATTR_FLAGS) - {"ro"})
# (FdMaker.finish's order of the firewall step: after the TCP connections settled in repair mode
# (engine/fds/inet.py: -3, -2), before the steps without an order (-1), which let them go)
_NETFILTER_ORDER = -1.5


def _netfilter_write():
    """engine/netfilter.py's `write` (imported when an image has a firewall)."""
    from engine import netfilter
    return netfilter.write



def _joined(root: str, path: str) -> str:
    """`path` (absolute, beneath a member) placed beneath `root` (where the member's files go)."""
    return root if path == "/" else root.rstrip("/") + path

class RestoreError(OSError):
    """Restore refuses or fails: one line naming the mount/process and the reason."""


def parse_externals(specs, root: str | None) -> dict[str, str]:
    """`mnt[KEY]:HOSTPATH` -> {key: hostpath}, `dev[KEY]:PATH` -> {"dev:"+key: path},
    `file[KEY]:HOSTPATH` -> {"file:"+key: path}, `veth[KEY]:OUTER[@BRIDGE]` -> {"veth:"+key: that};
    --root DIR is key "root"."""
    out: dict[str, str] = {}
    for spec in specs:
        m = _EXT_MNT.match(spec)
        if not m:
            raise ValueError(f"--external {spec!r}: expected mnt[KEY]:HOSTPATH, dev[KEY]:PATH, file[KEY]:HOSTPATH "
                             "or veth[KEY]:OUTER[@BRIDGE]")
        out[("" if m["kind"] == "mnt" else m["kind"] + ":") + m["key"]] = m["path"]
    if root is not None:
        out["root"] = root
    for key, path in out.items():
        if key.startswith("veth:"):
            from engine import netdevs   # (only then: engine/netdevs.py's import is not every restore's)
            netdevs.outer_name(path)   # (an interface to make, not a path: well-formed names)
        elif not os.path.exists(path):
            raise ValueError(f"external {key}: {path} does not exist")
    return out


def _open_external(path: str, flags: int) -> int:
    """Open the host file `path` given for an external fd with its dumped `flags`; a FIFO without
    blocking (an open for writing would wait for a reader forever: ENXIO says there is none)."""
    if not stat.S_ISFIFO(os.stat(path).st_mode) or flags & os.O_NONBLOCK:
        return os.open(path, flags)
    import fcntl   # (only for a FIFO)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OSError(e.errno, "a FIFO no process has open for reading (start its reader first)") from None
        raise
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK & ~os.O_ACCMODE)
    return fd


def attr_of(mount_opts) -> tuple[int, int]:
    """(attr_set, attr_clr) for mount_setattr from mountinfo per-mount options."""
    key = frozenset(mount_opts)
    got = _ATTRS.get(key)   # (asked about once a mount and a superblock, of a few distinct option sets)
    if got is None:
        got = _ATTRS[key] = _attr_of(key)
    return got


_ATTRS: dict[frozenset, tuple[int, int]] = {}


def _attr_of(opts: frozenset) -> tuple[int, int]:
    attr_set = sum(flag for name, flag in _ATTR_FLAGS.items() if name in opts)
    if "noatime" in opts:
        attr_set |= kernel.MOUNT_ATTR_NOATIME
    elif "relatime" in opts:
        attr_set |= kernel.MOUNT_ATTR_RELATIME
    else:
        attr_set |= kernel.MOUNT_ATTR_STRICTATIME
    return attr_set, (_ALL_FLAGS | kernel.MOUNT_ATTR__ATIME) & ~attr_set | kernel.MOUNT_ATTR__ATIME


def _one_cpu(doc: dict) -> int | None:
    """The CPU restore makes mount namespaces on when a mount binds one of them, else None. The kernel
    binds a mount namespace only in an older one (a larger id: mnt_ns_loop), and since Linux 6.18 a
    namespace's id comes from a batch of the CPU that made it: made on one CPU, the restored
    namespaces' ids follow the order restore makes them in, the order of their roots' creation."""
    if not any(str(m.get("bound_ns", "")).startswith("mnt-") for ns in doc["mntns"].values() for m in ns["mounts"]):
        return None
    return min(os.sched_getaffinity(0))


def bind_order(doc: dict, base: list[str]) -> list[str]:
    """The mount namespaces of `base` (restore's order) reordered so that each namespace a mount binds
    comes after the namespace of that mount: the kernel binds a mount namespace only in an older one
    (mnt_ns_loop). Without unique mount ids (before Linux 6.8) the roots' legacy ids may put the bound
    namespace first. Otherwise `base`'s order is kept; a cycle (which no kernel makes) keeps it too."""
    after: dict[str, set[str]] = {ns_id: set() for ns_id in base}
    for ns_id, bound in imageformat.mntns_binds(doc).items():
        for b in bound:
            if b in after and ns_id in after:
                after[b].add(ns_id)
    out: list[str] = []
    left = list(base)
    while left:
        ready = next((n for n in left if after[n] <= set(out)), left[0])
        out.append(ready)
        left.remove(ready)
    return out


def _unshare_on(cpu: int, flags: int) -> None:
    """unshare(`flags`) run on `cpu`; the caller's CPU affinity given back after."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        kernel.unshare(flags)
    finally:
        os.sched_setaffinity(0, mask)


def _per_mount_sbs(sbs: dict) -> set[str]:
    """The superblocks whose type makes each mount from an object of its own (`per_mount`, a
    property of the type, asked ~3 times a mount before: ~0.3 M steps at 10,000 mounts)."""
    return imageformat.per_mount_sbs(sbs)


def _make_yard() -> int:
    """A scratch memory filesystem stacked on / of the service namespace (our own lookups of "/"
    still start below it)."""
    fd = kernel.fsopen(fs.SCRATCH)
    try:
        kernel.fsconfig(fd, kernel.FSCONFIG_SET_STRING, "mode", "0700")
        kernel.fsconfig(fd, kernel.FSCONFIG_CMD_CREATE)
        yard = kernel.fsmount(fd)
    finally:
        os.close(fd)
    kernel.move_mount(yard, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    return yard


_fault_step = 0
_FAULT_AT = int(os.environ.get("MNTCR_FAULT_STEP") or 0)  # read once: step() runs ~2 times per mount


def read_environment() -> None:
    """Read MNTCR_FAULT_STEP again: a verb forked from a runner that imported this module
    (zdtm/freshfork.py) has the environment it was given, not the runner's at import."""
    global _FAULT_AT, _fault_step
    _FAULT_AT = int(os.environ.get("MNTCR_FAULT_STEP") or 0)
    _fault_step = 0


def step(name: str) -> None:
    """A point where fault injection (MNTCR_FAULT_STEP=k) may kill the restorer."""
    global _fault_step
    _fault_step += 1
    if _fault_step == _FAULT_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def restore(images_dir: str, root: str | None = None, externals=(), pidfile: str | None = None,
            devices: str = "container", daemons: dict[str, str] | None = None, allow_idmap=()) -> int:
    """Restore the image; return the root stand-in's pid (and write it to pidfile).

    Atomic: the tree runs and the pid file names it, or nothing is left (engine/pidfile.py).
    `devices` is the policy for device nodes in archives (engine/content.py, IMAGE.md).
    `daemons` maps a daemon type's key to the user's command that serves it again (engine/fs/).
    `allow_idmap`: the externals (--allow-idmap spellings: engine/hostidmap.py) whose host files
    the image's idmaps may show with other owners.
    """
    content.set_device_policy(devices)
    if pidfile:
        pidfile_mod.check(pidfile)  # before anything is built
    # The archives are read (hashed, listed) on the other core while this one loads the manifest.
    try:
        ahead = content.ReadAhead(images_dir)
    except OSError:
        ahead = None    # (image.load says what is wrong with the directory)
    try:
        return _restore(images_dir, root, externals, pidfile, devices, daemons, ahead, allow_idmap)
    finally:
        if ahead is not None:
            ahead.close()


def _restore(images_dir: str, root: str | None, externals, pidfile: str | None, devices: str,
             daemons: dict[str, str] | None, ahead, allow_idmap=()) -> int:
    doc = image.load(images_dir)
    # The image's filesystem types and fd kinds, before the restorer pivots away.
    fs.load(sb["fstype"] for sb in doc["superblocks"].values())
    kinds = {f.get("kind", "file") for p in doc["processes"] for f in p["fds"]}
    kinds.update(o["kind"] for o in (doc.get("objects") or {}).values() if o.get("kind"))
    fdkinds.load(kinds | {"file"})
    _load_for(doc)
    devices_line = _host_devices_refusal(doc, devices)
    own = kernel.read_process_status(os.getpid())   # (one read for both checks: _check_no_new_privs below)
    _check_caps(doc, own)
    _check_userns_owners(doc)
    # OpenSSL's sha256 for big archives, loaded while the interpreter's library is in reach; not for
    # those read ahead (hashed by that helper: ~4 ms less before the fork).
    content.tools(big=any(f["size"] >= content.BIG and (ahead is None or name not in ahead.fds)
                          for name, f in (doc.get("files") or {}).items()))
    # (both told at once where both are missing: a user should not learn one option per run)
    ext = _externals_given(doc, externals, root, daemons, also=devices_line)
    if devices_line:
        raise RestoreError(errno.EPERM, devices_line)
    # An idmap that would hand the host's files (externals, devices, --root) to other ids: only
    # with the user's consent (engine/hostidmap.py).
    line = hostidmap.refusal(doc, hostidmap.parse_allowances(allow_idmap), ext)
    if line is not None:
        raise RestoreError(errno.EPERM, line)
    for name in ("open_tree", "move_mount", "fsopen/fsmount"):
        features.require(name, "restore")
    _check_fd_numbers(doc)
    _check_task_room(doc)
    _check_cpus(doc)
    _check_no_new_privs(doc, own)
    chosen = strategy.current()
    if chosen.sharing == "refuse":
        for ns in doc["mntns"].values():
            for m in ns["mounts"]:
                if m.get("shared") or m.get("master"):
                    raise RestoreError(errno.ENOSYS, f"mount {m['id']} ({m['mountpoint']}) is shared or a slave: "
                                                     "this kernel cannot rebuild peer groups (strategy sharing="
                                                     "refuse; MOVE_MOUNT_SET_GROUP needs Linux >= 5.15)")
    img_fd = os.open(images_dir, os.O_PATH | os.O_DIRECTORY)
    # Ctrl-C kills the restorer (and so everything it made, see _restorer); here it is noted and
    # acted on once the restorer's answer is in, so a tree finished meanwhile is killed, not lost.
    interrupted: list[int] = []
    old_int = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    # The detached tree lives only once we commit (engine/standin.py): whatever ends this process
    # before that (an exception, Ctrl-C, SIGKILL) closes `commit` and the root stand-in kills the tree.
    commit, lifeline = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            pid, stopped = forkrun.run(_restorer, doc, img_fd, ext, (commit.fileno(), lifeline.fileno()), ahead,
                                       unshare_flags=kernel.CLONE_NEWNS, private=False)
        except (forkrun.ChildError, OSError, ValueError) as e:
            if interrupted:  # whatever the restorer's helpers said as they died
                raise KeyboardInterrupt from None
            note = _older_kernel_note(doc, e)
            if isinstance(e, forkrun.ChildError):
                raise RestoreError(errno.EIO, f"restore failed: {e}{note}") from None
            if note:
                raise RestoreError(e.errno, f"{e.strerror if e.strerror and not e.filename else e}{note}") from None
            raise
        finally:
            os.close(img_fd)
            lifeline.close()
        published = False
        try:
            if pidfile and not interrupted:
                pidfile_mod.publish(pidfile, pid)
                published = True
            if interrupted:
                if published:
                    os.unlink(pidfile)
                raise KeyboardInterrupt
        except BaseException:
            pidfile_mod.kill_tree(pid)
            raise
    except BaseException:
        _hang_up(commit)
        signal.signal(signal.SIGINT, old_int)
        raise
    # Published: from here a late Ctrl-C must not turn the success into a failure, so SIGINT stays
    # ignored in this process (the CLI prints the pid and exits 0).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _commit(commit, pid, pidfile, doc["processes"][0]["pid"])
    # Processes that were stopped at dump stop again, now that every stand-in took its last steps.
    # (the tree is committed: no error may follow, or it would run while restore says it failed)
    for p in stopped:
        try:
            os.kill(p, signal.SIGSTOP)
        except ProcessLookupError:
            pass   # (killed since the commit: nothing to stop)
    note = imageformat.older_writer(doc)   # (once restored: a refusal stays one line)
    if note:
        os.write(2, f"mntcr restore: note: {note}\n".encode())
    return pid


def _load_for(doc: dict) -> None:
    """Import the modules only some images need, here in `mntcr restore` before the restorer forks:
    the restorer and the stand-ins import them again by name, and find them loaded, where the
    engine's files are out of reach (a restored root, a chroot). Any other image never loads them
    (tests/test_engine_imports.py, test_engine_dump_imports.py)."""
    if doc.get("userns"):
        # (a stand-in that executes the interpreter again inside its user namespace; the host's view
        # of what that reads is taken as this imports, before anything of the image is mounted)
        from engine import reexec  # noqa: F401
        from engine.fds import unix_bind  # noqa: F401  (a stand-in in a nested user namespace: op_outer_maps)
    if doc.get("sysvipc"):
        from engine import sysvipc  # noqa: F401
    if doc.get("ghosts"):
        from engine import ghosts  # noqa: F401  (deleted files made again: _Restorer._ghost)


def _veth_externals(doc: dict) -> set[str]:
    """The "veth:KEY" externals the image's network devices need (engine/netdevs.py, imported only
    for an image that has devices)."""
    if not doc.get("netdevs"):
        return set()
    from engine import netdevs
    return netdevs.externals_of(doc)


def _externals_given(doc: dict, externals, root: str | None, daemons, also: str | None = None) -> dict:
    """What the user gave for each external the image names (--external, --root, the daemons restarted);
    refused in one line naming the options missing (and `also`, another refusal of the same run)."""
    ext = parse_externals(externals, root)
    # (tuple keys: no image's external key can name one)
    ext.update({("daemon", k): v for k, v in (daemons or {}).items()})
    # (the mounts' in C: ~13 steps a mount as a comprehension)
    needed = sorted(set(filter(None, map(methodcaller("get", "external"),
                                         itertools.chain.from_iterable(map(itemgetter("mounts"), doc["mntns"].values())))))
                    | {"dev:" + sb["device"]["key"] for sb in doc["superblocks"].values()
                       if (sb.get("device") or {}).get("key") and not sb.get("external")}
                    | {"file:" + f["external"] for p in doc["processes"] for f in p["fds"] if f.get("external")}
                    | _veth_externals(doc))
    missing = [k for k in needed if k not in ext]
    if root is not None and "root" not in needed:
        # (criu's users give --root always; here a root made inside the tree comes from the image)
        os.write(2, f"mntcr restore: note: --root {root} is not used: the image makes its root mount itself "
                    "(a filesystem whose files it holds, not a directory from outside the tree)\n".encode())
    if missing:
        hint = ", ".join("--root DIR" if k == "root" else f"--external dev[{k[4:]}]:PATH" if k.startswith("dev:")
                         else f"--external file[{k[5:]}]:HOSTPATH" if k.startswith("file:")
                         else f"--external veth[{k[5:]}]:OUTER[@BRIDGE]" if k.startswith("veth:")
                         else f"--external mnt[{k}]:HOSTPATH" for k in missing)
        raise RestoreError(errno.EINVAL, f"the image needs externals: give {hint}" + (f"; and {also}" if also else ""))
    return ext


def _commit(commit, pid: int, pidfile: str | None, image_pid: int) -> None:
    """Let the tree live, then hear the root stand-in's last word (engine/lastword.py): it takes its
    last steps after the commit (until then it keeps the privilege to kill the whole tree), and a
    failed one fails the restore all the same, with nothing left (no tree, no pid file). No word
    (the root died, or was stopped for 60 s) fails it too: success is only what the root told."""
    try:
        commit.sendall(b"c")
        commit.settimeout(60)  # (a root stand-in stopped from outside must not hang the restore)
        why = lastword.explain(lastword.hear(commit))   # (an empty word: it ended without telling)
    except OSError as e:   # (gone before the commit, or silent for 60 s)
        why = (e.errno or errno.EIO, f"it did not tell how its last steps went after the commit: {e.strerror or e}")
    if why:   # (killed before we hang up: a silent root, spinning under its seccomp filters, never lets go)
        pidfile_mod.kill_tree(pid)
        try:   # (a root that died leaves its children to init, where kill_tree no longer finds them,
            os.killpg(pid, signal.SIGKILL)   # but still in the tree's process group, the root's pid)
        except OSError:
            pass
    _hang_up(commit)
    if why:
        if pidfile:
            os.unlink(pidfile)
        raise RestoreError(why[0], f"process {image_pid}: {why[1]}")


# What a kernel says when it lacks a facility (a syscall, flag, option or argument it does not know).
_LACKING = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTTY, errno.E2BIG)


def _version(release: str) -> tuple[int, ...]:
    """(major, minor) of a kernel release string, () when it does not start with one."""
    parts = release.split("-", 1)[0].split(".")[:2]
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) and len(parts) == 2 else ()


def _older_kernel_note(doc: dict, e: BaseException) -> str:
    """' (the image was dumped on Linux X, this is Linux Y: ...)' when restore failed the way a kernel lacking a
    facility fails and the image comes from a newer kernel: the line then tells what to do (restore
    where it was dumped, or on a kernel at least as new)."""
    exc = e.exc if isinstance(e, forkrun.ChildError) else e
    dumped, here = doc.get("kernel") or "", os.uname().release
    if not isinstance(exc, OSError) or exc.errno not in _LACKING or not _version(dumped) \
            or _version(dumped) <= _version(here) or here in str(exc):   # (named already: said once)
        return ""
    return f" (the image was dumped on Linux {dumped}, this is Linux {here}: it may need a facility this kernel lacks)"


def _hang_up(commit) -> None:
    """Close our end of the lifeline, once the root stand-in has let go of its end.

    After a commit the root closes its end before it sleeps; without one it kills
    the tree, and its end closes as it dies: either way, when this returns, the
    restored processes hold no trace of the restore (an fd) or the tree is dying.
    """
    try:
        commit.shutdown(_socket.SHUT_WR)
        commit.settimeout(60)  # a root stand-in stopped from outside must not hang the restore forever
        while commit.recv(64):
            pass
    except OSError:
        pass
    finally:
        commit.close()


def _host_devices_refusal(doc: dict, devices: str) -> str | None:
    """The refusal of a filesystem of one superblock for the whole machine (FsType.host_global)
    mounted again, which gives the tree the host's own: every device node of the host, its tracing,
    its security policy files... No device policy but `all` lets an image have that (one a user
    namespace of the image owns is its own). None when there is none to refuse."""
    if devices == "all":
        return None
    # (each type asked once: thousands of superblocks are of a few types)
    host_types = {t for t in set(map(itemgetter("fstype"), doc["superblocks"].values()))
                  if getattr(fs.lookup(t), "host_global", False)}
    for sid, sb in doc["superblocks"].items() if host_types else ():
        if sb["fstype"] in host_types and not sb.get("external") and not sb.get("owner"):
            return (f"superblock {sid} ({sb['fstype']}): one superblock of the whole host, mounted again, would "
                    "give the tree the host's own (device nodes, tracing...), which the device policy "
                    f"({devices}) refuses; --devices all restores it (images you trust)")
    return None


def _check_caps(doc: dict, status: dict[str, str] | None = None) -> None:
    """A process outside any user namespace of the image has capabilities the restorer can give
    (a stand-in takes them from its own after the restore committed, where a failure is too late
    to report; one in a user namespace of the image has them all there). `status`: this process's
    /proc/PID/status lines (kernel.proc_status), else read here."""
    own = kernel.read_caps(os.getpid(), status)
    for p in doc["processes"]:
        caps = p.get("caps")
        if caps is None or "userns" in p:
            continue
        lack = (caps["prm"] | caps["inh"]) & ~own["prm"] | caps["bnd"] & ~own["bnd"]
        if lack:
            # (a tree dumped on a host whose root holds every capability, restored in a container that lacks some)
            names = ",".join(kernel.cap_names(lack))
            raise RestoreError(errno.EPERM, f"process {p['pid']}: its capabilities {names} (mask {lack:#x}) are not "
                                            "the restorer's to give (not in its bounding or permitted set): restore "
                                            "where mntcr holds them, or dump a tree started without them "
                                            f"(capsh --drop={names} -- ...)")


def _check_userns_owners(doc: dict) -> None:
    """A user namespace the image says a non-root user made is given to that user (its owner holds
    every capability in it): refused when its maps reach the host's root ids, which no such user
    can map, or, for one made below the restorer's own, any id that user could not have mapped
    here (engine/subids.py: its own ids and its /etc/subuid, /etc/subgid ranges, newuidmap's
    rule), so an image cannot hand a user another user's files. A map's outside ids are the
    restorer's own at every depth (the dumper's, which restore writes through the parents' maps:
    engine/userns.translate), so a range from outside id 0 is one."""
    users = doc.get("userns") or {}
    for ns_id, ns in users.items():
        if not ns.get("owner"):
            continue
        from engine import subids   # (only then: it reads the passwd database and /etc/subuid)
        line = subids.owned_refusal(ns_id, ns["owner"], ns.get("parent") is None, ns["uid_map"], ns["gid_map"],
                                    ns["setgroups"])
        if line is not None:
            raise RestoreError(errno.EPERM, line)


def _check_fd_numbers(doc: dict) -> None:
    """Every dumped fd number must fit under this machine's open-file limit (the stand-ins' hard
    RLIMIT_NOFILE), else restore would end in a bare EBADF from dup2 in a stand-in."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for p in doc["processes"]:
        for f in p["fds"]:
            if hard != resource.RLIM_INFINITY and f["fd"] >= hard:
                raise RestoreError(errno.EMFILE, f"process {p['pid']} fd {f['fd']}: above this machine's open-file "
                                                 f"limit (RLIMIT_NOFILE hard {hard}); raise it (ulimit -Hn)")


def _check_no_new_privs(doc: dict, status: dict[str, str] | None = None) -> None:
    """A restore that runs with no_new_privs set (inherited from its caller: a sandbox, a seccomp
    wrapper) makes every stand-in inherit it, and nothing clears it: refused when the image has a
    process without it (new images record the bit; older ones say nothing and are not refused)."""
    if not kernel.read_fs_bits(os.getpid(), status).get("no_new_privs"):
        return
    clear = [p["pid"] for p in doc["processes"] if "umask" in p and not p.get("no_new_privs")]
    if clear:
        raise RestoreError(errno.EPERM, f"process {clear[0]}: had no_new_privs clear, and this restore runs with "
                                        "it set (inherited from its caller), which every process it makes "
                                        "inherits for good: run mntcr restore without no_new_privs")


def _task_room() -> tuple[int, str]:
    """(tasks this machine can still make, how that was reckoned): kernel.pid_max and
    kernel.threads-max, less the tasks that run now (/proc/loadavg counts every thread)."""
    def number(path: str) -> int:
        with open(path) as f:
            return int(f.read().split()[0])
    pid_max, threads_max = number("/proc/sys/kernel/pid_max"), number("/proc/sys/kernel/threads-max")
    with open("/proc/loadavg") as f:
        used = int(f.read().split()[3].split("/")[1])
    return min(pid_max, threads_max) - used, f"kernel.pid_max {pid_max}, kernel.threads-max {threads_max}, " \
                                              f"{used} tasks running"


def _check_task_room(doc: dict) -> None:
    """The image's processes and threads, each a task with a pid of the host's, must fit in what
    the machine can still make: a restore that cannot make them all would first take every free
    pid of the host (no host process could fork meanwhile: pid_max is 32768 on a small machine,
    an image may list 65536 threads a process), then fail."""
    want = sum(1 + len(p.get("threads") or ()) for p in doc["processes"]) + len(doc.get("zombies") or ())
    want += len({key for p in doc["processes"] for f in p["fds"] if "external" not in f
                 if (key := fdkinds.lookup(f.get("kind", "file")).forks(f)) is not None})   # (pidfds of exited ones)
    room, how = _task_room()
    if want > room:
        raise RestoreError(errno.EAGAIN, f"the image makes {want} processes and threads, more than this machine "
                                         f"can make now ({room}: {how}); refused before anything is made")


def _check_cpus(doc: dict) -> None:
    """A process's CPU affinity naming CPUs this machine lacks is refused before anything is made
    (the kernel would narrow it silently: engine/schedattrs.py)."""
    try:
        schedattrs.check_cpus(doc["processes"])
    except schedattrs.SchedError as e:
        raise RestoreError(e.errno, f"{e.strerror}; refused before anything is made") from None


class _Here:
    """The restorer itself as the maker of a superblock tagged with a namespace of its own that no
    stand-in is in (a pid-bound superblock of the dumper's pid namespace that the tree's own covers),
    or one no stand-in in it may make (their user namespaces do not own it): answers a stand-in channel's "fsmount" request in this process."""

    @staticmethod
    def call(request):
        """(None, [detached mount fd]) for ("fsmount", fstype, source, params, attr)."""
        op, fstype, source, params, attr = request
        if op != "fsmount":
            raise RestoreError(errno.EINVAL, f"the restorer makes no {op!r} itself")
        return None, [standin.fsmount(fstype, source, params, attr)]


_HERE = _Here()


class _SameIds:
    """``with``: nothing changes (the ids a file is made with stay the restorer's). Not
    contextlib.nullcontext: contextlib's abstract classes are ~4 M instructions of every restore's
    imports, for this one place."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_SAME_IDS = _SameIds()


class _Restorer:
    """State of one restore, inside the restorer process."""

    def __init__(self, doc: dict, img_fd: int, ext: dict[str, str]):
        self.doc = doc
        self.img_fd = img_fd
        self.ext = ext
        self.mounts: dict[int, dict] = {}
        self.ns_of_mount: dict[int, str] = {}
        for ns_id, ns in doc["mntns"].items():
            ids = list(map(itemgetter("id"), ns["mounts"]))
            self.mounts.update(zip(ids, ns["mounts"]))
            self.ns_of_mount.update(dict.fromkeys(ids, ns_id))
        self.children: dict[int, list[dict]] = {}
        for m in self.mounts.values():
            if m.get("parent") is not None:
                self.children.setdefault(m["parent"], []).append(m)
        self.detached: dict[int, dict] = {d["id"]: d for d in (doc.get("detached") or {}).values()}
        self._ext_by_sb: dict[str, list[dict]] | None = None
        self._child_rel: dict[int, dict[str, int]] = {}  # mount -> {child mount point relative to it: child}
        self._open_as: tuple | None = None   # open_at's gate to the host's files (_opening_for)
        self._owner_ids: dict = {}   # a rootless tree's owner -> its (uid, gid, groups) (userns.host_gate)
        self._host_mount_ids: frozenset | None = None
        self.mnt_fd: dict[int, int] = {}   # mount id -> fd on the mount (detached, then attached)
        self.ext_src: dict[int, int] = {}  # external mount id -> detached clone of its host path
        self.ext_host: dict[int, int] = {}  # external mount id -> O_PATH fd on the host's mount itself
        self.ext_files: dict[tuple[int, int], int] = {}  # (pid, fd) -> the external file, opened on the host
        self._moved: set[int] = set()
        self.mp_fd: dict[int, int] = {}    # mount id -> fd on its mount point, taken before the move
        # mount id -> fd on the directory holding its mount point, taken before a mount covered it
        # (sharing=construct sets keep_dirs: a copy propagation makes there is found through it)
        self.mp_dir: dict[int, int] = {}
        self.keep_dirs = False
        self.sb_fd: dict[str, int] = {}
        # (sb id, source) -> a mount of that superblock shown with another source than its first
        # (a type that `joins_by_ns`: made again in its namespace with that source, _other_source).
        self.src_fd: dict[tuple[str, str], int] = {}
        # Member of a locked subtree -> (fd, path) it is bound from, where peer groups are built while
        # mounting (engine/construct.py: a mount of its master group); None: a plain clone.
        self.subtree_base = lambda m: None
        # Clones still to be made from each new superblock's fd (assemble closes it after the last:
        # at 90,000 mounts one fd per superblock would pass the fd limit); closed ones, to refuse reuse.
        self.sb_uses: dict[str, int] = {}
        self.sb_closed: set[str] = set()
        self.helper_src: dict[str, int] = {}  # superblock -> its root mount, for sharing helpers
        self.base_opts: dict[str, frozenset] = {}  # superblock -> options its own mount was made with
        self.helpers: dict[int, dict] = {}    # helper id (< 0) -> {"id", "sb", "fd", ...}
        self.helper_yard: int | None = None   # where helpers are attached, when they must be
        self.filler: filler.Filler | None = None  # the helper that makes and fills superblocks
        self.fill_started = False          # (create_superblocks: the helper started, or found not needed)
        self._sb_planned: tuple | None = None  # (_sb_plan)
        self.per_mount_sbs = _per_mount_sbs(doc["superblocks"])   # (each type asked once, not ~3 times a mount)
        self.ahead: content.ReadAhead | None = None  # the archives `mntcr restore` had read (to the filler)
        self.filling: set[str] = set()     # superblocks those helpers write into
        self.ro_later: set[str] = set()    # read-only superblocks, created writable to be filled
        self.ro_fd: dict[str, int] = {}    # their mounts (and flags_later's), kept until seal()
        self.flags_later: set[str] = set()  # superblocks with files whose inode attributes seal() sets
        self.attrs_later: list[tuple[str, str, int]] = []   # (sid, what, fd) of those set_attrs sets
        # Superblock mounts done with while the filling helper still holds them: let go of once it
        # closed its own, so that the last close is ours and goes in a batch (_drop_sb).
        self.after_fill: dict[str, int] = {}
        self._fill_budget()
        # Ghosts (engine/ghosts.py): unlinked mount roots and files held open after unlinking.
        self.ghost_src: dict[str, int] = {}   # ghost id -> O_PATH fd to clone its mounts from
        # (ghost id, mount, name) -> O_PATH fd its open files on that mount under that name are reopened
        # from: fds of one unlinked file may sit on several mounts (CRIU's mntns_ghost01), and name
        # it by several deleted hard links (CRIU's unlink_fstat02: the fd's name is the link's).
        self.ghost_fd: dict[tuple[str, int, str], int] = {}
        self.ghost_live: dict[str, ghosts.Ghost | ghosts.Uncovered] = {}  # ghosts recreated, linked until the mounts are attached
        self.ghost_fds_on: dict[int, list[tuple[str, str]]] = {}  # mount -> [(ghost id, path on it)]
        self.ghost_user: dict[str, dict] = {}  # ghost id -> a mount that needs it (for errors)
        self.ghost_mounts: list[dict] = []
        self._index_ghosts(doc)
        # Objects opened to make mount roots a new instance lacks (engine/fs `make_root`): the
        # superblock's device -> {number: fd}, handed to the fd stage; and the (sb, root) made.
        self.made: dict[int, dict[int, int]] = {}
        self.made_roots: set[tuple[str, str]] = set()
        self.attached_in: dict[str, int] = {}  # mounts attached per namespace while they work
        self.ns_fd: dict[str, int] = {}
        self.chans: dict[int, channel.Channel] = {}  # dumped pid -> channel
        self.hostpid: dict[int, int] = {}
        self.entered: dict[int, str | None] = {}   # dumped pid -> the mount namespace its stand-in is in, when entered
        self.nsfd_of: dict[tuple[str, str], int] = {}  # (kind, ns id) -> fd
        self.current_ns: str | None = None
        self._premade: set[str] = set()   # mount namespaces made before their roots (_premake_namespaces)
        self.users = userns_cr.Rebuild(doc)  # user namespaces, locked mounts (engine/userns_cr.py)
        # The host's /proc, reachable whatever mount namespace we stand in (reopening fds).
        self.hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # The kernel-compatibility paths (engine.strategy, chosen in the parent before the fork).
        chosen = strategy.current()
        # flags=remount: without mount_setattr flags and propagation go through mount(2) on attached mounts.
        self.legacy = chosen.flags == "remount"
        # sources=yard: open_tree cannot clone a detached mount, so new superblocks are attached
        # in a yard of the service namespace and cloned from there.
        # The root below the yard: setns into the service namespace puts us on top of it.
        self.service_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # Made by start_yard, after the user namespaces: stacked on /, it makes our root a
        # chroot in the kernel's eyes, and a chrooted process may not create a user namespace.
        self.yard: int | None = None
        self.wants_yard = chosen.sources == "yard"
        # Superblock and source mounts let go of in batches (a yard's are attached: closed alone).
        self.parking = parking.Parking(not self.wants_yard and features.available()["move_mount(to-detached)"].present)

    def _index_ghosts(self, doc: dict) -> None:
        """Fill ghost_fds_on, ghost_user and ghost_mounts from the image's processes and mounts."""
        for p in doc["processes"]:
            for f in [p["root"], p["cwd"], *p["fds"], *p.get("maps", ())]:
                if f.get("ghost") and (f["ghost"], f["path"]) not in self.ghost_fds_on.get(f["mnt"], ()):
                    self.ghost_fds_on.setdefault(f["mnt"], []).append((f["ghost"], f["path"]))
                    self.ghost_user.setdefault(f["ghost"], self.mounts[f["mnt"]])
        self.ghost_mounts = [m for m in itertools.chain(self.mounts.values(), self.detached.values()) if m.get("ghost")]
        for m in self.ghost_mounts:
            if m["id"] in self.mounts:
                self.ghost_user.setdefault(m["ghost"], m)

    def _fill_budget(self) -> None:
        """The fds the filling helper's superblocks may take, by the fd limit, never by which process
        runs ahead: kept here until it is done with them (after_fill_max), sent by it and not taken
        yet (its window), held by it until their files are in (in its own fd table)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        room = soft // 4 - len(self.mounts) // 4
        self.after_fill_max = max(min(_AFTER_FILL, soft // 8), min(4 * _AFTER_FILL, room))
        self.fill_window = max(16, min(filler.WINDOW, soft // 8))
        self.fill_held = max(16, min(filler.HELD, soft // 4))

    def start_yard(self) -> None:
        """The yard of sources=yard (see __init__), once the user namespaces exist."""
        if self.wants_yard and self.yard is None:
            self.yard = _make_yard()

    def to_service(self) -> None:
        """Back into the service namespace (a copy of the host's)."""
        if self.current_ns is not None:
            kernel.setns(self.service_fd, kernel.CLONE_NEWNS)
            self.current_ns = None

    def enter(self, ns_id: str) -> None:
        """setns into restored mount namespace ns_id (propagation changes need the caller inside)."""
        if self.current_ns != ns_id:
            kernel.setns(self.ns_fd[ns_id], kernel.CLONE_NEWNS)
            self.current_ns = ns_id

    # -- 1. stand-ins ---------------------------------------------------------

    def spawn_standins(self) -> None:
        procs = self.doc["processes"]
        by_pid = {p["pid"]: p for p in procs}
        own = {k: os.open(f"/proc/self/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in _OTHER_NS}
        try:
            early_groups = userns_groups.plan(procs, self.doc.get("userns") or {})
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"user namespaces: {e.strerror or e}") from None
        dead = self.doc.get("zombies") or ()
        # (engine/sessions.py, zombies made after every live process: engine/zombies.py; the image
        # checker refused what it cannot make)
        self.jobs = sessions.plan(zombies.in_order(procs, dead))
        self.cttys = ctty.plan(procs)   # (members with their leader's terminal: forked late, late_standins)
        late = self._late()
        for pid in self.jobs.order:   # (parents first; one adopted into a session after its leader)
            p = by_pid.get(pid)
            if p is not None and pid not in late:
                self._spawn_one(p, by_pid.get(p.get("ppid")), own, early_groups)
        for fd in own.values():
            os.close(fd)
        self._premake_late(late, by_pid)
        if not late:
            self._after_spawn(by_pid)

    def _premake_late(self, late: set[int], by_pid: dict) -> None:
        """The namespaces late stand-ins (late_standins) join rather than make, made now: the steps
        before them fill those (System V objects, network devices and sysctls: engine/userns_cr.py
        `_premade_late`)."""
        for p in [q for pid, q in by_pid.items() if pid in late]:   # (the image's order: parents first)
            self._users_call(self.users.premade, p, self.nsfd_of, self._uts_names, self.hostproc)
            if p.get("ns_before_userns"):
                self._users_call(self.users.early, p, self.nsfd_of, self._uts_names, self.hostproc)

    def pidns_children(self) -> None:
        """Each process whose children went to another pid namespace than its own (`unshare --pid
        --fork`) sends its next ones there again: its stand-in's was put back after each fork; now
        that none forks any more, it joins the one its children are in (still privileged), or makes
        the one it had made that no process was in yet (`pidns_children_new`)."""
        for p in self.doc["processes"]:
            if p.get("pidns_children_early"):
                continue   # (its stand-in made it before it entered its user namespace, and kept it)
            key = ("pid", p["pidns_children"]) if "pidns_children" in p else \
                ("zombie pid", p["pidns_children_zombie"]) if "pidns_children_zombie" in p else \
                ("new pid", "a new one") if p.get("pidns_children_new") else None
            if key is not None:
                try:
                    fds = [] if key[0] == "new pid" else [self.nsfd_of[key]]
                    self.chans[p["pid"]].call(("pidns_children",), fds)
                except OSError as e:
                    raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: its children's pid namespace "
                                                             f"{key[1]}: {e.strerror or e}") from None

    def _after_spawn(self, by_pid: dict) -> None:
        """Once every live process's stand-in exists: the zombies', the process groups whose leader
        came later, then the zombies die."""
        for z in self.doc.get("zombies") or ():
            self._spawn_zombie(z, by_pid[z["ppid"]])
        for pid, leader in self.jobs.later:
            self._setpgid(pid, leader)
        self._end_zombies(by_pid)

    def make_sysvipc(self) -> None:
        """The System V IPC objects of each restored ipc namespace (engine/sysvipc.py)."""
        for nsid, objs in (self.doc.get("sysvipc") or {}).items():
            fd = self.nsfd_of.get(("ipc", nsid))
            # (never the restorer's own: the host's objects are not the image's to make)
            if fd is None or os.fstat(fd).st_ino == os.stat("/proc/self/ns/ipc").st_ino:
                raise RestoreError(errno.EINVAL, f"ipc namespace {nsid}: not made by this restore")
            from engine import sysvipc   # (loaded by _load_for)
            try:
                sysvipc.make(fd, objs, self.hostproc)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"ipc namespace {nsid}: {e.strerror or e}") from None

    def make_netvars(self) -> None:
        """The network namespaces no process is in that a superblock's mounts bind (`lone_ns`), made
        afresh; then each restored network namespace's lo up where it was (engine/netdevs.py), its
        devices (engine/netlinks_make.py), then its own sysctls (engine/netvars.py: bringing lo up
        resets some of lo's, ipv6's mtu). A lone namespace's firewall too; the others' comes later
        (`_netfilter_late`)."""
        lone = self._lone_netns()
        if not (lone or self.doc.get("net_lo_up") or self.doc.get("netvars") or self.doc.get("netdevs")
                or self.doc.get("netfilter")):
            return
        # (imported here, in the service namespace, a copy of the host's: most images have none of
        # these, and the modules' import is ~1 M instructions of every restore's start)
        from engine import netdevs, netvars
        for nsid in lone:
            try:
                self.nsfd_of[("net", nsid)] = netdevs.new_netns()
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"network namespace {nsid}: {e.strerror or e}") from None
        # lo up first (a route through lo needs it: CRIU's netns), then the devices, whose sysctls
        # are the namespace's too (never in the restorer's namespace), then the sysctls
        lo_up = [(nsid, lambda fd, _: netdevs.set_lo_up_in(fd), None) for nsid in self.doc.get("net_lo_up") or ()]
        self._in_netns(lo_up)
        try:
            netdevs.make_devices(self.nsfd_of, self.doc.get("netdevs") or {}, self.ext)
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, e.strerror or str(e)) from None
        # (a lone namespace's firewall now: no socket is in it; the others' `_netfilter_late`)
        self._in_netns([(nsid, _netfilter_write(), self.doc["netfilter"][nsid]) for nsid in lone
                        if nsid in (self.doc.get("netfilter") or {})])
        self._in_netns([(nsid, netvars.write, kept) for nsid, kept in (self.doc.get("netvars") or {}).items()])

    def _lone_netns(self) -> list[str]:
        """The network namespaces no process is in that a superblock's mounts bind (`lone_ns`)."""
        return [n for sb in self.doc["superblocks"].values() if "lone_ns" in sb for n in sb["lone_ns"] or ()]

    def _netfilter_late(self) -> None:
        """Each restored network namespace's firewall (engine/netfilter.py), as a late step of the
        fds (_NETFILTER_ORDER): once every TCP connection is settled in repair mode, whose peers'
        segments restore sends again from their addresses, which a rule of the tree may drop (CRIU's
        socket-tcp-closed-last-ack drops its server port's input), and before any leaves repair
        mode: a rule acts on a restored connection's first packet."""
        lone = set(self._lone_netns())
        todo = [(nsid, _netfilter_write(), kept) for nsid, kept in (self.doc.get("netfilter") or {}).items()
                if nsid not in lone]
        if todo:
            self._fds.late.append(("the firewall", lambda: self._in_service(self._in_netns, todo), _NETFILTER_ORDER))

    def _in_service(self, work, *args) -> None:
        """work(*args) from the service namespace's root (its /proc, the host's tools): a late step may
        find us in a restored mount namespace, whose /proc is another pid namespace's or none."""
        self.to_service()
        os.fchdir(self.service_root)
        os.chroot(".")
        os.chdir("/")
        work(*args)

    def _in_netns(self, todo) -> None:
        """make(fd, arg) for each (namespace id, make, arg) of `todo`, fd on that network namespace
        restore made; a failure names the namespace."""
        for nsid, make, arg in todo:
            fd = self.nsfd_of.get(("net", nsid))
            if fd is None:
                raise RestoreError(errno.EINVAL, f"network namespace {nsid}: not made by this restore")
            try:
                make(fd, arg)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"network namespace {nsid}: {e.strerror or e}") from None

    def _late(self) -> set[int]:
        """The pids whose stand-ins are forked once every mount exists (late_standins)."""
        return set(self.cttys.late) | self.users.late()

    def late_standins(self) -> None:
        """Controlling terminals (engine/ctty.py), once every mount exists: each session leader takes
        its terminal, then the stand-ins of the members that have it (and their descendants) are
        forked, inheriting it; a late leader takes its own right after its stand-in exists."""
        late = self._late()
        procs = self.doc["processes"]
        by_pid = {p["pid"]: p for p in procs}
        for pid in self.cttys.takes:
            if pid not in late:
                self._take_ctty(by_pid[pid])
        if not late:
            return
        for p in procs:   # (those that enter their mount namespace first, too: engine/userns_cr.py late)
            if p["pid"] in late:
                self._spawn_one(p, by_pid.get(p.get("ppid")), {}, {})
                if p["pid"] in self.cttys.takes:
                    self._take_ctty(p)
        self._after_spawn(by_pid)

    def _take_ctty(self, p: dict) -> None:
        """Leader p's stand-in takes its terminal (TIOCSCTTY), the slave of a pty of the tree opened on
        its restored mount (its master opened now, kept for the fd stage: self.made), or the node its
        /dev/tty named; its fds take it again later (engine/fds/pty.py: a no-op then)."""
        e = p.get("ctty_node") or next(f for f in p["fds"] if (f.get("kind") == "ctty" and "tty" in f)
                                       or (f.get("kind") == "pty" and f.get("ctty") is True))
        node = e["tty"] if e.get("kind") == "ctty" else {"mnt": e["mnt"], "path": e["path"]}
        try:
            if "obj" in e and "ptmx" in e:
                self._pty_master(e["obj"], e["ptmx"])
            slave = self.open_at(node["mnt"], node["path"], os.O_RDWR | os.O_NOCTTY)
            try:
                self.chans[p["pid"]].call(("kind", "pty", "ctty_slave", {}), [slave])
            finally:
                os.close(slave)
        except OSError as err:
            raise RestoreError(err.errno or errno.EIO, f"process {p['pid']}: taking its controlling terminal "
                                                       f"{node['path']}: {err.strerror or err}") from None

    def _host_mounts(self) -> frozenset:
        """The ids of the mounts of the host's files (external ones, or of an external superblock,
        detached ones too: a file of such a mount is the host's wherever the image puts it)."""
        every = itertools.chain(self.mounts.items(), self.detached.items())
        return frozenset(i for i, m in every
                         if m.get("external") or self.doc["superblocks"][m["sb"]].get("external"))

    def _pty_master(self, obj: str, ptmx: dict) -> None:
        """Master of pty `obj` opened through its ptmx and unlocked, kept in self.made (the fd stage
        gives it to the process holding it: engine/fds/pty.py)."""
        from engine.fds import pty   # (only for an image with a terminal: restore loads the image's kinds alone)
        index = self.doc["objects"][obj]["index"]

        def open_ptmx():
            return self.open_at(ptmx["mnt"], ptmx["path"], os.O_RDWR | os.O_NOCTTY)

        probe = open_ptmx()
        try:
            pool = self.made.setdefault(pty.peer_dev(probe), {})
        finally:
            os.close(probe)
        if index not in pool:
            pool.update(pty.open_until(open_ptmx, index, ptmx["mnt"] in self._host_mounts()))
        pty.unlock(pool[index])

    def _spawn_one(self, p: dict, parent: dict | None, own: dict, early_groups: dict) -> None:
        """The stand-in of process p, forked by its parent's (the root's by us), in its session and
        group and namespaces; one adopted into another's session (engine/sessions.py `adopt`) is
        forked from that session's leader's and starts in its namespaces."""
        leader = self.jobs.adopt.get(p["pid"])
        maker = parent if leader is None else next(q for q in self.doc["processes"] if q["pid"] == leader)
        # Namespaces another user namespace made: made there now, joined below (engine/userns_cr.py).
        self._users_call(self.users.premade, p, self.nsfd_of, self._uts_names, self.hostproc)
        hp, ours = self._fork_standin(p, parent, maker, early_groups)
        self.chans[p["pid"]] = ours
        self.hostpid[p["pid"]] = hp
        groups = early_groups.get(p["pid"])
        if groups is not None and self.users.spawn_in(p, maker) is None:
            ours.call(("groups", groups), [])
        self._job(p, parent)
        step("spawn")
        parent = maker   # (the namespaces it starts in are its maker's)
        if ("pid", p["ns"]["pid"]) not in self.nsfd_of:
            self.nsfd_of[("pid", p["ns"]["pid"])] = self._ns_fd(hp, "pid")
        for kind in _OTHER_NS:
            nsid = p["ns"][kind]
            inherited = parent["ns"][kind] if parent else None
            if parent is None and kind in p.get("host_ns", ()):
                action, fds = None, []
            elif nsid == inherited:
                action, fds = None, []
            elif kind in p.get("host_ns", ()):
                action, fds = "join", [own[kind]]
            elif (kind, nsid) in self.nsfd_of:
                # (one joined before it entered its user namespace is its already)
                action, fds = None if kind in self.users.joined_before(p, parent) else "join", [self.nsfd_of[(kind, nsid)]]
            else:
                action, fds = "new", []
            names = self._uts_names(nsid) if kind == "uts" and action == "new" else None
            if action:
                ours.call(("ns", kind, action, names), fds)
            if (kind, nsid) not in self.nsfd_of:
                self.nsfd_of[(kind, nsid)] = self._ns_fd(hp, kind)
        self._timens(p, parent, ours, hp)

    def _ns_fd(self, pid, kind: str) -> int:
        """An fd of namespace `kind` of host process `pid` ("self": ours), through our own /proc fd:
        late stand-ins are made with the yard of sources=yard over "/", where "/proc" is not found."""
        return os.open(f"{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc)

    def _fork_standin(self, p: dict, parent: dict | None, maker: dict | None, early_groups: dict):
        """(host pid, channel) of p's new stand-in, forked by `maker`'s (its parent's, or the leader
        of the session it is adopted into), in its pid namespace and user namespace."""
        if maker is None:
            mode = "same" if "pid" in p.get("host_ns", ()) else \
                "join" if ("pid", p["ns"]["pid"]) in self.nsfd_of else "new"
        elif p["ns"]["pid"] == maker["ns"]["pid"] or (maker.get("pidns_children_early")
                                                      and p["ns"]["pid"] == maker["pidns_children"]):
            mode = "same"   # (a fork of one whose children's pid namespace is made already: in it)
        elif ("pid", p["ns"]["pid"]) in self.nsfd_of:
            mode = "join"
        else:
            mode = "new"
        ours, theirs = channel.Channel.pair()
        fds = [theirs.fileno()]
        if mode == "join":
            fds.append(self.nsfd_of[("pid", p["ns"]["pid"])])
        in_userns = self.users.spawn_in(p, maker)   # engine/userns_cr.py
        groups = early_groups.get(p["pid"])   # (engine/userns_groups.py)
        for key in ("ns_before_userns", "pidns_children_early"):
            if p.get(key) and in_userns is None:
                raise RestoreError(errno.EINVAL, f"process {p['pid']}: {key}, but its stand-in does not start in its "
                                                 "user namespace")
        early = self._users_call(self.users.early, p, self.nsfd_of, self._uts_names, self.hostproc) \
            if in_userns is not None else []
        enter = self._root_cwd(p) if p.get("enter_first") else ()
        # (its maker's stand-in entered that mount namespace already: the fork is in it, and may not
        # join it again from the user namespace it is in, which need not own it)
        entered = bool(enter) and maker is not None and self.entered.get(maker["pid"]) == p["ns"]["mnt"]
        pid_in = self.users.pid_in(p, maker)   # (its pid namespace's owner, above its own)
        pid_first = self.users.pid_first(p, maker)
        # (where its stand-in is: one that entered, and those it forks in its mount namespace, skip the setns)
        self.entered[p["pid"]] = p["ns"]["mnt"] if enter else self.entered.get(maker["pid"]) \
            if maker is not None and in_userns is None else None
        try:
            if maker is None:
                root = "session" if p["pid"] in self.jobs.setsid else True
                if in_userns is None:
                    return standin.spawn(mode, fds[1] if len(fds) > 1 else None, theirs.fileno(), root=root), ours
                return standin.spawn_in_userns(mode, fds[1] if len(fds) > 1 else None, theirs.fileno(),
                                               in_userns, root=root, groups=groups,
                                               again=self.users.again(p, maker), early=early,
                                               pid_first=pid_first, enter=enter, pid_userns=pid_in,
                                               children_pid=bool(p.get("pidns_children_early"))), ours
            before = self._children_of(self.hostpid[parent["pid"]])
            if maker is not parent:
                self._adopt(p, parent, maker, mode, fds)
            elif in_userns is None:
                alone = self.jobs.orphans.get(p["pid"])   # (in a session or group whose leader is gone)
                self.chans[parent["pid"]].call(("spawn_alone", mode, alone) if alone else ("spawn", mode), fds)
            else:
                self.chans[parent["pid"]].call(("spawn_in_userns", mode, groups, self.jobs.orphans.get(p["pid"]),
                                                self.users.again(p, maker), len(early), pid_first,
                                                {"enter": bool(enter), "pid_userns": pid_in is not None,
                                                 "entered": entered,
                                                 "children_pid": bool(p.get("pidns_children_early"))}),
                                               [fds[0], in_userns, *fds[1:], *early, *enter,
                                                *([] if pid_in is None else [pid_in])])
            new = self._children_of(self.hostpid[parent["pid"]]) - before
            if len(new) != 1:
                raise RestoreError(errno.EIO, f"cannot find the stand-in for process {p['pid']}")
            return new.pop(), ours
        finally:
            theirs.close()
            for fd in enter[1:]:
                os.close(fd)

    def _adopt(self, p: dict, parent: dict, leader: dict, mode: str, fds: list) -> None:
        """p's stand-in forked in `leader`'s session by an intermediate child of the leader's stand-in
        that exits at once; p's parent's stand-in, a child subreaper meanwhile (the nearest above the
        intermediate: the stand-ins between become subreapers only as they detach), adopts it."""
        if mode != "same" or len(fds) != 1:
            raise RestoreError(errno.EINVAL, f"process {p['pid']}: adopted into session {leader['pid']} from "
                                             "another pid namespace")
        pchan = self.chans[parent["pid"]]
        adopter = kernel.pidfd_open(self.hostpid[parent["pid"]])
        try:
            pchan.call(("subreaper", True), [])
            try:
                self.chans[leader["pid"]].call(("spawn_adopted", mode), [fds[0], adopter])
            finally:
                pchan.call(("subreaper", False), [])
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: its stand-in in the session of process "
                                                     f"{leader['pid']}, adopted by process {parent['pid']}'s: "
                                                     f"{e.strerror or e}") from None
        finally:
            os.close(adopter)

    def _timens(self, p: dict, parent: dict | None, chan, hp: int) -> None:
        """Stand-in p's time namespace and its children's (engine/timens.py): each made by the
        process that made it, else by the first in it, and joined by the others; the restorer's
        for one that had the dumper's below a parent whose children had another."""
        def key(rec):
            return "time", rec["id"] if rec else None

        want = p.get("timens")
        had = parent.get("timens_children") or parent.get("timens") if parent else None
        if key(want) != key(had):
            if key(want) in self.nsfd_of:
                chan.call(("timens", None, True), [self.nsfd_of[key(want)]])
            elif want is None:
                self.nsfd_of[key(None)] = self._ns_fd("self", "time")
                chan.call(("timens", None, True), [self.nsfd_of[key(None)]])
            else:
                self._new_timens(p, chan, want, True)
                self.nsfd_of[key(want)] = self._ns_fd(hp, "time")
        kids = p.get("timens_children")
        if kids:
            if key(kids) in self.nsfd_of:   # (dump refused this order: engine/timens.py check_tree)
                raise RestoreError(errno.EINVAL, f"process {p['pid']}: time namespace {kids['id']} exists already")
            self._new_timens(p, chan, kids, False)
            self.nsfd_of[key(kids)] = self._ns_fd(hp, "time_for_children")

    @staticmethod
    def _new_timens(p: dict, chan, rec: dict, enter: bool) -> None:
        """Stand-in p makes time namespace `rec` (and enters it when `enter`); the kernel's refusal
        of its offsets (ERANGE: a clock moved past what it keeps, or below 0) names the process."""
        offs = timens.offsets_now(rec)
        try:
            chan.call(("timens", offs, enter), [])
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: its time namespace {rec['id']} with "
                                                     f"offsets {offs}: {e.strerror or e}") from None

    def _spawn_zombie(self, z: dict, parent: dict) -> None:
        """The stand-in of zombie `z`, forked by its parent's in the parent's namespaces (init of a new
        pid namespace for one that was), in its session and group (engine/sessions.py); it dies in
        _end_zombies."""
        ours, theirs = channel.Channel.pair()
        before = self._children_of(self.hostpid[parent["pid"]])
        alone = self.jobs.orphans.get(z["pid"])
        mode = "new" if z.get("pidns_init") else "same"
        self.chans[parent["pid"]].call(("spawn_alone", mode, alone) if alone else ("spawn", mode), [theirs.fileno()])
        theirs.close()
        new = self._children_of(self.hostpid[parent["pid"]]) - before
        if len(new) != 1:
            raise RestoreError(errno.EIO, f"cannot find the stand-in for zombie {z['pid']}")
        self.chans[z["pid"]], self.hostpid[z["pid"]] = ours, new.pop()
        if z.get("pidns_init"):   # (its namespace, while it lives: its parent's children's, pidns_children)
            self.nsfd_of[("zombie pid", z["pid"])] = self._ns_fd(self.hostpid[z["pid"]], "pid")
        self._job(z, parent)

    def _end_zombies(self, by_pid: dict) -> None:
        """Each zombie's stand-in takes its name and ids and dies with its status (engine/zombies.py),
        once every process is in its session and group: its parent's stand-in never reaps it."""
        for z in self.doc.get("zombies") or ():
            name = by_pid[z["ppid"]].get("userns")
            chan = self.chans.pop(z["pid"])
            try:
                chan.call(("zombie", z["comm"], z["status"], z.get("uid"), z.get("gid")),
                          [self.users.fd[name]] if name is not None else [])
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"zombie {z['pid']} ({z['comm']}): "
                                                         f"{e.strerror or e}") from None
            finally:
                chan.close()
            if z.get("pidns_init") and z["status"] & 0x7F:
                # (init of its namespace dies of no signal it sends itself: zombies.die waits for this)
                os.kill(self.hostpid[z["pid"]], signal.SIGKILL)
            got = zombies.wait_dead(self.hostpid[z["pid"]])
            if got is None or got & ~0x80 != z["status"] & ~0x80:
                raise RestoreError(errno.EIO, f"zombie {z['pid']} ({z['comm']}): its stand-in did not die with "
                                              f"status {z['status']:#x} (got {got if got is None else hex(got)})")

    def _job(self, p: dict, parent: dict | None) -> None:
        """Right after stand-in p exists, before its children: its session, and its process group when
        that exists already (engine/sessions.py)."""
        if parent is not None and p["pid"] in self.jobs.setsid:
            self.chans[p["pid"]].call(("setsid",), [])
        if p["pid"] in self.jobs.now:
            self._setpgid(p["pid"], self.jobs.now[p["pid"]])

    def _setpgid(self, pid: int, member: int) -> None:
        """Process `pid` joins the process group image process `member` is in (itself: a group of its own)."""
        try:
            of = 0 if member == pid else sessions.pid_in(self.hostpid[member], self.hostpid[pid], self.hostproc)
            self.chans[pid].call(("setpgid", of), [])
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"process {pid}: joining the process group of process "
                                                     f"{member}: {e.strerror or e}") from None

    def foreground_jobs(self) -> None:
        """Each session leader whose terminal (restored through its /dev/tty fd) had another group in
        the foreground gives it the terminal again (its TIOCSCTTY made its own the foreground one)."""
        for p in self.doc["processes"]:
            if p.get("tty_fg") is None:
                continue
            fd = next((f["fd"] for f in p["fds"] if (f.get("kind") == "ctty" and "tty" in f)
                       or (f.get("kind") == "pty" and f.get("ctty"))), None)
            try:
                if fd is None and "ctty_node" not in p:
                    raise OSError(errno.EINVAL, "it holds no /dev/tty")
                member = sessions.foreground_member(self.doc["processes"], p)
                of = sessions.pid_in(self.hostpid[member], self.hostpid[p["pid"]], self.hostproc)
                if fd is not None:
                    self.chans[p["pid"]].call(("foreground", fd, of), [])
                else:   # (no fd on its terminal: through its slave, opened for this, engine/ctty.py)
                    node = p["ctty_node"]
                    slave = self.open_at(node["mnt"], node["path"], os.O_RDWR | os.O_NOCTTY)
                    try:
                        self.chans[p["pid"]].call(("kind", "pty", "foreground", {"of": of}), [slave])
                    finally:
                        os.close(slave)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: giving its terminal to process group "
                                                         f"{p['tty_fg']}: {e.strerror or e}") from None

    def _children_of(self, pid: int) -> set[int]:
        # (through the host's /proc: late stand-ins are forked once the mounts are made)
        with open(os.open(f"{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc)) as f:
            return {int(x) for x in f.read().split()}

    def _standin_in(self, kind: str, nsid: str, owner: str | None = None) -> channel.Channel:
        """The channel of a stand-in in `kind` namespace nsid; for making a superblock there, one
        that stands in the user namespace `owner` owning it (None: the restorer's) when there is
        one (stand-ins that made namespaces inside theirs start in it: engine/userns_cr.py)."""
        # (a stand-in forked late, engine/ctty.py, is not there yet: its parent is, in its namespaces)
        found = [p for p in self.doc["processes"] if p["ns"][kind] == nsid and p["pid"] in self.chans]
        if not found:
            raise RestoreError(errno.EINVAL, f"no process lives in {kind} namespace {nsid}")
        if owner is None and any(kind in p.get("ns_before_userns", ()) for p in found):
            # (made for a stand-in that starts inside its user namespace, as its children: ours)
            return userns_cr.Joined(self.nsfd_of[(kind, nsid)], kind)
        best = next((p for p in found if self.users.stands_in(p) == owner), found[0])
        return self.chans[best["pid"]]

    # -- 2. superblocks ---------------------------------------------------------

    def create_superblocks(self, early: bool = False) -> None:
        """Create every superblock the image needs (external ones are cloned later, types made
        on use when first used: engine/fs `when`). Without a yard, a helper makes the plain ones and fills them (engine/filler.py)
        while the rest of the restore goes on. `early` (before the stand-ins exist): only start
        that helper, when it fills no superblock this process makes (no yard, no content superblock
        a user namespace owns), so that its fork, superblocks and archives run beside the
        stand-ins' start; the call without it makes the rest."""
        users, common, handlers, order, whens = self._sb_plan()
        plans = []
        started = self.fill_started   # (by the early call: its plain superblocks are the helper's)
        if early and (self.wants_yard or any(
                not sb.get("external") and sid in users and handlers[sid].content and not handlers[sid].ns
                and sb.get("owner") is not None for sid, sb in order)):
            return
        for sid, sb in order:
            handler, when = handlers[sid], whens.get(sid)
            if sb.get("external") or sid not in users or when == fs.ON_USE:
                continue  # external: cloned from the host; on use: created when first cloned (_source)
            if started and when == fs.PLAIN and not handler.ns and sb.get("owner") is None:
                continue   # (made by the helper the early call started: planned there)
            if when == fs.AFTER_FILES:
                if early:
                    continue
                if not self.fill_started:
                    self._start_filling(plans, users)
                self.join_files()  # its device may sit on a file being extracted
                self.sb_fd[sid] = self._settle(sid, self._create_by_type(sid, sb, users[sid]))
                step("superblock")
                continue
            params = handler.fsconfig_params(sb["super_opts"])
            if handler.content and ("ro", None) in params:
                # Files are extracted into it first: made read-only once they are all there (seal).
                params.remove(("ro", None))
                self.ro_later.add(sid)
            if handler.content and any(arc.get("attrs") for arc in sb.get("archives") or ()):
                self.flags_later.add(sid)   # (immutable, append-only: once every file is there, seal)
            source = sb["source"] if handler.keep_source else None
            fstype = sb["fstype"].split(".", 1)[0]
            where = f"mount {users[sid]['id']} ({users[sid]['mountpoint']}) on {sb['fstype']}"
            self.base_opts[sid] = common.get(sid, _PLAIN)
            attr = attr_of(self.base_opts[sid])[0]
            owner = None if handler.ns else sb.get("owner")   # a namespace's own types follow it
            if not handler.ns and self.yard is None and owner is None:
                plans.append((sid, fstype, source, params, attr, where))
                continue
            if early:
                continue   # (made in a namespace or a user namespace: by the call after the stand-ins)
            try:
                if handler.ns:
                    chan = self._creator(sid, sb, handler, users[sid])
                    _, fds = chan.call(("fsmount", fstype, source, params, attr))
                    fd = fds[0]
                else:
                    # Made inside the user namespace that made it (engine/userns_cr.py), else here.
                    fd = standin.fsmount(fstype, source, params, attr) if owner is None else \
                        self.users.fsmount_in(owner, fstype, source, params, attr, handler.id_opts)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None
            self.sb_fd[sid] = self._settle(sid, fd)
            self._keep_for_seal(sid, fd)
            step("superblock")
        if not self.fill_started:
            self._start_filling(plans, users)

    def _sb_plan(self) -> tuple[dict, dict, dict, list, dict]:
        """What create_superblocks works from (made once: it runs twice): each superblock's first
        mount, the per-mount options most of its mounts have, its type, the order to make them in,
        and when each is made (its type's `when`)."""
        if self._sb_planned is not None:
            return self._sb_planned
        every = list(itertools.chain(self.mounts.values(), self.detached.values()))
        sids = list(map(itemgetter("sb"), every))
        # Each superblock's first mount (dict(zip) keeps a key's last value: both reversed), and how
        # many of its mounts have each set of options, counted in one pass in C (~45 steps a mount
        # as Python statements); a Counter keeps the pairs in first-seen order, as those did.
        users: dict[str, dict] = dict(zip(reversed(sids), reversed(every)))
        counts: dict[str, dict[frozenset, int]] = {}
        for (sid, opts), n in collections.Counter(zip(sids, map(frozenset, map(itemgetter("mount_opts"), every)))).items():
            if opts <= _BASE_OK:
                counts.setdefault(sid, {})[opts] = n
        # A new superblock's own mount (fsmount) carries the per-mount options most of its mounts
        # have (never "ro": files are extracted through it): their clones need no mount_setattr.
        # (max keeps the first of equal counts, as Counter.most_common did; a plain dict is cheaper
        # for thousands of superblocks)
        common = {sid: max(c, key=c.get) for sid, c in counts.items()}
        # Types made after the files last: a device may sit on an image file restored here.
        handlers = {}
        for sid, sb in self.doc["superblocks"].items():
            handlers[sid] = fs.lookup(sb["fstype"])
            if handlers[sid] is None and not sb.get("external") and sid in users:
                raise RestoreError(errno.EOPNOTSUPP, f"superblock {sid} on {sb['fstype']}: not supported")
        # (`when` is a property of the type: asked once a superblock here)
        whens = {sid: h.when for sid, h in handlers.items() if h is not None}
        order = sorted(self.doc["superblocks"].items(), key=lambda kv: whens.get(kv[0]) == fs.AFTER_FILES)
        self._sb_planned = users, common, handlers, order, whens
        return self._sb_planned

    def _start_filling(self, plans: list, users: dict) -> None:
        """Start the helper (engine/filler.py) that makes `plans` and fills every superblock with
        archived files; with a yard the superblocks exist already and it only fills them."""
        self.fill_started = True
        if plans:
            # In the order assemble() first clones from them (creation order, detached last).
            rank: dict[str, int] = {}
            for m in sorted(self.mounts.values(), key=lambda m: (m.get("uid") or 0, m["id"])):
                rank.setdefault(m["sb"], len(rank))
            plans.sort(key=lambda p: rank.get(p[0], len(rank)))
        # Superblocks made here (all with a yard; those owned by a user namespace always) are
        # handed over to be filled; namespace-bound ones are never filled (below).
        given = dict(self.sb_fd)
        made = {p[0] for p in plans} | set(given)
        fills: dict[str, list] = {}
        sockets: dict[tuple[str, str], list] = {}   # (archive, member) -> socket files tar left out
        empties = []
        for sid, sb in self.doc["superblocks"].items():
            if sid not in made or not fs.lookup(sb["fstype"]).content:
                # Archives only fill content types made here, never a namespace-bound superblock
                # (the host's own, when the namespace is the host's).
                continue
            for arc in sb.get("archives") or []:
                fills.setdefault(arc["file"], []).append((sid, arc["root"], arc["member"]))
                if arc.get("sockets"):
                    sockets[arc["file"], arc["member"]] = arc["sockets"]
            empties += [(sid, er) for er in image.empty_roots(sb)]
        if not (plans or fills or empties):
            if self.ahead is not None:
                self.ahead.close()
            return
        afds = []
        try:
            jobs = []
            # Archives in the order dump wrote them (files-N.tar by N): their superblocks are made
            # in about that order, and the helper may extract one as soon as its superblocks exist.
            for name, spec in sorted(fills.items(), key=lambda kv: content.dump_order(kv[0])):
                owners = {self.doc["superblocks"][sid].get("owner") for sid, _, _ in spec}
                if len(owners) > 1:
                    raise RestoreError(errno.EINVAL, f"archive {name} fills superblocks of different user "
                                                     f"namespaces ({', '.join(sorted(map(str, owners)))})")
                owner = owners.pop()
                fd = self.ahead.take_fd(name) if self.ahead is not None else None
                afds.append(os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.img_fd)
                            if fd is None else fd)
                jobs.append((afds[-1], name, self.doc["files"][name], spec,
                             None if owner is None else self.users.writer_ids(owner)))
            where = {sid: f"mount {m['id']} ({m['mountpoint']}) on {self.doc['superblocks'][sid]['fstype']}"
                     for sid, m in users.items()}
            self.filler = filler.Filler(plans, jobs, empties, given, self.hostproc, where, sockets, self.ahead,
                                        window=self.fill_window, held=self.fill_held)
        finally:
            for fd in afds:
                os.close(fd)
            if self.ahead is not None:
                self.ahead.close()   # (our copy: the helper's answers are the filler's)
        # (A superblock with empty roots only is one too: an older image's lacks its other empty roots.)
        self.filling |= {sid for spec in fills.values() for sid, _, _ in spec} | {sid for sid, _ in empties}

    def _filling_now(self) -> bool:
        """Whether the helper may still be writing files."""
        return self.filler is not None and not self.filler.done

    def _sb(self, sid: str) -> int | None:
        """The fd of new superblock `sid` (taken from the helper the first time), None if none."""
        fd = self.sb_fd.get(sid)
        if fd is None and sid in self.sb_closed:
            raise RestoreError(errno.EINVAL, f"superblock {sid}: needed again after its last mount was cloned")
        if fd is None and self.filler is not None and sid in self.filler.sids:
            try:
                fd = self.sb_fd[sid] = self.filler.take(sid)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, str(e.strerror or e)) from None
            self._keep_for_seal(sid, fd)
        return fd

    def _keep_for_seal(self, sid: str, fd: int) -> None:
        """Keep a mount of a superblock that seal() makes read-only after it is filled."""
        if (sid in self.ro_later or sid in self.flags_later) and sid not in self.ro_fd:
            self.ro_fd[sid] = os.dup(fd)

    def seal(self) -> None:
        """Make read-only the superblocks that were read-only at dump (created writable to be filled);
        per-mount read-only flags were set on each mount already."""
        self.join_files()
        for sid in sorted(self.ro_later | self.flags_later):
            fd = self.ro_fd.pop(sid, None)
            if fd is None:
                continue  # never taken: no mount was cloned from it
            m = next((m for m in self.mounts.values() if m["sb"] == sid), None)
            where = f"mount {m['id']} ({m['mountpoint']})" if m else f"superblock {sid}"
            where = f"{where} on {self.doc['superblocks'][sid]['fstype']}"
            if sid not in self.ro_later:
                self.attrs_later.append((sid, where, fd))   # (set_attrs, once the processes hold their fds)
                continue
            try:
                self._set_attrs(sid, fd, where)
                try:
                    kernel.superblock_readonly(fd)
                except OSError as e:
                    raise RestoreError(e.errno or errno.EIO, f"{where}: making its superblock read-only: "
                                                             f"{e.strerror or e}") from None
            finally:
                os.close(fd)
            step("seal")

    def set_attrs(self) -> None:
        """Set the inode attributes (chattr i, a, d) of the files of writable superblocks once every
        process holds its fds: a file held open for writing, or a directory restore still makes
        names in (ghosts), is refused neither by an immutable or append-only attribute then, as the
        kernel refused none when the dumped tree opened them before the attribute was set."""
        later, self.attrs_later = self.attrs_later, []
        try:
            for sid, where, fd in later:
                self._set_attrs(sid, fd, where)
        finally:
            for _, _, fd in later:
                os.close(fd)

    def _set_attrs(self, sid: str, fd: int, where: str) -> None:
        try:
            for arc in self.doc["superblocks"][sid].get("archives") or ():
                if arc.get("attrs"):
                    content.set_inode_flags(fd, [{**rec, "path": _joined(arc["root"], rec["path"])}
                                                 for rec in arc["attrs"]], self.hostproc)
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"{where}: setting its files' inode attributes (chattr): "
                                                     f"{e.strerror or e}") from None

    def _settle(self, sid: str, fd: int) -> int:
        """A new superblock's mount as a clone source, given what its type recorded beyond files and
        options (FsType.fill): as is, or attached in the yard (older kernels)."""
        sb = self.doc["superblocks"][sid]
        fs.lookup(sb["fstype"]).fill(sb, fd, f"superblock {sid} ({sb['fstype']})")
        if self.yard is not None:
            os.mkdir(sid, 0o700, dir_fd=self.yard)
            kernel.move_mount(fd, "", self.yard, sid, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        return fd

    def join_files(self) -> None:
        """Wait until every archive is extracted (before anything reads the files), then check
        that no mount attached meanwhile was lost.

        tar removes an (empty) directory to put another kind of file there, and
        removing a mount point in another namespace detaches what is mounted on
        it: a damaged or hostile archive could silently take a mount away.
        """
        if not self._filling_now():
            return
        try:
            self.filler.wait()
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, str(e.strerror or e)) from None
        self._drop_filled()
        self.parking.flush()
        step("extract")
        back = self.current_ns
        for ns_id, n in self.attached_in.items():
            self._check_count(ns_id, 1 + n)
        self.filling.clear()
        if back is not None:
            self.enter(back)  # a caller in the middle of attaching stands where it stood

    def mountinfo_of(self, ns_id: str) -> str:
        """The mountinfo of restored namespace ns_id, as seen from its root mount."""
        self.enter(ns_id)
        try:
            # mountinfo lists what lies under our root, and setns put us on top of an overmounted "/".
            os.fchdir(self.mnt_fd[self.doc["mntns"][ns_id]["root"]])
            os.chroot(".")
            with os.fdopen(os.open("thread-self/mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc),
                           encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        finally:
            self.to_service()  # setns resets root and cwd

    def _premake_dir(self, sid: str, base: int, rel: str) -> None:
        """Make directory `rel` (one name) beneath `base` first while its superblock `sid` is still
        being extracted: most mount points are not extracted yet, and this takes two calls where a
        failed open, fstat, mkdir and open took four (tar, finding it, keeps it and sets its
        attributes at its end). One name: mkdir follows no symlink, and the open or move that comes
        next refuses whatever else an archive may have put there."""
        if "/" in rel or not self._filling_now() or sid not in self.filling or sid in self.filler.filled:
            return
        try:
            os.mkdir(rel, 0o755, dir_fd=base)
        except OSError:
            pass   # (there already, read-only, unmapped ids...: the usual way says what to do)

    def _listed_count(self, ns_id: str) -> int | None:
        """How many mounts restored namespace ns_id has under its root, by listmount (None without
        it): at 10,000 mounts ~0.5 ms of CPU where mountinfo's text took ~15."""
        if strategy.current().ids != "statmount":
            return None
        self.enter(ns_id)
        try:
            os.fchdir(self.mnt_fd[self.doc["mntns"][ns_id]["root"]])   # (as mountinfo_of)
            os.chroot(".")
            return len(kernel.listmount())
        finally:
            self.to_service()

    def _check_count(self, ns_id: str, want: int) -> None:
        """Restored namespace ns_id has `want` mounts, else name one that is missing."""
        if self._listed_count(ns_id) == want:
            return
        text = self.mountinfo_of(ns_id)   # (also when listmount's count differs: mountinfo decides)
        if text.count("\n") == want:
            return
        there = {mp for _, _, _, mp, _ in mountinfo.brief(text)}
        gone = [m for m in self.mounts.values() if m["id"] in self._moved and self.ns_of_mount[m["id"]] == ns_id
                and m["mountpoint"] not in there]
        what = f"mount {gone[0]['id']} ({gone[0]['mountpoint']})" if gone else f"a mount of {ns_id}"
        raise RestoreError(errno.EIO, f"{what} vanished while files were extracted: an archive replaced its "
                                      "mount point (damaged or hostile image)")

    def _beneath_or_made(self, sid: str, base: int, rel: str, is_dir, flags: int, resolve: int,
                         surely_dir: bool = False) -> int:
        """openat2 beneath `base` (on superblock `sid`); while files are still being extracted into
        that superblock, a missing directory is made (tar, finding it, keeps it and sets its
        attributes at its end), and anything else waits for the extraction. `is_dir()` says
        whether the path should be a directory (None: unknown); `surely_dir`: it is known to be one."""
        if surely_dir:
            self._premake_dir(sid, base, rel)
        try:
            return kernel.openat2(base, rel, flags, resolve)
        except FileNotFoundError:
            # A superblock the helper fills may lack a directory after it is done too: an image
            # from before session 20 keeps one empty root a superblock (`empty_root`), so the roots
            # of its other mounts that hold no files are in no archive (binds of empty /a and /b of
            # an unmounted filesystem).
            if sid not in self.filling:
                raise
        if is_dir():
            try:
                # Its fd is the one asked for when that is an O_PATH open (mount points, roots): the
                # components were opened under the same restrictions.
                made = content.mkdirs_beneath(base, "/" + rel, resolve | _BENEATH)
                if flags == os.O_PATH and resolve & _BENEATH == _BENEATH:
                    return made
                os.close(made)
            except OSError as e:
                # EOVERFLOW: a superblock a user namespace owns takes files only from ids it maps.
                if e.errno not in (errno.EROFS, errno.EOVERFLOW):
                    raise
                # A read-only mount of a writable superblock (an OCI runtime's read-only root):
                # tar writes through the superblock's own mount, so wait for it.
                self.join_files()
        else:
            self.join_files()
        return kernel.openat2(base, rel, flags, resolve)

    def _create_by_type(self, sid: str, sb: dict, user: dict) -> int:
        """Superblock `sid` made by its type module's `create` hook (self is its context)."""
        where = f"mount {user['id']} ({user['mountpoint']}) on {sb['fstype']}"
        try:
            return fs.lookup(sb["fstype"]).create(sid, sb, self, where)
        except (RestoreError, fs.FsError) as e:
            raise RestoreError(e.errno or errno.EIO, e.strerror or str(e)) from None
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None

    # What type hooks use of the restorer (engine/fs/): mounts, join_files, to_service and these.

    def external_path(self, kind: str, key: str) -> str:
        """The host path the user gave for `--external KIND[KEY]:PATH`."""
        return self.ext[f"{kind}:{key}"]

    def daemon_command(self, key: str) -> str | None:
        """The command the user gave to serve a daemon type's superblock `key` again, or None."""
        return self.ext.get(("daemon", key))

    def caller_mntns(self) -> int:
        """An fd on the mount namespace of restore's caller (a restarted daemon runs there, so it pins
        none of the service namespace's mounts)."""
        return os.open(f"{os.getppid()}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc)

    def owner_userns(self, sb: dict) -> int | None:
        """An fd (not the caller's to close) on the restored user namespace that owns superblock
        `sb` (its ``owner``), None when the restorer's own does: a type's `create` hook makes it from
        inside that one."""
        owner = sb.get("owner")
        return None if owner is None else self.users.fd[owner]

    def sb(self, sid: str) -> int | None:
        """The detached mount fd of new superblock `sid`, None if it is not made."""
        return self._sb(sid)

    def sb_pinnable(self, sid: str) -> int | None:
        """An fd (the caller's to close) to open a file of new superblock `sid` through when
        something that lives as long as another superblock keeps that file (the backing file of a
        block device a type's hook attaches, a restarted daemon's input), None if it is not made.
        The superblock's own mount is parked (engine/parking.py) in a chain that stays connected
        while anything holds a mount of it: a file opened there held the chain, and a superblock
        stacked in it that kept the file then kept itself, the file and the chain forever. A
        private clone has no parent."""
        fd = self._sb(sid)
        if fd is None:
            return None
        if not self.parking.stack:
            return os.dup(fd)
        return kernel.open_tree(fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)

    def source_of(self, m: dict) -> tuple[int, str]:
        """(detached mount fd to clone mount `m` from, path of m's root inside it)."""
        return self._source(m)

    def _creator(self, sid: str, sb: dict, handler: fs.FsType, user: dict) -> channel.Channel:
        if handler.ns_key:
            # Tagged with the namespace the image names (dump's probe found it).
            if not sb.get(handler.ns_key):
                raise RestoreError(errno.EINVAL, f"superblock {sid} ({sb['fstype']}) has no {handler.ns} "
                                                 "namespace in the image")
            if handler.ns_key == "pidns" and self.doc["pidns"][sb["pidns"]].get("host") and not any(
                    p["ns"]["pid"] == sb["pidns"] for p in self.doc["processes"]):
                return _HERE   # (the dumper's pid namespace, no process of the tree in it: ours)
            return self._standin_in(handler.ns, sb[handler.ns_key], sb.get("owner"))
        # Tagged with the namespace of the processes that see the mount: made by one of them that
        # stands in the user namespace owning it, else by any stand-in in that namespace that does.
        ns_id = self.ns_of_mount[user["id"]]
        seers = [p for p in self.doc["processes"] if p["ns"]["mnt"] == ns_id and p["pid"] in self.chans] \
            or self.doc["processes"][:1]
        p = next((p for p in seers if self.users.stands_in(p) == sb.get("owner")), None)
        if p is None and sb.get("owner") is None and handler.ns in seers[0].get("host_ns", ()):
            # (the restorer's own namespace, and no stand-in there stands in its user namespace,
            # e.g. pid 1 of a pid namespace that a user namespace owns starts inside it: ours)
            return _HERE
        if p is None and handler.ns in seers[0]["ns"]:
            return self._standin_in(handler.ns, seers[0]["ns"][handler.ns], sb.get("owner"))
        return self.chans[(p or seers[0])["pid"]]

    # -- 3. plain mounts ------------------------------------------------------------

    # -- 3+4. mounts and namespaces ------------------------------------------------------

    def _source(self, m: dict) -> tuple[int, str]:
        """(fd of a never-attached mount to clone m from, path of m's root inside it).

        Fresh superblocks are cloned from their fsmount fd; external ones from a
        detached clone of the external mount whose root covers m's root. Clone
        sources stay detached: open_tree only clones mounts of our own namespace
        or detached ones, and we move between namespaces while assembling.
        """
        sb = self.doc["superblocks"][m["sb"]]
        if not sb.get("external"):
            handler = fs.lookup(sb["fstype"])
            # (made: no call; a `per_mount` superblock is never made)
            if m["sb"] not in self.sb_fd and (m["sb"] in self.per_mount_sbs or self._sb(m["sb"]) is None):
                if m["sb"] in self.per_mount_sbs:
                    return self._own_source(m, sb, handler), ""
                if handler is None or handler.when != fs.ON_USE:
                    raise RestoreError(errno.EINVAL, f"mount {m['id']} ({m['mountpoint']}): its superblock "
                                                     f"{m['sb']} was not created")
                self.sb_fd[m["sb"]] = self._settle(m["sb"], self._create_by_type(m["sb"], sb, m))
                step("superblock")
            if handler.held_root(m["root"]):
                self._make_root(m)
            if m.get("source", sb["source"]) != sb["source"] and not handler.source_names_root:
                return self._other_source(m, sb), m["root"][1:]
            return self.sb_fd[m["sb"]], m["root"][1:]
        # A clone of a host path may only be cloned again from the namespace it came from.
        self.to_service()
        if m.get("external"):
            return self.ext_src[m["id"]], ""
        if self._ext_by_sb is None:
            self._ext_by_sb = {}
            for e in self.mounts.values():
                if e.get("external"):
                    self._ext_by_sb.setdefault(e["sb"], []).append(e)
        best = None
        for e in self._ext_by_sb.get(m["sb"], ()):
            if is_beneath(m["root"], e["root"]):
                if best is None or len(e["root"]) > len(best["root"]):
                    best = e
        if best is None:
            raise RestoreError(errno.ENOENT, f"mount {m['id']} ({m['mountpoint']}): no external mount covers its root")
        rel = rel_to(m["root"], best["root"])
        self._check_host_root(m, self.ext_src[best["id"]], rel)
        return self.ext_src[best["id"]], rel

    def _own_source(self, m: dict, sb: dict, handler: fs.FsType) -> int:
        """The mount its type makes mount `m` from (`mount_source`: a namespace bound on a file), once per
        object it names (kept with the other sources until assemble ends)."""
        key = (m["sb"], "object:" + str(m.get("bound_ns")))
        fd = self.src_fd.get(key)
        if fd is None:
            where = f"mount {m['id']} ({m['mountpoint']}) on {sb['fstype']}"
            try:
                fd = self.src_fd[key] = handler.mount_source(self, m, sb, where)
            except fs.FsError as e:
                raise RestoreError(e.errno or errno.EIO, e.strerror or str(e)) from None
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None
        return fd

    def namespace_fd(self, nsid: str) -> int | None:
        """Our fd on restored namespace `nsid` of the image ("net-1"), None when no process is in it
        (not the caller's to close)."""
        return self._ns_fd_of(nsid)

    def _make_root(self, m: dict) -> None:
        """Make mount m's root on its new superblock by its type's `make_root` (a pty bound as
        /dev/console), once; the objects opened for it wait in `made` for the fd stage."""
        sid = m["sb"]
        if (sid, m["root"]) in self.made_roots:
            return
        fd = self.sb_fd[sid]
        where = f"mount {m['id']} ({m['mountpoint']})"
        self.join_files()   # (the ptmx it opens may be a node of an archived filesystem: /dev/ptmx)
        try:
            opened = fs.lookup(self.doc["superblocks"][sid]["fstype"]).make_root(self, m)
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"{where}: making its root {m['root']}: {e.strerror or e}") from None
        self.made_roots.add((sid, m["root"]))
        self.made.setdefault(os.fstat(fd).st_dev, {}).update(opened)

    def _other_source(self, m: dict, sb: dict) -> int:
        """A mount of m's superblock shown with m's own source, which is not the superblock's first
        (mountinfo's source is per mount, and a clone keeps its source's): made once per source by a
        new mount that joins the superblock: of its type in its namespace (a type that `joins_by_ns`,
        as the superblock was made), or by its type's `mount_again` (block devices); dump refuses
        the others."""
        sid, source = m["sb"], m["source"]
        fd = self.src_fd.get((sid, source))
        if fd is not None:
            return fd
        handler = fs.lookup(sb["fstype"])
        where = f"mount {m['id']} ({m['mountpoint']}) on {sb['fstype']}"
        if not handler.mounts_again:
            raise RestoreError(errno.EINVAL, f"{where}: its source {source!r} is not its superblock's "
                                             f"({sb['source']!r}), and a {sb['fstype']} cannot be mounted again "
                                             "with another")
        attr = attr_of(self.base_opts.get(sid, _PLAIN))[0]
        try:
            if handler.joins_by_ns:
                _, fds = self._creator(sid, sb, handler, m).call(
                    ("fsmount", sb["fstype"].split(".", 1)[0], source, handler.fsconfig_params(sb["super_opts"]),
                     attr))
                fd = fds[0]
            else:
                fd = handler.mount_again(sb, source, self.sb_fd[sid], where)
        except fs.FsError as e:
            raise RestoreError(e.errno or errno.EIO, e.strerror or str(e)) from None
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None
        if os.fstat(fd).st_dev != os.fstat(self.sb_fd[sid]).st_dev:
            os.close(fd)
            raise RestoreError(errno.EINVAL, f"{where}: mounting it again with its source {source!r} made another "
                                             "superblock")
        if self.yard is not None:
            self.to_service()   # (the yard is a directory of the service namespace)
            n = len(self.src_fd)
            os.mkdir(f"{sid}-src{n}", 0o700, dir_fd=self.yard)
            kernel.move_mount(fd, "", self.yard, f"{sid}-src{n}", kernel.MOVE_MOUNT_F_EMPTY_PATH)
        self.src_fd[(sid, source)] = fd
        return fd

    def open_external_files(self) -> None:
        """Open each fd declared external at dump (--external file[KEY]:HOSTPATH) on the host."""
        from engine.fds.file import OPEN_DROP
        for p in self.doc["processes"]:
            for f in p["fds"]:
                if f.get("external"):
                    path = self.ext["file:" + f["external"]]
                    flags = (f["flags"] & ~OPEN_DROP) | os.O_CLOEXEC | os.O_NOCTTY
                    try:
                        fd = self.ext_files[(p["pid"], f["fd"])] = _open_external(path, flags)
                        if f["pos"] and f.get("type") != "dir" and not f["flags"] & os.O_PATH:
                            os.lseek(fd, f["pos"], os.SEEK_SET)
                    except OSError as e:
                        raise RestoreError(e.errno, f"process {p['pid']} fd {f['fd']}: external file "
                                                    f"{f['external']} ({path}): {e.strerror or e}") from None

    def open_externals(self) -> None:
        """Detached clones of every external mount's host path (while we still see the host's tree)."""
        self.open_external_files()
        for e in self.mounts.values():
            if not e.get("external"):
                continue
            path = self.ext[e["external"]]
            try:
                if self.yard is not None and strategy.current().sharing == "construct":
                    # Clones of the service namespace's own mount would be slaves of the host's
                    # groups until made private, after they are attached: too late where peer
                    # groups are built while attaching (engine.construct). A private copy in the yard.
                    self.ext_src[e["id"]] = construct.in_yard(self, path, f"ext{e['id']}", private=True)
                else:
                    self.ext_src[e["id"]] = kernel.open_tree(kernel.AT_FDCWD, path,
                                                             kernel.OPEN_TREE_CLONE if self.yard is None else 0)
                if e.get("master") or e.get("shared"):
                    # The way into an external peer group: a clone of the host's mount rooted at the
                    # path, which is that mount's peer (or a slave of its master). MOVE_MOUNT_SET_GROUP
                    # copies only from a mount's root, and the path may be a directory inside the
                    # host's mount (CRIU's mnt_ext_master binds /tmp/X/test of a shared mount at /tmp/X).
                    if self.yard is not None and strategy.current().sharing == "construct":
                        # engine.construct binds from it: attached in the yard, as a detached clone
                        # cannot be cloned again there (5.10: open_tree EINVAL)
                        self.ext_host[e["id"]] = construct.in_yard(self, path, f"host{e['id']}", private=False)
                    else:
                        self.ext_host[e["id"]] = kernel.open_tree(kernel.AT_FDCWD, path, kernel.OPEN_TREE_CLONE)
            except OSError as err:
                raise RestoreError(err.errno, f"external {e['external']} ({path}) for mount {e['id']} "
                                              f"({e['mountpoint']}): {err.strerror}") from None

    def _clone(self, m: dict, what: str = "mount", base: tuple | None = None) -> int:
        """A detached clone of m's root with its per-mount flags: private, from its superblock or
        external source; or, with `base` = (fd, path beneath it) from engine.construct, a bind of
        that mount that keeps the peer group and master it inherits."""
        fd = self._clone_plain(m, what, base)
        if "idmap" in m:
            self._users_call(self.users.idmap, m, fd)   # idmapped mounts (engine/userns_cr.py)
        # An unlocked mount with locked flags: cloned again inside its user namespace (with the locked
        # mounts below it, if any). A bind from `base` has them already: engine.construct binds it
        # from a mount with the same flag locks (a seed made with them: op lockseed).
        if m.get("locked_flags") and not m.get("locked") and (base is None or m["id"] in self.users.groups):
            try:
                if m["id"] in self.users.groups:
                    fd = self.users.lock_subtree(self, m, fd)
                else:
                    fd = self.users.lock_flags(m, fd)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"user namespaces: {e.strerror or e}") from None
        for gid, path in self.ghost_fds_on.get(m["id"], ()):
            if (gid, m["id"], path) not in self.ghost_fd:
                self._ghost(gid)
                try:
                    self.ghost_fd[gid, m["id"], path] = kernel.openat2(fd, path.lstrip("/"), os.O_PATH | os.O_NOFOLLOW,
                                                        _BENEATH | kernel.RESOLVE_NO_XDEV)
                except OSError as e:
                    raise RestoreError(e.errno, f"mount {m['id']} ({m['mountpoint']}): its deleted file {path} "
                                                f"cannot be opened: {e.strerror}") from None
        return fd

    def _ghost(self, gid: str) -> ghosts.Ghost | ghosts.Uncovered:
        """Ghost `gid` under its old name on its new superblock: recreated the first time, linked
        until the mounts are assembled (the kernel attaches no mount whose root is unlinked), then
        unlinked again by assemble(); what was opened or mounted from it keeps it."""
        if gid in self.ghost_live:
            return self.ghost_live[gid]
        g = self.doc["ghosts"][gid]
        user = self.ghost_user[gid]
        where = f"mount {user['id']} ({user['mountpoint']})"
        self.join_files()  # the superblock's own files first: the ghost's old name may be in use again
        base = self._sb(g["sb"])
        if base is None:
            raise RestoreError(errno.EINVAL, f"{where}: the filesystem of its deleted file {g['path']} was not restored")
        if g.get("uncover"):
            # Its type took the whiteout out of its layer when the superblock was made (uncover_layer):
            # the directory beneath is there again, removed through the mount once opened (engine/ghosts.py).
            from engine import ghosts   # (loaded by _load_for)
            try:
                ghost = self.ghost_live[gid] = ghosts.Uncovered(base, g["path"])
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"{where}: its removed directory {g['path']}: "
                                                         f"{e.strerror or e}") from None
            return ghost
        # tar runs in a copy of the namespace we stand in: the service one has its /proc and tar
        # (beneath the yard, if there is one).
        self.to_service()
        os.fchdir(self.service_root)
        os.chroot(".")
        os.chdir("/")
        # A deleted name of a file that still has another one (`linked`, restored with the
        # superblock's files, joined above) is linked there again: no archive of its own.
        afd = None
        if not g.get("linked"):
            afd = os.open(g["file"], os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.img_fd)
        # A superblock a user namespace owns takes new files only from ids it maps.
        owner = self.doc["superblocks"][g["sb"]].get("owner")
        ids = None if owner is None else self.users.writer_ids(owner)
        try:
            with _SAME_IDS if ids is None else kernel.fs_ids_for_a_while(*ids):
                from engine import ghosts   # (loaded by _load_for)
                ghost = self.ghost_live[gid] = ghosts.Ghost(
                    base, g["path"], afd, g.get("file"), self.doc["files"][g["file"]] if afd is not None else None,
                    g.get("only"), links=g.get("links") or (), linked=g.get("linked"), ids=ids)
            return ghost
        except OSError as e:
            if isinstance(e, RestoreError):
                raise
            raise RestoreError(e.errno or errno.EIO, f"{where}: recreating its deleted file {g['path']}: "
                                                     f"{e.strerror or e}") from None
        finally:
            if afd is not None:
                os.close(afd)

    def _clone_plain(self, m: dict, what: str, given: tuple | None = None) -> int:
        if given is not None:
            base, rel = given  # the caller stands where that mount may be cloned
        elif m.get("ghost"):
            # Its root was unlinked: cloned from the ghost, recreated once and unlinked again.
            src = self.ghost_src.get(m["ghost"])
            if src is None:
                ghost = self._ghost(m["ghost"])
                src = self.ghost_src[m["ghost"]] = kernel.openat2(ghost.dir, ghost.name, os.O_PATH | os.O_NOFOLLOW,
                                                                  _BENEATH | kernel.RESOLVE_NO_XDEV)
            base, rel = src, ""
        else:
            base, rel = self._source(m)
        if self.yard is not None and given is None:
            self.to_service()  # attached sources clone only from their own namespace
        try:
            if rel:
                where = self._beneath_or_made(m["sb"], base, rel, lambda: m.get("dir"), os.O_PATH, _BENEATH)
                try:
                    fd = kernel.open_tree(where, "", _CLONE)
                finally:
                    os.close(where)
            else:
                fd = kernel.open_tree(base, "", _CLONE)
        except OSError as e:
            hint = getattr(fs.lookup(self.doc["superblocks"][m["sb"]]["fstype"]), "missing_root", None) \
                if e.errno == errno.ENOENT and given is None and not m.get("ghost") else None
            raise RestoreError(e.errno, f"{what} {m['id']} ({m['mountpoint']}): cannot bind root "
                                        f"{m['root']}: {hint or e.strerror}") from None
        plain = False
        if given is None:
            sid = m["sb"]
            if not m.get("ghost"):
                self._used_sb(sid)
            plain = frozenset(m["mount_opts"]) == self.base_opts.get(sid, _PLAIN) \
                and not self.doc["superblocks"][sid].get("external")
        # A clone of a fresh superblock is already private, with its base options: no call needed then.
        if not self.legacy and not plain:
            aset, aclr = attr_of(m["mount_opts"])
            try:
                # A bind that is to keep the group it inherited (engine.construct) stays as it is.
                kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_set=aset, attr_clr=aclr,
                                     propagation=kernel.MS_PRIVATE if given is None else 0)
            except OSError as e:
                os.close(fd)
                raise RestoreError(e.errno, f"{what} {m['id']} ({m['mountpoint']}): setting "
                                            f"{','.join(m['mount_opts'])}: {e.strerror}") from None
        return fd

    def _count_sb_uses(self) -> None:
        """How many clones each new superblock's fd still serves; superblocks whose fd is needed
        beyond their mounts' clones (devices' backing files, ghosts, layers, sharing helpers,
        a yard's) are left out and stay open until the end of assemble."""
        if self.yard is not None or strategy.current().sharing == "construct":
            return  # clones from seeds, adopted copies: uses are not one clone a mount there
        sbs = self.doc["superblocks"]
        later = set(self.helper_sbs) | {g["sb"] for g in (self.doc.get("ghosts") or {}).values()}
        every = {**self.mounts, **self.detached}   # (a superblock may be made from files of detached mounts: layers)
        for sid, sb in sbs.items():
            if sb.get("external"):
                later.add(sid)
            handler = fs.lookup(sb["fstype"])  # None: an external superblock of a type we do not make
            if handler is not None:
                later |= handler.made_from(sb, every)
        # (counted in one pass in C: this was ~45 steps a mount)
        uses = collections.Counter(map(itemgetter("sb"), itertools.chain(self.mounts.values(), self.detached.values())))
        for m in self.ghost_mounts:
            uses[m["sb"]] -= 1   # made from their ghost, not from the superblock's fd
        self.sb_uses.update((sid, n) for sid, n in uses.items() if n > 0 and sid not in later)

    def _used_sb(self, sid: str) -> None:
        """One clone of superblock `sid` made: after its last, close its fd."""
        left = self.sb_uses.get(sid)
        if left is None:
            return
        if left > 1:
            self.sb_uses[sid] = left - 1
            return
        del self.sb_uses[sid]
        fd = self.sb_fd.pop(sid, None)
        if fd is not None:
            self._drop_sb(sid, fd)
            self.sb_closed.add(sid)

    def _drop_sb(self, sid: str, fd: int) -> None:
        """Let go of superblock sid's mount: in a batch (engine/parking.py) unless another fd of
        the same mount is still used (the helper filling it clones from it, seal() reconfigures
        it, sharing helpers are cloned from it): then this is not the last close, and costs nothing."""
        if sid in self.filling and self._filling_now():
            seen = len(self.filler.filled)
            try:
                self.filler.poll()
            except OSError as e:
                raise RestoreError(errno.EIO, str(e.strerror or e)) from None
            if len(self.filler.filled) != seen or self.filler.done:
                self._drop_filled()
        if sid in self.ro_fd or sid in self.helper_src:
            os.close(fd)
        elif sid in self.filling and self._filling_now() and sid not in self.filler.filled:
            if len(self.after_fill) < self.after_fill_max:
                self.after_fill[sid] = fd
            else:
                os.close(fd)  # (the helper's close will wait alone)
        else:
            self.parking.drop(fd)

    def _drop_filled(self) -> None:
        """Let go of the mounts in after_fill whose superblock the helper is done with."""
        done = not self._filling_now()
        for sid in [s for s in self.after_fill if done or s in self.filler.filled]:
            self.parking.drop(self.after_fill.pop(sid))

    def _plan_construct(self, helper_ok) -> None:
        """Peer groups built while mounting (sharing=construct, engine/construct.py): its plan; nothing
        is left for the sharing step."""
        sbs = self.doc["superblocks"]
        try:
            self.construct_ops = construct.plan(
                list(self.mounts.values()), helper_ok, userns_cr.construct_copies(self.doc["mntns"]),
                userns_cr.construct_subtrees(self.doc["mntns"]),
                construct.kept_sources((m["id"], sbs[m["sb"]]["fstype"], m.get("source", sbs[m["sb"]]["source"]))
                                       for m in self.mounts.values() if helper_ok(m["sb"])))
        except construct.PlanError as e:
            raise RestoreError(errno.EOPNOTSUPP, str(e)) from None
        self.sharing_ops = []

    def _plan_fds(self) -> None:
        """Decide which fds must outlive the assembly (the rest close as soon as they are done).

        Kept: mounts a process's root, cwd or fd lies on (and the mount points of
        their children, to reach what those cover), and covered mounts that the
        sharing step must reach (uncovered ones are found again by path).
        """
        self.referenced: set[int] = set()
        for p in self.doc["processes"]:
            for loc in [p["root"], p["cwd"], *p.get("maps", ()), *([p["exe"]] if "exe" in p else [])]:
                if not loc.get("detached"):
                    self.referenced.add(loc["mnt"])
            for f in p["fds"]:
                self.referenced.update(fdkinds.mounts_used(f))
            if "ctty_node" in p:   # (its leader takes the terminal through them: engine/ctty.py)
                self.referenced.update((p["ctty_node"]["mnt"], p["ctty_node"]["ptmx"]["mnt"]))
        # (a pass in C a key, not ~25 steps a mount as a comprehension)
        self.shared_ids = set()
        for key in ("shared", "master", "unbindable"):
            self.shared_ids.update(map(itemgetter("id"), filter(methodcaller("get", key), self.mounts.values())))
        # (no helper of a superblock restore never makes: external, or one whose type makes each mount from
        # an object of its own, `per_mount`)
        no_helper = {sid for sid, sb in self.doc["superblocks"].items() if sb.get("external")} | self.per_mount_sbs
        helper_ok = lambda sid: sid in self.doc["superblocks"] and sid not in no_helper  # noqa: E731
        if strategy.current().sharing == "construct":
            self._plan_construct(helper_ok)
        else:
            try:
                self.sharing_ops = sharing.plan(list(self.mounts.values()), helper_ok=helper_ok)
            except sharing.PlanError as e:
                raise RestoreError(errno.EOPNOTSUPP, str(e)) from None
        # Superblocks a helper mount is cloned from (at their root) in the sharing step.
        self.helper_sbs = {op[2] for op in self.sharing_ops if op[0] == "helper"}
        roots = {ns["root"] for ns in self.doc["mntns"].values()}
        # Within the fd budget, keep every shared mount's fd: finding them again by path costs three
        # syscalls each in the sharing step (and which of them are covered needs no walk then).
        budget = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2 - len(self.mounts) // 8 - 256
        if len(self.shared_ids | self.referenced | roots) < budget:
            self.keep = self.shared_ids | self.referenced | roots
            return
        covered = self._covered()
        self.keep = {mid for mid in self.shared_ids if covered.get(mid)} | self.referenced | roots

    def _covered(self) -> dict[int, bool]:
        """{mount id: whether a mount attached later covers it} (a sibling over its mount point or
        over one above it, a mount on its parent's root, or any of that above it)."""
        covered: dict[int, bool] = {}
        for ns in self.doc["mntns"].values():
            stack = [(ns["root"], False)]
            while stack:
                mid, cov = stack.pop()
                covered[mid] = cov
                kids = self.children.get(mid, ())
                if len(kids) == 1:   # an only child covers none of its siblings
                    stack.append((kids[0]["id"], cov))
                    if kids[0]["mountpoint"] == self.mounts[mid]["mountpoint"]:
                        covered[mid] = True
                    continue
                at = self.mounts[mid]["mountpoint"]
                rs = [rel_to(c["mountpoint"], at) for c in kids]
                rels = set(rs)
                over_root = "" in rels
                for c, r in zip(kids, rs):
                    if over_root or "/" not in r:   # (a one-name path has no sibling above it)
                        hidden = over_root and r != ""
                    else:
                        parts = r.split("/")
                        hidden = any("/".join(parts[:k]) in rels for k in range(1, len(parts)))
                    stack.append((c["id"], cov or hidden))
                if over_root:
                    covered[mid] = True
        return covered

    def assemble(self, service_fd: int) -> None:
        """Clone every mount in its original creation order and attach it as soon as its parent is.

        Keeping creation order keeps the "younger than the layered superblock"
        relations a second dump relies on (types with layers). Each mount
        point is opened in its parent before anything could cover it: normally
        right before the move; early, when a sibling about to be attached
        covers it.
        """
        self._plan_fds()
        self._count_sb_uses()
        self.new_id: dict[int, int] = {}
        roots = {ns["root"]: ns_id for ns_id, ns in self.doc["mntns"].items()}
        attached: set[int] = set()
        pending: dict[int, list[dict]] = {}
        left = {mid: len(kids) for mid, kids in self.children.items()}
        self._sorted_rels: dict[int, list[tuple[str, int]] | tuple] = {}
        # Without unique ids (before 6.8) legacy ids are reused, so a mount made inside an owned
        # namespace may have a lower id than its root or a locked mount: those come first, since
        # the namespace is copied into its user namespace before its first own mount is attached.
        early = {mid for before, _ in userns_cr.construct_copies(self.doc["mntns"]).values() for mid in before}
        first = userns_cr.creation_uid(self.doc["mntns"])
        if first or early:
            key = lambda m: (first.get(m["id"], m.get("uid") or 0), m["id"] not in first,  # noqa: E731
                             m.get("uid") is None and m["id"] not in early, m["id"])
        else:   # (the same order: the second part would be True for every mount)
            key = lambda m: (m.get("uid") or 0, m.get("uid") is None, m["id"])  # noqa: E731
        order = fs.held_roots_last(sorted(self.mounts.values(), key=key))
        if self.one_cpu is not None:   # (a mount binds a mount namespace: made first, in bind order)
            self._premake_namespaces([self.ns_of_mount[m["id"]] for m in order if m["id"] in roots], service_fd)
        grouped_ids, owned = self.users.grouped, self.users.owned   # (set up before: fixed from here)

        keep, mnt_fd, ns_of, mounts = self.keep, self.mnt_fd, self.ns_of_mount, self.mounts
        groups, legacy = self.users.groups, self.legacy

        def done(mid: int) -> None:
            # All of mid's children are attached (the caller saw none left): its fd is needed only if kept.
            if mid not in keep and mid in mnt_fd:
                if mid in self.shared_ids:
                    self.new_id[mid] = kernel.statx_mnt_id("", mnt_fd[mid], kernel.AT_EMPTY_PATH)
                os.close(mnt_fd.pop(mid))

        # (this runs once a mount: lookups are bound above, done() is called only when it acts)
        for m in order:
            mid = m["id"]
            if mid in grouped_ids:
                continue  # made with the unlocked mount above it (engine/userns_cr.py lock_subtree)
            ns_id = ns_of[mid]
            if owned and self.users.must_copy_before(ns_id, m):  # locks: engine/userns_cr.py
                self._users_call(self.users.copy, self, ns_id, attached)
            mnt_fd[mid] = self._clone(m)
            if mid in roots:
                self._new_namespace(ns_id, m, service_fd)
                ready = [m]
            elif m["parent"] in attached:
                ready = [m]
            else:
                pending.setdefault(m["parent"], []).append(m)
                continue
            while ready:
                x = ready.pop()
                xid = x["id"]
                if xid in grouped_ids:
                    self._moved.add(xid)   # attached with the unlocked mount above it
                    self._users_call(self.users.attached, self, x)
                    if self._filling_now():
                        nsx = ns_of[xid]
                        self.attached_in[nsx] = self.attached_in.get(nsx, 0) + 1
                elif xid not in roots:
                    if ns_of[xid] != self.current_ns:
                        self.enter(ns_of[xid])
                    self._attach(mounts[x["parent"]], x)
                if xid not in roots:
                    up = x["parent"]
                    left[up] -= 1
                    if not left[up]:
                        done(up)
                attached.add(xid)
                if legacy:
                    self.enter(ns_of[xid])
                    self._legacy_attrs(x)
                kids = pending.pop(xid, None)
                if kids:
                    ready.extend(sorted(kids, key=lambda c: (c.get("uid") or 0, c["id"]), reverse=True))
                grouped = groups.get(xid)
                if grouped:
                    ready.extend(reversed(grouped))
                if not left.get(xid):
                    done(xid)
                if _FAULT_AT:   # (a call a mount saved when no fault is injected)
                    step("attach")
        if pending:
            mid = next(iter(pending))
            raise RestoreError(errno.EINVAL, f"mount {mid}: children left unattached (parent cycle?)")
        self._users_call(self.users.copy_rest, self, attached)
        self.finish_assembly(service_fd)

    def finish_assembly(self, service_fd: int) -> None:
        """After every mount is attached: clone the detached mounts, unlink the ghosts again, close
        the sources, and stand in the service namespace."""
        for d in self.detached.values():
            self.mnt_fd[d["id"]] = self._clone(d, "detached mount")
        for sid in self.helper_sbs:
            fd = self._sb(sid)
            if fd is not None:
                self.helper_src[sid] = os.dup(fd)
        for gid in sorted(self.ghost_live):
            try:
                self.ghost_live.pop(gid).remove()
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"mount {self.ghost_user[gid]['id']} "
                                                         f"({self.ghost_user[gid]['mountpoint']}): unlinking its root "
                                                         f"{self.doc['ghosts'][gid]['path']} again: {e.strerror or e}") from None
        for sid, fd in self.sb_fd.items():
            self._drop_sb(sid, fd)
        for fd in list(self.src_fd.values()) + list(self.ext_src.values()):
            self.parking.drop(fd)
        self.parking.flush()
        for fd in self.ghost_src.values():
            os.close(fd)
        self.sb_fd.clear()
        self.src_fd.clear()
        self.ghost_src.clear()
        if self.filler is not None:
            self.filler.close()
        self.ext_src.clear()
        kernel.setns(service_fd, kernel.CLONE_NEWNS)
        self.current_ns = None

    def _uts_names(self, nsid: str) -> tuple[str, str | None] | None:
        """(hostname, NIS domain name or None) a new UTS namespace `nsid` gets; None: none recorded."""
        host = (self.doc.get("hostnames") or {}).get(nsid)
        return None if host is None else (host, (self.doc.get("domainnames") or {}).get(nsid))

    @staticmethod
    def _users_call(fn, *args):
        """A user-namespace step (engine/userns_cr.py), its result; its OSError becomes one RestoreError line."""
        try:
            return fn(*args)
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"user namespaces: {e.strerror or e}") from None

    @functools.cached_property
    def one_cpu(self) -> int | None:
        """The CPU mount namespaces are made on (_one_cpu), or None."""
        return _one_cpu(self.doc)

    def _premake_namespaces(self, base: list[str], service_fd: int) -> None:
        """Every mount namespace made at once, on one CPU, as copies of the service namespace, in
        `bind_order`: a namespace a mount binds is made after the namespace of that mount (the kernel
        refuses the bind otherwise: ELOOP); `_new_namespace` pivots each into its root later."""
        for ns_id in bind_order(self.doc, base):
            kernel.setns(service_fd, kernel.CLONE_NEWNS)
            _unshare_on(self.one_cpu, kernel.CLONE_NEWNS)
            self.ns_fd[ns_id] = os.open("self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc)
            self._premade.add(ns_id)
        kernel.setns(service_fd, kernel.CLONE_NEWNS)
        self.current_ns = None

    def _new_namespace(self, ns_id: str, root: dict, service_fd: int) -> None:
        """A copy of the service namespace, pivoted into `root` (nothing else of it stays); one made
        before (`_premake_namespaces`) is entered."""
        if ns_id in self._premade:
            kernel.setns(self.ns_fd[ns_id], kernel.CLONE_NEWNS)
        else:
            kernel.setns(service_fd, kernel.CLONE_NEWNS)
            kernel.unshare(kernel.CLONE_NEWNS)
            self.ns_fd[ns_id] = os.open("self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc)
        self.current_ns = ns_id
        self._pivot_into(root)

    def _pivot_into(self, root: dict) -> None:
        """Make mount `root` the root of the namespace we stand in (a fresh copy of the service one)."""
        fd = self.mnt_fd[root["id"]]
        kernel.move_mount(fd, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
        os.fchdir(fd)
        kernel.pivot_root(".", ".")
        kernel.umount2(".", kernel.MNT_DETACH)
        os.chdir("/")
        step("pivot")

    def _legacy_attrs(self, m: dict, private: bool = True) -> None:
        """Per-mount flags and private propagation (unless not `private`: engine.construct sets it)
        with mount(2), on the attached mount (we stand in its ns)."""
        flags = remount.flags_of(m["mount_opts"])
        try:
            # The host /proc's self/fd/N names the mount itself (also a file bind; "." would not).
            os.fchdir(self.hostproc)
            kernel.mount(None, f"self/fd/{self.mnt_fd[m['id']]}", None, flags)
            if private:
                kernel.mount(None, f"self/fd/{self.mnt_fd[m['id']]}", None, kernel.MS_PRIVATE)
        except OSError as e:
            raise RestoreError(e.errno, f"mount {m['id']} ({m['mountpoint']}): setting "
                                        f"{','.join(m['mount_opts'])}: {e.strerror}") from None
        finally:
            os.chdir("/")

    def _mountpoint_fd(self, parent: dict, c: dict, pfd: int | None = None) -> int:
        rel = rel_to(c["mountpoint"], parent["mountpoint"])
        pfd = self.mnt_fd[parent["id"]] if pfd is None else pfd
        try:
            if rel:
                # The mount point has the type of the root of the mount that goes there.
                def is_dir():
                    fd = self.mnt_fd.get(c["id"])
                    return stat.S_ISDIR(os.fstat(fd).st_mode) if fd is not None else c.get("dir")
                # (a superblock's root is a directory; a bind of a namespace is rooted "/" too, `dir` false)
                return self._beneath_or_made(parent["sb"], pfd, rel, is_dir, os.O_PATH,
                                             _BENEATH | kernel.RESOLVE_NO_XDEV, c["root"] == "/" and c.get("dir", True))
            return os.dup(pfd)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise RestoreError(e.errno, f"out of file descriptors at mount {c['id']} ({c['mountpoint']}): "
                                            f"raise RLIMIT_NOFILE (ulimit -n)") from None
            raise RestoreError(e.errno, f"mount {c['id']} ({c['mountpoint']}): its mount point is missing in "
                                        f"mount {parent['id']} ({parent['mountpoint']}): {e.strerror}") from None

    def _attach(self, parent: dict, c: dict) -> None:
        """Move c onto its mount point; first open the mount points c is about to cover."""
        # (this runs once a mount: lookups are hoisted and the common cases take no extra call)
        cid, pid = c["id"], parent["id"]
        if len(self.children[pid]) > 1:
            self.keep_mountpoints(parent, c)
        if self.mp_dir:
            up = self.mp_dir.pop(cid, None)   # (only a copy propagation makes is found through it)
            if up is not None:
                os.close(up)
        kept = pid in self.referenced
        mp = self.mp_fd.pop(cid, None)
        own = True
        if mp is None:
            if c["mountpoint"] == parent["mountpoint"] and not kept:
                mp, own = self.mnt_fd[pid], False   # on the parent's root: no dup to make and close
            elif not kept and c["root"] == "/" and c.get("dir", True) and self._attach_by_name(parent, c):
                return
            else:
                mp = self._mountpoint_fd(parent, c)
        try:
            kernel.move_mount(self.mnt_fd[cid], "", mp, "", _MOVE_FLAGS)
        except OSError as e:
            raise RestoreError(e.errno, f"mount {cid} ({c['mountpoint']}): attaching it: {e.strerror}") from None
        self._moved.add(cid)
        if self._filling_now():
            ns_id = self.ns_of_mount[cid]
            self.attached_in[ns_id] = self.attached_in.get(ns_id, 0) + 1
        if kept:
            self.mp_fd[cid] = mp  # open_at reaches what c covers through it
        elif own:
            os.close(mp)

    def _attach_by_name(self, parent: dict, c: dict) -> bool:
        """Move c (a superblock's root: a directory) onto a mount point one name below its parent's
        root, by that name: one call where opening the mount point first took three (open, move,
        close; the kernel floor's way). Safe for one name: move_mount follows no symlink in its last
        component (without MOVE_MOUNT_T_SYMLINKS) nor automounts, and a directory never goes onto a
        non-directory. False (nothing done) for longer paths or when the move fails: then the
        mount point is opened beneath the parent as usual, which says what is wrong."""
        rel = rel_to(c["mountpoint"], parent["mountpoint"])
        if "/" in rel:
            return False
        pfd, cid = self.mnt_fd[parent["id"]], c["id"]
        self._premake_dir(parent["sb"], pfd, rel)
        try:
            kernel.move_mount(self.mnt_fd[cid], "", pfd, rel, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        except OSError:
            return False
        self._moved.add(cid)
        if self._filling_now():
            ns_id = self.ns_of_mount[cid]
            self.attached_in[ns_id] = self.attached_in.get(ns_id, 0) + 1
        return True

    def keep_mountpoints(self, parent: dict, c: dict) -> None:
        """Open the mount points in `parent` that a mount at c's mount point is about to cover (children
        of parent not attached yet beneath it), so that they are attached there later all the same."""
        rels = self._sorted_rels.get(parent["id"])
        if rels is None:
            rels = [(rel_to(k["mountpoint"], parent["mountpoint"]), k["id"]) for k in self.children[parent["id"]]]
            # None of them beneath another (most parents): nothing is ever at risk, () says so.
            rels = self._sorted_rels[parent["id"]] = sorted(rels) if any(r == "" or "/" in r for r, _ in rels) else ()
        if not rels:
            return
        rel = rel_to(c["mountpoint"], parent["mountpoint"])
        if rel == "":
            at_risk = [k for _, k in rels]
        else:
            lo = bisect.bisect_left(rels, (rel + "/", -1))
            hi = bisect.bisect_left(rels, (rel + "0", -1))  # "0" sorts right after "/"
            at_risk = [k for _, k in rels[lo:hi]]
        for k in at_risk:
            if k != c["id"] and k not in self.mp_fd and k not in self._moved:
                self.mp_fd[k] = self._mountpoint_fd(parent, self.mounts[k])
                if self.keep_dirs:
                    up = os.path.dirname(rel_to(self.mounts[k]["mountpoint"], parent["mountpoint"]))
                    pfd = self.mnt_fd[parent["id"]]
                    self.mp_dir[k] = kernel.openat2(pfd, up, os.O_PATH | os.O_DIRECTORY,
                                                    _BENEATH | kernel.RESOLVE_NO_XDEV) if up else os.dup(pfd)

    # -- 5. sharing -----------------------------------------------------------------

    def _fd_for(self, m: dict) -> tuple[int, bool]:
        """(fd on attached mount m, whether the caller must close it): kept, or found again by path."""
        if m["id"] < 0:
            return m["fd"], False
        fd = self.mnt_fd.get(m["id"])
        if fd is not None:
            return fd, False
        ns_id = self.ns_of_mount[m["id"]]
        self.enter(ns_id)
        root = self.mnt_fd[self.doc["mntns"][ns_id]["root"]]
        rel = m["mountpoint"].lstrip("/")
        try:
            fd = kernel.openat2(root, rel, os.O_PATH, _BENEATH | kernel.RESOLVE_NO_MAGICLINKS) if rel else os.dup(root)
        except OSError as e:
            raise RestoreError(e.errno, f"mount {m['id']} ({m['mountpoint']}): cannot reach it again: "
                                        f"{e.strerror}") from None
        if kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH) != self.new_id.get(m["id"]):
            os.close(fd)
            raise RestoreError(errno.EIO, f"mount {m['id']} ({m['mountpoint']}): its path leads to another mount")
        return fd, True

    def set_propagation(self, m: dict, prop: int) -> None:
        """Change the propagation of an attached mount, from inside its namespace."""
        fd, close = self._fd_for(m)
        self._enter_for(m)
        try:
            if self.legacy:
                os.fchdir(self.hostproc)
                kernel.mount(None, f"self/fd/{fd}", None, prop)
                os.chdir("/")
            else:
                kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, propagation=prop)
        except OSError as e:
            raise RestoreError(e.errno, f"mount {m['id']} ({m['mountpoint']}): setting propagation: "
                                        f"{e.strerror}") from None
        finally:
            if close:
                os.close(fd)

    def restore_sharing(self) -> None:
        """Execute the sharing plan (engine.sharing, made in _plan_fds) on the attached mounts."""
        props = {"slave": kernel.MS_SLAVE, "shared": kernel.MS_SHARED, "unbindable": kernel.MS_UNBINDABLE}
        try:
            for op in self.sharing_ops:
                if op[0] == "helper":
                    self._helper(op[1], op[2])
                elif op[0] == "drop":
                    self._drop_helper(op[1])
                elif op[0] in props:
                    self.set_propagation(self._mount(op[1]), props[op[0]])
                else:
                    self._set_group(op)
                if _FAULT_AT:   # (a call a mount saved when no fault is injected)
                    step("group")
        finally:
            for hid in list(self.helpers):
                self._drop_helper(hid)
            for fd in self.helper_src.values():
                os.close(fd)
            self.helper_src.clear()

    def _mount(self, mid: int) -> dict:
        return self.helpers[mid] if mid < 0 else self.mounts[mid]

    def _set_group(self, op: tuple) -> None:
        """("set_group", src, dst), ("set_group_via", src, dst) or ("external", dst, master):
        MOVE_MOUNT_SET_GROUP into dst."""
        if op[0] == "set_group":
            dst = self._mount(op[2])
            src, close_src = self._fd_for(self._mount(op[1]))
        elif op[0] == "set_group_via":
            dst = self._mount(op[2])
            src, close_src = self._clone_beside(self._mount(op[1]), dst), True
        else:
            dst = self._mount(op[1])
            src, close_src = self._external_master(dst, op[2]), True
        try:
            dfd, close_dst = self._fd_for(dst)
        except RestoreError:
            if close_src:
                os.close(src)
            raise
        self._enter_for(dst)
        try:
            kernel.move_mount(src, "", dfd, "", _SET_GROUP)
        except OSError as e:
            why = f"copying the sharing of mount {op[1]}" if op[0] == "set_group" else \
                f"copying the sharing of mount {op[1]} (through a clone of it at this root)" if op[0] == "set_group_via" \
                else f"joining external master group {op[2]}"
            raise RestoreError(e.errno, f"mount {dst['id']} ({dst['mountpoint']}): {why}: {e.strerror}") from None
        finally:
            if close_src:
                os.close(src)
            if close_dst:
                os.close(dfd)

    def _clone_beside(self, src: dict, dst: dict) -> int:
        """A detached clone of mount src rooted at dst's root, which src's root does not cover: a
        member of src's peer group (a clone of a shared mount is its peer; of a slave, a slave of
        the same master). dst's root is reached through src by its file handle (open_by_handle_at
        gives a path of src's mount at any dentry of the filesystem)."""
        sfd, close_s = self._fd_for(src)
        try:
            dfd, close_d = self._fd_for(dst)
            try:
                htype, handle, _ = kernel.name_to_handle_at(dfd, "", kernel.AT_EMPTY_PATH)
            finally:
                if close_d:
                    os.close(dfd)
            # (the mount fd of open_by_handle_at must not be an O_PATH fd)
            mfd = os.open(f"self/fd/{sfd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.hostproc)
            try:
                at = kernel.open_by_handle_at(mfd, htype, handle, os.O_PATH)
            finally:
                os.close(mfd)
            try:
                self._enter_for(src)   # a mount is cloned from its own namespace
                return kernel.open_tree(at, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
            finally:
                os.close(at)
        except OSError as e:
            raise RestoreError(e.errno, f"mount {dst['id']} ({dst['mountpoint']}): a clone of mount {src['id']} at "
                                        f"its root {dst['root']}: {e.strerror}") from None
        finally:
            if close_s:
                os.close(sfd)

    def _enter_for(self, m: dict) -> None:
        """Stand where changes to m's propagation are allowed: its namespace (helpers: the service one)."""
        if m["id"] < 0:
            self.to_service()
        else:
            self.enter(self.ns_of_mount[m["id"]])

    def _helper(self, hid: int, sid: str) -> None:
        """A private mount of superblock sid's root to start a peer group with (see engine.sharing).
        Detached where its propagation can be changed so (mount_setattr on Linux >= 6.15), else
        attached in a yard of the service namespace."""
        try:
            # mount(2) (no mount_setattr) changes propagation of attached mounts only.
            if self.helper_yard is None and (self.yard is not None or self.legacy):
                self.to_service()
                self.helper_yard = self.yard if self.yard is not None else _make_yard()
            if self.helper_yard is not None:
                self.to_service()  # attached sources clone only from their own namespace
            fd = kernel.open_tree(self.helper_src[sid], "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
            if self.helper_yard is not None:
                os.mkdir(f"helper{-hid}", 0o700, dir_fd=self.helper_yard)
                kernel.move_mount(fd, "", self.helper_yard, f"helper{-hid}", kernel.MOVE_MOUNT_F_EMPTY_PATH)
        except (OSError, KeyError) as e:
            raise RestoreError(getattr(e, "errno", None) or errno.EIO,
                               f"superblock {sid}: a helper mount of its root for its peer group: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        self.helpers[hid] = {"id": hid, "sb": sid, "root": "/", "fd": fd,
                             "mountpoint": f"(helper of superblock {sid})"}

    def _drop_helper(self, hid: int) -> None:
        h = self.helpers.pop(hid, None)
        if h is None:
            return
        try:
            if self.helper_yard is not None:
                self.to_service()
                os.fchdir(self.hostproc)  # the host /proc's self/fd/N names the helper itself
                try:
                    kernel.umount2(f"self/fd/{h['fd']}", kernel.MNT_DETACH)
                finally:
                    os.chdir("/")
        finally:
            os.close(h["fd"])

    def _external_master(self, m: dict, master: int) -> int:
        """An fd on a host mount (in the service namespace) that is in or a slave of external group `master`."""
        for e in self.mounts.values():
            if e.get("external") and e["sb"] == m["sb"] and (e.get("master") == master or e.get("shared") == master):
                return os.dup(self.ext_host[e["id"]])
        raise RestoreError(errno.EOPNOTSUPP, f"mount {m['id']} ({m['mountpoint']}): its master group {master} is "
                                             "outside the image and no --external mount gives it")

    def open_at(self, mnt: int, path: str, flags: int) -> int:
        """Open `path` (relative to mount `mnt`'s root) on that very mount, even if covered; never
        blocking (a FIFO of the image where it has a file must not hang restore). A host's file
        (an external mount's) opened for a process of a rootless tree (`_opening_for`) is opened
        only as far as that tree's user could (engine/userns.py host_gate), not as root."""
        return self.host_reach(self._open_as)(mnt, lambda: self._open_at(mnt, path, os.O_PATH | os.O_CLOEXEC),
                                              lambda: kernel.open_unblocked(lambda f: self._open_at(mnt, path, f),
                                                                            flags),
                                              lambda: self._dirs_to(mnt, path))

    def _dirs_to(self, mnt: int, path: str) -> list[int]:
        """O_PATH fds (the caller's) on each directory a walk to `path` on mount `mnt` searches, from
        the mount's root down to the file's own directory (userns.dirs_to)."""
        from engine import userns
        return userns.dirs_to(lambda sub, f: self._open_at(mnt, sub, f), path)

    def host_reach(self, gate):
        """reach(mnt, at, fn, dirs=None) -> fn(), run as root where `gate` (userns.host_gate's, or
        None) lets it: on a mount `mnt` of the host, by userns.reach's rule (fn as the gate's user
        first; denied that, as root only on a file of ids the tree's outermost owned user namespace
        maps, at(), reached through directories, dirs(), its user may search or of mapped ids)."""
        if gate is None:
            return lambda mnt, at, fn, dirs=None: fn()
        from engine import userns
        host, users = self._host_ids(), self.doc.get("userns") or {}

        def reach(mnt, at, fn, dirs=None):
            if mnt not in host:
                return fn()
            return userns.reach(gate[1], lambda st: userns.maps_file(gate[0], users, st), fn, at, dirs)
        return reach

    def _mount_gates(self, m: dict) -> list:
        """The gates (userns.host_gate's) of the rootless trees that see mount `m`: its namespace's
        owner's; for a detached mount (no namespace of its own) every process's."""
        from engine import userns
        users = self.doc.get("userns") or {}
        if m["id"] in self.detached:
            names = {p.get("userns") for p in self.doc["processes"]}
        else:
            ns = self.ns_of_mount[m["id"]]
            names = {self.doc["mntns"][ns].get("owner")} | {p.get("userns") for p in self.doc["processes"]
                                                           if p["ns"]["mnt"] == ns}
        gates = (userns.host_gate({"userns": n}, users, self._owner_ids) for n in names if n is not None)
        return list({g[0]: g for g in gates if g is not None}.values())

    def _check_host_root(self, m: dict, src: int, rel: str) -> None:
        """Mount `m` of the host's files shows directory `rel` of an external mount (`src`, its clone)
        to a rootless tree: only when that tree's user could walk to it (each directory above it one
        it may search, no symlink on the way). A bind of a subdirectory skips the search checks of
        the directories above it: root's 0700 /root/x would be open to the tree."""
        if not rel.strip("/"):
            return   # (the external mount's own root: nothing above it to search; no gates looked for)
        self._check_walk(self._mount_gates(m), src, rel,
                         f"mount {m['id']} ({m.get('mountpoint', 'detached')}): its root {m['root']}")

    def _check_walk(self, gates: list, src: int, rel: str, what: str) -> None:
        """Refuse (`what` lies beneath...) unless the user of each of `gates` could walk from `src` (an
        fd on a directory) to `rel` beneath it: each directory above `rel` one it may search."""
        parts = [x for x in rel.split("/") if x]
        if not parts:
            return
        users = self.doc.get("userns") or {}
        from engine import userns
        for gate in gates:
            if not userns.may_walk(gate[1], src, rel, lambda st, g=gate: userns.maps_file(g[0], users, st),
                                   _BENEATH | kernel.RESOLVE_NO_XDEV):
                raise RestoreError(errno.EACCES, f"{what} lies beneath a directory of the host's that its "
                                                 f"rootless tree's user (uid {gate[1][0]}) may not search")

    def check_host_layer(self, sid: str, sb: dict, layer: dict, rel: str, where: str) -> None:
        """For a type's `create` hook: refuse superblock `sid`'s layer directory `rel` on mount `layer`
        when that is a mount of the host's files and a rootless tree sees the superblock, unless the
        tree's user could make it so: as its own namespace's root (never with root's credentials,
        which would read and copy up what it may not), through directories it may search."""
        if layer["id"] not in self._host_ids():
            return
        from engine import userns
        users = self.doc.get("userns") or {}
        gates = [g for m in itertools.chain(self.mounts.values(), self.detached.values()) if m["sb"] == sid
                 for g in self._mount_gates(m)]
        if not gates:
            return
        if sb.get("owner") is None or userns.owned_top(sb["owner"], users) is None:
            raise RestoreError(errno.EACCES, f"{where}: made with root's credentials on a layer of the host's "
                                             f"mount {layer['id']}, for a rootless tree whose user could not make it")
        base, root_rel = self.source_of(layer)
        self._check_walk(gates, base, "/".join(x for x in (root_rel, rel.strip("/")) if x),
                         f"{where}: its layer directory {rel} on mount {layer['id']}")

    def _host_ids(self) -> frozenset:
        if self._host_mount_ids is None:
            self._host_mount_ids = self._host_mounts()
        return self._host_mount_ids

    def _opening_for(self, p: dict | None) -> None:
        """The process whose files open_at opens from now on (None: restore's own)."""
        from engine import userns   # (userns_cr's already)
        self._open_as = None if p is None else userns.host_gate(p, self.doc.get("userns") or {}, self._owner_ids)

    def _open_at(self, mnt: int, path: str, flags: int) -> int:
        parts = [x for x in path.split("/") if x]
        if mnt in self.detached:
            if parts:
                return kernel.openat2(self.mnt_fd[mnt], "/".join(parts), flags, _BENEATH | kernel.RESOLVE_NO_XDEV)
            return self._reopen_root(self.mnt_fd[mnt], flags)
        by_rel = self._child_rel.get(mnt)
        if by_rel is None:
            mpoint = self.mounts[mnt]["mountpoint"]
            by_rel = self._child_rel[mnt] = {rel_to(c["mountpoint"], mpoint): c["id"]
                                             for c in self.children.get(mnt, ())}
        base, rest = self.mnt_fd[mnt], parts
        for k in range(len(parts), 0, -1):
            cid = by_rel.get("/".join(parts[:k]))
            if cid is not None:
                base, rest = self.mp_fd[cid], parts[k:]
                break
        if rest:
            return kernel.openat2(base, "/".join(rest), flags, _BENEATH | kernel.RESOLVE_NO_XDEV)
        return self._reopen_root(base, flags)

    def _reopen_root(self, fd: int, flags: int) -> int:
        """A new description of what our `fd` is on (a mount's root, or a covered mount point),
        through /proc/self/fd/N; a directory opened with O_NOFOLLOW (LXC's monitor holds one
        O_PATH|O_NOFOLLOW) as "." beneath it instead: that flag would open the magic link
        itself. (A file root drops the flag, as a ghost does: _open_ghost.)"""
        if flags & os.O_NOFOLLOW and stat.S_ISDIR(os.fstat(fd).st_mode):
            return kernel.openat2(fd, ".", flags | os.O_CLOEXEC, _BENEATH | kernel.RESOLVE_NO_XDEV)
        return os.open(f"self/fd/{fd}", (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC, dir_fd=self.hostproc)

    def place_processes(self) -> None:
        self._fds = FdMaker(self.doc.get("objects") or {}, self.open_at, self.hostproc, self._open_ghost,
                            self.hostpid.get, self._ns_fd_of, lambda: self.host_reach(self._open_as))
        if any(f.get("kind") == "pty" for p in self.doc["processes"] for f in p["fds"]):
            from engine.fds import pty
            self._fds.state[pty.HOST_MOUNTS] = self._host_mounts()
        for dev, opened in self.made.items():   # (closed with the fd stage's own, once all hold theirs)
            self._fds.state[("made", dev)] = dict(opened)
            self._fds.keep.extend(opened.values())
        self._netfilter_late()
        try:
            self._place_processes()
            try:
                self._fds.set_owners()
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, str(e.strerror or e)) from None
        finally:
            self._fds.close()

    def _ns_fd_of(self, nsid: str) -> int | None:
        """Our fd on restored namespace `nsid` of the image ("net-1"), or None (for fds on namespaces)."""
        kind = nsid.partition("-")[0]
        if kind == "user":
            return self.users.fd.get(nsid)
        return self.ns_fd.get(nsid) if kind == "mnt" else self.nsfd_of.get((kind, nsid))

    def _open_ghost(self, gid: str, flags: int, mnt: int, path: str | None = None) -> int:
        """A new description of ghost `gid` (unlinked at restore too) on mount `mnt`: reopened from the
        fd taken through that mount while it had its name `path` (any of its names when None)."""
        at = self.ghost_fd.get((gid, mnt, path))
        if at is None:
            at = next(fd for (g, m, _), fd in self.ghost_fd.items() if g == gid and m == mnt)
        # Through /proc/self/fd/N, which O_NOFOLLOW would open as the magic link itself (O_PATH) or
        # refuse (ELOOP): left out, an open-time flag only (LXC holds .lxc_keep so; zdtm/snapshot.py).
        return kernel.open_unblocked(lambda f: os.open(f"self/fd/{at}", (f & ~os.O_NOFOLLOW) | os.O_CLOEXEC,
                                                       dir_fd=self.hostproc), flags)

    def _place_processes(self) -> None:
        # Every stand-in enters its root first: some objects are made before any fd (a socket pair
        # connected through a listener's name binds that name where the holder sees it).
        for p in self.doc["processes"]:
            self._enter(p)
        try:
            self.users.send_outer_maps(self.chans)
            self._fds.prepare(self.doc["processes"], self.chans)
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, f"fds: {e.strerror or e}") from None
        deferred: list = []
        try:
            for p in self.doc["processes"]:
                chan = self.chans[p["pid"]]
                where = f"process {p['pid']}"
                self._opening_for(p)
                self._place_fds(p, chan, where, deferred)
                step("process")
            for p, later, after in deferred:   # (every process holds its other fds now)
                chan, where = self.chans[p["pid"]], f"process {p['pid']}"
                self._opening_for(p)
                after += self._place_fd_list(p, later, chan, where)
                self._map_files(p, chan, where)
                self._attach_shm(p, chan, where)
                self._after_fds(after, chan, where)
        finally:
            self._opening_for(None)
        try:
            self._fds.finish()
        except OSError as e:
            raise RestoreError(e.errno or errno.EIO, str(e.strerror or e)) from None

    def _enter(self, p: dict) -> None:
        """Put process p's stand-in into its mount namespace, root and cwd."""
        dead = next((loc for loc in (p["cwd"], p["root"]) if "dead_pid" in loc), None)
        if dead is None:
            self._enter_now(p)
            return
        try:   # (/proc/N of a process gone: entered while N is ours again, engine/deadpid.py)
            deadpid.hold(self.open_at, self.hostproc, dead["mnt"], dead["dead_pid"], lambda: self._enter_now(p))
        except OSError as e:
            raise RestoreError(e.errno, f"process {p['pid']}: root or cwd: {e.strerror or e}") from None

    def _enter_now(self, p: dict) -> None:
        chan = self.chans[p["pid"]]
        self._opening_for(p)
        try:
            ns_fd, root, cwd = self._root_cwd(p)
        finally:
            self._opening_for(None)
        try:
            # (one in it already, maybe inside a user namespace that does not own it, only chroots)
            chan.call(("enter", self.entered.get(p["pid"]) == p["ns"]["mnt"]), [ns_fd, root, cwd])
        finally:
            os.close(root)
            os.close(cwd)

    def _root_cwd(self, p: dict) -> tuple[int, int, int]:
        """(our fd on p's mount namespace, new fds on its root and cwd) for its stand-in to enter."""
        if p.get("enter_first") and ("dead_pid" in p["root"] or "dead_pid" in p["cwd"]):
            raise RestoreError(errno.EINVAL, f"process {p['pid']}: its root or cwd lies in /proc of a process "
                                             "gone, and it enters its mount namespace first")
        try:
            root, cwd = (self._open_ghost(loc["ghost"], os.O_PATH | os.O_DIRECTORY, loc["mnt"], loc["path"])
                         if loc.get("ghost")
                         else self.open_at(loc["mnt"], loc["path"], os.O_PATH | os.O_DIRECTORY)
                         for loc in (p["root"], p["cwd"]))
        except OSError as e:
            raise RestoreError(e.errno, f"process {p['pid']}: root or cwd: {e.strerror or e}") from None
        return self.ns_fd[p["ns"]["mnt"]], root, cwd

    def _place_fds(self, p: dict, chan, where: str, deferred: list) -> None:
        """Make process p's fds (engine/fds/), install them at their numbers, map its files; when some
        are made only once every process holds its fds, (p, those, the steps after the others) is
        added to `deferred` instead of mapping (`_place_processes` finishes it)."""
        now = [f for f in p["fds"] if not fdkinds.deferred(f)]
        after = self._place_fd_list(p, now, chan, where)
        if len(now) < len(p["fds"]):
            # Its files are mapped once all its fds are in (the stand-in's executable takes a free number).
            deferred.append((p, [f for f in p["fds"] if fdkinds.deferred(f)], after))
            return
        self._map_files(p, chan, where)
        self._attach_shm(p, chan, where)
        self._after_fds(after, chan, where)

    def _attach_shm(self, p: dict, chan, where: str) -> None:
        """Have the stand-in attach the System V segments the process attached (engine/shmattach.py):
        their ipc namespace holds them again (make_sysvipc)."""
        if p.get("shm"):
            creds = p.get("creds")
            try:
                chan.call(("shmat", p["shm"], creds and (creds["uid"][1], creds["gid"][1])))
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None

    def _after_fds(self, after: list, chan, where: str) -> None:
        """Run the stand-in steps of fds installed (FdMaker.after: epoll registrations)."""
        for kind, fn, args in after:
            try:
                chan.call(("kind", kind, fn, args))
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"{where}: {kind}: {e.strerror or e}") from None

    def _place_fd_list(self, p: dict, entries: list, chan, where: str) -> list:
        """Make the fd `entries` of process p and install them at their numbers; return the stand-in
        steps to run after (`_after_fds`)."""
        batch_items, batch_fds = [], []

        def flush():
            if batch_items:
                try:
                    chan.call(("fds", list(batch_items)), batch_fds)
                finally:
                    for fd in batch_fds:
                        os.close(fd)
                batch_items.clear()
                batch_fds.clear()

        after = []
        for f in entries:
            try:
                ext = self.ext_files.pop((p["pid"], f["fd"]), None)
                if ext is not None:
                    fd, first = ext, False  # --external file[KEY]:HOSTPATH, opened on the host before assembly
                    self._fds.give_owner(fd, f, f"{where} fd {f['fd']} (file)")
                else:
                    fd, first = self._fds.open(f, chan, f"{where} fd {f['fd']} ({f.get('kind', 'file')})")
            except OSError as e:
                what = f"{f['path']} on mount {f['mnt']}: " if "mnt" in f else ""
                raise RestoreError(e.errno or errno.EIO, f"{where} fd {f['fd']} ({f.get('kind', 'file')}): "
                                                         f"{what}{e.strerror or e}") from None
            if first and (todo := self._fds.after(f)) is not None:
                after.append(todo)
            batch_items.append((f["fd"], bool(f["flags"] & _O_CLOEXEC_DUMPED)))
            batch_fds.append(fd)
            if len(batch_items) >= channel.MAX_FDS:
                flush()
        flush()
        return after

    def _map_files(self, p: dict, chan, where: str) -> None:
        """Have the stand-in map the files the process mapped (and its executable), from their mounts."""
        locs = {(m["mnt"], m["path"]): m for m in [*p.get("maps", ()), *([p["exe"]] if "exe" in p else [])]}
        todo = list(locs.values())
        for i in range(0, len(todo), channel.MAX_FDS):
            fds = []
            try:
                for m in todo[i:i + channel.MAX_FDS]:
                    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
                    try:
                        fds.append(self._open_ghost(m["ghost"], flags, m["mnt"], m["path"]) if m.get("ghost")
                                   else self.open_at(m["mnt"], m["path"], flags))
                    except OSError as e:
                        raise RestoreError(e.errno, f"{where}: mapped file {m['path']} on mount {m['mnt']}: "
                                                    f"{e.strerror or e}") from None
                chan.call(("map",), fds)
            finally:
                for fd in fds:
                    os.close(fd)
        if "exe" in p:
            e = p["exe"]
            try:
                flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
                fd = (self._open_ghost(e["ghost"], flags, e["mnt"], e["path"]) if e.get("ghost")
                      else self.open_at(e["mnt"], e["path"], flags))
            except OSError as err:
                raise RestoreError(err.errno, f"{where}: executable {e['path']} on mount {e['mnt']}: "
                                              f"{err.strerror or err}") from None
            try:
                chan.call(("exe",), [fd])
            finally:
                os.close(fd)

    def take_locks(self) -> None:
        """Each stand-in takes its process's file locks (engine/filelocks.py), once every process holds
        its fds and the restorer let go of its own: leases last, after every open of restore (an
        open for writing breaks a read lease). A lock on another process's fd (`of`) is taken first,
        on a copy of that fd (pidfd_getfd) that is closed once taken: a close drops the closer's POSIX
        locks on that file, so those come after. A flock lock whose taker is gone (`gone`) is taken
        here, by the restorer, on a copy of its holder's fd: the restorer exits too, as its taker did."""
        for p in self.doc["processes"]:
            for lk in p.get("locks") or ():
                if lk.get("gone"):
                    copy = self._copy_fd(p["pid"], lk["fd"])
                    try:
                        filelocks.take([dict(lk, sent=0)], [copy])
                    except OSError as e:
                        raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: {e.strerror or e}") from None
                    finally:
                        os.close(copy)
        phases = (lambda lk: "of" in lk, lambda lk: "of" not in lk and lk["type"] != "lease" and not lk.get("gone"),
                  lambda lk: lk["type"] == "lease")
        for phase in phases:
            for p in self.doc["processes"]:
                todo = [lk for lk in p.get("locks") or () if phase(lk)]
                if not todo:
                    continue
                items, sent = [], []
                try:
                    for lk in todo:
                        if "of" in lk:
                            sent.append(self._copy_fd(lk["of"], lk["fd"]))
                            lk = dict(lk, sent=len(sent) - 1)
                        items.append(lk)
                    self.chans[p["pid"]].call(("locks", items), sent)
                except OSError as e:
                    raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: {e.strerror or e}") from None
                finally:
                    for fd in sent:
                        os.close(fd)

    def _copy_fd(self, pid: int, fd: int) -> int:
        """Our copy of fd `fd` of the stand-in of image process `pid`."""
        pidfd = kernel.pidfd_open(self.hostpid[pid])
        try:
            return fsys.pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)

    def loginuids(self) -> None:
        """Each stand-in whose process had another login uid than the dumper sets it, through an
        fd we open on its /proc/PID/loginuid (engine/loginuid.py)."""
        for p in self.doc["processes"]:
            if "loginuid" in p:
                fd = os.open(f"{self.hostpid[p['pid']]}/loginuid", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.hostproc)
                try:
                    self.chans[p["pid"]].call(("loginuid", p["loginuid"]), [fd])
                except OSError as e:
                    raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: {e.strerror or e}") from None
                finally:
                    os.close(fd)

    def seccomp(self) -> None:
        """Each stand-in gets its process's seccomp filters (engine/seccomp.py), which it installs
        as its last step, or before it takes its ids (`seccomp.late`)."""
        for p in self.doc["processes"]:
            if p.get("seccomp"):
                if not seccomp.late(p):
                    # (its later steps run under the image's filters, which may deny its answers: a
                    # stand-in left spinning, every system call denied, would hang the restore)
                    self.chans[p["pid"]].sock.settimeout(seccomp.ANSWER_TIMEOUT)
                try:
                    self.chans[p["pid"]].call(("seccomp", p["seccomp"], seccomp.late(p)), [])
                except OSError as e:
                    raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: {e.strerror or e}") from None

    def sched(self) -> None:
        """Each stand-in's scheduling attributes, set from here once every stand-in exists and
        before any makes its threads, and its personality, which it sets itself before its
        seccomp filters may deny that (engine/schedattrs.py)."""
        from engine import userns
        users = self.doc.get("userns") or {}
        for p in self.doc["processes"]:
            if "sched" in p:
                why = userns.owned_top(p.get("userns"), users) and schedattrs.beyond_user(p["sched"], p.get("rlimits"))
                if why:
                    raise RestoreError(errno.EPERM, f"process {p['pid']}: {why}, which its rootless tree's user "
                                                    "could not give it: an image of a rootless tree gets no more "
                                                    "than its user could; dump it again after that change")
                try:
                    schedattrs.apply(self.hostpid[p["pid"]], p["sched"], self.hostproc)
                    if p["sched"]["personality"] != schedattrs.personality(self.hostpid[p["pid"]], self.hostproc):
                        self.chans[p["pid"]].call(("personality", p["sched"]["personality"]), [])
                except OSError as e:
                    raise RestoreError(e.errno or errno.EIO, f"process {p['pid']}: {e.strerror or e}") from None

    def _pdeathsig(self, p: dict) -> dict:
        """{"pdeathsig": sig} for its stand-in to take as it detaches, when its parent is its
        parent's stand-in, which stays (engine/pdeathsig.py); else nothing (a helper of ours that
        exits would signal it)."""
        if "pdeathsig" not in p or p.get("ppid") not in self.hostpid:
            return {}
        try:
            fd = os.open(f"{self.hostpid[p['pid']]}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.hostproc)
            try:
                ppid = int(os.read(fd, 4096).rsplit(b")", 1)[1].split()[1])
            finally:
                os.close(fd)
        except (OSError, ValueError, IndexError):
            return {}
        return {"pdeathsig": p["pdeathsig"]} if ppid == self.hostpid[p["ppid"]] else {}

    def detach(self, lifeline: int) -> None:
        """Every stand-in drops its channel, children first, each telling how its last steps went
        (engine/lastword.py: a failed one fails the restore); the root takes the lifeline and tells on
        it once the restore commits (standin.py, `restore`)."""
        procs = self.doc["processes"]
        self._hand_kin()
        detached: list[int] = []
        try:
            for p in reversed(procs):
                detached.append(p["pid"])
                self._detach_one(p, lifeline)
        except BaseException:
            # (a detached stand-in no longer dies with us, its PDEATHSIG cleared, and the root, whose
            # lifeline kills the tree, is detached last: one that did not end (silent, spinning under
            # its seccomp filters, stopped from outside) would be left running)
            for pid in detached:
                try:
                    os.kill(self.hostpid[pid], signal.SIGKILL)
                except OSError:
                    pass
            raise

    def _detach_one(self, p: dict, lifeline: int) -> None:
        """Stand-in p drops its channel and takes its last steps (`detach`); RestoreError when one failed."""
        procs = self.doc["processes"]
        chan = self.chans[p["pid"]]
        why = None
        try:
            shown = procargs.send(chan.call, procargs.decoded(p))
            chan.call(("detach", p.get("comm"), p.get("caps"),
                       [(t["comm"], t.get("sig_blocked")) for t in p.get("threads") or ()],
                       {k: p[k] for k in ("umask", "no_new_privs", "rlimits", "sig_ignored", "sig_blocked",
                                              "sig_pending", "sig_pending_shared", "child_subreaper", "thp_disable",
                                              "posix_timers", "itimers", "timer_sig_caught") if k in p} | self._pdeathsig(p)
                       | ({"args": shown} if shown else {})),
                      [lifeline] if p is procs[0] else [])
            if p is not procs[0]:
                chan.sock.settimeout(60)   # (a few system calls: a stand-in stopped from outside must not hang us)
                try:
                    why = lastword.explain(lastword.hear(chan.sock))
                except TimeoutError:   # (not call's: "no answer in 60 s" to the detach itself)
                    why = (errno.ETIMEDOUT, "it did not tell how its last steps went in 60 s")
        except OSError as e:
            why = (e.errno or errno.EIO, str(e.strerror or e))   # (str(e): "[Errno N]" twice)
        except channel.ChannelClosed:   # (killed, or its answer denied by its seccomp filters)
            why = (errno.EIO, "it ended before it answered its detach")
        if why:
            raise RestoreError(why[0], f"process {p['pid']}: {why[1]}")


    def _hand_kin(self) -> None:
        """Give the root stand-in a pidfd of each stand-in outside its process group (another
        session or group: engine/sessions.py), which it kills with the tree when the restore does
        not commit (its killpg misses them); none when it is init of its pid namespace."""
        procs = self.doc["processes"]
        root = procs[0]
        if sessions.pid_in(self.hostpid[root["pid"]], self.hostpid[root["pid"]], self.hostproc) == 1:
            return
        away = [self.hostpid[p["pid"]] for p in procs[1:] if p.get("pgid", root.get("pgid")) != root.get("pgid")]
        for i in range(0, len(away), channel.MAX_FDS):
            pidfds = [kernel.pidfd_open(hp) for hp in away[i:i + channel.MAX_FDS]]
            try:
                self.chans[root["pid"]].call(("kin",), pidfds)
            finally:
                for fd in pidfds:
                    os.close(fd)


def _restorer(doc: dict, img_fd: int, ext: dict[str, str], lifeline: tuple[int, int],
              ahead=None) -> tuple[int, list[int]]:
    """The restorer process body; MNTCR_PROFILE=FILE writes its cProfile there (benchmarks). Returns
    the root stand-in's pid and those of the processes stopped at dump (stopped after the commit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die at once; stand-ins and helpers die with us
    os.close(lifeline[0])  # the committing end stays with `mntcr restore` alone
    # An fd on an image's tty node (5:0, kind file) would be the terminal `mntcr restore` runs in
    # (the user's keystrokes): we, and the stand-ins we fork, have none.
    kernel.drop_ctty()
    out = os.environ.get("MNTCR_PROFILE")
    if not out:
        return _restore_body(doc, img_fd, ext, lifeline[1], ahead)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)  # before we pivot away
    import cProfile   # here, not for every restore; still before the pivot
    prof = cProfile.Profile()
    try:
        return prof.runcall(_restore_body, doc, img_fd, ext, lifeline[1], ahead)
    finally:
        prof.create_stats()
        with os.fdopen(fd, "wb") as f:
            marshal.dump(prof.stats, f)


construct = None   # engine/construct.py, loaded by _load_construct


def _load_construct() -> None:
    """engine/construct.py, for the sharing=construct strategy alone (~1 ms of every restore's
    imports on kernels with MOVE_MOUNT_SET_GROUP): loaded by the restorer at its start, while it
    still sees the host's files (later it enters the restored mount namespaces)."""
    global construct
    from engine import construct as module
    construct = module


def _restore_body(doc: dict, img_fd: int, ext: dict[str, str], lifeline: int,
                  ahead=None) -> tuple[int, list[int]]:
    """The restorer process body (already in its own copy of the host mount namespace); `ahead`:
    the archives read ahead (content.ReadAhead), or None. Returns the root stand-in's pid and those
    of the processes stopped at dump."""
    kernel.set_pdeathsig(signal.SIGKILL)
    # The image (about 20 objects a mount) lives until this process ends and is never changed:
    # out of the collector's sight, a full collection does not walk it (~17 ms each at 10,000
    # mounts) nor write to pages still shared with `mntcr restore`.
    gc.freeze()
    # A slave copy: host mount events still arrive (external masters keep working),
    # nothing we do travels back to the host.
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_SLAVE)
    # (not for a rootless tree's process: its stand-in, in its user namespace, only lowers what it
    # inherits, and its user gets no hard limit above the restorer's)
    from engine import userns
    kernel.raise_hard_limits(p["rlimits"] for p in doc["processes"] if p.get("rlimits")
                             and userns.owned_top(p.get("userns"), doc.get("userns") or {}) is None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * len([m for ns in doc["mntns"].values() for m in ns["mounts"]]) + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    service_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if strategy.current().sharing == "construct":
        _load_construct()
    r = _Restorer(doc, img_fd, ext)
    r.service_fd = service_fd
    r.ahead = ahead
    step("start")
    r._users_call(r.users.make_userns)
    r.start_yard()
    r.create_superblocks(early=True)   # the filling helper, when it can, beside the stand-ins' start
    r.spawn_standins()
    r.make_sysvipc()
    r.make_netvars()
    r.open_externals()
    r.create_superblocks()
    if strategy.current().sharing == "construct":
        construct.assemble(r, service_fd)  # peer groups and masters made while mounting
    else:
        r.assemble(service_fd)
    r.restore_sharing()
    r.join_files()  # processes open files: all of them must be there
    r.seal()
    r.late_standins()
    r.place_processes()
    r.set_attrs()
    r.foreground_jobs()
    r.take_locks()
    r.sched()
    r.loginuids()
    r.pidns_children()
    r.seccomp()   # (installed before the ids: that needs CAP_SYS_ADMIN or no_new_privs)
    r._users_call(r.users.become, r.chans, r.hostproc)
    r.detach(lifeline)
    step("detached")  # the tree is free of PDEATHSIG: only the lifeline still ties it to the restore
    return r.hostpid[doc["processes"][0]["pid"]], [r.hostpid[p["pid"]] for p in doc["processes"] if p.get("stopped")]
