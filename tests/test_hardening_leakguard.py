"""Gaps of the session leak guard (zdtm/leakguard.py), as tests on made-up mountinfo tables.

The guard compares the host's mountinfo at session start and end by
(mount id, device, root, mount point) and reports mounts that appeared. These
tests pin what it must catch; what it does not see (propagation or flag
changes of host mounts, removed host mounts, other pre-existing mount
namespaces, leftover restored trees) is listed in /work/notes/bugs.md.
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

