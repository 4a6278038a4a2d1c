"""proc: no files to dump; it belongs to a pid namespace.

Dump clones one of its mounts and finds which dumped pid namespace it shows
(`probe`); restore creates it from a stand-in living in the restored
equivalent (the superblock record's "pidns").
"""

from __future__ import annotations

import errno
import os
from engine.records import record

from engine.fs import FsError, FsType, register
from engine import procstat


def _shows(proc_fd: int, pid: int, starttime: bytes, ino: int) -> bool | None:
    """Whether the proc mount at `proc_fd` shows, as `pid`, the process started at `starttime`
    that lives in pid namespace `ino`: None when it shows no live process as `pid` (the process
    exited since the tree was listed, a zombie or gone: a shell's command ends while the running
    tree is prechecked), which tells nothing."""
    base = f"/proc/self/fd/{proc_fd}/{pid}"
    try:
        fields = procstat.fields(base, base=None)
    except OSError:
        return None
    if fields[procstat.STARTTIME] != starttime:
        return False
    try:
        return os.stat(f"{base}/ns/pid").st_ino == ino
    except OSError:
        return None   # (a zombie has no namespaces)


def _all_shown(proc_fd: int, procs, ino: int) -> bool:
    """Whether the proc mount at `proc_fd` shows every live one of `procs` [(pid there, start time)]
    of pid namespace `ino` as that pid, and one at least."""
    seen = [_shows(proc_fd, pid, start, ino) for pid, start in procs]
    return False not in seen and True in seen


def _dumpers(proc_fd: int) -> bool:
    """Whether the proc mount at `proc_fd` is of the dumper's own pid namespace: it shows this process
    under its pid here, and the same process (start time) as pid 1 as this namespace's /proc does."""
    base = f"/proc/self/fd/{proc_fd}"
    try:
        if os.readlink(f"{base}/self") != str(os.getpid()):
            return False
        return procstat.fields(1, base)[procstat.STARTTIME] == procstat.fields(1)[procstat.STARTTIME]
    except OSError:
        return False


@record(frozen=True)
class ProcType(FsType):
    """proc: tagged with the pid namespace whose processes it lists."""

    def wants_probe(self) -> bool:
        return True

    def probe(self, sid: str, mid: int, mount_fd: int, plan) -> None:
        """Record which dumped pid namespace the proc mount `mid` belongs to.

        A proc mount lists the processes of its pid namespace under their pids there. The namespace
        is the one (of the dumped tree's) all of whose dumped processes the mount shows under their
        own pids; `plan.members` gives them per namespace inode: [(pid there, start time)]."""
        mountpoint = plan.mounts_by_id[mid].mountpoint
        where = f"mount {mid} ({mountpoint}) on proc"
        found = [ino for ino, procs in plan.members.items() if _all_shown(mount_fd, procs, ino)]
        if len(found) > 1:
            # Only if each process had the same pid in a namespace and in its parent: not seen in practice.
            raise FsError(errno.EOPNOTSUPP, f"{where}: it matches pid namespaces "
                                            f"{', '.join(sorted(plan.pidns_name[i] for i in found))} alike; "
                                            "cannot tell which it belongs to")
        covered = not found and any(m.parent_id == mid and m.mountpoint == mountpoint
                                    for m in plan.mounts_by_id.values())
        if covered and _dumpers(mount_fd):
            # The host's /proc beneath the one `unshare --fork --pid --mount-proc` mounts: no path
            # reaches it (an --external cannot name it either). Restore makes it a proc of its own
            # pid namespace, as this one is of the dumper's (the validator allows that only for a
            # covered mount of a namespace no image user namespace owns).
            plan.superblocks[sid][self.ns_key] = plan.dumper_pidns()
            return
        if not found:
            advice = (f"it lies beneath another mount at {mountpoint}, which --external cannot name (a proc of "
                      f"neither the tree's nor the dumper's pid namespace): make the tree's proc with 'umount -l "
                      f"{mountpoint}; mount -t proc proc {mountpoint}' instead" if covered
                      else f"declare it --external mnt[{mountpoint}]:KEY")
            raise FsError(errno.EOPNOTSUPP, f"{where}: it belongs to a pid namespace outside the dumped tree "
                                            f"(it shows none of the tree's namespaces' processes as theirs); {advice}")
        plan.superblocks[sid][self.ns_key] = plan.pidns_name[found[0]]


TYPE = register(ProcType("proc", ns="pid", ns_key="pidns", requires=("proc",)))
