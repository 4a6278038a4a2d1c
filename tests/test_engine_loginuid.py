"""engine/loginuid.py: kept only where it differs from the dumper's; a child may take it."""

import os

import pytest

from engine import forkrun, loginuid


@pytest.mark.skipif(not os.path.exists("/proc/self/loginuid"), reason="a kernel without audit")
def test_ours_is_not_kept():
    assert loginuid.read(os.getpid()) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/loginuid") or loginuid.value("self") != loginuid.UNSET,
                    reason="needs an unset login uid of ours (a set one may not change without CAP_AUDIT_CONTROL)")
def test_a_child_takes_one_and_is_kept():
    # (what the stand-in does: its own, which then differs from ours)
    def child():
        loginuid.take(4242)
        return loginuid.value("self")
    assert forkrun.run(child) == 4242
    loginuid.precheck([os.getpid()])   # (ours: nothing to probe)
