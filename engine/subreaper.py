"""The child subreaper flag (prctl PR_SET_CHILD_SUBREAPER): `tini -s`, catatonit not running as
pid 1, systemd --user, container shims (conmon). Orphans of its descendants are
reparented to it instead of to its pid namespace's init; a restored process that lost it leaves
later orphans to pid 1 (and a `tini -s` no longer reaps them).

Only the process itself can read it (PR_GET_CHILD_SUBREAPER; /proc shows nothing), so dump asks
it there (engine/inject.py: one prctl run in the stopped process, as CRIU's parasite asks), and
only for a process with children in the tree: a stand-in never forks, so the flag of a childless
one is never seen. A process whose seccomp filters would not let that prctl run (a kill, a trap,
an errno; engine/seccomp_eval.py) is refused with the reason, never sent the call. Restore sets it
in the stand-in as it detaches (engine/standin.py `op_detach`). Asked on x86-64 only (`asked`:
elsewhere not kept, as before).
"""

from __future__ import annotations

import errno

from engine import inject, seccomp, seccomp_eval
from engine.inject import InjectError
from engine import procstat

_NR_PRCTL = 157
_PR_GET_CHILD_SUBREAPER = 37
CALLS = [(_NR_PRCTL, (_PR_GET_CHILD_SUBREAPER, None), 1)]


class SubreaperError(OSError):
    """The flag of a process could not be read (one line naming it and what to do)."""


def precheck(pids: list[int], read: dict | None = None) -> None:
    """Refuse, on the running tree, a parent whose flag could not be asked once it is stopped:
    seccomp filters that would not let the call run (`read`: those engine/seccomp.py
    `precheck_filters` read already, by pid; others are read here: a seize and an interrupt, as
    dump's own)."""
    if not inject.SUPPORTED:
        return   # (not asked there: `asked`)
    parents = set()
    for pid in pids:
        try:
            parents.add(int(procstat.fields(pid)[procstat.PPID]))
        except OSError:
            continue   # (gone meanwhile: dump tells)
    for pid in sorted(parents & set(pids)):
        try:
            filtered = seccomp.mode(pid) == seccomp.MODE_FILTER
        except FileNotFoundError:
            continue
        if filtered:
            _allowed(pid, read[pid] if read is not None and pid in read else seccomp.read(pid))


def _allowed(pid: int, filters: list | None) -> None:
    """Raise unless prctl(PR_GET_CHILD_SUBREAPER) may run in `pid` (`filters`: its seccomp
    filters)."""
    # (the filter sees the call's address: any; the scratch pointer: its stack pointer)
    if filters and not seccomp_eval.call_allowed(filters, _NR_PRCTL, (_PR_GET_CHILD_SUBREAPER, 0), 0):
        raise SubreaperError(errno.EPERM, f"process {pid} has children and seccomp filters that do not let it "
                                          "answer prctl(PR_GET_CHILD_SUBREAPER): its child subreaper flag cannot be read")


def asked() -> bool:
    """Whether dump asks the flag here: on x86-64 only (engine/inject.py). Elsewhere it is not
    kept (as before it was read at all), rather than refusing every tree with a parent."""
    return inject.SUPPORTED


def read(pid: int, filters: list | None = None, got=None) -> bool:
    """Whether `pid` (we may trace it; stopped or running: left as it was) is a child subreaper;
    `filters`: its seccomp filters as engine/seccomp.py reads them (read here when None); `got`:
    the answers of CALLS made in it (engine/inject.py `calls`, with skip_denied) or the OSError
    that made them fail (asked here when None)."""
    if filters is None and seccomp.mode(pid) == seccomp.MODE_FILTER:
        filters = seccomp.read(pid)
    _allowed(pid, filters)
    try:
        if got is None:
            got = inject.calls(pid, CALLS, filters or [])
        if isinstance(got, OSError):
            raise got
        if got[0] is None:   # (a filter that sees what `_allowed` does not: the real scratch address)
            raise InjectError(errno.EPERM, "seccomp filters do not let it make the call")
        answer, words = got[0]
    except OSError as e:
        # (only where ptrace itself was refused: a D wait, a tracer, filters, 32-bit code are no
        # matter of privilege)
        ptrace_refused = e.errno == errno.EPERM and "ptrace" in str(e.strerror)
        hint = ": dump as root, with CAP_SYS_PTRACE" if ptrace_refused else ""
        raise SubreaperError(e.errno or errno.EIO, f"process {pid}: its child subreaper flag cannot be read "
                                                   f"({e.strerror}){hint}") from None
    if answer < 0:
        raise SubreaperError(-answer, f"process {pid}: prctl(PR_GET_CHILD_SUBREAPER) failed in it "
                                      f"({errno.errorcode.get(-answer, -answer)})")
    return bool(words[0] & 0xFFFFFFFF)

