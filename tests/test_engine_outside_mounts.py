"""Files reached through mounts outside the dumped namespaces (issue 14 items 5 and 6).

A process that opened a file and then unshared its mount namespace holds the
file through a mount of the parent namespace: when only the child's tree is
dumped, that mount is in no dumped namespace. Dump locates the file at the same
path on a visible mount of the same superblock and restore opens it there (the
outside mount itself is not recreated: its fd then names the visible mount);
a file no dumped mount reaches is refused, naming it and --external file[].
"""

from __future__ import annotations

import re

from enginecase import CRError, case, take  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

# pid 1 keeps the parent namespace; its child opened /dev/null and a tmpfs file there, then unshared.
OPENED_BEFORE_UNSHARE = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; printf abcdef > /mnt/t/f
sh -c 'exec 7</dev/null 8</mnt/t/f; dd bs=2 count=1 <&8 >/dev/null 2>&1
       exec unshare -m sh -c "mkdir /mnt/t/sub; mount -t tmpfs mine /mnt/t/sub
                              exec /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1"' &
hold
"""


def _child(pid: int) -> int:
    kids = [p for p in tree_pids(pid) if p != pid]
    assert len(kids) == 1, kids
    return kids[0]


def _fds(state) -> dict[int, tuple[str, str]]:
    """{fd: (line without its mount, mount label)} of the root process."""
    out = {}
    for line in state.root.fds:
        m = re.match(r"(\d+): (.*) mnt=(\S+)$", line)
        out[int(m[1])] = (m[2], m[3])
    return out


def test_fd_opened_before_unshare(case):
    """fds 7 (/dev/null) and 8 (a tmpfs file at offset 2) of the parent namespace: same file, flags
    and offset after restore, on the child namespace's mount at that path."""
    pid = case.start(OPENED_BEFORE_UNSHARE)
    child = _child(pid)
    before = take(child)
    assert _fds(before)[7][1] == "detached" and _fds(before)[8][1] == "detached"
    after = take(case.cr(child))
    a, b = _fds(before), _fds(after)
    assert {n: v[0] for n, v in a.items()} == {n: v[0] for n, v in b.items()}
    assert b[7][1] == "/dev" and b[8][1] == "/mnt/t"
    assert before.fd_data[0] == after.fd_data[0]
    assert before.root.tree_text == after.root.tree_text
