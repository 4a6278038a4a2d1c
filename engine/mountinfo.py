"""Mount records: parse /proc/PID/mountinfo, or read them through statmount/listmount.

A `Mount` is one line of mountinfo, decoded: octal escapes undone, optional
fields split into peer group, master, propagate_from and unbindable. `format_line`
turns a record back into the exact kernel text, so parse -> format round-trips.
"""

from __future__ import annotations

import errno
import os
from engine import rx
from engine.records import record, field, replace

from engine import kernel

__all__ = [
    "Mount",
    "MountinfoError",
    "parse",
    "parse_line",
    "format_line",
    "format_all",
    "read_pid",
    "read_file",
    "read_source",
    "read_statmount",
    "mount_from_statmount",
    "unescape",
    "escape",
]


class MountinfoError(ValueError):
    """A mountinfo text that does not follow the kernel's format."""

    def __init__(self, lineno: int, message: str, line: str = ""):
        self.lineno = lineno
        self.message = message
        self.line = line
        super().__init__(f"mountinfo line {lineno}: {message}" + (f": {line!r}" if line else ""))

    def __reduce__(self):
        # Raised in forked helpers and pickled back: rebuild from the constructor's arguments.
        return (type(self), (self.lineno, self.message, self.line), self.__dict__)


_OCTAL = rx.compile(r"\\([0-7]{3})")


def unescape(text: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012`` newline, ``\\134`` backslash)."""
    if "\\" not in text:
        return text
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def escape(text: str, chars: str = " \t\n\\") -> str:
    """Escape like the kernel's seq_escape: each char of `chars` becomes ``\\ooo``."""
    if not any(c in text for c in chars):
        return text
    return "".join(f"\\{ord(c):03o}" if c in chars else c for c in text)


@record(frozen=True, slots=True)
class Mount:
    """One mount as mountinfo describes it (ids as the kernel shows them)."""

    mnt_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    mount_opts: tuple[str, ...]
    fstype: str
    source: str
    super_opts: tuple[str, ...]
    shared: int | None = None
    master: int | None = None
    propagate_from: int | None = None
    unbindable: bool = False
    # Optional fields the kernel may add that we do not know; kept for round trips.
    extra_optional: tuple[str, ...] = ()
    # 64-bit unique id (statmount / STATX_MNT_ID_UNIQUE) when known, else None.
    unique_id: int | None = field(default=None, compare=False)

    @property
    def dev(self) -> str:
        """``MAJ:MIN`` of the superblock."""
        return f"{self.major}:{self.minor}"

    @property
    def basetype(self) -> str:
        """fstype without its subtype (``fuse`` for ``fuse.sshfs``)."""
        return self.fstype.split(".", 1)[0]

    @property
    def subtype(self) -> str | None:
        """The subtype of ``fstype.subtype``, or None."""
        parts = self.fstype.split(".", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def readonly(self) -> bool:
        """Whether the mount itself is read-only (its per-mount "ro")."""
        return "ro" in self.mount_opts

    def super_opt(self, name: str) -> str | None:
        """Value of superblock option `name` (``""`` for a bare flag, None if absent), unescaped."""
        for opt in self.super_opts:
            key, sep, value = opt.partition("=")
            if key == name:
                return unescape(value) if sep else ""
        return None

    def with_(self, **changes) -> "Mount":
        """A copy with some fields changed."""
        return replace(self, **changes)


def _int(lineno: int, text: str, what: str, line: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise MountinfoError(lineno, f"{what} is not a number ({text!r})", line) from None
    if value < 0:
        raise MountinfoError(lineno, f"{what} is negative ({text!r})", line)
    return value


def parse_line(line: str, lineno: int = 1, unique: dict[int, int] | None = None, memo: dict | None = None) -> Mount:
    """Parse one mountinfo line; raise MountinfoError naming the line and the problem.
    `unique` maps mount ids to their 64-bit unique ids (statmount), when known; `memo` (a dict
    kept across the lines of one text) makes equal roots, types, sources and option lists one
    object each: 90,000 mounts repeat a handful of them."""
    raw = line.rstrip("\n")
    fields = raw.split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise MountinfoError(lineno, "no ' - ' separator after the optional fields", raw) from None
    # The source may be empty (mount("", dir, "tmpfs") prints "- tmpfs  rw"); no other field may.
    if "" in fields[:sep + 2] or "" in fields[sep + 3:]:
        raise MountinfoError(lineno, "empty field (double or trailing space)", raw)
    if len(fields) < 10 or sep < 6:
        raise MountinfoError(lineno, f"too few fields ({len(fields)}, need at least 10)", raw)
    if len(fields) - sep - 1 != 3:
        raise MountinfoError(lineno, f"expected 3 fields after ' - ', got {len(fields) - sep - 1}", raw)
    mnt_id = _int(lineno, fields[0], "mount id", raw)
    parent_id = _int(lineno, fields[1], "parent id", raw)
    majmin = fields[2].split(":")
    if len(majmin) != 2:
        raise MountinfoError(lineno, f"device is not MAJ:MIN ({fields[2]!r})", raw)
    major = _int(lineno, majmin[0], "major", raw)
    minor = _int(lineno, majmin[1], "minor", raw)
    root = unescape(fields[3])
    mountpoint = unescape(fields[4])
    if not root.startswith("/") and not root.startswith("net:") and "[" not in root:
        # Pseudo filesystems (nsfs, pipefs) show e.g. "net:[4026531840]" as root.
        raise MountinfoError(lineno, f"root is not an absolute path ({fields[3]!r})", raw)
    if not mountpoint.startswith("/"):
        raise MountinfoError(lineno, f"mount point is not an absolute path ({fields[4]!r})", raw)
    mount_opts = tuple(fields[5].split(","))
    shared = master = propagate_from = None
    unbindable = False
    extra: list[str] = []
    for opt in fields[6:sep]:
        tag, colon, value = opt.partition(":")
        if tag == "shared" and colon:
            shared = _int(lineno, value, "shared peer group", raw)
        elif tag == "master" and colon:
            master = _int(lineno, value, "master peer group", raw)
        elif tag == "propagate_from" and colon:
            propagate_from = _int(lineno, value, "propagate_from group", raw)
        elif opt == "unbindable":
            unbindable = True
        elif colon or opt.replace("_", "").isalnum():
            extra.append(opt)  # a future optional field: keep it, it round-trips
        else:
            raise MountinfoError(lineno, f"bad optional field {opt!r}", raw)
    fstype = unescape(fields[sep + 1])
    source = unescape(fields[sep + 2])
    super_opts = tuple(fields[sep + 3].split(","))
    if memo is not None:
        root, fstype, source = memo.setdefault(root, root), memo.setdefault(fstype, fstype), memo.setdefault(source, source)
        mount_opts, super_opts = memo.setdefault(mount_opts, mount_opts), memo.setdefault(super_opts, super_opts)
    return Mount(
        mnt_id=mnt_id,
        parent_id=parent_id,
        major=major,
        minor=minor,
        root=root,
        mountpoint=mountpoint,
        mount_opts=mount_opts,
        fstype=fstype,
        source=source,
        super_opts=super_opts,
        shared=shared,
        master=master,
        propagate_from=propagate_from,
        unbindable=unbindable,
        extra_optional=tuple(extra),
        unique_id=unique.get(mnt_id) if unique else None,
    )


def parse(text: str, unique: dict[int, int] | None = None) -> list[Mount]:
    """Parse a whole mountinfo text (blank lines are an error, a final newline is not);
    `unique` as for parse_line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    mounts = []
    seen: set[int] = set()
    memo: dict = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            raise MountinfoError(lineno, "blank line")
        m = parse_line(line, lineno, unique, memo)
        if m.mnt_id in seen:
            raise MountinfoError(lineno, f"duplicate mount id {m.mnt_id}", line)
        seen.add(m.mnt_id)
        mounts.append(m)
    return mounts


def brief(text: str) -> list[tuple[int, int, str, str, str]]:
    """(mount id, parent id, MAJ:MIN, mount point, fstype) of each line: a quick look for checks
    that need no more (a few times faster than parse, and a fraction of its memory). A line that
    does not split cleanly is parsed in full, so it fails with parse's error."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        left, sep, right = line.partition(" - ")
        f = left.split(" ", 5)
        try:
            if not sep or len(f) < 6:
                raise ValueError
            out.append((int(f[0]), int(f[1]), f[2], unescape(f[4]), unescape(right.split(" ", 1)[0])))
        except ValueError:
            m = parse_line(line, lineno)
            out.append((m.mnt_id, m.parent_id, m.dev, m.mountpoint, m.fstype))
    return out


def optional_fields(m: Mount, group=str) -> list[str]:
    """The optional fields of `m` in the kernel's order; `group` names a peer group id."""
    out = []
    if m.shared is not None:
        out.append(f"shared:{group(m.shared)}")
    if m.master is not None:
        out.append(f"master:{group(m.master)}")
    if m.propagate_from is not None:
        out.append(f"propagate_from:{group(m.propagate_from)}")
    if m.unbindable:
        out.append("unbindable")
    out.extend(m.extra_optional)
    return out


def format_line(m: Mount) -> str:
    """The mountinfo line for `m`, exactly as the kernel prints it (without newline)."""
    optional = optional_fields(m)
    parts = [
        str(m.mnt_id),
        str(m.parent_id),
        f"{m.major}:{m.minor}",
        escape(m.root),
        escape(m.mountpoint),
        ",".join(m.mount_opts),
        *optional,
        "-",
        escape(m.fstype),
        escape(m.source),
        ",".join(m.super_opts),
    ]
    return " ".join(parts)


def format_all(mounts) -> str:
    """A whole mountinfo text for `mounts`."""
    return "".join(format_line(m) + "\n" for m in mounts)


def read_file(path: str) -> list[Mount]:
    """Parse a mountinfo file."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def read_pid(pid: int | str, proc: str = "/proc") -> list[Mount]:
    """Parse /proc/PID/mountinfo (`pid` may be ``self``)."""
    return read_file(f"{proc}/{pid}/mountinfo")


def read_source(spec: str) -> list[Mount]:
    """Read mounts from ``pid:N`` (or ``pid:self``) or from a mountinfo file path."""
    if spec.startswith("pid:"):
        pid = spec[4:]
        if pid != "self" and not pid.isdigit():
            raise ValueError(f"bad pid in {spec!r}: expected pid:N or pid:self")
        if pid != "self" and not os.path.exists(f"/proc/{pid}"):
            raise ValueError(f"no such process: {pid}")
        return read_pid(pid)
    return read_file(spec)


# --- statmount / listmount ---------------------------------------------------

# Per-mount flags in the order show_mnt_opts() prints them (fs/proc_namespace.c),
# as MOUNT_ATTR_* bits of statmount's mnt_attr.
_ATTR_NAMES = ((0x2, "nosuid"), (0x4, "nodev"), (0x8, "noexec"))
_ATTR_AFTER_ATIME = ((0x200000, "nosymfollow"), (0x100000, "idmapped"))
# Superblock flags statmount reports in sb_flags, in show_sb_opts() order.
_SB_NAMES = ((16, "sync"), (128, "dirsync"), (64, "mand"), (1 << 25, "lazytime"))
_MS_UNBINDABLE, _MS_SLAVE, _MS_SHARED = 1 << 17, 1 << 19, 1 << 20


def _mount_opts_from_attr(attr: int) -> tuple[str, ...]:
    opts = ["ro" if attr & 0x1 else "rw"]
    opts += [name for bit, name in _ATTR_NAMES if attr & bit]
    atime = attr & 0x70
    if atime == 0x10:
        opts.append("noatime")
    if attr & 0x80:
        opts.append("nodiratime")
    if atime == 0x00:  # MOUNT_ATTR_RELATIME is 0; strictatime (0x20) prints nothing
        opts.append("relatime")
    opts += [name for bit, name in _ATTR_AFTER_ATIME if attr & bit]
    return tuple(opts)


def mount_from_statmount(sm: dict) -> Mount:
    """A `Mount` from one decoded statmount record (engine.kernel.statmount).

    The text fields come unescaped from statmount, like `parse` leaves them;
    superblock options come escaped like mountinfo's, so both sources compare
    field by field.
    """
    fstype = sm["fs_type"] or ""
    if sm.get("fs_subtype"):
        fstype += "." + sm["fs_subtype"]
    super_opts = ["ro" if sm["sb_flags"] & 0x1 else "rw"]
    super_opts += [name for bit, name in _SB_NAMES if sm["sb_flags"] & bit]
    if sm.get("mnt_opts"):
        super_opts += sm["mnt_opts"].split(",")
    prop = sm["propagation"]
    slave = bool(prop & _MS_SLAVE)
    pfrom = sm["propagate_from"] if slave else 0
    return Mount(
        mnt_id=sm["mnt_id_old"],
        parent_id=sm["parent_id_old"],
        major=sm["sb_major"],
        minor=sm["sb_minor"],
        root=sm["mnt_root"] or "",
        mountpoint=sm["mnt_point"] or "",
        mount_opts=_mount_opts_from_attr(sm["mnt_attr"]),
        fstype=fstype,
        # mountinfo prints "none" for a mount without a device name.
        source=sm["sb_source"] if sm.get("sb_source") is not None else "none",
        super_opts=tuple(super_opts),
        shared=sm["peer_group"] if prop & _MS_SHARED else None,
        master=sm["master"] if slave else None,
        # mountinfo shows propagate_from only when it says more than master:.
        propagate_from=pfrom if pfrom and pfrom != sm["master"] else None,
        unbindable=bool(prop & _MS_UNBINDABLE),
        unique_id=sm["mnt_id"],
    )


def read_statmount(ns_id: int = 0) -> list[Mount]:
    """The mounts of a mount namespace through listmount(2)/statmount(2) (Linux >= 6.8).

    `ns_id` 0 means the caller's namespace. Mounts are in listmount order
    (ascending unique id, i.e. creation order); each has `unique_id` set.
    Raises OSError (ENOSYS on older kernels). A mount that disappears between
    listmount and statmount is skipped.
    """
    mounts = []
    for uid in kernel.listmount(ns_id=ns_id):
        try:
            sm = kernel.statmount(uid, ns_id=ns_id)
        except OSError as e:
            if e.errno == errno.ENOENT:
                continue
            raise
        mounts.append(mount_from_statmount(sm))
    return mounts
