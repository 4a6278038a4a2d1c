"""Gaps of the session leak guard (zdtm/leakguard.py), as tests on made-up mountinfo tables.

The guard compares the host's mountinfo at session start and end by
(mount id, device, root, mount point) and reports mounts that appeared,
disappeared, or changed flags or propagation. These tests pin what it must
catch. It does not look into other mount namespaces that existed before the
session (only this one's table is compared).
"""

from __future__ import annotations

from zdtm import leakguard

START = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
22 21 0:5 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
23 21 0:6 / /proc rw,nosuid,nodev,noexec - proc proc rw
"""


def test_a_new_mount_is_a_leak():
    end = START + "40 22 0:50 / /tmp/x rw - tmpfs t rw\n"
    leaked = leakguard.leaked(START, end)
    assert [m.mountpoint for m in leaked] == ["/tmp/x"]
    assert "umount -l /tmp/x" in leakguard.describe(leaked)


def test_a_reused_mount_id_on_another_mount_point_is_a_leak():
    end = START.replace("22 21 0:5 / /tmp", "22 21 0:5 / /mnt")
    assert [m.mountpoint for m in leakguard.leaked(START, end)] == ["/mnt"]


def test_an_unchanged_table_is_clean():
    assert leakguard.leaked(START, START) == []



def test_a_propagation_change_of_a_host_mount_is_reported():
    end = START.replace("22 21 0:5 / /tmp rw,nosuid shared:2", "22 21 0:5 / /tmp rw,nosuid")
    pairs = leakguard.changed(START, end)
    assert [(b.mountpoint, b.shared, a.shared) for b, a in pairs] == [("/tmp", 2, None)]
    assert "host mount changed: /tmp (mount id 22): rw,nosuid shared:2 -> rw,nosuid" in \
        leakguard.describe_changed(pairs)
    assert leakguard.leaked(START, end) == [] and leakguard.gone(START, end) == []


def test_a_flag_change_of_a_host_mount_is_reported():
    end = START.replace("23 21 0:6 / /proc rw,nosuid", "23 21 0:6 / /proc ro,nosuid")
    assert [(b.mount_opts[0], a.mount_opts[0]) for b, a in leakguard.changed(START, end)] == [("rw", "ro")]
    assert leakguard.changed(START, START) == []


def test_tracker_reports_changes_per_step(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(START)
    tracker = leakguard.Tracker(str(table))
    table.write_text(START.replace("shared:1", "shared:1 master:7"))
    new, vanished, altered = tracker.step()
    assert (new, vanished) == ([], []) and [b.mountpoint for b, _ in altered] == ["/"]
    assert tracker.step() == ([], [], [])   # reported once
