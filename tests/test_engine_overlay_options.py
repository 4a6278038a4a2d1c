"""overlayfs options that change what its layers hold beyond their files (engine/fs/overlay.py):
metacopy and redirect_dir keep their xattrs in the archived upper layer and come back as they
were; data-only lower layers (`::`) too; a volatile overlay leaves a work/incompat/volatile/dirty
mark the kernel refuses to mount again, which restore removes from the workdir it made afresh
(twice: the restored overlay marks it again); index=on and nfs_export=on record the layers'
files by file handle, which layers restore makes afresh cannot match: refused before the stop,
and so is a volatile overlay whose workdir restore mounts again as it is (a loop device)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from enginecase import case  # noqa: F401  (fixture)
from test_engine_nsbind import _refusal

SETUP = """
mkdir /run/l; mount -t tmpfs l /run/l; cd /run/l; mkdir -p l1/d l2 data upper work merged
echo one > l1/d/a; echo two > l2/b; echo big > data/big
mount -t overlay o -o {opts} /run/l/merged
cd /run/l/merged; {act}
exec 7<d/a
hold
"""
CHECK = """
grep ' /run/l/merged ' /proc/self/mountinfo | cut -d' ' -f4- | sed 's/ - .* rw,/ - /'
cd /run/l/merged; find . | sort | while read f; do stat -c '%n %A %s' "$f"; done
cat /proc/1/fd/7 b
find /run/l/upper | sort | while read f; do getfattr -d -m trusted.overlay -e text --absolute-names "$f"; done \
  2>/dev/null | grep -v '^$' | grep -v 'overlay.origin=\\|overlay.uuid='
"""


def _need_overlay():
    with open("/proc/filesystems") as f:
        if "\toverlay\n" not in f.read():
            pytest.skip("the kernel has no overlayfs (not in /proc/filesystems)")
    if shutil.which("getfattr") is None:
        pytest.skip("getfattr is not installed (Debian package attr)")


def _kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) >= (major, minor)


LAYERS = "lowerdir=/run/l/l1:/run/l/l2,upperdir=/run/l/upper,workdir=/run/l/work"


def test_metacopy_and_redirects_come_back(case):
    """A metacopy upper file (chmod copies up only its metadata) and a renamed directory (a
    redirect xattr): the same files, modes and overlay xattrs after two C/Rs."""
    _need_overlay()
    setup = SETUP.format(opts=LAYERS + ",metacopy=on,redirect_dir=on",
                         act="chmod 600 d/a; mv d e; mkdir d; cp e/a d/a; chmod 640 b")
    *_, after = case.roundtrip(setup, check=CHECK, iters=2)
    out = after.snap.check_output
    assert "trusted.overlay.metacopy" in out and 'trusted.overlay.redirect="d"' in out, out
    assert "./e/a -rw------- 4" in out and "./b -rw-r----- 4" in out, out


def test_data_only_lower_layers_come_back(case):
    """`lowerdir=A:B::DATA`: a data-only layer (Linux >= 6.5) is kept in the options and the layers."""
    _need_overlay()
    if not _kernel_at_least(6, 5):
        pytest.skip("data-only lower layers need Linux >= 6.5")
    setup = SETUP.format(opts=LAYERS.replace("/run/l/l2", "/run/l/l2::/run/l/data") + ",metacopy=on,redirect_dir=on",
                         act="true")
    _, after = case.roundtrip(setup, check=CHECK, iters=1)
    assert "lowerdir=/run/l/l1:/run/l/l2::/run/l/data" in after.snap.check_output


def test_volatile_overlay_restored_twice(case):
    """A volatile overlay (`podman run --rm` mounts its container's root so): its workdir's
    work/incompat/volatile/dirty mark, which made the restored mount fail with EINVAL, is removed
    from the restored copy; the options still say volatile and the files are the same."""
    _need_overlay()
    setup = SETUP.format(opts=LAYERS + ",volatile", act="echo x > new; rm b")
    *_, after = case.roundtrip(setup, check=CHECK, iters=2)
    out = after.snap.check_output
    assert "volatile" in out.splitlines()[0], out
    assert "./new -rw-r--r-- 2" in out and "./b " not in out, out


@pytest.mark.parametrize("opts", ["index=on", "index=on,nfs_export=on"])
def test_index_on_fresh_layers_refused_unstopped(case, opts):
    """index=on records the layers' files by handle (the upper root's origin, the index's upper):
    on the tmpfs restore makes afresh the kernel failed with ESTALE; dump now refuses first."""
    _need_overlay()
    msg = _refusal(case, SETUP.format(opts=LAYERS + "," + opts, act="echo more >> b"))
    assert re.search(rf"mount \d+ \(/run/l/merged\) on overlay: mounted with {opts}, which records the files "
                     r"of its layers by file handle, and its layer /run/l/l1 lies on a filesystem restore "
                     r"makes afresh .*mount it with index=off", msg), msg


def test_volatile_on_a_kept_workdir_refused_unstopped(case):
    """A volatile overlay whose layers lie on an ext4 loop image: restore mounts that filesystem as
    it is, with the mark in its workdir, and the kernel would refuse it: refused before the stop."""
    _need_overlay()
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (Debian package e2fsprogs)")
    from test_engine_hardcases import LOOP_NODES
    setup = LOOP_NODES + """
truncate -s 32M /tmp/disk.img; mkfs.ext4 -q /tmp/disk.img
mkdir /run/l; mount -o loop /tmp/disk.img /run/l; cd /run/l; mkdir -p l1/d upper work merged; echo one > l1/d/a
mount -t overlay o -o lowerdir=/run/l/l1,upperdir=/run/l/upper,workdir=/run/l/work,volatile /run/l/merged
exec 7</run/l/merged/d/a
hold
"""
    msg = _refusal(case, setup)
    assert re.search(r"mount \d+ \(/run/l/merged\) on overlay: a volatile overlay whose workdir /run/l/work is "
                     r"not made afresh by restore", msg), msg
