"""Leak guard: what a test session left behind on the host.

- Mounts: the host's mounts at session start against the host's mounts at
  session end. A mount is identified by (mount id, device, root, mountpoint):
  a mount id the kernel reused for another mount counts as new. A mount
  present at the end and not at the start is a leak; one present at the start
  and gone at the end *disappeared* (a test unmounted a host mount); one
  present at both whose per-mount flags or propagation (shared, master,
  propagate_from, unbindable) differ *changed* (a test ran mount --make-* or
  a bind remount on the host). Any of these fails the session and names the
  mount.
- Per test: the same comparison after each test's teardown, in the process
  that ran the test (`Tracker`), so the report names the test that leaked.
- Processes: holders (argv0 or comm is the holder's), keepers of the ns
  flavor and restored stand-ins of *this* session still alive at its end.
  They keep namespaces (and mounts) alive where no host mountinfo shows them.
  A session marks what it starts with ``ZDTM_SESSION=<id>`` in the
  environment (processes inherit it, the ns flavor passes it into the
  container), so other sessions running on the same machine are not blamed.
- Cgroups: runtimes make them in the host's hierarchy, named with the run's
  tag; the place removes them when it stops, and one it cannot remove fails
  that item (zdtm/cgroups.py, zdtm.item).

Attribution (a workstation's table changes under other programs too:
container runtimes, automounts, another test run):

- A change is a test's own when the mount's mount point or source carries the
  test's identity (its workdir, its tmp_path); it fails that test's teardown.
- A change carrying the session's identity (the session id, which names the
  runner's work directories, or the session's pytest basetemp) but not the
  running test's is another test's of the same session (another xdist worker):
  never reported at this test, that test's own check or the session check sees it.
- Anything else is foreign: a warning naming the test it was seen during and
  at the end of the session, never a failure, unless the session's mount
  namespace is its own (no process outside the session in it, e.g. a run
  under ``unshare -m``): then every change is the session's, charged to the
  running test when only one test runs at a time.

Comparisons work on mountinfo text and a /proc directory argument, so they
can be tested on made-up tables; ``ZDTM_LEAKGUARD_MOUNTINFO`` names another
table to watch (a throwaway namespace's, for the runner's own tests).
"""

from __future__ import annotations

import os
import re
from stat import S_ISCHR
import time
import uuid
from dataclasses import dataclass, field

from engine import mountinfo

SESSION_ENV = "ZDTM_SESSION"
HOLDER_ARGV0 = "/.zdtm/zdtm-holding"            # zdtm/holder.py's marker
HOLDER_COMMS = ("zdtm-holding", "mntcr-hold")
FUSE_DEV = os.makedev(10, 229)   # /dev/fuse
# argv words of our own helper processes: ns-flavor keepers, scenario servers, the engine's CLI (restorer, stand-ins fork from it)
_HELPER_ARGS = ("zdtm.flavors.ns", "engine.cli", "zdtm.fsserver")


def _key(m: mountinfo.Mount) -> tuple:
    return (m.mnt_id, m.major, m.minor, m.root, m.mountpoint)


def leaked(start_text: str, end_text: str) -> list[mountinfo.Mount]:
    """Mounts in `end_text` that were not in `start_text` (both mountinfo texts)."""
    start = {_key(m) for m in mountinfo.parse(start_text)}
    return [m for m in mountinfo.parse(end_text) if _key(m) not in start]


def gone(start_text: str, end_text: str) -> list[mountinfo.Mount]:
    """Mounts in `start_text` that are no longer in `end_text` (a host mount was unmounted)."""
    return leaked(end_text, start_text)


def _state(m: mountinfo.Mount) -> tuple:
    return (m.mount_opts, m.shared, m.master, m.propagate_from, m.unbindable)


def changed(start_text: str, end_text: str) -> list[tuple[mountinfo.Mount, mountinfo.Mount]]:
    """(before, after) of each mount in both texts whose flags or propagation differ."""
    start = {_key(m): m for m in mountinfo.parse(start_text)}
    return [(start[_key(m)], m) for m in mountinfo.parse(end_text)
            if _key(m) in start and _state(start[_key(m)]) != _state(m)]


def describe_changed(pairs: list[tuple[mountinfo.Mount, mountinfo.Mount]]) -> str:
    """One line per host mount whose flags or propagation changed: before -> after."""
    def show(m):
        return " ".join([",".join(m.mount_opts), *mountinfo.optional_fields(m)] or ["private"])
    return "\n".join(f"host mount changed: {b.mountpoint} (mount id {b.mnt_id}): {show(b)} -> {show(a)}"
                     for b, a in pairs)


def describe(mounts: list[mountinfo.Mount]) -> str:
    """One line per leaked mount: where, what, and how to remove it."""
    return "\n".join(f"leaked mount: {m.mountpoint} ({m.fstype} {m.source}, mount id {m.mnt_id}); "
                     f"remove with: umount -l {m.mountpoint}" for m in mounts)


def describe_gone(mounts: list[mountinfo.Mount]) -> str:
    """One line per host mount that disappeared."""
    return "\n".join(f"host mount disappeared: {m.mountpoint} ({m.fstype} {m.source}, mount id {m.mnt_id}, "
                     f"root {m.root})" for m in mounts)


MOUNTINFO_ENV = "ZDTM_LEAKGUARD_MOUNTINFO"   # the table the guard watches (tests point it elsewhere)
EXCLUSIVE_ENV = "ZDTM_SESSION_NS_EXCLUSIVE"  # "1": the session owns the watched mount namespace


def watched_table() -> str:
    """The mountinfo file the guard compares: ``$ZDTM_LEAKGUARD_MOUNTINFO`` or this process's."""
    return os.environ.get(MOUNTINFO_ENV) or "/proc/self/mountinfo"


def read_mountinfo(path: str = "/proc/self/mountinfo") -> str:
    """The text of a mountinfo file."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


@dataclass
class Changes:
    """What changed in a mount table between two readings."""

    new: list = field(default_factory=list)        # mounts that appeared
    gone: list = field(default_factory=list)       # mounts that disappeared
    changed: list = field(default_factory=list)    # (before, after) pairs: flags or propagation

    @classmethod
    def between(cls, start_text: str, end_text: str) -> "Changes":
        """The changes from one mountinfo text to another."""
        return cls(leaked(start_text, end_text), gone(start_text, end_text), changed(start_text, end_text))

    def __bool__(self) -> bool:
        return bool(self.new or self.gone or self.changed)

    def split(self, marks) -> tuple["Changes", "Changes"]:
        """(changes of mounts carrying one of `marks` (see `carries`), the rest)."""
        yes, no = Changes(), Changes()
        for name in ("new", "gone"):
            for m in getattr(self, name):
                getattr(yes if carries(m, marks) else no, name).append(m)
        for pair in self.changed:
            (yes if carries(pair[1], marks) else no).changed.append(pair)
        return yes, no

    def __add__(self, other: "Changes") -> "Changes":
        return Changes(self.new + other.new, self.gone + other.gone, self.changed + other.changed)

    def describe(self) -> str:
        """One line per change (see describe, describe_gone, describe_changed)."""
        return "\n".join(t for t in (describe(self.new), describe_gone(self.gone),
                                      describe_changed(self.changed)) if t)


def carries(m: mountinfo.Mount, marks) -> bool:
    """Whether mount `m` carries one of `marks` in its mount point or source.

    A mark starting with ``/`` is a directory: the mount point (or source) is
    that directory or beneath it. Any other mark (a session id) is a substring.
    """
    for mark in marks:
        if not mark:
            continue
        for text in (m.mountpoint, m.source or ""):
            if mark.startswith("/"):
                if text == mark or text.startswith(mark.rstrip("/") + "/"):
                    return True
            elif mark in text:
                return True
    return False


def attribute(changes: Changes, test_marks, session_marks, *, sole: bool) -> tuple[Changes, Changes]:
    """(the test's own changes, foreign changes) among `changes` seen during one test.

    `sole`: the session owns the watched namespace and this is the only test
    running, so every change is the test's. Changes carrying `session_marks`
    but not `test_marks` belong to another test of the session: in neither.
    """
    if sole:
        return changes, Changes()
    own, rest = changes.split(test_marks)
    _, foreign = rest.split(session_marks)
    return own, foreign


def namespace_exclusive(session: str, path: str | None = None, proc: str = "/proc",
                        me: int | None = None) -> bool:
    """Whether every process in the mount namespace of the watched table is of this session.

    Processes of the session carry ``ZDTM_SESSION=session`` in their environment;
    `me` (the calling process, which set the marker after it started) counts too.
    """
    path = path or watched_table()
    match = re.match(r"/proc/(\d+|self)/", path)
    owner = match.group(1) if match else "self"
    me = os.getpid() if me is None else me
    try:
        ns = os.readlink(os.path.join(proc, owner, "ns", "mnt"))
    except OSError:
        return False
    marker = f"{SESSION_ENV}={session}".encode()
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.readlink(os.path.join(proc, name, "ns", "mnt")) != ns:
                continue
        except OSError:
            continue  # gone, or a kernel thread we may not look at
        env = _read(os.path.join(proc, name, "environ"))
        if env is None or marker not in env.split(b"\0"):
            return False
    return True


class Guard:
    """Records a mountinfo file at creation; `check()` returns what leaked since, `gone()` what disappeared."""

    def __init__(self, path: str | None = None):
        self.path = path or watched_table()
        self.start = self._read()

    def _read(self) -> str:
        return read_mountinfo(self.path)

    def check(self) -> list[mountinfo.Mount]:
        return leaked(self.start, self._read())

    def gone(self) -> list[mountinfo.Mount]:
        return gone(self.start, self._read())

    def changed(self) -> list[tuple[mountinfo.Mount, mountinfo.Mount]]:
        return changed(self.start, self._read())

    def changes(self) -> Changes:
        """Everything that changed since creation."""
        return Changes.between(self.start, self._read())

    def own_leaks(self, *marks: str) -> list[mountinfo.Mount]:
        """New mounts carrying one of `marks` or one of ENGINE_MARKS (see `carries`); any other new
        mount is another program's (perf mounting tracefs, an automount, a container runtime) and
        only warned about, so an engine test fails for its own leaks, never for a neighbour's."""
        import warnings
        own, foreign = Changes(new=self.check()).split(marks + engine_marks())
        if foreign:
            warnings.warn("mounts appeared on the host during the test, not the engine's (left "
                          "alone): " + describe(foreign.new).replace("\n", "; "))
        return own.new


def engine_marks() -> tuple[str, ...]:
    """Where a mount the engine or runner leaked would show: the temporary directory (work and
    image directories, scratch), the engine's run directory, the cache, and the names it gives
    its own sources."""
    import tempfile
    cache = os.environ.get("MNTCR_CACHE") or os.path.expanduser("~/.cache/mntcr")
    return (tempfile.gettempdir(), "/run/mntcr", cache, "mntcr", "zdtm")


class Tracker:
    """Per-test attribution: `step()` after each test returns its new and its vanished mounts.

    The baseline moves to the current table after every step, so a leak is
    reported once, by the first test after which it is seen.
    """

    def __init__(self, path: str | None = None):
        self.path = path or watched_table()
        self.last = read_mountinfo(self.path)

    def changes(self) -> Changes:
        """`step()` as a Changes."""
        return Changes(*self.step())

    def step(self) -> tuple[list[mountinfo.Mount], list[mountinfo.Mount], list[tuple]]:
        """(new mounts, vanished mounts, changed mounts) since the last step."""
        now = read_mountinfo(self.path)
        new, vanished, altered = leaked(self.last, now), gone(self.last, now), changed(self.last, now)
        self.last = now
        return new, vanished, altered


# --- leftover processes ------------------------------------------------------------

def new_session_id() -> str:
    """A fresh session marker value."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Leftover:
    """A process of this session still alive at its end."""

    pid: int
    what: str      # "holder", "keeper", "stand-in or engine process"
    cmdline: str


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _classify(argv: list[str], comm: str) -> str | None:
    if (argv and argv[0] == HOLDER_ARGV0) or comm in HOLDER_COMMS:
        return "holder"
    if "zdtm.flavors.ns" in argv:
        return "keeper"
    if "engine.cli" in argv or "from engine.cli import run; run()" in argv:   # (-m, or cli.command's -c)
        return "stand-in or engine process"
    return None


def _fuse_daemon(base: str) -> str | None:
    """"FUSE daemon" when the process at /proc path `base` holds a /dev/fuse connection (one restore
    restarted, --fuse-restart: it lives while its superblock is mounted anywhere)."""
    try:
        fds = os.listdir(os.path.join(base, "fd"))
    except OSError:
        return None
    for fd in fds:
        link = os.path.join(base, "fd", fd)
        try:
            # By name first: a stat of a file on a FUSE mount waits for its daemon, which may be stopped
            # (another session's dump). Then by device: the path is where restore opened it (/fuse).
            if not os.readlink(link).endswith("/fuse"):
                continue
            st = os.stat(link)
        except OSError:
            continue
        if S_ISCHR(st.st_mode) and st.st_rdev == FUSE_DEV:
            return "FUSE daemon"
    return None


def leftover_processes(session: str, proc: str = "/proc", exclude: set[int] | None = None) -> list[Leftover]:
    """Holders, keepers, stand-ins and FUSE daemons carrying ``ZDTM_SESSION=session`` that are alive
    (not zombies)."""
    marker = f"{SESSION_ENV}={session}".encode()
    exclude = exclude or set()
    out = []
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) in exclude:
            continue
        base = os.path.join(proc, name)
        env = _read(os.path.join(base, "environ"))
        if not env or marker not in env.split(b"\0"):
            continue
        stat = _read(os.path.join(base, "stat"))
        if stat is None or stat.rsplit(b")", 1)[-1].split()[:1] in ([b"Z"], [b"X"]):
            continue
        argv = [a.decode(errors="replace") for a in (_read(os.path.join(base, "cmdline")) or b"").split(b"\0") if a]
        comm = (_read(os.path.join(base, "comm")) or b"").decode(errors="replace").strip()
        what = _classify(argv, comm) or _fuse_daemon(base)
        if what:
            out.append(Leftover(int(name), what, " ".join(argv) or f"[{comm}]"))
    return sorted(out, key=lambda p: p.pid)


def wait_leftovers(session: str, grace: float = 3.0, proc: str = "/proc",
                   exclude: set[int] | None = None) -> list[Leftover]:
    """`leftover_processes`, after giving killed trees up to `grace` seconds to go away."""
    deadline = time.monotonic() + grace
    while True:
        found = leftover_processes(session, proc, exclude)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


class ForeignMountChange(UserWarning):
    """The host's mount table changed during a test, not by this session (a warning, not a failure)."""


def describe_processes(found: list[Leftover]) -> str:
    """One line per leftover process, with how to end it."""
    return "\n".join(f"leftover {p.what}: pid {p.pid} ({p.cmdline}); end it with: kill -9 {p.pid}" for p in found)
