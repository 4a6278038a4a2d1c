"""Engine round trips of trees a user makes by hand with unshare on the host (issue s22-rootless).

Each tree is built in a throwaway container that keeps the test's pid namespace (the tree's
unshare then behaves as it does from a shell of the host), dumped, restored and compared.
"""

from __future__ import annotations

import os
import re

import pytest

from enginecase import case  # noqa: F401  (fixture)


CMDS = {"alone": "exec /.hold/mntcr-hold 1000000",
        "with_child": "/.hold/mntcr-hold 1000000 & exec /.hold/mntcr-hold 1000000"}


@pytest.mark.parametrize("cmd", ["alone", "with_child"])
def test_unshare_userns_pidns_tree_keeps_the_hosts_cgroup2(case, cmd):
    """`unshare -Urmpf --mount-proc CMD` with a cgroup2 of the restorer's user and cgroup namespaces
    in the copied table: CMD, pid 1 of a pid namespace its user namespace owns, starts inside that
    user namespace at restore, so it may not make the cgroup2; the restorer makes it (was: dump
    succeeded, restore failed 'creating cgroup2: fsconfig(6): Operation not permitted'). Also when
    CMD has a child (`sh -c 'sleep | cat'`): its stand-in, forked by pid 1's, is in that user
    namespace too (it was taken for one of the restorer's, asked to make the cgroup2: EPERM)."""
    from enginecase import DUMP_EXTERNALS, assert_same, in_own_pidns, load_manifest, mntcr, take
    # (in the test's uts and ipc namespaces, as from a shell of the host: the container's own,
    # which init's user namespace owns, a stand-in that starts in the tree's could not make)
    me = os.getpid()
    setup = ("mkdir /mnt/cg; mount -t cgroup2 none /mnt/cg\n"
             f"exec nsenter --uts=/proc/{me}/ns/uts --ipc=/proc/{me}/ns/ipc unshare -U -r -m -p -f --mount-proc --propagation private sh -c "
             f"'exec </dev/null >/dev/null 2>&1; {CMDS[cmd]}' </dev/null >/dev/null 2>&1\n")
    child = in_own_pidns(case.start(setup, host_pidns=True, daemons=("unshare",)))
    before = take(child)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(child), "-D", images, *DUMP_EXTERNALS)
    assert r.returncode == 0, r.stderr
    doc = load_manifest(images)
    assert [sb.get("owner") for sb in doc["superblocks"].values() if sb["fstype"] == "cgroup2"] == [None]
    assert doc["processes"][0].get("userns_first"), "the tree no longer starts in its user namespace"
    restored = case.restore(images)
    assert_same(before, take(restored))


def test_device_opened_outside_on_a_nodev_path_is_refused_before_the_stop(case):
    """A process holding /dev/null opened before it unshared (stdin of a bwrap sandbox whose /dev
    is the host's bound nodev): the fd's mount is outside the dumped namespace and its path there
    lies on a nodev mount, where restore cannot open a device. Refused before the stop in one line
    (was: dump succeeded, restore failed "openat2('null'): Permission denied")."""
    import enginecase
    setup = ("exec unshare -U -r -m --propagation private sh -c "
             "'mount -o remount,bind,nodev /dev && exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    pid = case.start(setup, host_pidns=True)
    with pytest.raises(enginecase.CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(rf"process {pid} fd 0 \(/dev/null\): a device opened through a mount outside the dumped "
                     r"namespaces, whose path there lies on a nodev mount", str(err.value)), err.value
    assert len(err.value.proc.stderr.strip().splitlines()) == 1, err.value
    assert open(f"/proc/{pid}/stat").read().split(") ")[1][0] not in "Tt"


def test_cwd_on_a_covered_mount_of_a_user_namespaces_mount_namespace(case):
    """`cd /mnt/stack; mount -t tmpfs over /mnt/stack; unshare -Urm CMD`: CMD's cwd lies on the
    covered tmpfs, locked beneath the cover in the copy its user namespace owns, where no path
    reaches it. Restored there (was: restore failed with a raw KeyError in restore._open_at)."""
    import enginecase
    setup = ("mkdir /mnt/stack /mnt/view\n"
             "mount -t tmpfs under /mnt/stack; echo beneath > /mnt/stack/f\n"
             "mount --bind /mnt/stack /mnt/view\n"
             "cd /mnt/stack\n"
             "mount -t tmpfs over /mnt/stack; echo top > /mnt/stack/t\n"
             "exec unshare -U -r -m --propagation private sh -c "
             "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    pid = case.start(setup, host_pidns=True)
    before = enginecase.take(pid)
    assert sorted(os.listdir(f"/proc/{pid}/cwd")) == ["f"]
    restored = case.cr(pid)
    enginecase.assert_same(before, enginecase.take(restored))
    assert sorted(os.listdir(f"/proc/{restored}/cwd")) == ["f"]
    assert open(f"/proc/{restored}/cwd/f").read() == "beneath\n"


def test_unshare_userns_pidns_tree_in_the_containers_uts_and_ipc(case):
    """`unshare -Urmpf --mount-proc CMD` dumped from inside a container, in its uts and ipc
    namespaces (not the restorer's: the container's, which init's user namespace owns, with a
    hostname, System V objects and a mqueue mount): CMD's stand-in starts inside its user namespace, and joins the
    uts and ipc namespaces the restorer makes before it enters, so that they belong to init's user
    namespace again (was: made by the stand-in, they came back owned by CMD's user namespace)."""
    from enginecase import DUMP_EXTERNALS, assert_same, in_own_pidns, load_manifest, mntcr, take
    setup = ("hostname box; ipcmk -M 4096 >/dev/null; ipcmk -Q >/dev/null\n"
             # (its mqueue: made by the restorer, whose user namespace owns the ipc namespace)
             "mkdir /run/mq; mount -t mqueue none /run/mq; touch /run/mq/q\n"
             "exec unshare -U -r -m -p -f --mount-proc --propagation private sh -c "
             "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    child = in_own_pidns(case.start(setup, host_pidns=True, daemons=("unshare",)))
    before = take(child)
    text = before.snap.procs[0].text()
    assert "ns owners: mnt=own pid=own uts=init ipc=init" in text and "uts names: host='box'" in text, text
    assert re.search(r"ipc sysctls: .*; msg .*; shm ", text), text
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(child), "-D", images, *DUMP_EXTERNALS)
    assert r.returncode == 0, r.stderr
    (p,) = load_manifest(images)["processes"]
    assert p.get("userns_first") and p.get("ns_before_userns") == ["ipc", "uts"], p
    restored = case.restore(images)
    assert_same(before, take(restored))


@pytest.mark.parametrize("where", ["/mnt/stack/sub", "/mnt/stack/sub/d"])
def test_cwd_on_a_mount_hidden_under_a_cover_of_its_parent(case, where):
    """`cd /mnt/stack/sub; mount -t tmpfs over /mnt/stack; unshare -Urm CMD`: CMD's cwd lies on
    the tmpfs mounted at /mnt/stack/sub, which the cover over its parent hides (locked over it in
    the copy its user namespace owns). Restored there, reached like a covered mount (was: dump
    succeeded, restore failed 'user namespaces: No such file or directory': it was looked for by
    its path, which leads into the cover)."""
    import enginecase
    setup = ("mkdir /mnt/stack /mnt/view /mnt/subview\n"
             "mount -t tmpfs under /mnt/stack; mkdir /mnt/stack/sub\n"
             "mount -t tmpfs sub /mnt/stack/sub; mkdir /mnt/stack/sub/d; echo beneath > /mnt/stack/sub/f\n"
             "mount --bind /mnt/stack /mnt/view; mount --bind /mnt/stack/sub /mnt/subview\n"
             f"cd {where}\n"
             "mount -t tmpfs over /mnt/stack; echo top > /mnt/stack/t\n"
             "exec unshare -U -r -m --propagation private sh -c "
             "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    pid = case.start(setup, host_pidns=True)
    before = enginecase.take(pid)
    assert open(f"/proc/{pid}/cwd/{os.path.relpath('/mnt/stack/sub/f', where)}").read() == "beneath\n"
    restored = case.cr(pid)
    enginecase.assert_same(before, enginecase.take(restored))
    assert os.readlink(f"/proc/{restored}/cwd") == where
    assert open(f"/proc/{restored}/cwd/{os.path.relpath('/mnt/stack/sub/f', where)}").read() == "beneath\n"


def test_unshare_userns_in_a_containers_pid_namespace(case):
    """`unshare -Urmu CMD` as pid 1 of a container (its pid and ipc namespaces, and its /proc, the
    container's, which init's user namespace owns): CMD's stand-in starts inside its user
    namespace (its uts namespace belongs there) but makes its pid namespace before it enters, and
    the restorer makes the proc of that pid namespace, so that init's user namespace owns both
    again (was: both came back owned by CMD's user namespace; then refused at dump)."""
    import enginecase
    setup = ("exec unshare -U -r -m -u sh -c 'hostname inner; exec </dev/null >/dev/null 2>&1; "
             "/.hold/mntcr-hold 1000000 & exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    pid = case.start(setup)
    before = enginecase.take(pid)
    text = before.snap.procs[0].text()
    assert "ns owners: mnt=own pid=init uts=own ipc=init" in text, text
    assert len(before.snap.procs) == 2, before.snap.procs
    images = case.new_images_dir()
    case.dump(pid, images)
    p = enginecase.load_manifest(images)["processes"][0]
    assert p.get("userns_first") and p.get("ns_before_userns") == ["ipc", "pid"], p
    restored = case.restore(images)
    enginecase.assert_same(before, enginecase.take(restored))


def test_an_overlay_hidden_under_a_cover_of_its_parents_directory(case):
    """A tmpfs at /mnt/s holding an overlay's layers and the overlay at /mnt/s/d/ov/m, then a tmpfs
    over /mnt/s/d, then `unshare -Urm CMD` (found by random trees run through unshare -Urm): in
    the copy its user namespace owns, the cover hides both. The tmpfs's files are archived
    through its bind at /mnt/view, which has nothing mounted on it (was: through /mnt/s, cloned
    with the locked mounts on it, so tar left out d, the cover's mount point: the restore found no
    layers), and the overlay, hidden though it is no cover's parent, is not looked for by its path
    in the copy (was: 'user namespaces: No such file or directory')."""
    import enginecase
    setup = ("mkdir /mnt/s /mnt/view; mount -t tmpfs base /mnt/s; mount --bind /mnt/s /mnt/view\n"
             "mkdir -p /mnt/s/d/ov/l /mnt/s/d/ov/u /mnt/s/d/ov/w /mnt/s/d/ov/m; echo low > /mnt/s/d/ov/l/x\n"
             "mount -t overlay ov -o lowerdir=/mnt/s/d/ov/l,upperdir=/mnt/s/d/ov/u,workdir=/mnt/s/d/ov/w "
             "/mnt/s/d/ov/m; echo up > /mnt/s/d/ov/m/y\n"
             "mount -t tmpfs cover /mnt/s/d\n"
             "exec unshare -U -r -m --propagation private sh -c "
             "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    pid = case.start(setup, host_pidns=True)
    before = enginecase.take(pid)
    restored = case.cr(pid)
    enginecase.assert_same(before, enginecase.take(restored))
    assert open(f"/proc/{restored}/root/mnt/view/d/ov/u/y").read() == "up\n"
