"""Filesystem types: what dump keeps of a superblock and how restore creates it again.

One module per type registers a `FsType`. Dump asks `lookup(fstype)`; an
unknown type is refused with "not supported" rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.mountinfo import unescape

# Superblock flags mountinfo shows among the super options; fsconfig takes them as flags.
SB_FLAG_OPTS = frozenset({"ro", "sync", "dirsync", "lazytime", "mand"})


@dataclass(frozen=True)
class FsType:
    """How one filesystem type is dumped and recreated."""

    name: str
    # Dump the superblock's files into an archive (tmpfs, ramfs).
    content: bool = False
    # Namespace the superblock is tagged with: created by a process inside it.
    ns: str | None = None  # "pid" | "ipc" | "net" | "cgroup"
    # Super options that cannot be passed back to fsconfig (shown but not settable).
    drop_opts: frozenset[str] = field(default_factory=frozenset)
    # Pass no super options at all (e.g. cgroup2: they belong to the one hierarchy).
    no_opts: bool = False
    # Keep the mountinfo source string when creating (fsconfig "source").
    keep_source: bool = True
    # Built on layers that are other mounts (overlay): recreated after them.
    layers: bool = False
    # Lives on a block device (recorded as external or as a loop device over a dumped file).
    block: bool = False
    # Mount roots a new instance has (None: any). A bind of another root (a pseudo-terminal of
    # a devpts instance, LXC's /dev/console) cannot be recreated: it must be declared external.
    fresh_roots: frozenset[str] | None = None

    def fsconfig_params(self, super_opts: tuple[str, ...] | list[str]) -> list[tuple[str, str | None]]:
        """(key, value) pairs for fsconfig; value None means a flag."""
        if self.no_opts:
            return []
        params: list[tuple[str, str | None]] = []
        for opt in super_opts:
            key, sep, value = opt.partition("=")
            if key == "rw" or key in self.drop_opts or key in _ALWAYS_DROP:
                continue
            if sep:
                params.append((key, unescape(value)))
            else:
                params.append((key, None))
        return params


# Shown by the LSM layer, never accepted back.
_ALWAYS_DROP = frozenset({"seclabel"})

_REGISTRY: dict[str, FsType] = {}


def register(fs: FsType) -> FsType:
    """Add a filesystem type to the registry."""
    _REGISTRY[fs.name] = fs
    return fs


def lookup(fstype: str) -> FsType | None:
    """The FsType for a mountinfo fstype (``fuse.x`` looks up ``fuse``), or None if unsupported."""
    _load()
    return _REGISTRY.get(fstype) or _REGISTRY.get(fstype.split(".", 1)[0])


def supported() -> list[str]:
    """Names of all supported filesystem types."""
    _load()
    return sorted(_REGISTRY)


_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from engine.fs import block, overlay, pseudo, tmpfs  # noqa: F401  (modules register themselves)
