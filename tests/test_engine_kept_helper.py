"""One helper per mount namespace for dump's look at it and the clones of its mounts (issue 18):
forkrun.run's `then` (the child goes on after its answer and the caller reaps it), and a real dump
whose content clones come from the helper that inspected the namespace, not from a fork of their
own, with two namespaces' files archived and restored. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import forkrun
from enginecase import DUMP_EXTERNALS, PROJECT_ROOT, assert_same, case, take  # noqa: F401  (fixture)


def _answer(x: int) -> int:
    return x * 2


def _then(w: int) -> None:
    os.write(w, b"went on")


def _fails(x: int) -> int:
    raise FileNotFoundError(2, "not there", f"/x/{x}")


def test_run_with_then_answers_goes_on_and_leaves_the_reaping():
    r, w = os.pipe()
    try:
        got, pid = forkrun.run(_answer, 21, then=_then, then_args=(w,))
        os.close(w)
        w = None
        assert got == 42
        assert os.read(r, 100) == b"went on"
        assert os.waitpid(pid, 0) == (pid, 0)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def _children() -> set[int]:
    """This process's children, zombies included (the children lists of its threads)."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out.update(map(int, f.read().split()))
    return out


def test_run_with_then_raises_as_run_does_and_reaps():
    r, w = os.pipe()
    try:
        before = _children()
        with pytest.raises(FileNotFoundError) as e:
            forkrun.run(_fails, 7, then=_then, then_args=(w,))
        assert e.value.filename == "/x/7"
        assert _children() - before == set()   # (reaped: no child of it left, not even a zombie)
        os.close(w)
        w = None
        assert os.read(r, 100) == b""   # (it never went on)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def _namespaces(quiet: int) -> str:
    """Setup lines: a mount namespace with a file on a tmpfs of its own (/tmp/g), and `quiet` more
    with nothing to clone, each with a holder in it; then the holder."""
    return f"""
unshare -m --propagation private sh -c 'mount -t tmpfs two /tmp; echo second > /tmp/g; touch /run/ready;
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /run/ready
for n in {' '.join(str(n) for n in range(2, quiet + 2))}; do
    unshare -m --propagation private sh -c "touch /run/ready$n; exec /.hold/mntcr-hold 100000" </dev/null >/dev/null 2>&1 &
    wait_for /run/ready$n
done
hold
"""


def _dump_counted(case, script: str, pid: int) -> tuple[str, object]:
    """Dump tree `pid` by `script` (a counting wrapper of the CLI); (the images, what it counted)."""
    images = case.new_images_dir()
    r = subprocess.run([sys.executable, "-S", "-c", script, "dump", "-t", str(pid), "-D", images,
                        *DUMP_EXTERNALS], env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), cwd=PROJECT_ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code, counted = json.loads(r.stdout.splitlines()[-1])
    assert code == 0, r.stderr
    return images, counted


# Counts the clone helpers a dump forks of its own (channel.fork_stream of nscopy's
# _clone_reporting), the archiving children (content's, by channel.call_in_child) and the Kept
# helpers it keeps, then dumps.
_COUNTING = """
import json, sys
from engine import channel, content, nscopy
forks = {"clone_stream": 0, "archive_child": 0, "kept": 0}
plain = channel.fork_stream
def counted(fn, *args):
    if fn is nscopy._clone_reporting:
        forks["clone_stream"] += 1
    return plain(fn, *args)
channel.fork_stream = counted
plain_call = channel.call_in_child
def counted_call(fn, *args):
    if fn is content._archive_child:
        forks["archive_child"] += 1
    return plain_call(fn, *args)
channel.call_in_child = counted_call
Kept = getattr(nscopy, "Kept", None)   # (an engine without it: counted as none)
if Kept is not None:
    kept = Kept.__init__
    def counted_kept(self, *a, **k):
        forks["kept"] += 1
        kept(self, *a, **k)
    Kept.__init__ = counted_kept
from engine import cli
code = cli.main(sys.argv[1:])
print(json.dumps([code, forks]))
"""


def test_a_dump_clones_from_the_helpers_that_read_its_namespaces(case):
    """Two mount namespaces with files on their own tmpfs and two with nothing to clone (their
    helpers let go at the end, each while the others live): each namespace's clones come from the
    helper that inspected it (no clone helper forked of its own), that helper archives them (no
    archiving child), and both files come back."""
    pid = case.start("mount -t tmpfs one /mnt; echo first > /mnt/f\n" + _namespaces(2))
    before = take(pid)
    images, forks = _dump_counted(case, _COUNTING, pid)
    assert forks == {"clone_stream": 0, "archive_child": 0, "kept": 4}, forks
    restored = case.restore(images)
    assert_same(before, take(restored))
    out = subprocess.run(["nsenter", "-t", str(restored), "-m", "cat", "/mnt/f"], capture_output=True, text=True)
    assert out.stdout == "first\n", out.stderr


# Counts the Kept helpers alive at once (made and not yet let go), then dumps.
_LIVE_COUNTING = """
import json, sys
from engine import nscopy
live = {"now": 0, "most": 0}
init, close = nscopy.Kept.__init__, nscopy.Kept.close
def counted_init(self, *a, **k):
    init(self, *a, **k)
    live["now"] += 1
    live["most"] = max(live["most"], live["now"])
def counted_close(self):
    live["now"] -= self.pid is not None
    close(self)
nscopy.Kept.__init__, nscopy.Kept.close = counted_init, counted_close
from engine import cli
code = cli.main(sys.argv[1:])
print(json.dumps([code, live]))
"""


def test_a_tree_of_many_namespaces_keeps_a_few_helpers_at_once(case):
    """Seven mount namespaces, one with a file on its own tmpfs: no more than dump._KEPT_MAX helpers
    live at once (each holds megabytes of pages copied on write), the others' namespaces still
    dumped, and the file comes back."""
    from engine import dump
    pid = case.start(_namespaces(6))
    before = take(pid)
    images, live = _dump_counted(case, _LIVE_COUNTING, pid)
    assert 1 <= live["most"] <= dump._KEPT_MAX and live["most"] < 7 and live["now"] == 0, live
    restored = case.restore(images)
    assert_same(before, take(restored))
    kids = subprocess.run(["pgrep", "-P", str(restored)], capture_output=True, text=True).stdout.split()
    found = [subprocess.run(["nsenter", "-t", k, "-m", "cat", "/tmp/g"], capture_output=True, text=True).stdout
             for k in kids]
    assert "second\n" in found, found


# Counts the clone helpers the pre-stop checks fork (channel.fork_stream of nscopy's _clone_reporting
# while prestop.check runs), then dumps.
_PRESTOP_COUNTING = """
import json, sys
from engine import channel, nscopy, prestop
forks = {"in_check": 0, "kept_in_check": 0}
plain = channel.fork_stream
inside = [False]
def counted(fn, *args):
    if fn is nscopy._clone_reporting and inside[0]:
        forks["in_check"] += 1
    return plain(fn, *args)
channel.fork_stream = counted
Kept = getattr(nscopy, "Kept", None)
if Kept is not None:
    kept = Kept.__init__
    def counted_kept(self, *a, **k):
        forks["kept_in_check"] += inside[0]
        kept(self, *a, **k)
    Kept.__init__ = counted_kept
check = prestop.check
def counted_check(*a, **k):
    inside[0] = True
    try:
        return check(*a, **k)
    finally:
        inside[0] = False
prestop.check = counted_check
from engine import cli
code = cli.main(sys.argv[1:])
print(json.dumps([code, forks]))
"""


@pytest.mark.parametrize("ids", ["mountinfo", "helper"])
def test_the_prestop_probes_of_a_namespace_clone_in_one_helper(case, ids):
    """Two proc mounts, each covered by a tmpfs: their probes (which pid namespace each shows) need
    clones made in a copy of the namespace, both by one helper before the stop; with a type that
    has a precheck (nsfs: a bind of the tree's uts namespace) and ids=statmount, the helper that
    read the mounts' unique ids makes them (no clone helper of their own)."""
    from engine import strategy
    if ids == "helper" and strategy.current().ids != "statmount":
        pytest.skip("the mounts' unique ids are read by statmount from Linux 6.8 (strategy ids=statmount)")
    setup = """
mkdir -p /mnt/a /mnt/b; touch /mnt/uts
mount -t proc p /mnt/a; mount -t tmpfs c /mnt/a
mount -t proc p /mnt/b; mount -t tmpfs c /mnt/b
""" + ("mount --bind /proc/self/ns/uts /mnt/uts\n" if ids == "helper" else "") + "hold\n"
    pid = case.start(setup)
    before = take(pid)
    images, forks = _dump_counted(case, _PRESTOP_COUNTING, pid)
    want = {"in_check": 1, "kept_in_check": 0} if ids == "mountinfo" else {"in_check": 0, "kept_in_check": 1}
    assert forks == want, forks
    assert_same(before, take(case.restore(images)))


def _inspected(ns_fd: int, pids: list[int]) -> None:
    return None


def _archive_three_times(tmp: str) -> list[int]:
    """In a private mount namespace of its own: a Kept helper of it archives one fresh tmpfs three
    times; the number of mounts its namespace has after each."""
    from engine import kernel, nscopy
    nsfd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kept = nscopy.Kept(nsfd, [os.getpid()], _inspected)
    finally:
        os.close(nsfd)
    counts = []
    try:
        for i in range(3):
            mnt = kernel.scratch_tmpfs()
            try:
                with open(f"{tmp}/a{i}.tar", "wb") as out:
                    kept.archive([(mnt, f"sb-{i}")], out.fileno(), {})
            finally:
                os.close(mnt)
            with open(f"/proc/{kept.pid}/mountinfo") as f:
                counts.append(len(f.read().splitlines()))
    finally:
        kept.close()
    return counts


def test_a_kept_helper_keeps_no_archive_staging_mounted(tmp_path):
    """The helper that archives batch after batch lets each batch's staging tmpfs and the mounts
    attached in it go once tar is done (else every archived mount of the dump stays mounted in its
    namespace until the archives end: a tree of many filesystems reaches fs.mount-max)."""
    counts = forkrun.in_mount_ns(_archive_three_times, str(tmp_path))
    assert counts[0] == counts[1] == counts[2], counts


def test_a_request_bigger_than_a_datagram_arrives_whole():
    """A clone request carries the namespace's mount list (~1.5 MB at 10,000 mounts: `scale.py
    --mounts 10000` failed "Message too long"); one a seqpacket datagram cannot carry goes in a
    memory file, with the request's fds after it."""
    from engine import channel, nscopy
    mine, theirs = channel.Channel.pair()
    big = ("clone", list(range(300_000)), ["/m"] * 1000, {})
    with pytest.raises(OSError):
        mine.send(big)   # (what a plain send does with it)
    r, w = os.pipe()
    try:
        nscopy._request(mine, big, [r])
        req, fds = nscopy._received(*theirs.recv())
        assert req == big
        assert len(fds) == 1 and os.path.samestat(os.fstat(fds[0]), os.fstat(r))
        os.close(fds[0])
        nscopy._request(mine, ("archive", ["sb-0"], {}), [w])
        req, fds = nscopy._received(*theirs.recv())
        for fd in fds:
            os.close(fd)
        assert req == ("archive", ["sb-0"], {}) and len(fds) == 1
    finally:
        mine.close()
        theirs.close()
        os.close(r)
        os.close(w)
