"""External slavery in the ns flavor (`container: {root: slave, host_dirs: ...}`) and the
MOVE_MOUNT_SET_GROUP requirement of scenarios that restore shared/slave mounts.

The outside peer groups live in the keeper's own mount namespace; nothing is
mounted on the host (the tests check the host's mountinfo is unchanged).
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from engine.features import Feature
from zdtm import backends, cycle, scenario, snapshot
from zdtm.leakguard import leaked, read_mountinfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = "description: d\nsetup: exec zdtm-hold\n"


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- schema ------------------------------------------------------------------------

def test_container_key_defaults_private(tmp_path):
    s = scenario.load(write(tmp_path, MINIMAL)).render_all()[0]
    assert s.container == scenario.Container()
    assert not s.container.external_slavery


@pytest.mark.parametrize("text, root, dirs", [
    ("container: {root: slave}\n", "slave", ()),
    ("container: {host_dirs: slave}\n", "private", ("usr", "bin", "lib", "lib64", "sbin", "etc")),
    ("container: {root: slave, host_dirs: [usr]}\n", "slave", ("usr",)),
])
def test_container_key_values(tmp_path, text, root, dirs):
    s = scenario.load(write(tmp_path, MINIMAL + text)).render_all()[0]
    assert (s.container.root, s.container.slave_host_dirs) == (root, dirs)
    assert s.container.external_slavery


def test_container_users_run_the_backend_in_the_keepers_namespace(tmp_path):
    """`container.users`: the users dump and restore know (engine/ownergroups.py reads their
    groups); no external slavery, but the keeper's own namespace (the files bound there)."""
    s = scenario.load(write(tmp_path, MINIMAL + 'container: {users: ["lg:100100:100100:27,29", "x:5:6:",'
                                                ' "ct:100000:100000::200000:65536"]}\n'))
    c = s.render_all()[0].container
    assert c.users == (("lg", 100100, 100100, (27, 29), None), ("x", 5, 6, (), None),
                       ("ct", 100000, 100000, (), (200000, 65536)))
    assert c.outer and not c.external_slavery


@pytest.mark.parametrize("text, fragment", [
    ("container: {root: shared}\n", "key 'container.root': bad value 'shared'; allowed: private, slave"),
    ("container: {host_dirs: [var]}\n", "key 'container.host_dirs': bad value ['var']"),
    ("container: {rooot: slave}\n", "unknown key 'container.rooot'; allowed: root, host_dirs"),
    ("container: slave\n", "key 'container' must be a mapping"),
    # mounts made outside the tree (tests/test_runner_outside_mounts.py)
    ("container: {externals: {/mnt/x: a}}\n", "key 'container.externals' needs 'container.outside'"),
    ("container: {outside: 'true', binds: {/mnt/x: /abs}}\n", "key 'container.binds': expected a mapping"),
    ("container: {outside: 'true', binds: {/mnt/x: ../up}}\n", "key 'container.binds': expected a mapping"),
    ("container: {outside: 'true', externals: {rel: a}}\n", "key 'container.externals': expected a mapping"),
    ("container: {outside: [a]}\n", "key 'container.outside' must be an sh script"),
    ("container: {outside: 'true', externals: {/a-b: x, /a/b: y}}\n", "key 'container.externals': two mount points"),
    ("container: {users: [\"u:1:2\"]}\n", "key 'container.users': bad entry 'u:1:2'; want NAME:UID:GID:GID,GID..."),
    ("container: {users: \"u:1:2:\"}\n", "key 'container.users' must be a list"),
    ("container: {users: [\"u:1:2:\\n\"]}\n", "key 'container.users': bad entry"),
    ("container: {users: [\"u:1:2::5\"]}\n", "key 'container.users': bad entry 'u:1:2::5'"),
    ("container: {users: [\"u:1:2::5:0\"]}\n", "or NAME:UID:GID:GID,GID...:START:COUNT (COUNT > 0"),
    ("container: {users: [\"u:1:2::5:00\"]}\n", "bad entry 'u:1:2::5:00'"),
    ("container: {users: [\"u:1:2::4294967295:2\"]}\n", "START + COUNT <= 2^32)"),
    ("container: {outside: 'true', binds: {/mnt/../../etc: a}}\n", "key 'container.binds': expected a mapping"),
])
def test_container_key_errors(tmp_path, text, fragment):
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(write(tmp_path, MINIMAL + text)).render_all()
    assert fragment in str(e.value)


# --- requires: MOVE_MOUNT_SET_GROUP --------------------------------------------------

def test_missing_feature_skip_reason_names_it_and_its_kernel():
    req = scenario.Requires(features=("MOVE_MOUNT_SET_GROUP",))
    absent = {"MOVE_MOUNT_SET_GROUP": Feature("MOVE_MOUNT_SET_GROUP", False, "Invalid argument", False, "5.15")}
    assert scenario.missing_requirement(req, absent) == \
        "kernel feature MOVE_MOUNT_SET_GROUP (kernel >= 5.15) is missing: Invalid argument"
    present = {"MOVE_MOUNT_SET_GROUP": Feature("MOVE_MOUNT_SET_GROUP", True, "ok", False, "5.15")}
    assert scenario.missing_requirement(req, present) is None
    assert scenario.missing_requirement(scenario.Requires(), absent) is None


def _sharing_combinations(path):
    return {s.param_id: "MOVE_MOUNT_SET_GROUP" in s.requires.features
            for s in scenario.load(os.path.join(ROOT, path)).render_all()}


def test_library_declares_set_group_only_where_no_order_builds_the_tree():
    # Without MOVE_MOUNT_SET_GROUP the engine builds peer groups while mounting (engine/construct.py):
    # shared and slave combinations need no requirement; only reparenting a shared parent
    # (which no creation order builds) declares it, templated per combination.
    sb = _sharing_combinations("scenarios/propagation/shared_bind.yaml")
    assert sb and not any(sb.values()), sb
    bm = _sharing_combinations("scenarios/propagation/bind_matrix.yaml")
    assert bm and not any(bm.values())
    assert not any(_sharing_combinations("scenarios/propagation/external_slavery.yaml").values())
    rp = _sharing_combinations("scenarios/propagation/reparent.yaml")
    assert not rp["parent=private"] and rp["parent=shared"], rp
    assert not any(_sharing_combinations("scenarios/basic/tmpfs.yaml").values())


# --- the ns flavor --------------------------------------------------------------------

def _mountinfo(pid):
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split() for line in f]


def _master_of(rows, mountpoint):
    for r in rows:
        if r[4] == mountpoint:
            return next((o for o in r[6:r.index("-")] if o.startswith("master:")), None)
    return None


def _outer_sh(keeper_pid, script):
    r = subprocess.run(["nsenter", "-t", str(keeper_pid), "-m", "--", "sh", "-ec", script],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@contextlib.contextmanager
def started(ns, s, work):
    """{"running": ns.start(s, work), "restored": None}; on the way out the restored tree (its pid
    put there) is killed, the place stopped, and the keeper must be gone and the host's mounts as
    they were."""
    host_before = read_mountinfo()
    got = {"running": ns.start(s, work), "restored": None}
    try:
        yield got
    finally:
        if got["restored"]:
            snapshot.kill_tree(got["restored"])
        ns.stop(got["running"])
    assert got["running"].handle.proc.poll() is not None
    assert leaked(host_before, read_mountinfo()) == []


def dump_and_restore_in_keeper(ns, running, s, tmp_path, work) -> int:
    """Dump the tree here, restore it through the flavor's backend (in the keeper's namespace); the
    restored pid. The keeper must hold its namespace past the dump."""
    backend = ns.backend_for(running, backends.create("mntcr"))
    ctx = backends.Context(scenario=s, flavor=ns, log_dir=str(tmp_path / "logs"), workdir=work)
    backend.dump(running.pid, str(tmp_path / "img"), running.externals, ctx)
    ns.forget(running)
    assert running.handle.proc.poll() is None, "the keeper must hold the outside groups until stop()"
    return backend.restore(str(tmp_path / "img"), running.externals, ctx)


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
def test_root_and_host_dirs_are_slaves_of_the_keepers_groups_and_stay_so_after_restore(tmp_path):
    from engine import features
    from zdtm.flavors.ns import FLAVOR as NS, ROOT_KEY
    if not features.available()["MOVE_MOUNT_SET_GROUP"].present:
        pytest.skip("kernel lacks MOVE_MOUNT_SET_GROUP (restoring slaves needs it)")
    s = scenario.load(write(tmp_path, MINIMAL + "container: {root: slave, host_dirs: [usr]}\n")).render_all()[0]
    work = str(tmp_path / "work")
    with started(NS, s, work) as got:
        running = got["running"]
        keeper = running.handle.proc.pid
        outer = os.path.join(work, "outer")
        assert [(e.key, e.mountpoint, e.host_path) for e in running.externals][0] == (ROOT_KEY, "/", outer)
        rows = _mountinfo(running.pid)
        root_master, usr_master = _master_of(rows, "/"), _master_of(rows, "/usr")
        assert root_master and usr_master and root_master != usr_master
        assert _master_of(rows, "/etc") is None          # not asked for: private as before
        # the masters are the keeper's shared groups, not host mounts
        krows = _mountinfo(keeper)
        kgroups = {r[4]: [o for o in r[6:r.index("-")] if o.startswith("shared:")] for r in krows}
        assert kgroups[outer] == ["shared:" + root_master.split(":")[1]]
        assert kgroups["/usr"] == ["shared:" + usr_master.split(":")[1]]
        got["restored"] = restored = dump_and_restore_in_keeper(NS, running, s, tmp_path, work)
        rows = _mountinfo(restored)
        assert _master_of(rows, "/") == root_master and _master_of(rows, "/usr") == usr_master
        # events in the outside group reach the restored root (it really is a slave there)
        _outer_sh(keeper, f"mkdir -p {outer}/late && mount -t tmpfs zdtm-late {outer}/late")
        assert any(r[4] == "/late" and "zdtm-late" in r for r in _mountinfo(restored))


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
def test_without_the_keepers_namespace_the_restore_cannot_join_the_groups(tmp_path):
    """The plain backend restores in the runner's namespace, where the outside groups do not exist."""
    from engine import features
    from zdtm.flavors.ns import FLAVOR as NS
    if not features.available()["MOVE_MOUNT_SET_GROUP"].present:
        pytest.skip("kernel lacks MOVE_MOUNT_SET_GROUP (restoring slaves needs it)")
    s = scenario.load(write(tmp_path, MINIMAL + "container: {root: slave}\n")).render_all()[0]
    running = NS.start(s, str(tmp_path / "work"))
    try:
        with pytest.raises(cycle.CycleFailure, match="mntcr restore failed"):
            cycle.run(s, backends.create("mntcr"), NS, running, str(tmp_path / "work"))
    finally:
        NS.stop(running)
