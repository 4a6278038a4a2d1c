"""engine/timens.py: what dump refuses, the offsets restore gives, the image's TIMENS record."""

import pytest

from engine import imageformat, timens


def _tree(monkeypatch, inos):
    monkeypatch.setattr(timens, "_inos", lambda pid: inos[pid])


def test_creator_before_its_members_is_fine(monkeypatch):
    # 1: the dumper's namespace (10); 2: unshare --fork (10, children 20); 3, 4: in 20
    _tree(monkeypatch, {1: (10, 10), 2: (10, 20), 3: (20, 20), 4: (20, 20)})
    timens.check_tree([1, 2, 3, 4], 10)


def test_member_before_its_creator_refused(monkeypatch):
    # (a process that joined 20 with setns comes first: its stand-in would enter it before it exists)
    _tree(monkeypatch, {1: (10, 10), 3: (20, 20), 2: (10, 20)})
    with pytest.raises(timens.TimensError, match="restored before it"):
        timens.check_tree([1, 3, 2], 10)


def test_children_in_the_dumpers_refused(monkeypatch):
    _tree(monkeypatch, {1: (10, 10), 2: (20, 10)})
    with pytest.raises(timens.TimensError, match="dumper's"):
        timens.check_tree([1, 2], 10)


def test_offsets_kept_on_the_same_boot_raised_after_a_reboot(monkeypatch):
    rec = {"id": "time-1", "offsets": {"monotonic": [500, 0], "boottime": [1000, 999_999_999]},
           "at": {"monotonic": 100 * 10**9, "boottime": 100 * 10**9}}
    monkeypatch.setattr(timens, "host_clocks", lambda: {"monotonic": 200 * 10**9, "boottime": 300 * 10**9})
    assert timens.offsets_now(rec) == rec["offsets"]
    # (a host clock 60 s behind the dump's: the namespace's clock continues where it was)
    monkeypatch.setattr(timens, "host_clocks", lambda: {"monotonic": 40 * 10**9, "boottime": 100 * 10**9})
    assert timens.offsets_now(rec) == {"monotonic": [560, 0], "boottime": [1000, 999_999_999]}


@pytest.mark.parametrize("bad", [{"id": "time-0"}, {"id": "user-1"}, {"offsets": {"monotonic": [0, 0]}},
                                 {"offsets": {"monotonic": [0, 10**9], "boottime": [0, 0]}}, {"at": {"x": 1}}])
def test_record_rejects(bad):
    good = {"id": "time-1", "offsets": {"monotonic": [-5, 0], "boottime": [0, 0]}, "at": {"monotonic": 1, "boottime": 2}}
    imageformat.check_record(imageformat.TIMENS, good, "timens")
    with pytest.raises(imageformat.ImageError):
        imageformat.check_record(imageformat.TIMENS, {**good, **bad}, "timens")
