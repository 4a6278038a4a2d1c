"""The box's base volume in libvirt's storage pool, shared by every process and cache on the machine.

    with box_volume.held(box_name, box_image):   # around the `vagrant up`
        vm.v.up(provider="libvirt")

vagrant-libvirt uploads the box's image (box.img as `vagrant box add` unpacked
it under VAGRANT_HOME) into the pool ("default") the first time a machine of
it comes up, and reuses a volume of that name from then on. The name is the
box name plus, for a box without a version like ours, the image file's mtime
in seconds (volume_name). Two hazards follow, both seen with an empty MNTCR_CACHE:
- two processes (xdist workers) bringing up the first machine at once both
  find no volume and both create it: the second fails with "storage volume
  ... exists already" (vagrant-libvirt's lock is a Mutex inside one process);
- the pool outlives a cache directory and a killed upload: a volume of that
  name left half-written, or made from another image with the same name and
  second, would be reused silently.

So a `vagrant up` runs under a lock on a file beside the pool's boot files
(system-wide, like the pool; a lock inside one cache would not see another
cache's processes): exclusive while the volume is checked, replaced or
uploaded, shared while machines merely build on it. Which image a volume was
uploaded from is recorded beside it (vagrant-libvirt records nothing); a
volume without a matching record is removed, saying so, and uploaded again.
Volumes of other names (other caches' boxes) are not touched.
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


def volume_name(box_name: str, box_image: Path) -> str:
    """The pool volume vagrant-libvirt makes of a version-less box's image (its get_volume_name)."""
    return (box_name.replace("/", "-VAGRANTSLASH-") + f"_vagrant_box_image_0_{int(box_image.stat().st_mtime)}"
            "_box.img")


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", *args], capture_output=True, text=True, timeout=120)


def volume_path(vol: str) -> str | None:
    """The path of pool volume `vol`, or None when the pool has no such volume."""
    for line in _virsh("vol-list", POOL).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == vol:
            return parts[1]
    return None


def _image_identity(box_image: Path) -> dict:
    st = box_image.stat()
    return {"image": str(box_image.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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


def _record(vol: str, path: str, box_image: Path) -> None:
    ident = _volume_identity(path)
    if ident is None:
        return
    tmp = _record_path(vol).with_suffix(f".{os.getpid()}.partial")
    tmp.write_text(json.dumps({"from": _image_identity(box_image), "volume": ident}))
    tmp.rename(_record_path(vol))


def matches(vol: str, path: str, box_image: Path) -> bool:
    """Whether the pool volume is the one uploaded from box_image (and unchanged since)."""
    rec = _recorded(vol)
    return bool(rec) and rec.get("from") == _image_identity(box_image) and rec.get("volume") == _volume_identity(path)


def _remove(vol: str, box_image: Path) -> None:
    say(f"libvirt pool volume {vol} was not uploaded from {box_image} (an interrupted upload, or another "
        "cache's image of the same name): removing it, vagrant up uploads the image again")
    p = _virsh("vol-delete", "--pool", POOL, vol)
    if p.returncode != 0 and volume_path(vol) is not None:
        raise VMError(f"cannot remove the stale libvirt volume {vol}: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
                      f" (remove it with: virsh vol-delete --pool {POOL} {vol})")
    _record_path(vol).unlink(missing_ok=True)


@contextmanager
def held(box_name: str, box_image: Path):
    """Hold the pool volume of the box for a `vagrant up`: checked, a stale one replaced, uploads serialised."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    vol = volume_name(box_name, box_image)
    with open(STATE_DIR / "pool.lock", "a+") as lock:
        # POSIX record locks: turning the exclusive lock into a shared one is atomic (flock's is not),
        # so no other process can remove the checked volume in between.
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            path = volume_path(vol)
            if path is not None and not matches(vol, path, box_image):
                _remove(vol, box_image)
                path = None
            uploading = path is None
            if not uploading:
                fcntl.lockf(lock, fcntl.LOCK_SH)
            try:
                yield
            finally:
                path = volume_path(vol) if uploading else None
                if path is not None:
                    _record(vol, path, box_image)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
