"""Namespace fds (nsfs: an open /proc/PID/ns/KIND): the namespace of the tree it names, reopened
from the restored namespace.

systemd-nspawn --private-network (and --network-veth...) keeps an fd on the container's network
namespace; runtimes and monitors keep such fds to join a container later. Dump names the
namespace as the image does (`ns`: "net-1", the namespace some process of the tree is in);
restore gives a new description of the restorer's fd on that restored namespace. A namespace no
process of the tree is in (the host's, one kept alive only by the fd) is refused before the stop.
User and time namespaces are not kept (the image names no time namespace; user namespaces have
their own records): refused too.
"""

from __future__ import annotations

import errno
import os
import re

from engine.imageformat import STR, F, pattern
from engine.fds import FdError, FdKind, RestoreFd, register

# Kinds the image names ("KIND-N", engine/prestop.ns_names): what restore keeps an fd on.
KINDS = ("mnt", "pid", "uts", "ipc", "net", "cgroup")
_TARGET = re.compile(r"^(mnt|pid|uts|ipc|net|cgroup|user|time):\[([0-9]+)\]$")
_NS_ID = re.compile(r"^(mnt|pid|uts|ipc|net|cgroup)-[0-9]{1,9}$")


def _matches(target: str, mode: int) -> bool:
    return _TARGET.match(target) is not None


def _name(d) -> str:
    """The image name of the namespace the fd names, or FdError (one line) when the tree has none."""
    from engine import prestop
    kind, ino = _TARGET.match(d.target).groups()
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
                fields={"ns": F(STR, rule=pattern(_NS_ID, "a namespace id like net-1"))}))
