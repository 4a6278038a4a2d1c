"""zdtm/criu_tests.py: how a CRIU test's .desc (criu options, features, flavors) becomes mntcr's run (no kernel)."""

from zdtm import criu_tests
from zdtm.criu_source import TestProgram as Program


def prog(desc):
    return Program("t", "/bin/true", (), desc)


def test_external_mounts_are_passed_on_with_relative_host_paths_from_criu_root():
    o = criu_tests.options({"dopts": "--external mnt[/mnt_root_ext.test]:MNT",
                            "ropts": "--external mnt[MNT]:.zdtm_root_ext.tmp --no-mntns-compat-mode"})
    assert o.dump == ("--external", "mnt[/mnt_root_ext.test]:MNT")
    assert o.restore == ("--external", "mnt[MNT]:/.zdtm_root_ext.tmp")
    assert o.unsupported is None and not o.auto_masters


def test_opts_go_to_both_stages_and_auto_detection_asks_nothing():
    o = criu_tests.options({"opts": "--external mnt[]:s --link-remap"})
    assert o == criu_tests.Options()


def test_auto_map_with_external_masters_is_found_by_the_driver():
    o = criu_tests.options({"opts": "--ext-mount-map auto --enable-external-masters"})
    assert o.auto_masters and o.unsupported is None


def test_an_option_nothing_translates_skips_the_test_naming_it():
    why = criu_tests.unsupported_flavor(prog({"ropts": "--lsm-mount-context=system_u:object_r:x:s0"}), "ns")
    assert why and "--lsm-mount-context system_u:object_r:x:s0" in why
    assert "--enable-external-masters" in (criu_tests.options({"opts": "--enable-external-masters"}).unsupported or "")


def test_flavor_and_features():
    assert "allows flavors uns, not ns" in criu_tests.unsupported_flavor(prog({"flavor": "uns"}), "ns")
    assert "'no_such_feature'" in criu_tests.unsupported_flavor(prog({"feature": "no_such_feature"}), "ns")
    assert criu_tests.unsupported_flavor(prog({"feature": "mnt_id", "flavor": "ns uns"}), "uns") is None


def test_enable_fs_needs_only_the_kernel_filesystem():
    assert criu_tests.options({"opts": "--enable-fs tmpfs"}).unsupported is None
    assert "has no no_such_fs" in criu_tests.options({"opts": "--enable-fs no_such_fs"}).unsupported


def test_ghost_limit_and_fiemap_ask_nothing_of_mntcr():
    """--ghost-limit N (with its value, either spelling) and --(no-)ghost-fiemap: mntcr keeps deleted
    files of any size, holes included; a word after them is still read as an option."""
    assert criu_tests.options({"dopts": "--ghost-limit 8M --no-ghost-fiemap"}) == criu_tests.Options()
    assert criu_tests.options({"opts": "--ghost-limit=1G --ghost-fiemap"}) == criu_tests.Options()
    assert "--lazy-pages" in criu_tests.options({"dopts": "--ghost-limit 8M --lazy-pages"}).unsupported


def test_irmap_options_ask_nothing_of_mntcr():
    """--force-irmap and --irmap-scan-path DIR: how criu names an inotify watch's file."""
    assert criu_tests.options({"opts": "--force-irmap --irmap-scan-path /zdtm/static"}) == criu_tests.Options()
