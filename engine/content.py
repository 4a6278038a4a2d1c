"""Files of superblocks: archive them from mount fds, extract them into new superblocks.

GNU tar keeps what a container's tmpfs can hold: modes, owners (numeric),
xattrs and ACLs, symlinks, hard links, device nodes, sparse files.

One tar process serves many superblocks: a forked helper, in a private mount
namespace, attaches each superblock's mount (a detached clone with no
children) as `sb-K` under a staging tmpfs and runs tar once over all of them.
Restore does the same in reverse. The archive's size and sha256 go into the
manifest and are checked before anything is extracted.
"""

from __future__ import annotations

import fcntl
import functools
import os
from engine import rx
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import stat
import struct
import sys

from engine import channel, image, kernel, tarlist

_COMMON = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]
_PLAIN = ["--numeric-owner"]   # extracting an archive with no xattr or ACL (XATTR_WORDS)
MEMBER = rx.compile(r"^sb-[0-9]+$")


@functools.cache
def _tar() -> str:
    # shutil.which's search, without importing shutil (it loads zlib, bz2 and lzma: ~3 ms of every run).
    tar = next((p for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
                if os.access(p := os.path.join(d or ".", "tar"), os.X_OK) and not os.path.isdir(p)), None)
    if not tar:
        raise OSError("GNU tar is needed to dump and restore tmpfs contents: install the 'tar' package")
    return tar


def tools(big: bool = False) -> None:
    """Load what hashing archives of a MiB or more takes (hashlib: OpenSSL's sha256, about 6 times
    faster than the builtin one and ~3 M instructions to load), when `big`. Smaller archives are
    hashed by the builtin sha256 and tar runs through posix_spawn, which need nothing loaded. A
    process that hashes after it pivots or chroots away from the interpreter's library (restore's
    restorer) calls it before, with `big` from the manifest's archive sizes."""
    global hashlib
    if big and hashlib is None:
        import hashlib      # noqa: F401  (bound as this module's global)


hashlib = None
# Archives this big or more are hashed by OpenSSL (where loading it costs less than the builtin's
# slower hashing: ~3 M instructions against ~2.7 ms a MiB).
BIG = 1 << 20


def _sha256(size: int):
    """A new sha256 object: OpenSSL's for a big file, else the builtin module (no OpenSSL to load)."""
    if size >= BIG:
        try:
            tools(big=True)
            return hashlib.sha256()
        except ImportError:   # (out of the library's reach, e.g. an archive its read-ahead failed on)
            pass
    # (by version: a failed import is a search of every directory on the path)
    if sys.version_info >= (3, 12):
        from _sha2 import sha256
    else:
        from _sha256 import sha256
    return sha256()


def run(argv: list[str], stdin: int | None = None, stdout: int | None = None, pass_fds=(),
        env=None) -> tuple[int, bytes, bytes]:
    """Run `argv` (argv[0] a path: tar) to its end: (exit status, its stdout unless `stdout` (an
    fd) was given, its stderr); stdin is the fd `stdin`, else /dev/null.

    posix_spawn (vfork and exec, in C) rather than `subprocess`, whose import was ~10% of a small
    restore's instructions. As with subprocess, the program gets fds 0-2 and `pass_fds` only, and
    SIGPIPE and SIGXFSZ at their defaults; its output goes to memory files, read once it has exited
    (no pipe to drain while it runs)."""
    mine = []
    try:
        if stdin is None:
            stdin = _above_stdio(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), mine)
        out = stdout
        if stdout is None:
            out = _above_stdio(os.memfd_create("stdout", os.MFD_CLOEXEC), mine)
        err = _above_stdio(os.memfd_create("stderr", os.MFD_CLOEXEC), mine)
        keep = {0, 1, 2, *pass_fds}
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
        # Only fds exec would keep get a close action (glibc makes two syscalls for each; the others,
        # close-on-exec like most of ours, go at the exec anyway).
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in map(int, os.listdir("/proc/self/fd"))
                    if fd not in keep and _inherited(fd)]
        was = {fd: os.get_inheritable(fd) for fd in pass_fds}
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        try:
            pid = os.posix_spawn(argv[0], argv, os.environ if env is None else env, file_actions=actions,
                                 setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        finally:
            for fd, inheritable in was.items():
                os.set_inheritable(fd, inheritable)
        status = os.waitpid(pid, 0)[1]
        return os.waitstatus_to_exitcode(status), b"" if stdout is not None else read_from_start(out), \
            read_from_start(err)
    finally:
        for fd in mine:
            os.close(fd)


def _inherited(fd: int) -> bool:
    """Whether an exec would keep `fd` open (False for an fd closed meanwhile: the listing's own)."""
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False


def _above_stdio(fd: int, mine: list[int]) -> int:
    """`fd` moved to a number above 2 (kept in `mine`, to close): with one of our fds 0-2 closed, an fd
    made there would be overwritten by the dup2 onto 0-2 of the one before it."""
    if fd < 3:
        import fcntl
        try:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        finally:
            os.close(fd)
        fd = high
    mine.append(fd)
    return fd


def read_from_start(fd: int) -> bytes:
    """All of the file at `fd` from its start (a memory file a child wrote its output to)."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while data := os.read(fd, 1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _last_line(text: str, default: str) -> str:
    """tar's own reason: its last line that is not the closing "Exiting with failure status"."""
    lines = [line for line in text.strip().splitlines() if line.strip() and "Exiting with failure status" not in line]
    return lines[-1] if lines else default


# For modules that run tar themselves (engine/ghosts.py).
tar, COMMON, last_line = _tar, _COMMON, _last_line


_private_in: int | None = None   # the pid of the process that left its mount namespace for a private one


def _staging(mounts: list[tuple[int, str]], clone: bool = False) -> int:
    """In a private namespace: a tmpfs with each (mount fd, name) attached at name; return its fd.
    A process makes that namespace once (extract `here`: the filler stages every archive there).
    `clone`: attach a clone of each (made, attached and closed one at a time: one fd more, not one
    per mount) and leave the given fds alone."""
    global _private_in
    if _private_in != os.getpid():   # (a forked child has a pid of its own: it makes its own)
        kernel.unshare(kernel.CLONE_NEWNS)
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
        _private_in = os.getpid()
    staging = kernel.scratch_tmpfs()
    # Stacked on "/" of this private namespace: our own lookups of "/usr/bin/tar" still
    # start below it, while /proc/self/fd/STAGING reaches it.
    kernel.move_mount(staging, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    for fd, name in mounts:
        mfd = kernel.open_tree(fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH) if clone else fd
        try:
            member, _, only = name.partition("/")
            os.mkdir(member, 0o700, dir_fd=staging)
            if only:
                # A mount of one file (or of an unlinked directory): attached on an empty object of
                # its kind, named as it was, inside the member.
                if stat.S_ISDIR(os.fstat(mfd).st_mode):
                    os.mkdir(f"{member}/{only}", 0o700, dir_fd=staging)
                else:
                    os.close(os.open(f"{member}/{only}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=staging))
            kernel.move_mount(mfd, "", staging, name, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            if clone:
                os.close(mfd)
    return staging


# tar's warning for a socket file it leaves out (with --quoting-style=c and LC_ALL=C).
_SOCKET_IGNORED = rx.compile(r'^[^ ]*tar: (".*"): socket ignored$')


def archive_in(mounts: list[tuple[int, str]], out_fd: int, dirs: dict, chan: channel.Channel) -> None:
    """What archive's child does, for a helper of the caller's that already runs (dump's kept namespace
    helper, engine/nscopy.py Kept.archive): stage the mounts in a private namespace of its own (made
    once), run tar into `out_fd`, send ("ok", (the socket files tar left out, the inode attributes
    inode_flags found))."""
    _archive_child(mounts, out_fd, dirs, chan)


def _archive_child(mounts: list[tuple[int, str]], out_fd: int, dirs: dict, chan: channel.Channel) -> None:
    staging = _staging(mounts)
    covered = _covered_dirs(staging, dirs)
    # --one-file-system: a mount cloned with the locked mounts on it (a namespace a user namespace
    # owns: engine.nscopy's clone_mounts) must not bring their files (proc's, another tmpfs's) along.
    cmd = [_tar(), "-C", f"/proc/self/fd/{staging}", "--sparse", "--one-file-system", *_COMMON,
           "--quoting-style=c", "-cf", "-", *sorted(name for _, name in mounts)]
    if covered:
        # Last, so that extracting them sets those directories as they are (tar keeps a directory
        # that exists and gives it the later member's mode, owner and times), then fills them.
        cmd += ["-C", f"/proc/self/fd/{staging}/{_COVERED}", *covered]
    try:
        code, _, err = run(cmd, stdout=out_fd, pass_fds=(staging,), env={**os.environ, "LC_ALL": "C"})
        if code not in (0, 1):  # 1: "file changed as we read it", the tree is stopped
            raise OSError(f"archiving files failed: {_last_line(_text(err), 'tar failed')}")
        left_out = _sockets_left_out(staging, _text(err))
        flagged = inode_flags(staging, [name for _, name in mounts], covered)
    finally:
        _let_go(staging)
    chan.send(("ok", (left_out, flagged)))


def _let_go(staging: int) -> None:
    """Unmount the staging tmpfs and the mounts attached in it, and close it: a helper that archives
    batch after batch (archive_in, dump's kept namespace helper) would otherwise keep every batch's
    mounts in its namespace until it ends."""
    try:
        kernel.umount2(f"/proc/self/fd/{staging}", kernel.MNT_DETACH)
    except OSError:
        pass   # (they go with the helper's namespace when it exits, as a one-shot child's do)
    os.close(staging)


def _sockets_left_out(staging: int, stderr: str) -> list[tuple[str, dict]]:
    """The socket files tar named as left out (it archives no sockets): [(member, {path in the
    member, mode, uid, gid, mtime_ns})], so that restore makes them again (a socket file whose
    listener is gone still names an address: CRIU's overmount_sock)."""
    out = []
    for line in stderr.splitlines():
        m = _SOCKET_IGNORED.match(line)
        if m is None:
            continue
        try:
            name, _ = _c_unquote(m[1], 0)
            st = os.lstat(name, dir_fd=staging)
        except (ValueError, OSError):
            continue
        member, _, rest = name.partition("/")
        if not stat.S_ISSOCK(st.st_mode) or not rest:
            continue
        out.append((member, {"path": "/" + rest, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                             "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}))
    return out


# Inode attributes tar keeps none of, which restore sets again (FS_IOC_SETFLAGS) once every file
# is in place (engine/restore.py seal): immutable, append-only, nodump (chattr i, a, d; tmpfs keeps
# them since 6.0): image.INODE_FLAGS.
INODE_FLAGS = image.INODE_FLAGS
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602


def inode_flags(staging: int, names: list[str], covered: list[str] = ()) -> list[tuple[str, dict]]:
    """[(member, {"path" beneath the member, "flags"})] of each directory and regular file of the
    members `names` (MEMBER or MEMBER/ONLY) of `staging` with an attribute of INODE_FLAGS, and of the
    views of their covered directories `covered` (MEMBER/PATH, attached beneath _COVERED: a locked
    mount in a member hides the directory it sits on, _covered_dirs); a member whose filesystem shows
    none (statx's attributes mask: ramfs) is not walked, nor another filesystem mounted beneath one
    (tar's --one-file-system)."""
    tops = []
    for name in sorted(names):
        member, _, only = name.partition("/")
        tops.append((member, f"/proc/self/fd/{staging}/{name}", "/" + only if only else "/"))
    for name in covered:
        member, _, rel = name.partition("/")
        tops.append((member, f"/proc/self/fd/{staging}/{_COVERED}/{name}", "/" + rel.strip("/")))
    out: list[tuple[str, dict]] = []
    seen: set[tuple[str, str]] = set()   # (a covered directory's view is walked once)
    for member, top, first in tops:
        try:
            attrs, mask, mode, dev = kernel.statx_attributes(top, flags=kernel.AT_SYMLINK_NOFOLLOW)
        except OSError:
            continue
        if not mask & INODE_FLAGS:
            continue
        todo = [(first, attrs, mode)]
        while todo:
            rel, attrs, mode = todo.pop()
            if attrs & INODE_FLAGS and (member, rel) not in seen:
                seen.add((member, rel))
                out.append((member, {"path": rel, "flags": attrs & INODE_FLAGS}))
            if not stat.S_ISDIR(mode):
                continue
            path = top + (rel[len(first):] if first != "/" else rel)
            todo += _flagged_entries(path, rel, dev)
    return out


def _flagged_entries(path: str, rel: str, dev: int) -> list[tuple[str, int, int]]:
    """[(path beneath the member, attributes, mode)] of the directories and regular files in
    directory `path` (`rel` beneath the member) on device `dev`. A name removed or replaced while
    walked is passed over, as tar passes over it ("file changed as we read it"): a superblock a
    process outside the tree shares may change under the dump."""
    found = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                        continue
                    a, _, m, d = kernel.statx_attributes(entry.path, flags=kernel.AT_SYMLINK_NOFOLLOW)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if d == dev:
                    found.append((rel.rstrip("/") + "/" + entry.name, a, m))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return found


def set_inode_flags(root_fd: int, records, proc: int | None = None) -> None:
    """Set the attributes of each record ({"path" beneath directory `root_fd`, "flags"}) on the file
    there (inode_flags'), keeping those it has; a name no longer a directory or regular file there
    is passed over. `proc`: a directory fd of this process's /proc (restore's yard covers "/", so
    "/proc" is not found there), else /proc."""
    if proc is None:
        proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return set_inode_flags(root_fd, records, proc)
        finally:
            os.close(proc)
    for rec in records:
        rel = rec["path"].lstrip("/") or "."
        # O_PATH first: an image's path may name a device node or a FIFO, which root must not open.
        try:
            path_fd = kernel.openat2(root_fd, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS)
        except OSError:
            continue
        try:
            mode = os.fstat(path_fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                continue
            # (no skip here: the file is there, and a failed reopen once lost its attributes silently)
            fd = os.open(f"self/fd/{path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=proc)
        finally:
            os.close(path_fd)
        try:
            have = struct.unpack_from("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<iI", have | rec["flags"], 0))
        finally:
            os.close(fd)


# The staging directory where other mounts' views of covered directories are attached (no
# member is named so: sb-N only).
_COVERED = ".covered"


def _covered_dirs(staging: int, dirs: dict) -> list[str]:
    """Attach each clone of `dirs` ({member: [(path beneath it, clone of that directory)]}) at
    _COVERED/MEMBER/PATH in `staging`; return those names, which tar archives after the members.
    (A member cloned with locked mounts on it, engine/nscopy.py, shows their roots in place of
    the directories they sit on: those come from the clones, with what they hold.)"""
    names = []
    for member, views in sorted(dirs.items()):
        for rel, fd in views:
            name = f"{member}/{rel}"
            os.makedirs(f"/proc/self/fd/{staging}/{_COVERED}/{name}", 0o700)
            kernel.move_mount(fd, "", staging, f"{_COVERED}/{name}", kernel.MOVE_MOUNT_F_EMPTY_PATH)
            names.append(name)
    return names


def archive(mounts: list[tuple[int, str]], out_path: str, sockets: dict | None = None,
            dirs: dict | None = None, helper=None, flags: dict | None = None) -> dict:
    """Archive the files of each (detached mount fd, member name) into out_path; return its size and sha256.
    A mount of a single file is named "MEMBER/FILENAME": the member then holds that file alone.
    Socket files, which tar leaves out, go into `sockets` ({member: [record]}, see make_sockets);
    files with inode attributes tar keeps none of into `flags` (the same way: inode_flags).
    `dirs`: {member: [(path, clone)] of its directories that mounts cover} (_covered_dirs).
    `helper(mounts, out_fd, dirs)`: a running helper's archive_in (dump's Kept.archive) instead of
    a child forked for it.

    The mount fds are attached inside a throwaway namespace (the caller's fds
    stay open but their mounts end up detached).
    """
    with open(out_path, "wb") as out:
        if helper is not None:
            left_out, flagged = helper(mounts, out.fileno(), dirs or {})
        else:
            (left_out, flagged), _ = channel.call_in_child(_archive_child, mounts, out.fileno(), dirs or {})
        out.flush()
        # (to disk while the dump goes on: the image's commit fsyncs every archive before the manifest)
        kernel.start_writeback(out.fileno())
    if sockets is not None:
        for member, rec in left_out or ():
            sockets.setdefault(member, []).append(rec)
    if flags is not None:
        for member, rec in flagged or ():
            flags.setdefault(member, []).append(rec)
    return digest_path(out_path)


def make_sockets(dir_fd: int, records, ids: tuple[int, int] | None = None) -> None:
    """Make again, beneath directory `dir_fd` (a member's root), the socket files an archive left
    out: a socket inode with no socket behind it (mknod S_IFSOCK), with its mode, owner and mtime.
    `ids`: as for `extract` (a superblock a user namespace owns takes no new file from an id it does
    not map: EOVERFLOW), taken by a child."""
    if ids is not None and records:
        from engine import forkrun

        def body():
            kernel.fs_ids_keeping_caps(*ids)
            make_sockets(dir_fd, records)

        forkrun.run(body)
        return
    for rec in records:
        parent, _, name = rec["path"].rpartition("/")
        pfd = kernel.openat2(dir_fd, parent.lstrip("/") or ".", os.O_PATH | os.O_DIRECTORY,
                             kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS)
        try:
            try:
                os.mknod(name, stat.S_IFSOCK | rec["mode"], dir_fd=pfd)
            except FileExistsError:
                continue   # (the name was taken again by something else: keep that)
            os.chown(name, rec["uid"], rec["gid"], dir_fd=pfd, follow_symlinks=False)
            os.chmod(name, rec["mode"], dir_fd=pfd)   # (mknod applied the umask; chown cleared set-id bits)
            os.utime(name, ns=(rec["mtime_ns"], rec["mtime_ns"]), dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)


def archive_dir(dir_fd: int, out_path: str, exclude: list[str] = (), flags: list | None = None) -> dict:
    """Archive one directory tree (on a mount that cannot be cloned) as member sb-0, leaving out
    the subtrees `exclude` (paths relative to it, archived elsewhere); size and sha256. The inode
    attributes tar keeps none of go into `flags` ({"path" beneath it, "flags"}: dir_flags)."""
    if flags is not None:
        flags.extend(dir_flags(dir_fd, exclude))
    skip = [f"--exclude=./{rel}" for rel in exclude]
    cmd = [_tar(), "-C", f"/proc/self/fd/{dir_fd}", "--sparse", "--one-file-system", *_COMMON,
           *(["--anchored", "--no-wildcards", *skip] if skip else []), "-cf", out_path,
           "--transform=s,^\\.,sb-0,", "."]
    code, _, err = run(cmd, pass_fds=(dir_fd,))
    if code not in (0, 1):
        raise OSError(f"archiving files failed: {_last_line(_text(err), 'tar failed')}")
    return digest_path(out_path)


def dir_flags(dir_fd: int, exclude=()) -> list[dict]:
    """[{"path" beneath directory `dir_fd`, "flags"}] of its directories and regular files with an
    attribute of INODE_FLAGS (as inode_flags walks a member), but the subtrees `exclude` (paths
    relative to it) and other filesystems mounted beneath it."""
    skip = {"/" + rel.strip("/") for rel in exclude}
    return [rec for _, rec in inode_flags(dir_fd, ["."]) if not any(rec["path"] == x or rec["path"].startswith(x + "/")
                                                                   for x in skip)]


def digest_fd(fd: int) -> dict:
    """{"size", "sha256"} of the file open on fd (read from the start)."""
    return _digest(fd, ())[0]


# The pax keywords GNU tar reads under --xattrs and --acls hold one of these: SCHILY.xattr.NAME
# (LIBARCHIVE.xattr.NAME for newer tars), SCHILY.acl.access, .default, .ace. An archive none of
# whose bytes do extracts the same without those options, which cost tar a setxattr and a
# removexattr a file: about a third of its CPU. File data that holds one only keeps the options.
XATTR_WORDS = (b"xattr.", b".acl.")


def _digest(fd: int, words, chunk: int = 1 << 20) -> tuple[dict, bool]:
    """digest_fd's answer, and whether any of `words` (bytes) occurs in the file, found in the
    same pass (also across the edges of the `chunk`-sized reads)."""
    h = _sha256(os.fstat(fd).st_size)
    size = 0
    found = False
    edge = max(map(len, words), default=1) - 1
    tail = b""
    os.lseek(fd, 0, os.SEEK_SET)
    while data := os.read(fd, chunk):
        h.update(data)
        size += len(data)
        if not found and words:
            seam = tail + data[:edge]
            found = any(w in data or w in seam for w in words)
            tail = (tail + data[-edge:])[-edge:] if edge else b""
    return {"size": size, "sha256": h.hexdigest()}, found


def digest_path(path: str) -> dict:
    """{"size", "sha256"} of a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_fd(fd)
    finally:
        os.close(fd)


_MKDIRS_RESOLVE = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS


def mkdirs_beneath(base_fd: int, path: str, resolve: int = _MKDIRS_RESOLVE) -> int:
    """mkdir -p `path` (absolute, inside the tree at base_fd) without leaving it; an O_PATH fd
    on the last directory (base_fd itself for "/"), each component opened under `resolve`
    (RESOLVE_* flags: beneath, no symlinks by default). Existing directories are kept."""
    if path == "/":
        return base_fd
    cur = base_fd   # not a dup: the restorer makes a few thousand mount points this way at 10k mounts
    for part in path.strip("/").split("/"):
        try:
            os.mkdir(part, 0o755, dir_fd=cur)
        except FileExistsError:
            pass
        try:
            nxt = kernel.openat2(cur, part, os.O_PATH | os.O_DIRECTORY, resolve)
        finally:
            if cur != base_fd:
                os.close(cur)
        cur = nxt
    return cur


# Device nodes restore makes by default: the character devices every container gets
# (null, zero, full, random, urandom, tty, ptmx; the OCI runtime spec's list). Not the console
# (5:1): the host's own (a serial line, a VT); a container's /dev/console is a pty bound there.
CONTAINER_DEVICES = frozenset({(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)})
# overlayfs's whiteout: char 0:0 names no device (opening it fails with ENXIO) and every overlay
# upper layer that hides a lower file holds one, so every policy lets it through.
WHITEOUT = (0, 0)
DEVICE_POLICIES = ("container", "all", "none")
_device_policy = "container"


def _mkdirs_child(base_fd: int, path: str, ids: tuple[int, int], chan: channel.Channel) -> None:
    kernel.fs_ids_keeping_caps(*ids)
    chan.send(("ok", None), [mkdirs_beneath(base_fd, path)])


def mkdirs_beneath_as(base_fd: int, path: str, ids: tuple[int, int] | None) -> int:
    """mkdirs_beneath, making directories as `ids` (uid, gid) when given: a superblock a user
    namespace owns takes new files only from ids it maps."""
    if ids is None or path == "/":
        return mkdirs_beneath(base_fd, path)
    return channel.call_in_child(_mkdirs_child, base_fd, path, ids)[1][0]


def set_device_policy(policy: str) -> None:
    """Which device nodes archives may hold (restore --devices): "container" (CONTAINER_DEVICES),
    "all" (whatever the image has: only for images you trust) or "none"."""
    global _device_policy
    if policy not in DEVICE_POLICIES:
        raise ValueError(f"--devices {policy!r}: expected one of {', '.join(DEVICE_POLICIES)}")
    _device_policy = policy


def _c_unquote(text: str, start: int) -> tuple[str, int]:
    """The C-quoted string (tar --quoting-style=c) starting at text[start] == '"', and the index after it."""
    end = text.find('"', start + 1)
    if end > 0 and "\\" not in text[start + 1:end]:  # the usual name: nothing escaped
        return text[start + 1:end], end + 1
    i = start + 1
    simple = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "b": "\b", "\\": "\\",
              '"': '"', "?": "?", "'": "'"}
    raw = bytearray()
    while i < len(text):
        c = text[i]
        if c == '"':
            return raw.decode("utf-8", "surrogateescape"), i + 1
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n in "01234567":
                j = i + 1
                while j < len(text) and j < i + 4 and text[j] in "01234567":
                    j += 1
                raw.append(int(text[i + 1:j], 8) & 0xFF)
                i = j
                continue
            raw.extend(simple.get(n, n).encode("utf-8", "surrogateescape"))
            i += 2
            continue
        raw.extend(c.encode("utf-8", "surrogateescape"))
        i += 1
    raise ValueError("unterminated name")


def _member_ok(member: str, allowed: set[str]) -> bool:
    parts = member.split("/")
    return not (member.startswith("/") or ".." in parts or parts[0] not in allowed)


_LIST = ["-tvf", "-", "--quoting-style=c", "--numeric-owner"]


def check_members(archive_fd: int, name: str, allowed: set[str], listed: tuple | None = None) -> None:
    """Refuse an archive whose members could reach outside the superblocks it fills: absolute names,
    `..`, a top-level name not in `allowed`, a path through a member that is a symlink, a hard
    link to outside, or a device node the device policy does not allow (see IMAGE.md).
    `listed`: (status, stdout, stderr) of tar's listing of that archive, made already (ReadAhead).
    Without it, a small archive whose headers engine.tarlist reads all of is listed from them;
    any other gets tar's listing."""
    found = None
    if listed is None:
        found = tarlist.members(archive_fd, os.fstat(archive_fd).st_size)
    if found is None:
        if listed is None:
            os.lseek(archive_fd, 0, os.SEEK_SET)
            listed = run([_tar(), *_LIST], stdin=archive_fd)
        found = _listing(listed, name)
    _check_listed(found, name, allowed)


def _listing(listed: tuple, name: str) -> list[tuple]:
    """tar -tv's listing `listed` (status, stdout, stderr) as [(kind, member, hard link target, device)]."""
    code, out, err = listed
    if code != 0:
        raise OSError(f"archive {name} is damaged: {_last_line(err.decode(errors='replace'), 'unreadable')}")
    found = []
    for line in _text(out).split("\n"):
        if not line:
            continue
        q = line.find(' "')
        try:
            member, end = _c_unquote(line, q + 1)
        except ValueError:
            q = -1
        if q < 0:
            raise OSError(f"archive {name}: cannot read its listing line {line[:80]!r}")
        kind, target, dev = line[0], None, None
        if kind == "h":
            target, _ = _c_unquote(line, line.index('"', line.index(" link to ", end) + 8))
        elif kind in "cb":
            major, _, minor = line[:q].split()[2].partition(",")
            dev = (int(major), int(minor))
        found.append((kind, member, target, dev))
    return found


def _check_listed(found: list[tuple], name: str, allowed: set[str]) -> None:
    """check_members' checks of the members `found` ([(kind, member, hard link target, device)])."""
    symlinks: set[str] = set()
    for kind, member, target, dev in found:
        member = member.rstrip("/") or member
        parts = member.split("/")
        if member[0] == "/" or ".." in parts or parts[0] not in allowed:
            raise OSError(f"archive {name} has an unsafe member {member!r}")
        if symlinks:
            for k in range(1, len(parts)):
                if "/".join(parts[:k]) in symlinks:
                    raise OSError(f"archive {name}: member {member!r} lies beneath a symlink of the archive")
        if kind == "l":
            symlinks.add(member)
        elif kind == "h":
            if not _member_ok(target.rstrip("/"), allowed):
                raise OSError(f"archive {name}: member {member!r} is a hard link to {target!r}, outside the archive")
        elif kind in "cb":
            if kind == "c" and dev == WHITEOUT:
                continue
            if _device_policy == "none" or (_device_policy == "container" and (kind != "c" or dev not in
                                                                               CONTAINER_DEVICES)):
                raise OSError(f"archive {name}: member {member!r} is a {'character' if kind == 'c' else 'block'} "
                              f"device {dev[0]}:{dev[1]}, which the device policy ({_device_policy}) refuses; "
                              "restore --devices all trusts the image's device nodes")


def _extract_child(targets: list[tuple[int, str]], archive_fd: int, name: str, expect: dict,
                   ids: tuple[int, int] | None, ahead: tuple | None, chan: channel.Channel) -> None:
    # The caller's other fds (the filler holds a superblock's each: thousands at 10,000 mounts, still
    # its own too) go at once, with a few close_range calls: else each tar spawn (run) closes them
    # one by one, two syscalls each (glibc asks for the fd limit at every close action).
    listing = () if ahead is None else (ahead[4],)
    kernel.close_fds_except({0, 1, 2, archive_fd, chan.fileno(), *listing, *(fd for fd, _ in targets)})
    _check_and_extract(targets, archive_fd, name, expect, ids, ahead)
    chan.send(("ok", None))


def _checked(archive_fd: int, name: str, expect: dict, allowed: set[str], ahead: tuple | None) -> bool:
    """Refuse the archive unless its size and sha256 are the manifest's and its members pass
    check_members; return whether it may hold xattr or ACL records (XATTR_WORDS)."""
    # The size first: only a manifest's own big archives are hashed by OpenSSL (restore loads it
    # for them, tools), and one that lies about its size is refused without reading it.
    got, xattrs = {"size": os.fstat(archive_fd).st_size, "sha256": "(not read)"}, True
    if ahead is not None:
        got, xattrs = ahead[0], ahead[1]
    elif got["size"] == expect.get("size"):
        got, xattrs = _digest(archive_fd, XATTR_WORDS)
    if got != {"size": expect.get("size"), "sha256": expect.get("sha256")}:
        raise OSError(f"archive {name} is damaged: size {got['size']}, sha256 {got['sha256'][:16]}... "
                      f"do not match the manifest ({expect.get('size')}, {str(expect.get('sha256'))[:16]}...)")
    listed = None if ahead is None else (ahead[2], read_from_start(ahead[4]), ahead[3])
    check_members(archive_fd, name, allowed, listed)
    return xattrs


def _check_and_extract(targets: list[tuple[int, str]], archive_fd: int, name: str, expect: dict,
                       ids: tuple[int, int] | None, ahead: tuple | None, clone: bool = False) -> None:
    """The extraction itself, in a process that stays in a private mount namespace (_staging) and,
    with `ids`, takes them for good: the checks, the staging, tar -x. The targets' fds are closed;
    with `clone`, they are the caller's directories, cloned one at a time, and stay open."""
    try:
        xattrs = _checked(archive_fd, name, expect, {m for _, m in targets}, ahead)
        staging = _staging(targets, clone)
    finally:
        for fd, _ in () if clone else targets:
            os.close(fd)   # (attached in staging now: tar's spawn has one close action fewer each)
    try:
        os.lseek(archive_fd, 0, os.SEEK_SET)
        # (No xattr or ACL in the archive, checked above: the files of the new superblock have none
        # either, so the options would only set ACLs equal to each file's mode and remove none.)
        # No --delay-directory-restore: dump's archives list each directory's members right after
        # it (one `tar -c`), so tar sets a directory's times and mode as it leaves it; the option
        # kept them all to the end, ~25% of tar's CPU (53 -> 40 ms for 1,800 superblocks' files),
        # on the filler's path. Every file's and directory's mode, owner and mtime of a restored
        # 1,000- and 10,000-mount tree came out the same either way (benchmarks/HISTORY.md, session 19).
        cmd = [_tar(), "-C", f"/proc/self/fd/{staging}", "-xpf", "-", *(_COMMON if xattrs else _PLAIN),
               "--same-owner"]
        if ids is not None:
            # tar runs as them, keeping root's file capabilities; so does this helper, which only
            # waits for it now. (The change of ids cleared our parent-death signal: set again.)
            kernel.become_ids_keeping_caps(*ids)
            kernel.set_pdeathsig(signal.SIGKILL)
        # LC_ALL=C as at dump (_archive_child): tar loads no locale (~30 opens and ~20 page faults
        # of a small restore's), and a pax name is never converted to the user's charset (dump
        # wrote its bytes in the C locale; the same names and xattrs either way in C and C.UTF-8).
        code, _, err = run(cmd, stdin=archive_fd, pass_fds=(staging,), env={**os.environ, "LC_ALL": "C"})
    finally:
        os.close(staging)
    if code != 0:
        raise OSError(f"extracting {name} failed: {_last_line(_text(err), 'tar failed')}")


def extract(archive_fd: int, name: str, expect: dict, targets: list[tuple[int, str]],
            ids: tuple[int, int] | None = None, ahead: tuple | None = None, here: bool = False) -> None:
    """Check the archive against `expect` (size, sha256) and its members, then extract each member
    into the directory behind its fd (`targets`: (O_PATH fd of a directory, member name)), in a
    helper; nothing is extracted from an archive that fails a check. `ids`: (uid, gid) tar creates
    files as (keeping root's file capabilities), for superblocks a user namespace owns. `ahead`:
    what ReadAhead.result read from `archive_fd` already (the checks then use it). `here`: the
    caller may stay in a private mount namespace from now on, where the staged mounts stay until
    it exits (the filler: it only makes detached superblocks and extracts); without `ids` the
    archive is then extracted in this process, not a forked child (10,000 mounts: four children's
    forks and exits, ~10-25 ms each, off the filler's path, which the restorer waits for)."""
    if here and ids is None:
        # Each directory cloned as it is staged, after the checks: the fds of one archive's
        # superblocks (dump puts up to 500 in one) are not all doubled at once.
        _check_and_extract(targets, archive_fd, name, expect, ids, ahead, clone=True)
        return
    clones = []
    try:
        for dir_fd, member in targets:
            clones.append((kernel.open_tree(dir_fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH), member))
        channel.call_in_child(_extract_child, clones, archive_fd, name, expect, ids, ahead)
    finally:
        for fd, _ in clones:
            os.close(fd)


# Archives read ahead up to this size only: before the manifest is checked nothing says a file is
# one of its archives, nor how big (a huge one waits for the usual check, after the size comparison).
AHEAD_MAX = 64 << 20
_AHEAD_FILES = 64   # fds held by `mntcr restore` (more archives: the others get the usual checks)
# Nor when all of them are smaller than this: a small tree's few KiB are hashed and listed in ~2 ms,
# less than the helper's fork and page faults cost (benchmarks/fixed_cost.py: 1 fork and ~1,400 page
# faults more for basic/tmpfs).
AHEAD_MIN = 256 << 10


class ReadAhead:
    """The image's archives, read by a helper while `mntcr restore` loads and checks the manifest
    on one core: each one's size and sha256, whether it holds xattr or ACL records (XATTR_WORDS)
    and tar's listing. The extraction children use them instead of reading each archive twice more
    on the filler's path, once the manifest's sizes and hashes are compared with them; they come
    from the very fd the filler extracts from. An archive not read ahead (too big, not a regular
    file, all of them too small together, the helper failed) gets the usual checks."""

    def __init__(self, images_dir: str):
        """Open the archives in `images_dir` and start the helper."""
        self.fds: dict[str, int] = {}
        self.results: dict[str, tuple] = {}
        self.pending: channel.Pending | None = None
        self.parent = os.getpid()   # the helper's: the filler that reads its answers cannot reap it
        dir_fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            names = sorted(filter(image.ARCHIVE_NAME.match, os.listdir(dir_fd)), key=dump_order)[:_AHEAD_FILES]
        except OSError:
            names = []
        total = 0
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                continue
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= AHEAD_MAX:
                os.set_blocking(fd, True)   # (O_NONBLOCK only kept a FIFO's open from waiting)
                self.fds[name] = fd
                total += st.st_size
            else:
                os.close(fd)
        os.close(dir_fd)
        if total < AHEAD_MIN:
            self.close()    # (small: reading them in the extraction children costs less than a helper)
        if self.fds:
            self.pending = channel.spawn(_read_ahead, list(self.fds.items()))

    def take_fd(self, name: str) -> int | None:
        """The fd archive `name` was read ahead from (the caller owns it), or None."""
        return self.fds.pop(name, None)

    def result(self, name: str) -> tuple | None:
        """What the helper read of archive `name`: (size/sha256, holds xattr words, tar -t's status,
        its stderr, an fd on its stdout); waits for it. None if it did not read it, or failed."""
        while name not in self.results and self.pending is not None:
            try:
                msg, fds = self.pending.recv()
            except OSError:
                msg, fds = ("ok", None), ()
            if msg[0] == "ok":
                self._end()
                break
            self.results[msg[1]] = (*msg[2:], fds[0])
        return self.results.pop(name, None)

    def _end(self) -> None:
        if self.pending is not None:
            if os.getpid() == self.parent:
                # Killed, not waited for: a restore that failed must not wait for files of an image it
                # refused to be hashed (it only reads; done already, it is a zombie the kill leaves).
                os.kill(self.pending.pid, signal.SIGKILL)
                self.pending.reap()
            else:
                self.pending.chan.close()
            self.pending = None

    def close(self) -> None:
        """Close the fds not taken and the listings not used; end the helper (its parent kills and
        reaps it, another process closes its end of the channel)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        for r in self.results.values():
            os.close(r[4])
        self.results.clear()
        self._end()


def dump_order(name: str) -> tuple[int, str]:
    """Archive names (files-N.tar) by N: the order dump wrote them in, and the filler extracts them in."""
    return len(name), name


def _read_ahead(items: list[tuple[str, int]], chan: channel.Channel) -> None:
    for name, fd in items:
        got, xattrs = _digest(fd, XATTR_WORDS)
        out = os.memfd_create("listing", os.MFD_CLOEXEC)
        os.lseek(fd, 0, os.SEEK_SET)
        code, _, err = run([_tar(), *_LIST], stdin=fd, stdout=out)
        chan.send(("read", name, got, xattrs, code, err), [out])
        os.close(out)
    chan.send(("ok", None))


def find_inode(root_fd: int, ino: int) -> str | None:
    """Path (from root_fd) of the regular file with inode `ino`, searching one filesystem."""
    top = f"/proc/self/fd/{root_fd}"
    dev = os.stat(top).st_dev
    for dirpath, dirnames, filenames in os.walk(top):
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            if st.st_ino == ino and st.st_dev == dev and stat.S_ISREG(st.st_mode):
                return "/" + os.path.relpath(os.path.join(dirpath, f), top)
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
    return None
