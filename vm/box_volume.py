"""The box's base volume in libvirt's storage pool, shared by every process and cache on the machine.

    with box_volume.held(box_name, box_file):   # around the `vagrant up`
        vm.v.up(provider="libvirt")

vagrant-libvirt uploads a box into the pool ("default") the first time a
machine of it comes up, under a name made from the box name only, and reuses
a volume of that name from then on. Two hazards follow, both seen with an
empty MNTCR_CACHE:
- two processes (xdist workers) bringing up the first machine at once both
  find no volume and both create it: the second fails with "storage volume
  ... exists already" (vagrant-libvirt's lock is a Mutex inside one process);
- the pool outlives a cache directory: a volume of the same name uploaded
  from another cache's box (built separately: not the same bytes) or left
  half-written by a killed upload would be reused silently.

So a `vagrant up` runs under a lock on a file beside the pool's boot files
(system-wide, like the pool; a lock inside one cache would not see another
cache's processes): exclusive while the volume is checked, replaced or
uploaded, shared while machines merely build on it. Which box file a volume
was uploaded from is recorded beside it (vagrant-libvirt records nothing);
a volume without a matching record is removed, saying so, and uploaded again.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from vm.errors import VMError
from vm.progress import say

POOL = "default"
# Beside the kernels and initrds staged for libvirt (vm.vagrant.BOOT_DIR): one place per machine.
STATE_DIR = Path("/var/lib/libvirt/images/mntcr-boot")


def volume_prefix(box_name: str) -> str:
    """The start of the pool volume name vagrant-libvirt gives the box's image (then version, disk)."""
    return box_name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", *args], capture_output=True, text=True, timeout=120)


def pool_volumes(box_name: str) -> dict[str, str]:
    """The pool's volumes of this box: name -> path."""
    p = _virsh("vol-list", POOL)
    prefix = volume_prefix(box_name)
    out = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(prefix):
            out[parts[0]] = parts[1]
    return out


def _box_identity(box_file: Path) -> dict:
    st = box_file.stat()
    return {"box": str(box_file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _volume_identity(path: str) -> dict | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _record_path(vol: str) -> Path:
    return STATE_DIR / f"{vol}.source.json"


def _recorded(vol: str) -> dict | None:
    try:
        return json.loads(_record_path(vol).read_text())
    except (OSError, ValueError):
        return None


def _record(vol: str, path: str, box_file: Path) -> None:
    ident = _volume_identity(path)
    if ident is None:
        return
    tmp = _record_path(vol).with_suffix(f".{os.getpid()}.partial")
    tmp.write_text(json.dumps({"from": _box_identity(box_file), "volume": ident}))
    tmp.rename(_record_path(vol))


def matches(vol: str, path: str, box_file: Path) -> bool:
    """Whether the pool volume is the one uploaded from box_file (and unchanged since)."""
    rec = _recorded(vol)
    return bool(rec) and rec.get("from") == _box_identity(box_file) and rec.get("volume") == _volume_identity(path)


def _remove(vol: str, box_file: Path) -> None:
    say(f"libvirt pool volume {vol} was not uploaded from {box_file} (another MNTCR_CACHE's box, "
        "or an interrupted upload): removing it, vagrant up uploads this box again")
    p = _virsh("vol-delete", "--pool", POOL, vol)
    if p.returncode != 0 and _exists(vol):
        raise VMError(f"cannot remove the stale libvirt volume {vol}: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
                      f" (remove it with: virsh vol-delete --pool {POOL} {vol})")
    _record_path(vol).unlink(missing_ok=True)


def _exists(vol: str) -> bool:
    return _virsh("vol-info", "--pool", POOL, vol).returncode == 0


@contextmanager
def held(box_name: str, box_file: Path):
    """Hold the pool volume of box_name for a `vagrant up`: checked, stale ones replaced, uploads serialised."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "pool.lock", "a+") as lock:
        # POSIX record locks: turning the exclusive lock into a shared one is atomic (flock's is not),
        # so no other process can remove the checked volume in between.
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            vols = pool_volumes(box_name)
            for vol, path in vols.items():
                if not matches(vol, path, box_file):
                    _remove(vol, box_file)
            uploading = not pool_volumes(box_name)
            if not uploading:
                fcntl.lockf(lock, fcntl.LOCK_SH)
            try:
                yield
            finally:
                if uploading:
                    for vol, path in pool_volumes(box_name).items():
                        _record(vol, path, box_file)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
