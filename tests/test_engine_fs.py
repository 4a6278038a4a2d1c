"""Engine round trips of filesystems, contents, binds, per-mount flags and superblock options.

Each test builds a container (tests/enginecase.py), snapshots it, runs
`mntcr dump` + `mntcr restore`, snapshots the restored tree and compares:
canonical mount trees, fds (number, flags, offset, mount, data), root, cwd,
namespace sharing and the output of a check script run inside.
"""

from __future__ import annotations

import pytest

from enginecase import case  # noqa: F401  (fixture)

# Files of every kind a container's memory filesystem can hold. $1 is where; $2 "xattrs" when the
# filesystem has them (tmpfs does, ramfs has none at all).
CONTENTS = r"""
cd "$1"
mkdir dir; chmod 0750 dir
echo content > dir/file; chmod 0604 dir/file
echo owned > owned; chown 1234:5678 owned dir
ln -s dir/file link; chown -h 1234:5678 link
ln -s /nowhere dangling
echo linked > a; ln a hard
truncate -s 64M sparse
printf x | dd of=sparse bs=1 seek=1048576 conv=notrunc 2>/dev/null
printf y >> sparse
mknod cdev c 1 7; mknod bdev b 7 0; mkfifo fifo
echo s > suid; chmod 4711 suid
if [ "$2" = xattrs ]; then
    setfattr -n user.color -v blue owned
    setfattr -n trusted.secret -v 42 owned
    setfattr -n user.d -v 1 dir
    setfattr -h -n trusted.l -v on link
    # ACLs (tar's other pax records): dir/file's access ACL names user 1234, dir's default one too
    setfattr -n system.posix_acl_access -v 0sAgAAAAEABgD/////AgAEANIEAAAEAAQA/////xAABAD/////IAAEAP////8= dir/file
    setfattr -n system.posix_acl_default -v 0sAgAAAAEABwD/////AgAFANIEAAAEAAUA/////xAABQD/////IAAAAP////8= dir
fi
cd /
"""

CONTENTS_CHECK = r"""
cd "{where}"
find . -printf '%p %y %m %U:%G %n %s %l\n' | LC_ALL=C sort
find . -type f | LC_ALL=C sort | xargs md5sum
for f in $(find . | LC_ALL=C sort); do getfattr -h -d -m - --absolute-names "$f"; done
[ "$(stat -c %i a)" = "$(stat -c %i hard)" ] && echo "a and hard share an inode"
[ "$(stat -c %b sparse)" -lt 256 ] && echo "sparse stays sparse"
stat -c '%n %t:%T' cdev bdev
"""


@pytest.mark.parametrize("fstype,opts", [("tmpfs", "size=128m,mode=0751"), ("ramfs", "mode=0751")])
def test_memory_fs_contents(case, fstype, opts):
    xattrs = fstype == "tmpfs"
    """Modes, owners, user.* and trusted.* xattrs, symlinks, hard links, sparse files, device nodes."""
    setup = f"""
contents() {{ {CONTENTS} }}
mkdir /mnt/t
mount -t {fstype} -o {opts} data /mnt/t
contents /mnt/t {"xattrs" if xattrs else "none"}
hold
"""
    before, after = case.roundtrip(setup, check=CONTENTS_CHECK.format(where="/mnt/t"))
    out = after.snap.check_output
    # The check compares before and after; these make sure it looked at something real.
    assert "./owned f 644 1234:5678" in out
    if xattrs:
        assert 'user.color="blue"' in out and 'trusted.secret="42"' in out and 'trusted.l="on"' in out
        assert "system.posix_acl_access=" in out and "system.posix_acl_default=" in out
    else:  # restore extracted it without tar's --xattrs and --acls (no such record in the archive)
        assert "posix_acl" not in out and "user." not in out
    assert "a and hard share an inode" in out
    if fstype == "tmpfs":  # ramfs counts no blocks for holes either way: nothing to see there
        assert "sparse stays sparse" in out
    assert "./cdev c" in out and "./fifo p" in out and "./suid f 4711" in out


def test_root_tmpfs_contents(case):
    """The namespace's root is a tmpfs made inside it: restored as one, with its files (no --root)."""
    setup = f"""
contents() {{ {CONTENTS} }}
mkdir /data
contents /data xattrs
echo top > /rootfile
hold
"""
    before, after = case.roundtrip(setup, check=CONTENTS_CHECK.format(where="/data") + "cat /rootfile\n")
    root = next(m for m in after.root.mounts if m.mountpoint == "/")
    assert root.fstype == "tmpfs"
    assert "top" in after.snap.check_output


@pytest.mark.parametrize("kind", ["proc", "sysfs", "devpts", "mqueue", "cgroup2"])
def test_pseudo_fs(case, kind):
    """proc (a second one, with options), sysfs, devpts newinstance, mqueue, cgroup2."""
    setup, check = {
        "proc": ("mkdir /mnt/p; mount -t proc -o hidepid=2,subset=pid proc /mnt/p",
                 "ls -d /mnt/p/1 && ! ls /mnt/p/sys 2>/dev/null"),
        "sysfs": ("mkdir /sys; mount -t sysfs -o ro sysfs /sys", "ls -d /sys/kernel"),
        "devpts": ("mkdir /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts",
                   "stat -c '%a %t:%T' /dev/pts/ptmx"),
        "mqueue": ("mkdir /dev/mqueue; mount -t mqueue -o nosuid,nodev mqueue /dev/mqueue", "ls -a /dev/mqueue"),
        "cgroup2": ("mkdir -p /mnt/cg; mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /mnt/cg",
                    "ls /mnt/cg/cgroup.procs"),
    }[kind]
    before, after = case.roundtrip(setup + "\nhold\n", check=check)
    assert "[exit" not in after.snap.check_output
    assert any(m.fstype == kind for m in after.root.mounts)


BINDS = {
    # a whole mount bound elsewhere
    "dir": ("mkdir /mnt/t /mnt/b; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d; echo f > /mnt/t/d/f; "
            "mount --bind /mnt/t /mnt/b", "cat /mnt/b/d/f"),
    # a sub-directory (root other than /)
    "subdir": ("mkdir /mnt/t /mnt/b; mount -t tmpfs t /mnt/t; mkdir -p /mnt/t/d/e; echo f > /mnt/t/d/e/f; "
               "mount --bind /mnt/t/d/e /mnt/b", "cat /mnt/b/f"),
    # a file onto a file
    "file": ("mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo in-t > /mnt/t/file; touch /mnt/target; "
             "mount --bind /mnt/t/file /mnt/target", "cat /mnt/target"),
    # a sub-directory of the root tmpfs (a bind of the namespace's own root superblock)
    "rootsub": ("mkdir -p /srv/x /mnt/b; echo r > /srv/x/f; mount --bind /srv/x /mnt/b", "cat /mnt/b/f"),
    # recursive bind: the copy has the child too
    "rbind": ("mkdir /mnt/t /mnt/b; mount -t tmpfs t /mnt/t; mkdir /mnt/t/c; mount -t tmpfs c /mnt/t/c; "
              "echo c > /mnt/t/c/f; mount --rbind /mnt/t /mnt/b", "cat /mnt/b/c/f"),
}


@pytest.mark.parametrize("kind", sorted(BINDS))
def test_bind(case, kind):
    """Bind mounts of directories and files, sub-directory binds, rbind."""
    setup, check = BINDS[kind]
    before, after = case.roundtrip(setup + "\nhold\n", check=check)
    assert "[exit" not in after.snap.check_output


@pytest.mark.parametrize("flag", ["ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime", "strictatime",
                                  "relatime"])
def test_per_mount_flag(case, flag):
    """One superblock, two mounts: the bind gets FLAG, the original keeps its own flags."""
    base = "noatime" if flag == "relatime" else "relatime"
    setup = f"""
mkdir /mnt/x /mnt/y
mount -t tmpfs t /mnt/x
mount -o remount,bind,{base} /mnt/x
mount --bind /mnt/x /mnt/y
{"mount -o remount,bind,strictatime /mnt/y" if flag == "relatime" else ""}
mount -o remount,bind,{flag} /mnt/y
hold
"""
    # (noatime -> relatime must pass through strictatime: the kernel keeps the old atime mode
    # when a remount asks for relatime, the default.)
    before, after = case.roundtrip(setup)
    y = next(m for m in after.root.mounts if m.mountpoint == "/mnt/y")
    x = next(m for m in after.root.mounts if m.mountpoint == "/mnt/x")
    if flag == "strictatime":  # mountinfo shows strictatime as neither relatime nor noatime
        assert not {"relatime", "noatime"} & set(y.mount_opts)
    else:
        assert flag in y.mount_opts
    assert base in x.mount_opts


@pytest.mark.parametrize("opts", ["size=1m", "mode=0700", "uid=1234,gid=5678", "nr_inodes=100",
                                  "size=2m,mode=1770,uid=1234,nr_inodes=64"])
def test_tmpfs_superblock_options(case, opts):
    """tmpfs superblock options survive (they are in the compared super options)."""
    setup = f"""
mkdir /mnt/x
mount -t tmpfs -o {opts} t /mnt/x
echo data > /mnt/x/f
hold
"""
    before, after = case.roundtrip(setup, check="stat -c '%a %U:%G' /mnt/x; cat /mnt/x/f")
    x = next(m for m in after.root.mounts if m.mountpoint == "/mnt/x")
    for opt in opts.split(","):
        key = opt.split("=")[0]
        assert any(o.startswith(key + "=") for o in x.super_opts), (opt, x.super_opts)


def test_nfs_mount_root_comes_from_its_source():
    """NFS mountinfo shows "/" as every mount's root (the path is in the source): a bind of d of an
    export first mounted from host:/ is bound from /d at restore, not from the export's root."""
    from engine import fs as fsmod
    nfs = fsmod.lookup("nfs4")
    assert nfs.mount_root("/", "127.0.0.1:/d", "127.0.0.1:/", "m") == "/d"
    assert nfs.mount_root("/", "127.0.0.1:/", "127.0.0.1:/", "m") == "/"
    assert nfs.mount_root("/", "srv:/exp/a/b", "srv:/exp", "m") == "/a/b"
    assert fsmod.lookup("tmpfs").mount_root("/x", "tmpfs", "tmpfs", "m") == "/x"
    with pytest.raises(fsmod.FsError, match="m: nfs4 source srv:/ is not beneath srv:/exp"):
        nfs.mount_root("/", "srv:/", "srv:/exp", "m")
    with pytest.raises(fsmod.FsError, match="not beneath"):
        nfs.mount_root("/", "other:/exp", "srv:/exp", "m")
    # 5.10's restore listed the file bind first; the superblock is still made from the export's root
    assert nfs.sb_source(["127.0.0.1:/f", "127.0.0.1:/", "127.0.0.1:/d"]) == "127.0.0.1:/"
    assert nfs.sb_source(["srv:/exp/a", "srv:/exp/b"]) == "srv:/exp/a"
    assert fsmod.lookup("tmpfs").sb_source(["b", "a"]) == "b"


def test_daemon_modules_declared():
    """fs.daemons loads only fs.DAEMON_MODULES: every module that registers a daemon type is listed."""
    import engine.fs as fsmod
    fsmod.types()   # every module
    registering = {fsmod.module_of(t.name) for t in fsmod.types() if t.daemon}
    assert registering == set(fsmod.DAEMON_MODULES)
