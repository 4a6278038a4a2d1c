"""Namespace fds (nsfs: an open /proc/PID/ns/KIND): the namespace of the tree it names, reopened
from the restored namespace.

systemd-nspawn --private-network (and --network-veth...) keeps an fd on the container's network
namespace; runtimes and monitors keep such fds to join a container later. Dump names the
namespace as the image does (`ns`: "net-1", the namespace some process of the tree is in);
restore gives a new description of the restorer's fd on that restored namespace. A namespace no
process of the tree is in (the host's, one kept alive only by the fd) is refused before the stop.
A user namespace is named as its image record ("user-1", engine/userns_cr.py): one of the tree's
below the dumper's own (LXC's monitor keeps an fd on an unprivileged container's). Time
namespaces are not kept (the image names none): refused, as an fd on the dumper's own user
namespace is.
"""

from __future__ import annotations

import errno
import os
from engine import rx

from engine.imageformat import STR, F, pattern
from engine.fds import FdError, FdKind, RestoreFd, register

# Kinds the image names ("KIND-N", engine/prestop.ns_names): what restore keeps an fd on.
KINDS = ("mnt", "pid", "uts", "ipc", "net", "cgroup")
_TARGET = rx.compile(r"^(mnt|pid|uts|ipc|net|cgroup|user|time):\[([0-9]+)\]$")
_NS_ID = rx.compile(r"^(mnt|pid|uts|ipc|net|cgroup|user)-[0-9]{1,9}\Z")


def _matches(target: str, mode: int) -> bool:
    return _TARGET.match(target) is not None


def _name(d) -> str:
    """The image name of the namespace the fd names, or FdError (one line) when the tree has none."""
    from engine import prestop
    kind, ino = _TARGET.match(d.target).groups()
    if kind == "user":
        return _user_name(d, int(ino))
    if kind not in KINDS:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: an fd on a {kind} namespace: not supported")
    pids = d.scratch.get("pids") or ()
    names = d.scratch.get("ns_names")
    if names is None:
        names = d.scratch["ns_names"] = prestop.ns_names(list(pids), KINDS)
    name = names.get((kind, int(ino)))
    if name is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: its {kind} namespace is none of the dumped tree's "
                                        "(the host's, or one only the fd keeps): not supported")
    return name


def _user_name(d, ino: int) -> str:
    """The image id of the user namespace `ino` of the tree ("user-" when the tree is still running:
    prestop knows no ids), or FdError."""
    from engine import kernel, userns
    names = d.scratch.get("user_names")
    if names is not None:
        name = names.get(ino)
    else:
        name = "user-" if ino in {kernel.ns_ino(p, "user") for p in d.scratch.get("pids") or ()} else None
    if name is None or ino == userns.own_userns_ino():
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: its user namespace is none the tree made (the dumper's "
                                        "own, or one no process of the tree is in): not supported")
    return name


def _precheck(d) -> None:
    _name(d)


def _dump(d) -> dict:
    return {"ns": _name(d)}


def _open(r: RestoreFd) -> int:
    e = r.entry
    if r.ns_fd is None:
        raise FdError(errno.EINVAL, f"{r.where}: no restored namespaces to reopen {e['ns']} from")
    base = r.ns_fd(e["ns"])
    if base is None:
        raise FdError(errno.EINVAL, f"{r.where}: no process of the image is in namespace {e['ns']}")
    return r.reopen(base, os.O_RDONLY | os.O_CLOEXEC)


register(FdKind(name="nsfs", matches=_matches, dump=_dump, open=_open, precheck=_precheck,
                fields={"ns": F(STR, rule=pattern(_NS_ID, "a namespace id like net-1"))},
                refs=lambda e: [("namespace", e["ns"], f"namespace {e['ns']}")]))
