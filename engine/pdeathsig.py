"""A process's parent-death signal (prctl PR_SET_PDEATHSIG): the signal it gets when its parent exits.

Runtimes set it on what they start (runc, crun, systemd-nspawn's helpers, `unshare --kill-child`),
and programs on their workers, so that a child dies with its parent. A stand-in clears the
restorer's as it detaches, so the restored tree lost it silently. Only a process reads its own
(PR_GET_PDEATHSIG; no /proc file shows it): `read` has the stopped process make that call
(engine/incall.py). The root's is not kept: its parent is outside the tree (the restored root's
is whoever runs restore). A process incall cannot make calls in comes back without it.
"""

from __future__ import annotations

from engine import incall

_NR_PRCTL = 157
_PR_GET_PDEATHSIG = 2


def supported() -> bool:
    """Whether `read` can read a process's signal on this machine."""
    return incall.supported()


def read(pid: int) -> int | None:
    """`pid`'s parent-death signal (0: none), read by the call made in it; None when it cannot be."""
    got = incall.calls(pid, [(_NR_PRCTL, lambda slot: (_PR_GET_PDEATHSIG, slot))])
    if not got or got[0][0] != 0:
        return None
    return int.from_bytes(got[0][1][:4], "little")
