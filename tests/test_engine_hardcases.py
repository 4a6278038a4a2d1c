"""The hard cases (issue 5): what criu refuses or gets wrong, round-tripped exactly.

Files and cwd beneath overmounts, overlayfs inside the namespace (several
lowers, layers overmounted after the overlay was mounted, overlay over
overlay, a second C/R), fds and cwd on detached (lazily unmounted) mounts,
proc of a nested pid namespace, block filesystems on loop devices.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

import enginecase
from enginecase import case  # noqa: F401  (fixture)

from zdtm.holder import HELPERS

# The container's /dev is private: loop nodes from the first free device up (zdtm/holder.py).
LOOP_NODES = HELPERS + "zdtm_loop_nodes\n"


def overlay_opts(state, mountpoint):
    m = next(m for m in state.root.mounts if m.mountpoint == mountpoint)
    return [o for o in m.super_opts if o.split("=")[0] in ("lowerdir", "upperdir", "workdir")]


def test_fd_and_cwd_beneath_overmount(case):
    before, after = case.roundtrip("""
mkdir -p /mnt/d; echo under > /mnt/d/f; cd /mnt/d; exec 5</mnt/d/f
mount -t tmpfs over /mnt/d; echo over > /mnt/d/g; exec 6</mnt/d/g
hold
""")
    assert after.root.cwd.startswith("/mnt/d mnt=")
    # fd 5 and the cwd are on the covered root tmpfs, fd 6 on the overmount
    assert after.root.cwd.split("mnt=")[1] == next(f for f in after.root.fds if f.startswith("5:")).split("mnt=")[1]
    assert os.listdir(f"/proc/{after.pid}/cwd") == ["f"]
    with open(f"/proc/{after.pid}/fd/5") as f:
        assert f.read() == "under\n"


OVERLAY = """
mkdir -p /o; mount -t tmpfs lay /o; cd /o; mkdir l1 l2 u w m
echo low1 > l1/a; echo low2 > l2/b; echo shadow > l2/a
mount -t overlay ov -o lowerdir=/o/l1:/o/l2,upperdir=/o/u,workdir=/o/w /o/m
echo up > /o/m/c; rm /o/m/b; exec 5</o/m/a; exec 6>>/o/m/c
cd /
"""


@pytest.mark.parametrize("variant", ["plain", "layer-overmounted", "upper-overmounted"])
def test_overlay_two_iterations(case, variant):
    extra = {"plain": "", "layer-overmounted": "mount -t tmpfs hide /o/l1\n",
             "upper-overmounted": "mount -t tmpfs hide /o/u; mount -t tmpfs hide2 /o\n"}[variant]
    states = case.roundtrip(OVERLAY + extra + "hold\n", check="ls -la /o/m 2>&1; cat /o/m/a /o/m/c 2>&1", iters=2)
    want = ["lowerdir=/o/l1:/o/l2", "upperdir=/o/u", "workdir=/o/w"]
    for st in states:
        assert overlay_opts(st, "/o/m") == want   # the original paths, never a restore yard's
    with open(f"/proc/{states[-1].pid}/fd/5") as f:
        assert f.read() == "low1\n"   # fd 5 is on the overlay, reading through its lower layer


def test_overlay_as_lower_of_overlay(case):
    case.roundtrip(OVERLAY + """
mkdir -p /p; mount -t tmpfs lay2 /p; mkdir /p/u /p/w /p/m
mount -t overlay ov2 -o lowerdir=/o/m,upperdir=/p/u,workdir=/p/w /p/m
echo top > /p/m/t; exec 7</p/m/c
hold
""", check="ls /p/m; cat /p/m/a /p/m/c /p/m/t", iters=2)


def test_overlay_relative_layers_refused(case):
    pid = case.start("mkdir -p /o; mount -t tmpfs lay /o; cd /o; mkdir l u w m\n"
                     "mount -t overlay ov -o lowerdir=l,upperdir=u,workdir=w m; cd /; hold\n")
    images = case.new_images_dir()
    with pytest.raises(AssertionError, match=r"on overlay: layer lowerdir=l is a relative path: not supported"):
        case.dump(pid, images)
    assert not os.path.exists(images)


def detached_fds(state):
    """fd numbers of the root process whose mount no namespace has (zdtm.snapshot labels)."""
    return [int(fd.split(":")[0]) for fd in state.root.fds if fd.endswith("mnt=detached")]


def test_detached_file_only_reachable_through_fd(case):
    before, after = case.roundtrip("""
mkdir /mnt/d; mount -t tmpfs gone /mnt/d; mkdir /mnt/d/sub; echo secret > /mnt/d/sub/f
exec 5</mnt/d/sub/f; umount -l /mnt/d
hold
""")
    assert detached_fds(before) == [5] and detached_fds(after) == [5]
    with open(f"/proc/{after.pid}/fd/5") as f:
        assert f.read() == "secret\n"


def test_detached_tmpfs_kept_by_cwd_restored_whole(case):
    before, after = case.roundtrip("""
mkdir /mnt/d; mount -t tmpfs gone /mnt/d; mkdir -p /mnt/d/w/x; echo one > /mnt/d/one; echo two > /mnt/d/w/x/two
ln -s one /mnt/d/link; cd /mnt/d/w; umount -l /mnt/d; exec 5<../one
hold
""")
    assert after.root.cwd == "/w mnt=detached" and detached_fds(after) == [5]
    # the whole detached tree came back: read it through the restored cwd
    cwd = f"/proc/{after.pid}/cwd"
    assert open(os.path.join(cwd, "x/two")).read() == "two\n"
    assert os.readlink(os.path.join(cwd, "../link")) == "one"


def test_detached_bind_found_by_file_handle(case):
    """The superblock is still mounted visibly: the file is found there by handle."""
    before, after = case.roundtrip("""
mkdir /mnt/s /mnt/b; mount -t tmpfs still /mnt/s; mkdir -p /mnt/s/x/y; echo vis > /mnt/s/x/y/f
mount --bind /mnt/s/x /mnt/b; exec 5</mnt/b/y/f; umount -l /mnt/b
echo changed-after > /mnt/s/x/y/g
hold
""")
    assert detached_fds(after) == [5]
    assert os.readlink(f"/proc/{after.pid}/fd/5") == "/y/f"
    # same superblock as the visible mount: a file created there is seen through the detached one
    assert os.path.exists(f"/proc/{after.pid}/root/mnt/s/x/y/g")
    with open(f"/proc/{after.pid}/fd/5") as f:
        assert f.read() == "vis\n"


def test_detached_mount_that_had_children(case):
    case.roundtrip("""
mkdir /mnt/p; mount -t tmpfs p /mnt/p; mkdir /mnt/p/c; mount -t tmpfs c /mnt/p/c
echo in-c > /mnt/p/c/f; echo in-p > /mnt/p/g
cd /mnt/p/c; exec 5</mnt/p/g; umount -l /mnt/p
hold
""")


def test_proc_of_nested_pid_namespace(case):
    before, after = case.roundtrip("""
mkdir /mnt/p
exec python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x20000000 | 0x00020000) == 0      # CLONE_NEWPID | CLONE_NEWNS
if os.fork() == 0:                                       # pid 1 of the nested pid namespace
    os.system("mount --make-rprivate / && mount -t proc proc /mnt/p")
    os.execv("/bin/sh", ["sh", "-c", "exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 100000"])
os.execv("/bin/sh", ["sh", "-c", "sleep 0.5; exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 100000"])
'
""")
    nested = [p for p in after.snap.procs if p.pid != after.pid]
    assert nested, "the nested process was not restored"
    n = nested[0].pid
    proc_mount = f"/proc/{n}/root/mnt/p"
    # the restored proc belongs to the restored nested pid namespace: its pid 1 is that process
    assert os.stat(f"{proc_mount}/1/ns/pid").st_ino == os.stat(f"/proc/{n}/ns/pid").st_ino


def _need(*cmds):
    missing = [c for c in cmds if shutil.which(c) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (Debian packages e2fsprogs/xfsprogs/btrfs-progs)")


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_block_filesystem_on_loop_image(case, fstype):
    mkfs = {"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs"}[fstype]
    _need(mkfs)
    size = {"ext4": "32M", "xfs": "300M", "btrfs": "120M"}[fstype]
    sub = ("btrfs -q subvolume create /mnt/fs/sub; echo sv > /mnt/fs/sub/s; mkdir /mnt/sv\n"
           "mount --bind /mnt/fs/sub /mnt/sv; exec 6</mnt/sv/s\n") if fstype == "btrfs" else ""
    before, after = case.roundtrip(LOOP_NODES + f"""
truncate -s {size} /tmp/disk.img; {mkfs} -q /tmp/disk.img
mkdir /mnt/fs; mount -o loop /tmp/disk.img /mnt/fs; echo data > /mnt/fs/f; exec 5</mnt/fs/f
{sub}hold
""", check="cat /mnt/fs/f; ls /mnt/fs")
    m = next(m for m in after.root.mounts if m.mountpoint == "/mnt/fs")
    assert m.fstype == fstype and m.source.startswith("/dev/loop")


def test_loop_device_freed_when_restored_tree_dies(case):
    """The restored loop device goes with the restored tree: its backing file was opened through
    a mount restore parks (engine/parking.py), which then stayed connected to a mount of the
    loop's own superblock stacked beneath it, a cycle the kernel never freed (one device and
    superblock per run, until the machine ran out of the loop nodes tests make)."""
    _need("mkfs.ext4", "losetup")
    from engine.fs._blockdev import loop_status
    _, after = case.roundtrip(LOOP_NODES + """
truncate -s 32M /tmp/disk.img; mkfs.ext4 -q /tmp/disk.img
mkdir /mnt/one /mnt/two /dev/disk; mount -o loop /tmp/disk.img /mnt/one; echo data > /mnt/one/f
dev=$(findmnt -n -o MAJ:MIN /mnt/one); mknod /dev/disk/data b ${dev%%:*} ${dev##*:}
mount /dev/disk/data /mnt/two
hold
""", check="cat /mnt/two/f")
    held = {os.makedev(m.major, m.minor) for m in after.root.mounts if m.major == 7}
    assert held, "the restored tree shows no loop device"
    bound = {rdev: loop_status(rdev) for rdev in held}
    case.close()
    deadline = time.monotonic() + 60
    while True:
        # gone, or bound again to another file (the number reused by someone else)
        left = [rdev for rdev in held if bound[rdev] is not None and loop_status(rdev) == bound[rdev]]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, (f"loop device(s) {', '.join(f'7:{os.minor(r)}' for r in left)} still attached to the "
                      "restored backing file after the restored tree died")


def test_block_device_declared_external(case, tmp_path):
    _need("mkfs.ext4", "losetup")
    img, dev = enginecase.ext4_on_loop(tmp_path, "ext.img")
    try:
        rdev = os.stat(dev).st_rdev
        majmin = f"{os.major(rdev)}:{os.minor(rdev)}"
        pid = case.start(f"mknod /dev/disk b {os.major(rdev)} {os.minor(rdev)}; mkdir /mnt/fs\n"
                         "mount /dev/disk /mnt/fs; echo ext > /mnt/fs/f; exec 5</mnt/fs/f; hold\n")
        images = case.new_images_dir()
        # undeclared: refused with the way out in the message
        with pytest.raises(AssertionError, match=rf"block device {majmin} is not external; declare it"):
            case.dump(pid, images)
        case.dump(pid, images, ("--external", f"dev[{majmin}]:disk"))
        doc = json.load(open(os.path.join(images, "mntcr.json")))
        assert any((sb.get("device") or {}).get("key") == "disk" for sb in doc["superblocks"].values())
        with pytest.raises(AssertionError, match=r"--external dev\[disk\]:PATH"):
            case.restore(images)
        subprocess.run(["losetup", "-d", dev], check=True)
        dev = None
        rpid = case.restore(images, ("--external", f"dev[disk]:{img}"))
        with open(f"/proc/{rpid}/fd/5") as f:
            assert f.read() == "ext\n"
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev])


def test_file_binds_from_outside_declared_external(case, tmp_path):
    """docker's /etc/hosts, /etc/resolv.conf, /etc/hostname: host files bound in, declared external."""
    files = {}
    for name, text in (("hosts", "127.0.0.1 localhost\n"), ("resolv.conf", "nameserver 127.0.0.53\n"),
                       ("hostname", "ctr\n")):
        files[name] = tmp_path / name
        files[name].write_text(text)
    binds = tuple((str(path), f"/run/host/{name}") for name, path in files.items())
    dump_ext = tuple(a for name in files for a in ("--external", f"mnt[/run/host/{name}]:{name}"))
    restore_ext = tuple(a for name, path in files.items() for a in ("--external", f"mnt[{name}]:{path}"))
    before, after = case.roundtrip("exec 5</run/host/hosts\nhold\n", check="cat /run/host/*", binds=binds,
                                   dump_extra=dump_ext, restore_extra=restore_ext)
    assert "nameserver 127.0.0.53" in after.snap.check_output
    for name in files:
        m = next(m for m in after.root.mounts if m.mountpoint == f"/run/host/{name}")
        assert m.root.endswith("/" + name)   # a file bind of the host's file, not a copy
    # the same file: a change on the host shows inside the restored container
    files["hosts"].write_text("changed\n")
    with open(f"/proc/{after.pid}/root/run/host/hosts") as f:
        assert f.read() == "changed\n"
