"""Supplementary groups in user namespaces that deny setgroups (engine/userns_groups.py): nobody
can set them inside, so a stand-in that entered with the restorer's groups kept those, and the
snapshot (its "creds" line: uid, gid, groups) showed the difference. Each stand-in now holds its
process's groups before it enters; one that cannot (its parent's stand-in is in such a namespace
already, with other groups) is refused at dump, before the stop.
"""

from __future__ import annotations

import errno

import pytest

from enginecase import STOP_WATCH, case, py_hold  # noqa: F401  (fixture)
from engine import userns_cr, userns_groups


def _setup(first: bool, listener: bool = False, setgroups: str = "deny", mapping: str = "0 0 65536",
           take: bool = False, owner: int | None = None) -> str:
    """The root forks a child holding groups 5, 7 and 1000 that makes a user namespace mapping
    ids 0..65535 to themselves, setgroups denied (written by the root); with `first` the child also
    makes a uts namespace from inside it (its stand-in starts there) and forks a grandchild, which
    keeps its groups. With `listener` the child listens on an abstract socket with group 9 first
    (before it takes its groups and enters the namespace). `setgroups`, `mapping` (both maps): the
    namespace's; `take`: the child takes ids 0 inside; `owner`: the host uid it is when it makes
    the namespace."""
    return py_hold("""
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe(); r2, w2 = os.pipe()
import socket
ls = socket.socket(socket.AF_UNIX); ls.bind(b"\\0zdtm-groups-" + os.urandom(6).hex().encode())   # (xdist: one per test)
if LISTENER:
    os.setgroups([9]); ls.listen()
os.setgroups([5, 7, 1000])
kid = os.fork()
if kid == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    if OWNER is not None:
        os.setresgid(OWNER, OWNER, OWNER); os.setresuid(OWNER, OWNER, OWNER)
    assert libc.unshare(0x10000000) == 0   # CLONE_NEWUSER
    os.write(w, b"1"); os.read(r2, 1)
    if TAKE:
        os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
    if FIRST:
        assert libc.unshare(0x04000000) == 0   # CLONE_NEWUTS, from inside
        if os.fork() == 0:
            libc.prctl(15, b"mntcr-hold", 0, 0, 0)
            while True: signal.pause()
    libc.prctl(15, b"mntcr-hold", 0, 0, 0)
    while True: signal.pause()
os.read(r, 1)
for name, text in (("setgroups", "SETGROUPS"), ("uid_map", "MAPPING"), ("gid_map", "MAPPING")):
    with open(f"/proc/{kid}/{name}", "w") as f:
        f.write(text)
os.write(w2, b"1")
os.setgroups([])
""".replace("FIRST", str(first)).replace("LISTENER", str(listener)).replace("SETGROUPS", setgroups)
       .replace("MAPPING", mapping).replace("TAKE", str(take)).replace("OWNER", str(owner)))


def _groups(state) -> list[str]:
    return sorted(line.split(" groups ")[1].split()[0] for p in state.snap.procs for line in p.text().splitlines()
                  if line.startswith("creds:"))


@pytest.mark.parametrize("first", [False, True], ids=["joined_last", "started_inside"])
def test_groups_in_a_namespace_that_denies_setgroups_are_kept(case, first):
    """The child (and the grandchild forked inside) come back with groups 5, 7, 1000 (the
    snapshot compares every process's groups), the root with none."""
    before, after = case.roundtrip(_setup(first))
    assert _groups(before) == ["-"] + ["5,7,1000"] * (2 if first else 1)
    assert _groups(after) == _groups(before)


def _users(setgroups_outer: str = "allow") -> dict:
    return {"user-1": {"parent": None, "uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]],
                       "setgroups": setgroups_outer},
            "user-2": {"parent": "user-1", "uid_map": [[0, 100000, 1000]], "gid_map": [[0, 100000, 1000]],
                       "setgroups": "deny"}}


def _proc(pid, ppid, userns, groups, **more) -> dict:
    return {"pid": pid, "ppid": ppid, "userns": userns,
            "creds": {"uid": [0] * 4, "gid": [0] * 4, "groups": groups}, **more}


def test_plan_names_groups_in_the_namespace_the_stand_in_is_in_first():
    """A stand-in in the restorer's namespace sets the dumper's ids; one forked by a stand-in that
    started in an allowing namespace sets that namespace's ids; one forked inside a denying one
    keeps its parent's (nothing to set)."""
    procs = [_proc(1, None, "user-2", [3, 4]),
             _proc(2, 1, "user-1", [], userns_first=True),
             _proc(3, 2, "user-2", [5]),
             _proc(4, None, "user-2", [5], userns_first=True),
             _proc(5, 4, "user-2", [5])]
    procs[3]["ppid"] = 3
    procs[4]["ppid"] = 4
    plan = userns_groups.plan(procs, _users())
    assert plan == {1: [100003, 100004], 3: [5], 4: [5]}, plan


def test_plan_refuses_other_groups_than_the_parents_inside_a_denying_namespace():
    """A child whose parent's stand-in started inside the denying namespace holds the parent's
    groups: other ones are refused, one line."""
    procs = [_proc(1, None, "user-2", [5], userns_first=True), _proc(2, 1, "user-2", [6])]
    with pytest.raises(userns_cr.UsernsError) as err:
        userns_groups.plan(procs, _users())
    assert err.value.errno == errno.EOPNOTSUPP
    assert "process 2: groups [100006] (the dumper's ids) in a user namespace that denies setgroups" in str(err.value)
    procs[1]["creds"]["groups"] = [5]
    assert userns_groups.plan(procs, _users()) == {1: [100005]}


@pytest.mark.parametrize("first", [False, True], ids=["joined_last", "started_inside"])
def test_listener_with_other_groups_in_a_denying_namespace_refused_unstopped(case, first):
    """A listener that listened with group 9 held by a process of groups 5, 7, 1000 in a namespace
    that denies setgroups: its stand-in could not listen with group 9 there: refused before the stop."""
    from test_engine_prestop import _refused_unstopped
    pid = case.start(STOP_WATCH + _setup(first, listener=True))
    _refused_unstopped(case, pid, r"process \d+ fd \d+ \(socket:\[\d+\]\): a listener that listened with "
                                  r"groups \[9\], other than its process's \(\[5, 7, 1000\]\), in a user namespace "
                                  "that denies setgroups: not supported")


# --- groups the namespace does not map (`unshare -r` by a user of several groups) -----------------

def _unmapped_setup(setgroups: str, take: bool = True, owner: int | None = None) -> str:
    """_setup's child in a user namespace mapping ids 0..999 to the host's 100000.. (setgroups
    `setgroups`): none of its groups 5, 7, 1000 is mapped there. With `take` it takes ids 0
    inside (the host's 100000); with `owner` it is that host uid when it makes the namespace (a
    non-root user's, which then owns it)."""
    return _setup(False, setgroups=setgroups, mapping="0 100000 1000", take=take, owner=owner)


@pytest.mark.parametrize("setgroups", ["deny", "allow"])
def test_groups_the_namespace_does_not_map_are_kept(case, setgroups):
    """The child's groups 5, 7, 1000, which its namespace does not map (they read as 65534 inside),
    come back exactly (the snapshot compares every process's groups as the host sees them): its
    stand-in holds them before it enters, also where setgroups is allowed (no setgroups inside
    could give them). Root made the namespace: no owner's bound."""
    before, after = case.roundtrip(_unmapped_setup(setgroups))
    assert _groups(before) == ["-", "5,7,1000"]
    assert _groups(after) == _groups(before)


def test_ids_the_namespace_does_not_map_refused_naming_them(case):
    """The child keeps the host's uid and gid 0, which its namespace does not map (its groups are
    not the trouble): refused before the stop, naming those ids."""
    from test_engine_prestop import _refused_unstopped
    pid = case.start(STOP_WATCH + _unmapped_setup("deny", take=False))
    _refused_unstopped(case, pid, r"process \d+: its uid 0, gid 0 are not mapped in its user namespace: "
                                  "not supported yet")


def test_unmapped_groups_of_an_unknown_owner_refused_unstopped(case):
    """The brief's `setpriv --reuid 100000 ... unshare -r`: host uid 100000, no user of this
    machine, made the namespace; its groups 5, 7, 1000 are unmapped there, and nothing tells
    whether that user could hold them, nor the ids its maps give (its own uid aside): refused
    before the stop, for the maps first (engine/subids.py; restore would refuse the image)."""
    import pwd
    from test_engine_prestop import _refused_unstopped
    try:
        pwd.getpwuid(100000)
        pytest.skip("uid 100000 is a user of this machine")
    except KeyError:
        pass
    pid = case.start(STOP_WATCH + _unmapped_setup("deny", owner=100000))
    _refused_unstopped(case, pid, r"user namespace user-1: made by uid 100000 \(no passwd entry on this machine\), "
                                  r"its uid_map maps host uids 100000-\d+, which that user could not map here .*")


def test_plan_holds_unmapped_groups_also_where_setgroups_is_allowed():
    """A process of an allowing namespace with groups it does not map: its stand-in holds them all
    (mapped ones in the dumper's ids too) before it enters; one that started inside an allowing
    namespace that does not map them cannot: refused, one line."""
    procs = [_proc(1, None, "user-1", [3], )]
    procs[0]["creds"]["unmapped_groups"] = [27]
    assert userns_groups.plan(procs, _users()) == {1: [27, 100003]}
    procs.append(_proc(2, 1, "user-1", [], userns_first=True))
    procs.append(_proc(3, 2, "user-2", [4]))
    procs[2]["creds"]["unmapped_groups"] = [29]
    with pytest.raises(userns_cr.UsernsError, match=r"process 3: groups \[29, 100004\] \(the dumper's ids\) in a user "
                                                    "namespace that denies setgroups or leaves some unmapped"):
        userns_groups.plan(procs, _users())
