"""The image directory: one versioned JSON document plus one archive per dumped superblock.

Layout of DIR:
  mntcr.json     format, version, superblocks, mount namespaces, pid namespaces, processes
  sb-N.tar       files of superblock N (tmpfs, ramfs), GNU tar with xattrs/ACLs/sparse

Images are never trusted: `load` validates everything restore relies on
(ids unique, parents exist, no cycles, normalised paths with no `..`, archive
names inside DIR, sane counts) and raises ImageError with one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile

FORMAT = "mntcr-image"
VERSION = 1
MANIFEST = "mntcr.json"

# Absurd-size limits: far above any real container, low enough to refuse hostile input early.
MAX_MOUNTS = 1_000_000
MAX_PROCESSES = 100_000
MAX_FDS = 1_000_000
MAX_MANIFEST_BYTES = 1 << 30
MAX_PATH = 4096

_ARCHIVE_NAME = re.compile(r"^files-[0-9]+\.tar$")
_MEMBER_NAME = re.compile(r"^sb-[0-9]+$")
NS_KINDS = ("mnt", "pid", "uts", "ipc", "net", "cgroup")


class ImageError(ValueError):
    """An image directory that restore must refuse."""


def _fail(msg: str):
    raise ImageError(f"bad image: {msg}")


def check_abs_path(p, what: str) -> str:
    """A normalised absolute path with no `..`, NUL or oversize; returns it."""
    if not isinstance(p, str) or not p.startswith("/"):
        _fail(f"{what}: not an absolute path: {p!r}")
    if "\0" in p or len(p) > MAX_PATH:
        _fail(f"{what}: bad path {p[:80]!r}")
    parts = p.split("/")
    if ".." in parts or "." in parts:
        _fail(f"{what}: path has '.' or '..': {p!r}")
    if p != "/" and "" in parts[1:]:  # "//" or a trailing "/" (cheaper than normpath, 10k times)
        _fail(f"{what}: path not normalised: {p!r}")
    return p


def is_beneath(path: str, base: str) -> bool:
    """True when normalised absolute `path` is `base` or inside it."""
    return base == "/" or path == base or path.startswith(base + "/")


def rel_to(path: str, base: str) -> str:
    """`path` relative to `base` ('' when equal); both normalised absolute."""
    if path == base:
        return ""
    if base == "/":
        return path[1:]
    return path[len(base) + 1:]


# --- writing -------------------------------------------------------------------

def _dumps(obj) -> str:
    # Compact: with indent json falls back to its slow pure-Python encoder.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def write_json(write, obj, depth: int = 4, chunk: int = 1000) -> None:
    """Write json.dumps(obj, sort_keys=True, compact) in pieces, never the whole text at once.

    The manifest of 50,000 mounts is tens of MiB as one string (more while the
    encoder joins it). Small dicts are walked key by key down to `depth`; big
    dicts and lists go out `chunk` items per json.dumps call.
    """
    if depth == 0 or not isinstance(obj, (dict, list)):
        write(_dumps(obj))
    elif isinstance(obj, list):
        write("[")
        for i in range(0, len(obj), chunk):
            write(("," if i else "") + _dumps(obj[i:i + chunk])[1:-1])
        write("]")
    elif len(obj) > 64:
        keys = sorted(obj)
        write("{")
        for i in range(0, len(keys), chunk):
            write(("," if i else "") + _dumps({k: obj[k] for k in keys[i:i + chunk]})[1:-1])
        write("}")
    else:
        write("{")
        for n, k in enumerate(sorted(obj)):
            write(("," if n else "") + _dumps(k) + ":")
            write_json(write, obj[k], depth - 1, chunk)
        write("}")


class ImageWriter:
    """Builds an image in a temporary directory next to DIR, then renames it into place.

    A dump that dies before `commit` leaves only a `.DIR.tmp-*` directory without
    a manifest, which `load` refuses.
    """

    def __init__(self, target: str):
        self.target = os.path.abspath(target)
        parent = os.path.dirname(self.target)
        if not os.path.isdir(parent):
            raise ImageError(f"cannot create image {target}: {parent} is not a directory")
        if os.path.exists(self.target) and (not os.path.isdir(self.target) or os.listdir(self.target)):
            raise ImageError(f"image directory {target} exists and is not empty")
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.tmp-", dir=parent)

    def path(self, name: str) -> str:
        """Path of a member file inside the temporary image."""
        return os.path.join(self.tmp, name)

    def new_archive(self) -> tuple[str, str]:
        """(name, path) for the next archive, files-N.tar."""
        self._archives = getattr(self, "_archives", 0) + 1
        name = f"files-{self._archives - 1}.tar"
        return name, self.path(name)

    def commit(self, doc: dict) -> None:
        """Write the manifest and move the image into place.

        The manifest is written as mntcr.json.part, the directory renamed to
        its final name, and only then the manifest renamed to mntcr.json: at
        no moment does a directory hold a manifest before every archive is in
        place, so a dump killed anywhere leaves nothing restore accepts.
        """
        doc = dict(doc, format=FORMAT, version=VERSION)  # restore validates it (load), dump built it
        part = MANIFEST + ".part"
        with open(self.path(part), "w") as f:
            write_json(f.write, doc)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(self.target):
            os.rmdir(self.target)  # empty, checked in __init__
        os.rename(self.tmp, self.target)
        self.tmp = None
        os.rename(os.path.join(self.target, part), os.path.join(self.target, MANIFEST))
        dfd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def abort(self) -> None:
        """Remove the temporary directory."""
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


# --- reading -------------------------------------------------------------------

def load(images_dir: str) -> dict:
    """Read and validate an image directory; raise ImageError with one line if it is bad."""
    if not os.path.isdir(images_dir):
        raise ImageError(f"no image directory {images_dir}")
    dfd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            # Never through a symlink: the manifest must be this directory's own file.
            fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            raise ImageError(f"{images_dir} is not a mntcr image (no {MANIFEST}; an interrupted dump?)") from None
        except OSError as e:
            raise ImageError(f"bad image: {MANIFEST} cannot be opened ({e.strerror}; a symlink?)") from None
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            _fail(f"{MANIFEST} is not a regular file")
        if st.st_size > MAX_MANIFEST_BYTES:
            _fail(f"{MANIFEST} is absurdly large ({st.st_size} bytes)")
        try:
            doc = json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            _fail(f"{MANIFEST} is not valid JSON ({e})")
    validate(doc, images_dir, check_archives=True)
    return doc


def _typed(d, key, typ, what):
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        _fail(f"{what}: {key!r} missing or not {typ.__name__ if isinstance(typ, type) else typ}")
    return v


def validate(doc: dict, images_dir: str, check_archives: bool = True) -> None:
    """Check everything restore relies on; raise ImageError on the first problem."""
    if not isinstance(doc, dict):
        _fail("manifest is not an object")
    if doc.get("format") != FORMAT:
        _fail(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
    version = doc.get("version")
    if version != VERSION:
        _fail(f"format version {version!r} is not supported by this mntcr (it reads version {VERSION})")
    sbs = _typed(doc, "superblocks", dict, "image")
    mntns = _typed(doc, "mntns", dict, "image")
    pidns = _typed(doc, "pidns", dict, "image")
    procs = _typed(doc, "processes", list, "image")
    if len(procs) > MAX_PROCESSES:
        _fail(f"{len(procs)} processes is absurd")
    if not procs:
        _fail("no processes")

    files = doc.get("files") or {}
    if not isinstance(files, dict):
        _fail("'files' must be an object")
    members: set[tuple[str, str]] = set()
    for name, meta in files.items():
        if not _ARCHIVE_NAME.match(name):
            _fail(f"archive name {name!r} is not files-N.tar")
        size = _typed(meta, "size", int, f"archive {name}")
        if not isinstance(meta.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]):
            _fail(f"archive {name}: sha256 missing or malformed")
        if check_archives:
            try:
                st = os.stat(os.path.join(images_dir, name), follow_symlinks=False)
            except FileNotFoundError:
                _fail(f"archive {name} is missing")
            if not stat.S_ISREG(st.st_mode):
                _fail(f"archive {name} is not a regular file")
            if st.st_size != size:
                _fail(f"archive {name} is damaged: {st.st_size} bytes, the manifest says {size}")
    for sid, sb in sbs.items():
        what = f"superblock {sid}"
        _typed(sb, "fstype", str, what)
        _typed(sb, "source", str, what)
        opts = _typed(sb, "super_opts", list, what)
        if not all(isinstance(o, str) for o in opts):
            _fail(f"{what}: super_opts must be strings")
        for a in sb.get("archives") or []:
            name = _typed(a, "file", str, what)
            if name not in files:
                _fail(f"{what}: archive {name!r} is not listed in 'files'")
            member = _typed(a, "member", str, what)
            if not _MEMBER_NAME.match(member) or (name, member) in members:
                _fail(f"{what}: bad or duplicate archive member {member!r}")
            members.add((name, member))
            check_abs_path(_typed(a, "root", str, what), f"{what} archive root")
        er = sb.get("empty_root")
        if er is not None:
            for k in ("mode", "uid", "gid"):
                _typed(er, k, int, f"{what} empty_root")
            check_abs_path(_typed(er, "root", str, f"{what} empty_root"), f"{what} empty_root")
        if not isinstance(sb.get("external", False), bool):
            _fail(f"{what}: 'external' must be true or false")
        if sb.get("pidns") is not None and sb["pidns"] not in pidns:
            _fail(f"{what}: unknown pid namespace {sb['pidns']!r}")

    for pid_id, p in pidns.items():
        parent = p.get("parent") if isinstance(p, dict) else None
        if parent is not None and parent not in pidns:
            _fail(f"pid namespace {pid_id}: unknown parent {parent!r}")
    # pid namespace parent chains must end (no cycles)
    for pid_id in pidns:
        seen, cur = set(), pid_id
        while cur is not None:
            if cur in seen:
                _fail(f"pid namespace {pid_id}: parent cycle")
            seen.add(cur)
            cur = pidns[cur].get("parent")

    total = 0
    all_ids: set[int] = set()
    for ns_id, ns in mntns.items():
        what = f"mount namespace {ns_id}"
        mounts = _typed(ns, "mounts", list, what)
        total += len(mounts)
        if total > MAX_MOUNTS:
            _fail(f"more than {MAX_MOUNTS} mounts is absurd")
        by_id: dict[int, dict] = {}
        for m in mounts:
            mid = _typed(m, "id", int, what)
            mwhat = f"mount {mid}"
            if mid in all_ids:
                _fail(f"{what}: duplicate mount id {mid}")
            all_ids.add(mid)
            by_id[mid] = m
            check_abs_path(_typed(m, "mountpoint", str, mwhat), f"{mwhat} mountpoint")
            _typed(m, "root", str, mwhat)
            if m["root"].startswith("/"):
                check_abs_path(m["root"], f"{mwhat} root")
            if _typed(m, "sb", str, mwhat) not in sbs:
                _fail(f"{mwhat}: unknown superblock {m['sb']!r}")
            _typed(m, "mount_opts", list, mwhat)
            ext = m.get("external")
            if ext is not None and (not isinstance(ext, str) or not ext):
                _fail(f"{mwhat}: external key must be a non-empty string")
            if ext is not None and not sbs[m["sb"]].get("external"):
                _fail(f"{mwhat}: external key {ext!r} on a superblock that is not external")
            for k in ("shared", "master", "propagate_from"):
                if m.get(k) is not None and (not isinstance(m[k], int) or isinstance(m[k], bool) or m[k] <= 0):
                    _fail(f"{mwhat}: {k} must be a positive integer")
            if "dir" in m and not isinstance(m["dir"], bool):
                _fail(f"{mwhat}: 'dir' must be true or false")
        root = _typed(ns, "root", int, what)
        if root not in by_id:
            _fail(f"{what}: root mount {root} is not among its mounts")
        if by_id[root].get("parent") is not None:
            _fail(f"{what}: root mount {root} has a parent")
        if by_id[root]["mountpoint"] != "/":
            _fail(f"{what}: root mount {root} is not mounted at /")
        for m in mounts:
            if m["id"] == root:
                continue
            parent = m.get("parent")
            if parent not in by_id:
                _fail(f"mount {m['id']}: parent {parent!r} is not in {ns_id}")
            if not is_beneath(m["mountpoint"], by_id[parent]["mountpoint"]):
                _fail(f"mount {m['id']}: mountpoint {m['mountpoint']} is outside its parent's "
                      f"{by_id[parent]['mountpoint']}")
        # every mount must reach the root (no cycles, no second root)
        state: dict[int, int] = {root: 2}
        for m in mounts:
            chain, cur = [], m["id"]
            while state.get(cur) != 2:
                if state.get(cur) == 1:
                    _fail(f"mount {m['id']}: parent cycle")
                state[cur] = 1
                chain.append(cur)
                cur = by_id[cur].get("parent")
                if cur is None:
                    _fail(f"mount {m['id']}: does not reach the namespace root")
            for c in chain:
                state[c] = 2

    detached = doc.get("detached") or {}
    if not isinstance(detached, dict):
        _fail("'detached' must be an object")
    for key, d in detached.items():
        what = f"detached mount {key}"
        did = _typed(d, "id", int, what)
        if str(did) != key or did in all_ids:
            _fail(f"{what}: bad or duplicate id")
        if _typed(d, "sb", str, what) not in sbs:
            _fail(f"{what}: unknown superblock {d['sb']!r}")
        check_abs_path(_typed(d, "root", str, what), f"{what} root")
        _typed(d, "mount_opts", list, what)
    detached_ids = {d["id"] for d in detached.values()}

    nfds = 0
    pids = set()
    for p in procs:
        pid = _typed(p, "pid", int, "process")
        what = f"process {pid}"
        if pid in pids:
            _fail(f"duplicate process {pid}")
        pids.add(pid)
        ns = _typed(p, "ns", dict, what)
        if ns.get("mnt") not in mntns:
            _fail(f"{what}: unknown mount namespace {ns.get('mnt')!r}")
        if ns.get("pid") is not None and ns["pid"] not in pidns:
            _fail(f"{what}: unknown pid namespace {ns.get('pid')!r}")
        for key in ("root", "cwd"):
            loc = _typed(p, key, dict, what)
            _check_loc(loc, all_ids, detached_ids, f"{what} {key}")
        fds = _typed(p, "fds", list, what)
        nfds += len(fds)
        if nfds > MAX_FDS:
            _fail("absurd number of fds")
        seen_fd = set()
        for fd in fds:
            n = _typed(fd, "fd", int, what)
            if n < 0 or n > (1 << 20) or n in seen_fd:
                _fail(f"{what}: bad or duplicate fd number {n}")
            seen_fd.add(n)
            _typed(fd, "flags", int, f"{what} fd {n}")
            _typed(fd, "pos", int, f"{what} fd {n}")
            if fd.get("external") is not None:
                # A file outside the image (--external file[...]): restore opens the host path given for KEY.
                key = _typed(fd, "external", str, f"{what} fd {n}")
                if not key or len(key) > 256 or any(c in key for c in "[]\0\n"):
                    _fail(f"{what} fd {n}: bad external key {key!r}")
                continue
            _check_loc(fd, all_ids, detached_ids, f"{what} fd {n}")
    for p in procs:
        if p.get("ppid") is not None and p["ppid"] not in pids:
            _fail(f"process {p['pid']}: parent {p['ppid']} is not in the image")


def _check_loc(loc: dict, mount_ids: set[int], detached_ids: set[int], what: str) -> None:
    mnt = _typed(loc, "mnt", int, what)
    if mnt not in (detached_ids if loc.get("detached") else mount_ids):
        _fail(f"{what}: unknown {'detached ' if loc.get('detached') else ''}mount {mnt}")
    check_abs_path(_typed(loc, "path", str, what), f"{what} path")


# --- showing -------------------------------------------------------------------

def render(doc: dict) -> str:
    """Readable text of an image: each namespace's tree, superblocks, and processes with their fds."""
    from engine import topology
    lines = [f"mntcr image v{doc['version']}, dumped on kernel {doc.get('kernel', '?')}"]
    for ns_id, ns in sorted(doc["mntns"].items()):
        lines.append(f"\nmount namespace {ns_id} ({len(ns['mounts'])} mounts):")
        lines.append(topology.render_tree(to_mounts(doc, ns_id)).rstrip("\n"))
    lines.append("\nsuperblocks:")
    for sid, sb in sorted(doc["superblocks"].items(), key=lambda kv: int(kv[0].split("-")[-1])
                          if kv[0].split("-")[-1].isdigit() else 0):
        how = "external (bound from the host at restore)" if sb.get("external") else \
              ("files " + ", ".join(f"{a['file']}:{a['member']}" for a in sb.get("archives") or [])) if sb.get("archives") else \
              ("pid namespace " + sb["pidns"]) if sb.get("pidns") else "created empty"
        lines.append(f"  {sid}: {sb['fstype']} {sb['source']} [{','.join(sb['super_opts'])}] {how}")
    lines.append("\nprocesses:")
    for p in doc["processes"]:
        ns = " ".join(f"{k}={v}" for k, v in sorted(p["ns"].items()) if v is not None)
        lines.append(f"  pid {p['pid']} (ppid {p.get('ppid')}) {ns}")
        lines.append(f"    root: mount {p['root']['mnt']} {p['root']['path']}")
        lines.append(f"    cwd:  mount {p['cwd']['mnt']} {p['cwd']['path']}")
        for fd in p["fds"]:
            if fd.get("external"):
                lines.append(f"    fd {fd['fd']}: external file {fd['external']} flags={fd['flags']:o} pos={fd['pos']}")
                continue
            lines.append(f"    fd {fd['fd']}: mount {fd['mnt']} {fd['path']} flags={fd['flags']:o} pos={fd['pos']}"
                         + (" (detached)" if fd.get("detached") else ""))
    return "\n".join(lines) + "\n"


def to_mounts(doc: dict, ns_id: str):
    """The mounts of one namespace as engine.mountinfo.Mount records (for topology)."""
    from engine.mountinfo import Mount
    sbs = doc["superblocks"]
    out = []
    for m in doc["mntns"][ns_id]["mounts"]:
        sb = sbs[m["sb"]]
        dev = m.get("dev") or sb.get("dev") or "0:0"
        major, minor = (int(x) for x in dev.split(":"))
        out.append(Mount(
            mnt_id=m["id"], parent_id=m["parent"] if m.get("parent") is not None else 0,
            major=major, minor=minor, root=m["root"], mountpoint=m["mountpoint"],
            mount_opts=tuple(m["mount_opts"]), fstype=sb["fstype"], source=sb["source"],
            super_opts=tuple(sb["super_opts"]), shared=m.get("shared"), master=m.get("master"),
            propagate_from=m.get("propagate_from"), unbindable=bool(m.get("unbindable"))))
    return out
