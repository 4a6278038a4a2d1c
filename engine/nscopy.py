"""Private copies of a dumped mount namespace: a forked helper stands at the root of a copy (made
as the namespace's owner), where it may lazily unmount what covers a mount (an overmount, or a
mount over one of its ancestors' paths) without touching the original, and sends back detached
clones of the mounts dump archives or a type module probes (engine/fs/ `probe`, `in_ns_copy`).
"""

from __future__ import annotations

import errno
import os
import stat

from engine import channel, forkrun, kernel, mountinfo, nsinspect, userns_cr
from engine.dumperror import DumpError
from engine.image import rel_to



def enter_copy(ns_fd: int, pids: list[int]) -> int:
    """In a forked child: stand at the root of a private copy of the namespace (made as its owner)
    where what covers a mount may be unmounted without touching the original; returns an fd on /proc."""
    hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    # A copy made from another user namespace than the owner's would lock every mount of it.
    owner = userns_cr.owner_to_join(ns_fd)
    nsinspect.enter_root(ns_fd, pids, hostproc)
    if owner is not None:
        kernel.setns(owner, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    return hostproc


def run_in_copy(ns_fd: int, pids: list[int], fn, args) -> object:
    """In a forked child: fn(*args) at the root of a private copy of the namespace (enter_copy)."""
    os.close(enter_copy(ns_fd, pids))
    return fn(*args)


def clone_mounts(ns_fd: int, pids: list[int], wanted: list[int], orig: list, chan: channel.Channel) -> None:
    """In a forked child: clone each wanted mount (original ids) of the namespace and send the fds.

    `orig` is the namespace's mount list as dump read it (the tree is stopped).
    Works in a private copy of the namespace so it may unmount what covers a
    mount (an overmount, or a mount over one of its ancestors' paths) without
    touching the original: visible mounts are cloned at once, covered ones
    after their covers are gone (see _uncover). A cover the kernel keeps locked
    is refused (`stream` looks for the superblock elsewhere first).
    """
    _clone_in_copy(ns_fd, pids, wanted, orig, chan, {}, False)


def _clone_reporting(ns_fd: int, pids: list[int], wanted: list[int], orig: list, at: dict[int, str],
                     chan: channel.Channel) -> None:
    """clone_mounts, but mounts a locked cover keeps out of reach are sent back as ("locked", {id:
    cover id}) instead of refused; `at`: original id -> path beneath its root to clone instead of it."""
    _clone_in_copy(ns_fd, pids, wanted, orig, chan, at, True)


def _clone_in_copy(ns_fd, pids, wanted, orig, chan, at, report) -> None:
    """clone_mounts' body (`at`, `report`: _clone_reporting)."""
    owner = userns_cr.owner_to_join(ns_fd)   # (not None: mounts of the copy may carry locked ones)
    if owner is not None:
        os.close(owner)
    hostproc = enter_copy(ns_fd, pids)
    with os.fdopen(os.open("thread-self/mountinfo", os.O_RDONLY, dir_fd=hostproc),
                   encoding="utf-8", errors="surrogateescape") as f:
        copy = mountinfo.brief(f.read())  # ids and mount points are all we need of the copy
    o_root, o_children, to_copy = _twins(orig, copy)
    del copy
    # Clones go out 200 at a time as they are made and are closed here once sent: this helper
    # never holds more (a 90,000-mount tree has tens of thousands to clone).
    pending: list[tuple[int, int]] = []

    def send(final: bool = False) -> None:
        if pending and (final or len(pending) >= 200):
            chan.send([mid for mid, _ in pending], [fd for _, fd in pending])
            for _, fd in pending:
                os.close(fd)
            pending.clear()

    def top_path(mp: str) -> str:
        # "/" names the root we stand on, never what is mounted over it; "/.." does.
        return "/.." if mp == "/" else mp

    by_sb: dict[tuple, list[mountinfo.Mount]] = {}

    def same_sb(m: mountinfo.Mount) -> list[mountinfo.Mount]:
        # (indexed once, when a first clone needs it: thousands of mounts may each need it)
        if not by_sb:
            for x in orig:
                by_sb.setdefault((x.major, x.minor, x.fstype, x.source), []).append(x)
        return by_sb[(m.major, m.minor, m.fstype, m.source)]

    def clone(m: mountinfo.Mount, as_id: int | None = None, rel: str | None = None) -> None:
        path = top_path(m.mountpoint)
        if kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) != to_copy[m.mnt_id]:
            raise DumpError(errno.EIO, f"mount {m.mnt_id} ({m.mountpoint}) is still covered in the copy")
        rel = at.get(m.mnt_id) if rel is None else rel
        if rel:
            pending.append((m.mnt_id if as_id is None else as_id, _clone_beneath(path, rel, to_copy[m.mnt_id])))
            send()
            return
        try:
            fd = kernel.open_tree(kernel.AT_FDCWD, path, kernel.OPEN_TREE_CLONE | kernel.AT_SYMLINK_NOFOLLOW)
        except OSError as e:
            if e.errno != errno.EINVAL or owner is None:
                raise
            # Locked mounts on it (a namespace a user namespace owns): the kernel clones it only with
            # them; their files lie on other superblocks (tar stays on one), and nothing of the
            # container reaches what they cover.
            fd = kernel.open_tree(kernel.AT_FDCWD, path,
                                  kernel.OPEN_TREE_CLONE | kernel.AT_RECURSIVE | kernel.AT_SYMLINK_NOFOLLOW)
            # tar shows the directories those mounts sit on as their roots: what they hold, and
            # their own modes, owners and times, come from other mounts that show them (binds).
            views = _covered_views(m, o_children.get(m.mnt_id, ()), same_sb(m), to_copy, top_path) if report else []
            # (in parts: a message carries at most channel.MAX_FDS fds, a mount may cover more)
            for k in range(0, len(views), channel.MAX_FDS):
                part = views[k:k + channel.MAX_FDS]
                chan.send(("beneath", m.mnt_id if as_id is None else as_id, [rel for rel, _ in part]),
                          [vfd for _, vfd in part])
                for _, vfd in part:
                    os.close(vfd)
        pending.append((m.mnt_id if as_id is None else as_id, fd))
        send()

    # Fast path: mounts whose path already leads to them.
    orig_by_id = {m.mnt_id: m for m in orig}
    slow = []
    # In the order asked (dump's: the namespace's, as mountinfo lists it, parents first), not by
    # mount id: ids are reused, and dump fills its archives in this order, 500 superblocks each,
    # which restore's filling helper must hold until their archive can be extracted: an archive
    # of superblocks made far apart in restore's order (by creation) kept ~1,000 fds open there.
    for mid in dict.fromkeys(wanted):
        m = orig_by_id[mid]
        try:
            if kernel.statx_mnt_id(top_path(m.mountpoint), flags=kernel.AT_SYMLINK_NOFOLLOW) == to_copy[mid]:
                clone(m)
                continue
        except OSError:
            pass
        slow.append(mid)
    if slow:
        left = _uncover(slow, orig_by_id, o_children, o_root, to_copy, clone, top_path, report)
        if left:
            # The kernel keeps a cover locked: another mount of the same superblock that the copy
            # shows and whose root holds the target's reaches the same files.
            for mid in sorted(left):
                if _clone_elsewhere(orig_by_id[mid], orig, to_copy, clone, top_path):
                    del left[mid]
            if left:
                send(final=True)
                chan.send(("locked", left))
    send(final=True)
    chan.send("done")


def _covered_views(m: mountinfo.Mount, children, same: list, to_copy: dict, top_path) -> list[tuple[str, int]]:
    """[(path beneath m's root, detached clone)] of the directories of `m` that its `children` are
    mounted on, each cloned from another mount of m's superblock (`same`: them all, m too) visible
    in the copy that shows it uncovered (a bind of it or of a directory above); one no mount shows
    is left out (what covers it is all the container reaches there), and so is one beneath another
    that is cloned."""
    out: list[tuple[str, int]] = []
    for rel in sorted({r for c in children if (r := _beneath(c.mountpoint, m.mountpoint))}):
        if any(rel.startswith(done + "/") for done, _ in out):
            continue
        where = (m.root.rstrip("/") + "/" + rel) if m.root != "/" else "/" + rel
        for m2 in same:
            if m2.mnt_id == m.mnt_id:
                continue
            rel2 = _beneath(where, m2.root)
            fd = None if rel2 is None else _clone_uncovered(top_path(m2.mountpoint), rel2, to_copy.get(m2.mnt_id))
            if fd is not None:
                out.append((rel, fd))
                break
    return out


def _clone_uncovered(path: str, rel: str, mnt_id: int | None) -> int | None:
    """A detached clone (no mounts on it) of the directory `rel` beneath the root of the mount at
    `path` (id `mnt_id` in the copy), reached with no mount crossed nor symlink followed; None
    when it is not so reachable or the kernel clones it only with locked mounts."""
    try:
        if mnt_id is None or kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) != mnt_id:
            return None
        sub = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        if rel:
            # (not even "." when there is no path: a lookup in a directory whose owner the user
            # namespace we stand in does not map needs its search permission)
            sub = _open_beneath(sub, rel)
        try:
            if not stat.S_ISDIR(os.fstat(sub).st_mode) or kernel.statx_mnt_id("", sub, kernel.AT_EMPTY_PATH) != mnt_id:
                return None
            return kernel.open_tree(sub, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
        finally:
            os.close(sub)
    except OSError:
        return None


def _open_beneath(top: int, rel: str) -> int:
    """An O_PATH fd of `rel` beneath directory fd `top` (closed here), no mount crossed nor symlink
    followed."""
    try:
        return kernel.openat2(top, rel, os.O_PATH | os.O_NOFOLLOW,
                              kernel.RESOLVE_NO_XDEV | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_BENEATH)
    finally:
        os.close(top)


def _beneath(root: str, base: str) -> str | None:
    """`root` relative to `base` ('' when equal) when it lies beneath it, else None."""
    if root == base:
        return ""
    if base == "/":
        return root[1:]
    return root[len(base) + 1:] if root.startswith(base + "/") else None


def _same_sb_holding(t: mountinfo.Mount, mounts) -> list[tuple[mountinfo.Mount, str]]:
    """(mount, path of t's root beneath its root) of the mounts of `mounts` on t's superblock
    (device number, type, source) whose root holds t's root, deepest root first."""
    if t.root.endswith("//deleted"):
        return []
    out = []
    for m in mounts:
        if m.mnt_id == t.mnt_id or (m.major, m.minor, m.fstype, m.source) != (t.major, t.minor, t.fstype, t.source):
            continue
        rel = _beneath(t.root, m.root)
        if rel is not None:
            out.append((m, rel))
    out.sort(key=lambda x: len(x[1]))
    return out


def _clone_elsewhere(t: mountinfo.Mount, orig, to_copy, clone, top_path) -> bool:
    """Clone target `t` (which a locked cover hides) at its root on another mount of its superblock
    that is visible in the copy; False when there is none."""
    for m, rel in _same_sb_holding(t, orig):
        try:
            if kernel.statx_mnt_id(top_path(m.mountpoint), flags=kernel.AT_SYMLINK_NOFOLLOW) != to_copy[m.mnt_id]:
                continue
            clone(m, t.mnt_id, rel)
            return True
        except OSError:
            continue
    return False


def _clone_beneath(path: str, rel: str, mnt_id: int) -> int:
    """A detached clone rooted at `rel` beneath the root of the mount at `path` (id `mnt_id`), never
    through a symlink or onto another mount (what lies there must be this superblock's)."""
    sub = _open_beneath(kernel.open_tree(kernel.AT_FDCWD, path, kernel.AT_SYMLINK_NOFOLLOW), rel)
    try:
        if kernel.statx_mnt_id("", sub, kernel.AT_EMPTY_PATH) != mnt_id:
            raise DumpError(errno.EIO, f"{path}: {rel} is not on the mount there")
        return kernel.open_tree(sub, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
    finally:
        os.close(sub)


def _twins(orig: list, copy: list) -> tuple:
    """(root, {parent id: children}, {original id: copy id}) of the namespace's mounts `orig` and the
    copy's (`copy`, mountinfo.brief). Twins are matched by (parent, mount point): unique since the
    kernel tucks a mount propagated onto an occupied mount point under the existing one."""
    o_ids = {m.mnt_id for m in orig}
    c_ids = {mid for mid, *_ in copy}
    o_root = next(m for m in orig if m.parent_id not in o_ids)
    c_root = next(mid for mid, parent, *_ in copy if parent not in c_ids)
    c_children: dict[tuple[int, str], int] = {(parent, mp): mid for mid, parent, _, mp, _ in copy}
    o_children: dict[int, list[mountinfo.Mount]] = {}
    for m in orig:
        if m.mnt_id != o_root.mnt_id:
            o_children.setdefault(m.parent_id, []).append(m)
    to_copy = {o_root.mnt_id: c_root}
    stack = [o_root]
    while stack:
        m = stack.pop()
        for c in o_children.get(m.mnt_id, ()):
            cid = c_children.get((to_copy[m.mnt_id], c.mountpoint))
            if cid is None and c.root.startswith("mnt:["):
                continue   # a mount namespace's file (`unshare --mount=PATH`): a copy leaves it, and what is on it, out
            if cid is None:
                raise DumpError(errno.EIO, f"mount {c.mnt_id} ({c.mountpoint}) has no twin in the namespace copy")
            to_copy[c.mnt_id] = cid
            stack.append(c)
    return o_root, o_children, to_copy


class Kept:
    """A helper forked into a mount namespace to answer fn(ns_fd, pids, *args) there (dump's
    nsinspect.inspect_ns: `result`, its errors raised as forkrun.run raises them), kept for the
    clones dump asks of that namespace later (`stream(..., kept=)`) and, once it sent them all
    (`idle`), for archives (`archive`, as content.archive's child would make them): one fork of
    the dump's process where there were three (each ~3.5 ms of CPU, most of it the copy-on-write
    page faults of a big Python process: benchmarks/HISTORY.md, session 32). A namespace another
    user namespace owns gets clones only (its helper joins that user namespace and cannot come
    back). `close` lets it go (and reaps it)."""

    # Our ends of the live helpers' channels: a helper forked later closes its copies of them, or
    # one of them closed here would not end its helper (its recv sees the end of the channel only
    # once no process holds our end).
    _ends: set[int] = set()

    def __init__(self, ns_fd: int, pids: list[int], fn, *args):
        owner = userns_cr.owner_to_join(ns_fd)
        if owner is not None:
            os.close(owner)
        self.can_archive = owner is None
        self.idle = False   # its clones all sent: it may archive
        self.chan, theirs = channel.Channel.pair()
        home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)   # (where _serve goes back to)
        try:
            self.result, self.pid = forkrun.run(fn, ns_fd, pids, *args, then=_serve,
                                                then_args=(ns_fd, pids, home, self.chan, theirs, tuple(Kept._ends)))
        except BaseException:
            self.chan.close()
            raise
        finally:
            theirs.close()
            os.close(home)
        Kept._ends.add(self.chan.fileno())

    def ask(self, wanted: list[int], orig: list, at: dict):
        """Yield what the helper sends for the clones of `wanted` (_clone_reporting's messages) until
        its "done" (asked once: the copy is its own after it); then it stays for `archive`, or is let
        go when it cannot archive or the clones were not all taken."""
        _request(self.chan, ("clone", wanted, orig, at))
        done = False
        try:
            while True:
                msg, fds = channel.next_message(self.chan)
                if msg == "done":
                    done = True
                    return
                yield msg, fds
        finally:
            if done and self.can_archive:
                self.idle = True
            else:
                self.close()

    def archive(self, mounts: list[tuple[int, str]], out_fd: int, dirs: dict) -> tuple:
        """content.archive's child's work (content.archive_in) done by this idle helper: the fds
        travel with the request, at most channel.MAX_FDS (`fits`). Returns what the child sends:
        (socket files tar left out, inode attributes)."""
        fds = [out_fd, *(fd for fd, _ in mounts), *(vfd for views in dirs.values() for _, vfd in views)]
        _request(self.chan, ("archive", [name for _, name in mounts],
                             {member: [rel for rel, _ in views] for member, views in dirs.items()}), fds)
        msg, rfds = channel.next_message(self.chan)
        for fd in rfds:
            os.close(fd)
        if not (isinstance(msg, tuple) and msg and msg[0] == "ok"):
            raise OSError(f"helper process answered {msg!r}")
        return msg[1]

    def fits(self, mounts: list, dirs: dict) -> bool:
        """Whether `archive` can take these: an idle helper, and fds one message carries."""
        return self.idle and self.pid is not None and \
            1 + len(mounts) + sum(len(views) for views in dirs.values()) <= channel.MAX_FDS

    def close(self) -> None:
        """Let the helper go and reap it (once)."""
        self.idle = False
        if self.pid is not None:
            Kept._ends.discard(self.chan.fileno())
            self.chan.close()
            os.waitpid(self.pid, 0)
            forkrun.going_on.discard(self.pid)
            self.pid = None


def _serve(ns_fd: int, pids: list[int], home: int, mine: channel.Channel, chan: channel.Channel,
           others: tuple[int, ...]) -> None:
    """In Kept's helper, once it answered: first the clones one request asks for (_clone_reporting's
    work and messages), then archives (content.archive_in), each from where a fresh fork of the
    dumper would stand (`home`: its mount namespace, whose root setns gives back: the answer and the
    copy leave it); an error is sent as channel's helpers send theirs, and ends it; the channel
    closed: return. `others`: the dumper's ends of the other kept helpers' channels (closed here)."""
    mine.close()
    for fd in others:
        os.close(fd)
    first, staged = True, False
    while True:
        try:
            req, fds = chan.recv()
        except channel.ChannelClosed:
            return
        try:
            req, fds = _received(req, fds)
            if req[0] == "clone" and first:
                kernel.setns(home, kernel.CLONE_NEWNS)
                _clone_in_copy(ns_fd, pids, req[1], req[2], chan, req[3], True)
            elif req[0] == "archive":
                if not staged:   # (once: then content's staging namespace is its own, never the dumper's)
                    kernel.setns(home, kernel.CLONE_NEWNS)
                    staged = True
                _archive_request(req, fds, chan)
            else:
                raise OSError(f"kept helper: unexpected request {req[0]!r}")
            first = False
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            chan.send(channel.error_reply(e) if isinstance(e, OSError) else ("error", forkrun.format_tb(e, limit=3)))
            return


# A request bigger than this goes in a memory file: a seqpacket datagram is bounded by the socket's
# send buffer (net.core.wmem_default, ~208 KiB), and a clone request carries the namespace's mount
# list (10,000 mounts: ~1.5 MB).
_INLINE = 64 << 10


def _request(chan: channel.Channel, req: tuple, fds=()) -> None:
    """Send Kept's request `req` with `fds` (_received takes it in)."""
    data = forkrun.pickle.dumps(req)
    if len(data) <= _INLINE:
        chan.send(req, fds)
        return
    mfd = os.memfd_create("mntcr-request", os.MFD_CLOEXEC)
    try:
        forkrun.write_all(mfd, data)
        chan.send(("in_file",), [mfd, *fds])
    finally:
        os.close(mfd)


def _received(req: tuple, fds: list[int]) -> tuple[tuple, list[int]]:
    """The request and fds _request sent: one that came in a memory file read from it (first fd)."""
    if req[0] != "in_file":
        return req, fds
    try:
        os.lseek(fds[0], 0, os.SEEK_SET)
        data = forkrun.read_all(fds[0])
    finally:
        os.close(fds[0])
    return forkrun.pickle.loads(data), fds[1:]


def _archive_request(req: tuple, fds: list[int], chan: channel.Channel) -> None:
    """Kept.archive's request ("archive", member names, {member: [paths]}) with its fds (the output,
    the mounts, the covered directories' views) handed to content.archive_in."""
    from engine import content
    _, names, layout = req
    views = iter(fds[1 + len(names):])
    dirs = {member: [(rel, next(views)) for rel in rels] for member, rels in layout.items()}
    try:
        content.archive_in(list(zip(fds[1:1 + len(names)], names)), fds[0], dirs, chan)
    finally:
        for fd in fds:
            os.close(fd)


def stream(ns_fd: int, pids: list[int], wanted: list[int], orig: list, others=(), beneath: dict | None = None,
           kept: Kept | None = None):
    """Yield ([original ids], [fds]) of detached clones of the wanted mounts of the namespace, as
    clone_mounts sends them (run in a forked child, or by `kept`, a Kept helper in the namespace). One
    hidden by a cover the kernel keeps locked
    (a user namespace's copy of its parent's stacks) comes from another mount of its superblock
    visible in the copy, else from one in the tree's other namespaces (`others`: (pids, mount
    list) of each), else from its twin in the dumper's own namespace (same user namespace: nothing
    locked there), each rooted at its root; else dump is refused. A clone that had to bring locked
    mounts along puts into `beneath` {id: [(path, clone of that directory)]} (_covered_views): the
    caller owns those fds."""
    left: dict[int, int] = {}
    helper = kept.ask(wanted, orig, {}) if kept is not None else \
        channel.fork_stream(_clone_reporting, ns_fd, pids, wanted, orig, {})
    for msg, fds in helper:
        if isinstance(msg, tuple) and msg[0] == "beneath":
            if beneath is None:
                for vfd in fds:
                    os.close(vfd)
            else:
                beneath.setdefault(msg[1], []).extend(zip(msg[2], fds))
            continue
        if isinstance(msg, tuple) and msg[0] == "locked":
            left.update(msg[1])
            continue
        yield msg, fds
    if left:
        yield from _from_elsewhere(left, orig, [*others, ([os.getpid()], None)])


def _from_elsewhere(left: dict[int, int], orig: list, places: list):
    """Clones of the mounts of `orig` that locked covers hide (`left`: {id: cover id}) made from
    other mounts of their superblocks in private copies of `places` ((pids, mount list) of a
    namespace, None: the dumper's own, last), each place tried in turn (see stream)."""
    by_id = {m.mnt_id: m for m in orig}
    for pids, mounts in places:
        if not left:
            return
        own = mounts is None
        if own:
            mounts = mountinfo.read_pid(os.getpid())
        todo = [(by_id[mid], *twins[0]) for mid in sorted(left)
                if (twins := _same_sb_holding(by_id[mid], mounts))]   # (target, twin, path beneath its root)
        if not todo:
            continue
        try:
            nsfd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue   # (its processes gone meanwhile)
        try:
            yield from _clone_twins(nsfd, pids, mounts, todo, left)
        except DumpError:
            if own:
                raise
        except OSError:
            if own:
                raise
            # (another namespace of the tree that cannot give it: the next place may)
        finally:
            os.close(nsfd)
    if left:
        mid = min(left)
        raise _locked_refusal(by_id[mid], by_id[left[mid]])


def _clone_twins(nsfd: int, pids: list[int], mounts: list, todo: list, left: dict[int, int]):
    """Yield clones of the targets of `todo` [(target, twin, path beneath its root)] made at their
    twins in a private copy of namespace `nsfd` (mount list `mounts`); each one made leaves `left`."""
    while todo:
        # One clone of a twin per round (two targets may lie at two paths of one twin).
        at: dict[int, str] = {}
        target: dict[int, mountinfo.Mount] = {}
        for t, twin, rel in list(todo):
            if twin.mnt_id not in at:
                at[twin.mnt_id], target[twin.mnt_id] = rel, t
                todo.remove((t, twin, rel))
        for msg, fds in channel.fork_stream(_clone_reporting, nsfd, pids, sorted(at), mounts, at):
            if isinstance(msg, tuple):   # ("locked", ...): locked there too, left for the next place
                for vfd in fds:
                    os.close(vfd)
                continue
            ids, fds = _checked([target[i] for i in msg], fds)
            for i in ids:
                left.pop(i, None)
            yield ids, fds


def _checked(targets: list[mountinfo.Mount], fds: list[int]) -> tuple[list[int], list[int]]:
    """(ids, fds) of clones made for `targets`, each checked to lie on its target's superblock."""
    for t, fd in zip(targets, fds):
        if os.fstat(fd).st_dev != os.makedev(t.major, t.minor):
            for f in fds:
                os.close(f)
            raise DumpError(errno.EIO, f"mount {t.mnt_id} ({t.mountpoint}): the mount of its device taken "
                                       "for it elsewhere shows another device: not its superblock")
    return [t.mnt_id for t in targets], fds


def clone_one(pids: list[int], mounts: list, mnt_id: int) -> int | None:
    """A detached clone of mount `mnt_id` of the mount namespace `pids` live in (`mounts`: its
    mount list), even if covered (stream uncovers it or finds its superblock elsewhere); None when
    it cannot be made."""
    nsfd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY)
    try:
        for _, fds in stream(nsfd, pids, [mnt_id], mounts):
            for fd in fds[1:]:
                os.close(fd)
            return fds[0] if fds else None
    except OSError:
        return None
    finally:
        os.close(nsfd)
    return None


def clone_some(pids: list[int], mounts: list, ids: list[int], kept: Kept | None = None) -> dict[int, int]:
    """Detached clones of the mounts `ids` of the mount namespace `pids` live in (`mounts`: its
    mount list), made by one helper as clone_one makes one (`kept`'s, a Kept helper in that namespace,
    which is let go after): {id: fd} of those it made (an error stops it: the rest are left out)."""
    got: dict[int, int] = {}
    try:
        nsfd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY)
    except OSError:
        if kept is not None:
            kept.close()
        return got
    try:
        for mids, fds in stream(nsfd, pids, ids, mounts, kept=kept):
            for i, fd in enumerate(fds):
                if i < len(mids) and mids[i] not in got:
                    got[mids[i]] = fd
                else:
                    os.close(fd)
    except OSError:
        pass
    finally:
        os.close(nsfd)
        if kept is not None:
            kept.close()
    return got


def _uncover(targets, by_id, children, root, to_copy, clone, top_path, report=False):
    """Clone covered targets by lazily unmounting what covers them (in a private namespace copy).

    A cover is a sibling mounted over a directory above a target's mount
    point, or a mount over its (or an ancestor's) root. One umount takes a
    cover's whole subtree, so only covers holding no pending target are
    unmounted; repeat until every target is visible. When a locked cover
    keeps some out of reach: with `report`, returns {their ids: a locked cover},
    else refuses. None when all were cloned.
    """
    remaining = set(targets)
    # Children by (parent, mount point): a cover is found by looking up the few
    # directories above a target, never by scanning all siblings (a parent may
    # have thousands of children).
    at: dict[tuple[int, str], list[int]] = {}
    for parent, cs in children.items():
        for c in cs:
            at.setdefault((parent, c.mountpoint), []).append(c.mnt_id)

    def above(n, p) -> list[str]:
        """Mount points of p's directories that hide n's: p's own root and each proper ancestor of n's."""
        r = rel_to(n.mountpoint, p.mountpoint)
        if not r:
            return []
        parts = r.split("/")
        base = "" if p.mountpoint == "/" else p.mountpoint
        return [p.mountpoint] + [base + "/" + "/".join(parts[:i]) for i in range(1, len(parts))]

    def chain(mid):
        out = []
        while mid in by_id and by_id[mid] is not root:
            out.append(mid)
            mid = by_id[mid].parent_id
        return out + [root.mnt_id]

    while remaining:
        for mid in sorted(remaining):
            path = top_path(by_id[mid].mountpoint)
            try:
                visible = kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) == to_copy[mid]
            except OSError:
                visible = False
            if visible:
                clone(by_id[mid])
                remaining.discard(mid)
        if not remaining:
            return None
        inside = set()
        for mid in remaining:
            inside.update(chain(mid))
        covers = set()
        hides: dict[int, int] = {}   # cover -> a target it hides (named if it is locked)
        for mid in remaining:
            ids = chain(mid)
            for node, parent in zip(ids, ids[1:] + [None]):
                n = by_id[node]
                for c in at.get((node, n.mountpoint), ()):
                    if c not in inside:
                        covers.add(c)   # a mount over this node's root
                        hides.setdefault(c, mid)
                if parent is None:
                    continue
                for mp in above(n, by_id[parent]):
                    for c in at.get((parent, mp), ()):
                        if c != node and c not in inside:
                            covers.add(c)   # a sibling over a directory above it
                            hides.setdefault(c, mid)
        # A cover may itself be overmounted (a stack at its mount point, e.g. propagated there):
        # its path leads to the top of that stack, which goes first.
        stack = list(covers)
        while stack:
            c = stack.pop()
            for top in at.get((c, by_id[c].mountpoint), ()):
                if top not in covers and top not in inside:
                    covers.add(top)
                    hides.setdefault(top, hides[c])
                    stack.append(top)
        # Outer covers first: what an outer cover hides is reachable only once it is gone.
        progress, locked = False, {}
        for c in sorted(covers, key=lambda x: (len(by_id[x].mountpoint), x)):
            path = top_path(by_id[c].mountpoint)
            try:
                # Only if its path leads to it: else it is gone already (unmounting the path
                # would take whatever is there now, maybe a target) or still out of reach.
                if kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) != to_copy[c]:
                    continue
                kernel.umount2(path, kernel.MNT_DETACH)
                progress = True
            except OSError as e:
                if e.errno == errno.EINVAL:
                    locked.setdefault(hides[c], c)
        if not progress:
            mid = min(remaining)
            if locked:
                # Each target with a locked cover of its own, else the first locked one.
                over = {t: locked.get(t, next(iter(locked.values()))) for t in remaining}
                if report:
                    return over
                raise _locked_refusal(by_id[mid], by_id[over[mid]])
            raise DumpError(errno.EIO, f"mount {mid} ({by_id[mid].mountpoint}) stays covered in the copy")


def _locked_refusal(m: mountinfo.Mount, cover: mountinfo.Mount) -> DumpError:
    """The refusal of mount `m`, which `cover` (locked) hides and whose superblock is reachable nowhere else."""
    # (MNT_LOCKED: the kernel refuses to unmount it even for the host's root)
    return DumpError(errno.EOPNOTSUPP, f"mount {m.mnt_id} ({m.mountpoint}) is covered by mount {cover.mnt_id} "
                                       f"({cover.mountpoint}), locked over it (a user namespace's "
                                       "mount namespace copied from its parent's keeps such stacks locked "
                                       "together), and no other mount of its superblock reaches it: what it holds "
                                       "cannot be read; dump a tree whose user namespace mounts its own root "
                                       "(pivot_root), as container runtimes do")


def precheck(view, owned) -> None:
    """Before the stop: the mounts dump will archive (one per disjoint root of each content
    superblock, as dump plans them) that are locked and covered in a mount namespace another user
    namespace owns (`owned`: their names, their locks marked; `view`: engine/prestop.py's) are cloned
    as dump will (stream), so a cover the kernel keeps locked with no other way to the superblock is
    refused while the tree runs."""
    from engine import fs
    by_sb: dict[str, list[tuple[str, dict]]] = {}
    for ns_name, ns in view.mntns_doc.items():
        for e in ns["mounts"]:
            by_sb.setdefault(e["sb"], []).append((ns_name, e))
    wanted: dict[str, list[int]] = {}
    for sid, es in by_sb.items():
        sb = view.superblocks[sid]
        h = fs.lookup(sb["fstype"])
        if sb["external"] or sid in view.unsure or h is None or not h.content:
            continue
        chosen: list[str] = []
        for ns_name, e in sorted(es, key=lambda x: (len(x[1]["root"]), x[1]["root"])):
            if not e["root"].startswith("/") or e.get("ghost") or any(_beneath(e["root"], r) is not None
                                                                     for r in chosen):
                continue
            chosen.append(e["root"])
            # (only what was copied with the namespace is locked, and only that can lie beneath a
            # locked cover: engine/userns_cr.py `locks` marked them)
            if ns_name in owned and e.get("locked") and view.ns_pids.get(ns_name) \
                    and not _leads_to(view.ns_pids[ns_name][0], e):
                wanted.setdefault(ns_name, []).append(e["id"])
    for ns_name, ids in wanted.items():
        pids = view.ns_pids[ns_name]
        nsfd = os.open(f"/proc/{pids[0]}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            others = [(view.ns_pids[n], ms) for n, ms in view.ns_mounts.items() if n != ns_name and view.ns_pids.get(n)]
            for _, fds in stream(nsfd, pids, ids, view.ns_mounts[ns_name], others):
                for fd in fds:
                    os.close(fd)
        except DumpError:
            raise
        except OSError:
            pass   # (a process gone meanwhile: dump tells, once the tree is stopped)
        finally:
            os.close(nsfd)


def _leads_to(pid: int, e: dict) -> bool:
    """Whether mount point of entry `e` leads to it in the namespace of `pid` (it is not covered)."""
    try:
        return kernel.statx_mnt_id(f"/proc/{pid}/root{e['mountpoint']}", flags=kernel.AT_SYMLINK_NOFOLLOW) == e["id"]
    except OSError:
        return False
