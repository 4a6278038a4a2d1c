"""Dump's refusals told before the tree is stopped: a refusal leaves the tree running and untouched.

Dump stops the tree (SIGSTOP) so that nothing changes while it reads, and
resumes it (SIGCONT) when it refuses; a parent waiting with WUNTRACED or
WCONTINUED, a ptracer or a job-control shell sees that stop. So what a running
tree already shows is checked here first, with the line dump would give:

- the user namespaces (engine/userns_cr.plan: namespaces of two user namespaces);
- per mount namespace, each type's `precheck` hook (engine/fs/: an overlay layer
  whose mount was moved after the overlay was made), from mountinfo and the
  mounts' unique ids; a nested namespace's root on layers no mount of the tree
  reaches (`nested_root`, dump's own rule, as nspawn --volatile=overlay makes); mounts of one superblock under two sources that restore
  cannot give back (`check_sources`, dump's own rule);
- per mount namespace owned by another user namespace, its locks, probed as dump
  probes them (engine/userns_cr.locks: a locked mount covered by a locked mount
  that is shared, as nspawn -U leaves them);
- per fd, its kind's `precheck` hook (engine/fds/: an fd no kind handles, inet
  sockets, netlink messages waiting, a file of /proc/N of a process gone, a
  socket name that is not normalised, data on a connection not yet accepted with
  --leave-running, a datagram from a named sender the tree does not hold,
  fanotify events waiting).

Everything here only reads. Dump checks everything again once the tree is
stopped: that stays the authority for what changes in between (a process that
opens a socket meanwhile), and for what only a stopped tree shows (a peek with a
peek offset, archives, devices).
"""

from __future__ import annotations

import errno
import os

from engine import fds as fdkinds, forkrun, fs, kernel, mountinfo, userns_cr
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

    def in_ns_copy(self, ns_name: str, fn, *args):
        """fn(*args) in a forked child standing at the root of a private copy of mount namespace
        `ns_name` (as dump's plan does it: the running tree's namespace itself is not touched)."""
        from engine.dump import _run_in_copy   # (dump imports this module)
        pids = self.ns_pids[ns_name]
        fd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return forkrun.run(_run_in_copy, fd, pids, fn, args)
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
            key = (k, _ns_ino(pid, k))
            if key not in names:
                names[key] = f"{k}-{count.get(k, 0)}"
                count[k] = count.get(k, 0) + 1
    return names


def _ns_ino(pid: int, kind: str = "mnt") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        return None


def _unique_ids(nsfd: int) -> dict[int, int]:
    """In a forked child: the unique ids of the mounts of mount namespace `nsfd`."""
    kernel.setns(nsfd, kernel.CLONE_NEWNS)
    return kernel.unique_ids()


def check(tree: list[tuple[int, int | None]], texts: list[tuple[int, str]], ext_mnts,
          leave_running: bool, ext_files=()) -> dict[str, dict]:
    """Refuse (PrestopError) what the running tree [(pid, ppid)] already shows dump would refuse;
    `texts`: (a pid, its mountinfo) of each mount namespace; fds on `ext_files` (paths declared
    --external file[PATH]) are not looked at. Returns the image-like record of each
    mount namespace another user namespace owns, its locks marked ({name: {root, mounts, owner}})."""
    from engine import image, strategy
    strat = strategy.current()
    pids = [p for p, _ in tree]
    names = ns_names(pids, image.NS_KINDS)
    view = View(strat)
    try:
        owners = userns_cr.plan(tree, names, image.NS_KINDS)["mntns_owner"]
    except userns_cr.UsernsError as e:
        raise PrestopError(e.errno or errno.EOPNOTSUPP, str(e) if e.filename else e.strerror or str(e)) from None
    except OSError:
        owners = None   # (a process gone meanwhile: dump tells, once the tree is stopped)
    for pid in pids:
        ino = _ns_ino(pid)
        if ino is not None:
            view.ns_pids.setdefault(names[("mnt", ino)], []).append(pid)
    for pid, text in texts:
        ino = _ns_ino(pid)
        if ino is None:
            continue
        name = names[("mnt", ino)]
        mounts = mountinfo.parse(text)
        owned = owners is not None and name in owners
        if strat.ids == "statmount" and (owned or any(_prechecks(m.fstype) for m in mounts)):
            nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            try:
                mounts = mountinfo.parse(text, forkrun.run(_unique_ids, nsfd))
            except (OSError, forkrun.ChildError):
                pass   # (the ids are read again once the tree is stopped)
            finally:
                os.close(nsfd)
        view.ns_mounts[name] = mounts
        view.mntns_doc[name] = _entries(mounts, view)
    try:
        root_ns = names.get(("mnt", _ns_ino(pids[0])))
        _check_types(view, ext_mnts, root_ns)
        _check_nested_roots(view, ext_mnts, root_ns)
        check_sources(view.mntns_doc, _maybe_external(view, ext_mnts, root_ns), strat.sharing == "construct")
        owned_ns = _check_locks(view, sorted(owners or ()))
        _check_fds(pids, view, leave_running, set(ext_files))
    except (fs.FsError, userns_cr.UsernsError, FdError) as e:
        raise PrestopError(e.errno or errno.EOPNOTSUPP, f"{e.strerror or e}") from None
    return owned_ns


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
        entries.append({"id": m.mnt_id, "parent": parent, "mountpoint": m.mountpoint, "root": m.root,
                        "fstype": m.fstype, "source": m.source, "sb": sid, "uid": m.unique_id, "shared": m.shared,
                        "master": m.master, "unbindable": m.unbindable})
    return {"root": root, "mounts": entries}


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


def _maybe_external(view: View, ext_mnts, root_ns: str | None) -> set[str]:
    """Superblocks dump may take as external: one a declared external mount names, and each
    namespace root's (made outside, as a runtime's root: dump tells once the tree is stopped)."""
    out = {e["sb"] for e in (view.mntns_doc.get(root_ns) or {"mounts": ()})["mounts"] if e["mountpoint"] in ext_mnts}
    for ns in view.mntns_doc.values():
        out |= {e["sb"] for e in ns["mounts"] if e["id"] == ns["root"]}
    return out


def check_sources(mntns_doc: dict, skip: set[str], construct: bool) -> None:
    """Refuse mounts of one superblock shown with different sources (mountinfo's source is per
    mount: the same block device mounted under two names, `mount -t mqueue a` then `mount -t
    mqueue b` in one ipc namespace) where restore cannot give each its own: restore makes a
    superblock with the source of its first mount, and its other mounts are clones, which keep
    that one. Types that `joins_by_ns` or have a `mount_again` hook (block devices) are mounted
    again with the other source (engine/restore.py `_other_source`), except where peer groups are built while mounting (sharing=construct: a
    mount is bound from another there). `skip`: external superblocks (bound from the host)."""
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
            if h is not None and (h.source_names_root or (h.mounts_again and not construct)):
                continue
            why = ("not with peer groups built while mounting (sharing=construct)" if h is not None and h.mounts_again
                   else f"restore makes every mount of a {e['fstype']} superblock with one source")
            raise fs.FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its source "
                                               f"{e['source']!r} is not {f['source']!r}, the source of mount {f['id']} "
                                               f"({f['mountpoint']}) of the same filesystem (one superblock mounted "
                                               f"again under another name): {why}; not supported")


def nested_root(ns_name: str, root_ns: str | None, root: dict, sb: dict, plan) -> None:
    """Refuse the root of a nested mount namespace (`ns_name`, not the tree's own `root_ns`) on a
    layered superblock (`sb` of mount entry `root`) whose type says it was made outside (on layers no
    mount of the dump reaches): a process of the tree made it in that namespace, then pivoted away
    from what held its layers, as systemd-nspawn's volatile mode does with its in-memory upper layer;
    no path leads to those files, and --root gives back the tree's own root, not a nested one. Dump
    asks it twice: here before the tree is stopped, and once it is (the authority)."""
    h = fs.lookup(sb["fstype"])
    if ns_name == root_ns or h is None or not h.layers or not h.made_outside(root["sb"], sb, plan):
        return
    raise fs.FsError(errno.EOPNOTSUPP, f"mount {root['id']} (/ of mount namespace {ns_name}) on {sb['fstype']}: a "
                                       "nested namespace's root built from layers no mount of the dumped tree "
                                       "reaches (made before the namespace pivoted away from them, as "
                                       "systemd-nspawn's volatile mode does): their files cannot be dumped")


def _check_nested_roots(view: View, ext_mnts, root_ns: str | None) -> None:
    """`nested_root` for each nested namespace's root whose superblock no declared external names."""
    external = _declared(view, ext_mnts, root_ns)
    for ns_name, ns in view.mntns_doc.items():
        root = next((e for e in ns["mounts"] if e["id"] == ns["root"]), None)
        if root is None or ns_name == root_ns or root["sb"] in external:
            continue
        m = view.mounts_by_id[root["id"]]
        nested_root(ns_name, root_ns, root, {"fstype": m.fstype, "source": m.source,
                                             "super_opts": list(m.super_opts), "dev": m.dev}, view)


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


def _check_fds(pids: list[int], view: View, leave_running: bool, ext_files: set[str]) -> None:
    """Each fd's kind's precheck (a process or fd gone meanwhile is passed over), then each kind's
    prefinish."""
    from engine.fds import DumpFd
    fdkinds.load()
    scratch: dict = {"leave_running": leave_running}
    by_pid = {pid: name for name, ps in view.ns_pids.items() for pid in ps}
    used: set[str] = set()
    for pid in pids:
        name = by_pid.get(pid)
        try:
            names = os.listdir(f"/proc/{pid}/fd")
            pidfd = kernel.pidfd_open(pid)
        except OSError:
            continue   # (gone meanwhile: dump tells, once the tree is stopped)
        try:
            for n in names:
                link = f"/proc/{pid}/fd/{n}"
                try:
                    target = os.readlink(link)
                    mode = os.stat(link).st_mode
                except OSError:
                    continue
                if target in ext_files:
                    continue
                kind = fdkinds.classify(target, mode)
                if kind is None:
                    raise FdError(errno.EOPNOTSUPP, f"process {pid} fd {n} ({target}): "
                                                    f"{fdkinds.describe(target)} fds are not supported")
                if kind.precheck is None:
                    continue
                used.add(kind.name)
                d = DumpFd(pid=pid, fd=int(n), target=target, mode=mode, flags=0, pos=0, pidfd=pidfd,
                           objects={}, scratch=scratch, mounts=view.ns_mounts.get(name, []))
                try:
                    kind.precheck(d)
                except FdError:
                    raise
                except OSError:
                    continue   # (closed or changed meanwhile, or unreadable now: dump tells later)
                finally:
                    d.close()
        finally:
            os.close(pidfd)
    for kind_name in sorted(used):
        fdkinds.lookup(kind_name).prefinish(scratch)
