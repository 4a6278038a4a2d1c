"""The host ids a non-root user may map into a user namespace it makes: newuidmap's rule.

The owner of a user namespace holds every capability in it, over every id it
maps. Restore runs as root and writes the maps an image gives, so an image that
says uid U made a namespace mapping another user's uid (or a group like sudo)
would hand U that user's files. A user may map what it could have mapped itself:
its own uid (the kernel lets it write that one line) and the ranges /etc/subuid
gives it, by name or by uid (newuidmap writes those); a gid it holds, one at a
time (its passwd primary gid or a group the group database lists it in: the
kernel lets it map its effective gid, which `sg` can make any of them), and the
ranges of /etc/subgid (newgidmap).

Only a namespace whose parent is the dumper's (restorer's) own is checked: the
host user U is its owner there. A namespace nested below another is reachable
by no host user, and its maps are bounded by its parent's (the kernel refuses ids
the parent does not map). The host's id 0 no user-made namespace maps, at any
depth (`root_refusal`). Dump and restore apply one rule (`owned_refusal`): a dump
that succeeds restores on the same machine.
"""

from __future__ import annotations

import os
import pwd

from engine import ownergroups

ETC = "/etc"


def _ranges(path: str, owner: int, name: str | None) -> list[tuple[int, int]]:
    """(start, count) ranges of an /etc/subuid-style file for the user by name or by uid."""
    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue  # (blank, a comment, or a line newuidmap would not read either)
        if parts[0] == str(owner) or (name is not None and parts[0] == name):
            out.append((int(parts[1]), int(parts[2])))
    return out


def _covered(start: int, count: int, allowed: list[tuple[int, int]]) -> bool:
    """Whether [start, start+count) lies within the union of the `allowed` ranges."""
    at, end = start, start + count
    for a, n in sorted(allowed):
        if a <= at < a + n:
            at = a + n
            if at >= end:
                return True
    return at >= end


def _show(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}-{a + n - 1}" for a, n in sorted(ranges)) or "none"


def root_refusal(ns_id: str, owner: int, uid_map, gid_map) -> str | None:
    """One line refusing the maps of user namespace `ns_id`, at any depth, that uid `owner` (not 0)
    made when they reach the host's id 0 (outside ids are the dumper's at every depth), which no
    user but root can map; None when neither does."""
    for key, ranges in (("uid_map", uid_map), ("gid_map", gid_map)):
        if any(outside == 0 for _, outside, _ in ranges):
            return (f"user namespace {ns_id}: owned by uid {owner}, yet its {key} reaches the host's id 0, "
                    "which no user but root can map")
    return None


def owned_refusal(ns_id: str, owner: int, top: bool, uid_map, gid_map, setgroups: str) -> str | None:
    """The refusal of a user namespace uid `owner` (not 0) made, dump's and restore's one rule:
    `root_refusal` at any depth, then, for one made below the dumper's own (`top`), `refusal`."""
    line = root_refusal(ns_id, owner, uid_map, gid_map)
    if line is None and top:
        line = refusal(ns_id, owner, uid_map, gid_map, setgroups)
    return line


def refusal(ns_id: str, owner: int, uid_map, gid_map, setgroups: str, etc: str | None = None) -> str | None:
    """One line refusing the maps [(inside, outside, count)] of user namespace `ns_id` that uid
    `owner` (not 0) made with the dumper's user namespace as parent, when they map a host id
    that user could not map on this machine (`etc`: where subuid and subgid are, default ETC), or
    allow setgroups with no /etc/subgid range mapped; None when every range is one it could."""
    etc = etc or ETC
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = None
    who = f"uid {owner}" + (f" ({name})" if name else " (no passwd entry on this machine)")
    groups = ownergroups.of_owner(owner) or set()
    ranges = {file: _ranges(os.path.join(etc, file), owner, name) for file in ("subuid", "subgid")}
    for key, file, own in (("uid_map", "subuid", [(owner, 1)]), ("gid_map", "subgid", [(g, 1) for g in groups])):
        subs = ranges[file]
        for _, outside, count in (uid_map if key == "uid_map" else gid_map):
            if _covered(outside, count, subs) or (count == 1 and (outside, 1) in own):
                continue
            kind = "uid" if key == "uid_map" else "gid"
            mine = f"its own uid {owner}" if kind == "uid" else f"its groups {sorted(groups) or 'none'}"
            return (f"user namespace {ns_id}: made by {who}, its {key} maps host {kind}s "
                    f"{outside}-{outside + count - 1}, which that user could not map here (only {mine} "
                    f"and its {etc}/{file} ranges: {_show(subs)}, as new{kind}map): if this image and user "
                    f"are trusted, give the user that range in {etc}/{file}")
    # Its own groups it maps only with setgroups denied (the kernel's rule; newgidmap allows setgroups
    # only for a subgid range): allowed, it could drop a group that a file's mode denies access.
    subs = ranges["subgid"]
    if setgroups == "allow" and gid_map and not any(_covered(o, n, subs) for _, o, n in gid_map):
        return (f"user namespace {ns_id}: made by {who}, it allows setgroups, yet its gid_map maps none of its "
                f"{etc}/subgid ranges ({_show(subs)}): that user could map its own groups only with setgroups "
                "denied (the kernel's rule, and newgidmap's), or drop a group a file's mode shuts out")
    return None
