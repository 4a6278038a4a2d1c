"""A helper that makes the plain superblocks and fills them while the restorer assembles mounts.

Creating thousands of tmpfs superblocks and extracting their files takes
about as long as attaching the mounts; on two CPUs both can run at once. The
helper (forked from the restorer, in its service namespace) creates each
superblock that needs no namespace (fsopen/fsconfig/fsmount) in the order the
restorer first clones from them and streams their fds back in batches (with
a yard, on older kernels, the restorer makes them and hands them over),
giving empty roots their owner and mode as it goes; then it makes the archive
roots and extracts the archives one after the other (content.extract: in
this process, which leaves for a private mount namespace at the first; an
archive a user namespace's ids write, in a child), keeping a superblock's fd
only until its last archive is in. The restorer takes each
superblock when it first needs it (take) and waits for the files (wait)
before anything reads them.

Fds are bounded on both sides whatever the two processes' speeds: the helper
sends a superblock only within the credit the restorer granted (a window of
superblocks received but not taken yet, given back as it takes them), and
extracts the archives that are ready while it waits for more; it holds at most
`held` superblocks waiting for their files. A restorer that takes out of the
helper's order (or waits for the files first) grants what that needs: a count
fixed by the image, never by which process ran ahead.

Cloning from a detached superblock mount whose files are still arriving is
fine: the restorer makes missing directories itself (restore.py) and waits
for anything else.
"""

from __future__ import annotations

import os

from engine import channel, content, standin

# Superblock fds the helper may hold while waiting to fill them; past this, archives whose
# superblocks all exist are extracted before more are made.
HELD = 2048
# Superblocks sent to the restorer and not taken yet, at most (unless the restorer grants more).
WINDOW = 1024


def _body(plans, given, fills, empties, hostproc, mount_of, sockets, ahead, budget, chan: channel.Channel) -> None:
    _Helper(given, fills, empties, hostproc, mount_of, sockets, ahead, budget, chan).run(plans)


class _Helper:
    """The helper process's state: superblocks made and held, credit left, archives extracted."""

    def __init__(self, given, fills, empties, hostproc, mount_of, sockets, ahead, budget, chan):
        self.credit, self.held = budget   # (superblocks the restorer lets us send; we may hold for files)
        self.given, self.fills, self.hostproc, self.mount_of = given, fills, hostproc, mount_of
        self.sockets, self.ahead, self.chan = sockets, ahead, chan
        self.made: dict[str, int] = dict(given)
        # Extracting in this process leaves it in a private mount namespace, from which superblocks
        # the restorer made and attached (`given`: its yard on older kernels) can no longer be cloned.
        self.here = not given
        # A superblock's fd stays here only until its last archive is extracted: an empty root is set
        # up as soon as the superblock exists, and one without archives is closed once sent (90,000
        # mounts would otherwise hold one fd per superblock in this process).
        self.roots: dict[str, list] = {}
        for sid, er in empties:
            self.roots.setdefault(sid, []).append(er)
        # The restorer waits for these to be filled (no archive: their empty roots, set up before
        # they are sent): it is told so, else it keeps their mounts until the helper exits.
        self.told = set(self.roots)
        self.last_fill: dict[str, int] = {}
        for i, (_, _, _, spec, _) in enumerate(fills):
            for sid, _, _ in spec:
                self.last_fill[sid] = i
                self.told.add(sid)
        for sid in given:
            _empty_roots(self.made[sid], self.roots.pop(sid, ()), mount_of.get(sid, sid), hostproc)
        self.batch: list[str] = []   # made, not sent yet: kept here whatever is extracted meanwhile
        self.done = 0   # archives extracted, in order

    def run(self, plans) -> None:
        """Make `plans`, sending them in growing batches; then extract what is left."""
        size = 1  # the first superblock at once (the restorer starts with it), then growing batches
        for sid, fstype, source, params, attr, where in plans:
            try:
                self.made[sid] = standin.fsmount(fstype, source, params, attr)
            except OSError as e:
                raise OSError(e.errno, f"{where}: {e.strerror or e}") from None
            _empty_roots(self.made[sid], self.roots.pop(sid, ()), self.mount_of.get(sid, sid), self.hostproc)
            self.batch.append(sid)
            if len(self.batch) >= size:
                self.send()
                size = min(size * 4, 128)
        if self.batch:
            self.send()
        self.chan.send(("made", None))
        self.extract(ready_only=False)
        self.chan.send(("ok", None))

    def send(self) -> None:
        """Send the batch within the restorer's credit: while there is none, extract what is
        ready, else wait for more."""
        while self.batch:
            while self.credit <= 0:
                if not (self.extract(ready_only=True, most=1) and not self.chan.ready()):
                    self.credit += _credit(self.chan)
            part = self.batch[:self.credit]
            self.chan.send(("sbs", part), [self.made[s] for s in part])
            self.credit -= len(part)
            del self.batch[:len(part)]
            # Ours closed: no archive fills it, or its last one was extracted while it waited here.
            gone = [s for s in part if self.last_fill.get(s, -1) < self.done]
            for s in gone:
                os.close(self.made.pop(s))
            gone = [s for s in gone if s in self.told]
            if gone:
                self.chan.send(("filled", gone))
        if len(self.made) > self.held:
            self.extract(ready_only=True)

    def extract(self, ready_only: bool, most: int = -1) -> int:
        """Extract the archives in their order, as far as every superblock an archive fills exists;
        early (ready_only) only when too many superblocks wait for their files or no credit is left;
        at most `most` (-1: all). Returns how many were extracted."""
        first = self.done
        while self.done < len(self.fills) and self.done - first != most:
            if ready_only and any(sid not in self.made for sid, _, _ in self.fills[self.done][3]):
                break
            closed = _extract(self.fills[self.done], self.done, self.made, self.given, self.last_fill,
                              self.mount_of, self.sockets, self.ahead, self.here, set(self.batch))
            if closed:
                self.chan.send(("filled", closed))  # ours are closed: the restorer's are the last
            self.done += 1
        return self.done - first


def _credit(chan: channel.Channel) -> int:
    """The restorer's next grant: how many more superblocks may be sent."""
    msg, fds = chan.recv()
    for fd in fds:
        os.close(fd)
    if not (isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "credit" and isinstance(msg[1], int)):
        raise OSError(f"superblock helper: the restorer sent {msg!r}")
    return msg[1]


def _extract(fill, i: int, made: dict, given: dict, last_fill: dict, mount_of: dict, sockets: dict,
             ahead, here: bool, unsent=frozenset()) -> list[str]:
    """Extract archive `fill` (number i) into its superblocks, and make the socket files it left
    out (`sockets`: {(archive, member): records}); close the superblocks it was the last for but
    those `unsent`, and return them. `ahead`: a content.ReadAhead whose reading of the archive the
    checks use. In this process when `here` (content.extract: it stays in a private mount namespace)."""
    archive_fd, name, expect, spec, ids = fill
    targets = []
    read = ahead.result(name) if ahead is not None else None
    try:
        for sid, root, member in spec:
            try:
                targets.append((content.mkdirs_beneath_as(made[sid], root, ids), member))
            except OSError as e:
                raise _named(e, f"{mount_of.get(sid, sid)}: making {root} to extract its files into") from None
        try:
            content.extract(archive_fd, name, expect, targets, ids, read, here=here)
            for fd, member in targets:
                content.make_sockets(fd, sockets.get((name, member), ()), ids)
        except OSError as e:
            names = ", ".join(sorted({mount_of.get(sid, sid) for sid, _, _ in spec}))
            raise _named(e, names) from None
    finally:
        for (fd, _), (sid, _, _) in zip(targets, spec):
            if fd != made[sid]:
                os.close(fd)
        if read is not None:
            os.close(read[4])
    closed = []
    for sid, _, _ in spec:
        if last_fill.get(sid) == i and sid in made and sid not in given and sid not in unsent:
            os.close(made.pop(sid))
            closed.append(sid)
    return closed


def _empty_roots(sb_fd: int, records, where: str, hostproc: int) -> None:
    """Give each empty root of a fresh superblock its dumped owner and mode."""
    for er in records:
        try:
            fd = content.mkdirs_beneath(sb_fd, er["root"])
            try:
                os.chown(f"self/fd/{fd}", er["uid"], er["gid"], dir_fd=hostproc)
                os.chmod(f"self/fd/{fd}", er["mode"], dir_fd=hostproc)
            finally:
                if fd != sb_fd:
                    os.close(fd)
        except OSError as e:
            raise _named(e, f"{where}: its empty root {er['root']}") from None


def _named(e: OSError, where: str) -> OSError:
    """`e` with `where` (the mounts it concerns) in front of its text; no "[Errno None]"."""
    text = f"{where}: {e.strerror or e}"
    return OSError(e.errno, text) if e.errno else OSError(text)


class Filler:
    """The restorer's side of the helper."""

    def __init__(self, plans, fills, empties, given: dict[str, int], hostproc: int, where=None, sockets=None,
                 ahead=None, window: int = WINDOW, held: int = HELD):
        """`plans`: (sid, fstype, source, fsconfig params, fsmount attributes, where for errors) in
        order of first use; `given`: superblocks that exist already ({sid: fd}, e.g. attached in
        a yard), to fill only; `fills`: (archive fd, name, expected size/sha256, [(sid, root,
        member)], (uid, gid) to create its files as, or None: ours); `empties`: (sid, empty root record); `hostproc`: an fd on the host's /proc;
        `where`: {sid: "mount N (PATH) on TYPE"}, to name the mount in an error; `sockets`:
        {(archive, member): socket file records} made after the member is extracted; `ahead`: a
        content.ReadAhead that read some of the archive fds already; `window`: superblocks received
        and not taken yet, at most (as far as the order of takes allows); `held`: superblocks the
        helper holds while waiting to fill them, at most (as far as the archives' order allows).
        The archive fds may be closed after this returns."""
        self.sids = {p[0] for p in plans}
        self.got: dict[str, int] = {}
        self.made = self.done = False
        self.filled: set[str] = set()  # superblocks whose files are all in (the helper closed its fd)
        self.window = max(1, window)
        # Superblocks the helper may send in all (granted) and those it sent (received): the fds in
        # `got` and in flight are at most granted - taken.
        self.granted, self.received, self.taken = self.window, 0, 0
        self.peak = 0   # the most superblock fds held in `got` at once (deterministic: tests read it)
        self.pending = channel.spawn(_body, plans, given, fills, empties, hostproc, where or {}, sockets or {},
                                     ahead, (self.window, max(1, held)))

    def _recv(self) -> None:
        try:
            try:
                msg, fds = self.pending.recv()
            except ConnectionResetError:
                # It failed with a grant unread: the reset comes first, its error message after it.
                msg, fds = self.pending.recv()
        except OSError:
            self.pending.reap()
            raise
        kind = msg[0] if isinstance(msg, tuple) and msg else None
        if kind == "sbs":
            self.got.update(zip(msg[1], fds))
            self.received += len(fds)
            self.peak = max(self.peak, len(self.got))
        elif kind == "filled":
            self.filled.update(msg[1])
        elif kind == "made":
            self.made = True
        elif kind == "ok":
            self.done = True
            self.pending.reap()
        else:
            raise OSError(f"superblock helper sent {msg!r}")

    def _grant(self, more: int) -> None:
        """Let the helper send `more` superblocks (while it is still making them). Never more than
        it will send: it reads every grant before it exits (a socket closed with a message unread
        makes our next recv fail with ECONNRESET instead of reading its last messages)."""
        more = min(more, len(self.sids) - self.granted)
        if more > 0 and not self.made:
            self.granted += more
            try:
                self.pending.chan.send(("credit", more))
            except OSError:
                pass   # (it is gone: its error, or its death, is what the next recv reports)

    def _starved(self) -> bool:
        """Whether the helper has sent all it may: waiting for it needs a grant first."""
        return not self.made and self.received >= self.granted

    def take(self, sid: str) -> int:
        """The fd of superblock `sid` (the caller owns it)."""
        while sid not in self.got:
            if self.made:
                raise OSError(f"superblock helper did not make {sid}")
            if self._starved():
                # Taken out of the helper's order: what lies before it is received (the image's
                # order fixes how many), one step of the window at a time.
                self._grant(max(1, self.window // 4))
            self._recv()
        self.taken += 1
        # Credit back in steps of a quarter window (a message each, not one per superblock).
        if self.taken + self.window - self.granted >= max(1, self.window // 4):
            self._grant(self.taken + self.window - self.granted)
        return self.got.pop(sid)

    def poll(self) -> None:
        """Take in what the helper has sent so far, without waiting."""
        while not self.done:
            try:
                if not self.pending.chan.ready():
                    return
            except ConnectionResetError:
                pass   # (it failed with a grant unread: its error message follows, _recv reads it)
            self._recv()

    def wait(self) -> None:
        """Until every archive is extracted; superblocks not taken yet stay available (received
        here: those the image's order has taken by now decide how many)."""
        while not self.done:
            if self._starved():
                self._grant(len(self.sids) - self.granted)
            self._recv()

    def close(self) -> None:
        """Close the fds of superblocks never taken."""
        for fd in self.got.values():
            os.close(fd)
        self.got.clear()
