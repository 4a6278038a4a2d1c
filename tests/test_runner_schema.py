"""Scenario files: schema errors name file, line, key and what is allowed; matrix expansion; requirements."""

import os

import pytest

from zdtm import scenario, schema


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


MINIMAL = "description: d\nsetup: exec zdtm-hold\n"


def test_unknown_top_key_names_file_line_key_and_allowed(tmp_path):
    path = write(tmp_path, MINIMAL + "chek: ls\n")
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: ")
    assert "unknown key 'chek'" in msg
    for allowed in schema.TOP_KEYS:
        assert allowed in msg


def test_unknown_requires_key(tmp_path):
    path = write(tmp_path, MINIMAL + "requires:\n  kernal: '>=5.15'\n")
    with pytest.raises(scenario.ScenarioError, match=r":4: unknown key 'requires.kernal'; allowed: kernel, "):
        scenario.load(path)


def test_missing_setup(tmp_path):
    with pytest.raises(scenario.ScenarioError, match="missing required key 'setup'"):
        scenario.load(write(tmp_path, "description: d\n"))


@pytest.mark.parametrize("value, fragment", [
    ("expect: maybe", "key 'expect': bad value 'maybe'; allowed: pass, crfail: REASON, differs: REASON"),
    ("expect: {mntcr: crfail}", "key 'expect.mntcr': bad value 'crfail'"),
    ("expect: {crfail: ''}", "crfail needs a reason"),
    ("timeout: -3", "key 'timeout' must be a positive float"),
    ("iters: two", "key 'iters' must be a positive int"),
    ("flavors: [ns, docker]", "unknown flavor 'docker'; allowed: ns, vm"),
    ("requires: {kernel: 'about 5'}", "key 'requires.kernel': bad version term"),
    ("params: {x: []}", "key 'params.x' must be a non-empty list"),
    ("requires: {kernel: '>=6.1'}", "key 'requires.kernel' needs 'requires.kernel_feature'"),
])
def test_bad_values(tmp_path, value, fragment):
    path = write(tmp_path, MINIMAL + value + "\n")
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path).render_all()
    assert fragment in str(e.value)
    assert str(e.value).startswith(path)


def test_matrix_expansion_ids_and_exclude(tmp_path):
    path = write(tmp_path, """\
description: d
params:
  parent: [private, shared, slave]
  bind: [bind, rbind]
  ro: [true, false]
exclude:
  - {parent: slave, ro: true}
setup: |
  mount --make-{{ parent }} /mnt  # {{ bind }} {{ ro }}
  exec zdtm-hold
""")
    rendered = scenario.load(path).render_all()
    ids = [s.param_id for s in rendered]
    assert len(ids) == 3 * 2 * 2 - 2 == len(set(ids))
    assert "parent=shared-bind=rbind-ro=true" in ids
    assert not any(i.startswith("parent=slave") and i.endswith("ro=true") for i in ids)
    one = next(s for s in rendered if s.param_id == "parent=private-bind=bind-ro=false")
    assert one.setup.startswith("mount --make-private /mnt  # bind False")
    assert one.params == {"parent": "private", "bind": "bind", "ro": False}


def test_template_with_undefined_name_is_an_error(tmp_path):
    path = write(tmp_path, "description: d\nparams: {a: [1]}\nsetup: echo {{ b }}\n")
    with pytest.raises(scenario.ScenarioError, match=r"key 'setup': template error: 'b' is undefined"):
        scenario.load(path).render_all()


def test_expect_per_backend_and_templated(tmp_path):
    path = write(tmp_path, """\
description: d
params: {p: [a, b]}
setup: exec zdtm-hold
expect:
  mntcr: pass
  criu: "{% if p == 'a' %}crfail: criu cannot{% else %}pass{% endif %}"
  default: {skip: not for others}
""")
    a, b = scenario.load(path).render_all()
    assert str(a.expectation("criu")) == "crfail (criu cannot)"
    assert b.expectation("criu").outcome == "pass"
    assert a.expectation("mntcr").outcome == "pass"
    assert a.expectation("other") == scenario.Expectation("skip", "not for others")


def test_kernel_range():
    assert schema.kernel_in_range("6.18.44-fc", ">=6.8")
    assert not schema.kernel_in_range("6.18.44-fc", ">=5.15,<6.13")
    assert schema.kernel_in_range("6.1.0-9-amd64", ">=5.15,<6.13")


def test_missing_requirement_reasons():
    r = scenario.Requires
    assert "needs kernel <2.6" in scenario.missing_requirement(r(kernel="<2.6"))
    assert "filesystem nosuchfs" in scenario.missing_requirement(r(filesystems=("tmpfs", "nosuchfs")))
    assert "command no-such-cmd-zdtm" in scenario.missing_requirement(r(commands=("sh", "no-such-cmd-zdtm")))
    assert scenario.missing_requirement(r(filesystems=("tmpfs",), commands=("sh",))) is None


def test_a_kernel_range_skip_names_its_facility(tmp_path):
    # (a skip line in a VM row says what the kernel lacks, not only its version; vm/expected.toml's
    # facility "kernel >=N" is still a part of it)
    path = write(tmp_path, MINIMAL + "requires:\n  kernel: '<2.6'\n  kernel_feature: 'the big lock'\n")
    req = scenario.load(path).render_all()[0].requires
    assert scenario.missing_requirement(req).startswith("needs kernel <2.6 (the big lock), this is ")
    assert "kernel <2.6" in scenario.missing_requirement(req)


def test_every_scenario_in_the_library_loads():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios")
    found = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                assert scenario.load(os.path.join(dirpath, name)).render_all()
                found += 1
    assert found > 0


def test_idmappable_requirement(tmp_path):
    """`requires.idmappable` skips where the path's filesystem takes no idmapped mount (proc never does;
    a qemu guest's 9p root neither), with the filesystem named; tried on a detached clone only."""
    sc = scenario.load(write(tmp_path, MINIMAL + "requires:\n  idmappable: [/proc]\n")).render_all()[0]
    why = scenario.missing_requirement(sc.requires)
    assert why.startswith("/proc cannot be idmapped here: its filesystem (proc) takes no idmapped mounts"), why
    if os.path.isdir("/dev/shm") and scenario.idmap_refusal("/dev/shm") is None:  # tmpfs takes one (6.3)
        assert scenario.missing_requirement(scenario.Requires(idmappable=("/dev/shm",))) is None
