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

