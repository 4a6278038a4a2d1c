"""A process's audit login uid (/proc/PID/loginuid): the user whose login session it belongs to.

pam_loginuid sets it for sshd, login and cron sessions; every process of the session inherits
it, containers started from a user's shell too; the audit log names it as "auid". A stand-in
had the restorer's (unset, 4294967295, for a restore run by a service): audit records of the
restored tree named nobody. Kept when it differs from the dumper's; the stand-in sets its own
(only a process writes its own, with CAP_AUDIT_CONTROL) through an fd the restorer opened on it,
before it takes its ids. The session id the kernel gives with it is a new one (the kernel hands
them out; none is set). Refused before the stop: a value a process like the restorer may not
take (a kernel or audit rule making the login uid immutable once set), probed in a child.
"""

from __future__ import annotations

import errno
import os

UNSET = 4294967295


class LoginuidError(OSError):
    """A login uid restore could not give back (a one-line reason)."""


def value(pid) -> int | None:
    """`pid`'s login uid, None where the kernel has no audit support."""
    try:
        with open(f"/proc/{pid}/loginuid") as f:
            return int(f.read())
    except FileNotFoundError:
        return None


def read(pid: int) -> int | None:
    """`pid`'s login uid when it differs from ours (what a stand-in would have), else None."""
    got = value(pid)
    return got if got is not None and got != value("self") else None


def precheck(pids: list[int]) -> None:
    """Refuse (LoginuidError) login uids a process like us could not take (probed in a child)."""
    from engine import forkrun
    tried: set[int] = set()
    for pid in pids:
        try:
            want = read(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if want is None or want in tried:
            continue
        tried.add(want)
        try:
            forkrun.run(take, want)
        except OSError as e:
            raise LoginuidError(e.errno or errno.EPERM, f"process {pid} has login uid {want}, which a restore run from "
                                                        f"here could not take ({e.strerror or e}): run dump and "
                                                        "restore from a process whose login uid is unset (a "
                                                        "system service), as root") from None


def take(want: int, fd: int | None = None) -> None:
    """Set our own login uid to `want` (through `fd`, opened on our /proc/PID/loginuid for
    writing, when given)."""
    own = fd is None
    if own:
        fd = os.open("/proc/self/loginuid", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(want).encode())
    except OSError as e:
        raise OSError(e.errno, f"its login uid {want}: {e.strerror}") from None
    finally:
        if own:
            os.close(fd)
