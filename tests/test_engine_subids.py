"""engine/subids.py: the host ids an image may say a non-root user mapped (newuidmap's rule)."""

from __future__ import annotations

import grp
import pwd

import pytest

from engine import subids

NOBODY = pwd.getpwnam("nobody")
STRANGER = 4_000_123      # a uid no passwd lists


def _etc(tmp_path, subuid="", subgid=""):
    (tmp_path / "subuid").write_text(subuid)
    (tmp_path / "subgid").write_text(subgid)
    return str(tmp_path)


def _why(tmp_path, owner, uid_map, gid_map, setgroups="deny", **files):
    return subids.refusal("user-1", owner, uid_map, gid_map, setgroups, etc=_etc(tmp_path, **files))


def test_own_ids_one_at_a_time(tmp_path):
    gid = NOBODY.pw_gid
    assert _why(tmp_path, NOBODY.pw_uid, [[0, NOBODY.pw_uid, 1]], [[0, gid, 1]]) is None
    line = _why(tmp_path, NOBODY.pw_uid, [[0, NOBODY.pw_uid - 1, 2]], [[0, gid, 1]])
    assert line == (f"user namespace user-1: made by uid {NOBODY.pw_uid} (nobody), its uid_map maps host uids "
                    f"{NOBODY.pw_uid - 1}-{NOBODY.pw_uid}, which that user could not map here (only its own uid "
                    f"{NOBODY.pw_uid} and its {tmp_path}/subuid ranges: none, as newuidmap): if this image and "
                    f"user are trusted, give the user that range in {tmp_path}/subuid")


def test_subordinate_ranges_by_name_and_by_uid(tmp_path):
    files = dict(subuid="nobody:100000:1000\n# a comment\n65534:101000:1000\nother:300000:10\n",
                 subgid="nobody:100000:2000\n")
    uid_map = [[0, NOBODY.pw_uid, 1], [1, 100000, 2000]]       # across the two adjacent entries
    gid_map = [[0, NOBODY.pw_gid, 1], [1, 100000, 2000]]
    assert _why(tmp_path, NOBODY.pw_uid, uid_map, gid_map, **files) is None
    line = _why(tmp_path, NOBODY.pw_uid, [[0, 100000, 2001]], gid_map, **files)
    assert "maps host uids 100000-102000" in line and "ranges: 100000-100999, 101000-101999" in line
    # another user's range is not this one's
    assert "300000-300009" in _why(tmp_path, NOBODY.pw_uid, [[0, 300000, 10]], gid_map, **files)


def test_groups_the_user_is_not_in_are_refused(tmp_path):
    other = next((g for g in grp.getgrall() if g.gr_gid not in (NOBODY.pw_gid, 0)
                  and "nobody" not in g.gr_mem), None)
    if other is None:
        pytest.skip("no group here that nobody is not in")
    line = _why(tmp_path, NOBODY.pw_uid, [[0, NOBODY.pw_uid, 1]], [[0, other.gr_gid, 1]])
    assert f"its gid_map maps host gids {other.gr_gid}-{other.gr_gid}" in line
    assert f"only its groups [{NOBODY.pw_gid}]" in line and "subgid" in line


def test_user_without_passwd_entry_maps_only_its_uid_and_its_numeric_ranges(tmp_path):
    assert "(no passwd entry on this machine)" in _why(tmp_path, STRANGER, [[0, STRANGER, 1]],
                                                        [[0, STRANGER, 1]])
    files = dict(subgid=f"{STRANGER}:{STRANGER}:1\n")
    assert _why(tmp_path, STRANGER, [[0, STRANGER, 1]], [[0, STRANGER, 1]], **files) is None


def test_missing_files_give_no_ranges(tmp_path):
    assert "ranges: none" in subids.refusal("user-1", NOBODY.pw_uid, [[0, 100000, 1]], [], "deny",
                                            etc=str(tmp_path / "nowhere"))


def test_setgroups_allowed_needs_a_subgid_range(tmp_path):
    """Its own gid alone the kernel (and newgidmap) let a user map only with setgroups denied: allowed,
    it could drop a group that a file's mode shuts out."""
    own = [[0, NOBODY.pw_gid, 1]]
    uid_map = [[0, NOBODY.pw_uid, 1]]
    assert _why(tmp_path, NOBODY.pw_uid, uid_map, own, "deny") is None
    line = _why(tmp_path, NOBODY.pw_uid, uid_map, own, "allow")
    assert line == (f"user namespace user-1: made by uid {NOBODY.pw_uid} (nobody), it allows setgroups, yet its "
                    f"gid_map maps none of its {tmp_path}/subgid ranges (none): that user could map its own "
                    "groups only with setgroups denied (the kernel's rule, and newgidmap's), or drop a group a "
                    "file's mode shuts out")
    files = dict(subgid="nobody:100000:10\n")
    assert _why(tmp_path, NOBODY.pw_uid, uid_map, own + [[1, 100000, 10]], "allow", **files) is None
    assert _why(tmp_path, NOBODY.pw_uid, uid_map, [], "allow") is None      # (no gid map: setgroups fails)


class _Tree:
    """A made-up UsernsTree: the dumper's namespace 1, root's container 2 mapping the host's 0-65535,
    and 3 below it, made by uid 1000 with `maps`."""

    top = 1

    def __init__(self, maps):
        from engine.userns import Maps
        self._maps = {2: Maps(((0, 0, 65536),), ((0, 0, 65536),), "allow", 0), 3: maps}

    def parent(self, key):
        return {2: 1, 3: 2}[key]

    def maps(self, key):
        return self._maps[key]

    def limits(self, key):
        return {}


def test_dump_refuses_a_nested_namespace_a_user_made_that_reaches_the_hosts_root():
    """Restore refuses a user-owned namespace mapping the host's 0 at any depth (its owner gets it):
    dump refused only the top's, so a nested one dumped and then could not be restored."""
    from engine.userns import Maps
    from engine.userns_cr import UsernsError, _Plan
    plan = _Plan()
    plan.users = _Tree(Maps(((0, 0, 1),), ((0, 1000, 1),), "deny", 1000))
    with pytest.raises(UsernsError, match=r"user namespace user-2: owned by uid 1000, yet its uid_map reaches "
                                          r"the host's id 0, which no user but root can map$"):
        plan.name(3)
    plan = _Plan()
    plan.users = _Tree(Maps(((0, 1000, 1),), ((0, 1000, 1),), "deny", 1000))
    assert plan.name(3) == "user-2"      # (below root's: bounded by its parent, not the owner's subuid)
