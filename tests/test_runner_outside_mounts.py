"""Mounts made outside the tree in the ns flavor (`container: {outside, binds, externals}`, CRIU's
mnt_ext_* tests): made in the keeper's own mount namespace, bound into the container, declared
external and restored from there. Nothing is mounted on the host (checked)."""

from __future__ import annotations

import os
import subprocess

import pytest

from zdtm import backends, scenario, snapshot
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


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_container_outside_keys(tmp_path):
    s = scenario.load(write(tmp_path, "description: d\n" + OUTSIDE)).render_all()[0]
    c = s.container
    assert c.binds == (("/mnt/lower", "src"),) and c.externals == (("/mnt/ext", "src"),)
    assert c.outer and not c.external_slavery
    assert not scenario.Container().outer


@pytest.mark.parametrize("text, fragment", [
    ("container: {externals: {/mnt/x: a}}\n", "key 'container.externals' needs 'container.outside'"),
    ("container: {outside: 'true', binds: {/mnt/x: /abs}}\n", "key 'container.binds': expected a mapping"),
    ("container: {outside: 'true', binds: {/mnt/x: ../up}}\n", "key 'container.binds': expected a mapping"),
    ("container: {outside: 'true', externals: {rel: a}}\n", "key 'container.externals': expected a mapping"),
    ("container: {outside: [a]}\n", "key 'container.outside' must be an sh script"),
])
def test_container_outside_errors(tmp_path, text, fragment):
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(write(tmp_path, MINIMAL + text)).render_all()
    assert fragment in str(e.value)


def _outer_sh(keeper_pid, script):
    r = subprocess.run(["nsenter", "-t", str(keeper_pid), "-m", "--", "sh", "-ec", script],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
def test_outside_mount_is_declared_external_and_restored_from_outside(tmp_path):
    from zdtm.flavors.ns import FLAVOR as NS
    host_before = read_mountinfo()
    s = scenario.load(write(tmp_path, "description: d\n" + OUTSIDE)).render_all()[0]
    work = str(tmp_path / "work")
    running = NS.start(s, work)
    restored = None
    try:
        out = os.path.join(work, "outside")
        assert [(e.key, e.mountpoint, e.host_path) for e in running.externals if e.key.startswith("outside")] == \
            [("outside-mnt-ext", "/mnt/ext", os.path.join(out, "src"))]
        with open(f"/proc/{running.pid}/root/mnt/ext/f") as f:
            assert f.read() == "before\n"
        backend = NS.backend_for(running, backends.create("mntcr"))
        ctx = backends.Context(scenario=s, flavor=NS, log_dir=str(tmp_path / "logs"), workdir=work)
        backend.dump(running.pid, str(tmp_path / "img"), running.externals, ctx)
        NS.forget(running)
        restored = backend.restore(str(tmp_path / "img"), running.externals, ctx)
        # the restored mounts are the outside tmpfs itself: a file written there now shows in both
        keeper = running.handle.proc.pid
        _outer_sh(keeper, f"echo after > {out}/src/f")
        for mp in ("/mnt/ext", "/mnt/lower"):
            with open(f"/proc/{restored}/root{mp}/f") as f:
                assert f.read() == "after\n", mp
    finally:
        if restored:
            snapshot.kill_tree(restored)
        NS.stop(running)
    assert running.handle.proc.poll() is not None
    assert leaked(host_before, read_mountinfo()) == []


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
    host_before = read_mountinfo()
    s = scenario.load(write(tmp_path, FILE_BIND)).render_all()[0]
    work = str(tmp_path / "work")
    running = NS.start(s, work)
    try:
        with open(f"/proc/{running.pid}/root/mnt/f") as f:
            assert f.read() == "in-tmpfs\n"
        # (restores and compares the states, check output included; CycleFailure otherwise)
        assert cycle.run(s, NS.backend_for(running, backends.create("mntcr")), NS, running, work).kind == "pass"
    finally:
        NS.stop(running)
        monkeypatch.delenv("MNTCR_STRATEGY", raising=False)
        strategy.reset()
    assert leaked(host_before, read_mountinfo()) == []
