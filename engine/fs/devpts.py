"""devpts: each fsmount is a new instance, and a new instance has no pty yet.

A mount whose root is pty N of the instance (CRIU's pty-console binds its slave /dev/pts/0 onto
/dev/console) is made at restore by opening the instance's ptmx, where the tree's master of N
was opened (so that it shows that path), until pty N exists; the masters
opened meanwhile go to the fd stage (engine/fds/pty.py), which gives master N to the process of
the tree that holds it. Dump asks that one does (the pty kind names it in scratch "held"): a pty
whose master lives outside the tree (LXC's monitor allocates the console in the container's
devpts) would come back without one, so it is declared external instead.

The instance's ptmx node belongs to the fsuid and fsgid of whoever mounted it (the kernel's
mknod_ptmx): an unprivileged LXC container's root (host 100000) for the devpts LXC mounts in it
and binds onto /dev/ptmx; the restorer, at restore. Its owner is the payload ({ptmx: {uid, gid}},
when it is not root's), given back to the new instance's ptmx.
"""

import errno
import os
import stat

from engine.fs import FsError, FsType, register

MAX_ID = (1 << 32) - 2   # (-1 is no id: chown's "leave it")
_PTMX = os.makedev(5, 2)

IDS = (("uid", "uid"), ("gid", "gid"))   # devpts_show_options prints them in the initial namespace's ids


def pty_root(root: str) -> int | None:
    """The pty number of mount root "/N" of a devpts instance, None for another root."""
    name = root[1:]
    return int(name) if root.startswith("/") and name.isdigit() and name == str(int(name)) else None


class Devpts(FsType):
    """devpts: roots "/" and "/ptmx" come with a new instance; "/N" is made by opening its ptmx."""

    def held_root(self, root: str) -> bool:
        """A pty of the instance: its master must be held by the tree (dump checks)."""
        return pty_root(root) is not None

    def wants_probe(self) -> bool:
        return True

    def probe(self, sid: str, mid: int, mount_fd: int, plan) -> None:
        """The owner of the instance's ptmx (through a mount of its root, or of ptmx itself), when
        it is not root's."""
        sb = plan.superblocks.get(sid)
        try:
            st = os.fstat(mount_fd)
            if stat.S_ISDIR(st.st_mode):
                st = os.stat("ptmx", dir_fd=mount_fd, follow_symlinks=False)
        except OSError:
            return   # (a mount of pty N alone: its ptmx is out of reach, left as the kernel makes it)
        if sb is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == _PTMX and (st.st_uid, st.st_gid) != (0, 0):
            sb["payload"] = {"ptmx": {"uid": st.st_uid, "gid": st.st_gid}}

    def check_payload(self, what: str, sb: dict) -> str | None:
        """{ptmx: {uid, gid}} and nothing else."""
        ptmx = sb["payload"].get("ptmx") if isinstance(sb["payload"], dict) else None
        if set(sb["payload"]) != {"ptmx"} or not isinstance(ptmx, dict) or set(ptmx) != {"uid", "gid"} \
                or not all(type(v) is int and 0 <= v <= MAX_ID for v in ptmx.values()):
            return f"{what}: payload is not {{ptmx: {{uid, gid}}}}"
        return None

    def fill(self, sb: dict, mount_fd: int, where: str) -> None:
        """The new instance's ptmx given its owner (a devpts made by restore is always a new one)."""
        ptmx = (sb.get("payload") or {}).get("ptmx")
        if not ptmx:
            return
        try:
            os.chown("ptmx", ptmx["uid"], ptmx["gid"], dir_fd=mount_fd, follow_symlinks=False)
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"{where}: devpts: giving its ptmx owner {ptmx['uid']}:"
                                                f"{ptmx['gid']}: {e.strerror or e}") from None

    def make_root(self, ctx, m: dict) -> dict[int, int]:
        """Open the instance's ptmx where the tree's master of pty N opened it, until pty N of root
        "/N" exists (engine/fds/pty.py); every master opened, unlocked."""
        from engine.fds import pty
        opened = pty.open_for_root(ctx.doc, ctx.open_at, os.fstat(ctx.sb(m["sb"])).st_dev, pty_root(m["root"]))
        for fd in opened.values():
            pty.unlock(fd)
        return opened


TYPE = register(Devpts("devpts", fresh_roots=frozenset({"/", "/ptmx"}), requires=("devpts",), id_opts=IDS))
