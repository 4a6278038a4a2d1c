"""The engine tests' helper (tests/enginecase.py) must be able to fail: its comparison sees a changed
mount, a changed fd offset and changed file data; a failing setup is reported with its output and
leaves nothing running."""

from __future__ import annotations

import pytest

from enginecase import SetupError, assert_same, case, take  # noqa: F401  (fixture)
from zdtm.snapshot import alive

BASE = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; printf 0123456789 > /mnt/t/f; exec 5</mnt/t/f\n"


@pytest.mark.parametrize("change,expect", [
    ("mount -o remount,bind,ro /mnt/t", "ro"),                                    # a mount option
    ("mkdir /mnt/t/x; mount -t tmpfs x /mnt/t/x", "/mnt/t/x"),                    # an extra mount
    ("dd bs=4 count=1 <&5 >/dev/null 2>&1", "pos=4"),                              # an fd offset
    ("printf abcdefghij > /mnt/t/f", "fd data"),                                  # what the fd reads
])
def test_assert_same_sees_differences(case, change, expect):
    a = take(case.start(BASE + "hold\n"))
    b = take(case.start(BASE + change + "\nhold\n"))
    assert_same(a, take(a.pid))  # a tree equals itself
    with pytest.raises(AssertionError) as e:
        assert_same(a, b)
    assert expect in str(e.value)


def test_setup_failure_is_reported(case):
    with pytest.raises(SetupError) as e:
        case.start("echo about to fail\nls /no/such/path\nhold\n")
    assert "about to fail" in str(e.value) and "/no/such/path" in str(e.value)
    assert not any(alive(pid) for pid in case.trees)


def test_background_process_holding_setup_output_is_refused(case):
    with pytest.raises(SetupError, match="stdout/stderr"):
        # a holder in the background that kept setup's stdout (the pipe to the test)
        case.start("/.hold/mntcr-hold 100 &\nhold\n")
    case.close()
    assert not any(alive(pid) for pid in case.trees)
