"""Gaps of the session leak guard (zdtm/leakguard.py), as tests on made-up mountinfo tables.

The guard compares the host's mountinfo at session start and end by
(mount id, device, root, mount point) and reports mounts that appeared,
disappeared, or changed flags or propagation. These tests pin what it must
catch. It does not look into other mount namespaces that existed before the
session (only this one's table is compared).
"""

from __future__ import annotations

import os

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


# --- attribution: the test's own, another test's of the session, foreign ------------------

SESSION = "0123456789abcdef"
WORK = f"/tmp/zdtm-{SESSION}-x/scenarios_a.yaml.k3j"


def _changes(extra: str) -> leakguard.Changes:
    return leakguard.Changes.between(START, START + extra)


def test_a_mount_under_the_tests_workdir_is_the_tests():
    changes = _changes(f"40 22 0:50 / {WORK}/root rw - tmpfs t rw\n")
    own, foreign = leakguard.attribute(changes, [WORK], [SESSION], sole=False)
    assert [m.mountpoint for m in own.new] == [f"{WORK}/root"] and not foreign


def test_another_tests_mount_is_neither_this_tests_nor_foreign():
    changes = _changes(f"40 22 0:50 / /tmp/zdtm-{SESSION}-x/other.q1 rw - tmpfs t rw\n")
    own, foreign = leakguard.attribute(changes, [WORK], [SESSION], sole=False)
    assert not own and not foreign


def test_a_mount_without_the_sessions_identity_is_foreign():
    changes = _changes("40 21 0:50 / /var/lib/containers/storage/overlay rw - overlay overlay rw\n")
    own, foreign = leakguard.attribute(changes, [WORK], [SESSION], sole=False)
    assert not own and [m.mountpoint for m in foreign.new] == ["/var/lib/containers/storage/overlay"]
    # a foreign unmount and a foreign propagation change too
    end = START.replace("23 21 0:6 / /proc rw,nosuid,nodev,noexec -", "23 21 0:6 / /proc ro,nosuid,nodev,noexec -")
    gone_and_changed = leakguard.Changes.between(START + "41 21 0:51 / /media/usb rw - vfat /dev/sdb1 rw\n", end)
    own, foreign = leakguard.attribute(gone_and_changed, [WORK], [SESSION], sole=False)
    assert not own and [m.mountpoint for m in foreign.gone] == ["/media/usb"]
    assert [b.mountpoint for b, _ in foreign.changed] == ["/proc"]


def test_the_session_id_in_a_source_marks_the_session():
    changes = _changes(f"40 21 0:50 / /mnt rw - tmpfs zdtm-{SESSION}-root rw\n")
    assert not any(leakguard.attribute(changes, [WORK], [SESSION], sole=False))


def test_a_sole_runner_owns_every_change():
    changes = _changes("40 21 0:50 / /mnt rw - tmpfs t rw\n")
    own, foreign = leakguard.attribute(changes, [WORK], [SESSION], sole=True)
    assert [m.mountpoint for m in own.new] == ["/mnt"] and not foreign


def test_directory_marks_match_whole_path_components():
    m = leakguard.mountinfo.parse("40 21 0:50 / /tmp/pytest-10/x rw - tmpfs t rw\n")[0]
    assert leakguard.carries(m, ["/tmp/pytest-10"]) and leakguard.carries(m, ["/tmp/pytest-10/"])
    assert not leakguard.carries(m, ["/tmp/pytest-1"]) and not leakguard.carries(m, [""])


def _fake_proc(tmp_path, procs):
    """procs: pid -> (mnt ns link text, environ bytes or None)."""
    for pid, (ns, env) in procs.items():
        d = tmp_path / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "ns" / "mnt").symlink_to(ns)
        if env is not None:
            (d / "environ").write_bytes(env)
    return str(tmp_path)


def test_namespace_exclusive_only_when_every_process_in_it_is_the_sessions(tmp_path):
    ours = f"{leakguard.SESSION_ENV}={SESSION}".encode()
    proc = _fake_proc(tmp_path, {1: ("mnt:[1]", b"HOME=/\0"), 10: ("mnt:[7]", b""),
                                 11: ("mnt:[7]", b"A=1\0" + ours + b"\0"), 12: ("mnt:[7]", None)})
    # pid 10 is the caller (its marker is set after it started); 12's environ cannot be read: not ours
    proc2 = _fake_proc(tmp_path / "b", {1: ("mnt:[1]", b"HOME=/\0"), 10: ("mnt:[7]", b""),
                                        11: ("mnt:[7]", ours + b"\0")})
    os.symlink("10", os.path.join(proc2, "self"))
    assert leakguard.namespace_exclusive(SESSION, "/proc/self/mountinfo", proc=proc2, me=10)
    os.symlink("10", os.path.join(proc, "self"))
    assert not leakguard.namespace_exclusive(SESSION, "/proc/self/mountinfo", proc=proc, me=10)
    # the host's namespace, shared with pid 1 that carries no marker
    assert not leakguard.namespace_exclusive(SESSION, "/proc/1/mountinfo", proc=proc2, me=10)
