"""The own sysctls of the tree's network namespaces (/proc/sys/net/...: ipv4/ping_group_range,
unix/max_dgram_qlen, ipv4/conf/lo/forwarding, ipv6/conf/all/disable_ipv6...), each namespace's own.

Restore makes a fresh network namespace; before, its sysctls came back as a fresh one's, silently
(a container runtime sets ping_group_range and ip_unprivileged_port_start; CRIU's netns-dev and
netns_sub_sysctl set device and unix ones; docker turns IPv6 off in a container's). Dump reads, in a
child joined to each namespace of the tree that is not the dumper's, and each one only a bind keeps
(engine/fs/nsfs.py; a sysctl of /proc/sys/net is the reader's namespace's), every writable file
under `TOPS` and keeps those whose text differs from a fresh namespace's; of the names a fresh one
lacks, only those of a device restore makes (engine/netlinks.py), compared with what a device made
afresh gets (`_device_base`: lxd turns IPv6 off on its bridge); the others are passed over (dump
names such devices where it matters).
Restore writes them in the namespace it made, from a child joined to it: the `all` then `default`
device settings first (writing them changes the devices'), then the rest, a write the kernel
refuses tried again once after the others (ip_local_port_range must stay above
ip_unprivileged_port_start: written in the dumped state's order, either may come first). One the
kernel refuses still fails the restore in one line, and so does a tcp_congestion_control the kernel has
not loaded (the restorer's write would load module tcp_NAME: `_LOADED`).

Only names under `TOPS` (the kernel's per-namespace tables a non-initial namespace shows), no
".." or "." component: restore never writes another namespace's, and never the host's (the
restorer's own namespace is refused).

Image (manifest "netvars"): {net-N: {NAME: TEXT}}, NAME relative to /proc/sys/net.
"""

from __future__ import annotations

import errno
import os
from engine import rx

from engine import forkrun, kernel

__all__ = ["NetvarsError", "read", "read_fd", "write", "of_process", "check"]

TOPS = ("core", "ipv4", "ipv6", "unix", "netfilter", "mptcp")
MAX_NAMES = 2048
MAX_TEXT = 1024
# (a component: a table's entry, or a device's name as the kernel allows it, '@' and '+' too; never
# "." or "..")
_NAME = rx.compile(r"^(?:" + "|".join(TOPS) + r")(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9_.:@+-]{1,64}){1,4}\Z")
_TEXT = rx.compile(r"^[\x20-\x7e\t\n]*\Z")
_BASE = "/proc/sys/net"
# A name whose write loads a module named after its value when the kernel has none such
# (tcp_ca_find_autoload: request_module("tcp_%s") for a writer with CAP_NET_ADMIN, as the restorer
# is; a container's root is not): only a value the kernel lists there (loaded already) is written.
_LOADED = {"ipv4/tcp_congestion_control": "ipv4/tcp_available_congestion_control"}


class NetvarsError(OSError):
    """A network namespace sysctl that cannot be read or written; the message is one line."""


def _values() -> dict[str, str | None]:
    """In the namespace (joined by this process): every writable sysctl under TOPS, as its text, or
    None when it cannot be read (write-only: route/flush; unset: ipv6's stable_secret reads EIO)."""
    out = {}
    for top in TOPS:
        for d, _dirs, files in os.walk(os.path.join(_BASE, top)):
            for f in files:
                path = os.path.join(d, f)
                try:
                    if not os.stat(path).st_mode & 0o200:
                        continue
                except OSError:
                    continue
                try:
                    with open(path, "rb") as fh:
                        text = fh.read(MAX_TEXT + 1).decode("ascii", "replace")
                except OSError:
                    text = None
                out[path[len(_BASE) + 1:]] = text
    return out


def _values_in(fd: int) -> dict[str, str | None]:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return _values()


_fresh: dict[str, str | None] | None = None


def fresh() -> dict[str, str | None]:
    """A fresh network namespace's values (read once per process, in a child that unshared one)."""
    global _fresh
    if _fresh is None:
        _fresh = forkrun.run(_values, unshare_flags=kernel.CLONE_NEWNET)
    return _fresh


def read(pid: int, devices: dict[str, int] | None = None) -> dict[str, str]:
    """The sysctls of process `pid`'s network namespace that differ from a fresh one's (`read_fd`)."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_fd(fd, devices)
    finally:
        os.close(fd)


def read_fd(fd: int, devices: dict[str, int] | None = None) -> dict[str, str]:
    """The sysctls of network namespace `fd` that differ from a fresh one's, with the names a fresh
    namespace has, and those of `devices` ({name: MTU}, the devices restore makes; None: every
    device a fresh namespace lacks) that differ from what a device made afresh gets (`_device_base`)."""
    base = fresh()
    have = forkrun.run(_values_in, fd)
    out = {}
    for k, v in sorted(have.items()):
        want = base.get(k) if k in base else _device_base(k, base, devices)
        if want is not _NONE and v is not None and v != want and _NAME.match(k) and len(v) <= MAX_TEXT and _TEXT.match(v):
            out[k] = v
    return out


_NONE = object()
# (per device, set by the kernel or by restore's engine/netlinks_make.py, not from `default`: the
# address generation mode (a tun device's is random; writing it makes a link-local address))
_DEVICE_OWN = ("addr_gen_mode", "stable_secret")


def _device_base(name: str, base: dict[str, str | None], devices: dict[str, int] | None):
    """What sysctl `name` of a device a fresh namespace lacks is on a device made afresh: the
    namespace's `default` setting it copies when it is made (ipv6's mtu: the device's MTU; a
    neighbour setting: a fresh namespace's lo's), or
    _NONE for a name not kept (a device not in `devices`, a setting of its own)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] not in ("ipv4", "ipv6") or parts[1] not in ("conf", "neigh") \
            or (devices is not None and parts[2] not in devices) or parts[3] in _DEVICE_OWN:
        return _NONE
    if parts[:2] == ["ipv6", "conf"] and parts[3] == "mtu":
        return f"{devices[parts[2]]}\n" if devices is not None else _NONE
    # (a namespace but the initial one has no neigh/default: a device's neighbour settings are copied
    # from the kernel's, as a fresh namespace's lo's were)
    return base.get("/".join(parts[:2] + ["default" if parts[1] == "conf" else "lo", parts[3]]), _NONE)


def of_process(pid: int) -> str:
    """The same, as one line (the snapshot's comparison)."""
    return " ".join(f"{k}={v.strip()!r}" for k, v in read(pid).items())


def _order(name: str) -> int:
    parts = name.split("/")
    if len(parts) > 2 and parts[1] == "conf":
        return {"all": 0, "default": 1}.get(parts[2], 2)
    return 3


def _put(name: str, text: str) -> None:
    fd = os.open(os.path.join(_BASE, name), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _get(name: str) -> str | None:
    try:
        with open(os.path.join(_BASE, name), "rb") as fh:
            return fh.read(MAX_TEXT + 1).decode("ascii", "replace")
    except OSError:
        return None


def _write_here(kept: dict[str, str], base: dict[str, str | None]) -> None:
    """Make our namespace's values `kept`, the others a fresh namespace's (`base`): writing an
    `all` or `default` setting changes the devices' (and ipv6's all/disable_ipv6 the default's),
    so each round writes what differs, until a round writes nothing."""
    _check_loaded(kept)
    for name in kept:   # (the validator's rule, asked again where the path is made: never a file outside net/)
        if not _NAME.match(name):
            raise NetvarsError(errno.EINVAL, f"network namespace sysctl {name[:80]!r}: not a network sysctl")
    names = sorted(set(kept) | {n for n, v in base.items() if v is not None}, key=lambda n: (_order(n), n))
    errors: dict[str, OSError] = {}
    for _round in range(4):
        wrote, errors = False, {}
        for name in names:
            want, have = kept.get(name, base.get(name)), _get(name)
            # (a name of a fresh namespace of ours that this one lacks, one a user namespace owns:
            # core/xfrm_*; a kept one it lacks fails below)
            if want is None or have == want or (have is None and name not in kept):
                continue
            try:
                _put(name, want)
                wrote = True
            except OSError as e:
                errors[name] = e   # (one that depends on another written after it: the next round)
        if not wrote:
            break
    left = [n for n in names if kept.get(n, base.get(n)) is not None and _get(n) is not None
            and _get(n) != kept.get(n, base.get(n))]
    if left and not errors:   # (written, but another write keeps changing it back)
        errors = {left[0]: OSError(errno.EIO, "does not keep the value written")}
    for name, e in sorted(errors.items()):
        raise NetvarsError(e.errno or errno.EIO, f"network namespace sysctl net/{name} = "
                           f"{kept.get(name, base.get(name)).strip()!r}: {e.strerror or e}")


def _check_loaded(kept: dict[str, str]) -> None:
    """Refuse a value of `_LOADED` the kernel has not loaded (writing it would load a module of the
    host's that the image names)."""
    for name, listed in _LOADED.items():
        want = kept.get(name, "").split()
        if want and not set(want) <= set((_get(listed) or "").split()):
            raise NetvarsError(errno.ENOENT, f"network namespace sysctl net/{name} = {kept[name].strip()!r}: "
                               f"not loaded by this kernel (net/{listed}); load it on the host first "
                               "(restore loads no module an image names)")


def _write_in(fd: int, kept: dict[str, str], base: dict[str, str | None]) -> None:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    _write_here(kept, base)


def write(fd: int, kept: dict[str, str]) -> None:
    """Write `kept` into the network namespace `fd` (never the caller's own: NetvarsError)."""
    if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
        raise NetvarsError(errno.EINVAL, "network namespace sysctls: the namespace is the restorer's own")
    if kept:
        forkrun.run(_write_in, fd, kept, fresh())


def check(kept, what: str, fail) -> None:
    """The validator's rule for one namespace's sysctls: at most MAX_NAMES names under TOPS, no
    '.' or '..' component, texts of printable ASCII of at most MAX_TEXT bytes."""
    if type(kept) is not dict or len(kept) > MAX_NAMES:
        fail(f"{what}: must be an object of at most {MAX_NAMES} sysctls")
    for name, text in kept.items():
        if type(name) is not str or not _NAME.match(name) or any(p in (".", "..") for p in name.split("/")):
            fail(f"{what}: {name!r} is not a network sysctl under {', '.join(TOPS)}")
        if type(text) is not str or len(text) > MAX_TEXT or not _TEXT.match(text):
            fail(f"{what} {name}: its value must be printable text of at most {MAX_TEXT} bytes")
