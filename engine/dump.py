"""Dump: a process tree's mount namespaces, roots, cwds and open files -> image directory.

Steps (`dump`, then `_collect`, one named function a step):
 1. find the process tree, set its zombies apart (recorded last: engine/zombies.py), refuse what
    it already shows while it runs (engine/prestop.py: a refusal leaves it untouched), then stop
    it (SIGSTOP) so nothing changes under us;
 2. per mount namespace, a helper enters it (setns) and reads mountinfo and each
    member process's root, cwd and fds (paths as seen from the namespace root,
    mount ids from fdinfo/statx: engine/nsinspect.py);
 3. plan superblocks: content archives, externals, devices, namespace-tagged
    pseudo filesystems, each as its type module says (engine/fs/); refuse
    anything unsupported before writing;
 4. per namespace, a second helper enters a private copy of it, uncovers
    overmounted mounts and hands back detached clones of the mounts whose files
    must be archived (or that a type module probes, `FsType.probe`: engine/nscopy.py);
 5. place each process's root, cwd and fds on the mounts (engine/placement.py; on detached
    mounts: engine/detached.py), write the image atomically, then kill the tree (or resume it).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
from engine import rx
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import stat
import sys
import time

from engine import channel, content, fds as fdkinds, forkrun, fs, ghosts, image, kernel, mountinfo
from engine import (ctty, freeze, mountrules, netdevs, nscopy, nsinspect, parking, placement, prestop, procstat, sysvipc,
                    userns_cr, zombies)
from engine.dumperror import DumpError, hook as _hook
from engine.fds import FdError
from engine.fdtable import FdTable
from engine.freeze import process_tree

NS_GET_PARENT = 0xB702
_EXT_MNT = rx.compile(r"^mnt\[(?P<what>[^\]]+)\]:(?P<key>[^\s]+)$")
_EXT_DEV = rx.compile(r"^dev\[(?P<what>[0-9]+:[0-9]+)\]:(?P<key>[^\s]+)$")
_EXT_FILE = rx.compile(r"^file\[(?P<what>/[^\]]*)\]:(?P<key>[^\s\[\]]+)$")
# A pipe whose other end a process outside the tree holds (a harness reading the tree's stdout):
# its inode as /proc/PID/fd shows it, `pipe:[INO]`; restore connects the fd to what
# `--external file[KEY]:PATH` gives (a file, a FIFO, /proc/self/fd/N of a pipe restore inherits).
_EXT_PIPE = rx.compile(r"^pipe\[(?P<ino>[0-9]{1,20})\]:(?P<key>[^\s\[\]/]+)$")


# --- externals -----------------------------------------------------------------

def parse_externals(specs) -> tuple[dict[str, str], dict[str, str]]:
    """`mnt[MOUNTPOINT]:KEY` and `dev[MAJ:MIN]:KEY` -> ({mountpoint: key}, {dev: key})."""
    mnts: dict[str, str] = {}
    devs: dict[str, str] = {}
    for spec in specs:
        m = _EXT_MNT.match(spec)
        if m:
            mp = os.path.normpath(m["what"])
            if not mp.startswith("/"):
                raise ValueError(f"--external {spec}: the mount point must be absolute")
            mnts[mp] = m["key"]
            continue
        m = _EXT_DEV.match(spec)
        if m:
            devs[m["what"]] = m["key"]
            continue
        if _EXT_FILE.match(spec) or _EXT_PIPE.match(spec) or netdevs.external_veth(spec):
            continue  # see parse_external_files, netdevs.parse_externals
        raise ValueError(f"--external {spec!r}: expected mnt[MOUNTPOINT]:KEY, dev[MAJ:MIN]:KEY, file[PATH]:KEY, "
                         "pipe[INODE]:KEY or veth[NAME]:KEY")
    return mnts, devs


def parse_external_files(specs) -> dict[str, str]:
    """`file[PATH]:KEY` -> {PATH: KEY}: fds on PATH (as /proc/PID/fd shows it) are not dumped;
    restore opens the host path given with `file[KEY]:HOSTPATH` (a log on the host, say).
    `pipe[INO]:KEY` -> {"pipe:[INO]": KEY}: the tree's ends of that pipe, reopened the same way."""
    out: dict[str, str] = {}
    for spec in specs:
        m = _EXT_FILE.match(spec)
        if m:
            out[m["what"]] = m["key"]
        m = _EXT_PIPE.match(spec)
        if m:
            out[f"pipe:[{int(m['ino'])}]"] = m["key"]
    return out


# --- the dump ------------------------------------------------------------------



def _pidns_parent_ino(pid: int) -> int | None:
    fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
    try:
        pfd = fcntl.ioctl(fd, NS_GET_PARENT)
    except OSError:
        return None  # parent is outside what we may see
    finally:
        os.close(fd)
    try:
        return os.fstat(pfd).st_ino
    finally:
        os.close(pfd)


def _uts_names_of(pid: int) -> tuple[str, str]:
    """The nodename and NIS domain name of the process's UTS namespace, read in it: this thread
    joins it and goes back (no helper to fork: a UTS namespace changes nothing else a dump does)."""
    fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.setns(fd, kernel.CLONE_NEWUTS)
        try:
            return os.uname().nodename, kernel.domainname()
        finally:
            kernel.setns(own, kernel.CLONE_NEWUTS)
    finally:
        os.close(fd)
        os.close(own)


def dump(root_pid: int, images_dir: str, leave_running: bool = False, externals=(), shell_job: bool = False) -> dict:
    """Dump the tree at root_pid into images_dir (atomically); return the manifest. `shell_job`: the
    controlling terminal of a session led outside the tree (the shell's the tree was started from)
    is left behind instead of refused (engine/ctty.py): its processes come back without one."""
    ext_mnts, ext_devs = parse_externals(externals)
    ext_files = parse_external_files(externals)
    ext_veths = netdevs.parse_externals(externals)
    tree = process_tree(root_pid)
    if os.getpid() in {p for p, _ in tree}:   # (it would stop itself, and hang)
        raise DumpError(errno.EINVAL, f"the dump runs inside the tree of process {root_pid} it dumps (as one of "
                                      "its descendants): run mntcr dump from outside that tree")
    # A filesystem's daemon (a type with `daemon`) keeps running while the tree is dumped (its files
    # stay readable: a stopped one would hang us) and is not dumped: restore restarts it (engine/fs/).
    daemons = fs.daemons(p for p, _ in tree)
    if root_pid in daemons:
        raise DumpError(errno.EOPNOTSUPP, f"process {root_pid} serves a filesystem (holds its connection): "
                                          "a daemon is restarted at restore, never the root of a dumped tree")
    everyone = [p for p, _ in tree]
    tree = [(p, pp) for p, pp in tree if p not in daemons and pp not in daemons]
    # Zombies are recorded apart (engine/zombies.py): nothing of theirs is left to look at.
    tree, dead = zombies.split(tree)
    pids = [p for p, _ in tree]
    _precheck(tree, ext_mnts, leave_running, ext_files, ext_devs, ext_veths, dead)
    why = fs.daemon_refusal(daemons, ext_mnts)   # (a daemon restore could not restart on its superblock)
    if why:
        raise DumpError(errno.EOPNOTSUPP, why)
    freeze.refuse_traced(tree)
    _refuse_sessions(tree, dead, shell_job)
    writer = image.ImageWriter(images_dir)
    # A process that was stopped already stays stopped, whatever happens (--leave-running too).
    resume = [p for p in pids if freeze.state(p) not in ("T", "t")]
    watchdogs = [freeze.watchdog(resume)]   # (and one for the processes `settle` stops)
    freeze.stop_in_order(pids)
    ok = False
    after_reads: list = []   # (engine/fds/ kinds' steps once dump read the tree's files, before it resumes)
    try:
        freeze.wait_stopped(pids)
        # The tree as it is once stopped: a process forked since the look above (a shell's next
        # command) stopped too, one that exited since a zombie or gone (engine/freeze.py).
        now, started = freeze.settle(root_pid, everyone, daemons, ours=resume)
        if started:
            watchdogs.append(freeze.watchdog(started))
            resume += started
        freeze.refuse_left(pids, now)
        everyone = list(dict.fromkeys(everyone + [p for p, _ in now]))
        tree, dead = zombies.split(now)
        if started:   # (what was asked of the running tree, asked of the new ones too)
            _precheck(tree, ext_mnts, leave_running, ext_files, ext_devs, ext_veths, dead)
        freeze.refuse_zombies(tree)   # (a live one that exited since the split)
        freeze.refuse_traced(tree)
        _refuse_sessions(tree, dead, shell_job)
        # Reads that take something from the tree (engine/fds/ `takes`: data a client sent on a
        # connection not accepted yet) run last, once nothing else refuses; never with
        # --leave-running (such an fd is refused then).
        takes = None if leave_running else []
        doc = _collect(tree, writer, ext_mnts, ext_devs, ext_files, takes, shell_job, ext_veths, after_reads, dead)
        image.refuse_large_args(doc)   # (before the takes; commit counts the whole manifest)
        _record_zombies(doc, dead)
        for p in doc["processes"]:
            if p["pid"] not in resume:
                p["stopped"] = True   # (restore stops it again once the tree lives)
        for take in takes or ():
            try:
                take(doc)
            except OSError as e:
                raise DumpError(e.errno or errno.EIO, e.strerror or str(e)) from None
        writer.commit(doc)
        ok = True
        return doc
    finally:
        if not ok:
            writer.abort()
        if ok and not leave_running:
            # (the watchdogs with it, waited for at once: nothing is left for it to resume)
            freeze.kill_all(everyone + watchdogs)
        else:
            _run_after_reads(after_reads)
            freeze.signal_all(resume, signal.SIGCONT)
            freeze.signal_all(watchdogs, signal.SIGKILL)
        for w in watchdogs:
            os.waitpid(w, 0)


def _run_after_reads(steps: list) -> None:
    """Before the tree resumes: each kind's undo of what the dump's own reads of the tree's files did
    to it (inotify events they queued, engine/fds/inotify.py); a step that fails is told, not fatal."""
    for what, fn in steps:
        try:
            fn()
        except OSError as e:
            sys.stderr.write(f"mntcr dump: note: {what}: {e.strerror or e}\n")


def _refuse_sessions(tree, dead=(), shell_job: bool = False) -> None:
    """Sessions and process groups the stand-ins cannot make again (engine/sessions.py), the
    zombies' (`dead`) among them, and controlling terminals (engine/ctty.py)."""
    why = zombies.refusal(tree, dead) or ctty.refusal(tree, shell_job)
    if why:
        raise DumpError(errno.EOPNOTSUPP, why)


def _record_zombies(doc: dict, dead) -> None:
    """The image's `zombies` (engine/zombies.py), read once the tree is stopped; ids in their parent's
    user namespace when it has one (a zombie's own links are gone: it is made in its parent's)."""
    by_pid = {p["pid"]: p for p in doc["processes"]}
    out = []
    for pid, ppid in dead:
        z = zombies.read(pid, ppid)
        if z is None:
            continue   # (reaped since: its parent waited for it)
        name = by_pid[ppid].get("userns")
        if name is not None:
            zombies.ids_inside(z, doc["userns"][name])
        out.append(z)
    if out:
        doc["zombies"] = out


def _precheck(tree: list[tuple[int, int | None]], ext_mnts: dict[str, str], leave_running: bool = False,
              ext_files=(), declared_devs=(), ext_veths=None, dead=()) -> None:
    """Refuse before stopping anything: unsupported filesystems and propagation restore cannot
    build (from mountinfo alone), then what else the running tree already shows (engine/prestop.py:
    types' and fd kinds' prechecks, the locks of namespaces other user namespaces own)."""
    pids = [p for p, _ in tree]
    seen: set[int] = set()
    texts: list[tuple[int, str]] = []
    unsupported: dict[int, tuple[str, str]] = {}   # mount id -> (mount point, fstype), in order
    # A chrooted process's mountinfo leaves out the mounts outside its root: read each namespace's
    # through a process at its root when one is (dump's own look chroots to the widest root).
    for pid in sorted(pids, key=_chrooted):
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue  # one look per mount namespace
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
            mounts = mountinfo.brief(text)
        except FileNotFoundError:
            continue
        ext_devs = {dev for _, _, dev, mp, _ in mounts if mp in ext_mnts}
        for mid, _, dev, mp, fstype in mounts:
            if fs.lookup(fstype) is None and dev not in ext_devs:
                unsupported.setdefault(mid, (mp, fstype))
        texts.append((pid, text))
    if unsupported:
        raise DumpError(errno.EOPNOTSUPP, _unsupported_refusal(texts, unsupported, pids))
    for _, text in texts:
        _refuse_sharing(text)
    try:
        owned = prestop.check(tree, texts, ext_mnts, leave_running, ext_files, declared_devs, ext_veths, dead)
    except prestop.PrestopError as e:
        raise DumpError(e.errno, e.strerror) from None
    _check_construct(texts, ext_mnts, owned)


def _unsupported_refusal(texts: list[tuple[int, str]], unsupported: dict[int, tuple[str, str]],
                         pids: list[int]) -> str:
    """One line for the unsupported mounts: those whose type module says why (fs.refusal), then the
    generic line for the rest."""
    said: list[str] = []
    for _, text in texts:
        for m in mountinfo.parse(text):
            if m.mnt_id in unsupported and (line := fs.refusal(m, pids)) is not None:
                said.append(line)
                del unsupported[m.mnt_id]
    return "; ".join(said + ([unsupported_line(unsupported)] if unsupported else []))


def unsupported_line(unsupported: dict[int, tuple[str, str]], shown: int = 4) -> str:
    """One line naming every mount of a type mntcr cannot dump ({mount id: (mount point, fstype)}),
    so that a tree that inherited many (a shell unshared on a host) is fixed in one go."""
    if len(unsupported) == 1:
        (mid, (mp, fstype)), = unsupported.items()
        return f"mount {mid} ({mp}) on {fstype}: not supported; declare it with --external mnt[{mp}]:KEY"
    named = [f"{mid} ({mp}) on {fstype}" for mid, (mp, fstype) in list(unsupported.items())[:shown]]
    more = f" and {len(unsupported) - shown} more" if len(unsupported) > shown else ""
    return (f"{len(unsupported)} mounts of types mntcr cannot dump: {', '.join(named)}{more}; declare each "
            "with --external mnt[MOUNTPOINT]:KEY (a mount of the same filesystem as a declared one needs none)")


def _chrooted(pid: int) -> bool:
    """Whether process `pid` has a root other than its mount namespace's (True when gone)."""
    try:
        return os.readlink(f"/proc/{pid}/root") != "/"
    except OSError:
        return True


def _check_construct(texts: list[tuple[int, str]], ext_mnts, owned: dict[str, dict]) -> None:
    """Where peer groups are built while mounting (sharing=construct: no MOVE_MOUNT_SET_GROUP),
    plan the construction now, from mountinfo (and the locks of a namespace a user namespace owns,
    which restore copies into it midway), and refuse a tree no order builds while it keeps
    running, naming the mount (engine/construct.py)."""
    from engine import strategy
    if strategy.current().sharing != "construct":
        return
    from engine import construct   # (only for this strategy: ~0.5 ms of a dump's imports)
    mounts, ext_devs, own = [], set(), set()
    for pid, text in texts:
        parsed = mountinfo.parse(text)
        for m in parsed:
            if m.mountpoint in ext_mnts:
                ext_devs.add(m.dev)
            sb, root = m.dev, m.root
            if (h := fs.lookup(m.fstype)) is not None and h.per_mount:
                # Made from an object of its own (a namespace it binds), whole: mounts of one object
                # are one source, and no helper is made of it.
                sb, root = (m.dev, m.root), "/"
                own.add(sb)
            mounts.append({"id": m.mnt_id, "parent": m.parent_id, "mountpoint": m.mountpoint, "root": root,
                           "sb": sb, "shared": m.shared, "master": m.master,
                           "external": m.mountpoint in ext_mnts, "unbindable": m.unbindable,
                           "fstype": m.fstype, "source": m.source})
    if not any(m["shared"] or m["master"] for m in mounts):
        return
    seen: dict[int, dict] = {}
    for m in mounts:
        seen.setdefault(m["id"], m)  # one entry per mount, however many namespaces list it
    try:
        construct.plan(list(seen.values()), helper_ok=lambda dev: dev not in ext_devs and dev not in own,
                       userns_copies=userns_cr.construct_copies(owned),
                       sources=construct.kept_sources((m["id"], m["fstype"], m["source"])
                                                      for m in seen.values() if m["sb"] not in ext_devs))
    except construct.PlanError as e:
        raise DumpError(errno.EOPNOTSUPP, f"{e}; the tree keeps running") from None


def _check_construct_userns(mntns_doc: dict, superblocks: dict) -> None:
    """The construction plan again once locks are known (still before anything is written), where a
    mount namespace is owned by a user namespace: restore copies it into that user namespace midway
    (engine.userns_cr.construct_copies), which the first check, from mountinfo alone, could not plan."""
    from engine import strategy
    if strategy.current().sharing != "construct" or not any(ns.get("owner") for ns in mntns_doc.values()):
        return
    from engine import construct
    mounts = [m for ns in mntns_doc.values() for m in ns["mounts"]]
    if not any(m["shared"] or m["master"] for m in mounts):
        return
    try:
        construct.plan(mounts, helper_ok=lambda sid: not superblocks[sid].get("external"),
                       userns_copies=userns_cr.construct_copies(mntns_doc),
                       subtrees=userns_cr.construct_subtrees(mntns_doc),
                       sources=construct.kept_sources((m["id"], m["fstype"], m["source"]) for m in mounts
                                                      if not superblocks[m["sb"]].get("external")))
    except construct.PlanError as e:
        raise DumpError(errno.EOPNOTSUPP, f"{e}; the tree keeps running") from None


def _refuse_sharing(text: str) -> None:
    """Where this kernel's strategy cannot rebuild peer groups (sharing=refuse: no
    MOVE_MOUNT_SET_GROUP), refuse a tree with shared or slave mounts before it is stopped: restore
    here would refuse the image, and the tree would be lost."""
    from engine import strategy
    if strategy.current().sharing != "refuse":
        return
    found = []
    for line in text.splitlines():
        fields = line.partition(" - ")[0].split(" ")
        if any(x.startswith(("shared:", "master:")) for x in fields[6:]):
            found.append(f"{fields[0]} ({mountinfo.unescape(fields[4])})")
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise DumpError(errno.ENOSYS, f"mount{'s' if len(found) > 1 else ''} {', '.join(found[:3])}{more}: "
                                      "shared or slave, and this kernel "
                                      "cannot restore peer groups (no MOVE_MOUNT_SET_GROUP; Linux >= 5.15 "
                                      "restores them); the tree keeps running")


class _Plan:
    """What type hooks (engine/fs/) see of the dump being planned; `want_file` asks for the path of a
    file (by inode) on a superblock whose files are archived (e.g. the image file a device lies on)."""

    def __init__(self, superblocks, sb_of_dev, mntns_doc, ns_mounts, mounts_by_id):
        self.superblocks, self.sb_of_dev, self.mntns_doc = superblocks, sb_of_dev, mntns_doc
        self.ns_mounts, self.mounts_by_id = ns_mounts, mounts_by_id
        self.strategy = None
        self.members: dict[int, list[tuple[int, bytes]]] = {}   # pid namespace inode -> [(pid there, start)]
        self.pidns_name: dict[int, str] = {}
        self.pidns_doc: dict[str, dict] = {}   # (_Dump's: the image's pid namespace records)
        self.my_pidns: int | None = None
        self.wanted: dict[str, list[list]] = {}   # sb id -> [[inode, setter(path), message if missing, found]]
        self.ns_pids: dict[str, list[int]] = {}    # mount namespace name -> the dumped processes in it
        self.ns_names: dict = {}                     # (kind, inode) -> the image's namespace id ("net-1")
        # A type's namespaces no process is in: net ns -> its own sysctls, net ns whose lo is up (_Dump's)
        self.netvars: dict[str, dict] = {}
        self.net_lo_up: set[str] = set()
        self.netfilter: dict[str, dict] = {}   # net ns -> its firewall ruleset (engine/netfilter.py)
        # detached mount id -> handle of a layer directory on it (engine/fs/_layers_detached.py)
        self.layer_anchors: dict[int, tuple] = {}

    def dumper_pidns(self) -> str:
        """The image id of the dumper's own pid namespace, recorded (as the host's: restore gives its
        own) when no process of the tree is in it: a pid-bound superblock of it is the restorer's."""
        name = self.pidns_name.get(self.my_pidns)
        if name is None:
            name = self.pidns_name[self.my_pidns] = f"pid-{len(self.pidns_name)}"
            self.pidns_doc[name] = {"parent": None, "host": True}
        return name

    def in_ns_copy(self, ns_name: str, fn, *args):
        """fn(*args) in a forked child standing at the root of a private copy of mount namespace
        `ns_name`, where it may unmount covers to look beneath them (the tree is stopped)."""
        pids = self.ns_pids[ns_name]
        fd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY)
        try:
            return forkrun.run(nscopy.run_in_copy, fd, pids, fn, args)
        finally:
            os.close(fd)

    def want_file(self, sid: str, ino: int, setter, missing: str) -> None:
        """Call setter(path on superblock `sid`) for the file with inode `ino`; refuse with `missing` if none."""
        self.wanted.setdefault(sid, []).append([ino, setter, missing, False])


class _Dump:
    """What the steps of one dump share: the stopped tree, what was declared external, the image
    being written, and the documents each step fills for the ones after it."""

    def __init__(self, tree, writer: image.ImageWriter, ext_mnts, ext_devs, ext_files, takes):
        self.tree, self.writer, self.takes = tree, writer, takes
        self.shell_job = False   # leave the terminal of a session led outside the tree (--shell-job)
        self.dead: list[tuple[int, int]] = []   # the tree's zombies [(pid, ppid)] (engine/zombies.py)
        self.ext_mnts, self.ext_devs, self.ext_files = ext_mnts, ext_devs, ext_files
        # _inspect_namespaces
        self.me: dict[str, int | None] = {}               # the dumper's own namespace inodes
        self.ns_of: dict[int, dict[str, int]] = {}        # pid -> {kind: namespace inode}
        self.names: dict = {}                             # (kind, inode) -> image name
        self.users: dict = {}                             # user namespaces (engine/userns_cr.py plan)
        self.by_mntns: dict[int, list[int]] = {}          # mount namespace inode -> its processes
        self.ns_data: dict[int, dict] = {}                # mount namespace inode -> what nsinspect.inspect_ns read
        self.kept: dict[int, nscopy.Kept] = {}            # mount namespace inode -> the helper that read it (until archived)
        # _record_mounts
        self.superblocks: dict[str, dict] = {}
        self.sb_of_dev: dict[str, str] = {}
        self.mntns_doc: dict[str, dict] = {}
        self.mount_ns: dict[int, int] = {}                # mount id -> mntns inode
        self.mounts_by_id: dict[int, mountinfo.Mount] = {}
        self.root_ns: int | None = None
        self.plan: _Plan | None = None
        # _plan_clones: which mounts to clone, and what each clone is for
        self.clone_plan: dict[int, list[int]] = {}
        self.archive_for: dict[int, tuple[str, str]] = {}   # mount id -> (sb id, root)
        self.probe_for: dict[int, str] = {}                  # mount id -> sb id its type probes
        self.ghost_for: dict[int, tuple[str, str]] = {}      # mount id -> (sb id, deleted root) to archive
        self.ghost_of: dict[int, str] = {}                   # mount id -> its ghost's id, once archived
        self.ghosts_doc: dict[str, dict] = {}
        self.pidns_doc: dict[str, dict] = {}
        self.linked_names: dict[str, str] = {}
        self.files: dict[str, dict] = {}                  # archive name -> what content.archive says of it
        # _collect_processes
        self.procs_doc: list[dict] = []
        self.uts_names: dict[str, str] = {}
        self.domainnames: dict[str, str] = {}      # uts ns -> its NIS domain name, when one was set
        self.sysvipc: dict[str, dict] = {}         # ipc ns -> its System V IPC objects (engine/sysvipc.py)
        self.netvars: dict[str, dict] = {}         # net ns -> its own sysctls (engine/netvars.py)
        self.net_lo_up: set[str] = set()           # net ns whose lo is up (engine/netdevs.py)
        self.netdevs: dict[str, dict] = {}         # net ns -> devices the image keeps (engine/netlinks.py)
        self.netfilter: dict[str, dict] = {}       # net ns -> its firewall ruleset (engine/netfilter.py)
        self.ext_veths: dict[str, str] = {}        # --external veth[NAME]:KEY
        self.detached_doc: dict = {}
        self.objects: dict[str, dict] = {}

    def mntns_name(self, ino: int) -> str:
        """The image name of the mount namespace with inode `ino`."""
        return self.names[("mnt", ino)]

    def all_mounts(self):
        """Every mount entry of the image, namespace by namespace."""
        for ns in self.mntns_doc.values():
            yield from ns["mounts"]


def _collect(tree, writer: image.ImageWriter, ext_mnts, ext_devs, ext_files=None, takes=None,
             shell_job: bool = False, ext_veths=None, after_reads=None, dead=()) -> dict:
    """The image document of the stopped tree (archives written through `writer`): the dump
    algorithm, one step after the other; each step refuses with one line naming what it refuses.
    `after_reads` gets the fd kinds' (what, fn) steps to run before the tree resumes; `dead`: the
    tree's zombies [(pid, ppid)]."""
    d = _Dump(tree, writer, ext_mnts, ext_devs, ext_files or {}, takes)
    d.after_reads = [] if after_reads is None else after_reads
    d.shell_job = shell_job
    d.ext_veths = ext_veths or {}
    d.dead = list(dead)
    try:
        _inspect_namespaces(d)      # 2. namespaces of each process; mountinfo, roots, cwds, fds per mount namespace
        _record_mounts(d)           # 3. superblocks and mount entries (idmaps, superblock owners, locks)
        _settle_externals(d)        #    which mounts and superblocks come from outside the dump
        _plan_devices(d)            #    block devices: declared external or resolved by their type
        _mark_outside_roots(d)      #    namespace roots the restore is given (--root)
        _refuse_undumpable(d)       #    types, roots and devices nothing can make again
        _check_external_binds(d)    #    other mounts of external superblocks lie in an external one
        _plan_superblocks(d)        #    sources, sharing, each type's own plan
        _plan_clones(d)             # 4. which mounts to clone: archives, ghosts, probes
        _release_helpers(d)         #    namespace helpers nothing will be cloned from
        _record_pid_namespaces(d)
        _archive_contents(d)        #    clone them from namespace copies and archive their files
    finally:
        for kept in d.kept.values():   # (the helpers of namespaces nothing was cloned from, or a refusal's)
            kept.close()
    _name_ghosts(d)
    _collect_processes(d)       # 5. fds by kind, hostnames, detached mounts
    try:
        userns_cr.check_late_superblocks(d.superblocks, d.mntns_doc, d.users)
    except userns_cr.UsernsError as e:
        raise DumpError(e.errno, e.strerror) from None
    return _manifest(d)


def _inspect_namespaces(d: _Dump) -> None:
    """Name every namespace of the tree, plan its user namespaces, and read each mount namespace
    (mountinfo, and its processes' roots, cwds and fds) in a helper that entered it."""
    d.me = {k: kernel.ns_ino("self", k) for k in image.NS_KINDS + ("user",)}
    for pid, _ in d.tree:
        d.ns_of[pid] = {k: kernel.ns_ino(pid, k) for k in image.NS_KINDS + ("user",)}

    # Name namespaces by first appearance (root process first).
    d.names = prestop.ns_names([pid for pid, _ in d.tree], image.NS_KINDS)

    try:
        d.users = userns_cr.plan(d.tree, d.names, image.NS_KINDS)   # user namespaces (engine/userns_cr.py)
    except OSError as e:
        raise DumpError(e.errno or errno.EOPNOTSUPP, str(e) if e.filename else e.strerror or str(e)) from None

    for pid, _ in d.tree:
        if d.ns_of[pid]["mnt"] is not None:  # None: a zombie (exited, no namespaces left to look at)
            d.by_mntns.setdefault(d.ns_of[pid]["mnt"], []).append(pid)
    from engine import strategy
    by_statmount = strategy.current().ids == "statmount"
    # The kinds of the tree's fds, before the helpers chroot: only these (a tree without sockets
    # loads no socket module; the precheck loaded most of them already).
    fdkinds.load_tree([pid for pid, _ in d.tree])
    for ino, members in d.by_mntns.items():
        fd = os.open(f"/proc/{members[0]}/ns/mnt", os.O_RDONLY)
        try:
            if len(d.kept) < _KEPT_MAX:
                # (its helper stays for the clones _archive_contents asks of the namespace: one fork less)
                d.kept[ino] = nscopy.Kept(fd, members, nsinspect.inspect_ns, by_statmount)
                d.ns_data[ino] = d.kept[ino].result
            else:   # (this namespace's clones fork a helper of their own)
                d.ns_data[ino] = forkrun.run(nsinspect.inspect_ns, fd, members, by_statmount)
        finally:
            os.close(fd)
        d.ns_data[ino]["mounts"] = mountinfo.parse(d.ns_data[ino].pop("mountinfo"), d.ns_data[ino]["unique"])


# A kept namespace helper holds the pages it copied on write (~9 MB in a small namespace): a tree of
# many mount namespaces keeps this many at once, not one a namespace.
_KEPT_MAX = 4


def _release_helpers(d: _Dump) -> None:
    """Let the namespace helpers go whose namespaces nothing is cloned from."""
    for ino in [ino for ino in d.kept if ino not in d.clone_plan]:
        d.kept.pop(ino).close()


def _sb_sources(ns_data: dict) -> dict[str, str]:
    """The source each superblock (by device) is made from at restore: its first mount's, unless its
    type picks another (a network type: the shallowest path, so that every other mount's root lies
    beneath it)."""
    sources: dict[str, list[str]] = {}
    for data in ns_data.values():
        for m in data["mounts"]:
            sources.setdefault(m.dev, []).append(m.source)
    sb_source: dict[str, str] = {}
    for data in ns_data.values():
        for m in data["mounts"]:
            if m.dev in sources:
                handler = fs.lookup(m.fstype)
                found = sources.pop(m.dev)
                sb_source[m.dev] = handler.sb_source(found) if handler is not None else found[0]
    return sb_source


def _record_mounts(d: _Dump) -> None:
    """One superblock record per device and one entry per mount of each namespace; with them the
    idmaps, the user namespaces superblocks were made in and the locks of owned namespaces."""
    d.root_ns = d.ns_of[d.tree[0][0]]["mnt"]
    used_ext = set()
    # Equal option lists are one list object (never changed): 50,000 mounts have a few dozen.
    lists: dict[tuple[str, ...], list[str]] = {}

    def shared_list(opts: tuple[str, ...]) -> list[str]:
        got = lists.get(opts)
        if got is None:
            got = lists[opts] = list(opts)
        return got

    sb_source = _sb_sources(d.ns_data)
    superblocks, sb_of_dev = d.superblocks, d.sb_of_dev
    for ino, data in d.ns_data.items():
        mounts = data["mounts"]
        ids = {m.mnt_id for m in mounts}
        roots = [m for m in mounts if m.parent_id not in ids]
        if len(roots) != 1:
            raise DumpError(errno.EIO, f"mount namespace {d.mntns_name(ino)}: {len(roots)} root mounts")
        root = roots[0]
        entries = []
        for m in mounts:
            d.mounts_by_id[m.mnt_id] = m
            d.mount_ns[m.mnt_id] = ino
            if m.dev not in sb_of_dev:
                sid = f"sb-{len(sb_of_dev)}"
                sb_of_dev[m.dev] = sid
                superblocks[sid] = {"fstype": m.fstype, "source": sb_source[m.dev], "super_opts": list(m.super_opts),
                                    "dev": m.dev, "external": False, "archives": []}
                handler = fs.lookup(m.fstype)
                if handler is not None and handler.device:
                    superblocks[sid]["device"] = {"dev": handler.host_device(data["source_rdev"].get(m.mnt_id))
                                                  or (m.dev if m.major else None)}
            ext_key = d.ext_mnts.get(m.mountpoint) if ino == d.root_ns else None
            if ext_key is not None:
                used_ext.add(m.mountpoint)
            sid = sb_of_dev[m.dev]
            m_root, deleted = ghosts.split_root(m.root)
            handler = fs.lookup(m.fstype)
            if handler is not None:
                m_root = _hook(handler.mount_root, m_root, m.source, superblocks[sid]["source"],
                               f"mount {m.mnt_id} ({m.mountpoint})")
            entries.append({
                "id": m.mnt_id, "parent": None if m is root else m.parent_id, "mountpoint": m.mountpoint,
                "root": m_root, "fstype": superblocks[sid]["fstype"], "source": m.source,
                "mount_opts": shared_list(m.mount_opts), "super_opts": shared_list(m.super_opts),
                "shared": m.shared, "master": m.master, "propagate_from": m.propagate_from,
                "unbindable": m.unbindable, "sb": sid, "external": ext_key, "dev": superblocks[sid]["dev"],
                "uid": m.unique_id,
            })
            if m.mnt_id in data["dirs"]:
                entries[-1]["dir"] = data["dirs"][m.mnt_id]
            if deleted:
                entries[-1]["ghost"] = True   # its root was unlinked: named once archived
        d.mntns_doc[d.mntns_name(ino)] = {"root": root.mnt_id, "mounts": entries}
        _record_ns_users(d, ino, mounts, entries)
    _hook(mountrules.unknown_externals, d.ext_mnts, used_ext)


def _record_ns_users(d: _Dump, ino: int, mounts: list, entries: list[dict]) -> None:
    """What user namespaces say of mount namespace `ino`: idmapped mounts, superblocks made inside a
    user namespace of the tree (engine/sbowner.py), and the owner and locked mounts of an owned one."""
    try:
        userns_cr.record_idmaps(d.by_mntns[ino][0], entries)
    except OSError as e:
        raise DumpError(e.errno or errno.EOPNOTSUPP, e.strerror or str(e)) from None
    if d.users["userns"]:
        try:
            pids = d.by_mntns[ino]
            userns_cr.record_sb_owners(pids[0], mounts, d.sb_of_dev, d.superblocks, d.tree, d.users,
                                       clone=lambda m, pids=pids, ms=mounts: nscopy.clone_one(pids, ms, m.mnt_id))
        except userns_cr.UsernsError as e:
            raise DumpError(e.errno, e.strerror) from None
    owner = d.users["mntns_owner"].get(d.mntns_name(ino))
    if owner is not None:
        d.mntns_doc[d.mntns_name(ino)]["owner"] = owner
        try:
            owned_sbs = {sid for sid, sb in d.superblocks.items() if sb.get("owner")}
            userns_cr.locks(d.by_mntns[ino][0], entries, d.mntns_name(ino), owned_sbs)
        except OSError as e:
            raise DumpError(e.errno or errno.EOPNOTSUPP, e.strerror or str(e)) from None


def _settle_externals(d: _Dump) -> None:
    """Which mount of an overmount stack is the declared external one, and which superblocks are
    external; then the sharing construction plan once locks are known, and the hooks' view (_Plan)."""
    # An overmount stack has several mounts at one mount point: the external is the visible (top) one,
    # unless the stack holds a type we cannot dump or the host's one superblock of a type (a runtime's
    # /dev stacked on the host's): then that.
    for ns in d.mntns_doc.values():
        by_mp: dict[str, list[dict]] = {}
        for e in ns["mounts"]:
            if e["external"]:
                by_mp.setdefault(e["mountpoint"], []).append(e)
        for mp, es in by_mp.items():
            if len(es) > 1:
                unsupported = [e for e in es if (t := fs.lookup(e["fstype"])) is None or t.host_global]
                for e in es:
                    if (e not in unsupported) if unsupported else any(o["parent"] == e["id"] for o in es):
                        e["external"] = None

    for e in d.all_mounts():
        if e["external"]:
            d.superblocks[e["sb"]]["external"] = True
    _check_construct_userns(d.mntns_doc, d.superblocks)
    ns_mounts = {d.mntns_name(ino): data["mounts"] for ino, data in d.ns_data.items()}
    d.plan = _Plan(d.superblocks, d.sb_of_dev, d.mntns_doc, ns_mounts, d.mounts_by_id)
    d.plan.ns_pids = {d.mntns_name(ino): pids for ino, pids in d.by_mntns.items()}
    # (the image's namespace ids, its user and time namespaces' too: a type module may name one)
    d.plan.ns_names = {**d.names, **{("user", ino): n for ino, n in d.users.get("ino_name", {}).items()},
                       **{("time", ino): n for ino, n in placement.time_names([p for p, _ in d.tree]).items()}}
    d.plan.netvars, d.plan.net_lo_up = d.netvars, d.net_lo_up   # (one record of a network namespace's state)
    d.plan.netfilter = d.netfilter


def _plan_devices(d: _Dump) -> None:
    """Devices: declared external, or resolved by the type (a device over a file we dump), else
    marked unresolved (refused by _refuse_undumpable unless the mount turns out external)."""
    for sid, sb in d.superblocks.items():
        dev = (sb.get("device") or {}).get("dev")
        if dev is None or sb["external"]:
            continue
        if dev in d.ext_devs:
            sb["device"]["key"] = d.ext_devs[dev]
            continue
        if not _hook(fs.lookup(sb["fstype"]).plan_device, sid, sb, d.plan):
            sb["device"]["unresolved"] = True


def _mark_outside_roots(d: _Dump) -> None:
    """The namespace root on a filesystem we cannot recreate came from outside (criu's --root): also
    when a volume of the same filesystem was declared external (the root is no bind of that
    volume), and a root its type says was built outside (on layers no mount of the namespace holds)."""
    _hook(mountrules.mark_roots, d.mntns_doc, d.superblocks, d.plan, d.mntns_name(d.root_ns))


def _refuse_undumpable(d: _Dump) -> None:
    """Refuse a mount of a superblock we make again that restore cannot make (engine/mountrules.py)."""
    for e in d.all_mounts():
        if not d.superblocks[e["sb"]]["external"]:
            _hook(mountrules.own_mount, e, d.superblocks[e["sb"]])   # (also asked before the stop)


def _check_external_binds(d: _Dump) -> None:
    """Mounts of an external superblock must be binds of some external mount of it (and not of a
    deleted file: no archive holds one)."""
    ext_roots: dict[str, list[str]] = {}
    for e in d.all_mounts():
        if e["external"]:
            ext_roots.setdefault(e["sb"], []).append(e["root"])
    for e in d.all_mounts():
        if d.superblocks[e["sb"]]["external"] and not e["external"]:
            _hook(mountrules.external_mount, e, ext_roots.get(e["sb"], ()))   # (also asked before the stop)


def _plan_superblocks(d: _Dump) -> None:
    """Check that restore can give every superblock its sources and every mount its sharing, then
    let each type module plan its superblocks (archives, layers, owning namespaces...)."""
    from engine import strategy
    try:
        prestop.check_sources(d.mntns_doc, {sid for sid, sb in d.superblocks.items() if sb["external"]})
    except fs.FsError as e:
        raise DumpError(e.errno, e.strerror) from None
    _check_sharing(d.mntns_doc, d.superblocks, {d.mntns_name(ino): pids[0] for ino, pids in d.by_mntns.items()})
    d.plan.strategy = strategy.current()
    for sid, sb in d.superblocks.items():
        if not sb["external"]:
            _hook(fs.lookup(sb["fstype"]).plan, sid, sb, d.plan)


def _plan_clones(d: _Dump) -> None:
    """Which mounts to clone: one per disjoint root of each content superblock, one of each type
    probes, one per deleted root (a ghost) to archive (prestop.clones_of)."""
    mounts_of_sb: dict[str, list[dict]] = {}
    for e in d.all_mounts():
        mounts_of_sb.setdefault(e["sb"], []).append(e)
    parents = {e.get("parent") for e in d.all_mounts()}
    for sid, es in mounts_of_sb.items():
        sb = d.superblocks[sid]
        for why, e in prestop.clones_of(sb, es, parents):
            if why == "ghost":
                if not fs.lookup(sb["fstype"]).content:
                    raise DumpError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on {e['fstype']}: its "
                                                      f"root {e['root']} was deleted; only a {fs.content_names()} "
                                                      "can hold it again")
                # Each one looked at: two files unlinked under one name are two ghosts (bwrap's
                # --bind-data temporary files when mkstemp repeats a name), one file bound twice one.
                d.ghost_for[e["id"]] = (sid, e["root"])
            elif why == "archive":
                d.archive_for[e["id"]] = (sid, e["root"])
            else:
                d.probe_for[e["id"]] = sid
            d.clone_plan.setdefault(d.mount_ns[e["id"]], []).append(e["id"])


def _record_pid_namespaces(d: _Dump) -> None:
    """The pid namespaces of the tree (parent, whether the dumper's), and who their processes are."""
    ino_name = {ino: name for (k, ino), name in d.names.items() if k == "pid"}
    for pid, _ in d.tree:
        ino = d.ns_of[pid]["pid"]
        name = ino_name[ino]
        if name in d.pidns_doc:
            continue
        parent_ino = _pidns_parent_ino(pid)
        d.pidns_doc[name] = {"parent": ino_name.get(parent_ino), "host": ino == d.me["pid"]}
    # Who each pid namespace's processes are (their pid in it, start time): a probe matches a
    # pid-bound superblock to its namespace through them, never through its pid 1 (maybe not ours).
    for pid, _ in d.tree:
        ident = _pid_identity(f"/proc/{pid}")
        if ident is not None:
            d.plan.members.setdefault(d.ns_of[pid]["pid"], []).append(ident)
    d.plan.pidns_name = ino_name
    d.plan.pidns_doc, d.plan.my_pidns = d.pidns_doc, d.me["pid"]


class _Batch:
    """Mount clones waiting to go into one tar (content.archive), 500 at most, of one owner each."""

    def __init__(self, d: _Dump):
        self.d = d
        # (mount fd, member, sb id, directory the member fills, the only name it holds there or None)
        self.items: list[tuple[int, str, str, str, str | None]] = []
        self.dirs: dict[str, list] = {}   # member -> [(path, clone)] of what mounts cover (nscopy.stream)
        self.member_no = itertools.count()

    def add(self, mfd: int, sid: str, root: str, only: str | None, dirs=()) -> None:
        """Queue clone `mfd` of superblock `sid` (filling `root`; `only`: the one file it holds there;
        `dirs`: [(path, clone)] of its directories that mounts cover, as other mounts show them:
        content.archive); the batch owns the fds once queued."""
        superblocks = self.d.superblocks
        # One archive holds superblocks of one owner: restore extracts it as that owner's root.
        if self.items and superblocks[self.items[0][2]].get("owner") != superblocks[sid].get("owner"):
            self.flush()
        member = f"sb-{next(self.member_no)}"
        self.items.append((mfd, member, sid, root, only))
        if dirs:
            self.dirs[member] = list(dirs)

    def flush_if_full(self) -> None:
        """Write the archive once it has 500 members."""
        if len(self.items) >= 500:
            self.flush()

    def flush(self) -> None:
        """Write the queued clones into one new archive and close them."""
        if not self.items:
            return
        name, path = self.d.writer.new_archive()
        sockets: dict[str, list] = {}   # socket files tar leaves out, made again at restore
        mounts = [(mfd, member if only is None else f"{member}/{only}") for mfd, member, _, _, only in self.items]
        # (a kept namespace helper done with its clones archives them: no child forked for it)
        kept = next((k for k in self.d.kept.values() if k.fits(mounts, self.dirs)), None)
        flags: dict[str, list] = {}     # files with inode attributes tar keeps none of, set again at restore
        self.d.files[name] = content.archive(mounts, path, sockets, self.dirs, kept.archive if kept else None, flags)
        for mfd, member, sid, root, only in self.items:
            arc = {"file": name, "member": member, "root": root}
            if only is not None:
                arc["only"] = only  # a file bind's file: the member holds it alone, not its directory
            if member in sockets:
                arc["sockets"] = sockets[member]
            if member in flags:
                arc["attrs"] = flags[member]
            self.d.superblocks[sid]["archives"].append(arc)
            os.close(mfd)
        self.items.clear()
        self._close_dirs()

    def _close_dirs(self) -> None:
        for views in self.dirs.values():
            for _, vfd in views:
                os.close(vfd)
        self.dirs.clear()

    def close(self) -> None:
        """Close what was queued and not written (a refusal)."""
        for mfd, *_ in self.items:
            os.close(mfd)
        self._close_dirs()


def _archive_contents(d: _Dump) -> None:
    """Clone the planned mounts out of a private copy of each namespace and archive them: batches of
    mounts into one tar each (empty roots need no archive), ghosts alone, probes to their type."""
    # A file we archive that a device of the image lies on must hold what its filesystem has
    # cached: flush (the tree is stopped).
    if d.plan.wanted:
        os.sync()

    # Files open under a deleted name that still have another name (CRIU's link-remap): that name
    # is searched for while their superblock is archived (the file comes back with the others).
    d.linked_names = placement.want_linked(d.ns_data, d.mounts_by_id, d.mntns_doc, d.superblocks, d.plan)

    batch = _Batch(d)
    # Clones done with here (empty roots, ghosts, probes) are let go of in batches: each one's last
    # close would wait for an RCU grace period (engine/parking.py; ~1,800 at 10,000 mounts).
    from engine import features
    park = parking.Parking(features.available()["move_mount(to-detached)"].present if d.clone_plan else False,
                           anchored=True)
    try:
        for ino, wanted in d.clone_plan.items():
            beneath: dict[int, list] = {}   # mount -> [(path, clone)] of what mounts on it cover
            fd = os.open(f"/proc/{d.by_mntns[ino][0]}/ns/mnt", os.O_RDONLY)
            try:
                others = [(d.by_mntns[o], d.ns_data[o]["mounts"]) for o in d.by_mntns if o != ino]
                for mids, fds in nscopy.stream(fd, d.by_mntns[ino], wanted, d.ns_data[ino]["mounts"], others,
                                               beneath, d.kept.get(ino)):
                    kept = set()
                    try:
                        for mid, mfd in zip(mids, fds):
                            if mid in d.ghost_for:
                                _archive_ghost(d, mid, mfd)
                            elif mid in d.archive_for:
                                if _add_content(d, batch, mid, mfd, beneath.pop(mid, ())):
                                    kept.add(mfd)  # the batch owns it now (flush closes it)
                                    batch.flush_if_full()
                            else:
                                sid = d.probe_for[mid]
                                _hook(fs.lookup(d.superblocks[sid]["fstype"]).probe, sid, mid, mfd, d.plan)
                    finally:
                        for mfd in fds:
                            if mfd not in kept:
                                park.drop(mfd)
            finally:
                os.close(fd)
                for views in beneath.values():   # (of mounts not archived: probed, or a ghost)
                    for _, vfd in views:
                        os.close(vfd)
            for other, kept in d.kept.items():   # (one idle helper is enough to archive: the last one)
                if other != ino and kept.idle:
                    kept.close()
        batch.flush()
    finally:
        batch.close()
        park.flush()

    for want in (w for ws in d.plan.wanted.values() for w in ws):
        if not want[3]:
            raise DumpError(errno.EOPNOTSUPP, want[2])


def _add_content(d: _Dump, batch: _Batch, mid: int, mfd: int, dirs=()) -> bool:
    """Clone `mfd` of mount `mid` into the batch (True: the batch owns it now); first the files the
    type hooks asked for by inode are looked for on it, and an empty root is only recorded."""
    sid, root = d.archive_for[mid]
    for want in d.plan.wanted.get(sid, ()):
        rel = content.find_inode(mfd, want[0])
        if rel is not None:
            want[1](rel if root == "/" else root + rel)
            want[3] = True
    top = f"/proc/self/fd/{mfd}"
    if not stat.S_ISDIR(os.fstat(mfd).st_mode):
        # A file bind (its directory may be on no mount at all): the
        # member holds the file alone, extracted into its directory.
        parent, _, base = root.rpartition("/")
        batch.add(mfd, sid, parent or "/", base)
        return True
    if not os.listdir(top):
        for _, vfd in dirs:   # (nothing mounted on it: none)
            os.close(vfd)
        st = os.stat(top)
        d.superblocks[sid].setdefault("empty_roots", []).append(
            {"root": root, "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid})
        return False
    batch.add(mfd, sid, root, None, dirs)
    return True


def _archive_ghost(d: _Dump, mid: int, mfd: int) -> None:
    """Archive the deleted root of mount `mid` (a clone: `mfd`) alone, as a ghost of the image."""
    sid, root = d.ghost_for[mid]
    st = os.fstat(mfd)
    inode = f"{st.st_dev}:{st.st_ino}"
    for gid, g in d.ghosts_doc.items():
        if g["sb"] == sid and g["path"] == root:
            other = next(m for m, x in d.ghost_of.items() if x == gid)
            _hook(mountrules.ghost_names, {"id": mid, "mountpoint": d.mounts_by_id[mid].mountpoint, "root": root},
                 {"id": other, "mountpoint": d.mounts_by_id[other].mountpoint}, g.get("inode") == inode)
            d.ghost_of[mid] = gid
            return
    _hook(mountrules.ghost_attrs, f"mount {mid} ({d.mounts_by_id[mid].mountpoint}): its root {root}",
          kernel.statx_attributes("", mfd, kernel.AT_EMPTY_PATH)[0])
    name, path = d.writer.new_archive()
    try:
        d.files[name] = ghosts.archive_link("/proc/self/fd", str(mfd), root, path, pass_fds=(mfd,))
    except OSError as e:
        raise DumpError(e.errno or errno.EIO, f"mount {mid} "
                        f"({d.mounts_by_id[mid].mountpoint}): {e.strerror or e}") from None
    gid = f"g-{len(d.ghosts_doc)}"
    d.ghosts_doc[gid] = {"sb": sid, "path": root, "file": name, "member": "sb-0",
                         "only": root.rsplit("/", 1)[1], "inode": inode}
    d.ghost_of[mid] = gid


def _name_ghosts(d: _Dump) -> None:
    """Each mount on a deleted root names its ghost (an external one binds the host path instead)."""
    for e in d.all_mounts():
        if e.get("ghost") is True and e["external"]:
            del e["ghost"]   # (declared external: restore binds the host path given for it)
        elif e.get("ghost") is True:
            e["ghost"] = d.ghost_of[e["id"]]


def _record_cttys(procs_doc: list[dict], shell_job: bool = False) -> None:
    """Mark the members of sessions that have their leader's terminal (engine/ctty.py); refused
    before the stop already when restore could not give it (a change since: refused now). With
    `shell_job`, say which processes come back without the terminal they were started from."""
    for pid in ctty.record(procs_doc, shell_job):
        sys.stderr.write(f"mntcr dump: note: process {pid} ({kernel.comm_shown(pid)}): its controlling terminal "
                         "(of a session led outside the tree) is left behind (--shell-job): restore gives it none\n")
    problem = ctty.plan(procs_doc).problem
    if problem is not None:
        raise DumpError(errno.EOPNOTSUPP, ctty.why(*problem))


def _collect_processes(d: _Dump) -> None:
    """Each process: namespaces, root, cwd and fds by kind (engine/fdtable.py, engine/fds/); the
    hostname of each UTS namespace; then the detached mounts their roots, cwds and fds lie on."""
    from engine import detached
    fdtable = FdTable(d.takes)
    # the tree's processes (files of /proc/N/ of one, pidfds, fds on its namespaces)
    fdtable.scratch["pids"] = [pid for pid, _ in d.tree]
    fdtable.scratch["user_names"] = d.users.get("ino_name", {})   # its user namespaces' image ids
    fdtable.scratch["after_reads"] = d.after_reads   # (FdKind.dump: steps run before the tree resumes)
    map_unplaced: list = []
    try:
        d.procs_doc = placement.processes(d.tree, d.ns_of, d.ns_data, d.names, d.me, d.mounts_by_id, fdtable,
                                          (d.mntns_doc, d.superblocks, d.ghosts_doc, d.writer, d.files,
                                           d.linked_names), d.ext_files, map_unplaced, d.dead)
        fdtable.finish(d.procs_doc)
        _record_cttys(d.procs_doc, d.shell_job)
        # (roots made again from what a process holds: a pty bound as /dev/console needs its master)
        mountrules.held_roots(d.mntns_doc, d.superblocks, fdtable.scratch.get("held", ()))
    except (FdError, fs.FsError) as e:
        fdtable.release()
        raise DumpError(e.errno or errno.EOPNOTSUPP, e.strerror or str(e)) from None
    finally:
        fdtable.close()
    unplaced = [(loc, p["pid"], link) for p in d.procs_doc for loc, link in placement.unplaced_of(p)] + fdtable.unplaced
    nets: dict[str, int] = {}
    for p in d.procs_doc:
        uts = p["ns"]["uts"]
        if uts not in d.uts_names and "uts" not in p["host_ns"]:
            d.uts_names[uts], domain = _uts_names_of(p["pid"])
            if domain != "(none)":   # (a new namespace's: recorded only when set)
                d.domainnames[uts] = domain
        ipc = p["ns"]["ipc"]
        if ipc not in d.sysvipc and "ipc" not in p["host_ns"]:
            try:
                d.sysvipc[ipc] = sysvipc.read(p["pid"], [q["pid"] for q in d.procs_doc])
            except OSError as e:
                raise DumpError(e.errno or errno.EIO, f"process {p['pid']}: ipc namespace: {e.strerror or e}") from None
        segments = {s["id"] for s in d.sysvipc.get(ipc, {}).get("shm", ())}
        if segments:
            from engine import shmattach   # (a tree with System V segments alone; read from here, the host's /proc)
            if attached := shmattach.read(p["pid"], segments):
                p["shm"] = attached
        net = p["ns"]["net"]
        if net not in nets and net not in d.netvars and "net" not in p["host_ns"]:
            nets[net] = p["pid"]
    try:
        d.netdevs, up = netdevs.collect(nets, d.ext_veths)
        d.net_lo_up |= up   # (a lone namespace's, one only a bind keeps, are in already)
        if nets:   # (firewall tables: engine/netfilter.py, after the devices their chains may name)
            from engine import netfilter
            d.netfilter.update(netfilter.collect(nets, d.netdevs))   # (a lone namespace's are in already)
    except netdevs.NetdevError as e:
        raise DumpError(e.errno, e.strerror) from None
    for net, pid in nets.items():
        from engine import netvars   # (a tree with a network namespace of its own: ~1.6 M instructions)
        # (with those of the devices the image makes: lxd's bridge with IPv6 off)
        d.netvars[net] = netvars.read(pid, {lk["name"]: lk["mtu"] for lk in d.netdevs.get(net, {}).get("links", ())})
    outside = netdevs.tun_held_outside(d.netdevs, d.procs_doc)
    if outside is not None:
        raise DumpError(errno.EOPNOTSUPP, outside)

    for g in d.ghosts_doc.values():
        g.pop("inode", None)  # only to share one ghost between the fds and mounts of one file
    try:
        # (a mapping on a detached mount an fd or cwd holds too is planned with them: an invisible
        # superblock's archive then has its file, a program run from there among them)
        held = {loc["mnt"] for loc, _pid, _link in unplaced}
        d.detached_doc = detached.plan(unplaced + [i for i in map_unplaced if i[0]["mnt"] in held], d.superblocks,
                                        d.sb_of_dev, d.ns_data, d.by_mntns, d.mounts_by_id, d.writer, d.files, d.plan)
        _plan_mapped_detached(map_unplaced, d.detached_doc, d.procs_doc,
                              lambda items: detached.plan(items, d.superblocks, d.sb_of_dev, d.ns_data, d.by_mntns,
                                                          d.mounts_by_id, d.writer, d.files, d.plan))
    finally:
        fdtable.release()
    d.objects = fdtable.objects


def _plan_mapped_detached(items: list, detached_doc: dict, procs_doc: list, plan) -> None:
    """The detached mounts that only mappings keep alive (a daemon maps a file of a mount lazily
    unmounted since), planned one by one with `plan` (detached.plan) into `detached_doc`. A mount
    that cannot be (one of a namespace outside the tree the file's path no longer reaches: a program
    that unshared without exec maps its libraries so) is left out with its mappings: a mapping alone
    is no reason to refuse the tree, but the user is told on stderr (never silently)."""
    by_mnt: dict[int, list] = {}
    for item in items:
        by_mnt.setdefault(item[0]["mnt"], []).append(item)
    dropped: dict[int, str] = {}
    for mnt, group in sorted(by_mnt.items()):
        if str(mnt) in detached_doc:
            continue
        try:
            detached_doc.update(plan(group))
        except DumpError as e:
            dropped[mnt] = e.strerror or str(e)
    if not dropped:
        return
    for p in procs_doc:
        gone = [m for m in p["maps"] if m.get("detached") and m["mnt"] in dropped]
        if not gone:
            continue
        p["maps"] = [m for m in p["maps"] if m not in gone]
        if p.get("exe", {}).get("detached") and p["exe"]["mnt"] in dropped:
            del p["exe"]   # (its executable among them: the path is in the note)
        paths = ", ".join(sorted({m["path"] for m in gone}))
        why = "; ".join(sorted({dropped[m["mnt"]] for m in gone}))
        sys.stderr.write(f"mntcr dump: note: process {p['pid']}: its mappings of {paths} (on a detached mount "
                         f"restore cannot make: {why}) are left out; the restored process will not map them\n")


def _manifest(d: _Dump) -> dict:
    """The image document the steps filled."""
    doc = {
        "kernel": os.uname().release,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "superblocks": d.superblocks, "mntns": d.mntns_doc, "pidns": d.pidns_doc, "processes": d.procs_doc,
        "hostnames": d.uts_names, "detached": d.detached_doc, "files": d.files, "ghosts": d.ghosts_doc,
    }
    if d.objects:
        doc["objects"] = d.objects
    if d.domainnames:
        doc["domainnames"] = d.domainnames
    if any(d.sysvipc.values()):
        doc["sysvipc"] = {ns: objs for ns, objs in d.sysvipc.items() if objs}
    if any(d.netvars.values()):
        doc["netvars"] = {ns: kept for ns, kept in d.netvars.items() if kept}
    if d.net_lo_up:
        doc["net_lo_up"] = sorted(d.net_lo_up)
    if d.netdevs:
        doc["netdevs"] = d.netdevs
    if d.netfilter:
        doc["netfilter"] = d.netfilter
    if d.users["userns"]:
        doc["userns"] = d.users["userns"]
    # Also without any user namespace: a process of the dumper's own under other ids (a user's
    # dbus-daemon, a zdtm test after setuid, bwrap's monitor) keeps them (its stand-in takes them last).
    for p in d.procs_doc:
        p.update(d.users["proc"].get(p["pid"], {}))
    return doc


def _check_sharing(mntns_doc: dict, superblocks: dict, ns_pid: dict | None = None) -> None:
    """Refuse propagation restore could not rebuild (its plan, made here first), and slaves of a peer
    group outside the dumped namespaces that no external mount joins (restore copies such a master
    from the host mount given for an external mount of the same filesystem in or under that group).
    `ns_pid`: a process of each mount namespace (by image name), to probe file handles."""
    from engine import sharing
    mounts = [e for ns in mntns_doc.values() for e in ns["mounts"]]
    try:
        ops = sharing.plan(mounts, helper_ok=lambda sid: sid in superblocks and not superblocks[sid]["external"])
    except sharing.PlanError as e:
        raise DumpError(errno.EOPNOTSUPP, f"{e}: restore cannot rebuild this propagation (an external filesystem "
                                          "gets no helper mount of its root: declare a mount of the group that "
                                          "covers the others external too, or make them private)") from None
    by_id = {e["id"]: e for e in mounts}
    ns_of = {e["id"]: name for name, ns in mntns_doc.items() for e in ns["mounts"]}
    for op in ops:
        if op[0] == "set_group_via" and ns_pid:
            # Restore reaches this mount's root through another member by its file handle.
            dst = by_id[op[2]]
            try:
                kernel.name_to_handle_at(kernel.AT_FDCWD, f"/proc/{ns_pid[ns_of[dst['id']]]}/root{dst['mountpoint']}")
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise DumpError(errno.EOPNOTSUPP, f"mount {dst['id']} ({dst['mountpoint']}) on {dst['fstype']}: "
                                                      "no member of its peer group covers its root and its "
                                                      "filesystem has no file handles to reach it by: restore "
                                                      "cannot rebuild this propagation (make it private, or declare "
                                                      "a mount of the group that covers the others external too)"
                                    ) from None
    helpers = {op[1]: op[2] for op in ops if op[0] == "helper"}   # helper id (< 0) -> its superblock
    for op in ops:
        if op[0] != "external":
            continue
        master = op[2]
        if op[1] in helpers:
            # A helper of the superblock's root starts the group (no member covers the others):
            # name the group's first member, which is what the user sees and may declare.
            dst = min((e for e in mounts if e["sb"] == helpers[op[1]] and e["master"] == master),
                      key=lambda e: (len(e["root"]), e["root"], e["id"]))
        else:
            dst = by_id[op[1]]
        if not any(e["external"] and e["sb"] == dst["sb"] and master in (e["master"], e["shared"]) for e in mounts):
            raise DumpError(errno.EOPNOTSUPP,
                            f"mount {dst['id']} ({dst['mountpoint']}) on {dst['fstype']}: a slave of peer group "
                            f"{master}, which lies outside the dumped namespaces (external slavery), and no external "
                            f"mount of its filesystem is in or under that group; declare it with --external "
                            f"mnt[{dst['mountpoint']}]:KEY (restore joins the host mount given for KEY), or make it "
                            "private before the dump")


def _pid_identity(piddir: str) -> tuple[int, bytes] | None:
    """(pid in its own pid namespace, start time) of the process at /proc/PID (`piddir`); None for a
    zombie (its namespace links are gone, so no pid-bound superblock can be matched through it)."""
    fields = procstat.fields(piddir, base=None)
    if fields[procstat.STATE] in (b"Z", b"X"):
        return None
    with open(f"{piddir}/status", "rb") as f:
        nspid = next(line for line in f if line.startswith(b"NSpid:")).split()[-1]
    return int(nspid), fields[procstat.STARTTIME]

