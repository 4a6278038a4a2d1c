"""What the processes of a /proc directory hold: the mount tables they show and the devices they sit on.

The session-end guards (zdtm/loopguard.py, zdtm/sbguard.py) call a device or superblock leaked only
when nothing outside the kernel holds it: no mount table shows it (one read per mount namespace) and
no process has an fd, cwd or root on it. `proc` is an argument so the rules can be tested on made-up
trees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from engine import kernel, mountinfo


@dataclass
class Held:
    """The mountinfo texts (one per mount namespace) and the st_dev / st_rdev of every fd, cwd and root."""

    mountinfos: list[str] = field(default_factory=list)
    devs: set[int] = field(default_factory=set)    # where they lie (st_dev)
    rdevs: set[int] = field(default_factory=set)   # device nodes held open (st_rdev)


def read_text(path: str) -> str | None:
    """The file's text, None when it cannot be read (a process gone meanwhile)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def mounts(text: str):
    """The mounts of a mountinfo text (engine/mountinfo.py), a line it cannot parse left out."""
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            yield mountinfo.parse_line(line, lineno)
        except mountinfo.MountinfoError:
            continue


def scan(proc: str = "/proc") -> Held:
    """What the processes under `proc` show and hold."""
    out = Held()
    seen_ns = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        base = os.path.join(proc, pid)
        try:
            ns = os.readlink(os.path.join(base, "ns", "mnt"))
        except OSError:
            ns = None
        if ns is None or ns not in seen_ns:
            text = read_text(os.path.join(base, "mountinfo"))
            if text is not None:
                if ns is not None:
                    seen_ns.add(ns)
                out.mountinfos.append(text)
        links = [os.path.join(base, "cwd"), os.path.join(base, "root")]
        try:
            links += [os.path.join(base, "fd", fd) for fd in os.listdir(os.path.join(base, "fd"))]
        except OSError:
            pass
        for link in links:
            try:
                # (cached: a file on a FUSE mount whose daemon another session's dump stopped would
                # make a plain stat wait)
                dev, rdev = kernel.stat_cached(link)
            except OSError:
                continue
            out.devs.add(dev)
            if rdev:
                out.rdevs.add(rdev)
    return out
