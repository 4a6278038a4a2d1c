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
    cmd = [_tar(), "-C", f"/proc/self/fd/{mount_fd}", "--sparse", *_COMMON, "-cf", out_path, "."]
    proc = subprocess.run(cmd, pass_fds=(mount_fd,), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["tar failed"])[-1]
        raise OSError(f"archiving files failed: {err}")


def check_members(archive_path: str) -> None:
    """Refuse archives with absolute names or `..` components before extracting anything."""
    proc = subprocess.run([_tar(), "-tf", archive_path], stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        err = (proc.stderr.decode(errors="replace").strip().splitlines() or ["unreadable"])[-1]
        raise OSError(f"archive {os.path.basename(archive_path)} is damaged: {err}")
    for raw in proc.stdout.split(b"\n"):
        if not raw:
            continue
        name = raw.decode(errors="surrogateescape")
        if name.startswith("/") or ".." in name.split("/"):
            raise OSError(f"archive {os.path.basename(archive_path)} has an unsafe member {name!r}")


def extract(archive_path: str, dir_fd: int) -> None:
    """Extract `archive_path` into the directory behind `dir_fd` (owners, modes, xattrs kept)."""
    check_members(archive_path)
    cmd = [_tar(), "-C", f"/proc/self/fd/{dir_fd}", "-xpf", archive_path, *_COMMON,
           "--same-owner", "--delay-directory-restore"]
    proc = subprocess.run(cmd, pass_fds=(dir_fd,), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["tar failed"])[-1]
        raise OSError(f"extracting {os.path.basename(archive_path)} failed: {err}")
