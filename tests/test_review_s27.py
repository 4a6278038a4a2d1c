"""Session 27's review of session 26's code (engine/procargs.py, the stand-ins' last steps, user
namespace owners, the firewall's late step): trees that must come back, hostile images that must be
refused with one line."""

from __future__ import annotations

import pytest

from enginecase import case  # noqa: F401  (fixture)


def _limits(pid: int) -> list[str]:
    with open(f"/proc/{pid}/limits") as f:
        return [line for line in f if line.startswith(("Max data size", "Max address space", "Max processes"))]


@pytest.mark.parametrize("limit", ["ulimit -d 3000", "ulimit -v 12000"])
def test_a_tree_under_a_small_memory_limit_comes_back(case, limit):
    """A stand-in holds the restorer's memory (its heap, the interpreter): a process's RLIMIT_DATA
    taken before PR_SET_MM_MAP made it refuse the brk (EINVAL: 'giving back its command line' and
    'making its executable'), an RLIMIT_AS below the restorer's size made every allocation after
    fail (ENOMEM). The tree ran under them: both are taken last (engine/threads.py `limits_before`)."""
    pid = case.start(f"{limit}\nhold\n")
    want = _limits(pid)
    after = case.cr(pid)
    assert _limits(after) == want
