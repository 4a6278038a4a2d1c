"""btrfs: a block filesystem (engine/fs/_blockdev.py) whose subvolume options name paths inside it.

Its mounts show an anonymous device number, and the source string of a restored mount names
the device it had at dump: the device is found through the filesystem's id instead
(BTRFS_IOC_FS_INFO in the dumped namespace, then /sys/fs/btrfs/FSID/devices on the host).
"""

from __future__ import annotations

import fcntl
import os
import struct
from engine.records import record

from engine import kernel
from engine.fs import FsType, block_recipe, register
from engine.fs._blockdev import BlockType, one_device_only

BTRFS_IOC_FS_INFO = 0x8400941F   # _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): 1024 bytes, num_devices at 8, fsid at 16


@record(frozen=True)
class BtrfsType(BlockType):
    """btrfs: the device from the filesystem id, when its mount can be opened."""

    # Its superblock shows an anonymous device, not the block device: nothing to mount again under
    # another source (dump refuses such mounts).
    mount_again = FsType.mount_again

    def device_of(self, mount) -> str | None:
        try:
            fd = os.open(mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return super().device_of(mount)
        try:
            if kernel.statx_mnt_id("", dfd=fd, flags=kernel.AT_EMPTY_PATH) != mount.mnt_id:
                return super().device_of(mount)  # overmounted: the path leads elsewhere
            return "fsid:" + _fsid(fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, bytes(1024)))
        except OSError:
            return super().device_of(mount)
        finally:
            os.close(fd)

    def host_device(self, found: str | None) -> str | None:
        if not found or not found.startswith("fsid:"):
            return found
        try:
            return next(_devices("/sys/fs/btrfs", found[5:]), None)   # (the first one's alone read)
        except OSError:
            return None

    def plan_device(self, sid: str, sb: dict, plan) -> bool:
        """Refuse a filesystem over several devices (-d raid1, `btrfs device add`): it mounts only
        once the kernel knows every one, and restore attaches a loop device for the source alone."""
        dev = sb["device"]["dev"]
        fellows = fellow_devices(dev)
        if len(fellows) > 1:
            raise one_device_only(sid, sb, plan, _spans(fellows), dev)
        return super().plan_device(sid, sb, plan)

    def precheck(self, sid: str, sb: dict, plan) -> None:
        """Before the tree is stopped, where the mount shows an anonymous device: plan_device's
        refusal of a filesystem over several devices, told by BTRFS_IOC_FS_INFO through an fd on one
        of its mounts (num_devices, and the fsid that names them in /sys/fs/btrfs). Not when one of
        them is declared --external dev[MAJ:MIN] (nor when no mount can be opened: dump tells)."""
        fd = plan.open_sb_mount(sid)
        if fd is None:
            return
        try:
            buf = fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, bytes(1024))
        except OSError:
            return
        finally:
            os.close(fd)
        (count,) = struct.unpack_from("<Q", buf, 8)
        if count <= 1:
            return
        try:
            devs = list(_devices("/sys/fs/btrfs", _fsid(buf)))
        except OSError:
            devs = []
        if set(devs) & plan.ext_devs:
            return
        raise one_device_only(sid, sb, plan, _spans(sorted(devs)) if devs else f"the filesystem spans {count} devices",
                              devs[0] if devs else None)


def _fsid(info: bytes) -> str:
    """The fsid of a BTRFS_IOC_FS_INFO answer as uuid.UUID prints it (uuid costs every run an
    import), the name of its directory in /sys/fs/btrfs."""
    b = bytes(info[16:32]).hex()
    return f"{b[:8]}-{b[8:12]}-{b[12:16]}-{b[16:20]}-{b[20:]}"


def _spans(fellows: list[str]) -> str:
    """What a refusal of a filesystem over the devices `fellows` says of them."""
    return f"the filesystem spans {len(fellows)} devices ({' '.join(fellows)})"


def fellow_devices(dev: str | None, base: str = "/sys/fs/btrfs") -> list[str]:
    """"MAJ:MIN" of every device of the btrfs filesystem that block device `dev` belongs to (the
    host's /sys/fs/btrfs/FSID/devices), sorted; [] when no btrfs filesystem lists it."""
    try:
        fsids = os.listdir(base)
    except OSError:
        return []
    for fsid in fsids:
        try:
            devs = list(_devices(base, fsid))
        except OSError:
            continue
        if dev in devs:
            return sorted(devs)
    return []


def _devices(base: str, fsid: str):
    """Yield "MAJ:MIN" of each device of btrfs filesystem `fsid` (BASE/FSID/devices/NAME/dev, by
    NAME), read as asked for; OSError when one cannot be read."""
    for name in sorted(os.listdir(f"{base}/{fsid}/devices")):
        with open(f"{base}/{fsid}/devices/{name}/dev") as f:
            yield f.read().strip()


# subvol=/x and subvolid select what the mount shows: its root says the same, and fsconfig
# would mount that subvolume as the superblock's root.
TYPE = register(BtrfsType("btrfs", drop_opts=frozenset({"subvol", "subvolid"}), requires=("btrfs",),
                          recipe=block_recipe("mkfs.btrfs -q", "128M")))
