"""Dump side of the fd tables: each fd of a stopped process -> an image entry of its kind, and
which fds (of one or several processes) are one open file description.

The kinds live in engine/fds/; this module only asks them. Sharing is found
with kcmp(KCMP_FILE), asked only among fds on the same inode, so a tree of
ordinary fds costs one stat per fd.
"""

from __future__ import annotations

import errno
import os
import stat

from engine import fds, filelocks, fown, kernel
from engine.fds import sys as fsys

# scratch's key of the fds in flight whose copies dump keeps (engine/fds/unix_queue.py keep_copy):
# {(dev, ino): [[our copy, [their entries]]]} (unix_queue is loaded only by a tree with unix sockets)
INFLIGHT = "inflight"


class FdTable:
    """Collects fd entries; `objects` is the image's shared objects (pipes, memfds, sockets)."""

    def __init__(self, takes: list | None = None):
        """`takes`: where kinds add steps fn(doc) that take from the tree (run by dump last, the tree
        killed after); None when the tree keeps running (--leave-running): such fds are refused."""
        self.objects: dict[str, dict] = {}
        self.scratch: dict = {"takes": takes, INFLIGHT: {}}
        self._pidfds: dict[int, int] = {}
        self._inode: dict[tuple[int, int], int] = {}   # (pid, fd) -> (dev, ino) key
        self._locks: dict[tuple[int, int], tuple] = {}   # (pid, fd) -> (target, its locks) (engine/filelocks.py)

    def _pidfd(self, pid: int) -> int:
        if pid not in self._pidfds:
            self._pidfds[pid] = kernel.pidfd_open(pid)
        return self._pidfds[pid]

    def entry(self, pid: int, f: dict, place=None, mounts=(), elsewhere=()) -> dict:
        """The image entry of fd record `f` (from engine.nsinspect.inspect_ns) of process `pid`; its "placed" key
        says whether the caller must add the mount and path (popped by the caller). `elsewhere`:
        the tree's other mount namespaces, [(a pid in it, its mounts)]."""
        kind = fds.classify(f["target"], f["mode"])
        self.note_locks(pid, f)
        if kind is None:
            raise fds.FdError(errno.EOPNOTSUPP, fds.unsupported(pid, f["fd"], f["target"]))
        d = fds.DumpFd(pid=pid, fd=f["fd"], target=f["target"], mode=f["mode"], flags=f["flags"], pos=f["pos"],
                       pidfd=self._pidfd(pid), objects=self.objects, scratch=self.scratch,
                       in_ns=f.get("in_ns"), place=place, mnt=f.get("mnt_id", 0),
                       mounts=list(mounts), elsewhere=list(elsewhere))
        try:
            payload = kind.dump(d)
            own = fown.entry_fields(d.copy(), self.scratch.get("pids") or (), d.where)
        except fds.FdError:
            raise
        except OSError as e:
            raise fds.FdError(e.errno or errno.EIO, f"{d.where}: {kind.name}: {e.strerror or e}") from None
        finally:
            d.close()
        out = {"fd": f["fd"], "flags": f["flags"], "pos": f["pos"], "placed": kind.placed}
        if kind.name != "file":
            out["kind"] = kind.name
        out.update(payload)
        out.update(own)
        try:
            st = os.stat(f"/proc/{pid}/fd/{f['fd']}")
            self._inode[(pid, f["fd"])] = (st.st_dev, st.st_ino)
        except OSError:
            pass
        return out

    def external_entry(self, pid: int, f: dict, key: str) -> dict:
        """The image entry of fd record `f` of process `pid` on a file declared --external file[PATH]:KEY:
        no kind dumps it (restore opens the host path given for KEY), but its flags, offset, locks and
        signal owner and signal (engine/fown.py) are kept as every fd's are."""
        self.note_locks(pid, f)
        where = f"process {pid} fd {f['fd']} ({f['target']})"
        try:
            own = fown.fields_of(self._pidfd(pid), f["fd"], self.scratch.get("pids") or (), where)
        except fds.FdError:
            raise
        except OSError as e:
            raise fds.FdError(e.errno or errno.EIO, f"{where}: external file: {e.strerror or e}") from None
        return {"fd": f["fd"], "flags": f["flags"], "pos": f["pos"],
                "type": "dir" if stat.S_ISDIR(f["mode"]) else "file", "external": key, **own}

    def note_locks(self, pid: int, f: dict) -> None:
        """Keep the file locks fd record `f` of process `pid` shows (engine/filelocks.py; `entry` does,
        and dump for an fd on an --external file, which gets no entry of a kind)."""
        if f.get("locks"):
            where = f"process {pid} fd {f['fd']} ({f['target']})"
            self._locks[(pid, f["fd"])] = (f["target"], filelocks.fd_locks(f["locks"], where))

    def finish(self, procs_doc: list[dict]) -> None:
        """Once every fd is dumped: let each kind complete its entries (or refuse), then mark sharing."""
        entries = [e for p in procs_doc for e in p["fds"]]
        # (directories removed while a process's cwd or root, with their ghosts: what holds them, as
        # an fd would, for a kind's finish; an inotify watch on one is added through its ghost)
        held = [{"kind": "held_dir", **{k: p[key][k] for k in ("mnt", "path", "ghost")}} for p in procs_doc
                for key in ("cwd", "root") if isinstance(p.get(key), dict) and "ghost" in p[key]]
        for name in sorted({e.get("kind", "file") for e in entries}):
            fds.lookup(name).finish(self.objects, entries + held)
        self.mark_shared(procs_doc)
        held = {filelocks.inode_key(dev, ino) for dev, ino in self._inode.values()}
        filelocks.refuse_stopped_waiters([p["pid"] for p in procs_doc], held)
        filelocks.settle(procs_doc, self._locks)

    def mark_shared(self, procs_doc: list[dict]) -> None:
        """Give fds that are one open file description the same "desc" id (dup, fork, SCM_RIGHTS):
        the tree's fds and the fds in flight in its sockets' queues (our copies, unix_queue.keep_copy),
        so restore sends the very description a process holds, or one description sent twice, again."""
        by_inode: dict[tuple[int, int], list[tuple[int, int, list[dict], bool]]] = {}
        for p in procs_doc:
            for e in p["fds"]:
                key = self._inode.get((p["pid"], e["fd"]))
                if key is not None:
                    by_inode.setdefault(key, []).append((p["pid"], e["fd"], [e], True))
        me = os.getpid()
        kept = self.scratch[INFLIGHT]
        if kept:
            from engine.fds import unix_queue
            # (a queue peeked twice, through two fds on one socket, keeps the last peek's entries only)
            queued = {id(f) for f in unix_queue.queued_fds(procs_doc, self.objects)}
        for key, slots in kept.items():
            by_inode.setdefault(key, []).extend((me, fd, [e for e in entries if id(e) in queued], False)
                                                for fd, entries in slots)
        n = 0
        for members in by_inode.values():
            if len(members) < 2 and len(members[0][2]) < 2:
                continue
            groups: list[list[tuple[int, int, list[dict], bool]]] = []
            for m in members:
                for g in groups:
                    if fsys.same_file(g[0][0], g[0][1], m[0], m[1]):
                        g.append(m)
                        break
                else:
                    groups.append([m])
            for g in groups:
                entries = [e for m in g for e in m[2]]
                if len(entries) > 1:
                    for e in entries:
                        e["desc"] = f"d-{n}"
                    n += 1
                    _one_arming(g)

    @property
    def unplaced(self) -> list:
        """(location, pid, /proc link under that pid) of places the kinds found on detached mounts
        through fds of our own (a socket's file): dump plans those mounts with the fds' and cwds'."""
        return list(self.scratch.get("unplaced", ()))

    def close(self) -> None:
        """Close the pidfds and our copies of fds in flight (the fds behind `unplaced` stay open
        until `release`)."""
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        for slots in self.scratch[INFLIGHT].values():
            for fd, _ in slots:
                os.close(fd)
        self.scratch[INFLIGHT].clear()

    def release(self) -> None:
        """Close our fds behind `unplaced`, once dump has planned the detached mounts."""
        for _loc, _pid, link in self.scratch.pop("unplaced", ()):
            os.close(int(link.rsplit("/", 1)[1]))


def _one_arming(group: list) -> None:
    """Of one epoll description's entries (`group`: mark_shared's members), only one registers the
    targets again: a process's fd on it (its kind's `after`), else the first fd in flight of it
    (registered on its pair's new ends, unix_queue.send_queue); the others' targets are emptied (a
    second registration of one target fails: EEXIST)."""
    flying = [e for _, _, entries, held in group if not held for e in entries if e.get("kind") == "epoll"]
    keep = not any(held for _, _, _, held in group)
    for e in flying:
        if keep and e["targets"]:
            keep = False
            continue
        e["targets"] = []
