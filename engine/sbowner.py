"""Which user namespace owns a superblock (its s_user_ns), told by a probe that changes nothing.

mountinfo does not show a superblock's owner, and no kernel interface reads it.
The kernel checks it when a superblock is reconfigured: fspick + fsconfig
(FSCONFIG_CMD_RECONFIGURE) is refused with EPERM unless the caller has
CAP_SYS_ADMIN in the owner, which a process that joined a user namespace has
exactly for that namespace and those below it. Only after that check does
reconfigure_super refuse superblock flags it cannot change (any outside
MS_RMT_MASK: ``dirsync``) with EINVAL. So a reconfigure asking for
``dirsync`` never changes anything and answers, from inside user namespace U:
EINVAL when the superblock is owned by U or a namespace below it, EPERM when
not. Asked from the candidates deepest first, the first that gets EINVAL owns
it (or is the nearest candidate above its real owner).

A superblock whose every mount is covered (no path reaches it) is asked through
a detached clone of one of its mounts when the caller can make one (dump can),
else left out.
"""

from __future__ import annotations

import errno
import os

from engine import forkrun, kernel


def _capable(userns_fd: int, mount_fds: list[int]) -> list[bool | None]:
    """In a forked child: join the user namespace (and a mount namespace of its own, which fspick
    requires), then ask each mount's superblock. None: the probe could not tell (fspick refused)."""
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    kernel.unshare(kernel.CLONE_NEWNS)
    out: list[bool | None] = []
    for mfd in mount_fds:
        try:
            fc = kernel.fspick(mfd, "", kernel.FSPICK_EMPTY_PATH)
        except OSError:
            out.append(None)
            continue
        try:
            kernel.fsconfig(fc, kernel.FSCONFIG_SET_FLAG, "dirsync")
            kernel.fsconfig(fc, kernel.FSCONFIG_CMD_RECONFIGURE)
            out.append(None)  # accepted: a kernel that lets dirsync be reconfigured cannot tell
        except OSError as e:
            out.append(True if e.errno == errno.EINVAL else False if e.errno == errno.EPERM else None)
        finally:
            os.close(fc)
    return out


def _open_reachable(pid: int, mounts) -> dict[str, int]:
    """dev -> O_PATH fd on the root of one mount of that superblock that `pid`'s root reaches by
    path (the first in mountinfo order)."""
    fds: dict[str, int] = {}
    for m in mounts:
        if m.dev in fds:
            continue
        path = f"/proc/{pid}/root{m.mountpoint}"
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH) == m.mnt_id:
                fds[m.dev] = fd
                continue
        except OSError:
            pass
        os.close(fd)
    return fds


def probe(pid: int, mounts, candidates: list[tuple[object, int]], clone=None) -> dict[str, object]:
    """dev -> key of the candidate user namespace owning each superblock `pid` sees.

    `candidates`: (key, fd on a user namespace), deepest first; the caller's own namespace is not
    among them. A superblock none of them owns is absent (owned by the caller's namespace, or by
    one outside the candidates' subtrees); so is one no path reaches, unless `clone` (mount ->
    fd of a detached clone of it, or None) makes one of its mounts reachable."""
    if not candidates:
        return {}
    reps = _open_reachable(pid, mounts)
    out: dict[str, object] = {}
    try:
        if clone is not None:
            for m in mounts:
                if m.dev not in reps:
                    fd = clone(m)
                    if fd is not None:
                        reps[m.dev] = fd
        todo = list(reps)
        for key, ufd in candidates:
            if not todo:
                break
            try:
                got = forkrun.run(_capable, ufd, [reps[d] for d in todo])
            except (OSError, forkrun.ChildError):
                continue  # cannot join it (not below the caller's): it owns none of them
            out.update({d: key for d, yes in zip(todo, got) if yes})
            todo = [d for d in todo if d not in out]
    finally:
        for fd in reps.values():
            os.close(fd)
    return out


def diff(a: dict[str, str], b: dict[str, str], names=("before", "after")) -> list[str]:
    """One line per mount whose superblock's owner differs (labels -> owner description)."""
    out = []
    for label in sorted(set(a) | set(b)):
        oa, ob = a.get(label, "init"), b.get(label, "init")
        if oa != ob:
            out.append(f"superblock owner changed on {label} ({names[0]}: {oa}; {names[1]}: {ob})")
    return out
