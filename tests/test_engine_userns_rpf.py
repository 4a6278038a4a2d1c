"""`unshare -rpf` without -m: pid 1 of a pid namespace its user namespace owns, in a mount
namespace the dumper's user namespace owns (dump refused it: "it made namespaces inside its user
namespace but its mount namespace belongs to another"). Its stand-in is forked once every mount
exists and enters its mount namespace, root and cwd before its user namespace."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

import enginecase
from enginecase import case, userns_setup  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root")

# unshare(CLONE_NEWUSER | flags), then fork: the child is pid 1 of the new pid namespace, with a cwd
# of its own; its child too (forked by the late stand-in, entered already)
BODY = """
os.makedirs("/tmp/sub", exist_ok=True)
if os.fork() == 0:
    os.chdir("/tmp/sub")
    os.fork()
"""
FLAGS = {"pid": 0x20000000, "pid+net": 0x20000000 | 0x40000000,                     # unshare -rpf, -rpfn
         "pid+ipc+uts+cgroup": 0x20000000 | 0x08000000 | 0x04000000 | 0x02000000}   # unshare -rpfiuC


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_unshare_rpf_without_a_mount_namespace(case, flags):
    before, after = case.roundtrip(userns_setup(flags, BODY))
    procs = after.snap.procs
    assert len(procs) == 4, procs
    pid1 = procs[2].pid
    assert os.readlink(f"/proc/{pid1}/ns/mnt") == os.readlink(f"/proc/{procs[0].pid}/ns/mnt")
    assert os.readlink(f"/proc/{pid1}/ns/pid") != os.readlink(f"/proc/{procs[1].pid}/ns/pid")
    assert os.readlink(f"/proc/{pid1}/cwd") == os.readlink(f"/proc/{procs[3].pid}/cwd") == "/tmp/sub"


# pid 1 of `unshare -rpf` then makes an ipc and a network namespace inside the user namespace, with a
# message queue and lo up: its stand-in is forked late, after restore filled the ipc and network
# namespaces, so both are made ahead inside the user namespace and joined (dump refused it: "its net
# namespace is not its parent's and its stand-in ... enters its mount namespace before its user
# namespace"; made by the late stand-in they came back empty, lo down).
LATE_IPC_NET = """
if os.fork() == 0:
    import fcntl, socket, struct
    assert libc.unshare(0x40000000 | 0x08000000) == 0
    assert libc.msgget(0x2a2a, 0o1600) >= 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x40))   # SIOCSIFFLAGS: IFF_UP|IFF_RUNNING
    open("/tmp/netns-made", "w").close()
"""


def _late_view(pid: int) -> tuple[str, str]:
    """(the keys of its message queues, its lo's flags) as process `pid` sees them."""
    queues = subprocess.run(["nsenter", "-t", str(pid), "-i", "cat", "/proc/sysvipc/msg"], capture_output=True,
                            text=True, check=True).stdout.splitlines()[1:]
    lo = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show", "lo"], capture_output=True,
                        text=True, check=True).stdout
    return " ".join(sorted(q.split()[0] for q in queues)), lo.split("<", 1)[1].split(">", 1)[0]


def test_a_late_process_making_ipc_and_network_namespaces_restores(case):
    pid = case.start(userns_setup(0x20000000, LATE_IPC_NET, ready="/tmp/netns-made"))
    before = enginecase.take(pid)
    late = before.snap.procs[-1].pid
    assert os.readlink(f"/proc/{late}/ns/net") != os.readlink(f"/proc/{before.snap.procs[-2].pid}/ns/net")
    want = _late_view(late)
    assert want[0] == str(0x2a2a) and "UP" in want[1].split(","), want
    images = case.new_images_dir()
    case.dump(pid, images)
    after = enginecase.take(case.restore(images))
    enginecase.assert_same(before, after)
    assert _late_view(after.snap.procs[-1].pid) == want


def test_a_proc_of_the_late_pid_namespace_is_refused_before_the_stop(case, tmp_path):
    # `unshare -rpf`, then a child of pid 1 mounts a proc of their pid namespace in a mount
    # namespace of its own (`unshare -m --mount-proc` inside): restore makes superblocks before the
    # late stand-ins exist. (pid 1 itself making the mount namespace is `unshare -rpfm`: not late.)
    pid = case.start(enginecase.STOP_WATCH + userns_setup(0x20000000, """
if os.fork() == 0 and os.fork() == 0:
    assert libc.unshare(0x00020000) == 0
    assert libc.mount(b"proc", b"/proc", b"proc", 0, None) == 0
    open("/tmp/proc-made", "w").close()
""", ready="/tmp/proc-made"))
    with pytest.raises(AssertionError) as err:
        case.dump(pid, str(tmp_path / "img"))
    assert re.search(r"mntcr dump: superblock \S+ \(proc\): it belongs to pid-\d+, made by a process whose stand-in, "
                     r"or an ancestor's, enters its mount namespace before its user namespace \(`unshare -rpf` "
                     r"without -m\), late: not supported yet", str(err.value)), err.value
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"


def test_an_ipc_bound_mount_made_by_a_late_process_is_refused_before_the_stop(case, tmp_path):
    # `unshare -rpfi`, then a child of pid 1 mounts an mqueue in a mount namespace of its own:
    # restore finds a superblock's maker among the processes that see it, none yet (late).
    pid = case.start(enginecase.STOP_WATCH + userns_setup(0x20000000 | 0x08000000, """
os.makedirs("/tmp/mq", exist_ok=True)
if os.fork() == 0 and os.fork() == 0:
    assert libc.unshare(0x00020000) == 0
    assert libc.mount(b"mqueue", b"/tmp/mq", b"mqueue", 0, None) == 0
    open("/tmp/mq-made", "w").close()
""", ready="/tmp/mq-made"))
    with pytest.raises(AssertionError) as err:
        case.dump(pid, str(tmp_path / "img"))
    assert re.search(r"mntcr dump: mount \d+ \(/tmp/mq\) on mqueue: made in mnt-\d+, whose processes' stand-ins are "
                     r"forked late: the first enters its mount namespace before its user namespace", str(err.value)), \
        err.value
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"
