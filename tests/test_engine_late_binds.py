"""A namespace bound on a file whose first process's stand-in is forked late (it enters its mount
namespace before its user namespace: `unshare -U -p -f` without -m) does not exist yet when
restore binds it ("no process of the image is in namespace pid-1" at restore, session 32): dump
refuses such a bind, before the stop (by the root nsfs shows) and once stopped (by `bound_ns`).
scenarios/fstypes/hunt32.yaml[nsfs_userns] is the tree."""

import re

import pytest

from engine import userns_cr
from enginecase import case  # noqa: F401  (fixture)

_SB = {"sb-0": {"fstype": "tmpfs"}, "sb-1": {"fstype": "nsfs"}}
_PLAN = {"late_ns": ["pid-1"], "late_bound": ["pid:[4026532252]"]}


def _mntns(**bind):
    return {"mnt-0": {"mounts": [{"id": 1, "sb": "sb-0", "root": "/", "mountpoint": "/"},
                                 {"id": 7, "sb": "sb-1", "mountpoint": "/run/ns/pid_for_children", **bind}]}}


@pytest.mark.parametrize("bind", [{"root": "/pid:[4026532252]"}, {"root": "/", "bound_ns": "pid-1"}],
                         ids=["before-stop", "stopped"])
def test_bind_of_a_late_namespace_refused(bind):
    with pytest.raises(userns_cr.UsernsError) as e:
        userns_cr.check_late_superblocks(_SB, _mntns(**bind), _PLAN)
    msg = e.value.strerror
    assert msg.startswith("mount 7 (/run/ns/pid_for_children): it binds namespace ") and "\n" not in msg, msg
    assert "umount /run/ns/pid_for_children" in msg, msg


@pytest.mark.parametrize("bind", [{"root": "/pid:[4026532999]"}, {"root": "/", "bound_ns": "pid-2"}])
def test_bind_of_an_early_namespace_kept(bind):
    userns_cr.check_late_superblocks(_SB, _mntns(**bind), _PLAN)


def test_late_pid_namespace_bind_refused_unstopped(case):
    """The tree itself: `unshare -U -p -f` without -m, its children's pid namespace bound on a file.
    Before the fix dump took it and restore failed ("no process of the image is in namespace")."""
    from enginecase import CRError, STOP_WATCH, was_stopped
    pid = case.start(STOP_WATCH + "touch /run/pidns\n"
                     "unshare -U -p -f --propagation unchanged /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &\n"
                     "n=0; until [ \"$(readlink /proc/$!/ns/user)\" != \"$(readlink /proc/self/ns/user)\" ]; do "
                     "n=$((n + 1)); [ $n -lt 600 ]; sleep 0.05; done\n"
                     "mount --bind /proc/$!/ns/pid_for_children /run/pidns\nhold\n", daemons=("unshare",))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    msg = str(err.value)
    assert re.search(r"mount \d+ \(/run/pidns\): it binds namespace pid:\[\d+\], whose first process's stand-in is "
                     r"forked late .* unmount it before dump \(umount /run/pidns, in the tree's mount namespace\)",
                     msg), msg
