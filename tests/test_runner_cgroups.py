"""zdtm/cgroups.py: a run's teardown removes the cgroups it made (named with its tag), only those,
also when setup fails; what it cannot remove fails the item.

Runtime scenarios (crun, lxc, podman, nspawn) left empty cgroups in the host's hierarchy that only a
later run removed, after 30 minutes: these runs make them the way the runtimes do, with plain mkdir.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from engine import forkrun, kernel
from zdtm import cgroups, item, scenario
from zdtm.flavors import ns

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the ns place needs root (namespaces, mounts)")


def _listing(base: str, token: str) -> list[str]:
    os.makedirs(base, exist_ok=True)

    def look():
        kernel.mount("cgroup2", base, "cgroup2", 0)
        return sorted(n for n in os.listdir(base) if token in n)
    return forkrun.in_mount_ns(look)


def _spec(tmp_path, setup: str):
    p = tmp_path / "s.yaml"
    p.write_text("description: d\nsetup: |\n" + "".join(f"  {line}\n" for line in setup.splitlines()))
    sc = scenario.load(str(p)).render_all()[0]
    return item.ItemSpec(scenario=sc, backend="mntcr", flavor="ns", iters=1)


# a cgroup of the run (and one beneath, as runtimes make), a process of the tree in it
MAKE = ("mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup\n"
        "cg=/sys/fs/cgroup/mntcr-zdtmtest-{token}-$ZDTM_RUN_ID\n"
        "mkdir -p $cg/payload\n"
        "sh -c 'echo $$ > '$cg/payload/cgroup.procs'; exec sleep 100000' </dev/null >/dev/null 2>&1 &\n"
        # (until it runs sleep: the shell still holds cgroup.procs open for its echo, and umount is busy)
        "while [ \"$(cat /proc/$(cat $cg/payload/cgroup.procs)/comm 2>/dev/null)\" != sleep ]; do sleep 0.05; done\n"
        "umount /sys/fs/cgroup\n")


def test_hierarchies_of_a_cgroup_file_and_a_tag_that_matches_everything_is_refused():
    text = "12:name=x:/\n5:cpu,cpuacct:/a\n1:net_cls,net_prio:/\n0::/b\n"
    assert cgroups.v1_hierarchies(text) == ["none,name=x", "cpu,cpuacct", "net_cls,net_prio"]
    with pytest.raises(ValueError):
        cgroups.remove("")


@root_only
def test_a_passing_run_removes_its_cgroups_and_leaves_another_runs(tmp_path):
    token = uuid.uuid4().hex[:8]
    other = cgroups.new_tag()
    look = str(tmp_path / "look")

    def make_other(base):
        kernel.mount("cgroup2", base, "cgroup2", 0)
        os.mkdir(os.path.join(base, f"mntcr-zdtmtest-{token}-{other}"))
    os.makedirs(look)
    forkrun.in_mount_ns(make_other, look)
    try:
        out = item.run(_spec(tmp_path, MAKE.format(token=token) + "exec zdtm-hold\n"), ns.FLAVOR,
                       str(tmp_path / "work"))
        assert (out.outcome, out.message) == ("pass", "")
        assert _listing(look, token) == [f"mntcr-zdtmtest-{token}-{other}"]
    finally:
        assert cgroups.remove(other) == []
    assert _listing(look, token) == []


@root_only
def test_a_failed_setup_removes_its_cgroups(tmp_path):
    token = uuid.uuid4().hex[:8]
    out = item.run(_spec(tmp_path, MAKE.format(token=token) + "echo broken; exit 3\n"), ns.FLAVOR,
                   str(tmp_path / "work"))
    assert out.outcome == "setup-error" and "status 3" in out.message and "cgroups" not in out.message
    assert _listing(str(tmp_path / "look"), token) == []


class _OutsiderPlace:
    """The ns place, plus a process outside the tree in a cgroup carrying the run's tag."""

    name = "ns"

    def __init__(self, token):
        self.token, self.sleeper, self.tag = token, None, None

    def __getattr__(self, attr):
        return getattr(ns.FLAVOR, attr)

    def start(self, sc, workdir):
        running = ns.FLAVOR.start(sc, workdir)
        self.tag = running.handle.run_id
        self.sleeper = subprocess.Popen(["sleep", "100000"])
        path = f"{workdir}/cg"
        os.makedirs(path)

        def enter(pid):
            kernel.mount("cgroup2", path, "cgroup2", 0)
            os.mkdir(f"{path}/mntcr-zdtmtest-{self.token}-{self.tag}")
            with open(f"{path}/mntcr-zdtmtest-{self.token}-{self.tag}/cgroup.procs", "w") as f:
                f.write(str(pid))
        forkrun.in_mount_ns(enter, self.sleeper.pid)
        return running


@root_only
def test_a_cgroup_the_teardown_cannot_remove_fails_the_item(tmp_path, monkeypatch):
    token = uuid.uuid4().hex[:8]
    place = _OutsiderPlace(token)
    real = cgroups.remove
    monkeypatch.setattr(cgroups, "remove", lambda tag: real(tag, grace=0.3))
    try:
        out = item.run(_spec(tmp_path, "exec zdtm-hold\n"), place, str(tmp_path / "work"))
        assert (out.outcome, out.kind) == ("fail", "leak")
        assert f"cgroup2 /mntcr-zdtmtest-{token}-{place.tag}: still has processes (pids {place.sleeper.pid})" \
            in out.message
    finally:
        if place.sleeper:
            place.sleeper.kill()
            place.sleeper.wait()
        if place.tag:
            assert real(place.tag) == []
    assert _listing(str(tmp_path / "look"), token) == []
