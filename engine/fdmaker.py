"""Restore side of the fd tables: make each image fd entry with its kind's hook, once per open
file description (fds with the same "desc" get the same description), and say which stand-in
steps must follow once a process's fds are installed (epoll registrations)."""

from __future__ import annotations

import os

from engine import fds, fown


class FdMaker:
    """Makes fds for the restorer; `close` drops its own copies once every stand-in holds its fds."""

    def __init__(self, objects: dict, open_at, proc: int = -1, open_ghost=None, pid_of=None, ns_fd=None,
                 reach_now=None):
        self.proc = proc
        self.pid_of = pid_of
        self.ns_fd = ns_fd
        self.open_ghost = open_ghost
        self.objects = objects
        self.open_at = open_at
        self.reach_now = reach_now   # () -> RestoreFd.reach for the process whose fds are made now
        self.state: dict = {}
        self.keep: list[int] = []
        self.late: list = []     # (what, fn) run once every process got its fds (RestoreFd.late)
        self.descs: dict[str, int] = {}
        self.flying: set[str] = set()   # descriptions made for fds in flight, no process's fd yet (`share`)
        self.owned: list[tuple[int, dict, str]] = []   # (our copy, entry, what) of fds with a signal owner
        self.chans: dict = {}   # image pid -> its stand-in's channel (prepare: for standin_of)

    def prepare(self, processes: list[dict], chans: dict) -> None:
        """Make the objects that must exist before any fd (FdKind.prepare), once every stand-in has
        entered its root: each kind gets its objects and their holders as (entry, stand-in call)."""
        self.chans = chans
        holders: dict[str, list] = {}
        for p in processes:
            chan = chans[p["pid"]]
            for e in p["fds"]:
                if "obj" in e:
                    holders.setdefault(e["obj"], []).append((e, chan))
        for key, obj in self.objects.items():
            kind = fds.lookup(obj["kind"])
            if kind.prepare is None or key not in holders:
                continue

            def call(chan, fn, args, sent=(), kind=kind):
                return chan.call(("kind", kind.name, fn, args), list(sent))[1]

            got = kind.prepare(key, obj, holders[key], call)
            if got is not None:
                self.state[key] = got
                self.keep.extend(got)

    def open(self, entry: dict, chan, where: str = "fd") -> tuple[int, bool]:
        """(our fd for `entry`, whether it is a new description); the caller sends and closes the fd.
        `where` names the fd in an error of `set_owners`."""
        desc = entry.get("desc")
        if desc is not None and desc in self.descs:
            if desc not in self.flying:
                return os.dup(self.descs[desc]), False
            # (made for an fd in flight: this is the first fd of a process on it, which gives it its
            # signal owner and runs its kind's steps after, as a new description's first fd does)
            self.flying.discard(desc)
            fd = os.dup(self.descs[desc])
            self.give_owner(fd, entry, where)
            return fd, True
        kind = fds.lookup(entry.get("kind", "file"))

        def standin(fn, args, sent=(), chan=chan):
            _, got = chan.call(("kind", kind.name, fn, args), list(sent))
            return got

        def standin_of(pid):
            other = self.chans.get(pid)
            return None if other is None else lambda fn, args, sent=(): standin(fn, args, sent, other)

        r = fds.RestoreFd(entry=entry, objects=self.objects, state=self.state, open_at=self.open_at,
                          standin=standin, keep=self.keep, proc=self.proc,
                          open_ghost=self.open_ghost, late=self.late, pid_of=self.pid_of, ns_fd=self.ns_fd,
                          standin_of=standin_of, share=self.share,
                          reach=None if self.reach_now is None else self.reach_now())
        fd = kind.open(r)
        self.give_owner(fd, entry, where)
        if desc is not None:
            self.descs[desc] = os.dup(fd)
        return fd, True

    def share(self, desc: str, make) -> int:
        """Our fd on description `desc` for an fd in flight: a dup of the one made already (by a
        process's fd or another fd in flight), else make() (noted in `flying` until a process's fd
        on it comes: `open`)."""
        if desc in self.descs:
            return os.dup(self.descs[desc])
        fd = make()
        try:
            self.descs[desc] = os.dup(fd)
        except OSError:
            os.close(fd)
            raise
        self.flying.add(desc)
        return fd

    def give_owner(self, fd: int, entry: dict, where: str = "fd") -> None:
        """Note that our description `fd` gets the signal owner, signal and O_ASYNC of image fd
        `entry` (engine/fown.py) in `set_owners`; an --external file's too, which restore opens itself."""
        if fown.needed(entry):
            self.owned.append((os.dup(fd), entry, where))

    def after(self, entry: dict) -> tuple[str, str, object] | None:
        """(kind, stand-in function, args) to run once the process holds its fds, or None."""
        kind = fds.lookup(entry.get("kind", "file"))
        todo = kind.after(entry)
        return None if todo is None else (kind.name, *todo)

    def finish(self) -> None:
        """Run the kinds' late steps, once every process holds its fds; an error names the fd."""
        # (each (what, fn) or (what, fn, order): ordered ones by it, the others first, stable)
        todo, self.late[:] = sorted(self.late, key=lambda t: t[2] if len(t) > 2 else -1), []
        for what, fn, *_ in todo:
            try:
                fn()
            except OSError as e:
                raise OSError(e.errno, f"{what}: {e.strerror or e}") from None

    def set_owners(self) -> None:
        """Give each new description its signal, O_ASYNC and owner (engine/fown.py), once every
        process holds its fds, the late steps ran and our other copies are closed: the release of
        a pipe's last writer we kept signals its readers' owners (a stand-in killed by SIGIO, or
        stopped for good by an image's SIGSTOP). An error names the fd (OSError)."""
        owned, self.owned = self.owned, []
        self.close()
        try:
            for fd, entry, where in owned:
                try:
                    fown.restore(fd, entry, self.pid_of)
                except OSError as e:
                    raise OSError(e.errno, f"{where}: signal owner (F_SETOWN, F_SETSIG, O_ASYNC): "
                                           f"{e.strerror or e}") from None
        finally:
            for fd, _, _ in owned:
                os.close(fd)

    def close(self) -> None:
        """Close every fd made or kept so far."""
        for fd in list(self.descs.values()) + self.keep + [fd for fd, _, _ in self.owned]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.descs.clear()
        self.flying.clear()
        self.keep.clear()
        self.owned.clear()
