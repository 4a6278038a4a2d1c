"""A process's THP-disable bit: prctl(PR_SET_THP_DISABLE), which keeps transparent huge pages
off its memory.

Databases and runtimes set it (Redis' advice, systemd's MemoryTHP=, a wrapper that prctl()s
before it execs: fork inherits it and execve keeps it); a stand-in forked by the restorer had
the restorer's, so the restored tree lost it silently. Dump reads it from /proc/PID/status
(THP_enabled: 0); only a process sets its own, so its stand-in takes it as it detaches.
The bit's "except advised" variant (PR_THP_DISABLE_EXCEPT_ADVISED, 6.18) shows as enabled
there and is not read: nothing outside the process tells it.
"""

from __future__ import annotations

import ctypes
import os

_PR_SET_THP_DISABLE = 41
_libc = ctypes.CDLL(None, use_errno=True)


def read(pid: int, status: dict[str, str] | None = None) -> dict:
    """{"thp_disable": True} when `pid` has THP disabled (nothing on a kernel without the field);
    from `status` (kernel.read_process_status's) when given."""
    if status is None:
        from engine import kernel
        status = kernel.proc_status(pid, {"THP_enabled"})
    got = status.get("THP_enabled", "").strip()
    return {"thp_disable": True} if got == "0" else {}


def take() -> None:
    """Disable THP for the calling process (and the children it forks, the programs it execs)."""
    if _libc.prctl(_PR_SET_THP_DISABLE, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_THP_DISABLE): {os.strerror(e)}")
