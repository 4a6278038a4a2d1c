"""A process's command line and environment, as /proc/PID/cmdline and /proc/PID/environ show them.

A stand-in is a fork of the restorer: both files showed the restorer's own (`python3 -S -c ...
restore -D DIR`, and the environment mntcr was started with) in place of the container's, so
`ps`, `pgrep -f`, a supervisor's or a monitoring agent's look at the process, and a container's
`--secret type=env` or `-e VAR=...` read back through /proc, all changed with a restore. Dump reads
the bytes both files give (the tree stopped: they no longer change); the stand-in lays them out in
its own memory and points its mm's arg_start/arg_end and env_start/env_end at them with
prctl(PR_SET_MM, PR_SET_MM_MAP) as it detaches (no privilege is needed when the executable is not
changed; become_exe, which changes it, is given the same four addresses). Memory contents are not
restored: what the process itself kept of its argv and environment is not read by anyone else.

A command line a program rewrote in place (setproctitle: nginx, postgres, sshd) and whose last
byte is no longer a NUL is shown by the kernel up to its first NUL: the stand-in lays a NUL after
the bytes and ends arg_end before it, so the same bytes come back. The image keeps both as base64.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import ctypes
import os
import struct

# each of the two: what exec takes at most, whatever the stack limit (3/4 of the kernel's 8 MiB
# _STK_LIM; a quarter of the stack limit below 24 MiB: 2 MiB with the default 8 MiB). 4 MiB refused,
# after the stop, a linker's command line or an environment of 4 to 6 MiB under `ulimit -s unlimited`.
MAX_BYTES = 6 << 20
# (a detach message carries them when they are at most PIECE bytes together, else they go first in
# pieces of PIECE (engine/standin.py op_args): one seqpacket message holds what the socket's send
# buffer does, ~200 KiB by default (net.core.wmem_default), and a java -cp of 1,000 jars is more)
PIECE = 1 << 16
SENT = "sent"
_PR_SET_MM, _PR_SET_MM_MAP = 35, 14
_libc = ctypes.CDLL(None, use_errno=True)
_kept: list = []        # the laid-out buffer stays for the process's life (no Python frees it)


def _stat() -> list[bytes] | None:
    """/proc/self/stat's fields after the name, read now, while /proc is the host's: a stand-in is a
    fork of the restorer (the same code, data, brk and stack start) that chroots later."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


STAT = _stat()   # (engine/mappings.py reads its fields too: one read a process)


class ArgsError(OSError):
    """A command line or environment the image cannot keep (larger than MAX_BYTES)."""


def read(pid: int, proc: str = "/proc") -> dict:
    """{"cmdline": b64, "environ": b64} of `pid` (both always, empty for a process whose memory is
    gone as it exits); ArgsError when one is larger than an image keeps."""
    out = {}
    for name in ("cmdline", "environ"):
        try:
            with open(f"{proc}/{pid}/{name}", "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except ProcessLookupError:
            data = b""   # (exiting: dump tells once it is gone)
        except OSError as e:
            raise ArgsError(e.errno, f"process {pid}: its /proc/PID/{name} cannot be read: "
                                     f"{e.strerror or e}") from None
        if len(data) > MAX_BYTES:
            raise ArgsError(7, f"process {pid}: its /proc/PID/{name} is larger than {MAX_BYTES} bytes, "
                               "which an image does not keep")   # (E2BIG)
        out[name] = binascii.b2a_base64(data, newline=False).decode("ascii")
    return out


def decoded(p: dict) -> tuple[bytes, bytes] | None:
    """(cmdline, environ) bytes of image process `p`, None when it records neither."""
    if "cmdline" not in p and "environ" not in p:
        return None
    return binascii.a2b_base64(p.get("cmdline") or ""), binascii.a2b_base64(p.get("environ") or "")


def send(call, shown: tuple[bytes, bytes] | None):
    """What a detach request carries of (cmdline, environ) `shown`: themselves, or SENT once sent
    first in pieces with `call` (a stand-in's channel's call) when they would not fit in its message."""
    if shown is None or len(shown[0]) + len(shown[1]) <= PIECE:
        return shown
    for which, data in enumerate(shown):
        for at in range(0, len(data), PIECE):
            call(("args", which, data[at:at + PIECE]))
    return SENT


def layout(cmdline: bytes, environ: bytes) -> tuple[int, int, int, int]:
    """Lay both out in memory of ours kept for good; (arg_start, arg_end, env_start, env_end)."""
    data = cmdline + b"\0" + environ + b"\0"
    buf = ctypes.create_string_buffer(data, len(data))
    _kept.append(buf)
    start = ctypes.addressof(buf)
    # arg_end before the NUL laid after the command line: one ending in a NUL is shown to arg_end,
    # one that does not (setproctitle) up to the first NUL, counted to arg_end (env_start apart).
    return start, start + len(cmdline), start + len(cmdline) + 1, start + len(cmdline) + 1 + len(environ)


def take(cmdline: bytes, environ: bytes) -> tuple[int, int, int, int]:
    """Make `cmdline` and `environ` what /proc/self/cmdline and /proc/self/environ show, with
    PR_SET_MM_MAP and our executable unchanged; returns the four addresses (for become_exe, whose
    own PR_SET_MM_MAP gives them again)."""
    if STAT is None:
        raise OSError(38, "its command line and environment: /proc/self/stat was not read")   # (ENOSYS)
    args = layout(cmdline, environ)
    field = lambda n: int(STAT[n - 3])   # noqa: E731  (field n, 1-indexed, of /proc/PID/stat)
    _libc.sbrk.restype = ctypes.c_void_p
    brk = _libc.sbrk(0)
    mm = struct.pack("=11QQII", field(26), field(27), field(45), field(46), field(47), brk, field(28),
                     *args, 0, 0, 0xFFFFFFFF)
    buf = ctypes.create_string_buffer(mm, len(mm))
    if _libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.c_ulong(ctypes.addressof(buf)), ctypes.c_ulong(len(mm)),
                   ctypes.c_ulong(0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_MM_MAP) giving back its command line and environment: {os.strerror(e)}")
    return args
