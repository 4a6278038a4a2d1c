"""Engine round trips of open files: offsets, access modes, O_APPEND, directories, O_CLOEXEC,
files under overmounted directories, cwd on a covered directory, and a second C/R of a mixed tree.

The snapshot compares every fd's number, flags, offset and mount; `fd_data`
compares what each reads through /proc/PID/fd/N.
"""

from __future__ import annotations

import re

from enginecase import case, py_hold  # noqa: F401  (fixture)

O_WRONLY, O_RDWR, O_APPEND, O_CLOEXEC = 0o1, 0o2, 0o2000, 0o2000000


def _fds(state) -> dict[int, tuple[int, int, str]]:
    """{fd: (flags, pos, mount label)} of the root process."""
    out = {}
    for line in state.root.fds:
        m = re.match(r"(\d+): .* flags=([0-7]+) pos=(\d+) mnt=(\S+)$", line)
        out[int(m[1])] = (int(m[2], 8), int(m[3]), m[4])
    return out


FILES = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
printf abcdefghijklmnopqrstuvwxyz > /mnt/t/ro
exec 5</mnt/t/ro; dd bs=7 count=1 <&5 >/dev/null 2>&1
echo first > /mnt/t/log; exec 6>>/mnt/t/log; echo second >&6
printf 0123456789 > /mnt/t/rw; exec 7<>/mnt/t/rw; dd bs=3 count=1 <&7 >/dev/null 2>&1
mkdir /mnt/t/dir; touch /mnt/t/dir/a /mnt/t/dir/b; exec 8</mnt/t/dir
exec 9</etc/passwd; dd bs=5 count=1 <&9 >/dev/null 2>&1
cd /mnt/t/dir
"""


def test_file_fds(case):
    """Read-only at an offset, O_APPEND write, O_RDWR at an offset, a directory, a file on an external."""
    before, after = case.roundtrip(FILES + "hold\n")
    fds = _fds(after)
    assert fds[5][:2] == (0, 7)
    assert fds[6][0] & (O_WRONLY | O_APPEND) == O_WRONLY | O_APPEND
    assert fds[7][0] & O_RDWR and fds[7][1] == 3
    assert any(line.startswith("8: dir ['a', 'b']") for line in after.fd_data[0])
    assert fds[9][1] == 5 and fds[9][2] == "/etc"
    assert after.root.cwd.startswith("/mnt/t/dir mnt=/mnt/t")


def test_cloexec_kept_and_cleared(case):
    """fd 10 has O_CLOEXEC, fd 11 does not (opened by a Python holder, so nothing exec'd since)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo a > /mnt/t/a; echo b > /mnt/t/b
""" + py_hold("""
fd = os.open("/mnt/t/a", os.O_RDONLY | os.O_CLOEXEC)
os.dup2(fd, 10, inheritable=False)
fd2 = os.open("/mnt/t/b", os.O_RDONLY)
os.dup2(fd2, 11, inheritable=True)
os.close(fd); os.close(fd2)
""")
    before, after = case.roundtrip(setup)
    fds = _fds(after)
    assert fds[10][0] & O_CLOEXEC
    assert not fds[11][0] & O_CLOEXEC


def test_fds_under_overmounts(case):
    """Files opened before their directory (fd 5), their mount (fd 6) or the cwd (cwd) got covered."""
    setup = """
mkdir /mnt/t /mnt/o; mount -t tmpfs t /mnt/t; mount -t tmpfs o /mnt/o
mkdir /mnt/t/d /mnt/t/w; echo under-dir > /mnt/t/d/f; echo under-mount > /mnt/o/f
exec 5</mnt/t/d/f; dd bs=2 count=1 <&5 >/dev/null 2>&1
exec 6</mnt/o/f
cd /mnt/t/w
mount -t tmpfs cover-d /mnt/t/d
mount -t tmpfs cover-o /mnt/o
mount -t tmpfs cover-w /mnt/t/w
hold
"""
    before, after = case.roundtrip(setup, check="ls /mnt/t/d /mnt/o /mnt/t/w")
    data = "\n".join(after.fd_data[0])
    assert "at-pos=b'der-dir\\n'" in data
    fds = _fds(after)
    assert fds[5][2] == "/mnt/t" and fds[6][2].startswith("/mnt/o")
    assert after.root.cwd.startswith("/mnt/t/w mnt=/mnt/t")


def test_second_cr(case):
    """Dump and restore the restored tree again (--iters 2): still equal to the original."""
    setup = FILES + """
mkdir /mnt/s /mnt/s2; mount -t tmpfs s /mnt/s; mkdir /mnt/s/x; mount --make-shared /mnt/s
mount --bind /mnt/s /mnt/s2; mkdir /mnt/sl; mount --bind /mnt/s /mnt/sl; mount --make-slave /mnt/sl
mount -t tmpfs cover /mnt/t/dir
unshare -m --propagation unchanged sh -c '
    exec 4</mnt/t/ro
    mount -t tmpfs childonly /mnt/s/x
    touch /tmp/child-ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /tmp/child-ready
hold
"""
    states = case.roundtrip(setup, check="cat /mnt/t/log; ls /mnt/s/x", iters=2)
    assert len(states) == 3 and len(states[2].snap.procs) == 2


def test_ids_of_a_process_kept_without_user_namespaces(case):
    """A child running under a user's ids in the dumper's own user namespace (a user's session bus,
    with no user namespace anywhere in the tree): its stand-in takes the same ids."""
    setup = py_hold("""
if os.fork() == 0:
    os.setgroups([1000, 27]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
""")
    state = case.roundtrip(setup)[-1]
    with open(f"/proc/{state.pid}/task/{state.pid}/children") as f:
        kid = int(f.read().split()[0])
    with open(f"/proc/{kid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    assert [status[k].split() for k in ("Uid", "Gid", "Groups")] == [["1000"] * 4, ["1000"] * 4, ["27", "1000"]]


def test_more_fds_and_mappings_than_one_message_carries(case):
    """600 fds and 300 mapped files: restore hands them to the stand-in in batches of at most
    channel.MAX_FDS (SCM_RIGHTS carries at most 253 fds a message)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import mmap
keep = []
for i in range(300):
    path = f"/mnt/t/f{i}"
    with open(path, "wb") as f:
        f.write(b"%d" % i)
    fd = os.open(path, os.O_RDONLY)
    os.lseek(fd, 1, os.SEEK_SET)
    os.dup2(fd, 100 + 2 * i, inheritable=True)
    os.dup2(fd, 101 + 2 * i, inheritable=True)
    keep.append(mmap.mmap(fd, 1, prot=mmap.PROT_READ))
    os.close(fd)
""")
    before, after = case.roundtrip(setup)
    fds = _fds(after)
    assert {n for n in fds if 100 <= n < 700} == set(range(100, 700))
    assert all(fds[n][1] == 1 and fds[n][2] == "/mnt/t" for n in range(100, 700))
    assert len([m for m in after.root.maps if "/mnt/t/f" in m]) == 300
    assert after.root.maps == before.root.maps
