"""A pipe the tree shares with a process outside it (engine/fds/pipe_outside.py): `TREE | reader`
and `writer | TREE` are refused before the stop, naming the outside process, since the restored
pipe would have no reader (EPIPE) or no writer (end-of-file at once); a pipe whose other end no
process holds any more is dumped and restored as it is."""

from __future__ import annotations

import os
import re

import pytest

from enginecase import case  # noqa: F401  (fixture)
from enginecase import in_own_pidns

TREE = "unshare -fp --mount-proc /.hold/mntcr-hold 1000000"


def _start(case, line: str, daemons: tuple[str, ...]) -> int:
    """The tree `TREE` in `line` (a shell pipeline run by the container's setup), started; its pid."""
    setup = f"exec sh -c '{line}' </dev/null >/dev/null 2>&1\n"
    return in_own_pidns(case.start(setup, host_pidns=True, daemons=("unshare", "sh") + daemons))


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0]


@pytest.mark.parametrize("line,side,outside", [
    (f"{TREE} | cat >/dev/null", "read", "cat"),
    (f"sleep 1000000 | {TREE}", "write", "sleep"),
])
def test_pipe_with_an_end_outside_refused_unstopped(case, line, side, outside):
    """The other end in a live process outside the tree: one line naming it, the tree never stopped."""
    from enginecase import CRError
    pid = _start(case, line, ("cat", "sleep"))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(rf"process {pid} fd [01] \(pipe:\[\d+\]\): the pipe's {side} end is held by process \d+ "
                     rf"\({outside}\) outside the tree, which restore cannot connect again", msg), msg
    assert len(err.value.proc.stderr.strip().splitlines()) == 1, msg
    assert _state(pid) not in "Tt", "dump stopped the tree before it refused"


def test_pipe_whose_reader_is_gone_restored(case):
    """`TREE | true`: the reader exited; nothing outside holds the read end: dumped, restored, the
    tree's stdout again a pipe nobody reads."""
    from enginecase import assert_same, take
    tree = 'unshare -fp --mount-proc sh -c "exec </dev/null 2>/dev/null; exec /.hold/mntcr-hold 1000000"'
    pid = _start(case, f"{tree} | true; sleep 1000000", ("sleep",))
    before = take(pid)
    images = case.new_images_dir()
    case.dump(pid, images)
    restored = case.restore(images)
    assert_same(before, take(restored))
    assert os.readlink(f"/proc/{restored}/fd/1").startswith("pipe:[")


def _pipe_ino(pid: int, fd: int) -> str:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    assert link.startswith("pipe:["), link
    return link[6:-1]


@pytest.mark.parametrize("line,fd,side", [
    (f"{TREE} | cat >/dev/null", 1, os.O_RDONLY),
    (f"sleep 1000000 | {TREE}", 0, os.O_WRONLY),
])
def test_pipe_declared_external_connected_to_a_fifo(case, tmp_path, line, fd, side):
    """`--external pipe[INO]:KEY` at dump, `--external file[KEY]:FIFO` at restore: the restored
    tree's end is the FIFO's, with the pipe end's access mode (the harness reading the tree's
    output is given a FIFO it opened)."""
    pid = _start(case, line, ("cat", "sleep"))
    ino = _pipe_ino(pid, fd)
    images = case.new_images_dir()
    case.dump(pid, images, ("--external", f"pipe[{ino}]:io"))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    ours = os.open(fifo, side | os.O_NONBLOCK) if side == os.O_RDONLY else None
    if ours is None:   # (a writer's open waits for a reader: restore opens without waiting)
        ours = os.open(fifo, os.O_RDWR)
    try:
        restored = case.restore(images, ("--external", f"file[io]:{fifo}"))
        link = f"/proc/{restored}/fd/{fd}"
        assert os.stat(link).st_ino == os.fstat(ours).st_ino, os.readlink(link)
        with open(f"/proc/{restored}/fdinfo/{fd}") as f:
            flags = int(f.read().split("flags:")[1].split()[0], 8)
        assert flags & os.O_ACCMODE == (os.O_WRONLY if fd == 1 else os.O_RDONLY)
        assert not flags & os.O_NONBLOCK, "restore's non-blocking open of the FIFO stayed non-blocking"
    finally:
        os.close(ours)


def test_pipe_declared_external_fifo_without_reader_refused(case, tmp_path):
    """The FIFO given for a write end has no reader: restore says so in one line (never waits for
    one) and leaves nothing running."""
    from enginecase import CRError
    pid = _start(case, f"{TREE} | cat >/dev/null", ("cat",))
    images = case.new_images_dir()
    case.dump(pid, images, ("--external", f"pipe[{_pipe_ino(pid, 1)}]:io"))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(CRError) as err:
        case.restore(images, ("--external", f"file[io]:{fifo}"))
    msg = err.value.proc.stderr.strip()
    assert msg.endswith("a FIFO no process has open for reading (start its reader first)"), msg
    assert len(msg.splitlines()) == 1, msg


def test_refusal_names_the_declaration(case):
    """The refusal of a pipe shared with an outside process names `--external pipe[INO]:KEY`."""
    from enginecase import CRError
    pid = _start(case, f"{TREE} | cat >/dev/null", ("cat",))
    ino = _pipe_ino(pid, 1)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert f"--external pipe[{ino}]:KEY and restore with --external file[KEY]:PATH" in str(err.value)


def _wait_for_eof(r: int, w: int) -> None:
    """A helper's work after its answer: wait until the caller closes its end (`w`, closed here)."""
    os.close(w)
    os.read(r, 1)


def test_a_helper_of_the_dumper_is_not_an_outside_holder():
    """A helper the dumper forked and keeps (forkrun.run's `then`: dump's namespace helpers) holds
    copies of the dumper's fds: not a process outside the tree holding the pipe, which a plain child
    holding the same pipe is."""
    from engine import forkrun
    from engine.fds import pipe_outside
    r, w = os.pipe()
    target = os.readlink(f"/proc/self/fd/{r}")
    gate_r, gate_w = os.pipe()
    _, helper = forkrun.run(int, 0, then=_wait_for_eof, then_args=(gate_r, gate_w))
    plain = os.fork()
    if plain == 0:
        _wait_for_eof(gate_r, gate_w)
        os._exit(0)
    try:
        found = {pid for pid, _, _ in pipe_outside.holders({target}, set())}
        assert helper not in found and plain in found, (helper, plain, found)
    finally:
        os.close(gate_w)
        os.waitpid(plain, 0)
        os.waitpid(helper, 0)
        forkrun.going_on.discard(helper)
        for fd in (r, w, gate_r):
            os.close(fd)
