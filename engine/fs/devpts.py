"""devpts: each fsmount is a new instance, and a new instance has no pty yet.

A mount whose root is pty N of the instance (CRIU's pty-console binds its slave /dev/pts/0 onto
/dev/console) is made at restore by opening the instance's ptmx, where the tree's master of N
was opened (so that it shows that path), until pty N exists; the masters
opened meanwhile go to the fd stage (engine/fds/pty.py), which gives master N to the process of
the tree that holds it. Dump asks that one does (the pty kind names it in scratch "held"): a pty
whose master lives outside the tree (LXC's monitor allocates the console in the container's
devpts) would come back without one, so it is declared external instead.
"""

import os

from engine.fs import FsType, register

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

    def make_root(self, ctx, m: dict) -> dict[int, int]:
        """Open the instance's ptmx where the tree's master of pty N opened it, until pty N of root
        "/N" exists (engine/fds/pty.py); every master opened, unlocked."""
        from engine.fds import pty
        opened = pty.open_for_root(ctx.doc, ctx.open_at, os.fstat(ctx.sb(m["sb"])).st_dev, pty_root(m["root"]))
        for fd in opened.values():
            pty.unlock(fd)
        return opened


TYPE = register(Devpts("devpts", fresh_roots=frozenset({"/", "/ptmx"}), requires=("devpts",), id_opts=IDS))
