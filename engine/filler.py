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
before anything reads them. Cloning from a detached superblock mount whose
files are still arriving is fine: the restorer makes missing directories
itself (restore.py) and waits for anything else.
"""

from __future__ import annotations

import os

from engine import channel, content, standin

# Superblock fds the helper may hold while waiting to fill them; past this, archives whose
# superblocks all exist are extracted before more are made.
_HELD = 2048


def _body(plans, given, fills, empties, hostproc, mount_of, sockets, ahead, chan: channel.Channel) -> None:
    made: dict[str, int] = dict(given)
    # Extracting in this process leaves it in a private mount namespace, from which superblocks
    # the restorer made and attached (`given`: its yard on older kernels) can no longer be cloned.
    here = not given
    # A superblock's fd stays here only until its last archive is extracted: an empty root is set
    # up as soon as the superblock exists, and one without archives is closed once sent (90,000
    # mounts would otherwise hold one fd per superblock in this process).
    roots: dict[str, list] = {}
    for sid, er in empties:
        roots.setdefault(sid, []).append(er)
    last_fill: dict[str, int] = {}
    for i, (_, _, _, spec, _) in enumerate(fills):
        for sid, _, _ in spec:
            last_fill[sid] = i
    for sid in given:
        _empty_roots(made[sid], roots.pop(sid, ()), mount_of.get(sid, sid), hostproc)
    batch: list[str] = []
    size = 1  # the first superblock at once (the restorer starts with it), then growing batches

    def send() -> None:
        chan.send(("sbs", batch), [made[s] for s in batch])
        for s in batch:
            if s not in last_fill:
                os.close(made.pop(s))
        batch.clear()
        if len(made) > _HELD:
            extract(ready_only=True)

    done = 0  # archives extracted, in order

    def extract(ready_only: bool) -> None:
        # In their order, as far as every superblock an archive fills exists; early (ready_only)
        # only when too many superblocks wait for their files.
        nonlocal done
        while done < len(fills):
            if ready_only and any(sid not in made for sid, _, _ in fills[done][3]):
                return
            closed = _extract(fills[done], done, made, given, last_fill, mount_of, sockets, ahead, here)
            if closed:
                chan.send(("filled", closed))  # ours are closed: the restorer's are the last
            done += 1

    for sid, fstype, source, params, attr, where in plans:
        try:
            made[sid] = standin.fsmount(fstype, source, params, attr)
        except OSError as e:
            raise OSError(e.errno, f"{where}: {e.strerror or e}") from None
        _empty_roots(made[sid], roots.pop(sid, ()), mount_of.get(sid, sid), hostproc)
        batch.append(sid)
        if len(batch) >= size:
            send()
            size = min(size * 4, 128)
    if batch:
        send()
    chan.send(("made", None))
    extract(ready_only=False)
    chan.send(("ok", None))


def _extract(fill, i: int, made: dict, given: dict, last_fill: dict, mount_of: dict, sockets: dict,
             ahead, here: bool) -> list[str]:
    """Extract archive `fill` (number i) into its superblocks, and make the socket files it left
    out (`sockets`: {(archive, member): records}); close the superblocks it was the last for, and
    return them. `ahead`: a content.ReadAhead whose reading of the archive the checks use. In this
    process when `here` (content.extract: it stays in a private mount namespace)."""
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
        if last_fill.get(sid) == i and sid in made and sid not in given:
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
                 ahead=None):
        """`plans`: (sid, fstype, source, fsconfig params, fsmount attributes, where for errors) in
        order of first use; `given`: superblocks that exist already ({sid: fd}, e.g. attached in
        a yard), to fill only; `fills`: (archive fd, name, expected size/sha256, [(sid, root,
        member)], (uid, gid) to create its files as, or None: ours); `empties`: (sid, empty root record); `hostproc`: an fd on the host's /proc;
        `where`: {sid: "mount N (PATH) on TYPE"}, to name the mount in an error; `sockets`:
        {(archive, member): socket file records} made after the member is extracted; `ahead`: a
        content.ReadAhead that read some of the archive fds already.
        The archive fds may be closed after this returns."""
        self.sids = {p[0] for p in plans}
        self.got: dict[str, int] = {}
        self.made = self.done = False
        self.filled: set[str] = set()  # superblocks whose files are all in (the helper closed its fd)
        self.pending = channel.spawn(_body, plans, given, fills, empties, hostproc, where or {}, sockets or {},
                                     ahead)

    def _recv(self) -> None:
        try:
            msg, fds = self.pending.recv()
        except OSError:
            self.pending.reap()
            raise
        kind = msg[0] if isinstance(msg, tuple) and msg else None
        if kind == "sbs":
            self.got.update(zip(msg[1], fds))
        elif kind == "filled":
            self.filled.update(msg[1])
        elif kind == "made":
            self.made = True
        elif kind == "ok":
            self.done = True
            self.pending.reap()
        else:
            raise OSError(f"superblock helper sent {msg!r}")

    def take(self, sid: str) -> int:
        """The fd of superblock `sid` (the caller owns it)."""
        while sid not in self.got:
            if self.made:
                raise OSError(f"superblock helper did not make {sid}")
            self._recv()
        return self.got.pop(sid)

    def poll(self) -> None:
        """Take in what the helper has sent so far, without waiting."""
        while not self.done and self.pending.chan.ready():
            self._recv()

    def wait(self) -> None:
        """Until every archive is extracted; superblocks not taken yet stay available."""
        while not self.done:
            self._recv()

    def close(self) -> None:
        """Close the fds of superblocks never taken."""
        for fd in self.got.values():
            os.close(fd)
        self.got.clear()
