"""fuse: a filesystem served by a daemon process, restarted at restore by a command the user gives.

A FUSE superblock lives as long as its daemon answers on the /dev/fuse connection; the daemon is
a program, which mntcr does not checkpoint. So the daemon is *restarted*, not restored:

- dump: a process of the tree holding /dev/fuse is a daemon (engine/dump.py `daemons`): it is
  not stopped (files of its mount stay readable while the tree is dumped) and not dumped; it is
  killed with the tree. When the superblock's source is a file of a tmpfs or ramfs of the image
  (squashfuse -o fsname=IMAGE), the image records where (`input`);
- restore: the engine opens /dev/fuse and makes the superblock itself (fsopen "fuse", fd=, the
  dumped source, subtype and options), so mountinfo shows what it showed; then it runs the
  command the user gave for the subtype (`mntcr restore --fuse-restart SUBTYPE=COMMAND`, "fuse"
  for none) in the caller's mount namespace, with `{conn}` replaced by /dev/fd/N of the
  connection (libfuse >= 3.3 serves a mount point /dev/fd/N without mounting: squashfuse,
  fuse-overlayfs, sshfs 3) and `{source}` by /proc/self/fd/M of the input file opened read-only
  beneath the restored superblock. The command never comes from the image (images are
  untrusted): without one for the subtype, restore refuses naming the option.

Since the command runs in the restorer's mount namespace, dump refuses before the stop a daemon
serving from a directory only the image holds (`serves_from_the_image`: fuse-overlayfs layers on
a tmpfs of the tree), which it could not reach; a mount declared external is reached.

The new daemon is no process of the restored tree (zdtm's snapshot leaves FUSE daemons out);
it exits when the superblock goes (the kernel ends the connection).
"""

from __future__ import annotations

import errno
import os
import select
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import stat

from engine.records import record

from engine import kernel
from engine.fs import AFTER_FILES, FsError, FsType, Recipe, lookup, open_image_file, register

FUSE_DEV = os.makedev(10, 229)
# Seconds a restarted daemon has to answer its first request.
_START_TIMEOUT = 60.0


def is_fuse_conn(st: os.stat_result) -> bool:
    """Whether an fd's stat is /dev/fuse (a process holding one serves a FUSE filesystem)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == FUSE_DEV


def restart_key(fstype: str) -> str:
    """The --fuse-restart key of a mountinfo fstype: its subtype ("fuse.squashfuse" -> squashfuse), else "fuse"."""
    return fstype.split(".", 1)[1] if "." in fstype else "fuse"


def command(template: str, conn: int, source_fd: int | None, key: str) -> list[str]:
    """argv of the user's restart command: `{conn}` replaced by /dev/fd/N, `{source}` by /proc/self/fd/M."""
    import shlex   # (loaded by `mntcr restore` when daemons are restarted; a dump never needs it)
    argv = []
    for word in shlex.split(template):
        if "{source}" in word and source_fd is None:
            raise FsError(errno.EINVAL, f"--fuse-restart {key}: the command names {{source}}, but the image "
                                        "holds no file for the superblock's source (it is no file of a tmpfs "
                                        "or ramfs of the image)")
        word = word.replace("{conn}", f"/dev/fd/{conn}")
        if source_fd is not None:
            # /proc/self/fd: a guest's /dev may have no /dev/fd link ({conn} is parsed by libfuse, never opened)
            word = word.replace("{source}", f"/proc/self/fd/{source_fd}")
        argv.append(word)
    if not any(f"/dev/fd/{conn}" in w for w in argv):
        raise FsError(errno.EINVAL, f"--fuse-restart {key}: the command must take the connection as its "
                                    "mount point: put {conn} where the mount point goes")
    return argv


def serves_from_the_image(pid: int, ext_mnts) -> str | None:
    """Why daemon `pid` could not be restarted, or None: a directory it holds open (the layers
    fuse-overlayfs serves, bindfs's source) lies on a superblock only the image holds (a tmpfs of
    the tree, say, not declared external): the --fuse-restart command runs in the restorer's mount
    namespace, which cannot reach what the restored tree's mounts hold, so dump refuses before the
    stop (was: dump OK, restore failed as the daemon found no layers). Its cwd is not asked (a
    daemon run in the foreground keeps its shell's), nor its root directory."""
    from engine import fs, mountinfo
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            mounts = mountinfo.brief(f.read())
        root = os.stat(f"/proc/{pid}/root")
        places = [f"/proc/{pid}/fd/{n}" for n in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None   # (gone: the tree's own checks tell)
    ext_devs = {dev for _, _, dev, mp, _ in mounts if mp in ext_mnts}
    by_id = {mid: (dev, mp, fstype) for mid, _, dev, mp, fstype in mounts}
    for place in places:
        try:
            st = os.stat(place)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino):
                continue
            mid = kernel.statx_mnt_id(place)
            path = os.readlink(place)
        except OSError:
            continue
        dev, mp, fstype = by_id.get(mid, (None, None, None))
        t = lookup(fstype) if fstype else None
        if dev is None or dev in ext_devs or t is None or t.daemon or not fs.made_for_image(fstype):
            continue
        with open(f"/proc/{pid}/comm", errors="replace") as f:
            comm = f.read().strip()
        return (f"process {pid} ({comm}) serves a FUSE filesystem from {path}, on mount {mid} ({fstype} at {mp}) "
                "whose files only the image holds: the daemon restarted at restore (--fuse-restart) runs in the "
                "restorer's mount namespace, which cannot reach them; keep what it serves from on a mount "
                "declared external (--external mnt[MOUNTPOINT]:KEY)")
    return None


def _start(argv: list[str], keep: list[int], mntns: int) -> None:
    """Run argv detached (setsid, double fork) in mount namespace `mntns`, keeping fds `keep`."""
    pid = os.fork()
    if pid == 0:
        try:
            kernel.setns(mntns, kernel.CLONE_NEWNS)
            os.chdir("/")
            os.setsid()
            if os.fork():
                os._exit(0)
            null = os.open("/dev/null", os.O_RDWR)
            for n in (0, 1, 2):
                os.dup2(null, n)
            # Only `keep`: the restorer's other fds (detached mounts, not all close-on-exec) held by
            # the daemon would keep its own superblock mounted, and so the daemon alive, forever.
            low = 3
            for fd in sorted(set(keep)):
                os.closerange(low, fd)
                os.set_inheritable(fd, True)
                low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def _answers(mount_fd: int) -> OSError | None:
    """Wait (bounded) for the daemon to answer a getattr of the root; the error, or None.

    The getattr runs in a child: a thread would leave the restorer multithreaded for a moment,
    and setns refuses a mount namespace change then (EINVAL)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.fstat(mount_fd)
        except OSError as e:
            code = e.errno or errno.EIO
        finally:
            os._exit(code)
    pidfd = kernel.pidfd_open(pid)
    try:
        ready = select.select([pidfd], [], [], _START_TIMEOUT)[0]
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)   # a request waiting for a daemon is killable
    _, status = os.waitpid(pid, 0)
    if not ready:
        return TimeoutError(errno.ETIMEDOUT, f"no answer in {_START_TIMEOUT:g}s")
    code = os.waitstatus_to_exitcode(status)
    return OSError(code, os.strerror(code)) if code else None


@record(frozen=True)
class FuseType(FsType):
    """A FUSE filesystem: made by restore on a new /dev/fuse connection its restarted daemon serves."""

    daemon: bool = True

    @property
    def when(self) -> str:
        return AFTER_FILES   # its input file may be an archived one

    def serves(self, st: os.stat_result) -> bool:
        return is_fuse_conn(st)

    def restart_refusal(self, pid: int, ext_mnts) -> str | None:
        return serves_from_the_image(pid, ext_mnts)

    def plan(self, sid: str, sb: dict, plan) -> None:
        src = sb["source"]
        if not src.startswith("/"):
            return
        for ns in plan.mntns_doc.values():
            mounts = ns["mounts"]
            if not any(m["sb"] == sid for m in mounts):
                continue
            # The visible mount the source path lies on: the deepest mount point above it, topmost.
            best = None
            for m in mounts:
                mp = m["mountpoint"]
                if src == mp or src.startswith(mp.rstrip("/") + "/"):
                    if best is None or len(mp) >= len(best["mountpoint"]):
                        best = m
            if best is None:
                return
            base = plan.superblocks[best["sb"]]
            handler = lookup(base["fstype"])
            if base["external"] or handler is None or not handler.content or best["sb"] == sid:
                return
            rel = src[len(best["mountpoint"].rstrip("/")):]
            path = (best["root"].rstrip("/") + rel) or "/"
            sb["input"] = {"sb": best["sb"], "path": path}
            return

    def made_from(self, sb: dict, mounts: dict) -> set[str]:
        return {sb["input"]["sb"]} if sb.get("input") else set()

    def create(self, sid: str, sb: dict, ctx, where: str) -> int:
        key = restart_key(sb["fstype"])
        template = ctx.daemon_command(key)
        if template is None:
            # {source} only where the image holds the source file: suggested elsewhere, it is refused
            example = f"{key} -f {{source}} {{conn}}" if sb.get("input") else f"{key} -f OPTIONS {{conn}}"
            raise FsError(errno.EINVAL, f"{where}: its daemon is not restored; give the command that serves it "
                                        f"with --fuse-restart {key}=COMMAND (e.g. '{example}')")
        source_fd = conn = mfd = None
        try:
            if sb.get("input"):
                # (the daemon outlives the tree while this fuse superblock lives: a parked mount its
                # file held would keep it, see Restorer.sb_pinnable)
                base = ctx.sb_pinnable(sb["input"]["sb"])
                if base is None:
                    raise FsError(errno.EINVAL, f"{where}: the filesystem of its source file was not restored")
                try:
                    source_fd = open_image_file(base, sb["input"]["path"], os.O_RDONLY, f"{where}: its input file",
                                                dirs=True)
                finally:
                    os.close(base)
            argv = command(template, 0, source_fd, key)  # checked before anything is made
            conn = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            params = [("fd", str(conn)), ("rootmode", "40000")]
            if "." in sb["fstype"]:
                params.append(("subtype", key))
            params += self.fsconfig_params(sb["super_opts"])
            from engine.standin import fsmount
            mfd = fsmount("fuse", sb["source"], params)
            ns = ctx.caller_mntns()
            try:
                _start(command(template, conn, source_fd, key), [fd for fd in (conn, source_fd) if fd is not None],
                       ns)
            finally:
                os.close(ns)
            os.close(conn)   # the daemon holds the connection now: if it dies, requests fail, never hang
            conn = None
            err = _answers(mfd)
            if err is not None:
                raise FsError(err.errno or errno.EIO, f"{where}: the --fuse-restart {key} command ({argv[0]}) "
                                                      f"does not serve it: {err.strerror or err}")
            fd, mfd = mfd, None
            return fd
        finally:
            for fd in (source_fd, conn, mfd):
                if fd is not None:
                    os.close(fd)


TYPE = register(FuseType(
    "fuse", requires=("fuse",),
    # user_id/group_id are given back; rootmode (never shown) is the root's type, the daemon tells the rest.
    recipe=Recipe(
        # squashfuse (libfuse 3) serves a connection handed to it as /dev/fd/N; fsname= makes the
        # source the image file, which the image keeps, so the restarted daemon reads the same one.
        make='mknod -m 666 /dev/fuse c 10 229\nmksquashfs "$SRC" "$WORK/img" -quiet -no-progress >/dev/null\n'
             'squashfuse -o fsname="$WORK/img",subtype=squashfuse "$WORK/img" "$FS"',
        commands=("squashfuse", "mksquashfs"),
        restart=(("squashfuse", "squashfuse -f {source} {conn}"),))))
