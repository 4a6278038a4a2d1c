"""A namespace bound on a file (nsfs: `ip netns add`, `unshare --uts=PATH`) is refused before the stop
with a line that says whose namespace it is and how to remove the bind (engine/fs/nsfs.py), not the
generic "declare it --external" advice (an external binds a host path; the tree needs its own
namespace, which mntcr does not make again as a mount yet)."""

from __future__ import annotations

import re
import shutil

import pytest

from enginecase import case  # noqa: F401  (fixture)


def _refusal(case, setup: str) -> str:
    """Dump of the tree `setup` builds: its refusal, once the tree is seen running unstopped."""
    from enginecase import CRError, STOP_WATCH, was_stopped
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    return str(err.value)


def test_bare_ip_netns_add_refused_as_no_namespace_of_the_tree(case):
    """`ip netns add` alone: a new network namespace no process of the tree is in, kept by its bind."""
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    msg = _refusal(case, "ip netns add blue\nhold\n")
    assert re.search(r"mount \d+ \(/(var/)?run/netns/blue\): a net namespace no process of the tree is in is "
                     r"bound on it .*unmount it before dump \(ip netns delete blue, in the tree's mount "
                     r"namespace\)", msg), msg
    assert "--external" not in msg, msg


def test_tree_uts_namespace_bound_refused_naming_it_the_trees(case):
    """`unshare --uts=PATH` whose process stays in the tree: the tree's uts namespace bound on PATH."""
    from enginecase import HOLD
    msg = _refusal(case, f"""
touch /run/uts
unshare --uts=/run/uts {HOLD} 100000 </dev/null >/dev/null 2>&1 &
until grep -q ' /run/uts ' /proc/self/mountinfo; do sleep 0.1; done
hold
""")
    assert re.search(r"mount \d+ \(/run/uts\): the tree's uts namespace is bound on it .*mntcr does not restore "
                     r"namespace binds yet; unmount it before dump \(umount /run/uts, in the tree's mount "
                     r"namespace\)", msg), msg





def test_bind_told_with_the_other_unsupported_mounts(case, tmp_path):
    """A namespace bind beside a mount of a type mntcr cannot dump (debugfs, its module taken out of a
    copy of the engine): one line telling the bind's own refusal, then the generic line for the other."""
    import enginecase
    from enginecase import DUMP_EXTERNALS, mntcr, was_stopped, STOP_WATCH
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    pid = case.start(STOP_WATCH + "ip netns add red\nmkdir /mnt/dbg; mount -t debugfs debugfs /mnt/dbg\nhold\n")
    engine = enginecase.engine_without(str(tmp_path / "engine"), "debugfs")
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), *DUMP_EXTERNALS, engine_root=engine)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert re.search(r"mount \d+ \(/(var/)?run/netns/red\): a net namespace no process of the tree is in .*\(ip "
                     r"netns delete red, in the tree's mount namespace\); mount \d+ \(/mnt/dbg\) on debugfs: not "
                     r"supported; declare it with --external mnt\[/mnt/dbg\]:KEY$", lines[0]), lines[0]
    assert not was_stopped(pid), "dump stopped the tree before it refused"

# A hostile image may not make restore bind a namespace (the restorer's own, the host's) on a mount:
# no image record names one yet, so an nsfs superblock the image would make is refused by the
# validator, whatever its mount's root says.
HOSTILE = {"nsfs-root-of-a-namespace": "net:[4026531840]", "nsfs-root-a-path": "/"}
_REFUSED = (r"bad image: (superblock sb-\d+ \(nsfs\): filesystem type 'nsfs' is not supported|mount \d+: root "
            r"'net:\[4026531840\]' is no path; only an external mount may have that)")


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """An image of test_hardening_review's tree (an mqueue at /mnt/mq to turn into another type)."""
    import enginecase
    from test_hardening_review import SETUP
    yield from enginecase.dumped_image(tmp_path_factory, SETUP, "hostile image tests need root")


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_image_making_an_nsfs_mount_is_refused(base_image, tmp_path, kind):
    """The mqueue of a real image turned into an nsfs superblock (not external): refused before
    anything is made, one line, nothing touched (test_hardening_hostile.refused)."""
    from test_hardening_hostile import _mutated, refused
    from test_hardening_review import _mnt, _turn_mqueue
    root = HOSTILE[kind]

    def mutate(d):
        _turn_mqueue(d, "nsfs", source="nsfs", super_opts=["rw"])
        _mnt(d, "/mnt/mq")["root"] = root
    refused(_mutated(base_image, tmp_path, mutate), _REFUSED, tmp_path)
