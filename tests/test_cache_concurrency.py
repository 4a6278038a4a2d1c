"""Cache builders under concurrent first use (two xdist workers building the same entry)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vm import initramfs
from vm.kernels import Kernel


def _slow_build(kernel, modules, init):
    time.sleep(0.3)  # both builders are inside the build at the same time
    return b"cpio of " + kernel.name.encode()


@pytest.mark.skipif(not initramfs.BUSYBOX.exists(), reason="no /bin/busybox (apt-get install busybox-static)")
def test_two_processes_build_the_same_initramfs_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MNTCR_CACHE", str(tmp_path))
    monkeypatch.setattr(initramfs, "build_bytes", _slow_build)
    rename = Path.rename
    # both have written their file before either renames (the window of the race)
    monkeypatch.setattr(Path, "rename", lambda self, target: (time.sleep(0.3), rename(self, target))[1])
    kernel = Kernel("fake", "0.0-fake", tmp_path, tmp_path / "vmlinuz", None, tmp_path, ())
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if initramfs.ensure(kernel).read_bytes() == b"cpio of fake" else 1
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert codes == [0, 0]
    names = sorted(p.name for p in Path(tmp_path, "initramfs").iterdir())
    assert len(names) == 1 and names[0].startswith("fake-") and names[0].endswith(".cpio")
