"""Images that cross kernels: a tree dumped in a throwaway VM of an older kernel (Debian's 6.1 and
5.10) restores on this one, and one dumped here restores in a 6.1 VM. The image travels through
the directory the VM shares with the host (9p: the dump writes it there), the dumped tree's
snapshot beside it; the restore is compared with it as every engine test does, but for what two
machines rightly show differently (tests/portable_guest.py `comparable`).

Marked vm and slow: each case boots a VM under TCG (1.5 to 3 minutes with the dump or restore in it on a
loaded 2-core host), so CI (CI=true) skips them, saying so, unless MNTCR_PORTABLE_VM=1; skipped
with the reason when qemu is missing; a kernel not yet cached is fetched first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import portable_guest
from enginecase import EngineCase, host_mountinfo, mounts_added, py_hold

pytestmark = [pytest.mark.vm, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parent.parent
GUEST = str(PROJECT / "tests" / "portable_guest.py")

# Mounts whose options older kernels print otherwise (a tmpfs with size and mode, an overlay on
# tmpfs layers), sharing (a shared/slave pair: 5.10 has no MOVE_MOUNT_SET_GROUP), a bind of a
# subdirectory, an fd on a file, a ghost, a memfd with a seal every one of those kernels has.
SETUP = """
mkdir -p /mnt/t /mnt/b /mnt/s /mnt/sl /mnt/o
mount -t tmpfs -o size=4m,mode=0750 t /mnt/t; mkdir -p /mnt/t/d /mnt/t/lo /mnt/t/up /mnt/t/wk
echo hello > /mnt/t/d/f; echo gone > /mnt/t/g; echo low > /mnt/t/lo/l
mount -t overlay -o lowerdir=/mnt/t/lo,upperdir=/mnt/t/up,workdir=/mnt/t/wk ov /mnt/o; echo up > /mnt/o/u
mount --bind /mnt/t/d /mnt/b
mount -t tmpfs s /mnt/s; mount --make-shared /mnt/s; mount --bind /mnt/s /mnt/sl; mount --make-slave /mnt/sl
echo shared > /mnt/s/x
exec 7</mnt/t/d/f 8</mnt/t/g 6</mnt/o/l
rm /mnt/t/g
""" + py_hold("""
import fcntl
m = os.memfd_create("m", os.MFD_ALLOW_SEALING); os.write(m, b"sealed"); fcntl.fcntl(m, 1033, 0x8); os.dup2(m, 9)
""")
CHECK = "cat /mnt/b/f /mnt/sl/x /mnt/o/l /mnt/o/u; cat /proc/self/mountinfo >/dev/null"


def _kernel(name: str):
    if os.environ.get("CI") and not os.environ.get("MNTCR_PORTABLE_VM"):
        pytest.skip("a VM under TCG and a C/R in it: 1.5-3 minutes a case, more than CI's quick job takes; "
                    "MNTCR_PORTABLE_VM=1 runs it")
    if os.geteuid() != 0:
        pytest.skip("dumps and restores trees: needs root")
    from vm import kernels, matrix, qemu
    why = qemu.unavailable()
    if why:
        pytest.skip(why)
    return kernels.ensure(matrix.lookup(name))   # (fetched into the cache on first use, as tests/test_vm_boot.py)


def _shared_dir(tmp_path: Path) -> str:
    d = tmp_path / "shared"
    d.mkdir()
    (d / "setup.sh").write_text(SETUP)
    (d / "check.sh").write_text(CHECK)
    return str(d)


def _in_vm(kernel, d: str, *args: str) -> None:
    from vm.qemu import QemuVM
    with QemuVM(kernel, d) as v:
        r = v.run([v.guest_python(), GUEST, *args], cwd=PROJECT, timeout=900)
    assert r.status == 0, f"in the {kernel.version} VM: exit {r.status}\n{r.stdout}{r.stderr[-4000:]}"


def _host_capbnd() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("CapBnd:"))


@pytest.mark.parametrize("name", ["6.1", "5.10"])
def test_dumped_on_an_older_kernel_restores_here(name, tmp_path):
    """Dump in the VM (the tree holding no capability this host's root lacks), restore here: exact."""
    kernel = _kernel(name)
    d = _shared_dir(tmp_path)
    _in_vm(kernel, d, "dump", d, _host_capbnd())
    before = host_mountinfo()
    case = EngineCase(str(tmp_path / "host"))
    os.mkdir(case.workdir)
    try:
        portable_guest.restore_from(case, d)
    finally:
        case.close()
    assert not mounts_added(before, host_mountinfo())
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", ["6.1", "5.10"])
def test_dumped_here_restores_on_an_older_kernel(name, tmp_path):
    """Dump here, restore in the VM from the shared directory: exact."""
    kernel = _kernel(name)
    d = _shared_dir(tmp_path)
    case = EngineCase(str(tmp_path / "host"))
    os.mkdir(case.workdir)
    try:
        portable_guest.dump_into(case, d)
    finally:
        case.close()
    _in_vm(kernel, d, "restore", d)

