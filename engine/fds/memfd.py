"""memfd: name, content, seals and offset (the file lives on no mount of the tree)."""

from __future__ import annotations

import base64
import fcntl
import os
import re

from engine.fds import FdKind, RestoreFd, register
from engine.fds import sys as fsys

_NAME = re.compile(r"^/memfd:(.*) \(deleted\)$")
MAX_SIZE = 64 << 20   # kept inline in the image: refuse bigger ones rather than bloat the manifest
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
F_SEAL_SEAL = 1


def _refuse_size(where: str, size: int) -> None:
    """Refuse a memfd too big to keep inline in the image."""
    from engine.fds import FdError
    if size > MAX_SIZE:
        raise FdError(0, f"{where}: memfd of {size} bytes: more than {MAX_SIZE >> 20} MiB is not dumped")


def _precheck(d) -> None:
    """Before the tree is stopped: its size (it may still grow until then: `_dump` asks again)."""
    _refuse_size(d.where, os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_size)


def _dump(d) -> dict:
    name = _NAME.match(d.target)[1]
    fd = os.open(f"/proc/{d.pid}/fd/{d.fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        _refuse_size(d.where, size)
        data = os.pread(fd, size, 0)
        seals = fcntl.fcntl(fd, fsys.F_GET_SEALS)
    finally:
        os.close(fd)
    obj = f"memfd-{os.stat(f'/proc/{d.pid}/fd/{d.fd}').st_ino}"
    if obj not in d.objects:
        d.objects[obj] = {"kind": "memfd", "name": name, "data": base64.b64encode(data).decode(), "seals": seals}
    return {"obj": obj}


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(entry.get("obj"), str):
        _fail(f"{what}: a memfd needs 'obj'")


def _check_object(obj: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(obj.get("name"), str) or len(obj["name"]) > 249 or "\0" in obj["name"] \
            or not isinstance(obj.get("seals"), int) or not isinstance(obj.get("data"), str) \
            or len(obj["data"]) > MAX_SIZE * 4 // 3 + 4:
        _fail(f"{what}: bad memfd")


def _open(r: RestoreFd) -> int:
    e = r.entry
    key = e["obj"]
    if key not in r.state:
        obj = r.objects[key]
        fd = fsys.memfd_create(obj["name"], MFD_CLOEXEC | MFD_ALLOW_SEALING)
        os.write(fd, base64.b64decode(obj["data"]))
        r.keep.append(fd)
        r.state[key] = fd
        # Seals last (a write seal would stop the write above); a memfd made without
        # MFD_ALLOW_SEALING shows F_SEAL_SEAL, which is what we add then.
        if obj["seals"]:
            fcntl.fcntl(fd, fsys.F_ADD_SEALS, obj["seals"])
    # Each description opened again through /proc: its own offset and access mode.
    fd = r.reopen(r.state[key], (e["flags"] & (os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK)) | os.O_CLOEXEC)
    os.lseek(fd, e["pos"], os.SEEK_SET)
    return fd


register(FdKind(name="memfd", matches=lambda t, m: _NAME.match(t) is not None, dump=_dump, open=_open,
                check=_check, check_object=_check_object, order=20, precheck=_precheck))
