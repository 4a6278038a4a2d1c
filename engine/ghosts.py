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

Image: `ghosts` = {id: {sb, path (in the superblock), file, member, only}};
a mount entry with `ghost` has the ghost's path as its root; an fd entry with
`ghost` opens it (its `mnt` and `path` say where it was).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

from engine import content, kernel

DELETED_ROOT = "//deleted"     # mountinfo's root of an unlinked dentry (dentry_path)
DELETED_FD = " (deleted)"      # /proc/PID/fd/N of an unlinked file (d_path)
_BENEATH = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS


class GhostError(OSError):
    """A deleted file or mount root that cannot be dumped or recreated (one line)."""


def split_root(root: str) -> tuple[str, bool]:
    """(root without the `//deleted` suffix, whether it was deleted)."""
    if root.endswith(DELETED_ROOT) and len(root) > len(DELETED_ROOT):
        return root[: -len(DELETED_ROOT)], True
    return root, False


# --- dump -------------------------------------------------------------------------------------

def _sed_replacement(text: str) -> str:
    return text.replace("\\", "\\\\").replace("&", "\\&").replace(",", "\\,")


def archive_link(proc_dir: str, entry: str, path: str, out_path: str, pass_fds=()) -> dict:
    """Archive the unlinked object behind the magic link `proc_dir/entry` (/proc/PID/fd/N, or
    /proc/self/fd/N of a mount clone in `pass_fds`) alone, as member sb-0 under the name it had
    (`path`'s last part); size and sha256."""
    name = os.path.basename(path)
    if "\n" in name:
        raise GhostError(errno.EOPNOTSUPP, f"{path}: a deleted file with a newline in its name")
    cmd = [content.tar(), "-C", proc_dir, "--dereference", "--sparse", *content.COMMON,
           f"--transform=s,^{entry}$,sb-0/{_sed_replacement(name)},", "-cf", out_path, entry]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, pass_fds=pass_fds)
    if proc.returncode not in (0, 1):
        raise GhostError(errno.EIO, f"archiving the deleted file {path} failed: "
                                    f"{content.last_line(proc.stderr, 'tar failed')}")
    return content.digest_path(out_path)


# --- restore ----------------------------------------------------------------------------------

class Ghost:
    """A ghost recreated under its old name (engine/restore.py opens or clones it, then `remove`s it)."""

    def __init__(self, base: int, path: str, archive_fd: int, archive: str, expect: dict, only: str):
        """Recreate ghost `path` beneath directory fd `base` (which may be cloned: a detached mount on
        Linux >= 6.15, else a mount of the caller's namespace) from its archive. Missing parent
        directories are made (and removed again); a file that now has the name is renamed aside
        (and back)."""
        parts = [p for p in path.split("/") if p]
        if not parts or parts[-1] != only:
            raise GhostError(errno.EINVAL, f"ghost {path}: its archive holds {only!r}")
        self.base, self.name, self.made, self.aside, self.dir = base, only, [], None, None
        self.tmp = f".mntcr-ghost-{os.getpid()}-{abs(hash(path)) % 100000}"
        cur = os.dup(base)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    os.mkdir(part, 0o700, dir_fd=cur)
                    self.made.append("/".join(parts[: i + 1]))
                except FileExistsError:
                    pass
                nxt = kernel.openat2(cur, part, os.O_PATH | os.O_DIRECTORY, _BENEATH | kernel.RESOLVE_NO_XDEV)
                os.close(cur)
                cur = nxt
        except BaseException:
            os.close(cur)
            raise
        self.dir = cur
        # Extracted into a private directory first: tar never meets the name's current owner.
        os.mkdir(self.tmp, 0o700, dir_fd=cur)
        try:
            tfd = kernel.openat2(cur, self.tmp, os.O_PATH | os.O_DIRECTORY, _BENEATH | kernel.RESOLVE_NO_XDEV)
            try:
                content.extract(archive_fd, archive, expect, [(tfd, "sb-0")])
            finally:
                os.close(tfd)
            try:
                os.lstat(only, dir_fd=cur)
                self.aside = f"{self.tmp}-aside"
                os.rename(only, self.aside, src_dir_fd=cur, dst_dir_fd=cur)
            except FileNotFoundError:
                pass
            os.rename(f"{self.tmp}/{only}", only, src_dir_fd=cur, dst_dir_fd=cur)
        finally:
            _remove_tree(cur, self.tmp)
        self.is_dir = stat.S_ISDIR(os.lstat(only, dir_fd=cur).st_mode)

    def remove(self) -> None:
        """Unlink it (what was opened or mounted from it keeps it); put back what it displaced."""
        if self.dir is None:
            return
        try:
            try:
                if self.is_dir:
                    os.rmdir(self.name, dir_fd=self.dir)
                else:
                    os.unlink(self.name, dir_fd=self.dir)
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
