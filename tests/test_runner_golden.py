"""Golden check output files (zdtm/golden.py) on made-up texts and scenario files."""

from __future__ import annotations

import pytest

from zdtm import golden, scenario


def test_sections_parse_and_render_in_matrix_order():
    text = "=== a=1\nx\n=== a=2\n\ny\n"
    sections = golden.parse(text, sectioned=True)
    assert sections == {"a=1": "x\n", "a=2": "\ny\n"}
    assert golden.render(sections, ["a=1", "a=2"], True) == text
    assert golden.render(sections, ["a=2", "a=1"], True) == "=== a=2\n\ny\n=== a=1\nx\n"
    assert golden.parse("just output\n", sectioned=False) == {"": "just output\n"}


def test_text_before_the_first_section_is_an_error():
    with pytest.raises(golden.GoldenError, match="before the first"):
        golden.parse("stray\n=== a=1\nx\n", sectioned=True)


def test_output_that_looks_like_a_section_header_is_refused():
    with pytest.raises(golden.GoldenError, match="starting with"):
        golden.render({"a=1": "=== not a header\n"}, ["a=1"], True)


def test_exit_status_of_check_output():
    assert golden.exit_status("x\n[exit 2]\n") == 2
    assert golden.exit_status("x\n") == 0
    assert golden.exit_status("[exit 1] in the middle\nx\n") == 0


SCEN = "description: d\nparams:\n  a: [1, 2]\nsetup: exec zdtm-hold\ncheck: echo {{ a }}\n"


def test_a_scenario_gets_its_combinations_golden_output(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCEN)
    (tmp_path / "s.out").write_text("=== a=1\n1\n")
    one, two = scenario.load(str(path)).render_all()
    assert (one.golden_path, one.golden) == (str(tmp_path / "s.out"), "1\n")
    assert two.golden is None
    assert golden.verify(one, "1\n") is None
    assert "differs from the golden output in s.out" in golden.verify(one, "2\n")
    assert "no golden output for combination a=2" in golden.verify(two, "2\n")
    assert "check failed before dump (exit 3)" in golden.verify(one, "1\n[exit 3]\n")


def test_without_a_golden_file_only_the_exit_status_counts(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCEN)
    one = scenario.load(str(path)).render_all()[0]
    assert one.golden_path is None and golden.verify(one, "anything\n") is None
    assert golden.verify(one, "cat: x: No such file\n[exit 1]\n").startswith("check failed before dump (exit 1)")


def test_update_writes_sections_in_matrix_order(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCEN)
    one, two = scenario.load(str(path)).render_all()
    golden.update(two, "2\n")
    golden.update(one, "1\n")
    assert (tmp_path / "s.out").read_text() == "=== a=1\n1\n=== a=2\n2\n"


def test_a_broken_golden_file_is_a_scenario_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCEN)
    (tmp_path / "s.out").write_text("stray\n")
    with pytest.raises(scenario.ScenarioError, match=r"s\.out: golden output: .*before the first"):
        scenario.load(str(path))


def test_concurrent_updates_of_one_file_keep_every_section(tmp_path):
    import os
    path = tmp_path / "s.yaml"
    path.write_text(SCEN)
    combos = scenario.load(str(path)).render_all()
    pids = []
    for sc in combos:  # two xdist workers writing sections of the same file
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(30):
                    golden.update(sc, f"{sc.params['a']} {i}\n")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0, 0]
    assert (tmp_path / "s.out").read_text() == "=== a=1\n1 29\n=== a=2\n2 29\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.out", "s.yaml"]


def test_kernel_dependent_superblock_options_are_filtered():
    """zdtm_kopts: one golden output for the kernel matrix (Debian's 6.1 shows tmpfs `inode64`)."""
    import subprocess
    from zdtm.holder import HELPERS
    text = "rw,mode=700,inode64\nrw,size=1024k,inode32,mode=700\nrw,lowerdir=/l,uuid=on,xino=off\nrw,inode64x\n"
    r = subprocess.run(["sh", "-c", HELPERS + "zdtm_kopts"], input=text, capture_output=True, text=True)
    assert r.stdout.splitlines() == ["rw,mode=700", "rw,size=1024k,mode=700", "rw,lowerdir=/l", "rw,inode64x"]


def test_battery_golden_files_are_sectioned_by_fstype():
    """A battery file lists no params (fstype comes from --fstype): its NAME.out was once read as one
    unsectioned output, so no battery check was ever compared with its golden section."""
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios", "battery",
                        "binds.yaml")
    sc = scenario.render(scenario.load(path), {"fstype": "tmpfs"})
    assert sc.golden_path and sc.golden.startswith("/mnt/b/file tmpfs /f private\n")
    assert "===" not in sc.golden


def test_kernel_dependent_masked_paths_are_filtered():
    """zdtm_kmasks: masks of /proc files only some kernels have (6.1's /proc/kcore) leave no line."""
    import subprocess
    from zdtm.holder import HELPERS
    text = ("/proc/kcore /null rw,nosuid tmpfs\n/proc/acpi / ro tmpfs\n/proc/kcorex / rw proc\n"
            "/proc/sys /sys ro proc\n/sys/devices/virtual/powercap / ro tmpfs\n")
    r = subprocess.run(["sh", "-c", HELPERS + "zdtm_kmasks"], input=text, capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["/proc/kcorex / rw proc", "/proc/sys /sys ro proc"]
    r = subprocess.run(["sh", "-c", HELPERS + "zdtm_kmasks"], input="/proc/kcore / rw tmpfs\n",
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "")
