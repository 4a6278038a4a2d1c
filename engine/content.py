"""Files of a superblock: archive them from a mount fd, extract them into one.

GNU tar keeps what a container's tmpfs can hold: modes, owners (numeric),
xattrs and ACLs, symlinks, hard links, device nodes, sparse files. It runs on
the host side with `-C /proc/self/fd/N`, N being a detached clone of the mount
with no children, so it sees exactly that mount's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess

_COMMON = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]


def _tar() -> str:
    tar = shutil.which("tar")
    if not tar:
        raise OSError("GNU tar is needed to dump and restore tmpfs contents: install the 'tar' package")
    return tar


def archive(mount_fd: int, out_path: str) -> None:
    """Write every file of the mount behind `mount_fd` into the tar archive `out_path`."""
    cmd = [_tar(), "-C", f"/proc/self/fd/{mount_fd}", "--sparse", "--one-file-system", *_COMMON, "-cf", out_path, "."]
    proc = subprocess.run(cmd, pass_fds=(mount_fd,), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["tar failed"])[-1]
        raise OSError(f"archiving files failed: {err}")


def check_members(archive_fd: int, name: str) -> None:
    """Refuse archives with absolute names or `..` components before extracting anything."""
    os.lseek(archive_fd, 0, os.SEEK_SET)
    proc = subprocess.run([_tar(), "-tf", "-"], stdin=archive_fd, capture_output=True)
    if proc.returncode != 0:
        err = (proc.stderr.decode(errors="replace").strip().splitlines() or ["unreadable"])[-1]
        raise OSError(f"archive {name} is damaged: {err}")
    for raw in proc.stdout.split(b"\n"):
        if not raw:
            continue
        member = raw.decode(errors="surrogateescape")
        if member.startswith("/") or ".." in member.split("/"):
            raise OSError(f"archive {name} has an unsafe member {member!r}")


def extract(archive_fd: int, name: str, dir_fd: int) -> None:
    """Extract the archive open on `archive_fd` into the directory behind `dir_fd`.

    Owners, modes, xattrs and ACLs are kept; members are checked first.
    """
    check_members(archive_fd, name)
    os.lseek(archive_fd, 0, os.SEEK_SET)
    cmd = [_tar(), "-C", f"/proc/self/fd/{dir_fd}", "-xpf", "-", *_COMMON,
           "--same-owner", "--delay-directory-restore"]
    proc = subprocess.run(cmd, pass_fds=(dir_fd,), stdin=archive_fd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["tar failed"])[-1]
        raise OSError(f"extracting {name} failed: {err}")
