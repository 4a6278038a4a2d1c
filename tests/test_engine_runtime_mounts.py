"""Engine round trips of the mount tables real container runtimes make (issue 14, items 1-4, 7).

runc and podman mask /proc/acpi with a read-only tmpfs; systemd-nspawn binds
files that are deleted afterwards; a service with a private /proc lives in
the host's pid namespace. Each case is built in a throwaway container
(tests/enginecase.py), dumped, restored and compared.
"""

from __future__ import annotations

import re

import pytest

import enginecase
from enginecase import case  # noqa: F401  (fixture)


def test_ro_tmpfs_empty(case):
    """`mount -t tmpfs -o ro tmpfs /proc/acpi`-style masking: an empty read-only tmpfs."""
    setup = """
mkdir /mnt/acpi
mount -t tmpfs -o ro tmpfs /mnt/acpi
hold
"""
    before, after = case.roundtrip(setup, check="grep ' /mnt/acpi ' /proc/self/mountinfo | cut -d' ' -f5-")
    assert "ro" in after.snap.check_output


def test_ro_tmpfs_with_files(case):
    """A tmpfs filled, then remounted read-only (superblock ro), with a rw bind of it (per-mount rw
    over an ro superblock is still ro) and an ro bind of a rw tmpfs (per-mount ro kept)."""
    setup = """
mkdir /mnt/t /mnt/b /mnt/w /mnt/wro
mount -t tmpfs -o mode=0755 data /mnt/t
mkdir /mnt/t/d; echo hello > /mnt/t/d/f
mount --bind /mnt/t/d /mnt/b
mount -o remount,ro /mnt/t
mount -t tmpfs w /mnt/w; echo w > /mnt/w/f
mount --bind /mnt/w /mnt/wro; mount -o remount,bind,ro /mnt/wro
exec 7</mnt/t/d/f
hold
"""
    check = """
grep -E ' /mnt/(t|b|w|wro) ' /proc/self/mountinfo | cut -d' ' -f5- | sed 's/ shared:[0-9]*//'
cat /mnt/b/f /mnt/wro/f
touch /mnt/t/x 2>&1 | sed 's/.*: //'
touch /mnt/wro/x 2>&1 | sed 's/.*: //'
"""
    before, after = case.roundtrip(setup, check=check)
    out = after.snap.check_output
    assert "hello" in out and "Read-only file system" in out


EMPTY_SOURCE_MOUNT = """python3 -c 'import ctypes, sys; sys.exit(ctypes.CDLL(None, use_errno=True).mount(b"", b"/mnt/e", b"tmpfs", 0, None))'"""


def test_empty_mount_source(case):
    """mount("", "/mnt/e", "tmpfs"): mountinfo shows `- tmpfs  rw` (an empty source field)."""
    setup = f"""
mkdir /mnt/e
{EMPTY_SOURCE_MOUNT}
echo data > /mnt/e/f
hold
"""
    check = "grep ' /mnt/e ' /proc/self/mountinfo | cut -d' ' -f5- | sed 's/ shared:[0-9]*//'; cat /mnt/e/f"
    before, after = case.roundtrip(setup, check=check)
    assert "- tmpfs  rw" in after.snap.check_output and "data" in after.snap.check_output


def test_file_bind_of_unmounted_tmpfs(case):
    """A file bind whose tmpfs has no directory-rooted mount left (`umount /s` after the bind)."""
    setup = """
mkdir /s; mount -t tmpfs x /s
echo d > /s/file; echo other > /s/other
touch /mnt/target /mnt/target2
mount --bind /s/file /mnt/target
mount --bind /s/file /mnt/target2
umount /s
exec 7</mnt/target
hold
"""
    check = "cat /mnt/target /mnt/target2; grep -c ' /mnt/target' /proc/self/mountinfo"
    *_, after = case.roundtrip(setup, check=check, iters=2)
    assert after.snap.check_output.startswith("d\nd\n")


def test_proc_of_host_pidns_without_pid1(case):
    """A tree in the dumper's pid namespace that mounted its own /proc (a systemd service with a
    private /proc), dumped where pid 1 of that namespace cannot be inspected: the proc mount's pid
    namespace is found through the tree's own processes."""
    import os
    try:
        os.stat("/proc/1/ns/pid")
        pid1_readable = True
    except PermissionError:
        pid1_readable = False
    setup = """
mkdir /mnt/p
mount -t proc -o nosuid,nodev proc /mnt/p
exec 7</mnt/p/sys/kernel/ostype
cd /mnt/p
hold
"""
    check = "grep ' /mnt/p ' /proc/self/mountinfo | cut -d' ' -f5- | sed 's/ shared:[0-9]*//'; ls /mnt/p/1 >/dev/null && echo sees-pid-1"
    pid = case.start(setup, host_pidns=True)
    from enginecase import assert_same, take
    before = take(pid, check)
    after = take(case.cr(pid), check)
    assert_same(before, after)
    assert "sees-pid-1" in after.snap.check_output
    # Where pid 1 can be inspected this passes either way; here (a sandbox) it is the real case.
    print("pid 1 readable:", pid1_readable)


def test_proc_of_outside_pidns_is_refused_and_tree_resumed(case):
    """A container (its own pid namespace) holding a bind of the test's /proc: that proc belongs to
    no namespace of the tree; dump refuses naming the mount before it stops the tree."""
    import os
    import re
    from enginecase import DUMP_EXTERNALS, mntcr
    pid = case.start(enginecase.STOP_WATCH + "hold\n", binds=(("/proc", "/mnt"),))
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *DUMP_EXTERNALS)
    assert r.returncode != 0
    assert re.search(r"mount \d+ \(/mnt\) on proc: it belongs to a pid namespace outside the dumped tree",
                     r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R")
    # What the message says to do works: the proc declared external is bound again from the host.
    restored = case.cr(pid, dump_extra=("--external", "mnt[/mnt]:hostproc"),
                       restore_extra=("--external", "mnt[hostproc]:/proc"))
    with open(f"/proc/{restored}/mountinfo") as f:
        assert any(line.split()[4] == "/mnt" and " - proc " in line for line in f)


def test_covered_proc_of_outside_pidns_says_what_works(case):
    """A proc of a pid namespace neither the tree's nor the dumper's beneath the tree's own: an
    --external cannot name a covered mount, so the refusal says how to make the tree's proc instead
    (not to declare it). (The dumper's own proc there, `unshare --mount-proc`'s, is restored.)"""
    import os
    import re
    from enginecase import DUMP_EXTERNALS, mntcr
    o = case.outer()
    o.sh(f"mkdir {o.path}/p; unshare --pid --fork mount -t proc proc {o.path}/p")   # (that namespace ends at once)
    pid = case.start(enginecase.STOP_WATCH + "mount -t proc proc /mnt\nhold\n", outer=o,
                     binds=((f"{o.path}/p", "/mnt"),))
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), *DUMP_EXTERNALS)
    assert r.returncode != 0
    line = r.stderr.strip()
    assert "\n" not in line, line
    assert re.search(r"mount \d+ \(/mnt\) on proc: it belongs to a pid namespace outside the dumped tree.*"
                     r"lies beneath another mount at /mnt.*'umount -l /mnt; mount -t proc proc /mnt'", line), line
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R")


# --- deleted files and mount roots (ghosts) ---------------------------------------------------

def test_bind_of_deleted_file_and_dir(case):
    """systemd-nspawn binds a temporary file (boot_id) and deletes it; CRIU's mntns_deleted binds a
    directory and a file and removes both: the mount roots show `//deleted`. A name deleted and
    then reused (/s/reused) must not be confused with the ghost."""
    setup = """
mkdir /s; mount -t tmpfs s /s
echo 0123-boot-id > /s/boot_id; chmod 0444 /s/boot_id
mkdir /s/srcdir; chmod 0710 /s/srcdir
echo old > /s/reused
mkfifo /s/kmsg
touch /mnt/boot_id /mnt/reused /mnt/kmsg; mkdir /mnt/dir
mount --bind /s/boot_id /mnt/boot_id
mount --bind /s/srcdir /mnt/dir
mount --bind /s/reused /mnt/reused
mount --bind /s/kmsg /mnt/kmsg
exec 8</s/boot_id
rm /s/boot_id /s/reused /s/kmsg; rmdir /s/srcdir
echo new > /s/reused
exec 7</mnt/boot_id
hold
"""
    check = """
grep -E ' /mnt/(boot_id|dir|reused|kmsg) ' /proc/self/mountinfo | cut -d' ' -f4,5 | sort
cat /mnt/boot_id /mnt/reused /s/reused; stat -c '%n %a %F' /mnt/boot_id /mnt/dir /mnt/kmsg; ls -a /s
ls -l /proc/1/fd/8 | sed 's/.* -> //'
[ "$(stat -L -c %i /proc/1/fd/8)" = "$(stat -c %i /mnt/boot_id)" ] && echo "fd 8 is the bound file"
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert "/s/boot_id (deleted)" in out and "fd 8 is the bound file" in out
    assert "/boot_id//deleted /mnt/boot_id" in out and "/srcdir//deleted /mnt/dir" in out
    assert "0123-boot-id\nold\nnew\n" in out and "/mnt/dir 710 directory" in out and "fifo" in out


def test_open_deleted_files(case):
    """Files unlinked while open (CRIU's ghost files, mntns_ghost): two fds on one deleted file in
    a bind mount of another mount namespace-like subtree, one on a deleted file whose name is
    reused; restored as unlinked files on the same mounts, sharing their inode."""
    setup = """
mkdir /mnt/t /mnt/b; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d
mount --bind /mnt/t/d /mnt/b
printf 'ghost data' > /mnt/b/g; chmod 0640 /mnt/b/g
echo first > /mnt/t/name
exec 7</mnt/b/g 8<>/mnt/b/g 9</mnt/t/name
rm /mnt/b/g /mnt/t/name
echo second > /mnt/t/name
mkdir /mnt/t/gone; chmod 0705 /mnt/t/gone; cd /mnt/t/gone; rmdir /mnt/t/gone
hold
"""
    check = """
ls -l /proc/1/fd/7 /proc/1/fd/8 /proc/1/fd/9 /proc/1/cwd | sed 's/.* -> //'
stat -L -c '%a %h' /proc/1/cwd
cat /proc/1/fd/7 /proc/1/fd/9 /mnt/t/name; ls -a /mnt/b
[ "$(stat -L -c %i /proc/1/fd/7)" = "$(stat -L -c %i /proc/1/fd/8)" ] && echo "7 and 8 share an inode"
stat -L -c '%a %h' /proc/1/fd/7
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert "/mnt/b/g (deleted)" in out and "/mnt/t/name (deleted)" in out and "/mnt/t/gone (deleted)" in out
    assert "705 0" in out
    assert "ghost datafirst\nsecond\n" in out and "7 and 8 share an inode" in out and "640 0" in out


def test_hostile_ghost_and_file_bind_records_are_refused(case):
    """The image fields this issue adds (ghosts, archive 'only') pass the validator when dump wrote
    them and are refused, with one line, when they point elsewhere."""
    import copy
    import json
    import os
    from engine import image
    setup = """
mkdir /s; mount -t tmpfs s /s
echo a > /s/f; echo b > /s/g; touch /mnt/f /mnt/g
mount --bind /s/f /mnt/f
mount --bind /s/g /mnt/g
rm /s/f
umount /s
mkdir /t; mount -t tmpfs t /t; echo c > /t/h; exec 7</t/h; rm /t/h
hold
"""
    pid = case.start(setup)
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = image.load(images)
    assert len(doc["ghosts"]) == 2
    assert any(a.get("only") == "g" for sb in doc["superblocks"].values() for a in sb.get("archives") or [])
    shown = image.render(doc)  # `mntcr show -D`: roots and fds as the kernel showed them
    assert "/f//deleted" in shown and "/h (deleted)" in shown

    def refused(mutate, match):
        bad = copy.deepcopy(doc)
        mutate(bad)
        with open(os.path.join(images, image.MANIFEST), "w") as f:
            json.dump(bad, f)
        with pytest.raises(image.ImageError, match=match):
            image.load(images)

    gid = next(iter(doc["ghosts"]))
    mnt = next(m for ns in doc["mntns"].values() for m in ns["mounts"] if m.get("ghost"))
    fd = next(f for p in doc["processes"] for f in p["fds"] if f.get("ghost"))
    arc = next(a for sb in doc["superblocks"].values() for a in sb.get("archives") or [] if a.get("only"))
    refused(lambda d: d["ghosts"][gid].update(path="/../etc/shadow"), r"\.\.")
    refused(lambda d: d["ghosts"][gid].update(only="other"), "'only' must be the last name")
    refused(lambda d: d["ghosts"][gid].update(sb="sb-999"), "ramfs or overlay of the image")
    refused(lambda d: next(m for ns in d["mntns"].values() for m in ns["mounts"]
                           if m["id"] == mnt["id"]).update(ghost="g-99"), "ghost 'g-99' is unknown")
    refused(lambda d: next(f for p in d["processes"] for f in p["fds"]
                           if f["fd"] == fd["fd"]).update(ghost="g-99"), "ghost 'g-99' is unknown")
    refused(lambda d: next(a for sb in d["superblocks"].values() for a in sb.get("archives") or []
                           if a.get("only")).update(only="../x"), "must be one file name")
    assert arc["root"] == "/"


def test_fill_error_names_the_mount(case):
    """An archive that fails to extract (here: damaged) is reported with the mounts it fills, in
    one line (the report of issue 14: "[Errno 30] Read-only file system: 'self/fd/21'")."""
    import os
    import re
    from enginecase import RESTORE_EXTERNALS, mntcr
    pid = case.start("mkdir /mnt/t; mount -t tmpfs -o ro t /mnt/t\nmkdir /mnt/u; mount -t tmpfs u /mnt/u\n"
                     "echo x > /mnt/u/f\nhold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    name = sorted(n for n in os.listdir(images) if n.endswith(".tar"))[0]
    with open(os.path.join(images, name), "r+b") as f:
        f.seek(600)
        f.write(b"\xff" * 16)  # same size: only the checksum tells
    r = mntcr("restore", "-D", images, *RESTORE_EXTERNALS, "--pidfile", images + ".pid")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Errno None" not in lines[0], r.stderr
    assert re.search(r"mount \d+ \(/mnt/u\) on tmpfs.*archive files-\d+\.tar is damaged", lines[0]), lines[0]


def test_ns_keyed_superblock_under_two_sources(case):
    """LXC's nesting.conf mounts sysfs again as "sys" beside its "sysfs" (and mqueue likewise can
    show two names): one superblock whose mounts show different sources. Each is restored with
    its own source (a new mount of the same superblock), not the first mount's."""
    setup = """
mkdir -p /mnt/s1 /mnt/s2 /mnt/q1 /mnt/q2 /mnt/s2b
mount -t sysfs sysfs /mnt/s1
mount -t sysfs sys /mnt/s2
mount --bind /mnt/s2/kernel /mnt/s2b
mount -t mqueue mqueue /mnt/q1
mount -t mqueue mq-other /mnt/q2
hold
"""
    check = ("awk '$5 ~ /^\\/mnt\\// { for (i = 7; $i != \"-\"; i++); print $5, $4, $(i+1), $(i+2) }' "
             "/proc/self/mountinfo | sort")
    before, after = case.roundtrip(setup, check=check)
    out = after.snap.check_output
    assert "/mnt/s1 / sysfs sysfs\n" in out and "/mnt/s2 / sysfs sys\n" in out, out
    assert "/mnt/s2b /kernel sysfs sys\n" in out, out
    assert "/mnt/q1 / mqueue mqueue\n" in out and "/mnt/q2 / mqueue mq-other\n" in out, out


# systemd-nspawn --overlay: the overlay is mounted in the container's new namespace while its layer
# paths lead to that namespace's copies of the parent's mounts; then the namespace pivots into its
# new root and unmounts the old one, so the layer paths lead nowhere there any more.
OVERLAY_THEN_PIVOT = """
mkdir /mnt/lay /run/nr
mount -t tmpfs lay /mnt/lay
mkdir /mnt/lay/lower /mnt/lay/upper /mnt/lay/work
echo low > /mnt/lay/lower/f
unshare -m --propagation private sh -c '
  mount -t tmpfs nr /run/nr
  mkdir /run/nr/usr /run/nr/.hold /run/nr/ov /run/nr/old /run/nr/dev
  mount --bind /usr /run/nr/usr
  mount --bind /dev /run/nr/dev
  for d in bin lib lib64 sbin; do ln -s usr/$d /run/nr/$d; done
  cp -P /.hold/mntcr-hold /run/nr/.hold/
  mount -t overlay ov -o lowerdir=/mnt/lay/lower,upperdir=/mnt/lay/upper,workdir=/mnt/lay/work /run/nr/ov
  echo up > /run/nr/ov/new
  cd /run/nr
  pivot_root . old
  umount -l /old
  exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1' </dev/null >/dev/null 2>&1 &
# (ready once the child has pivoted and exec'd its holder: a snapshot taken earlier saw it mid-pivot)
i=0; until grep -qx mntcr-hold /proc/[0-9]*/comm 2>/dev/null; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.05; done
hold
"""


def test_overlay_made_before_pivot_root(case):
    """Its layers lie at the same paths in the parent namespace: dump finds them there (the
    overlay's files tell the directory), restore makes the overlay on them again."""
    check = """
self=$(readlink /proc/self/ns/mnt)
c=$(for p in /proc/[0-9]*; do n=$(readlink $p/ns/mnt 2>/dev/null) && [ "$n" != "$self" ] && echo ${p#/proc/}; done | head -1)
grep ' /ov ' /proc/$c/mountinfo | sed 's/.* - //;s/,uuid=[a-z]*//;s/,index=[a-z]*//'
cat /proc/$c/root/ov/f /proc/$c/root/ov/new /mnt/lay/upper/new
"""
    before, after = case.roundtrip(OVERLAY_THEN_PIVOT, check=check)
    out = after.snap.check_output
    assert "lowerdir=/mnt/lay/lower,upperdir=/mnt/lay/upper,workdir=/mnt/lay/work" in out, out
    assert out.endswith("low\nup\nup\n"), out


def test_nested_root_overlay_on_unreachable_layers_is_refused(case):
    """systemd-nspawn --volatile=overlay: a nested namespace mounts a tmpfs for the upper layer, makes
    its root an overlay on it, pivots and unmounts the old root: only the overlay holds that tmpfs.
    Dump refuses naming the mount before it stops the tree (engine/prestop.py), which keeps running."""
    setup = enginecase.STOP_WATCH + """
mkdir /mnt/lower /run/nr /run/up
echo low > /mnt/lower/f
unshare -m --propagation private sh -c '
  mount -t tmpfs up /run/up
  mkdir /run/up/u /run/up/w
  mount -t overlay ov -o lowerdir=/mnt/lower,upperdir=/run/up/u,workdir=/run/up/w /run/nr
  mkdir /run/nr/usr /run/nr/.hold /run/nr/old /run/nr/dev
  mount --bind /usr /run/nr/usr
  mount --bind /dev /run/nr/dev
  for d in bin lib lib64 sbin; do ln -s usr/$d /run/nr/$d; done
  cp -P /.hold/mntcr-hold /run/nr/.hold/
  cd /run/nr
  pivot_root . old
  umount -l /old
  exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1' </dev/null >/dev/null 2>&1 &
hold
"""
    pid = case.start(setup)
    with pytest.raises(enginecase.CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"mount \d+ \(/ of mount namespace mnt-1\) on overlay: a nested namespace's root built from "
                     "layers no mount of the dumped tree reaches", str(err.value)), err.value
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    from zdtm.snapshot import alive, tree_pids
    assert alive(pid) and len(tree_pids(pid)) == 3


def test_namespace_bound_on_a_mount_restored(case):
    """dockerd binds each container's network namespace at exec-root/netns/ID (as `ip netns add`
    does): an nsfs mount of the namespace the container's processes are in. Restored as a bind of
    that process's restored namespace (engine/fs/nsfs.py), not the old one, nor the host's."""
    import os
    from enginecase import HOLD, assert_same, take
    from engine import mountinfo
    from zdtm.snapshot import tree_pids
    setup = f"""
mkdir -p /run/netns; touch /run/netns/ctr
unshare -n sh -c 'mount --bind /proc/self/ns/net /run/netns/ctr; exec {HOLD} 100000' </dev/null >/dev/null 2>&1 &
until grep -q ' /run/netns/ctr ' /proc/self/mountinfo; do sleep 0.1; done
hold
"""
    pid = case.start(setup)
    before = take(pid)
    old = next(m.root for m in mountinfo.read_pid(pid) if m.mountpoint == "/run/netns/ctr")
    # The old namespace held open through the test: freed when the dumped tree dies, its inode
    # number could go to the restored one (the kernel reuses them) and `root != old` would fail.
    keep = os.open(f"/proc/{pid}/root/run/netns/ctr", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = case.cr(pid)
        assert_same(before, take(pid))
        root = next(m.root for m in mountinfo.read_pid(pid) if m.mountpoint == "/run/netns/ctr")
    finally:
        os.close(keep)
    assert root != old and root != os.readlink("/proc/self/ns/net"), root
    assert any(os.readlink(f"/proc/{p}/ns/net") == root for p in tree_pids(pid)), f"no restored process is in {root}"


def test_unshare_mount_proc_tree_keeps_the_dumpers_proc_beneath(case):
    """`unshare --fork --pid --mount-proc CMD` run in the dumper's pid namespace: CMD's /proc covers
    the proc of the dumper's namespace, which no process of the tree is in and no path reaches.
    Dump records that namespace (host) and the covered proc as its; restore makes it a proc of its
    own pid namespace beneath the tree's again (before: refused, 'make the tree's proc with umount
    -l'), and a user namespace of the image may not ask for it."""
    import os
    import subprocess
    from enginecase import DUMP_EXTERNALS, load_manifest, mntcr, take, assert_same
    # (stdio opened again inside: /dev/null opened before the unshare lies on a mount of the
    # container's namespace, which is not dumped)
    setup = ("exec unshare --pid --fork --mount-proc --propagation private sh -c "
             "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")
    from enginecase import in_own_pidns
    child = in_own_pidns(case.start(setup, host_pidns=True, daemons=("unshare",)))
    before = take(child, "grep -c ' /proc ' /proc/self/mountinfo")
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(child), "-D", images, *DUMP_EXTERNALS)
    assert r.returncode == 0, r.stderr
    doc = load_manifest(images)
    (host,) = [n for n, rec in doc["pidns"].items() if rec.get("host")]
    assert all(p["ns"]["pid"] != host for p in doc["processes"])
    assert [sb["fstype"] for sb in doc["superblocks"].values() if sb.get("pidns") == host] == ["proc"]
    restored = case.restore(images)
    after = take(restored, "grep -c ' /proc ' /proc/self/mountinfo")
    assert_same(before, after)
    # Beneath the cover: a proc of the restorer's (the test's) pid namespace, which shows the test.
    out = subprocess.run(["nsenter", "-t", str(restored), "-m", "--", "sh", "-c",
                          f"umount /proc && test -d /proc/{os.getpid()} && echo sees-the-test"],
                         capture_output=True, text=True, timeout=30)
    assert "sees-the-test" in out.stdout, out
    # The same proc asked for where a path reaches it (its cover gone from the image): refused.
    from engine import image, imageformat
    mounts = {m["id"]: m for ns in doc["mntns"].values() for m in ns["mounts"]}
    (sid,) = [s for s, sb in doc["superblocks"].items() if sb.get("pidns") == host]
    (low,) = [m for m in mounts.values() if m["sb"] == sid]
    for m in mounts.values():
        if m.get("parent") == low["id"] and m["mountpoint"] == low["mountpoint"]:
            m["mountpoint"] = low["mountpoint"] + "/sys"
    with pytest.raises(image.ImageError, match="is not covered by another at its mount point"):
        imageformat._check_restorers_proc(doc, mounts, {})
