"""Mounts made outside the tree in the ns flavor (`container: {outside, binds, externals}`, CRIU's
mnt_ext_* tests): made in the keeper's own mount namespace, bound into the container, declared
external and restored from there. Nothing is mounted on the host (checked)."""

from __future__ import annotations

import os

import pytest

from test_runner_external_slavery import _outer_sh, dump_and_restore_in_keeper, started, write
from zdtm import backends, scenario
from zdtm.flavors import SetupError
from zdtm.leakguard import leaked, read_mountinfo

MINIMAL = "description: d\nsetup: exec zdtm-hold\n"
OUTSIDE = """\
container:
  outside: |
    mount -t tmpfs zdtm_outside $OUT
    mkdir $OUT/src; echo before > $OUT/src/f
  binds:
    /mnt/lower: src
  externals:
    /mnt/ext: src
setup: |
  mkdir -p /mnt/ext; mount --bind /mnt/lower /mnt/ext
  exec zdtm-hold
"""


def test_container_outside_keys(tmp_path):
    s = scenario.load(write(tmp_path, "description: d\n" + OUTSIDE)).render_all()[0]
    c = s.container
    assert c.binds == (("/mnt/lower", "src"),) and c.externals == (("/mnt/ext", "src"),)
    assert c.outer and not c.external_slavery
    assert not scenario.Container().outer


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
def test_outside_mount_is_declared_external_and_restored_from_outside(tmp_path):
    from zdtm.flavors.ns import FLAVOR as NS
    s = scenario.load(write(tmp_path, "description: d\n" + OUTSIDE)).render_all()[0]
    work = str(tmp_path / "work")
    with started(NS, s, work) as got:
        running = got["running"]
        out = os.path.join(work, "outside")
        assert [(e.key, e.mountpoint, e.host_path) for e in running.externals if e.key.startswith("outside")] == \
            [("outside-mnt-ext", "/mnt/ext", os.path.join(out, "src"))]
        with open(f"/proc/{running.pid}/root/mnt/ext/f") as f:
            assert f.read() == "before\n"
        got["restored"] = restored = dump_and_restore_in_keeper(NS, running, s, tmp_path, work)
        # the restored mounts are the outside tmpfs itself: a file written there now shows in both
        _outer_sh(running.handle.proc.pid, f"echo after > {out}/src/f")
        for mp in ("/mnt/ext", "/mnt/lower"):
            with open(f"/proc/{restored}/root{mp}/f") as f:
                assert f.read() == "after\n", mp


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
def test_failing_outside_script_is_a_setup_error_with_its_output(tmp_path):
    from zdtm.flavors.ns import FLAVOR as NS
    host_before = read_mountinfo()
    text = MINIMAL + "container:\n  outside: |\n    echo outside-said-this\n    false\n"
    s = scenario.load(write(tmp_path, text)).render_all()[0]
    with pytest.raises(SetupError, match="(?s)outside-said-this.*container.outside exited with status 1"):
        NS.start(s, str(tmp_path / "work"))
    assert leaked(host_before, read_mountinfo()) == []


FILE_BIND = """\
description: d
container:
  outside: |
    mkdir $OUT/tmp; mount -t tmpfs zdtm_file $OUT/tmp; echo in-tmpfs > $OUT/tmp/f
    : > $OUT/file; mount --bind $OUT/tmp/f $OUT/file; umount -l $OUT/tmp
  binds:
    /mnt/f: file
  externals:
    /mnt/f: file
setup: exec zdtm-hold
check: cat /mnt/f
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
@pytest.mark.parametrize("forced", ["", "flags=remount,sources=yard,sharing=construct,ids=mountinfo"])
def test_external_file_bind_restores(tmp_path, monkeypatch, forced):
    """An external that is a file bind (CRIU's mnt_ext_file_bind_auto), also on the 5.10 path, which
    attaches external sources in its yard: on a file there, not a directory (EINVAL before)."""
    from engine import strategy
    from zdtm import cycle
    from zdtm.flavors.ns import FLAVOR as NS
    if forced:
        monkeypatch.setenv("MNTCR_STRATEGY", forced)
    strategy.reset()
    s = scenario.load(write(tmp_path, FILE_BIND)).render_all()[0]
    work = str(tmp_path / "work")
    try:
        with started(NS, s, work) as got:
            with open(f"/proc/{got['running'].pid}/root/mnt/f") as f:
                assert f.read() == "in-tmpfs\n"
            # (restores and compares the states, check output included; CycleFailure otherwise)
            backend = NS.backend_for(got["running"], backends.create("mntcr"))
            assert cycle.run(s, backend, NS, got["running"], work).kind == "pass"
    finally:
        monkeypatch.delenv("MNTCR_STRATEGY", raising=False)
        strategy.reset()
