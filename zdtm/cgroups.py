"""The cgroups one scenario run made, found by its tag and removed at its teardown.

Runtimes (runc, crun, lxc, podman, systemd-nspawn) create cgroups in the
hierarchy a scenario mounts, which is the host's: a cgroup outlives the
namespaces and processes of the run that made it. So the place gives each run
a tag (``ZDTM_RUN_ID`` in setup's environment, 16 hex digits no other run
has), and a scenario puts it in the name of every top-level cgroup it makes
or has a runtime make (``mntcr-crun-$ZDTM_RUN_ID``). After the run's tree is
killed, the place removes every cgroup whose top-level name carries the tag,
deepest first, in every hierarchy: only its own, also when setup or the
cycle failed. What cannot be removed is reported (a leak of the run).

Every hierarchy (cgroup2, and each v1 one /proc/self/cgroup names) is looked
at through a mount of its own in a forked child's private mount namespace:
the runner's namespace may show none of them (a named v1 hierarchy), or show
them elsewhere (a hybrid host's /sys/fs/cgroup/unified, a guest's
/sys/fs/cgroup).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
import uuid

RUN_ENV = "ZDTM_RUN_ID"
_TAG = re.compile(r"^[0-9a-f]{16}$")


def new_tag() -> str:
    """A fresh run tag: 16 hex digits."""
    return uuid.uuid4().hex[:16]


def v1_hierarchies(cgroup_text: str) -> list[str]:
    """Mount options naming each cgroup v1 hierarchy in a /proc/PID/cgroup text ("cpu,cpuacct", "none,name=x")."""
    out = []
    for line in cgroup_text.splitlines():
        hid, _, rest = line.partition(":")
        names = rest.partition(":")[0]
        if hid != "0" and names:
            out.append("none," + names if names.startswith("name=") else names)
    return out


def tagged(tag: str, roots: list[str]) -> list[str]:
    """The top-level cgroups under `roots` whose name carries `tag`."""
    out = []
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        out += [os.path.join(root, n) for n in sorted(names)
                if tag in n and os.path.isdir(os.path.join(root, n))]
    return out


def remove_tree(path: str, deadline: float) -> str | None:
    """Remove cgroup `path` and its children, deepest first; None, else why not.

    A cgroup is busy (EBUSY) while a killed process in it is still exiting:
    retried until `deadline`.
    """
    while True:
        busy = None
        for top, dirs, _ in os.walk(path, topdown=False):
            try:
                os.rmdir(top)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return f"{top}: {e.strerror}"
                busy = busy or top  # the deepest: where the processes are
        if busy is None:
            return None
        if time.monotonic() >= deadline:
            return f"{busy}: still has processes (pids {_procs(busy) or 'none listed'})"
        time.sleep(0.05)


def _procs(path: str) -> str:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return " ".join(f.read().split())
    except OSError:
        return ""


def _mount_all(base: str) -> dict[str, str]:
    """Mount every hierarchy this process is in (cgroup2, each v1 one) beneath `base`; root -> its name."""
    from engine import kernel
    with open("/proc/self/cgroup") as f:
        wanted = [("cgroup2", None)] + [("cgroup", opts) for opts in v1_hierarchies(f.read())]
    roots = {}
    for i, (fstype, opts) in enumerate(wanted):
        path = os.path.join(base, str(i))
        os.mkdir(path)
        try:
            kernel.mount(fstype, path, fstype, kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC, opts)
        except OSError:
            continue  # not mountable here: a scenario could not have made a cgroup in it either
        roots[path] = f"{fstype}:{opts}" if opts else fstype
    return roots


def _remove_here(tag: str, base: str, grace: float) -> list[str]:
    """In a private mount namespace: remove the tagged cgroups of every hierarchy (mounted beneath `base`)."""
    deadline = time.monotonic() + grace
    left = []
    for root, name in _mount_all(base).items():
        for cg in tagged(tag, [root]):
            why = remove_tree(cg, deadline)
            if why:
                left.append(f"{name} {why[len(root):]}")  # the path in the hierarchy, not our mount's
    return left


def remove(tag: str, grace: float = 5.0) -> list[str]:
    """Remove the cgroups run `tag` made, in every hierarchy; one line per cgroup left behind."""
    if not _TAG.match(tag or ""):
        raise ValueError(f"not a run tag: {tag!r}")  # "" would match every cgroup
    from engine import forkrun
    mnt = tempfile.mkdtemp(prefix=f"zdtm-cgroups-{tag}.")
    try:
        return forkrun.in_mount_ns(_remove_here, tag, mnt, grace)
    finally:
        shutil.rmtree(mnt, ignore_errors=True)


def describe(left: list[str]) -> str:
    """The leak text for cgroups a run left behind."""
    return "the run left cgroups it made (remove them with rmdir, deepest first): " + "; ".join(left)
