"""The host groups the user that made a user namespace could hold: the bound on the supplementary
groups its namespace does not map that an image gives its processes.

A process keeps the supplementary groups it had when it entered a user namespace (`unshare -r`,
`bwrap --unshare-user`, Flatpak: a desktop user's sudo, audio...); where the namespace does not map
them they read as the overflow gid inside, and where it denies setgroups they can never be dropped.
Restore runs as root and could give any group an image names; a namespace a non-root user made may
hold only the groups that user could have had here: its passwd entry's primary gid and the groups
the group database lists it in (what login's initgroups gives), besides the ids it maps.
"""

from __future__ import annotations

import functools
import os
import pwd

from engine import userns


@functools.lru_cache(maxsize=64)
def of_owner(uid: int) -> frozenset[int] | None:
    """The groups user `uid` has per this machine's passwd and group databases; None when it has no
    passwd entry. (Asked once per process and per namespace: NSS lookups cost ~80 us.)"""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    return frozenset({pw.pw_gid, *os.getgrouplist(pw.pw_name, pw.pw_gid)})


def refusal(what: str, groups, gid_map, owner: int) -> str | None:
    """One line refusing supplementary `groups` (host ids) of `what` (a process) in a user
    namespace (or below one) that uid `owner` made with `gid_map` (inside, host, count): those the
    map leaves out must be groups `owner` has here (of_owner); None when they are."""
    unmapped = sorted({g for g, here in zip(groups, userns.inside(groups, gid_map)) if here is None})
    if not unmapped:
        return None
    allowed = of_owner(owner)
    if allowed is None:
        return (f"{what}: supplementary groups {unmapped}, which the user namespace uid {owner} made does not "
                f"map, and uid {owner} has no passwd entry on this machine: no telling it could hold them")
    bad = [g for g in unmapped if g not in allowed]
    if bad:
        return (f"{what}: supplementary groups {bad}, which the user namespace uid {owner} made does not map, "
                f"and uid {owner} is not in them on this machine (passwd, group): no groups that user lacks")
    return None
