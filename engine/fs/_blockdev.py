"""Shared part of the block filesystem types (ext4.py, xfs.py, btrfs.py, squashfs.py, ...): mounted again from a device.

The device is not part of the image. Either it is declared external
(`--external dev[MAJ:MIN]:KEY` at dump, `--external dev[KEY]:PATH` at restore,
PATH a block device or an image file), or it is a loop device whose backing
file lies on a filesystem the image holds (a container that made its own
disk image): restore attaches a new loop device to the restored file.

The superblock is created through the original source string (e.g.
/dev/loop3) by a helper that places a device node with that name in a
private /dev, so the restored mountinfo shows the same source.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from engine.records import record

from engine import channel, kernel
from engine.fs import FsError, FsType, lookup, open_image_file

LOOP_MAJOR = 7
LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_INFO64 = "<QQQQQIIII64s64s32sQQ"  # struct loop_info64 (232 bytes)
# Super options that name a second device (xfs's external log and realtime devices, ext3/4's
# journal): the image keeps no host path (engine/imageformat.py HOST_OPTS), and restore makes the
# device of the source alone.
SECOND_DEVICE_OPTS = ("logdev", "rtdev", "journal_dev", "journal_path")


def _open_bdev(rdev: int) -> int | None:
    """Open the host's node for block device `rdev` (its name from sysfs), read-only."""
    try:
        with open(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/uevent") as f:
            name = next(line[8:].strip() for line in f if line.startswith("DEVNAME="))
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, StopIteration):
        return None
    if os.fstat(fd).st_rdev != rdev:
        os.close(fd)
        return None
    return fd


def loop_status(rdev: int) -> dict | None:
    """Backing file (dev, inode), offset, size limit and flags of loop device `rdev`, or None."""
    if os.major(rdev) != LOOP_MAJOR:
        return None
    fd = _open_bdev(rdev)
    if fd is None:
        return None
    try:
        buf = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(struct.calcsize(_INFO64)))
    except OSError:
        return None
    finally:
        os.close(fd)
    dev, ino, _, offset, sizelimit, _, _, _, flags, *_ = struct.unpack(_INFO64, buf)
    return {"dev": f"{os.major(dev)}:{os.minor(dev)}", "ino": ino, "offset": offset, "sizelimit": sizelimit,
            "ro": bool(flags & LO_FLAGS_READ_ONLY)}


def mountpoint_of(sid: str, plan) -> str:
    """The first mount point (sorted) of superblock `sid` in the plan's mount namespaces."""
    mps = sorted(e["mountpoint"] for ns in plan.mntns_doc.values() for e in ns["mounts"] if e["sb"] == sid)
    return (mps or ["MOUNTPOINT"])[0]


def one_device_only(sid: str, sb: dict, plan, why: str, dev: str | None) -> FsError:
    """The refusal of a filesystem that needs a device beside its source's (`why` says which)."""
    return FsError(errno.EOPNOTSUPP, f"superblock {sid} ({sb['fstype']} on {sb['source']}): {why}, and restore "
                                     "makes the device of its source alone; declare the mount with --external "
                                     f"mnt[{mountpoint_of(sid, plan)}]:KEY" +
                                     (f", or its device with --external dev[{dev}]:KEY naming a block device "
                                      "whose fellow the host has" if dev else ""))


def attach_loop(file_fd: int, offset: int = 0, sizelimit: int = 0, readonly: bool = False) -> tuple[int, int]:
    """Attach a free loop device to the open file; return (loop fd, rdev). It detaches when last closed."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(8):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            try:
                lfd = os.open(f"/dev/loop{n}", (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
            except FileNotFoundError:
                # No node in this /dev (e.g. a container's): make one in a private place.
                raise OSError(errno.ENOENT, f"/dev/loop{n} does not exist; is this a full /dev?") from None
            flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
            info = struct.pack(_INFO64, 0, 0, 0, offset, sizelimit, 0, 0, 0, flags, b"", b"", b"", 0, 0)
            config = struct.pack("<II", file_fd, 0) + info + bytes(64)
            try:
                fcntl.ioctl(lfd, LOOP_CONFIGURE, config)
            except OSError as e:
                if e.errno == errno.EBUSY:  # raced with someone else for that device
                    os.close(lfd)
                    continue
                if e.errno not in (errno.EINVAL, errno.ENOTTY):
                    os.close(lfd)
                    raise
                fcntl.ioctl(lfd, LOOP_SET_FD, file_fd)  # kernels before 5.8
                fcntl.ioctl(lfd, LOOP_SET_STATUS64, info)
            return lfd, os.fstat(lfd).st_rdev
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(ctl)


def _create(fstype: str, source: str, rdev: int, params, chan: channel.Channel) -> None:
    """In a forked child: a private /dev where `source` names the device, then fsopen/fsmount."""
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    # A tmpfs over /dev first: every directory and the node are made in it, never on the host's
    # (the image checks a source is a normalised path under /dev: engine/imageformat.py).
    kernel.mount("mntcr-dev", "/dev", "tmpfs", 0, "mode=755")
    name = source if source.startswith("/dev/") else f"/dev/mntcr-{os.major(rdev)}-{os.minor(rdev)}"
    os.makedirs(os.path.dirname(name), exist_ok=True)
    os.mknod(name, 0o600 | stat.S_IFBLK, rdev)
    from engine.standin import fsmount   # (restore's, which imports it anyway: a dump never loads it)
    chan.send(("ok", None), [fsmount(fstype, name, params)])


def create(fstype: str, source: str, rdev: int, params) -> int:
    """Create the filesystem on block device `rdev`, shown with the original `source` string."""
    _, fds = channel.call_in_child(_create, fstype, source, rdev, params)
    return fds[0]


@record(frozen=True)
class BlockType(FsType):
    """A filesystem on a block device: declared external, or a loop device over a file of the image."""

    device: bool = True

    def made_from(self, sb: dict, mounts: dict) -> set[str]:
        loop = (sb.get("device") or {}).get("loop")
        return {loop["sb"]} if loop else set()

    def device_of(self, mount) -> str | None:
        # btrfs shows an anonymous device number: the block device is its source's. Others show
        # the device itself: trust that (a restored mount's source names the device it had at
        # dump, which may be another one now).
        if mount.major or not mount.source.startswith("/"):
            return None
        try:
            st = os.stat(mount.source)
        except OSError:
            return None
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None

    def plan_device(self, sid: str, sb: dict, plan) -> bool:
        # (asked before the stop too, engine/prestop.py: a refusal leaves the tree running)
        opts = [o for o in sb.get("super_opts") or () if o.partition("=")[0] in SECOND_DEVICE_OPTS]
        if opts:   # (xfs's logdev=, rtdev=: the image keeps no host device path)
            raise one_device_only(sid, sb, plan, f"mounted with {','.join(opts)}, a second device", None)
        st = loop_status(os.makedev(*(int(x) for x in sb["device"]["dev"].split(":"))))
        backing = plan.sb_of_dev.get(st["dev"]) if st else None
        if backing is None or plan.superblocks[backing]["external"] \
                or not lookup(plan.superblocks[backing]["fstype"]).content:
            return False
        loop = sb["device"]["loop"] = {"sb": backing, "offset": st["offset"], "sizelimit": st["sizelimit"],
                                       "ro": st["ro"]}
        plan.want_file(backing, st["ino"], lambda path: loop.__setitem__("path", path),
                       f"superblock {sid} ({sb['fstype']} on {sb['source']}): its loop device's backing file "
                       "is not reachable in the dumped filesystems")
        return True

    def mount_again(self, sb: dict, source: str, sb_fd: int, where: str) -> int:
        """The same device mounted under another name (a /dev/disk/by-* link, a second node): a new
        mount of it through a node named `source` joins the superblock (the kernel finds it by its
        device). The device is the one the superblock shows (a type whose superblock shows an
        anonymous device, btrfs, cannot)."""
        dev = os.fstat(sb_fd).st_dev
        if not os.major(dev):
            raise FsError(errno.EOPNOTSUPP, f"{where}: a {self.name} superblock shows no device to mount again "
                                            f"under another source ({source!r})")
        return create(sb["fstype"].split(".", 1)[0], source, dev, self.fsconfig_params(sb["super_opts"]))

    def create(self, sid: str, sb: dict, ctx, where: str) -> int:
        dev = sb["device"]
        loop_fd = file_fd = None
        try:
            if dev.get("key"):
                path = ctx.external_path("dev", dev["key"])
                st = os.stat(path)
                if stat.S_ISBLK(st.st_mode):
                    rdev = st.st_rdev
                elif stat.S_ISREG(st.st_mode):
                    file_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                    loop_fd, rdev = attach_loop(file_fd)
                else:
                    raise FsError(errno.EINVAL, f"{where}: external device {dev['key']}: {path} is neither a "
                                                "block device nor an image file")
            else:
                loop = dev["loop"]
                base = ctx.sb_pinnable(loop["sb"])  # (the loop device keeps the file, and its mount)
                if base is None:
                    raise FsError(errno.EINVAL, f"{where}: the filesystem of its loop device's backing file "
                                                "was not restored")
                try:
                    file_fd = open_image_file(base, loop["path"], os.O_RDONLY if loop["ro"] else os.O_RDWR,
                                              f"{where}: its loop device's backing file")
                finally:
                    os.close(base)
                loop_fd, rdev = attach_loop(file_fd, loop["offset"], loop["sizelimit"], loop["ro"])
            return create(sb["fstype"].split(".", 1)[0], sb["source"], rdev, self.fsconfig_params(sb["super_opts"]))
        finally:
            for fd in (loop_fd, file_fd):
                if fd is not None:
                    os.close(fd)
