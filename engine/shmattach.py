"""System V shared memory segments a process has attached (shmat), attached again by its stand-in.

The segments themselves belong to the ipc namespace (engine/sysvipc.py, made again with their ids
and contents); what belongs to the process is its attachments. A segment's nattch counts them
(one per mapping of it: a shmat, or a copy inherited through fork), and programs read it: a
PostgreSQL postmaster started on a data directory refuses while the segment named in its
postmaster.pid is still attached (PGSharedMemoryIsInUse), which is what keeps a second server off
the files of a running one. So a stand-in attaches each segment its process attached, as many
times, read-only where the process mapped it so; addresses and what the process wrote there since
are memory, not restored (the segment's contents are the namespace's).

Dump reads /proc/PID/maps: a SysV mapping shows `/SYSV<key> (deleted)` with the segment's id as
its inode, on the kernel's internal shm mount (engine/mappings.py `kernel_memory`). Only segments
the image holds count (one removed while attached, IPC_RMID, is not made again: its attachments
are left out with it).

Image, per process: "shm": [[shmid, read_only], ...], one item per mapping.
"""

from __future__ import annotations

import ctypes
import errno
import os
from engine import rx

MAX_ATTACHMENTS = 4096   # per process (the kernel's SHMMNI-bounded shm_nattch is per segment)

_SHM_RDONLY = 0o10000
_SYSV = rx.compile(r"/SYSV[0-9a-f]{8} \(deleted\)\Z")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)

_ATTACHED: list[int] = []   # addresses a stand-in attached (kept for its life)


def read(pid: int, segments: set[int]) -> list[list]:
    """The attachments of process `pid` ([shmid, read_only] per mapping) of the segments
    `segments` (ids of its ipc namespace's, as dumped), in the order of its maps."""
    from engine import kernel, mappings
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not _SYSV.match(parts[5]) or int(parts[4]) not in segments:
            continue
        lo, hi = parts[0].split("-")
        link = f"/proc/{pid}/map_files/{int(lo, 16):x}-{int(hi, 16):x}"
        try:
            mnt = kernel.statx_mnt_id(link)
        except OSError:
            continue
        if mappings.kernel_memory(mnt, link):   # (not a file of that name on a mount of the tree)
            out.append([int(parts[4]), "w" not in parts[1]])
    return out


def check(value, segments: set[int]) -> str | None:
    """The validator's rule for a process's "shm": at most MAX_ATTACHMENTS [shmid, read_only]
    pairs, each of a segment of the process's ipc namespace the image holds (`segments`)."""
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        return f"must be a list of at most {MAX_ATTACHMENTS} attachments"
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int
                or type(item[1]) is not bool):
            return "each attachment must be [segment id, read-only flag]"
        if item[0] not in segments:
            return f"segment {item[0]} is not a System V segment of the process's ipc namespace in the image"
    return None


def _shmat(shmid: int, read_only: bool) -> int:
    addr = _libc.shmat(shmid, None, _SHM_RDONLY if read_only else 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, f"shmat of System V segment {shmid}: {os.strerror(err)}")
    return addr


def attach(items: list, ids: tuple[int, int] | None) -> None:
    """In a stand-in, in its ipc namespace: shmat each segment, read-only where it was; kept.

    A stand-in that is its user namespace's root holds no CAP_IPC_OWNER over an ipc namespace an
    ancestor user namespace owns (a rootless container that kept the host's): there it attaches as
    the process did, with its effective `ids` (uid, gid) for the call, then takes its own back."""
    for shmid, read_only in items:
        try:
            addr = _shmat(shmid, read_only)
        except OSError as e:
            if e.errno != errno.EACCES or ids is None:
                raise
            euid, egid = os.geteuid(), os.getegid()
            os.setresgid(-1, ids[1], -1)
            try:
                os.setresuid(-1, ids[0], -1)
                try:
                    addr = _shmat(shmid, read_only)
                finally:
                    os.setresuid(-1, euid, -1)   # (back to root: its effective capabilities too)
            finally:
                os.setresgid(-1, egid, -1)
        _ATTACHED.append(addr)
