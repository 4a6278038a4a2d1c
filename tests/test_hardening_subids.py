"""Hostile images: a user namespace the image says a non-root user made maps host ids that user
could not have mapped (engine/subids.py, newuidmap's rule). Restore gives the namespace to that
user (every capability in it), so such maps would hand it other users' files. Each image is a real
dump (test_hardening_s13's tree: a child in a user namespace mapping 0-65535 to the host's
100000-165535) changed as an attacker with write access to the image directory would; each is
refused with exit status 2 and one line, nothing left running or mounted
(test_hardening_hostile.refused). The honest case, the same namespace with the user's ranges in
/etc/subuid and /etc/subgid, restores (test_hardening_s15::test_groups_the_owner_has_are_restored).
"""

from __future__ import annotations

import grp

import pytest

import enginecase
from test_hardening_hostile import _mutated, refused
from test_hardening_s13 import SETUP, _fd, _kid
from test_hardening_s15 import _nobody


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The dumped tree of test_hardening_s13's SETUP."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _owned_by(d, owner: int, **maps) -> None:
    ns = d["userns"][_kid(d)["userns"]]
    ns["owner"] = owner
    ns.update(maps)


def _owns_one_gid(d, user, gid: int, **maps) -> None:
    """The child's namespace made by `user`, mapping its uid and host gid `gid` as 0 (its process
    and listener as that root)."""
    _owned_by(d, user.pw_uid, uid_map=[[0, user.pw_uid, 1]], gid_map=[[0, gid, 1]], **maps)
    kid = _kid(d)
    kid["creds"].update(uid=[0, 0, 0, 0], gid=[0, 0, 0, 0], groups=[])
    _fd(kid, 10).update(cred=[user.pw_uid, gid], cred_groups=[gid])   # (its listener)


def test_ranges_the_owner_has_no_subuid_for_are_refused(image, tmp_path):
    """nobody has no /etc/subuid range here: the dumped map (host 100000-165535) is not its to give."""
    nobody = _nobody()
    refused(_mutated(image, tmp_path, lambda d: _owned_by(d, nobody.pw_uid)),
            rf"user namespace user-1: made by uid {nobody.pw_uid} \(nobody\), its uid_map maps host uids "
            r"100000-165535, which that user could not map here \(only its own uid .* and its /etc/subuid ranges: "
            r"none, as newuidmap\): if this image and user are trusted, give the user that range in /etc/subuid",
            tmp_path)


def test_a_group_the_owner_is_not_in_is_refused(image, tmp_path):
    """nobody's namespace mapping a group nobody is not in (disk, sudo...) as its only gid."""
    nobody = _nobody()
    other = next((g for g in grp.getgrall() if g.gr_gid not in (0, nobody.pw_gid) and "nobody" not in g.gr_mem
                  and not 100000 <= g.gr_gid < 165536), None)
    if other is None:
        pytest.skip("no group here that nobody is not in")

    refused(_mutated(image, tmp_path, lambda d: _owns_one_gid(d, nobody, other.gr_gid)),
            rf"user namespace user-1: made by uid {nobody.pw_uid} \(nobody\), its gid_map maps host gids "
            rf"{other.gr_gid}-{other.gr_gid}, which that user could not map here", tmp_path)


def test_setgroups_allowed_on_the_owners_own_group_is_refused(image, tmp_path):
    """nobody's namespace mapping only its own uid and gid, yet allowing setgroups: no user can write
    that (the kernel and newgidmap deny setgroups then), and with it nobody could drop a group."""
    nobody = _nobody()

    refused(_mutated(image, tmp_path, lambda d: _owns_one_gid(d, nobody, nobody.pw_gid, setgroups="allow")),
            rf"user namespace user-1: made by uid {nobody.pw_uid} \(nobody\), it allows setgroups, yet its "
            r"gid_map maps none of its /etc/subgid ranges", tmp_path)
