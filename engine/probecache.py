"""The kernel feature probe's results, kept for the rest of the boot.

Probing forks a child into a fresh mount namespace and really calls each
syscall: tens of milliseconds, on every dump and restore, for an answer that
cannot change until the machine reboots. The answer is kept in /run (a tmpfs,
empty after each boot) under a key that names what it depends on: the boot
(/proc/sys/kernel/random/boot_id), the kernel release, the effective uid,
capabilities and user namespace of the caller, and the list of probed
features. A caller under a seccomp filter neither reads nor writes it (a filter
can make any syscall fail with ENOSYS: that says nothing about the kernel,
and tests simulate old kernels that way). Any other key,
an unreadable or malformed file, or one that anyone but us could have written
means "probe again"; the cache never decides anything on its own.

Only definitive answers are kept: a feature missing because the kernel said
ENOSYS/EINVAL/EOPNOTSUPP/EPERM. A failure that could be passing (no fds left, no memory,
too many mounts) is probed again next time.
"""

from __future__ import annotations

import errno
import os
import stat

from engine import jsonc

DIR = "/run/mntcr"        # tests point this elsewhere
_VERSION = 1
_MAX_BYTES = 64 * 1024
# The errors that say "this kernel does not do that", as opposed to "not right now".
DEFINITIVE = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM})


def key(names) -> dict:
    """What the probe's answer depends on; None parts when they cannot be read (then nothing is kept)."""
    def read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None
    try:
        userns = os.stat("/proc/self/ns/user").st_ino
    except OSError:
        userns = None
    status = "\n" + (read("/proc/self/status") or "")

    def field(name: str) -> str | None:
        # (where its line starts: a loop over the ~60 lines was ~1,100 interpreter steps a verb)
        at = status.find(f"\n{name}:")
        if at < 0:
            return None
        end = status.find("\n", at + 1)
        return status[at + len(name) + 2:end if end >= 0 else len(status)].strip()
    return {"version": _VERSION, "boot_id": read("/proc/sys/kernel/random/boot_id"),
            "release": os.uname().release, "euid": os.geteuid(), "userns": userns,
            "capeff": field("CapEff"), "seccomp": field("Seccomp"), "features": sorted(names)}


def file_name(names) -> str:
    """The cache file of a feature list: engines of other versions (other lists) on one machine keep
    their own files instead of overwriting each other's on every run (each would probe again)."""
    from _blake2 import blake2b   # (what hashlib.blake2b is, without loading OpenSSL's binding)
    digest = blake2b("\0".join(sorted(names)).encode(), digest_size=8).hexdigest()
    return f"features-{digest}.json"


def _usable(k: dict) -> bool:
    return (k["boot_id"] is not None and k["userns"] is not None and k["capeff"] is not None
            and k["seccomp"] == "0")


def load(k: dict) -> dict[str, tuple[bool, str]] | None:
    """The kept results for key `k`, or None (no file, another key, or a file we did not write)."""
    if not _usable(k):
        return None
    try:
        fd = os.open(os.path.join(DIR, file_name(k["features"])), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022
                or st.st_size > _MAX_BYTES):
            return None
        data = jsonc.loads(os.read(fd, _MAX_BYTES + 1).decode())   # (UnicodeDecodeError: a ValueError)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("key") != k:
        return None
    results = data.get("results")
    if not isinstance(results, dict) or sorted(results) != k["features"]:
        return None
    out = {}
    for name, value in results.items():
        if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], bool)
                or not isinstance(value[1], str)):
            return None
        out[name] = (value[0], value[1])
    return out


def store(k: dict, results: dict[str, tuple[bool, str]], errnos: dict[str, int | None]) -> bool:
    """Keep `results` under key `k` when every missing feature is definitively missing; True when kept.
    Best effort: a /run we cannot write (or a directory someone else owns) only means no cache."""
    if not _usable(k) or sorted(results) != k["features"]:
        return False
    if any(not present and errnos.get(name) not in DEFINITIVE for name, (present, _) in results.items()):
        return False
    try:
        import json   # (a restore only reads: engine/jsonc.py)
        os.makedirs(DIR, mode=0o700, exist_ok=True)
        st = os.lstat(DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return False
        name = file_name(k["features"])
        tmp = os.path.join(DIR, f".{name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps({"key": k, "results": {n: list(v) for n, v in results.items()}}).encode())
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(DIR, name))  # readers see the old file or the new one, never half
        return True
    except (OSError, ImportError):   # (ImportError: json out of reach, a process that chrooted)
        return False
