"""eventfd: the counter and the semaphore flag (fdinfo eventfd-count, eventfd-semaphore)."""

from __future__ import annotations

import os

from engine.imageformat import BOOL, INT, F
from engine.fds import FdKind, RestoreFd, register


def _dump(d) -> dict:
    info = d.info()
    return {"count": int(info["eventfd-count"][0], 16),
            "semaphore": info.get("eventfd-semaphore", ["0"])[0] == "1"}


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(entry.get("count"), int) or not 0 <= entry["count"] < (1 << 64) - 1:
        _fail(f"{what}: bad eventfd count")


def _open(r: RestoreFd) -> int:
    e = r.entry
    flags = os.EFD_CLOEXEC | (os.EFD_SEMAPHORE if e.get("semaphore") else 0) | (e["flags"] & os.O_NONBLOCK)
    return os.eventfd(e["count"], flags)


register(FdKind(name="eventfd", matches=lambda t, m: t == "anon_inode:[eventfd]", dump=_dump, open=_open,
                check=_check, fields={"count": F(INT), "semaphore": F(BOOL, required=False)}))
