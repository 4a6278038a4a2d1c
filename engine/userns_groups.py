"""Supplementary groups of processes in user namespaces that deny setgroups ("deny" in
/proc/PID/setgroups: `unshare -r`, rootless runtimes).

Inside such a namespace nobody can change the supplementary groups: a process holds those it had
when it entered it, some of which the namespace may not map (a user's sudo or audio group: they
read as the overflow gid inside; the image keeps them as "unmapped_groups", in the dumper's ids,
also of a namespace that allows setgroups, where no setgroups inside could give them back).
A stand-in enters its process's user namespace last (engine/userns_cr.py `Rebuild.become`) or
starts in it (`spawn_in_userns`), so it must hold the process's groups before it enters: it sets
them as soon as it exists, where it then is (the restorer's user namespace, or the one its
parent's stand-in started in), in that namespace's ids. Where that
namespace denies setgroups too, the stand-in holds its parent's groups (a fork keeps them): the
process's must be those (`plan` refuses others, at dump, before the stop).
"""

from __future__ import annotations

import errno

from engine import userns, userns_cr


def _kernel_groups(p: dict, users: dict) -> list[int] | None:
    """The groups of image process `p` in the dumper's ids, when it is in a namespace that denies
    setgroups, or holds groups its namespace does not map ("unmapped_groups": setgroups there could
    not give them), and has its ids recorded; None otherwise."""
    creds, name = p.get("creds"), p.get("userns")
    if not creds or name is None:
        return None
    unmapped = creds.get("unmapped_groups") or []
    if users[name]["setgroups"] != "deny" and not unmapped:
        return None
    return sorted(userns.outside(creds["groups"], users[name]["gid_map"]) + unmapped)


def plan(processes: list[dict], users: dict) -> dict[int, list[int]]:
    """{image pid: the groups its stand-in sets as soon as it exists, as the user namespace it is
    in then names them} for the processes (image entries, parents first) of user namespaces
    (image "userns") that deny setgroups; UsernsError (one line) for one whose stand-in cannot
    hold its groups."""
    by_pid = {p["pid"]: p for p in processes}
    started: dict[int, str | None] = {}
    kernel: dict[int, list[int] | None] = {}
    out: dict[int, list[int]] = {}
    for p in processes:
        parent = by_pid.get(p.get("ppid"))
        where = started.get(parent["pid"]) if parent else None   # (the namespace its stand-in is in at first)
        name = userns_cr.Rebuild._spawn_name(p, where)
        started[p["pid"]] = name if name is not None else where
        kernel[p["pid"]] = groups = _kernel_groups(p, users)
        if groups is None:
            continue
        if where is None:
            out[p["pid"]] = groups
            continue
        rec = users[where]
        if rec["setgroups"] == "deny":
            if kernel.get(parent["pid"]) != groups:
                raise userns_cr.UsernsError(errno.EOPNOTSUPP, f"process {p['pid']}: groups {groups} "
                                                              "(the dumper's ids) in a user namespace that denies setgroups, and its "
                                                              "parent's stand-in, which its stand-in starts as, "
                                                              "is in one too with other groups: not supported yet")
            continue   # (the fork holds them already)
        inside = userns.inside(groups, rec["gid_map"])
        if None in inside:
            raise userns_cr.UsernsError(errno.EOPNOTSUPP, f"process {p['pid']}: groups {groups} (the dumper's ids) "
                                                          "in a user namespace that denies setgroups or leaves some "
                                                          "unmapped, which the one its stand-in starts in does not "
                                                          "all map: not supported yet")
        out[p["pid"]] = inside
    return out


def check(tree, users_plan: dict) -> None:
    """At dump, on userns_cr.plan's document for `tree` [(pid, ppid)]: refuse (UsernsError) what
    `plan` would."""
    procs = users_plan["proc"]
    plan([{"pid": pid, "ppid": ppid, **procs.get(pid, {})} for pid, ppid in tree], users_plan["userns"])
