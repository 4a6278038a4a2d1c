"""User namespaces in the engine: making them, map checks, what dump refuses, locks after restore."""

import fcntl
import os
import re
import struct

import pytest

from engine import forkrun, kernel, userns, userns_cr
import enginecase
from enginecase import case, procs_with  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root")

_TIOCGPTN = 0x80045430   # _IOR('T', 0x30, unsigned int): the pty number of a ptmx fd (termios lacks it)

ROOTLESS = userns.Maps(((0, 100000, 65536),), ((0, 100000, 65536),), "allow")


def test_translate_rewrites_outside_ids_into_the_parent_and_splits_ranges():
    parent = ((0, 100000, 10), (10, 200000, 10))
    assert userns.translate([(0, 100005, 3)], parent) == [(0, 5, 3)]
    assert userns.translate([(0, 100008, 4)], None) == [(0, 100008, 4)]
    with pytest.raises(ValueError, match="id 100010 is not mapped"):
        userns.translate([(0, 100008, 4)], parent)


def test_nested_user_namespace_reads_back_its_maps():
    outer = userns.make(ROOTLESS)
    inner_maps = userns.Maps(((0, 101000, 1000),), ((0, 101000, 1000),), "deny")
    inner = userns.make(inner_maps, outer, ROOTLESS)
    try:
        assert userns.read_maps_of_fd(inner) == inner_maps
        tree = userns.UsernsTree()
        # (the inner one was made by the outer one's root: host uid 100000 owns it)
        assert tree.describe(tree._learn(inner)) == (
            "init > [uid 0 100000 65536 gid 0 100000 65536 setgroups allow] "
            "> [uid 0 101000 1000 gid 0 101000 1000 setgroups deny owner 100000]")
    finally:
        os.close(inner)
        os.close(outer)


def test_a_user_namespace_is_made_by_its_dumped_owner():
    """A rootless runtime's user made its container's user namespace and keeps every capability there
    (setns, ptrace, `runc exec`); restore made it as root, so that user lost them."""
    outer = userns.make(userns.Maps(ROOTLESS.uid_map, ROOTLESS.gid_map, ROOTLESS.setgroups, 100000))
    inner = userns.make(userns.Maps(((0, 101000, 10),), ((0, 101000, 10),), "deny", 101005), outer, ROOTLESS)
    try:
        assert (userns.owner_uid(outer), userns.owner_uid(inner)) == (100000, 101005)
        with pytest.raises(OSError, match="its owner is not mapped in its parent"):
            userns.make(userns.Maps(((0, 101000, 10),), ((0, 101000, 10),), "deny", 300000), outer, ROOTLESS)
    finally:
        os.close(inner)
        os.close(outer)


def _restore_users_without_ids(doc):
    # A user namespace whose maps were never written maps no id: the restoring user "lacks" all.
    kernel.unshare(kernel.CLONE_NEWUSER)
    userns_cr.Rebuild(doc).make_userns()


def test_restore_refuses_ids_the_restoring_user_lacks():
    doc = {"mntns": {}, "processes": [],
           "userns": {"user-1": {"parent": None, "uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]],
                                 "setgroups": "allow"}}}
    with pytest.raises(OSError, match="user namespace user-1: uid_map maps id 100000, which the restoring "
                                      "user's namespace does not have"):
        forkrun.run(_restore_users_without_ids, doc)


def test_a_pid_namespace_of_the_parent_user_namespace_and_a_uts_one_of_its_own_restore(case):
    # The first child of `unshare -p` is pid 1 of a pid namespace owned by the outer user namespace,
    # and then makes a user namespace of its own with a uts namespace in it, its mount namespace the
    # holder's (dump refused it: "its pid namespace belongs to ..., others of its namespaces to its
    # own user namespace"). Its stand-in, forked once the mounts exist, enters its mount namespace,
    # then the outer user namespace, where it makes the pid namespace, then its own, where it makes
    # the uts namespace. (Only the pid namespace: scenarios/userns/pidns_of_parent_userns.yaml.)
    before, after = case.roundtrip("unshare -U -r -p sh -c 'unshare -U -r -u /.hold/mntcr-hold 100000 & "
                                   "exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &\nhold\n")
    assert len(after.snap.procs) == 3, after.snap.procs


def test_superblock_made_from_inside_a_restored_user_namespace_belongs_to_it():
    # What restore does for a superblock the image says a user namespace made (made wholly there:
    # a type on the legacy mount interface, devpts on 6.1, takes its owner from the task that
    # creates it), and the probe that tells ownership (engine/sbowner.py): from inside the user
    # namespace a reconfigure of its own superblock gets past the owner check, of ours not. Its
    # uid= option, in the restorer's ids as mountinfo shows it, is given in the namespace's.
    from engine import sbowner, standin
    from engine.fs import tmpfs
    u = userns.make(ROOTLESS)
    rebuild = userns_cr.Rebuild({"mntns": {}, "processes": [], "userns": {"user-1": {
        "parent": None, "uid_map": [list(r) for r in ROOTLESS.uid_map],
        "gid_map": [list(r) for r in ROOTLESS.gid_map], "setgroups": "allow"}}})
    rebuild.fd["user-1"] = u
    try:
        owned = rebuild.fsmount_in("user-1", "tmpfs", "x", [("uid", "100007"), ("gid", "100008")], 0,
                                   tmpfs.TYPE.id_opts)
        pts = rebuild.fsmount_in("user-1", "devpts", "devpts", [("gid", "100005"), ("mode", "620")], 0,
                                 (("gid", "gid"),))
        ours = standin.fsmount("tmpfs", "x", [], 0)
        try:
            assert forkrun.run(sbowner._capable, u, [owned, pts, ours]) == [True, True, False]
            st = os.fstat(owned)
            assert (st.st_uid, st.st_gid) == (100007, 100008)
            # a new pty gets the instance's gid= (restorer's 100005, the namespace's 5)
            ptmx = os.open(f"/proc/self/fd/{pts}/ptmx", os.O_RDWR | os.O_NOCTTY)
            try:
                n = struct.unpack("I", fcntl.ioctl(ptmx, _TIOCGPTN, b"\0" * 4))[0]
                assert os.stat(f"/proc/self/fd/{pts}/{n}").st_gid == 100005
            finally:
                os.close(ptmx)
        finally:
            for fd in (owned, pts, ours):
                os.close(fd)
        with pytest.raises(OSError, match="its option uid=7 names a uid that user namespace user-1, which owns "
                                          "it, does not map"):
            rebuild.fsmount_in("user-1", "tmpfs", "x", [("uid", "7")], 0, tmpfs.TYPE.id_opts)
    finally:
        rebuild.close()


def test_unlocked_mount_with_locked_flags_is_cloned_with_its_flag_locks():
    # What a bind of an inherited mount made inside a user namespace is (bwrap, LXC unprivileged):
    # unlocked, but its read-only flag cannot be cleared, not even by root.
    import errno as e
    from engine import standin
    u = userns.make(ROOTLESS)
    m = {"id": 2, "mountpoint": "/x", "locked_flags": ["ro", "atime"], "mount_opts": ["ro", "nosuid", "relatime"]}
    rebuild = userns_cr.Rebuild({"mntns": {"mnt-1": {"owner": "user-1", "root": 1, "mounts": [m]}}, "processes": [],
                                 "userns": {}})
    rebuild.fd["user-1"] = u
    try:
        plain = standin.fsmount("tmpfs", "x", [], kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOSUID)
        kernel.mount_setattr(plain, "", kernel.AT_EMPTY_PATH, attr_clr=kernel.MOUNT_ATTR_RDONLY)  # not locked
        kernel.mount_setattr(plain, "", kernel.AT_EMPTY_PATH, attr_set=kernel.MOUNT_ATTR_RDONLY)
        fd = rebuild.lock_flags(m, plain)   # uses `plain` up
        try:
            assert kernel.mount_opts_of_fd(fd)[:2] == ["ro", "nosuid"]
            with pytest.raises(OSError) as err:
                kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_clr=kernel.MOUNT_ATTR_RDONLY)
            assert err.value.errno == e.EPERM
            # nosuid was set but not locked: it may be cleared
            kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, attr_clr=kernel.MOUNT_ATTR_NOSUID)
        finally:
            os.close(fd)
    finally:
        rebuild.close()


def _entry(mid, parent, mountpoint, locked=False, uid=0):
    return {"id": mid, "parent": parent, "mountpoint": mountpoint, "locked": locked, "uid": uid,
            "mount_opts": ["rw"]}


def test_lock_groups_gathers_locked_mounts_below_an_unlocked_one_and_no_others():
    entries = [_entry(1, None, "/", locked=True, uid=1), _entry(2, 1, "/usr", locked=True, uid=2),
               _entry(3, 1, "/sys", uid=3), _entry(5, 4, "/sys/fs/cgroup/x", locked=True, uid=5),
               _entry(4, 3, "/sys/fs/cgroup", locked=True, uid=4), _entry(6, 4, "/sys/fs/cgroup/own", uid=6)]
    groups = userns_cr.lock_groups(entries)
    assert {top: [m["id"] for m in members] for top, members in groups.items()} == {3: [4, 5]}


def test_a_covered_member_of_a_locked_subtree_is_refused_naming_it():
    top = _entry(3, 1, "/sys")
    members = [_entry(4, 3, "/sys/fs/cgroup", locked=True, uid=4), _entry(5, 3, "/sys/fs/cgroup", locked=True, uid=5)]
    with pytest.raises(userns_cr.UsernsError, match=r"mount 5 \(/sys/fs/cgroup\): locked below the unlocked mount 3 "
                                                    r"\(/sys\) and covered there"):
        userns_cr._check_group(top, members, ["atime"], set())
    with pytest.raises(userns_cr.UsernsError, match="whose atime is not locked"):
        userns_cr._check_group(top, members[:1], [], set())


def test_a_daemon_superblock_made_inside_a_user_namespace_is_refused_at_dump(monkeypatch):
    # fuse (rootless fuse-overlayfs) is made by its type's own hook, which cannot make it owned.
    import types
    monkeypatch.setattr(userns_cr, "sb_owner_candidates", lambda tree, plan: [])
    owners = {"0:99": "user-1", "0:98": "user-1"}
    from engine import sbowner   # (userns_cr imports it in record_sb_owners: that module's probe)
    monkeypatch.setattr(sbowner, "probe", lambda pid, mounts, cands, clone=None: owners)
    mounts = [types.SimpleNamespace(mnt_id=7, mountpoint="/run/c", dev="0:98"),
              types.SimpleNamespace(mnt_id=8, mountpoint="/run/c/fuse", dev="0:99")]
    sbs = {"sb-0": {"fstype": "tmpfs"}, "sb-1": {"fstype": "fuse.zdtm"}}
    with pytest.raises(userns_cr.UsernsError, match=r"mount 8 \(/run/c/fuse\) on fuse.zdtm: its superblock was "
                                                    "made inside a user namespace"):
        userns_cr.record_sb_owners(1, mounts, {"0:98": "sb-0", "0:99": "sb-1"}, sbs, [], {})


@pytest.mark.skipif(os.geteuid() != 0, reason="changing ids needs root")
def test_a_program_run_with_a_userns_owners_ids_keeps_its_capabilities_without_a_setuid_exec():
    """The archive of a userns-owned superblock is extracted by tar running as the owner's root ids
    with root's file capabilities ambient. Its real id must be that id too: an exec whose effective
    id differs from the real one is set-user-id to older kernels (6.1, not 6.18), which then drop the ambient
    set (tar could not chown a full map's files in a 6.1 VM: userns/full_map)."""
    import subprocess
    proc = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: kernel.become_ids_keeping_caps(123456, 123457))
    status = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert status["Uid"].split() == ["123456"] * 4, status["Uid"]
    assert status["Gid"].split() == ["123457"] * 4, status["Gid"]
    for name in ("CapEff", "CapAmb"):
        have = int(status[name], 16)
        missing = [c for c in kernel.FILE_CAPS if not have >> c & 1]
        assert not missing, f"{name} lacks capabilities {missing}"


def test_lock_probe_of_a_namespace_with_an_unbindable_mount(tmp_path):
    # CRIU's unbindable test in the uns flavor: the probe's copy of the namespace loses MNT_UNBINDABLE
    # (Linux 6.18), which used to read as "the namespace changed while it was probed".
    import subprocess
    from engine import mntlocks, mountinfo, topology
    d = tmp_path / "u"
    d.mkdir()
    script = f"mount -t tmpfs unb {d} && mount --make-unbindable {d} && echo ready && exec sleep 1000"
    p = subprocess.Popen(["unshare", "-U", "-r", "-m", "--propagation", "private", "sh", "-c", script],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        mounts = mountinfo.read_pid(p.pid)
        canon = topology.canonical(mounts)
        unb = next(m for m in mounts if m.mountpoint == str(d))
        assert unb.unbindable
        got = mntlocks.probe(p.pid, mounts, canon.text)
        assert isinstance(got, dict), got
        assert got[canon.label(unb.mnt_id)] == "unlocked"      # mounted inside the user namespace
        assert set(got) == {canon.label(m.mnt_id) for m in mounts}
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


REUSED_IDS = """
mkdir /mnt/pad /run/u
for i in 0 1 2 3 4 5 6 7; do mkdir /mnt/pad/$i; mount -t tmpfs pad /mnt/pad/$i; done
unshare -U -r -m --propagation private sh -c 'touch /run/u/in; while [ ! -e /run/u/go ]; do sleep 0.05; done
  mkdir -p /tmp/own; mount -t tmpfs own /tmp/own; touch /run/u/done; exec /.hold/mntcr-hold 100000' \
  </dev/null >/dev/null 2>&1 &
wait_for /run/u/in
for i in 0 1 2 3 4 5 6 7; do umount /mnt/pad/$i; done
sleep 0.5
touch /run/u/go
wait_for /run/u/done
hold
"""


def test_owned_namespace_restored_whatever_the_legacy_id_order(case, monkeypatch):
    """Without unique mount ids (ids=mountinfo, before 6.8) a mount made inside a user namespace's
    mount namespace may get a lower legacy id than that namespace's root (ids are reused): restore
    still attaches the root and the locked mounts before it copies the namespace into its user
    namespace (it failed "locked but not attached before ... is copied" when ids were reused)."""
    monkeypatch.setenv("MNTCR_STRATEGY", "ids=mountinfo")
    pid = case.start(REUSED_IDS)
    child = next(int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()
                 if os.readlink(f"/proc/{p}/ns/mnt") != os.readlink(f"/proc/{pid}/ns/mnt"))
    with open(f"/proc/{child}/mountinfo") as f:
        ids = {line.split()[4]: int(line.split()[0]) for line in f}
    if ids["/tmp/own"] > ids["/"]:
        pytest.skip("the kernel gave the inner tmpfs no reused (lower) mount id this time")
    before = enginecase.take(pid)
    new = case.cr(pid)
    enginecase.assert_same(before, enginecase.take(new))


def test_a_fuse_made_inside_a_user_namespace_is_refused_unstopped(case):
    """bindfs mounted by a process in a user namespace of its own (rootless fuse-overlayfs does the
    same): restore makes fuse with its type's own hook, which makes no superblock owned by a user
    namespace. The probe that tells the owner changes nothing, so dump asks it before the stop:
    refused naming the mount, and the tree never stopped."""
    import shutil
    if shutil.which("bindfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("bindfs or /dev/fuse missing")
    pid = case.start(enginecase.STOP_WATCH + "mknod -m 666 /dev/fuse c 10 229; mkdir -p /run/src /mnt/fuse\n"
                     "mount -t tmpfs src /run/src\n"
                     # (bindfs under the name the test waits for: every process of the tree holds)
                     f"mkdir /run/bin; ln -s {shutil.which('bindfs')} /run/bin/mntcr-hold\n"
                     "unshare -U -r -m --propagation unchanged sh -c '/run/bin/mntcr-hold --no-allow-other /run/src "
                     "/mnt/fuse </dev/null >/dev/null 2>&1 && exec /.hold/mntcr-hold 100000' </dev/null >/dev/null "
                     "2>&1 &\nhold\n")
    with pytest.raises(enginecase.CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"mount \d+ \(/mnt/fuse\) on (fuse[.\w-]*): its superblock was made inside a user namespace, "
                     r"which restore cannot do for \1 yet", str(err.value)), err.value
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"


def test_user_namespace_limits_read_back_and_a_bad_one_is_refused_by_the_image_check():
    """bwrap --disable-userns sets its sandbox's user.max_user_namespaces: a restored sandbox without
    it could make user namespaces again. A new namespace reads as having none set."""
    from engine import imageformat
    fd = userns.make(ROOTLESS)
    try:
        assert userns.read_limits(fd) == {}
        userns.set_limits(fd, {"user_namespaces": 1, "mnt_namespaces": 7})
        assert userns.read_limits(fd) == {"user_namespaces": 1, "mnt_namespaces": 7}
    finally:
        os.close(fd)
    assert imageformat._limits_rule({"user_namespaces": 0}) is None
    assert "not a user namespace limit" in imageformat._limits_rule({"max_user_namespaces": 1})
    assert "0..2^31-1" in imageformat._limits_rule({"user_namespaces": -1})


CHRUN_ROOT = """mkdir -p /run/img/.hold /run/img/usr /run/img/x /run/img/sys /sys
mount -t sysfs sysfs /sys
for d in bin lib lib64 sbin; do [ -e /$d ] && ln -s usr/$d /run/img/$d; done
unshare -U -r -m --propagation private sh -c '
  mount --bind /run/img /run/img
  mount --bind /.hold /run/img/.hold
  mount --rbind /usr /run/img/usr
  mount --bind /sys /run/img/sys
  mount -t tmpfs own /run/img/x
  cd /run/img && mount --move . / && exec chroot . /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
hold
"""


def test_an_unlocked_root_bound_inside_a_user_namespace_comes_back_unlocked(case):
    """ch-run's root: a bind of the image made inside the user namespace and moved over "/" (the
    locked root it copied stays beneath, out of reach). Dump refused it ("the root ... is not
    locked"); restore mounts a clone of the root over the root the copy into the user namespace
    locked, so the root is unlocked again, its own mounts and the bound host dirs on it. The
    host's sysfs bound inside keeps its locked atime (a clone: restore mounts no sysfs there,
    which would take it from the visible one; it came back with no flag locks)."""
    pid = case.start(CHRUN_ROOT)
    child = next(int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()
                 if os.readlink(f"/proc/{p}/ns/mnt") != os.readlink(f"/proc/{pid}/ns/mnt"))
    before = enginecase.take(pid)
    inner = next(p for p in before.snap.procs if p.pid == child)
    # (unlocked, with the flag locks of the mount it was bound from)
    assert "/: unlocked flags=atime" in inner.lock_lines(), inner.lock_lines()
    assert "/sys: unlocked flags=atime" in inner.lock_lines(), inner.lock_lines()
    new = case.cr(pid)
    enginecase.assert_same(before, enginecase.take(new))


def test_a_process_standing_on_a_user_namespaces_fuse_is_refused_unstopped(case):
    """A process whose cwd lies on a FUSE filesystem mounted inside a user namespace (rootless
    podman's fuse-overlayfs root): the kernel answers only that namespace's processes, so dump's
    looks at it failed deep inside with a bare "statx(''): Permission denied" or "lock probe
    failed". Refused first, in one line naming the process, and the tree never stopped."""
    import shutil
    if shutil.which("bindfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("bindfs or /dev/fuse missing")
    pid = case.start(enginecase.STOP_WATCH + "mknod -m 666 /dev/fuse c 10 229; mkdir -p /run/src /mnt/fuse\n"
                     "mount -t tmpfs src /run/src\n"
                     # (bindfs under the name the test waits for: every process of the tree holds)
                     f"mkdir /run/bin; ln -s {shutil.which('bindfs')} /run/bin/mntcr-hold\n"
                     # (as uid 100000: root of the runner's namespace is not the mount's owner, as with podman)
                     "chmod 777 /run/src /mnt/fuse\n"
                     "setpriv --reuid=100000 --regid=100000 --clear-groups "
                     "unshare -U -r -m --propagation unchanged sh -c '/run/bin/mntcr-hold --no-allow-other /run/src /mnt/fuse "
                     "</dev/null >/dev/null 2>&1 && cd /mnt/fuse && exec /.hold/mntcr-hold 100000' </dev/null "
                     ">/dev/null 2>&1 &\nhold\n")
    with pytest.raises(enginecase.CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ \(mntcr-hold\): its cwd lies on a filesystem that refuses the dumper \(a FUSE "
                     r"filesystem mounted inside a user namespace", str(err.value)), err.value
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
