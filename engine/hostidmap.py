"""Idmaps on the host's files: which idmapped mounts of an image need the restoring user's consent.

An idmapped mount shows its superblock's file owners through a map: with ``0 -> U`` a process of
uid U is the owner, through that mount, of the files uid 0 owns. On a superblock restore makes from
the image (a tmpfs from its archive, a loop image file it holds) the files are the image's own,
and it could as well have archived them with those owners. On a superblock the restoring user
gave (an ``--external mnt[KEY]:HOSTPATH`` bind, an ``--external dev[KEY]:PATH`` device, the
``--root`` directory, a FUSE daemon of ``--fuse-restart``), or one made from such (an overlay on
such layers), the image would decide who owns the host's files: restore refuses that unless the
user names the external with ``--allow-idmap``. A map of ids onto themselves moves no owner (ids it
leaves out lose access, nothing more) and needs no consent.

Superblocks of the whole host (devtmpfs, debugfs... FsType.host_global) are restored only under
``--devices all``, the user's trust in the image's host superblocks, which covers their idmaps.
"""

from __future__ import annotations

from engine import rx

from engine import fs
from engine.image import is_beneath

_SPEC = rx.compile(r"^(?:(?P<kind>mnt|dev|fuse)\[(?P<key>[^\]]+)\]|root)$")
SPELLINGS = "mnt[KEY], dev[KEY], fuse[KEY] or root"


def parse_allowances(specs) -> set[str]:
    """``--allow-idmap`` values (mnt[KEY], dev[KEY], fuse[KEY], root) -> their canonical spellings
    (``mnt[root]`` is ``root``: --root gives the external mount named root); ValueError for others."""
    out = set()
    for spec in specs:
        m = _SPEC.match(spec)
        if not m:
            raise ValueError(f"--allow-idmap {spec!r}: expected {SPELLINGS} (an external restore is given)")
        out.add("root" if m["kind"] is None or (m["kind"] == "mnt" and m["key"] == "root") else spec)
    return out


def identity(idmap: dict) -> bool:
    """Whether an idmap maps every id it maps onto itself (no owner moves through it)."""
    return all(inside == outside for key in ("uid_map", "gid_map") for inside, outside, _ in idmap[key])


def show(idmap: dict) -> str:
    """``uid 0->100000 x65536, gid 0->100000 x65536`` (a count of 1 left out)."""
    def ranges(key):
        return ", ".join(f"{i}->{o}" + (f" x{n}" if n != 1 else "") for i, o, n in idmap[key]) or "none"
    return f"uid {ranges('uid_map')}, gid {ranges('gid_map')}"


class _Origins:
    """The host sources (allowance spellings) of the image's superblocks and mounts."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.mounts = {m["id"]: m for ns in doc["mntns"].values() for m in ns["mounts"]}
        self.ext_by_sb: dict[str, list[dict]] = {}
        for m in self.mounts.values():
            if m.get("external"):
                self.ext_by_sb.setdefault(m["sb"], []).append(m)
        self.memo: dict[str, frozenset[str]] = {}
        # (overlay layers may lie on detached mounts too: their mount lazily unmounted since)
        self.all_mounts = {**self.mounts, **{d["id"]: d for d in (doc.get("detached") or {}).values()}}

    def of_mount(self, m: dict) -> frozenset[str]:
        """What mount m's files come from: its external (the one restore clones it from: itself, or
        the one whose root covers its root most closely), else its superblock's sources."""
        sb = self.doc["superblocks"][m["sb"]]
        if sb.get("external"):
            best = m if m.get("external") else None
            for e in self.ext_by_sb.get(m["sb"], ()) if best is None else ():
                if is_beneath(m["root"], e["root"]) and (best is None or len(e["root"]) > len(best["root"])):
                    best = e
            if best is not None:
                return frozenset({_mnt(best["external"])})
        return self.of_sb(m["sb"])

    def of_sb(self, sid: str, seen: frozenset = frozenset()) -> frozenset[str]:
        """What superblock sid's files come from: its externals, its device the user gave, the
        daemon the user gave, and the same of the superblocks it is made from (layers, a loop file)."""
        if sid in self.memo:
            return self.memo[sid]
        sb = self.doc["superblocks"].get(sid)
        if sb is None or sid in seen:
            return frozenset()   # (the validator refuses a missing one; a cycle adds nothing)
        out = set()
        if sb.get("external"):
            out.update(_mnt(e["external"]) for e in self.ext_by_sb.get(sid, ()))
        key = (sb.get("device") or {}).get("key")
        if key and not sb.get("external"):
            out.add(f"dev[{key}]")
        handler = fs.lookup(sb["fstype"])
        if handler is not None:
            if handler.daemon:
                out.add(f"fuse[{sb['fstype'].partition('.')[2] or 'fuse'}]")   # (its --fuse-restart key)
            for other in handler.made_from(sb, self.all_mounts):
                out.update(self.of_sb(other, seen | {sid}))
        self.memo[sid] = frozenset(out)
        return self.memo[sid]


def _mnt(key: str) -> str:
    return "root" if key == "root" else f"mnt[{key}]"


def _given(spelling: str, ext: dict) -> str:
    """How the refusal names a host source: the option that gave it and its path."""
    m = _SPEC.match(spelling)
    if m["kind"] is None:
        return f"--root ({ext.get('root', '?')})"
    if m["kind"] == "fuse":
        return f"the daemon of --fuse-restart {m['key']}"
    key = m["key"] if m["kind"] == "mnt" else f"dev:{m['key']}"
    return f"--external {spelling} ({ext.get(key, '?')})"


def needs(doc: dict) -> dict[int, tuple[dict, list[str]]]:
    """mount id -> (mount, the allowances its idmap needs), for each idmapped mount that moves an
    owner of the host's files."""
    origins = _Origins(doc)
    out = {}
    for m in origins.mounts.values():
        if "idmap" in m and not identity(m["idmap"]):
            got = sorted(origins.of_mount(m))
            if got:
                out[m["id"]] = (m, got)
    return out


def needed(doc: dict) -> list[str]:
    """Every --allow-idmap value the image's idmaps need (a runner restoring its own dump passes them)."""
    return sorted({s for _, got in needs(doc).values() for s in got})


def refusal(doc: dict, allowed: set[str], ext: dict) -> str | None:
    """One line refusing the first idmapped mount that would move owners of the host's files
    without the user's allowance (`allowed`: parse_allowances; `ext`: restore's external key ->
    host path), or None."""
    found = needs(doc)
    for mid in sorted(found):
        m, got = found[mid]
        missing = [s for s in got if s not in allowed]
        if missing:
            sources = ", ".join(_given(s, ext) for s in got)
            return (f"mount {m['id']} ({m['mountpoint']}): its idmap ({show(m['idmap'])}) would make the host's "
                    f"files of {sources} owned by other ids through it (whoever holds those ids acts as their "
                    "owner): if you trust this image with them, give "
                    + " ".join(f"--allow-idmap {s}" for s in missing))
    return None
