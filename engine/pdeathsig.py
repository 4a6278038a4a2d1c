"""A process's parent-death signal (prctl PR_SET_PDEATHSIG): the signal it gets when its parent exits.

Runtimes set it on what they start (runc, crun, systemd-nspawn's helpers, `unshare --kill-child`),
and programs on their workers, so that a child dies with its parent. A stand-in clears the
restorer's as it detaches, so the restored tree lost it silently. Only a process reads its own
(PR_GET_PDEATHSIG; no /proc file shows it): `read` has the stopped process make that call
(engine/inject.py). The root's is not kept: its parent is outside the tree (the restored root's
is whoever runs restore). A process the call cannot be run in (engine/inject.py: on x86-64, not
in a D wait nor traced already, no seccomp filter that would stop the call) comes back without it.
"""

from __future__ import annotations

from engine import inject

_NR_PRCTL = 157
_PR_GET_PDEATHSIG = 2
CALLS = [(_NR_PRCTL, (_PR_GET_PDEATHSIG, None), 1)]


def supported() -> bool:
    """Whether `read` can read a process's signal on this machine."""
    return inject.SUPPORTED


def read(pid: int, got=None) -> int | None:
    """`pid`'s parent-death signal (0: none), read by the call made in it; None when it cannot be.
    `got`: the answers of CALLS made in it (engine/inject.py `calls`, with skip_denied) or the
    OSError that made them fail; asked here when None."""
    if got is None:
        try:
            got = inject.calls(pid, CALLS, skip_denied=True)
        except OSError:
            return None
    if isinstance(got, OSError) or got[0] is None or got[0][0] != 0:
        return None
    return got[0][1][0] & 0xFFFFFFFF
