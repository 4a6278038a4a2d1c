"""Loop devices a session left bound where nothing can free them.

A loop device set to clear itself (autoclear: `mount -o loop`, restore's own
loop devices) is freed when its last user closes it. One that stays bound after
its users are gone is held by the kernel: a superblock on it kept alive by a
mount no mount namespace shows (a detached mount tree kept connected by a file
opened through it, as restore's parked mounts once were: engine/parking.py), or
a file on it held the same way. Nothing outside the kernel can free it: it stays
until the machine reboots, and every run takes one more loop device.

`Guard` records the bound loop devices at session start; at its end, a device
bound since then (a new number, or a number bound to another backing file), set
to clear itself, that no process's mount table names (by device number or
source) and no process holds (an fd, cwd or root on it, or its node open) for a
grace period, leaked. Devices without autoclear are someone's `losetup` and are
left alone. Everything reads a /sys/block and a /proc directory given as
arguments, so the rules can be tested on made-up trees (``ZDTM_LOOPGUARD_SYSBLOCK``
names another /sys/block for a whole session, for the runner's own tests).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from zdtm import holders

LOOP_MAJOR = 7
SYSBLOCK_ENV = "ZDTM_LOOPGUARD_SYSBLOCK"


@dataclass(frozen=True)
class Loop:
    """A bound loop device: its name, minor, backing file (as sysfs shows it) and autoclear flag."""

    name: str
    minor: int
    backing: str
    autoclear: bool

    def describe(self) -> str:
        return (f"/dev/{self.name} (backing file {self.backing}): bound during the session and still "
                "bound with no mount table naming it and no process holding it; the kernel keeps a "
                "superblock or file on it where no namespace shows it, until the machine reboots")


def bound(sysblock: str = "/sys/block") -> dict[str, Loop]:
    """The bound loop devices by name."""
    out = {}
    try:
        names = os.listdir(sysblock)
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop") or not name[4:].isdigit():
            continue
        backing = holders.read_text(os.path.join(sysblock, name, "loop", "backing_file"))
        if backing is None:
            continue  # not bound
        autoclear = holders.read_text(os.path.join(sysblock, name, "loop", "autoclear")) or ""
        out[name] = Loop(name, int(name[4:]), backing.strip(), autoclear.strip() == "1")
    return out


def _devices_in_mountinfo(text: str) -> tuple[set[int], set[str]]:
    """(loop minors by device number, loop device names by source) a mount table shows."""
    found = list(holders.mounts(text))
    return ({m.minor for m in found if m.major == LOOP_MAJOR},
            {os.path.basename(m.source) for m in found if m.source.startswith("/dev/loop")})


def held(proc: str = "/proc") -> tuple[set[int], set[str]]:
    """(loop minors, loop names) some process's mount table names or some process holds."""
    minors, names = set(), set()
    found = holders.scan(proc)
    for text in found.mountinfos:
        m, n = _devices_in_mountinfo(text)
        minors |= m
        names |= n
    minors |= {os.minor(dev) for dev in found.devs | found.rdevs if os.major(dev) == LOOP_MAJOR}
    return minors, names


def _same(before: Loop | None, now: Loop) -> bool:
    """Whether `now` is the binding `before` was (its backing file deleted since: the same one)."""
    return before is not None and before.autoclear == now.autoclear and \
        before.backing.removesuffix(" (deleted)") == now.backing.removesuffix(" (deleted)")


class Guard:
    """The bound loop devices at creation; `leaked()` the ones bound since that nothing frees."""

    def __init__(self, sysblock: str | None = None, proc: str = "/proc"):
        self.sysblock, self.proc = sysblock or os.environ.get(SYSBLOCK_ENV) or "/sys/block", proc
        self.start = bound(self.sysblock)

    def _suspects(self) -> list[Loop]:
        now = bound(self.sysblock)
        new = [lp for name, lp in now.items() if lp.autoclear and not _same(self.start.get(name), lp)]
        if not new:
            return []
        minors, names = held(self.proc)
        return [lp for lp in new if lp.minor not in minors and lp.name not in names]

    def leaked(self, grace: float | None = None) -> list[Loop]:
        """Loop devices bound since creation that stayed unheld (see the module doc) for `grace` s.

        By default 30 s: the kernel clears an autoclear device in a work item after its last close,
        late on a loaded machine, and a device another job just let go is seen here too (a leak
        stays); 3 s on a made-up /sys/block (no kernel work to wait for)."""
        if grace is None:
            grace = 30.0 if self.sysblock == "/sys/block" else 3.0
        deadline = time.monotonic() + grace
        suspects = self._suspects()
        while suspects and time.monotonic() < deadline:
            time.sleep(0.2)
            again = {lp.name for lp in self._suspects()}
            suspects = [lp for lp in suspects if lp.name in again]
        return suspects


def describe(found: list[Loop]) -> str:
    """One line per leaked loop device."""
    return "\n".join(lp.describe() for lp in found)
