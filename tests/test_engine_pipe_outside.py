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
