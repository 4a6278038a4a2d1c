"""A process's scheduling attributes and per-process kernel knobs: nice, scheduling policy and
real-time priority, I/O priority, oom_score_adj, timer slack and personality.

systemd units (Nice=, CPUSchedulingPolicy=, IOSchedulingClass=, OOMScoreAdjust=, TimerSlackNSec=,
Personality=), runtimes (OCI process.oomScoreAdj, podman --oom-score-adj) and users (`nice`,
`ionice -c3`, `chrt -b`, `taskset`, `setarch -R`) set them; a stand-in forked by the restorer had the
restorer's. Dump reads them from /proc and the scheduler's calls. Restore sets them on each
stand-in from outside (`apply`: the restorer's privilege, which lowering a nice value or an
oom_score_adj needs, and a stand-in that already took a user's ids lacks), once every stand-in
exists (none forks after: no child inherits what was not its own) and before its threads are made
(they inherit them from their leader); the personality only a process sets on itself, so its
stand-in takes it when asked (`take_personality`), before its seccomp filters, which may deny it.
"""

from __future__ import annotations

import ctypes
import errno
import os

SCHED_RESET_ON_FORK = 0x40000000
SCHED_DEADLINE = 6
# (x86_64, aarch64)
_NR = {"x86_64": (252, 251), "aarch64": (31, 30), "arm64": (31, 30)}[os.uname().machine]
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13
_libc = ctypes.CDLL(None, use_errno=True)


class SchedError(OSError):
    """Attributes restore could not give back (a one-line reason)."""


def _ioprio_get(pid: int) -> int:
    ret = _libc.syscall(_NR[0], _IOPRIO_WHO_PROCESS, pid)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ioprio_get({pid}): {os.strerror(e)}")
    return io_priority(ret)


def io_priority(value: int) -> int:
    """An I/O priority as the image keeps it: class NONE (none set: it follows the nice value) is 0
    whatever its level. Older kernels (5.10; not 6.1) report a process that set none as NONE
    level 4 (their IOPRIO_NORM), which later ones refuse to set (EINVAL): an image of 5.10 has it."""
    return value if value >> _IOPRIO_CLASS_SHIFT else 0


def _read_int(path: str, dir_fd: int | None = None) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return int(os.read(fd, 64).split()[0], 16 if path.endswith("personality") else 10)   # (personality: %08x)
    finally:
        os.close(fd)


def read(pid: int) -> dict:
    """The attributes of `pid` (host pid), every key of the image's SCHED record but "cpus", its
    CPU affinity, which is there when it differs from ours (`taskset`, a service's CPUAffinity=:
    one that has every CPU, as we do, keeps every CPU of the machine it is restored on);
    SchedError for what restore could not give back (`_refusal`)."""
    got = values(pid)
    why = _refusal(pid, got)
    if why:
        raise SchedError(errno.EOPNOTSUPP, why)
    cpus = os.sched_getaffinity(pid)
    if cpus != os.sched_getaffinity(0):
        got["cpus"] = sorted(cpus)
    return got


def values(pid: int) -> dict[str, int]:
    """The attributes of `pid` (host pid), whatever they are."""
    policy = os.sched_getscheduler(pid)   # (with SCHED_RESET_ON_FORK, which /proc/PID/stat leaves out)
    return {"policy": policy, "rt_priority": os.sched_getparam(pid).sched_priority,
            "nice": os.getpriority(os.PRIO_PROCESS, pid), "ioprio": _ioprio_get(pid),
            "oom_score_adj": _read_int(f"/proc/{pid}/oom_score_adj"),
            "timerslack_ns": _read_int(f"/proc/{pid}/timerslack_ns"),
            "personality": _read_int(f"/proc/{pid}/personality")}


def _refusal(pid: int, got: dict) -> str | None:
    """Why restore could not give `pid` its attributes `got`, or None. A negative oom_score_adj
    only a holder of CAP_SYS_RESOURCE sets (systemd's OOMScoreAdjust=-1000 of sshd): without it the
    restorer, whose capabilities are ours, would fail once the tree is dead."""
    if got["policy"] & ~SCHED_RESET_ON_FORK == SCHED_DEADLINE:
        return (f"process {pid} runs under SCHED_DEADLINE, which is not restored: give it another "
                "policy (chrt -p) and dump again")
    if got["oom_score_adj"] < 0 and not _have_cap(_CAP_SYS_RESOURCE):
        return (f"process {pid} has oom_score_adj {got['oom_score_adj']}, which a restore without "
                "CAP_SYS_RESOURCE cannot set: dump and restore with it, or raise the value to 0")
    base = got["policy"] & ~SCHED_RESET_ON_FORK
    if (got["nice"] < 0 or base in (1, 2) or got["ioprio"] >> 13 == 1) and not _have_cap(_CAP_SYS_NICE):
        return (f"process {pid} has a negative nice value, a real-time policy or the real-time I/O class, "
                "which a restore without CAP_SYS_NICE cannot set: dump and restore with it")
    return None


def beyond_user(want: dict, rlimits: dict | None) -> str | None:
    """What of attributes `want` a process of a rootless tree (its outermost user namespace a
    non-root user's) could not give itself, or None: the kernel's rules for a process without
    CAP_SYS_NICE or CAP_SYS_RESOURCE of the initial user namespace, under its soft resource limits
    `rlimits` ({NAME: [soft, hard]}, -1: unlimited): a real-time priority above its RTPRIO, a
    negative nice value below 20 - its NICE (0, every process's start, needs none), the real-time
    I/O class, a negative oom_score_adj. Restore sets these from outside with its own privilege
    (`apply`); for such a tree only as far as its user could (an image of a rootless tree must not
    hand that user SCHED_FIFO 99 or oom_score_adj -1000); dump refuses the same first
    (`precheck_rootless`)."""
    def soft(name: str) -> float:
        v = (rlimits or {}).get(name, [0, 0])[0]
        return float("inf") if v == -1 else v
    base = want["policy"] & ~SCHED_RESET_ON_FORK
    if base in (1, 2) and want["rt_priority"] > soft("RTPRIO"):
        return (f"its real-time priority {want['rt_priority']} lies above its RLIMIT_RTPRIO (give it the "
                "normal policy: chrt -o -p 0 PID)")
    if want["nice"] < 0 and 20 - want["nice"] > soft("NICE"):
        return f"its nice value {want['nice']} lies below what its RLIMIT_NICE allows (raise it: renice -n 0 -p PID)"
    if want["ioprio"] >> _IOPRIO_CLASS_SHIFT == 1:
        return "its I/O class is the real-time one (give it the best-effort one: ionice -c 2 -p PID)"
    if want["oom_score_adj"] < 0:
        return f"its oom_score_adj {want['oom_score_adj']} is negative (raise it: choom -n 0 -p PID)"
    return None


def precheck_rootless(pids: list[int], rootless) -> None:
    """Refuse (SchedError, one line), before the stop, a process of a rootless tree (`rootless(pid)`
    true) whose attributes restore would not give it (`beyond_user`, restore's own rule): a dump that
    succeeds must restore."""
    from engine import kernel
    for pid in pids:
        try:
            if not rootless(pid):
                continue
            limits = kernel.read_rlimits(pid)
            why = beyond_user(values(pid), limits)
        except OSError:
            continue   # (gone meanwhile: dump tells, once the tree is stopped)
        if why:
            raise SchedError(errno.EPERM, f"process {pid}: {why.replace('PID', str(pid))}, which restore gives no "
                                          "process of a rootless tree (its user could not set it); then dump again")
        _hard_limits_above_ours(pid, limits)


def _hard_limits_above_ours(pid: int, limits: dict) -> None:
    """Refuse a rootless tree's process `pid` holding a hard resource limit of `limits` above ours:
    restore raises none for such a process (engine/restore.py, kernel.raise_hard_limits), whose
    stand-in only lowers the restorer's (the dumper's and the restorer's are root's of one host)."""
    import resource
    rank = lambda v: float("inf") if v == resource.RLIM_INFINITY else v   # noqa: E731  (-1: unlimited)
    for name, (_, hard) in sorted(limits.items()):
        nr = getattr(resource, f"RLIMIT_{name}", None)
        have = None if nr is None else resource.getrlimit(nr)[1]
        if have is not None and rank(hard) > rank(have):
            raise SchedError(errno.EPERM, f"process {pid}: its hard resource limit {name} {hard} lies above the "
                                          f"dumper's {have}, which restore gives no process of a rootless tree (its "
                                          "user could not raise it): lower it (prlimit), or raise the dumper's and "
                                          "the restorer's, and dump again")


_CAP_SYS_NICE, _CAP_SYS_RESOURCE = 23, 24


def _have_cap(cap: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> cap & 1)


def precheck(pids: list[int]) -> None:
    """Refuse (SchedError) what `read` would refuse, on the running tree."""
    for pid in pids:
        try:
            read(pid)
        except (ProcessLookupError, FileNotFoundError):
            continue   # (gone meanwhile: dump tells)


def _ranges(cpus) -> str:
    """CPU numbers as taskset's list shows them: 0-3,6."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _online() -> set[int] | None:
    """The CPUs this machine has online (/sys/devices/system/cpu/online), None where sysfs lacks it."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return None
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _lacking_line(cpus: list[int], have: set[int]) -> str:
    """The one line of a refusal of CPU affinity `cpus` (sorted), some of which are not in `have`."""
    lacking = sorted(set(cpus) - have)
    why = (f"no CPU of it is one this machine lets restore use ({_ranges(have)})" if not set(cpus) & have else
           f"CPU {_ranges(lacking[:8])}{' ...' if len(lacking) > 8 else ''} of it is not one this machine lets "
           f"restore use ({_ranges(have)})")
    return (f"its CPU affinity {cpus[:8]}{' ...' if len(cpus) > 8 else ''}: {why}: restore where those CPUs exist, "
            "or give the process another affinity (taskset -p) and dump again")


def check_cpus(processes: list[dict]) -> None:
    """Refuse (SchedError, one line) an image whose process has a CPU affinity naming a CPU this machine
    lacks (an image of a bigger machine): the kernel would silently narrow it to the CPUs that exist."""
    online = _online()
    if online is None:
        return   # (no sysfs: `apply` compares what the kernel gave)
    for p in processes:
        cpus = sorted((p.get("sched") or {}).get("cpus") or ())
        if set(cpus) - online:
            raise SchedError(errno.EINVAL, f"process {p.get('pid')}: " + _lacking_line(cpus, online))


def apply(pid: int, want: dict, proc_fd: int) -> None:
    """Give stand-in `pid` (as the caller sees it; `proc_fd` the caller's /proc) the attributes of
    `want` but its personality, each only where it differs."""
    def fail(what: str, e: OSError):
        raise SchedError(e.errno or errno.EPERM, f"its {what}: {e.strerror or e}") from None

    policy, prio = want["policy"], want["rt_priority"]
    if (os.sched_getscheduler(pid), os.sched_getparam(pid).sched_priority) != (policy, prio):
        try:
            os.sched_setscheduler(pid, policy, os.sched_param(prio))
        except OSError as e:
            fail(f"scheduling policy {policy:#x} priority {prio}", e)
    if os.getpriority(os.PRIO_PROCESS, pid) != want["nice"]:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, want["nice"])
        except OSError as e:
            fail(f"nice value {want['nice']}", e)
    if "cpus" in want and os.sched_getaffinity(pid) != set(want["cpus"]):
        try:
            os.sched_setaffinity(pid, want["cpus"])
        except OSError as e:
            if e.errno != errno.EINVAL:
                fail(f"CPU affinity {want['cpus'][:8]}", e)
        got = os.sched_getaffinity(pid)
        if got != set(want["cpus"]):
            # (EINVAL: no CPU of it exists; else the kernel narrowed the mask to the CPUs the
            # stand-in's cpuset has online, silently)
            raise SchedError(errno.EINVAL, _lacking_line(sorted(want["cpus"]), got))
    ioprio = io_priority(want["ioprio"])
    if _ioprio_get(pid) != ioprio:
        if _libc.syscall(_NR[1], _IOPRIO_WHO_PROCESS, pid, ioprio) < 0:
            fail(f"I/O priority {ioprio:#x}", OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())))
    for name in ("oom_score_adj", "timerslack_ns"):
        # (a real-time task's timer slack is the kernel's 0, which a write does not change)
        if _read_int(f"{pid}/{name}", proc_fd) != want[name]:
            fd = os.open(f"{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_fd)
            try:
                os.write(fd, str(want[name]).encode())
            except OSError as e:
                fail(f"{name} {want[name]}", e)
            finally:
                os.close(fd)


def personality(pid: int, proc_fd: int) -> int:
    """The personality of `pid` (as the caller sees it; `proc_fd` the caller's /proc)."""
    return _read_int(f"{pid}/personality", proc_fd)


def take_personality(value: int) -> None:
    """personality(2) on ourselves (a stand-in, before its threads exist)."""
    _libc.personality.restype = ctypes.c_int
    if _libc.personality(ctypes.c_ulong(value)) < 0:
        raise OSError(ctypes.get_errno(), f"its personality {value:#x}: {os.strerror(ctypes.get_errno())}")
