"""`unshare -rpf` without -m: pid 1 of a pid namespace its user namespace owns, in a mount
namespace the dumper's user namespace owns."""

from __future__ import annotations

import os

import pytest

from enginecase import case, userns_setup  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root")

# unshare(CLONE_NEWUSER | CLONE_NEWPID), then fork: the child is pid 1 of the new pid namespace
RPF = userns_setup(0x20000000, "os.fork()\n")


def test_unshare_rpf_without_a_mount_namespace(case):
    before, after = case.roundtrip(RPF)
    assert len(after.snap.procs) == 3
