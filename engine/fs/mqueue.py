"""mqueue: no files to dump here; it belongs to an ipc namespace, whose queues engine/sysvipc.py
dumps and makes again with the namespace.

Its root belongs to the fsuid and fsgid of whoever made the ipc namespace (a rootless runtime's
user namespace root; the restorer, at restore) and may be chowned or chmodded since: the root's
owner and mode are its payload, given back to the root of the superblock restore made. Never to
the restorer's own ipc namespace's (the tree shared the host's): that root is the host's.
"""

from __future__ import annotations

import errno
import os
import stat

from engine.fs import FsError, FsType, register
from engine.records import record

MAX_ID = (1 << 32) - 2   # (-1 is no id: chown's "leave it")
_own_dev: list[int] = []


def _own_instance() -> int | None:
    """st_dev of the mqueue superblock of this process's ipc namespace: the one a new mqueue made
    here joins (a detached mount, closed at once: nothing is attached anywhere). None when the
    kernel makes none here."""
    if not _own_dev:
        from engine import standin
        try:
            fd = standin.fsmount("mqueue", None, [])
        except OSError:
            return None
        try:
            _own_dev.append(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
    return _own_dev[0]


@record(frozen=True)
class Mqueue(FsType):
    """mqueue: the root's owner and mode are kept (payload {root: {mode, uid, gid}})."""

    def wants_probe(self) -> bool:
        return True

    def probe(self, sid: str, mid: int, mount_fd: int, plan) -> None:
        st = os.fstat(mount_fd)
        sb = plan.superblocks.get(sid)
        if sb is None or st.st_dev == _own_instance():
            return   # (the dumper's own namespace's: the host's root, never given anything)
        sb["payload"] = {"root": {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}}

    def check_payload(self, what: str, sb: dict) -> str | None:
        """{root: {mode 0..07777, uid, gid}} and nothing else."""
        root = sb["payload"].get("root") if isinstance(sb["payload"], dict) else None
        if set(sb["payload"]) != {"root"} or not isinstance(root, dict) or set(root) != {"mode", "uid", "gid"} \
                or not all(type(v) is int for v in root.values()) or not 0 <= root["mode"] <= 0o7777 \
                or not (0 <= root["uid"] <= MAX_ID and 0 <= root["gid"] <= MAX_ID):
            return f"{what}: payload is not {{root: {{mode 0..07777, uid, gid}}}}"
        return None

    def fill(self, sb: dict, mount_fd: int, where: str) -> None:
        root = (sb.get("payload") or {}).get("root")
        if not root:
            return
        st = os.fstat(mount_fd)
        own = _own_instance()
        if own is None or st.st_dev == own:
            # (a namespace restore did not make: the restorer's own, whose root is the host's; or
            # one it cannot tell from it)
            raise FsError(errno.EPERM, f"{where}: mqueue: the superblock made is (or may be) the restorer's own "
                                       "ipc namespace's; its root's owner is not given")
        try:
            if (st.st_uid, st.st_gid) != (root["uid"], root["gid"]):
                # (through the mount fd itself: with a yard the restorer's "/" has no /proc)
                os.chown(".", root["uid"], root["gid"], dir_fd=mount_fd)
            os.chmod(".", root["mode"], dir_fd=mount_fd)   # (after: chown clears set-id bits)
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"{where}: mqueue: giving its root owner {root['uid']}:"
                                                f"{root['gid']} and mode {root['mode']:o}: {e.strerror or e}") from None


TYPE = register(Mqueue("mqueue", ns="ipc", joins_by_ns=True, requires=("mqueue",)))
