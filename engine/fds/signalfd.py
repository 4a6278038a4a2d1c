"""signalfd: the signal mask (fdinfo sigmask)."""

from __future__ import annotations

import os

from engine.imageformat import INT, F
from engine.fds import FdKind, RestoreFd, register
from engine.fds import sys as fsys


def _dump(d) -> dict:
    return {"sigmask": int(d.info()["sigmask"][0], 16)}


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(entry.get("sigmask"), int) or not 0 <= entry["sigmask"] < 1 << 64:
        _fail(f"{what}: bad signalfd mask")


def _open(r: RestoreFd) -> int:
    return fsys.signalfd(r.entry["sigmask"], os.O_CLOEXEC | (r.entry["flags"] & os.O_NONBLOCK))


register(FdKind(name="signalfd", matches=lambda t, m: t == "anon_inode:[signalfd]", dump=_dump, open=_open,
                check=_check, fields={"sigmask": F(INT)}))
