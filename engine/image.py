"""The image directory: one versioned JSON document plus one archive per dumped superblock.

Layout of DIR:
  mntcr.json     format, version, superblocks, mount namespaces, pid namespaces, processes
  sb-N.tar       files of superblock N (tmpfs, ramfs), GNU tar with xattrs/ACLs/sparse

Images are never trusted: `load` reads the manifest without following links
or blocking, bounded in size, and validates it against the one typed
definition of the format (engine/imageformat.py, described in IMAGE.md);
anything wrong raises ImageError with one line.
"""

from __future__ import annotations

import errno
import os
from engine import rx
import stat

from engine import jsonc
from engine.kernel import DELETED

# An archive member of the image (ImageWriter.new_archive names them).
# Inode attributes an archive's reference keeps beside it (tar keeps none): immutable, append-only,
# nodump (chattr i, a, d), as statx's STATX_ATTR_* and FS_IOC_SETFLAGS's FS_*_FL bits (the same).
INODE_FLAGS = 0x10 | 0x20 | 0x40

ARCHIVE_NAME = rx.compile(r"^files-[0-9]{1,9}\.tar\Z")

FORMAT = "mntcr-image"
VERSION = 1
MANIFEST = "mntcr.json"

# Absurd-size limits: far above any real container, low enough to refuse hostile input early.
# The manifest of 50,000 mounts is about 25 MiB; parsing costs a few times its size in memory.
MAX_MOUNTS = 500_000
MAX_PROCESSES = 100_000
MAX_FDS = 1_000_000
MAX_THREADS = 1 << 16   # of one process, its leader aside (engine/threads.py refuses more at dump)
MAX_MANIFEST_BYTES = 128 << 20
MAX_PATH = 4096

NS_KINDS = ("mnt", "pid", "uts", "ipc", "net", "cgroup")
# A process's resource limits (RLIMIT_NAME), as an image names them.
RLIMITS = frozenset({"AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "MEMLOCK", "MSGQUEUE", "NICE", "NOFILE", "NPROC",
                     "RSS", "RTPRIO", "RTTIME", "SIGPENDING", "STACK"})
# /proc/sys/user/max_NAME: the limits each user namespace has of its own (an image's user namespace
# records those that differ from a new one's)
USERNS_LIMITS = ("cgroup_namespaces", "fanotify_groups", "fanotify_marks", "inotify_instances", "inotify_watches",
                 "ipc_namespaces", "mnt_namespaces", "net_namespaces", "pid_namespaces", "time_namespaces",
                 "user_namespaces", "uts_namespaces")


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

def empty_roots(sb: dict) -> list[dict]:
    """The empty root records of superblock record `sb`: its `empty_roots`, or an older image's one
    `empty_root`."""
    old = sb.get("empty_root")
    return (sb.get("empty_roots") or []) + ([old] if old is not None else [])


def _dumps(obj) -> str:
    # Compact: with indent json falls back to its slow pure-Python encoder.
    return jsonc.dumps(obj)   # (json.dumps(obj, sort_keys=True, separators=(",", ":")))


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


def _bounded(write, doc: dict):
    """`write`, refusing (ImageError, `too_large`) a manifest larger than restore reads (MAX_MANIFEST_BYTES)."""
    n = [0]

    def out(text: str) -> None:
        n[0] += len(text)   # (bytes: the encoder escapes every character that is not ASCII)
        if n[0] > MAX_MANIFEST_BYTES:
            raise ImageError(too_large(doc))
        write(text)
    return out


def _args_bytes(doc: dict) -> int:
    """The bytes of the processes' command lines and environments in `doc` (base64)."""
    return sum(len(p.get(k) or "") for p in doc.get("processes") or () for k in ("cmdline", "environ"))


def too_large(doc: dict) -> str:
    """The line refusing `doc`, whose manifest is larger than restore reads: restore refused such an
    image ("absurdly large"), and the processes' command lines and environments (up to 6 MiB each,
    base64) make one of a few dozen processes."""
    return (f"the image's manifest would be larger than restore reads ({MAX_MANIFEST_BYTES} bytes), "
            f"{_args_bytes(doc)} bytes of it the processes' command lines and environments (base64): dump fewer "
            "processes or give them smaller environments")


def refuse_large_args(doc: dict) -> None:
    """ImageError (`too_large`) when the processes' command lines and environments alone pass the
    manifest's limit: asked before dump takes anything from the tree (engine/dump.py)."""
    if _args_bytes(doc) > MAX_MANIFEST_BYTES:
        raise ImageError(too_large(doc))


def _remove_stale(parent: str, prefix: str) -> None:
    """Remove the temporary directories (PREFIX + PID-...) of dumps into the same place that died
    before their commit: their pid is gone. A live dump's directory, and anything that is not a
    plain directory (a symlink), is left alone."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(parent, name)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        import shutil  # only to clean up
        shutil.rmtree(path, ignore_errors=True)


def _mkdtemp(parent: str, prefix: str) -> str:
    """A new directory PARENT/PREFIX + random letters, mode 0700 (tempfile.mkdtemp's contract,
    without importing tempfile: it loads random, hashlib and shutil, ~16 M instructions a dump)."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return os.path.abspath(path)
    raise FileExistsError(errno.EEXIST, f"no unused temporary directory name in {parent}")


class ImageWriter:
    """Builds an image in a temporary directory next to DIR, then renames it into place.

    A dump that dies before `commit` leaves only a `.DIR.tmp-PID-*` directory without
    a manifest, which `load` refuses; the next dump into the same place removes it.
    """

    def __init__(self, target: str):
        self.target = os.path.abspath(target)
        parent = os.path.dirname(self.target)
        if not os.path.isdir(parent):
            raise ImageError(f"cannot create image {target}: {parent} is not a directory")
        if os.path.exists(self.target) and (not os.path.isdir(self.target) or os.listdir(self.target)):
            raise ImageError(f"image directory {target} exists and is not empty")
        prefix = f".{os.path.basename(self.target)}.tmp-"
        _remove_stale(parent, prefix)
        self.tmp = _mkdtemp(parent, f"{prefix}{os.getpid()}-")

    def path(self, name: str) -> str:
        """Path of a member file inside the temporary image."""
        return os.path.join(self.tmp, name)

    def new_archive(self) -> tuple[str, str]:
        """(name, path) for the next archive, files-N.tar."""
        self._archives = getattr(self, "_archives", 0) + 1
        name = f"files-{self._archives - 1}.tar"
        return name, self.path(name)

    def _sync_archives(self) -> None:
        """fsync every archive made (commit, before the manifest): one place for all of them, the
        content archives (whose writeback content.archive started), ghosts' and detached mounts'."""
        for n in range(getattr(self, "_archives", 0)):
            try:
                fd = os.open(self.path(f"files-{n}.tar"), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue   # (a name taken and not written: nothing the manifest names)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def commit(self, doc: dict) -> None:
        """Write the manifest and move the image into place.

        The manifest is written as mntcr.json.part, the directory renamed to
        its final name, and only then the manifest renamed to mntcr.json: at
        no moment does a directory hold a manifest before every archive is in
        place, so a dump killed anywhere leaves nothing restore accepts.
        """
        doc = dict(doc, format=FORMAT, version=VERSION)
        # Dump never writes an image restore would refuse: the same validator, before anything is
        # renamed into place (the dump then fails and resumes the tree).
        from engine import imageformat
        try:
            imageformat.validate(doc)
        except ImageError as e:
            raise ImageError(f"dump produced an image restore would refuse ({e}): a bug, please report it") from None
        self._sync_archives()
        part = MANIFEST + ".part"
        with open(self.path(part), "w") as f:
            write_json(_bounded(f.write, doc), doc)
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
            import shutil  # only to clean up
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


# --- reading -------------------------------------------------------------------

def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def load(images_dir: str) -> dict:
    """Read and validate an image directory; raise ImageError with one line if it is bad.

    The manifest is opened without following a symlink and without blocking (a
    FIFO there must not hang restore), its type and size checked before a byte
    is read.
    """
    if not os.path.isdir(images_dir):
        raise ImageError(f"no image directory {images_dir}")
    dfd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            # Never through a symlink: the manifest must be this directory's own file.
            fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            raise ImageError(f"{images_dir} is not a mntcr image (no {MANIFEST}; an interrupted dump?)") from None
        except OSError as e:
            raise ImageError(f"bad image: {MANIFEST} cannot be opened ({e.strerror}; a symlink?)") from None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):   # (before fdopen, which refuses a directory with a bare errno)
        os.close(fd)
        _fail(f"{MANIFEST} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_MANIFEST_BYTES:
            _fail(f"{MANIFEST} is absurdly large ({st.st_size} bytes, at most {MAX_MANIFEST_BYTES})")
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        _fail(f"{MANIFEST} is absurdly large (more than {MAX_MANIFEST_BYTES} bytes)")
    try:
        # The bytes go before parsing: of 90,000 mounts the text alone is ~45 MiB.
        text = data.decode("utf-8")
        del data
        doc = jsonc.loads(text, parse_constant=_no_constant, object_hook=_Sharing().hook)
    except RecursionError:
        _fail(f"{MANIFEST} is nested too deeply")
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, a NaN, an integer of 5,000 digits
        _fail(f"{MANIFEST} is not valid JSON ({' '.join(str(e).split())[:120]})")
    del text
    validate(doc, images_dir, check_archives=True)
    return doc


class _Sharing:
    """json object_hook: equal values of the fields most mounts and superblocks repeat (devices,
    types, roots, option lists...) become one object, so the parsed manifest of a big tree holds
    each once: 40% less memory for 10,000 mounts (1.8 -> 1.05 KiB a mount), for ~1% more
    restore CPU. Shared lists are never changed in place (restore only reads the image)."""

    def __init__(self):
        strings: dict[str, str] = {}
        lists: dict[tuple, list] = {}
        one, many = strings.setdefault, lists.setdefault
        str_, list_ = str, list

        # A closure over its tables (no attribute lookups), straight-line, and one test that lets
        # every object other than a mount, detached mount or superblock through at once.
        def hook(obj: dict) -> dict:
            if "super_opts" not in obj and "mount_opts" not in obj:
                return obj
            get = obj.get
            v = get("dev")
            if v.__class__ is str_:
                obj["dev"] = one(v, v)
            v = get("fstype")
            if v.__class__ is str_:
                obj["fstype"] = one(v, v)
            v = get("root")
            if v.__class__ is str_:
                obj["root"] = one(v, v)
            v = get("sb")
            if v.__class__ is str_:
                obj["sb"] = one(v, v)
            v = get("source")
            if v.__class__ is str_:
                obj["source"] = one(v, v)
            try:
                v = get("mount_opts")
                if v.__class__ is list_:
                    obj["mount_opts"] = many(tuple(v), v)
                v = get("super_opts")
                if v.__class__ is list_:
                    obj["super_opts"] = many(tuple(v), v)
            except TypeError:
                pass  # an item that is not hashable (a bad image): left alone for the validator
            return obj
        self.hook = hook


def validate(doc: dict, images_dir: str, check_archives: bool = True) -> None:
    """Check everything restore relies on (engine/imageformat.py), then, with `check_archives`, that
    each archive file is this directory's own regular file of the recorded size; raise ImageError."""
    from engine import imageformat
    imageformat.validate(doc)
    if not check_archives:
        return
    dfd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, meta in (doc.get("files") or {}).items():
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                _fail(f"archive {name} is missing")
            if not stat.S_ISREG(st.st_mode):
                _fail(f"archive {name} is not a regular file")
            if st.st_size != meta["size"]:
                _fail(f"archive {name} is damaged: {st.st_size} bytes, the manifest says {meta['size']}")
    finally:
        os.close(dfd)


# --- showing -------------------------------------------------------------------

# (str.translate's table: C0, DEL and C1 controls; lone surrogates, undecodable bytes of a name,
# which no terminal encoding takes. Made on first use: its 2,200 entries cost every dump and
# restore ~0.5 ms of start-up, and most print no image name.)
_UNPRINTABLE: dict[int, str] = {}


def printable(text: str) -> str:
    """`text` with every control character shown as \\xNN (a lone surrogate as \\uXXXX): an image's
    names (paths, sources) go to a terminal (`mntcr show -D`, an error line), where an escape
    sequence would act (retitle, write the clipboard, answer back) and a newline forge a line."""
    if not _UNPRINTABLE:
        _UNPRINTABLE.update({c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))})
        _UNPRINTABLE.update({c: f"\\u{c:04x}" for c in range(0xd800, 0xe000)})
    return text.translate(_UNPRINTABLE)


def _printable(value):
    """`value` (JSON) with each of its strings `printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def render(doc: dict) -> str:
    """Readable text of an image: each namespace's tree, superblocks, and processes with their fds
    and file locks, then zombies (control characters of its strings shown as \\xNN: _printable)."""
    from engine import topology
    doc = _printable(doc)
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
            deleted = DELETED if fd.get("ghost") else ""
            where = f"mount {fd['mnt']} {fd['path']}{deleted}" if "mnt" in fd else fd.get("obj", "")
            lines.append(f"    fd {fd['fd']}: {fd.get('kind', 'file')} {where} flags={fd['flags']:o} pos={fd['pos']}"
                         + (" (detached)" if fd.get("detached") else "")
                         + (f" shared as {fd['desc']}" if fd.get("desc") else ""))
        for m in p.get("maps", ()):
            lines.append(f"    maps: mount {m['mnt']} {m['path']}")
        for lk in p.get("locks", ()):
            span = "" if lk["type"] in ("flock", "lease") else \
                f" bytes {lk['start']}-{'EOF' if lk['end'] is None else lk['end']}"
            of = f" of process {lk['of']}" if "of" in lk else ""
            lines.append(f"    lock: {lk['type']} {lk['mode']}{span} on fd {lk['fd']}{of}")
    for z in doc.get("zombies") or ():
        st = z["status"]
        how = f"exit {st >> 8}" if not st & 0x7F else f"signal {st & 0x7F}" + (" (core)" if st & 0x80 else "")
        lines.append(f"  zombie {z['pid']} (ppid {z['ppid']}) {z['comm']}: {how}, session {z['sid']} group {z['pgid']}")
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
            # a mount made from a ghost shows its root as mountinfo did: unlinked
            major=major, minor=minor, root=m["root"] + ("//deleted" if m.get("ghost") else ""),
            mountpoint=m["mountpoint"],
            mount_opts=tuple(m["mount_opts"]), fstype=sb["fstype"], source=sb["source"],
            super_opts=tuple(sb["super_opts"]), shared=m.get("shared"), master=m.get("master"),
            propagate_from=m.get("propagate_from"), unbindable=bool(m.get("unbindable"))))
    return out
