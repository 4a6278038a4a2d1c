"""Dump's refusals told before the tree is stopped: a refusal leaves the tree running and untouched.

Dump stops the tree (SIGSTOP) so that nothing changes while it reads, and
resumes it (SIGCONT) when it refuses; a parent waiting with WUNTRACED or
WCONTINUED, a ptracer or a job-control shell sees that stop. So what a running
tree already shows is checked here first, with the line dump would give:

- the user namespaces (engine/userns_cr.plan: namespaces of two user namespaces);
- per mount namespace, each type's `precheck` hook (engine/fs/: btrfs over several devices, an overlay's
  layers placed as dump's plan places them, a layer whose mount was moved), from
  mountinfo and the mounts' unique ids; mounts of one superblock under two sources
  that restore cannot give back (`check_sources`, dump's own rule);
- dump's mount rules (engine/mountrules.py, asked by dump again): --external
  names that name no mount, a nested namespace's root on layers no mount reaches
  (nspawn --volatile=overlay), roots a new instance lacks (a host pty as
  /dev/console), block devices nobody declared, deleted roots, mounts outside
  every external mount of their filesystem; then propagation restore cannot
  rebuild (dump's `_check_sharing`: external slavery), once which superblocks are
  external is known as dump knows it (`_externals`: not for a block device that
  may be a loop over a file of the dump, or that shows no device number);
- per mount namespace owned by another user namespace, its locks, probed as dump
  probes them (engine/userns_cr.locks: a locked mount covered by a locked mount
  that is shared, as nspawn -U leaves them); the owners of the superblocks a path
  reaches (engine/userns_cr.record_sb_owners: a fuse made inside a user namespace);
- per fd, its kind's `precheck` hook (engine/fds/: an fd no kind handles, inet
  sockets restore cannot make exactly (engine/fds/inet.py), netlink messages waiting, a file of /proc/N/ of a process outside the tree, a
  socket name that is not normalised, data on a connection not yet accepted with
  --leave-running, a datagram from a named sender the tree does not hold,
  fanotify events waiting); each file mapped under a deleted name (engine/mountrules.py
  `deleted_mapping`, asked by dump again);
- files, cwds and roots on detached mounts (lazily unmounted, or of a namespace outside the
  tree) dump would refuse (engine/detached.py `precheck`, `plan`'s questions without its
  archives: a filesystem mounted nowhere visible whose files are not dumped nor made again from
  its layers (a lazily unmounted overlay: its options and layers are read as plan reads them), a file no external
  mount reaches, one that cannot be located; not asked when a namespace was seen only through a
  chrooted process, whose mountinfo leaves out the mounts outside its root);
- a mount of the file of a unix socket a process of the tree is bound to (`_check_socket_binds`);
- file locks restore cannot make exactly (engine/filelocks.py: a process waiting for
  a lock, a write lease, a flock lock whose taker is alive outside the tree);
- System V IPC objects and POSIX message queues of the tree's ipc namespaces beyond what an image
  keeps, a queue a process is notified on (engine/sysvipc.py), and their sysctls an image cannot
  keep (engine/ipcvars.py);
- network namespaces holding what a fresh one lacks: devices, addresses, routes, legacy iptables
  tables (engine/netdevs.py), firewall rules restore would not make (engine/netfilter.py);
- a process whose children go to a pid namespace that holds no process of the tree (engine/zombies.py
  `pidns_children`: its init exited and was reaped);
- a process under SCHED_DEADLINE (engine/schedattrs.py); time namespaces restore cannot make
  (engine/timens.py: one a process made after another of the tree joined it); seccomp strict
  mode, and filters that hand calls to a supervisor (SECCOMP_RET_USER_NOTIF) or deny a call the
  stand-in makes after them (engine/seccomp.py: read last, each process with filters held alone
  for a moment in a ptrace trap, the only interface that shows them); a login uid restore could
  not set (engine/loginuid.py);
- threads with a state of their own (engine/threads.py: an fs, namespaces, ids or
  capabilities other than their process's; checked again once the tree is stopped), and,
  before anything else, a process whose main thread has exited while its threads run.

Everything here only reads (seccomp filters under that brief trap, which sends no signal).
Dump checks everything again once the tree is stopped: that stays the authority for what
changes in between (a process that opens a socket meanwhile), and for what only a stopped
tree shows (a peek with a peek offset, archives, devices).
"""

from __future__ import annotations

import errno
import os
import stat

from engine import (deadpid, detached, fds as fdkinds, filelocks, forkrun, fown, fs, ghosts, inject, kernel, mappings,
                    mountinfo, mountrules, loginuid, netdevs, nsinspect, posixtimers, schedattrs, seccomp, subreaper, sysvipc, threads, timens,
                    userns_cr, zombies)
from engine.dumperror import DumpError
from engine.image import is_beneath
from engine.fds import FdError


class PrestopError(OSError):
    """A refusal told before the tree was stopped (dump raises it as its own DumpError)."""

    def __reduce__(self):
        return (type(self), (self.errno, self.strerror))


class View:
    """What a type's `precheck` hook sees (the fields of dump's plan it may read, from mountinfo)."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.mntns_doc: dict[str, dict] = {}             # ns name -> {"root", "mounts": [entries]}
        self.ns_mounts: dict[str, list] = {}             # ns name -> [engine.mountinfo.Mount]
        self.ns_pids: dict[str, list[int]] = {}          # ns name -> the tree's processes in it
        self.sb_of_dev: dict[str, str] = {}              # "MAJ:MIN" -> sb id
        self.mounts_by_id: dict[int, mountinfo.Mount] = {}
        self.superblocks: dict[str, dict] = {}           # sb id -> {fstype, source, super_opts, dev, external}
        self.unsure: set[str] = set()                    # sb ids whose externality waits for the stopped tree
        self.partial: set[str] = set()                   # ns names whose mountinfo a chrooted process read
        self.members: dict[int, list[tuple[int, bytes]]] = {}   # pid namespace inode -> [(pid there, start)]
        self.pidns_name: dict[int, str] = {}
        self.kept: dict = {}                             # ns name -> nscopy.Kept that read its unique ids
        self.ext_devs: set[str] = set()                  # "MAJ:MIN" of the devices declared --external dev[]
        self.sb_owners: dict[str, str] = {}              # sb id -> the tree's user namespace owning it (_check_sb_owners)

    def want_file(self, sid: str, ino: int, setter, missing: str) -> None:
        """(dump's plan looks for the file while it archives: nothing to look for before the stop)"""

    def dumper_pidns(self) -> str:
        """(dump's plan records the dumper's pid namespace: before the stop only its being allowed counts)"""
        return "pid-dumper"

    def open_sb_mount(self, sid: str) -> int | None:
        """An fd on the root of the first mount of superblock `sid` (as dump probes it: _open_mount),
        or None; the caller closes it."""
        for ns_name, ns in self.mntns_doc.items():
            for e in ns["mounts"]:
                if e["sb"] == sid:
                    return _open_mount(self, ns_name, e)
        return None

    def in_ns_copy(self, ns_name: str, fn, *args):
        """fn(*args) in a forked child standing at the root of a private copy of mount namespace
        `ns_name` (as dump's plan does it: the running tree's namespace itself is not touched)."""
        pids = self.ns_pids[ns_name]
        fd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            from engine import nscopy   # (imported late: it is dump's, and dump imports this module)
            return forkrun.run(nscopy.run_in_copy, fd, pids, fn, args)
        finally:
            os.close(fd)


def ns_names(pids: list[int], kinds) -> dict[tuple[str, int | None], str]:
    """{(kind, namespace inode): its image name} of the namespaces of `kinds` of `pids`, named as
    the image names them: "KIND-N" by first appearance in the tree, parents first (inode None: a
    zombie's, which has none)."""
    names: dict[tuple[str, int | None], str] = {}
    count: dict[str, int] = {}
    for pid in pids:
        for k in kinds:
            key = (k, kernel.ns_ino(pid, k))
            if key not in names:
                names[key] = f"{k}-{count.get(k, 0)}"
                count[k] = count.get(k, 0) + 1
    return names




def _unique_ids(nsfd: int, pids=None) -> dict[int, int]:
    """In a forked child: the unique ids of the mounts of mount namespace `nsfd` (`pids`: nscopy.Kept's)."""
    kernel.setns(nsfd, kernel.CLONE_NEWNS)
    return kernel.unique_ids()


def check(tree: list[tuple[int, int | None]], texts: list[tuple[int, str]], ext_mnts,
          leave_running: bool, ext_files=(), ext_devs=(), ext_veths=None, dead=()) -> dict[str, dict]:
    """Refuse (PrestopError) what the running tree [(pid, ppid)] already shows dump would refuse;
    `texts`: (a pid, its mountinfo) of each mount namespace; fds on `ext_files` (paths declared
    --external file[PATH]) are not looked at; `ext_devs`: devices declared --external dev[MAJ:MIN];
    `ext_veths`: veths declared --external veth[NAME]:KEY ({NAME: KEY}); `dead`: the tree's zombies
    [(pid, ppid)]. Returns the image-like record of each
    mount namespace another user namespace owns, its locks marked ({name: {root, mounts, owner}})."""
    from engine import strategy
    view = View(strategy.current())
    try:
        return _check(view, tree, texts, ext_mnts, leave_running, ext_files, ext_devs, ext_veths, dead)
    finally:
        for kept in view.kept.values():   # (the helpers that read unique ids, let go whatever happened)
            kept.close()


def _check(view: View, tree, texts, ext_mnts, leave_running: bool, ext_files, ext_devs, ext_veths, dead) -> dict:
    """check's body, on `view`."""
    from engine import image
    locks = filelocks.proc_locks()   # (first: before any fork, while read_early's thread may read it)
    strat = view.strategy
    view.ext_devs = set(ext_devs)
    pids = [p for p, _ in tree]
    names = ns_names(pids, image.NS_KINDS)
    try:
        for pid in pids:
            threads.check_leader(pid)   # (first: a process without its main thread shows no namespaces)
    except threads.ThreadError as e:
        raise PrestopError(e.errno, e.strerror) from None
    _check_reachable(pids)
    _check_vfork(pids)
    try:
        users = userns_cr.plan(tree, names, image.NS_KINDS)
        owners = users["mntns_owner"]
    except userns_cr.UsernsError as e:
        raise PrestopError(e.errno or errno.EOPNOTSUPP, str(e) if e.filename else e.strerror or str(e)) from None
    except OSError:
        users = owners = None   # (a process gone meanwhile: dump tells, once the tree is stopped)
    for pid in pids:
        ino = kernel.ns_ino(pid)
        if ino is not None:
            view.ns_pids.setdefault(names[("mnt", ino)], []).append(pid)
    for pid, text in texts:
        ino = kernel.ns_ino(pid)
        if ino is None:
            continue
        name = names[("mnt", ino)]
        mounts = mountinfo.parse(text)
        owned = owners is not None and name in owners
        if strat.ids == "statmount" and (owned or any(_prechecks(m.fstype) for m in mounts)):
            nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            try:
                # (its helper stays for the clones the probes may need there: _open_mounts)
                from engine import nscopy
                view.kept[name] = nscopy.Kept(nsfd, view.ns_pids.get(name) or [pid], _unique_ids)
                mounts = mountinfo.parse(text, view.kept[name].result)
            except (OSError, forkrun.ChildError):
                pass   # (the ids are read again once the tree is stopped)
            finally:
                os.close(nsfd)
        view.ns_mounts[name] = mounts
        view.mntns_doc[name] = _entries(mounts, view)
        try:
            if os.readlink(f"/proc/{pid}/root") != "/":
                view.partial.add(name)   # (its mountinfo leaves out the mounts outside its root)
        except OSError:
            view.partial.add(name)
    _fd_room(view, set(owners or ()))
    try:
        # (locks first: the detached-mount check opens files on the running tree, which breaks a
        # write lease this refuses)
        filelocks.precheck(pids, locks)
        sysvipc.precheck(pids)
        netdevs.precheck(pids, ext_veths)
        schedattrs.precheck(pids)
        schedattrs.precheck_rootless(pids, _rootless_of())
        timens.precheck(pids)
        seccomp.precheck(pids)
        loginuid.precheck(pids)
        posixtimers.check(pids)
        for pid in pids:   # (a pid namespace for children that holds no process)
            zombies.pidns_children(pid, kernel.ns_ino(pid, "pid"), names, dead)
        root_ns = names.get(("mnt", kernel.ns_ino(pids[0])))
        _roots(view)
        _check_types(view, ext_mnts, root_ns)
        _check_mounts(view, ext_mnts, set(ext_devs), root_ns)
        check_sources(view.mntns_doc, _maybe_external(view, ext_mnts, root_ns))
        owned_ns = _check_locks(view, sorted(owners or ()))
        from engine import nscopy   # (imported late: it is dump's, and dump imports this module)
        nscopy.precheck(view, owned_ns)   # (covers the kernel keeps locked)
        _check_sb_owners(view, tree, users)
        from engine import hostfiles   # (a rootless tree's binds of the host's directories: restore's gate)
        hostfiles.check_mount_roots(hostfiles.Gates(), view)
        _check_probes(view, pids, names)
        if users is not None:   # (superblocks restore would make before the late stand-ins they need)
            userns_cr.check_late_superblocks(view.superblocks, view.mntns_doc, users)
        _check_ghost_names(view)
        _check_fds(pids, view, leave_running, set(ext_files))
        _check_socket_binds(pids, view)
        for pid in pids:
            threads.check(pid)
        # (last: it traps each process with filters for a moment; the subreaper check asks the
        # filters it read, so a filtered parent is trapped once)
        subreaper.precheck(pids, seccomp.precheck_filters(pids))
    except (fs.FsError, userns_cr.UsernsError, FdError, threads.ThreadError, DumpError, sysvipc.IpcError,
            schedattrs.SchedError, timens.TimensError, seccomp.SeccompError, loginuid.LoginuidError,
            posixtimers.TimerError, subreaper.SubreaperError, netdevs.NetdevError) as e:
        raise PrestopError(e.errno or errno.EOPNOTSUPP, f"{e.strerror or e}") from None
    return owned_ns


# Fds dump may hold beside one on each mount (its own, a batch's tar, helpers' channels).
FD_MARGIN = 64


def _fd_room(view: View, owned: set[str]) -> None:
    """Dump may hold an fd on each clone it makes once the tree is stopped (archives, ghosts, probes:
    `clones_of`, engine/nscopy.py stream): raise our soft RLIMIT_NOFILE to what they need where the
    tree has more than the soft one allows (as a shell's `ulimit -n` of 1024 under a hard 524288),
    and refuse, before the stop, where the hard one does not allow them either. (Not to the hard one:
    tar and the other programs dump runs inherit it.) Mounts dump clones none of (binds within one
    archived root, external ones, types neither archived nor probed) are not counted; the covered
    directories' views an archived mount of a namespace of `owned` (which user namespaces of the
    tree own) may bring are, at most one for each mount on it."""
    import resource
    mounts_of_sb: dict[str, list[dict]] = {}
    in_owned: set[int] = set()
    for name, ns in view.mntns_doc.items():
        for e in ns["mounts"]:
            mounts_of_sb.setdefault(e["sb"], []).append(e)
            if name in owned:
                in_owned.add(e["id"])
    kids: dict = {}
    for es in mounts_of_sb.values():
        for e in es:
            kids[e.get("parent")] = kids.get(e.get("parent"), 0) + 1
    clones = 0
    for sid, es in mounts_of_sb.items():
        sb = {**view.superblocks[sid], "external": view.superblocks[sid]["external"] and sid not in view.unsure}
        for why, e in clones_of(sb, es, set(kids)):
            # (an archived mount in a namespace a user namespace owns comes with a view of each
            # directory its children cover, nscopy._covered_views: at most one a child)
            clones += 1 + (kids.get(e["id"], 0) if why == "archive" and e["id"] in in_owned else 0)
    need = clones + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise PrestopError(errno.EMFILE, f"dump clones {clones} mounts of the tree and may hold an fd on each, beyond "
                                         f"its RLIMIT_NOFILE of {hard} (hard): raise it to {need} at least (ulimit -Hn "
                                         f"{need}, prlimit --nofile={need}) and dump again")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def clones_of(sb: dict, entries: list[dict], parents: set) -> list[tuple[str, dict]]:
    """The mounts (of `entries`, the mount entries of superblock `sb`) dump clones once the tree is
    stopped, each with why: "ghost" (a deleted root, archived alone), "archive" (one per disjoint root
    of a content type), "probe" (one mount of a type that probes); none of an external superblock.
    `parents`: the ids of the mounts that have mounts on them."""
    if sb["external"]:
        return []
    handler = fs.lookup(sb["fstype"])
    out = [("ghost", e) for e in entries if e.get("ghost")]
    if handler is not None and handler.content:
        chosen: list[str] = []
        # Of mounts with one root, one with nothing mounted on it first: in a namespace a user
        # namespace owns, a clone keeps the locked mounts on it, whose files tar would take
        # for the superblock's where they share its device (a bind of it), and whose mount
        # points it would leave out (a cover of another type, and the files beneath it).
        for e in sorted(entries, key=lambda e: (len(e["root"]), e["root"], e["id"] in parents)):
            if not e["root"].startswith("/") or e.get("ghost"):
                continue
            if not any(is_beneath(e["root"], r) for r in chosen):
                chosen.append(e["root"])
                out.append(("archive", e))
    elif handler is not None and handler.wants_probe():
        out.append(("probe", entries[0]))
    return out


# How long a vfork parent may wait for one child's exec before the dump refuses it: a shell's child
# (dash vforks its commands) execs within microseconds, within a second on a loaded machine.
VFORK_WAIT = 3.0


def _check_vfork(pids: list[int]) -> None:
    """Refuse a process that waits in vfork for its child (engine/inject.py `in_vfork`) for longer
    than VFORK_WAIT, with the same children all along: dump runs calls in each stopped process,
    which cannot run there (refused after the stop otherwise). A wait that ends (a busy loop's next
    command: its children change) is let be: the stop lets it end (engine/freeze.py finish_vforks)."""
    import time
    from engine import freeze
    for pid in pids:
        first = None
        deadline = time.monotonic() + VFORK_WAIT
        while inject.in_vfork(pid):
            kids = set(freeze.children(pid))
            if first is not None and kids != first:
                break
            first = kids
            if time.monotonic() < deadline:
                time.sleep(0.002)
                continue
            raise PrestopError(errno.EBUSY, f"process {pid} is in an uninterruptible wait: a vfork parent waits "
                                            "there until its child execs or exits, and no call can be run in it "
                                            "(dump reads its state with calls); dump again once it has left it")


def _prechecks(fstype: str) -> bool:
    """Whether the type of `fstype` has a precheck of its own."""
    h = fs.lookup(fstype)
    return h is not None and type(h).precheck is not fs.FsType.precheck


def _entries(mounts: list, view: View) -> dict:
    """One namespace's mounts as dump's image entries (the fields the checks read)."""
    ids = {m.mnt_id for m in mounts}
    entries = []
    root = None
    for m in mounts:
        view.mounts_by_id[m.mnt_id] = m
        sid = view.sb_of_dev.setdefault(m.dev, f"sb-{len(view.sb_of_dev)}")
        parent = m.parent_id if m.parent_id in ids else None
        if parent is None:
            root = m.mnt_id
        m_root, deleted = ghosts.split_root(m.root)
        entries.append({"id": m.mnt_id, "parent": parent, "mountpoint": m.mountpoint, "root": m_root,
                        "fstype": m.fstype, "source": m.source, "sb": sid, "uid": m.unique_id, "shared": m.shared,
                        "master": m.master, "unbindable": m.unbindable, "external": None})
        if deleted:
            entries[-1]["ghost"] = True
        if sid not in view.superblocks:
            view.superblocks[sid] = {"fstype": m.fstype, "source": m.source, "super_opts": list(m.super_opts),
                                     "dev": m.dev, "external": False, "archives": []}
    return {"root": root, "mounts": entries}


def _check_reachable(pids: list[int]) -> None:
    """Refuse a process whose root, cwd or executable the dumper may not look at: a FUSE filesystem
    mounted inside a user namespace answers only that namespace's processes (rootless podman's
    fuse-overlayfs root), and dump reads each of them (EACCES deep inside it otherwise)."""
    for pid in pids:
        for what in ("root", "cwd", "exe"):
            try:
                os.stat(f"/proc/{pid}/{what}")
            except PermissionError:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                raise PrestopError(errno.EOPNOTSUPP, f"process {pid} ({comm}): its {what} lies on a filesystem that "
                                                     "refuses the dumper (a FUSE filesystem mounted inside a user "
                                                     "namespace lets only that namespace's processes in: rootless "
                                                     "fuse-overlayfs storage): not supported") from None
            except OSError:
                pass   # (gone, a kernel thread's exe: dump tells once the tree is stopped)


def _roots(view: View) -> None:
    """Each mount's root as dump records it where its type derives it (`mount_root`: nfs names it in
    the source), from the source dump makes the superblock with (`sb_source`)."""
    sources: dict[str, list[str]] = {}
    for ns in view.mntns_doc.values():
        for e in ns["mounts"]:
            sources.setdefault(e["sb"], []).append(e["source"])
    for ns in view.mntns_doc.values():
        for e in ns["mounts"]:
            h = fs.lookup(e["fstype"])
            if h is None or type(h).mount_root is fs.FsType.mount_root:
                continue
            sb = view.superblocks[e["sb"]]
            sb["source"] = h.sb_source(sources[e["sb"]])
            e["root"] = h.mount_root(e["root"], e["source"], sb["source"], f"mount {e['id']} ({e['mountpoint']})")


def _declared(view: View, ext_mnts, root_ns: str | None) -> set[str]:
    """Superblocks a declared external mount (of the tree's own namespace) names."""
    return {e["sb"] for e in (view.mntns_doc.get(root_ns) or {"mounts": ()})["mounts"] if e["mountpoint"] in ext_mnts}


def _check_types(view: View, ext_mnts, root_ns: str | None) -> None:
    """Each type's precheck, once per superblock no declared external mount names."""
    external = _declared(view, ext_mnts, root_ns)
    done: set[str] = set()
    for ns in view.mntns_doc.values():
        for e in ns["mounts"]:
            sid = e["sb"]
            if sid in done or sid in external or not _prechecks(e["fstype"]):
                continue
            done.add(sid)
            m = view.mounts_by_id[e["id"]]
            sb = {"fstype": m.fstype, "source": m.source, "super_opts": list(m.super_opts), "dev": m.dev}
            fs.lookup(m.fstype).precheck(sid, sb, view)


def _check_mounts(view: View, ext_mnts, ext_devs: set[str], root_ns: str | None) -> None:
    """Dump's mount rules (engine/mountrules.py) on the running tree: which superblocks are external
    is worked out as dump does (declared mounts, devices, namespace roots made outside); a superblock
    whose answer only the stopped tree gives (a block device that may be a loop over a file of the
    dump, one whose mounts show no device number) is left to dump, and so is propagation then."""
    mountrules.unknown_externals(ext_mnts, {e["mountpoint"] for e in _ns_mounts(view, root_ns)})
    unsure = view.unsure = _externals(view, ext_mnts, ext_devs, root_ns)
    ext_roots: dict[str, list[str]] = {}
    for ns in view.mntns_doc.values():
        for e in ns["mounts"]:
            if e["external"]:
                ext_roots.setdefault(e["sb"], []).append(e["root"])
    for ns in view.mntns_doc.values():
        for e in ns["mounts"]:
            sb = view.superblocks[e["sb"]]
            if e["sb"] in unsure:
                continue
            if not sb["external"]:
                mountrules.own_mount(e, sb)
            elif not e["external"]:
                mountrules.external_mount(e, ext_roots.get(e["sb"], ()))
    if not unsure:
        from engine.dump import DumpError, _check_sharing   # (dump imports this module)
        try:
            _check_sharing(view.mntns_doc, view.superblocks, {n: ps[0] for n, ps in view.ns_pids.items() if ps})
        except DumpError as e:
            raise fs.FsError(e.errno, e.strerror) from None


def _ns_mounts(view: View, name: str | None) -> list[dict]:
    return (view.mntns_doc.get(name) or {"mounts": []})["mounts"]


def _externals(view: View, ext_mnts, ext_devs: set[str], root_ns: str | None) -> set[str]:
    """Mark the mounts and superblocks dump takes as external, as dump marks them (and refuse a nested
    namespace's root it would refuse there: engine/mountrules.py `nested_root`); returns the
    superblocks whose answer waits for the stopped tree."""
    unsure: set[str] = set()
    by_mp: dict[str, list[dict]] = {}
    for e in _ns_mounts(view, root_ns):
        if e["mountpoint"] in ext_mnts:
            e["external"] = ext_mnts[e["mountpoint"]]
            view.superblocks[e["sb"]]["external"] = True
            by_mp.setdefault(e["mountpoint"], []).append(e)
    for es in by_mp.values():
        if len(es) > 1:
            unsure.update(e["sb"] for e in es)   # (an overmount stack: dump picks which one is meant)
    # Devices: declared, else one dump may resolve (a loop device over a file it archives) or not.
    for sid, sb in view.superblocks.items():
        h = fs.lookup(sb["fstype"])
        if sb["external"] or h is None or not h.device:
            continue
        if os.major(_devno(sb["dev"])) == 0:
            unsure.add(sid)    # (its block device is told inside the namespace, once stopped)
        elif sb["dev"] not in ext_devs:
            sb["device"] = {"dev": sb["dev"], "unresolved": True}
            if h.plan_device(sid, {**sb, "device": {"dev": sb["dev"]}}, view):
                unsure.add(sid)   # (its file is looked for while dump archives)
                del sb["device"]
    mountrules.mark_roots(view.mntns_doc, view.superblocks, view, root_ns, unsure)
    return unsure


def _devno(dev: str) -> int:
    major, _, minor = dev.partition(":")
    return os.makedev(int(major), int(minor))


def _maybe_external(view: View, ext_mnts, root_ns: str | None) -> set[str]:
    """Superblocks dump may take as external: one a declared external mount names, and each
    namespace root's (made outside, as a runtime's root: dump tells once the tree is stopped)."""
    out = {e["sb"] for e in (view.mntns_doc.get(root_ns) or {"mounts": ()})["mounts"] if e["mountpoint"] in ext_mnts}
    for ns in view.mntns_doc.values():
        out |= {e["sb"] for e in ns["mounts"] if e["id"] == ns["root"]}
    return out


def check_sources(mntns_doc: dict, skip: set[str]) -> None:
    """Refuse mounts of one superblock shown with different sources (mountinfo's source is per
    mount: the same block device mounted under two names, `mount -t mqueue a` then `mount -t
    mqueue b` in one ipc namespace) where restore cannot give each its own: restore makes a
    superblock with the source of its first mount, and its other mounts are clones, which keep
    that one. Types that `joins_by_ns` or have a `mount_again` hook (block devices) are mounted
    again with the other source (engine/restore.py `_other_source`; where peer groups are built while
    mounting, engine/construct.py binds a member only from a mount that shows its source).
    `skip`: external superblocks (bound from the host)."""
    first: dict[str, dict] = {}
    for ns in mntns_doc.values():
        for e in ns["mounts"]:
            sid = e["sb"]
            if sid in skip or e.get("external"):
                continue
            f = first.setdefault(sid, e)
            if e["source"] == f["source"]:
                continue
            h = fs.lookup(e["fstype"])
            if h is not None and (h.source_names_root or h.mounts_again):
                continue
            raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its source "
                                               f"{e['source']!r} is not {f['source']!r}, the source of mount {f['id']} "
                                               f"({f['mountpoint']}) of the same filesystem (one superblock mounted "
                                               f"again under another name): restore makes every mount of a {e['fstype']} "
                                               "superblock with one source; not supported")


def _check_locks(view: View, owned_ns: list[str]) -> dict[str, dict]:
    """The locks of each mount namespace another user namespace owns, probed as dump probes them
    (engine/userns_cr.locks refuses what restore cannot make again)."""
    out = {}
    for name in owned_ns:
        ns = view.mntns_doc.get(name)
        if ns is None:
            continue   # (its mountinfo was not read: the namespace appeared meanwhile)
        userns_cr.locks(view.ns_pids[name][0], ns["mounts"], name)
        out[name] = {**ns, "owner": True}
    return out


def _check_sb_owners(view: View, tree, users: dict | None) -> None:
    """Which user namespace of the tree owns each superblock a path reaches, probed as dump probes
    it (engine/userns_cr.record_sb_owners refuses one restore cannot make there: a type made by its
    own hook, as fuse); superblocks only a clone reaches are left to dump. Only for a tree with
    user namespaces of its own; the owners found go to `view.sb_owners` (the records stay as read)."""
    if not users or not users["userns"]:
        return
    for name, pids in view.ns_pids.items():
        if not pids or name not in view.ns_mounts:
            continue
        copies = {sid: dict(sb) for sid, sb in view.superblocks.items()}
        try:
            userns_cr.record_sb_owners(pids[0], view.ns_mounts[name], view.sb_of_dev, copies, tree, users)
        except userns_cr.UsernsError:
            raise
        except (OSError, forkrun.ChildError):
            continue   # (a process gone meanwhile: dump probes, once the tree is stopped)
        view.sb_owners.update({sid: sb["owner"] for sid, sb in copies.items() if sb.get("owner")})


def _check_probes(view: View, pids: list[int], names: dict) -> None:
    """Each `probe` of a type that looks at one mount of its superblock (proc: which pid namespace
    it shows; an empty-only type: that it is empty), on the mount dump probes (the superblock's
    first), reached at its mount point when that leads to it, else through a detached clone made
    in a copy of its namespace (unshare --mount-proc leaves the host's /proc beneath the new one)."""
    from engine.dump import _pid_identity   # (dump imports this module)
    for pid in pids:
        try:
            ident = _pid_identity(f"/proc/{pid}")
            ino = kernel.ns_ino(pid, "pid")
        except (OSError, StopIteration):
            continue   # (gone meanwhile: dump tells, once the tree is stopped)
        if ident is not None and ino is not None:
            view.members.setdefault(ino, []).append(ident)
    view.pidns_name = {ino: name for (k, ino), name in names.items() if k == "pid"}
    first: dict[str, tuple[str, dict]] = {}
    for ns_name, ns in view.mntns_doc.items():
        for e in ns["mounts"]:
            first.setdefault(e["sb"], (ns_name, e))
    todo = []
    for sid, (ns_name, e) in first.items():
        sb = view.superblocks[sid]
        h = fs.lookup(sb["fstype"])
        if sb["external"] or sid in view.unsure or h is None or h.content or not h.wants_probe():
            continue
        todo.append((sid, h, ns_name, e))
    for i in range(0, len(todo), PROBE_WINDOW):
        _probe_some(view, todo[i:i + PROBE_WINDOW])


# How many mounts _check_probes holds fds on at once: a tree of thousands of probed superblocks
# (proc mounts, empty-only types) within a dumper's RLIMIT_NOFILE (EMFILE made a probe misjudge
# a proc mount before session 33: tests/test_engine_prestop_fds.py).
PROBE_WINDOW = 64


def _probe_some(view: View, todo: list) -> None:
    """Each (sb id, type, namespace name, mount entry) of `todo` probed through an fd on the mount,
    the fds opened together (_open_mounts) and each closed once its probe returns."""
    fds = _open_mounts(view, [(ns_name, e) for _, _, ns_name, e in todo])
    try:
        for sid, h, ns_name, e in todo:
            fd = fds.pop((ns_name, e["id"]), None)
            if fd is None:
                continue   # (dump probes it once the tree is stopped)
            try:
                h.probe(sid, e["id"], fd, view)
            finally:
                os.close(fd)
    finally:
        for fd in fds.values():   # (a probe refused)
            os.close(fd)


def _check_ghost_names(view: View) -> None:
    """Mounts of one superblock whose deleted roots have one name must be one file
    (mountrules.ghost_names): the roots of each such group compared through fds on them
    (_open_mount); one that cannot be opened is left to dump, which compares them stopped. Each
    deleted root is one ghost, archived alone: mountrules.ghost_attrs of it too."""
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for ns_name, ns in view.mntns_doc.items():
        for e in ns["mounts"]:
            if e.get("ghost") and not e["external"] and e["sb"] not in view.unsure:
                groups.setdefault((e["sb"], e["root"]), []).append((ns_name, e))
    for group in groups.values():
        first = None
        for ns_name, e in group:
            fd = _open_mount(view, ns_name, e, os.O_PATH | os.O_CLOEXEC)
            if fd is None:
                continue
            try:
                st = os.fstat(fd)
                attrs = kernel.statx_attributes("", fd, kernel.AT_EMPTY_PATH)[0]
            finally:
                os.close(fd)
            mountrules.ghost_attrs(f"mount {e['id']} ({e['mountpoint']}): its root {e['root']}", attrs)
            if first is None:
                first = (e, (st.st_dev, st.st_ino))
            else:
                mountrules.ghost_names(e, first[0], first[1] == (st.st_dev, st.st_ino))


def _check_socket_binds(pids: list[int], view: View) -> None:
    """Refuse a mount whose root is the file of a unix socket a process of the tree is bound to
    (/dev/log of a syslogd of the tree bound into another namespace, a sandbox's bind of a proxy's
    socket): restore binds the socket anew, a new file, and the mount would keep the old one,
    deleted (the mount's root "//deleted", nobody listening behind it). Not supported yet."""
    socks: dict[tuple[int, int], tuple[str, dict]] = {}
    for ns_name, doc in view.mntns_doc.items():
        first = (view.ns_pids.get(ns_name) or (None,))[0]
        for e in doc["mounts"] if first is not None else ():
            try:
                st = os.stat(f"/proc/{first}/root{e['mountpoint']}", follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode):
                socks[(st.st_dev, st.st_ino)] = (ns_name, e)
    if not socks:
        return
    from engine.fds import unix_diag
    held = _sockets_held(pids)   # (once for the tree, not once a network namespace)
    seen_net: set[int] = set()
    for pid in pids:
        try:
            net = os.stat(f"/proc/{pid}/ns/net").st_ino
            if net in seen_net:
                continue
            seen_net.add(net)
            diag = unix_diag.diag_in(pid)
        except (OSError, forkrun.ChildError):
            continue
        for ino, rec in diag.items():
            vfs = rec.get("vfs")
            if ino not in held or not vfs:
                continue
            key = (os.makedev(vfs[1] >> 20, vfs[1] & 0xfffff), vfs[0])
            if key in socks:
                ns_name, e = socks[key]
                raise DumpError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) of {ns_name}: a bind of the "
                                                  "file of a unix socket a process of the tree is bound to; restore "
                                                  "binds the socket anew and the mount would keep the old file: not "
                                                  "supported yet")


def _sockets_held(pids: list[int]) -> set[int]:
    """The socket inodes the processes `pids` hold fds on (an fd closed meanwhile is passed over,
    not the rest of its process's)."""
    return {int(link[8:-1]) for _, _, link in kernel.fd_links(pids) if link.startswith("socket:[")}


def _open_mount(view: View, ns_name: str, e: dict, flags: int = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) -> int | None:
    """An fd on the root of mount `e` of namespace `ns_name`: its mount point when that leads to it,
    else a detached clone made in a copy of the namespace; None when neither can be had."""
    fd = _open_at_mountpoint(view, ns_name, e, flags)
    return fd if fd is not None else _clone_alone(view, ns_name, e)


def _open_at_mountpoint(view: View, ns_name: str, e: dict, flags: int) -> int | None:
    """An fd on the root of mount `e` of namespace `ns_name` opened at its mount point, when that
    leads to it; else None."""
    pids = view.ns_pids.get(ns_name) or ()
    if not pids:
        return None
    try:
        fd = os.open(f"/proc/{pids[0]}/root{e['mountpoint']}", flags)
    except OSError:
        return None
    try:
        if kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH) == e["id"]:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _clone_alone(view: View, ns_name: str, e: dict) -> int | None:
    """A detached clone of mount `e` made in a copy of namespace `ns_name` by a helper of its own;
    None when it cannot be had."""
    pids = view.ns_pids.get(ns_name) or ()
    if not pids:
        return None
    try:
        from engine import nscopy
        return nscopy.clone_one(pids, view.ns_mounts[ns_name], e["id"])
    except (OSError, forkrun.ChildError):
        return None


def _open_mounts(view: View, wanted: list[tuple[str, dict]]) -> dict[tuple[str, int], int]:
    """_open_mount of each (namespace name, mount entry) of `wanted`: {(name, id): fd} of those that
    can be had. The clones a namespace needs are made by one helper (a fork of the dumper for each
    was ~3.5 ms of CPU: benchmarks/HISTORY.md, session 32); those it could not make (its error stops
    it) are made alone, as _open_mount makes them."""
    from engine import nscopy
    out: dict[tuple[str, int], int] = {}
    cloned: dict[str, list[dict]] = {}
    for ns_name, e in wanted:
        fd = _open_at_mountpoint(view, ns_name, e, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd is not None:
            out[(ns_name, e["id"])] = fd
        elif view.ns_pids.get(ns_name):
            cloned.setdefault(ns_name, []).append(e)
    for ns_name, entries in cloned.items():
        kept = view.kept.pop(ns_name, None)
        got = nscopy.clone_some(view.ns_pids[ns_name], view.ns_mounts[ns_name], [e["id"] for e in entries], kept) \
            if len(entries) > 1 or kept is not None else {}
        for e in entries:
            fd = got.pop(e["id"], None)
            if fd is None:
                fd = _clone_alone(view, ns_name, e)
            if fd is not None:
                out[(ns_name, e["id"])] = fd
        for fd in got.values():
            os.close(fd)
    return out


def _rootless_of():
    """pid -> whether it is a process of a rootless tree (engine/hostfiles.py Gates)."""
    from engine import hostfiles
    gates = hostfiles.Gates()
    return lambda pid: gates.of(pid) is not None


def _check_fds(pids: list[int], view: View, leave_running: bool, ext_files: set[str]) -> None:
    """Each fd's kind's precheck (a process or fd gone meanwhile is passed over), dump's rule for a
    file open under a deleted name (engine/mountrules.py `deleted_file`), then each kind's prefinish,
    and last the --external file[PATH] declarations no fd shows (once every fd was seen)."""
    from engine.fds import DumpFd
    scratch: dict = {"leave_running": leave_running, "pids": pids,
                     "members": {pid: ps for ps in view.ns_pids.values() for pid in ps},
                     "host_mnts": {e["id"] for ns in view.mntns_doc.values() for e in ns["mounts"]
                                   if view.superblocks[e["sb"]]["external"]}}
    by_pid = {pid: name for name, ps in view.ns_pids.items() for pid in ps}
    from engine import hostfiles   # (a rootless tree's host files: restore's gate, asked first)
    gates = scratch["gates"] = hostfiles.Gates()
    used: set[str] = set()
    held: set[str] = set()     # paths of ext_files some fd shows
    complete = True            # every fd was seen
    unplaced: list = []        # (location, pid, link) on detached mounts, as engine/placement.py finds them
    try:
        for pid in pids:
            name = by_pid.get(pid)
            _check_deleted_dirs(pid, view)
            _detached_dirs(pid, view, unplaced)
            _check_deleted_maps(pid, view)
            _check_exe(pid, view)
            hostfiles.check_process(gates, pid, scratch["host_mnts"], view.ns_mounts.get(name, []))
            try:
                names = os.listdir(f"/proc/{pid}/fd")
                pidfd = kernel.pidfd_open(pid)
            except OSError:
                complete = False
                continue   # (gone meanwhile: dump tells, once the tree is stopped)
            try:
                for n in names:
                    link = f"/proc/{pid}/fd/{n}"
                    try:
                        target = os.readlink(link)
                        mode = os.stat(link).st_mode
                    except OSError:
                        complete = False
                        continue
                    if target in ext_files:
                        held.add(target)   # (no kind's: restore opens the host's file, but keeps its owner)
                        if not _check_owner(pidfd, pid, n, target, pids):
                            complete = False
                        continue
                    kind = fdkinds.classify(target, mode)
                    if kind is None:
                        raise FdError(errno.EOPNOTSUPP, fdkinds.unsupported(pid, n, target))
                    info = _fdinfo(pid, n)
                    if info is None or not _check_owner(pidfd, pid, n, target, pids):
                        complete = False
                        continue
                    if kind.placed and _detached_fd(pid, n, target, mode, info.get("mnt_id"), view):
                        unplaced.append(({"mnt": info["mnt_id"], "path": target}, pid, f"fd/{n}"))
                    elif kind.placed:
                        _device_outside(pid, n, target, mode, info.get("mnt_id"), view)
                        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                            hostfiles.check_fd(gates, pid, n, target, info["flags"],
                                               info.get("mnt_id"), scratch["host_mnts"], view.ns_mounts.get(name, []))
                    if kind.precheck is None:
                        _check_deleted(kind.name, pid, n, target, mode, info.get("mnt_id"), view)
                        continue
                    used.add(kind.name)
                    d = DumpFd(pid=pid, fd=int(n), target=target, mode=mode, flags=0, pos=0, pidfd=pidfd,
                               objects={}, scratch=scratch, mounts=view.ns_mounts.get(name, []),
                               elsewhere=[(ps[0], view.ns_mounts.get(other, [])) for other, ps in view.ns_pids.items()
                                          if other != name and ps])
                    try:
                        kind.precheck(d)
                    except FdError:
                        raise
                    except OSError:
                        continue   # (closed or changed meanwhile, or unreadable now: dump tells later)
                    finally:
                        d.close()
                    _check_deleted(kind.name, pid, n, target, mode, info.get("mnt_id"), view)
            finally:
                os.close(pidfd)
        for kind_name in sorted(used):
            fdkinds.lookup(kind_name).prefinish(scratch)
        _check_detached(unplaced, scratch.get("unplaced", []), view)
    finally:
        _close_ours(scratch)   # (our fds on socket files: a refusal of any fd must close them too)
    if complete:
        mountrules.unknown_external_files(ext_files, held)
        mountrules.held_roots(view.mntns_doc, view.superblocks, scratch.get("held", ()), view.unsure)


def _check_detached(unplaced: list, ours: list, view: View) -> None:
    """engine/detached.py `precheck` on the files, cwds and roots on detached mounts (`unplaced`) and
    the socket files the kinds found there (`ours`: scratch "unplaced", our fds on them, which
    _close_ours closes); none when a namespace was seen only through a chrooted process."""
    if view.partial:
        return   # (a mount left out of a namespace's view would look detached: plan asks, once stopped)
    if unplaced or ours:
        detached.precheck(unplaced + ours, view.superblocks, view.sb_of_dev,
                          {n: {"mounts": ms} for n, ms in view.ns_mounts.items()}, view.ns_pids, view, view.unsure)


def _close_ours(scratch: dict) -> None:
    """Close our fds on the socket files the kinds' prechecks noted (scratch "unplaced")."""
    for _loc, _pid, link in scratch.pop("unplaced", []):
        os.close(int(link.rsplit("/", 1)[1]))


def _detached_fd(pid: int, n: str, target: str, mode: int, mnt: int | None, view: View) -> bool:
    """Whether dump places fd `n` of `pid` (of a kind that names a file on a mount) on a detached
    mount: its mount (fdinfo's `mnt`) is in no dumped namespace, and its path in the process's
    namespace does not reach the same file on a mount of the same superblock there (where dump
    places it instead: engine/nsinspect.py `_same_path_outside`). A deleted file is another rule's
    (`_check_deleted`); a process with a root of its own is left to dump."""
    if mnt is None or mnt in view.mounts_by_id or not target.startswith("/") or target.endswith(kernel.DELETED):
        return False
    try:
        if os.readlink(f"/proc/{pid}/root") != "/":
            return False
        want = os.stat(f"/proc/{pid}/fd/{n}")
        follow = not stat.S_ISLNK(mode)
        here_path = f"/proc/{pid}/root{target}"
        here = os.stat(here_path, follow_symlinks=follow)
        mid = kernel.statx_mnt_id(here_path, flags=0 if follow else kernel.AT_SYMLINK_NOFOLLOW)
    except FileNotFoundError:
        return True    # (the path leads nowhere there: a lazily unmounted mount's file)
    except OSError:
        return False   # (gone meanwhile: dump tells)
    m = view.mounts_by_id.get(mid)
    return not ((here.st_dev, here.st_ino) == (want.st_dev, want.st_ino) and m is not None
                and m.dev == f"{os.major(here.st_dev)}:{os.minor(here.st_dev)}")


def _device_outside(pid: int, n: str, target: str, mode: int, mnt: int | None, view: View) -> None:
    """engine/mountrules.py `device_outside` for fd `n` of `pid` (not on a detached mount): a device
    on a mount in no dumped namespace, placed on the mount its path reaches in the tree."""
    if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) or mnt is None or mnt in view.mounts_by_id:
        return
    try:
        mid = kernel.statx_mnt_id(f"/proc/{pid}/root{target}")
    except OSError:
        return   # (gone meanwhile: dump tells)
    m = view.mounts_by_id.get(mid)
    if m is not None:
        mountrules.device_outside(f"process {pid} fd {n} ({target})", mode, "nodev" in m.mount_opts)


def _detached_dirs(pid: int, view: View, unplaced: list) -> None:
    """Add the root and cwd of `pid` to `unplaced` when they lie on a mount in no dumped namespace
    (a cwd on a lazily unmounted mount), as engine/placement.py places them."""
    for key in ("root", "cwd"):
        link = f"/proc/{pid}/{key}"
        try:
            target = os.readlink(link)
            mnt = kernel.statx_mnt_id(link)
        except OSError:
            continue   # (gone meanwhile: dump tells, once the tree is stopped)
        if mnt not in view.mounts_by_id and not target.endswith(kernel.DELETED):
            unplaced.append(({"mnt": mnt, "path": target}, pid, key))


def _check_owner(pidfd: int, pid: int, n: str, target: str, pids: list[int]) -> bool:
    """Refuse the signal owner of fd `n` of `pid` dump would refuse (engine/fown.py); False when the
    fd was closed meanwhile (dump tells later)."""
    try:
        fown.fields_of(pidfd, int(n), pids, f"process {pid} fd {n} ({target})")
    except FdError:
        raise
    except OSError:
        return False
    return True


def _fdinfo(pid: int, n: str) -> dict | None:
    """What fdinfo shows of fd `n` of `pid` (nsinspect.parse_fdinfo; None: closed meanwhile)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{n}") as f:
            info = nsinspect.parse_fdinfo(f.read())
    except OSError:
        return None
    return info if "flags" in info else None


def _check_deleted(kind: str, pid: int, n: str, target: str, mode: int, mnt: int | None, view: View) -> None:
    """Dump's rule for fd `n` of `pid` when it is a file or FIFO open under a deleted name, on the mount
    its fdinfo names (`mnt`; not the deleted root of that mount itself, which the mount carries)."""
    if kind not in ("file", "fifo") or not target.endswith(kernel.DELETED) or mnt is None:
        return
    if kind == "file" and deadpid.gone_pid_dir(target, view.mounts_by_id.get(mnt)):
        return   # (the fd kind reopens it: /proc/N of a process gone)
    _deleted_on(f"process {pid} fd {n} ({target})", target, mnt, mode, view, (pid, f"fd/{n}"))


def _check_deleted_dirs(pid: int, view: View) -> None:
    """Dump's rule for the cwd and root of `pid` when they were removed (a directory removed while it
    was the cwd), read through /proc/PID/cwd and /proc/PID/root."""
    for key in ("root", "cwd"):
        link = f"/proc/{pid}/{key}"
        try:
            target = os.readlink(link)
            if not target.endswith(kernel.DELETED):
                continue
            mnt = kernel.statx_mnt_id(link)
            mode = os.stat(link).st_mode
        except OSError:
            continue   # (gone meanwhile: dump tells, once the tree is stopped)
        if deadpid.gone_pid_dir(target, view.mounts_by_id.get(mnt)):
            continue   # (/proc/N of a process gone: restore enters it again, engine/deadpid.py)
        _deleted_on(f"process {pid} {key} ({target})", target, mnt, mode, view, (pid, key))


def _check_deleted_maps(pid: int, view: View) -> None:
    """Dump's rule for each file `pid` maps under a deleted name (engine/mountrules.py
    `deleted_mapping`), but memory of the kernel's own mounts (mappings.kernel_memory, left out):
    the lines of /proc/PID/maps that end so, each read through its map_files link."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            lines = [line for line in f.read().splitlines() if line.endswith(kernel.DELETED)]
    except OSError:
        return   # (gone meanwhile: dump tells, once the tree is stopped)
    seen: set[tuple[str, int]] = set()
    for line in lines:
        lo, _, hi = line.split(None, 1)[0].partition("-")
        link = f"/proc/{pid}/map_files/{int(lo, 16):x}-{int(hi, 16):x}"
        try:
            target = os.readlink(link)
            mnt = kernel.statx_mnt_id(link)
            st = os.stat(link)
        except OSError:
            continue   # (unmapped meanwhile)
        if (target, mnt) in seen or mappings.kernel_memory(mnt, link):
            continue
        seen.add((target, mnt))
        m = view.mounts_by_id.get(mnt)
        sid = None if m is None else view.sb_of_dev[m.dev]
        if sid not in view.unsure:
            mountrules.deleted_mapping(f"process {pid} mapping ({target})",
                                       None if sid is None else view.superblocks[sid], st.st_mode)
            if not kernel.undeleted(target)[0] == m.mountpoint or not ghosts.split_root(m.root)[1]:
                _ghost_attrs(f"process {pid} mapping ({target})", link, view.superblocks[sid])


def _check_exe(pid: int, view: View) -> None:
    """Dump's rule for the executable `pid` runs (engine/mountrules.py `executable`), when dump keeps
    it: a file on a mount of the tree (a deleted one is also a deleted mapping, checked so)."""
    link = f"/proc/{pid}/exe"
    try:
        target = os.readlink(link)
        mnt = kernel.statx_mnt_id(link)
        st = os.stat(link)
        noexec = bool(os.statvfs(link).f_flag & os.ST_NOEXEC)
    except OSError:
        return   # (a kernel thread, or gone meanwhile: dump tells, once the tree is stopped)
    if target.startswith("/") and mnt in view.mounts_by_id:
        mountrules.executable(f"process {pid} executable ({target})", st.st_mode, noexec)


def _ghost_attrs(where: str, link: str, sb: dict) -> None:
    """engine/mountrules.py `ghost_attrs` for the deleted file at magic link `link`, when dump will
    archive it alone: no other name of it (a file of a type whose files are archived that has one is
    linked there again at restore, and keeps the attributes that name's archive records; dump asks
    again once stopped)."""
    try:
        attrs = kernel.statx_attributes(link)[0]
        nlink = os.stat(link).st_nlink
    except OSError:
        return   # (gone meanwhile: dump tells, once the tree is stopped)
    if nlink and fs.lookup(sb["fstype"]).content:
        return
    mountrules.ghost_attrs(where, attrs)


def _deleted_on(where: str, target: str, mnt: int, mode: int, view: View, held: tuple[int, str]) -> None:
    """engine/mountrules.py `deleted_file` for `target` (a path ending in " (deleted)") on mount `mnt`,
    unless it is the deleted root of that mount itself (which the mount carries) or the mount's
    superblock waits for the stopped tree; for a directory, its type's `deleted_dir` too (`held`: the
    process and its /proc link, "cwd" or "fd/N")."""
    m = view.mounts_by_id.get(mnt)
    if m is not None and kernel.undeleted(target)[0] == m.mountpoint and ghosts.split_root(m.root)[1]:
        return
    sid = None if m is None else view.sb_of_dev[m.dev]
    if sid in view.unsure:
        return
    mountrules.deleted_file(where, None if sid is None else view.superblocks[sid], mode)
    _ghost_attrs(where, f"/proc/{held[0]}/{held[1]}", view.superblocks[sid])
    if m is not None and stat.S_ISDIR(mode):
        sb = {**view.superblocks[sid], "owner": view.sb_owners.get(sid)}   # (as dump's records have it)
        how = fs.lookup(sb["fstype"]).deleted_dir(where, sb, *held, ghosts.sb_path(m.root, m.mountpoint,
                                                                                    kernel.undeleted(target)[0]))
        lsid = view.sb_of_dev.get(how["layer_dev"]) if how and how.get("uncover") else None
        if how and how.get("uncover") and lsid not in view.unsure:
            mountrules.uncover_layer(where, None if lsid is None else view.superblocks[lsid])
