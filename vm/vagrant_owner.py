"""Who owns each Vagrant machine, so a machine whose owner died is destroyed by the next run.

    fd = vagrant_owner.claim(vm_id, machine_dir)   # before `vagrant up`
    ...
    vagrant_owner.remove_domain(vm_id)             # when `vagrant destroy` left it defined
    vagrant_owner.release(vm_id, fd)               # after the machine is gone
    vagrant_owner.sweep()                          # before making a machine

libvirtd, not our process, runs a machine's qemu. When the process that made a machine is
killed (a CI run stopped with SIGKILL, the OOM killer, a lost terminal), its close() never runs
and the guest keeps a CPU busy and its disk in the pool until someone removes them. So the owner
holds an flock on OWNERS/ID.lock from before its `vagrant up` until its machine is gone: the
kernel drops that lock with the process however it dies. sweep() destroys every mntcr domain
whose lock nobody holds. The lock files live beside the pool's other state (system-wide, like
libvirt's domains: a run with another MNTCR_CACHE finds them too). A mntcr-* domain without a
lock file was made by an mntcr from before owners were recorded (or by hand): it is named, with
the commands that remove it, never removed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from vm import box_volume
from vm.progress import say

OWNERS = box_volume.STATE_DIR / "owners"
_DOMAIN = re.compile(r"mntcr-([0-9a-f]{8})-default")


def domain_name(vm_id: str) -> str:
    """The libvirt domain vagrant-libvirt makes for machine `vm_id` (the Vagrantfile's prefix + "default")."""
    return f"mntcr-{vm_id}-default"


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", *args], capture_output=True, text=True, timeout=120)


def claim(vm_id: str, machine_dir: Path) -> int:
    """Record this process as the owner of machine `vm_id`; the returned fd holds the record's lock."""
    OWNERS.mkdir(parents=True, exist_ok=True)
    # made under another name and linked when locked: a sweep never finds the record unlocked
    tmp = OWNERS / f"{vm_id}.{os.getpid()}.partial"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "dir": str(machine_dir)}).encode())
        os.link(tmp, OWNERS / f"{vm_id}.lock")   # (EEXIST: never replace another owner's record)
    except OSError:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return fd


def release(vm_id: str, fd: int | None, *, forget: bool = True) -> None:
    """Give up ownership of machine `vm_id`: its record is removed (forget), or left unlocked for the
    next sweep to destroy the machine (when this process could not)."""
    if forget:
        (OWNERS / f"{vm_id}.lock").unlink(missing_ok=True)
    if fd is not None:
        os.close(fd)


def defined_domains() -> list[str] | None:
    """Names of every libvirt domain, running or shut off; None when virsh cannot tell."""
    try:
        p = _virsh("list", "--all", "--name")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.split() if p.returncode == 0 else None


def remove_domain(vm_id: str) -> bool:
    """Stop and undefine machine `vm_id`'s domain and delete its disk volume (each step may find it
    gone); whether libvirt lists the domain no more."""
    name = domain_name(vm_id)
    for args in (("destroy", name), ("undefine", name, "--nvram"),
                 ("vol-delete", "--pool", box_volume.POOL, f"{name}.img")):
        try:
            _virsh(*args)
        except (OSError, subprocess.TimeoutExpired):
            pass
    left = defined_domains()
    return left is not None and name not in left


def _orphaned(vm_id: str) -> int | None:
    """An fd holding the lock of `vm_id`'s record when its owner is gone; None while the owner lives."""
    try:
        fd = os.open(OWNERS / f"{vm_id}.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _machine_dir(fd: int, vm_id: str) -> Path | None:
    try:
        d = Path(json.loads(os.pread(fd, 4096, 0) or b"{}").get("dir", ""))
    except (ValueError, AttributeError):
        return None
    # only what claim() recorded: a machine directory of this id, never another path
    return d if d.is_absolute() and d.name.startswith(f"vm-{vm_id}-") and d.parent.name == "machines" else None


def sweep() -> list[str]:
    """Destroy the mntcr machines whose owner process is gone; the names of those destroyed."""
    names = defined_domains()
    if names is None:
        return []
    gone = []
    for name in names:
        m = _DOMAIN.fullmatch(name)
        if not m:
            continue
        vm_id = m.group(1)
        if not (OWNERS / f"{vm_id}.lock").exists():
            say(f"libvirt domain {name} has no owner record (an mntcr from before owners were recorded, or "
                f"made by hand): left alone; if nothing uses it, remove it with: virsh destroy {name}; "
                f"virsh undefine {name} --nvram; virsh vol-delete --pool {box_volume.POOL} {name}.img")
            continue
        fd = _orphaned(vm_id)
        if fd is None:
            continue   # its owner runs
        removed = False
        try:
            say(f"libvirt domain {name}: the process that made it is gone (killed before it could destroy "
                "it): destroying it")
            removed = remove_domain(vm_id)
            if not removed:
                say(f"libvirt domain {name} is still defined (virsh failed): its record stays for the next run")
                continue
            d = _machine_dir(fd, vm_id)
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
            gone.append(name)
        finally:
            release(vm_id, fd, forget=removed)   # (kept, unlocked: a domain with no record is never swept)
    # records whose owner died before its domain was defined
    for lock in OWNERS.glob("*.lock") if OWNERS.is_dir() else ():
        vm_id = lock.stem
        if domain_name(vm_id) not in names:
            fd = _orphaned(vm_id)
            if fd is not None:
                release(vm_id, fd)
    return gone
