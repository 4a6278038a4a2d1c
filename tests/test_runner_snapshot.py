"""Snapshots of real scenario trees (ns flavor) and their comparison."""

import os
import re
import shutil

import pytest

from engine import freeze
from zdtm import scenario, snapshot
from zdtm.flavors import ns

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nsenter"),
                                reason="the ns flavor needs root; check scripts need nsenter")


def start(tmp_path, setup, check=None):
    text = "description: d\nsetup: |\n" + "".join(f"  {line}\n" for line in setup.splitlines())
    if check:
        text += f"check: {check}\n"
    p = tmp_path / "s.yaml"
    p.write_text(text)
    sc = scenario.load(str(p)).render_all()[0]
    return sc, ns.FLAVOR.start(sc, str(tmp_path / "work"))


def test_fds_cwd_detached_mount_and_nested_namespace(tmp_path):
    sc, running = start(tmp_path, """\
mount -t tmpfs t /mnt
echo hello > /mnt/f
exec 7</mnt/f
read -r line <&7 || true
mkdir /mnt/d
cd /mnt/d
mount -t tmpfs gone /tmp
echo x > /tmp/g
exec 8</tmp/g
umount -l /tmp
unshare -m sh -c 'mount -t tmpfs inner /run; touch /run/ok; exec sleep infinity' </dev/null >/dev/null 2>&1 8<&- &
zdtm_wait /proc/$!/root/run/ok
exec zdtm-hold""", check="hostname; cat /mnt/f")
    try:
        snap = snapshot.take(running.pid, sc.check)
    finally:
        ns.FLAVOR.stop(running)
    assert not snapshot.alive(running.pid)
    text = snap.text()
    assert len(snap.procs) == 2
    holder = next(p for p in snap.procs if any(fd.startswith("8:") for fd in p.fds))
    nested = next(p for p in snap.procs if p is not holder)
    # The nested process inherited fd 7: a mount of the holder's namespace, not of its own.
    assert any(fd.startswith("7: /mnt/f") and fd.endswith("mnt=other-ns:/mnt") for fd in nested.fds)
    fd7 = next(fd for fd in holder.fds if fd.startswith("7:"))
    # `read` moved the shared offset past "hello\n".
    assert fd7.startswith("7: /mnt/f flags=0 pos=") and fd7.endswith("mnt=/mnt") and "pos=0 " not in fd7
    assert any(fd.startswith("8: ") and fd.endswith("mnt=detached") for fd in holder.fds)
    assert holder.cwd == "/mnt/d mnt=/mnt"
    assert "/run root=/ type=tmpfs source=inner" in text  # the nested namespace's mount
    assert "mnt: {P0} {P1}" in text and "pid: {P0,P1}" in text
    assert snap.check_output == "zdtm\nhello\n"


def test_compare_equal_and_different(tmp_path):
    setup = "mount -t tmpfs t /mnt\necho abc > /mnt/f\nexec 5</mnt/f\nexec zdtm-hold"
    sc, a = start(tmp_path, setup)
    try:
        snap_a = snapshot.take(a.pid)
    finally:
        ns.FLAVOR.stop(a)
    sc, b = start(tmp_path, setup)
    try:
        snap_b = snapshot.take(b.pid)
    finally:
        ns.FLAVOR.stop(b)
    # (two runs: each place's holder has its own ZDTM_RUN_ID in its environment, which a restore keeps)
    assert all("ZDTM_RUN_ID=" in p.args for p in snap_a.procs)
    for p in snap_a.procs + snap_b.procs:
        p.args = re.sub(r"ZDTM_RUN_ID=[0-9a-f]+", "ZDTM_RUN_ID=R", p.args)
    equal, report = snapshot.compare(snap_a, snap_b)
    assert equal, report
    sc, c = start(tmp_path, setup.replace("exec 5<", "mount -o remount,ro /mnt\nexec 6<"))
    try:
        snap_c = snapshot.take(c.pid)
    finally:
        ns.FLAVOR.stop(c)
    for p in snap_c.procs:
        p.args = re.sub(r"ZDTM_RUN_ID=[0-9a-f]+", "ZDTM_RUN_ID=R", p.args)
    equal, report = snapshot.compare(snap_a, snap_c)
    assert not equal
    assert "mount tree differs" in report and "root/cwd/fds differ" in report
    assert "-fd 5: /mnt/f" in report and "+fd 6: /mnt/f" in report


def test_a_one_shot_timer_that_fired_unread_counts_as_armed():
    """The snapshot's timerfd 'armed' is "set, or fired and not read": a one-shot timer near its
    expiry at dump fires before the restored tree is looked at (stand-ins never read it), which
    is the same state (nspawn_journald's timer once differed armed=True -> armed=False)."""
    import ctypes
    import time
    from zdtm import fdkinds

    class TS(ctypes.Structure):
        _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]

    class ITS(ctypes.Structure):
        _fields_ = [("i", TS), ("v", TS)]

    libc = ctypes.CDLL(None, use_errno=True)
    fired, idle = libc.timerfd_create(1, 0), libc.timerfd_create(1, 0)
    try:
        assert libc.timerfd_settime(fired, 0, ctypes.byref(ITS(TS(0, 0), TS(0, 1000))), None) == 0
        time.sleep(0.05)
        assert "armed=True" in fdkinds.details(os.getpid(), fired, "anon_inode:[timerfd]")
        assert "armed=False" in fdkinds.details(os.getpid(), idle, "anon_inode:[timerfd]")
    finally:
        os.close(fired)
        os.close(idle)



def test_a_ptys_termios_and_window_size_are_compared():
    """The snapshot shows a pty's termios and window size, from either end (a master's ioctls read
    its slave's): restore gives them back (engine/fds/pty.py), so a restored terminal of another
    size or with echo back on differs (`podman exec -t`, tmux and vim rely on them)."""
    import fcntl
    import struct
    import termios
    from zdtm import fdkinds

    master, slave = os.openpty()
    try:
        def seen():
            return [fdkinds.details(os.getpid(), fd, os.readlink(f"/proc/self/fd/{fd}")) for fd in (master, slave)]
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        before = seen()
        assert "winsize=24x80,0x0" in before[0] and "winsize=24x80,0x0" in before[1]
        assert before[0].split(" termios=")[1] == before[1].split(" termios=")[1]
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        resized = seen()
        assert "winsize=50x132,0x0" in resized[0] and resized[0] != before[0]
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        assert seen()[0].split(" termios=")[1] != resized[0].split(" termios=")[1]
    finally:
        os.close(master)
        os.close(slave)


_LATE_WRITER = """
import os, signal, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.set_blocking(0, False)
    while True:                   # busy from before "ready" until the test says go (a byte on stdin),
        try:                      # then for argv[1] seconds: the test saw the pipe empty meanwhile
            if os.read(0, 1):
                break
        except BlockingIOError:
            pass
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        pass                      # still busy when the parent says it is ready
    os.write(w, b"late")
    signal.pause()
os.dup2(r, 10)
print("ready", flush=True)
signal.pause()
"""


def _pipe_bytes(pid: int) -> int:
    import fcntl
    import struct
    import termios
    fd = os.open(f"/proc/{pid}/fd/10", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    finally:
        os.close(fd)


@pytest.mark.parametrize("busy", ["0.5", "1e9"])
def test_settle_waits_for_a_tree_still_busy_after_ready(busy):
    """A process says it is ready while its child still runs and writes to the pipe it reads (CRIU's
    mountpoints): `settle` returns once every thread sleeps, and the pipe then holds what the child
    wrote (a snapshot taken right after "ready" saw it empty). A tree that never sleeps: False."""
    import subprocess
    import sys
    import time
    p = subprocess.Popen([sys.executable, "-c", _LATE_WRITER, busy],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert _pipe_bytes(p.pid) == 0
        p.stdin.write("g")
        p.stdin.flush()
        start = time.monotonic()
        if busy == "1e9":
            settled = snapshot.settle(p.pid, timeout=2.0)
            assert not settled and time.monotonic() - start >= 2.0
        else:   # (a generous bound: on a loaded machine the child may wait long for a CPU)
            settled = snapshot.settle(p.pid, timeout=60.0)
            assert settled and _pipe_bytes(p.pid) == 4
    finally:
        snapshot.kill_tree(p.pid)
        p.wait()
        p.stdin.close()
        p.stdout.close()


@pytest.mark.skipif(not freeze.has_children_lists(),
                    reason="this kernel has no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN): tree_pids scans "
                           "every process there")
def test_tree_from_children_files_is_the_tree_from_every_parent():
    """Grandchildren included, a zombie left out, the same order as the scan of every process."""
    import signal
    import subprocess
    import time
    root = subprocess.Popen(["sh", "-c", "sleep 100 & sh -c 'sleep 100 & sleep 100 & wait' & true & exec sleep 100"])
    try:
        deadline = time.monotonic() + 30
        while len(snapshot._tree_from_scan(root.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        want = snapshot._tree_from_scan(root.pid)
        assert len(want) == 5   # the root's sleep, its sleep and sh, that sh's two sleeps (not the zombie true)
        assert snapshot.tree_pids(root.pid) == want
    finally:
        for pid in reversed(snapshot._tree_from_scan(root.pid)):
            os.kill(pid, signal.SIGKILL)
        root.wait()


def test_the_host_and_domain_names_of_a_uts_namespace_are_compared():
    # (CRIU's utsname sets both in the test's namespace: a restore that lost them must not compare equal)
    import socket
    from engine import kernel
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)   # (so that the parent's read ends if this child fails before it writes)
        os.close(go_w)
        try:
            kernel.unshare(kernel.CLONE_NEWUTS)
            kernel.set_uts_names("before.example", "dom.example")
            os.write(w, b"x")
            os.read(go_r, 1)
            socket.sethostname("after.example")
            os.write(w, b"x")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    try:
        assert os.read(r, 1) == b"x"
        first = snapshot.take(pid)
        os.write(go_w, b"x")
        assert os.read(r, 1) == b"x"
        second = snapshot.take(pid)
    finally:
        os.close(go_w)
        os.waitpid(pid, 0)
        os.close(r)
    assert "uts names: host='before.example' domain='dom.example'" in first.text()
    equal, report = snapshot.compare(first, second)
    assert not equal and "host='after.example'" in report, report


def _respawner():
    """A tree that keeps starting a child (as buildah's runtime monitor runs `RUNTIME state` every
    100 ms): a shell whose subshell starts a sleep again whenever one ends. (root, subshell, sleep)."""
    import subprocess
    from tests.enginecase import wait_until
    root = subprocess.Popen(["sh", "-c", "(while :; do sleep 1000; done) & exec sleep 1000"])
    try:
        wait_until(lambda: len(snapshot.tree_pids(root.pid)) == 3, "the respawning sleep started")
    except BaseException:
        snapshot.kill_tree(root.pid)
        root.wait()
        raise
    return root, *snapshot.tree_pids(root.pid)[1:]


def test_a_process_that_exits_while_the_tree_is_read_is_left_out(monkeypatch):
    """The tree's listed child ends before it is read (killed, reaped by its parent): the snapshot
    is the tree without it, not "vanished while being read" (5.10 and 7.2 guests met buildah's
    `runc state` so before every dump). A process still there whose read fails is still an error."""
    import signal
    from tests.enginecase import wait_until
    root, sub, child = _respawner()
    read_proc = snapshot.read_proc

    def ends_first(pid, *args, **kwargs):
        if pid == child:
            os.kill(child, signal.SIGKILL)
            wait_until(lambda: not os.path.exists(f"/proc/{child}"), "the killed sleep reaped")
        return read_proc(pid, *args, **kwargs)
    try:
        monkeypatch.setattr(snapshot, "read_proc", ends_first)
        snap = snapshot.take(root.pid)
        assert sorted(p.pid for p in snap.procs) == sorted([root.pid, sub])

        def fails_alive(pid, *args, **kwargs):
            if pid == sub:
                raise snapshot.SnapshotError(f"process {pid} vanished while being read")
            return read_proc(pid, *args, **kwargs)
        monkeypatch.setattr(snapshot, "read_proc", fails_alive)
        with pytest.raises(snapshot.SnapshotError, match=f"process {sub} vanished"):
            snapshot.take(root.pid)
    finally:
        snapshot.kill_tree(root.pid)
        root.wait()


@pytest.mark.skipif(not shutil.which("ip") or not shutil.which("unshare"), reason="needs ip(8) and unshare(1)")
def test_an_interfaces_mac_address_and_mtu_are_compared():
    """A network namespace's interfaces are compared with their MTU and MAC address: restore makes
    a veth's ends again with the kept ones (engine/netlinks_make.py); made with new random ones
    (an address, its IPv6 link-local address, the neighbours' caches) nothing else showed it."""
    import subprocess
    import types
    p = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link add d0 type veth peer name d1 && echo ok && exec sleep 60"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ok"
        proc = types.SimpleNamespace(pid=p.pid, ns={"net": os.stat(f"/proc/{p.pid}/ns/net").st_ino}, net="")

        def seen():
            snapshot._net_sysctls([proc])
            return proc.net
        ip = ["nsenter", "-t", str(p.pid), "-n", "ip", "link", "set", "d0"]
        subprocess.run(ip + ["address", "02:00:00:00:35:01", "mtu", "1400"], check=True)
        before = seen()
        assert "d0 mtu=1400 mac=02:00:00:00:35:01" in before
        subprocess.run(ip + ["address", "02:00:00:00:35:02"], check=True)
        assert seen() != before
        subprocess.run(ip + ["address", "02:00:00:00:35:01", "mtu", "1300"], check=True)
        assert seen() != before
    finally:
        p.kill()
        p.wait()
