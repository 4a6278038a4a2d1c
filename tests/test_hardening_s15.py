"""Hostile images against session 15's surface: supplementary groups a process holds that its user
namespace does not map ("unmapped_groups": `unshare -r` or bwrap by a user of several groups),
which restore, root, gives its stand-in before it enters (engine/userns_groups.py). A namespace a
non-root user made may hold only groups that user has on this machine (engine/ownergroups.py).

Each image is a real dump (test_hardening_s13's tree: a child in a user namespace mapping 0-65535
to the host's 100000-165535, holding a listener) changed the way an attacker with write access to
the image directory would; each must be refused with exit status 2 and one line, nothing left
running or mounted (test_hardening_hostile.refused), or, where an honest dump could make it,
restored.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct

import pytest

import enginecase
from test_hardening_hostile import _mutated, refused
from test_hardening_s13 import SETUP, _fd, _kid, _restored


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The dumped tree of test_hardening_s13's SETUP."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this machine")


def _unknown_uid() -> int:
    for uid in range(3999999, 3999999 - 50, -1):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("no unknown uid near 3999999")


def _held(d, owner, groups, **listener) -> None:
    """The child's namespace made by uid `owner` (None: root), the child holding unmapped `groups`,
    its listener (fd 10) changed."""
    kid = _kid(d)
    d["userns"][kid["userns"]]["owner"] = owner
    kid["creds"]["unmapped_groups"] = groups
    _fd(kid, 10).update(listener)


def test_groups_of_an_unknown_owner_are_refused(image, tmp_path):
    """The namespace's owner has no passwd entry here: nothing tells which groups it could hold."""
    uid = _unknown_uid()
    refused(_mutated(image, tmp_path, lambda d: _held(d, uid, [27])),
            rf"process \d+: supplementary groups \[27\], which the user namespace uid {uid} made does not map, "
            rf"and uid {uid} has no passwd entry on this machine", tmp_path)


@pytest.mark.parametrize("group", [0, 6, 42], ids=["root", "disk", "shadow"])
def test_groups_the_owner_lacks_are_refused(image, tmp_path, group):
    """nobody made the namespace; the image gives its process the host's group 0 (disk, shadow):
    groups nobody is not in here, refused before anything is made."""
    nobody = _nobody()
    if group in os.getgrouplist(nobody.pw_name, nobody.pw_gid):
        pytest.skip(f"nobody is in group {group} here")
    refused(_mutated(image, tmp_path, lambda d: _held(d, nobody.pw_uid, [group])),
            rf"process \d+: supplementary groups \[{group}\], which the user namespace uid {nobody.pw_uid} made "
            rf"does not map, and uid {nobody.pw_uid} is not in them on this machine", tmp_path)


def test_unmapped_group_the_namespace_maps_is_refused(image, tmp_path):
    """An "unmapped" group the namespace maps (the host's 100005, its 5): no dump writes it so."""
    refused(_mutated(image, tmp_path, lambda d: _held(d, None, [100005])),
            r"process \d+: unmapped group 100005 is mapped in its user namespace user-1", tmp_path)


def test_unmapped_groups_without_a_user_namespace_are_refused(image, tmp_path):
    """A process in the restorer's user namespace has no unmapped groups."""
    def mutate(d):
        root = d["processes"][0]
        root["creds"] = {"uid": [0] * 4, "gid": [0] * 4, "groups": [], "unmapped_groups": [0]}
    refused(_mutated(image, tmp_path, mutate), r"process \d+: unmapped_groups without a user namespace", tmp_path)


def test_listener_groups_the_process_does_not_hold_stay_refused(image, tmp_path):
    """The process holds nobody's group unmapped; its listener claims disk too: refused (a
    listener may name unmapped groups its process holds, no others)."""
    nobody = _nobody()
    refused(_mutated(image, tmp_path, lambda d: _held(d, nobody.pw_uid, [nobody.pw_gid],
                                                      cred_groups=[100000, nobody.pw_gid, 6])),
            rf"process \d+ fd 10: takes gid 6 at restore, which user namespace user-1, made by uid {nobody.pw_uid}, "
            "does not map", tmp_path)


def test_groups_the_owner_has_are_restored(image, tmp_path):
    """nobody made the namespace and its process holds nobody's primary group, unmapped there, and
    its listener listened with it: restored, the process holds it (the host's view, and 65534,
    the overflow gid, inside), and the listener's clients see it."""
    nobody = _nobody()
    gid = nobody.pw_gid
    if 100000 <= gid < 165536:
        pytest.skip("nobody's group is mapped in the test's namespace")
    img = _mutated(image, tmp_path, lambda d: _held(d, nobody.pw_uid, [gid], cred_groups=[100000, gid]))
    with _restored(img, tmp_path, subids=f"{nobody.pw_uid}:100000:65536\n") as root:   # (its ranges here)
        with open(f"/proc/{root}/task/{root}/children") as f:
            kid = int(f.read().split()[0])
        with open(f"/proc/{kid}/status") as f:
            groups = next(line.split()[1:] for line in f if line.startswith("Groups:"))
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(f"/proc/{kid}/root/run/k/kid.sock")
            peer = c.getsockopt(socket.SOL_SOCKET, 59, 64)   # SO_PEERGROUPS
    assert groups == [str(gid)], groups   # (the dumped child held none else)
    assert sorted(struct.unpack(f"{len(peer) // 4}I", peer)) == sorted([100000, gid])
