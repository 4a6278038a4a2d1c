"""Ghosts: unlinked files and directories that only a mount or an open file still reaches.

systemd-nspawn binds a temporary file (boot_id, a kmsg fifo) into the container
and deletes it; CRIU's mntns_deleted binds a directory and removes it; a
process keeps a file open after unlinking it (mntns_ghost). mountinfo then
shows the mount's root as `/f//deleted`, /proc/PID/fd/N as `/f (deleted)`.

Like CRIU's ghost files: dump archives the object alone (through a clone of
the mount, or through /proc/PID/fd/N), one archive per ghost; restore
recreates it under its old name on the same superblock, opens what needs it
(an O_PATH fd for the open files) or mounts from it, and unlinks it again, so
the restored mount roots and fds show the same `deleted` paths. The kernel
attaches no mount whose root is already unlinked (ENOENT), so a ghost that
mounts are made from stays linked until they are all attached. A name that
was reused after the deletion is moved aside for that moment. A deleted
directory is always empty (nothing can be created in it).

A deleted FIFO held open (CRIU's fifo-ghost) is a ghost too: tar archives the
node, the fifo kind reopens it and puts its buffered data back.

CRIU's link-remap: a file open under several unlinked names (hard links, each
reached through its own mount: mntns_link_remap) gets all of them back while
the fds are reopened (`links`); an fd on a deleted name of a file that still
has another name archives nothing of its own: dump finds that name while it
archives the superblock, restore links it at the deleted name (`linked`).

Image: `ghosts` = {id: {sb, path (in the superblock), file, member, only |
linked, links?}}; a mount entry with `ghost` has the ghost's path as its root;
an fd entry with `ghost` opens it (its `mnt` and `path` say where it was).
"""

from __future__ import annotations

import errno
import os
import stat

from engine import content, kernel
from engine.image import rel_to

DELETED_ROOT = "//deleted"     # mountinfo's root of an unlinked dentry (dentry_path)
_BENEATH = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS


class GhostError(OSError):
    """A deleted file or mount root that cannot be dumped or recreated (one line)."""


def split_root(root: str) -> tuple[str, bool]:
    """(root without the `//deleted` suffix, whether it was deleted)."""
    if root.endswith(DELETED_ROOT) and len(root) > len(DELETED_ROOT):
        return root[: -len(DELETED_ROOT)], True
    return root, False


def sb_path(m_root: str, mountpoint: str, path: str) -> str:
    """The path in its superblock of `path` (of the namespace) beneath a mount at `mountpoint` whose
    root is `m_root` (mountinfo's, maybe with its `//deleted` suffix)."""
    m_root = split_root(m_root)[0]
    rel = rel_to(path, mountpoint)
    return m_root if not rel else (("" if m_root == "/" else m_root) + "/" + rel)


# --- dump -------------------------------------------------------------------------------------

def _sed_replacement(text: str) -> str:
    return text.replace("\\", "\\\\").replace("&", "\\&").replace(",", "\\,")


def archive_link(proc_dir: str, entry: str, path: str, out_path: str, pass_fds=()) -> dict:
    """Archive the unlinked object behind the magic link `proc_dir/entry` (/proc/PID/fd/N, or
    /proc/self/fd/N of a mount clone in `pass_fds`) alone, as member sb-0 under the name it had
    (`path`'s last part); size and sha256. A symlink (an O_PATH fd on one: CRIU's symlink01) is
    archived as a symlink of the same target, owner and times: tar would store the magic link's
    own target, the deleted path."""
    name = os.path.basename(path)
    fd = os.open(os.path.join(proc_dir, entry), os.O_PATH | os.O_CLOEXEC)   # (the symlink itself, if one)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            return _archive_symlink(os.readlink("", dir_fd=fd), st, name, out_path)
    finally:
        os.close(fd)
    return _tar(proc_dir, entry, name, out_path, ["--dereference"], pass_fds)


def _archive_symlink(target: str, st: os.stat_result, name: str, out_path: str) -> dict:
    # (made beside the archive, in the image directory dump writes, and removed again)
    tmp = out_path + ".link"
    os.mkdir(tmp, 0o700)
    link = os.path.join(tmp, "link")
    try:
        os.symlink(target, link)
        os.chown(link, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(link, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return _tar(tmp, "link", name, out_path, [], ())
    finally:
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass   # (the symlink was never made)
        os.rmdir(tmp)


def _tar(directory: str, entry: str, name: str, out_path: str, opts: list[str], pass_fds) -> dict:
    """Archive `directory/entry` as member sb-0/`name` into `out_path`; its size and sha256."""
    cmd = [content.tar(), "-C", directory, *opts, "--sparse", *content.COMMON,
           f"--transform=s,^{entry}$,sb-0/{_sed_replacement(name)},", "-cf", out_path, entry]
    import subprocess   # dump only, where archives are made: not every command's start-up
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, pass_fds=pass_fds)
    if proc.returncode not in (0, 1):
        raise GhostError(errno.EIO, f"archiving the deleted file {name} failed: "
                                    f"{content.last_line(proc.stderr, 'tar failed')}")
    return content.digest_path(out_path)


# --- restore ----------------------------------------------------------------------------------

class _Name:
    """One name a ghost gets at restore: its directory (made where missing) and what it displaced."""

    def __init__(self, base: int, path: str, tag: str):
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise GhostError(errno.EINVAL, f"ghost {path}: no name")
        self.base, self.name, self.made, self.aside, self.dir = base, parts[-1], [], None, None
        self.aside_name = f".mntcr-ghost-{os.getpid()}-{tag}-aside"
        self.dir = _walk(base, parts[:-1], self.made)

    def take(self) -> None:
        """Move whatever has the name now aside (put back by `release`)."""
        try:
            os.lstat(self.name, dir_fd=self.dir)
        except FileNotFoundError:
            return
        os.rename(self.name, self.aside_name, src_dir_fd=self.dir, dst_dir_fd=self.dir)
        self.aside = self.aside_name

    def release(self, is_dir: bool) -> None:
        """Unlink the name; put back what it displaced; remove the directories made for it."""
        if self.dir is None:
            return
        try:
            try:
                if is_dir:
                    os.rmdir(self.name, dir_fd=self.dir)
                else:
                    os.unlink(self.name, dir_fd=self.dir)
            except FileNotFoundError:
                pass   # (never made: a failure came first)
            finally:
                if self.aside is not None:
                    os.rename(self.aside, self.name, src_dir_fd=self.dir, dst_dir_fd=self.dir)
        finally:
            os.close(self.dir)
            self.dir = None
        for rel in reversed(self.made):
            try:
                os.rmdir(rel, dir_fd=self.base)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.ENOENT):
                    raise


def _walk(base: int, parts: list[str], made: list | None) -> int:
    """An O_PATH fd on directory base/parts (never leaving base's mount, no symlinks); missing
    directories are made (and listed in `made`) unless `made` is None."""
    cur = os.dup(base)
    try:
        for i, part in enumerate(parts):
            if made is not None:
                try:
                    os.mkdir(part, 0o700, dir_fd=cur)
                    made.append("/".join(parts[: i + 1]))
                except FileExistsError:
                    pass
            nxt = kernel.openat2(cur, part, os.O_PATH | os.O_DIRECTORY, _BENEATH | kernel.RESOLVE_NO_XDEV)
            os.close(cur)
            cur = nxt
    except BaseException:
        os.close(cur)
        raise
    return cur


class Ghost:
    """A ghost recreated under its old name(s) (engine/restore.py opens or clones it, then `remove`s it)."""

    def __init__(self, base: int, path: str, archive_fd: int | None, archive: str | None, expect: dict | None,
                 only: str | None, links=(), linked: str | None = None, ids: tuple[int, int] | None = None):
        """Recreate ghost `path` beneath directory fd `base` (which may be cloned: a detached mount on
        Linux >= 6.15, else a mount of the caller's namespace): from its archive, or, with `linked`,
        as a hard link of the file that still has that name (restored with its filesystem's files:
        CRIU's link-remap); then hard-link it at each of `links` too (the other unlinked names it was
        open under). Missing parent directories are made (and removed again); a file that now has
        one of the names is renamed aside (and back). `ids`: (uid, gid) tar extracts as (see
        content.extract)."""
        last = [p for p in path.split("/") if p][-1:]
        if linked is None and last != [only]:
            raise GhostError(errno.EINVAL, f"ghost {path}: its archive holds {only!r}")
        self.names: list[_Name] = []
        self.is_dir = False
        try:
            for i, p in enumerate([path, *links]):
                self.names.append(_Name(base, p, f"{abs(hash(path)) % 100000}-{i}"))
                self.names[-1].take()
            first = self.names[0]
            if linked is not None:
                lparts = [p for p in linked.split("/") if p]
                src = _walk(base, lparts[:-1], None)
                try:
                    os.link(lparts[-1], first.name, src_dir_fd=src, dst_dir_fd=first.dir, follow_symlinks=False)
                finally:
                    os.close(src)
            else:
                self._extract(first, archive_fd, archive, expect, only, ids)
            self.is_dir = stat.S_ISDIR(os.lstat(first.name, dir_fd=first.dir).st_mode)
            for n in self.names[1:]:
                if self.is_dir:
                    raise GhostError(errno.EINVAL, f"ghost {path}: a directory has one name")
                os.link(first.name, n.name, src_dir_fd=first.dir, dst_dir_fd=n.dir, follow_symlinks=False)
        except BaseException:
            self.remove()
            raise
        self.dir, self.name = first.dir, first.name

    @staticmethod
    def _extract(first: _Name, archive_fd: int, archive: str, expect: dict, only: str,
                 ids: tuple[int, int] | None = None) -> None:
        # Extracted into a private directory first: tar never meets the name's current owner.
        tmp = f".mntcr-ghost-{os.getpid()}-{abs(hash(first.aside_name)) % 100000}"
        os.mkdir(tmp, 0o700, dir_fd=first.dir)
        try:
            tfd = kernel.openat2(first.dir, tmp, os.O_PATH | os.O_DIRECTORY, _BENEATH | kernel.RESOLVE_NO_XDEV)
            try:
                content.extract(archive_fd, archive, expect, [(tfd, "sb-0")], ids)
            finally:
                os.close(tfd)
            try:
                os.rename(f"{tmp}/{only}", only, src_dir_fd=first.dir, dst_dir_fd=first.dir)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                _remake_dir(first.dir, tmp, only, e)
        finally:
            _remove_tree(first.dir, tmp)

    def remove(self) -> None:
        """Unlink every name (what was opened or mounted from it keeps it); put back what they displaced."""
        err = None
        for n in reversed(self.names):
            try:
                n.release(self.is_dir)
            except OSError as e:
                err = err or e
        self.names = []
        self.dir = None
        if err is not None:
            raise err


class Uncovered:
    """A lower layer's directory removed through an overlay (`uncover` in the image): the overlay's
    type took the whiteout of its removal out of the upper layer before the overlay was made
    (engine/fs/overlay.py), so the lower directory shows at its old name again; what is opened or
    mounted from it is that directory, and `remove` removes it through the overlay, which leaves the
    whiteout again: the same deleted directory as dumped, made by no mkdir (which an overlay of a user
    namespace without userxattr cannot mark opaque)."""

    def __init__(self, base: int, path: str):
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise GhostError(errno.EINVAL, f"ghost {path}: no name")
        self.is_dir = True
        self.names: list = []
        self.name = parts[-1]
        self.dir = _walk(base, parts[:-1], None)
        try:
            if not stat.S_ISDIR(os.lstat(self.name, dir_fd=self.dir).st_mode):
                raise GhostError(errno.ENOTDIR, f"ghost {path}: the lower layer's {path} is not a directory")
        except BaseException:
            os.close(self.dir)
            raise

    def remove(self) -> None:
        """rmdir through the overlay (the whiteout is made again); what was opened from it keeps it."""
        if self.dir is None:
            return
        try:
            os.rmdir(self.name, dir_fd=self.dir)
        except OSError as e:
            # (dump saw it empty and as held: the lower layer, often the host's files, changed since)
            raise GhostError(e.errno or errno.EIO, f"the lower layer's directory {self.name} cannot be removed "
                                                   f"through the overlay again ({e.strerror}): the lower layer "
                                                   "changed since the dump; restore it as it was") from None
        finally:
            os.close(self.dir)
            self.dir = None


def _remake_dir(dir_fd: int, tmp: str, only: str, err: OSError) -> None:
    """Directory tmp/only made again as `only` beside tmp: an overlay without redirect_dir and
    trusted xattrs (one a user namespace mounted, a rootless container's root) moves no directory
    into another merged one (EXDEV). A removed directory is empty (rmdir): mkdir, then the
    extracted one's owner, mode, times and xattrs; anything else fails with `err`."""
    src = kernel.openat2(dir_fd, f"{tmp}/{only}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                         _BENEATH | kernel.RESOLVE_NO_XDEV)
    try:
        st = os.fstat(src)
        if os.listdir(src):
            raise err
        os.mkdir(only, 0o700, dir_fd=dir_fd)
        try:
            dst = kernel.openat2(dir_fd, only, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 _BENEATH | kernel.RESOLVE_NO_XDEV)
            try:
                os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))   # (after chown, which clears set-group-id)
                for name in os.listxattr(src):
                    if not name.startswith(("trusted.overlay.", "user.overlay.")):
                        os.setxattr(dst, name, os.getxattr(src, name))
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        except BaseException:
            os.rmdir(only, dir_fd=dir_fd)
            raise
    finally:
        os.close(src)


def _remove_tree(dir_fd: int, name: str) -> None:
    """Remove `name` (an empty directory, or one a failed extraction left files in) beneath dir_fd."""
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:
        fd = kernel.openat2(dir_fd, name, os.O_RDONLY | os.O_DIRECTORY, _BENEATH | kernel.RESOLVE_NO_XDEV)
        try:
            for entry in os.listdir(fd):
                if stat.S_ISDIR(os.lstat(entry, dir_fd=fd).st_mode):
                    _remove_tree(fd, entry)
                else:
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
