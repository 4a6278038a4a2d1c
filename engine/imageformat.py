"""The image format: one typed definition of the manifest (mntcr.json) and the one validator.

An image is input from outside (it travels between machines, CI artifacts,
bug reports) and restore runs as root, so nothing of it is read before it has
passed `validate`: every record's fields (name, JSON type, range, format),
then the rules between records (ids that must exist and be unique, parent
chains without cycles, which superblock may carry what). A manifest that
fails is refused with one line naming the element and the rule it broke.
Restore, sharing and `mntcr show` read the plain dicts afterwards, the way
dump wrote them; IMAGE.md describes the format for people.

The definition is declarative: each record kind is a `Record`, a table of
`F` fields. `F(types, required, rule)`: `types` are the exact JSON types
allowed (`INT`, `STR`, `BOOL`, ... ; `None` in the tuple makes null allowed),
`rule` a function value -> error text or None (range, pattern, a nested
record or list). Unknown keys are refused: a field restore reads must be
declared here.

How to add a field (e.g. a new kind of fd):
  1. add `"name": F(types, required=False, rule=...)` to its Record below
     (new fields are optional, so older images still load; bump
     image.VERSION only when an existing field changes meaning);
  2. if it names another element (a mount id, a superblock, a namespace),
     check the reference in the matching `_check_*` function below (a field
     of an fd kind: list it in the kind's `refs`, which `_Refs` checks), and
     any path with `path_rule` (normalised absolute, no `..`);
  3. add a hostile value for it to tests/test_hardening_hostile.py and a line
     to IMAGE.md.
A new record kind is a new Record plus `rule=record(NEW)` (or
`list_of(record(NEW), MAX)`) where it appears.

Each table is compiled once into a straight-line check (`_compile`): rules
made by `rng`, `pattern` and `path_rule` are inlined, those of `strlen` and
`list_of` run once per distinct value (equal option lists of thousands of
mounts are checked once), any other function is called as is. So a rule must
be pure: the same value always gets the same answer.
"""

from __future__ import annotations

import bisect
import os
from engine import rx
from collections.abc import Callable
from itertools import chain, compress, repeat
from operator import contains, itemgetter
from engine import ctty, itimers, posixtimers, procargs, records, sessions, zombies

from engine.image import (INODE_FLAGS, ARCHIVE_NAME, FORMAT, MAX_FDS, MAX_MOUNTS, MAX_PATH, MAX_PROCESSES, MAX_THREADS,
                          NS_KINDS, RLIMITS, USERNS_LIMITS, VERSION, ImageError, check_abs_path, empty_roots)

# --- bounds (far above any real container, low enough to refuse hostile input early) ---------

MAX_ID = (1 << 63) - 1          # mount ids, unique ids, peer group ids
MAX_PID = 1 << 22               # PID_MAX_LIMIT
MAX_FD = (1 << 20) - 1          # fs.nr_open's default ceiling: the highest fd number a process may have
MAX_OPTS = 256                  # options of one mount or superblock
MAX_OPT = 4096                  # one option string
MAX_ARCHIVES = 1 << 16          # archive files of one image
MAX_LAYERS = 512                # overlayfs takes at most 500 lower layers
MAX_LOOPS = 256                 # loop devices one image attaches (each a device of the whole host)
MAX_HOSTNAME = 64               # HOST_NAME_MAX
MAX_UID = (1 << 32) - 2         # (uid_t)-1 means "no change"
MAX_OFF = (1 << 63) - 1         # file offsets and sizes (loff_t)

# Per-mount options mountinfo shows (show_mnt_opts + rw/ro); restore knows each of them.
MOUNT_OPTS = frozenset({"rw", "ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime",
                        "strictatime", "nosymfollow", "idmapped"})
# open(2) flags an fd may carry (fdinfo shows these; O_LARGEFILE always on 64-bit).
_O_LARGEFILE = 0o100000
O_TMPFILE_BIT = 0o20000000   # __O_TMPFILE: f_flags keeps it (with O_DIRECTORY) on a file made by O_TMPFILE
O_ASYNC = getattr(os, "O_ASYNC", 0o20000)
OPEN_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND | os.O_NONBLOCK
              | os.O_DSYNC | os.O_SYNC | O_ASYNC | os.O_DIRECT | _O_LARGEFILE
              | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC | os.O_PATH | O_TMPFILE_BIT)
# Super options that name a device or file of the machine (an external journal, a log or
# realtime device, a btrfs member device): the image may never make restore open one.
HOST_OPTS = frozenset({"journal_dev", "journal_path", "logdev", "rtdev", "device"})

_NS_ID = rx.compile(r"^(mnt|pid|uts|ipc|net|cgroup)-[0-9]{1,9}\Z")
_SB_ID = rx.compile(r"^sb-[0-9]{1,9}\Z")
_DEVNUM = rx.compile(r"^[0-9]{1,10}:[0-9]{1,10}\Z")
_FSTYPE = rx.compile(r"^[a-z0-9_][a-z0-9_.+-]{0,63}\Z")
_KEY = rx.compile(r"^[^\s\[\]\x00]{1,256}\Z")  # what --external accepts: no space, no brackets
_MEMBER = rx.compile(r"^sb-[0-9]{1,9}\Z")
_SHA256 = rx.compile(r"^[0-9a-f]{64}\Z")
_GHOST_ID = GHOST_ID = rx.compile(r"^g-[0-9]{1,9}\Z")
_USERNS_ID = rx.compile(r"^user-[0-9]{1,9}\Z")
# Namespaces a mount may bind (nsfs: `ip netns add`, `unshare --mount=PATH`).
_BOUND_NS_ID = rx.compile(r"^(mnt|pid|uts|ipc|net|cgroup|user|time)-[0-9]{1,9}\Z")
_LONE_NS_ID = rx.compile(r"^net-[0-9]{1,9}\Z")
MAX_USERNS = 1024               # user namespaces of one image
MAX_MAP = 340                   # the kernel's limit of lines in one uid_map / gid_map
MAX_NGROUPS = 65536             # NGROUPS_MAX
LOCK_FLAGS = frozenset({"ro", "nosuid", "nodev", "noexec", "atime"})

NONE = type(None)
INT, STR, BOOL, LIST, DICT = (int,), (str,), (bool,), (list,), (dict,)
OPT_INT, OPT_STR, OPT_BOOL, OPT_DICT, OPT_LIST = (int, NONE), (str, NONE), (bool, NONE), (dict, NONE), (list, NONE)
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "an object",
               NONE: "null"}

Rule = Callable[[object], "str | None"]


class Bad(Exception):
    """A rule's failure deep inside a value: carries the path from the field to the culprit."""

    def __init__(self, where: str, why: str):
        super().__init__(where, why)
        self.where, self.why = where, why


# F and Record are the tables' own entries, made once at import (236 and 31): each by its own
# __init__ (records' generic one is ~100 interpreter steps an instance, ~2 ms of every dump and
# restore; compiling one cost ~6 M instructions). tests/test_records.py holds them to their fields.
_set = object.__setattr__


@records.record(frozen=True, init=False)
class F:
    """One field of a record: allowed JSON types (exact: a bool is no integer), required or not, rule."""

    types: tuple
    required: bool = True
    rule: Rule | None = None

    def __init__(self, types: tuple, required: bool = True, rule: Rule | None = None):
        _set(self, "types", types)
        _set(self, "required", required)
        _set(self, "rule", rule)


@records.record(frozen=True, init=False)
class Record:
    """A kind of record: its name (for messages) and fields."""

    name: str
    fields: dict

    def __init__(self, name: str, fields: dict):
        _set(self, "name", name)
        _set(self, "fields", fields)

    @property
    def required(self) -> frozenset:
        """The names of the fields an entry must have (found once: asked for every entry checked,
        and no table changes once made)."""
        got = self.__dict__.get("_required")
        if got is None:
            got = frozenset(k for k, f in self.fields.items() if f.required)
            _set(self, "_required", got)
        return got


def _fail(msg: str):
    raise ImageError(f"bad image: {msg}")


# --- rules ------------------------------------------------------------------------------------

def rng(lo: int, hi: int) -> Rule:
    """An integer in lo..hi (null passes: the field's types say whether it is allowed)."""
    def rule(v):
        if v is not None and not lo <= v <= hi:
            return f"out of range ({v} not in {lo}..{hi})"
        return None
    rule.inline = ("range", lo, hi)
    return rule


def pattern(pat, text: str, cached: bool = False) -> Rule:
    """A string matching the compiled pattern `pat` (described as `text` in errors); `cached` when
    few values repeat often."""
    def rule(v):
        if v is not None and not pat.match(v):
            return f"must be {text} (got {v[:80]!r})"
        return None
    rule.inline = ("cached",) if cached else ("pattern", pat)
    return rule


def strlen(hi: int) -> Rule:
    """A string of at most hi characters, no NUL."""
    def rule(v):
        if v is not None and (len(v) > hi or "\0" in v):
            return f"must be a string of at most {hi} characters without NUL"
        return None
    # Inlined, not cached: sources are mostly each superblock's own (a cache would miss).
    rule.inline = ("strlen", hi)
    return rule


def comm_rule(v) -> str | None:
    """A process name as prctl(PR_SET_NAME) takes it: at most 15 bytes (UTF-8, undecodable bytes
    kept as surrogates, as engine/kernel.read_comm reads them), no NUL (null passes)."""
    if v is None:
        return None
    try:
        ok = len(v.encode("utf-8", "surrogateescape")) <= 15 and "\0" not in v
    except UnicodeEncodeError:
        ok = False
    return None if ok else "must be a name of at most 15 bytes without NUL"


comm_rule.inline = ("cached",)


def _fits_bytes(v: str, hi: int) -> bool:
    """Whether `v` is at most `hi` bytes in UTF-8 (undecodable bytes kept as surrogates, as dump
    reads names), without NUL."""
    try:
        return len(v.encode("utf-8", "surrogateescape")) <= hi and "\0" not in v
    except UnicodeEncodeError:
        return False


def path_rule(v) -> str | None:
    """A normalised absolute path with no '.', '..', NUL or oversize (null passes)."""
    if v is None:
        return None
    try:
        check_abs_path(v, "path")
    except ImageError as e:
        return str(e).split("path: ", 1)[-1]
    return None


path_rule.inline = ("path",)


_NS_ROOT = rx.compile(r"^[a-z_]{1,16}:\[[0-9]{1,20}\]\Z")


def root_rule(v) -> str | None:
    """A mount's root: a path in its superblock, or a kernel object name like net:[4026531840]
    (nsfs; only on external superblocks, checked with them)."""
    if v.startswith("/"):
        return path_rule(v)
    return None if _NS_ROOT.match(v) else f"must be an absolute path or kind:[N] (got {v[:80]!r})"


root_rule.inline = ("path",)  # the fast test of a path, else this rule


_B64 = rx.compile(r"[A-Za-z0-9+/]*={0,2}")   # (fullmatch: `$` would take a newline last)


def b64(hi: int) -> Rule:
    """Base64 text (padded, no other characters) of at most `hi` bytes (null passes)."""
    def rule(v):
        if v is not None and (len(v) % 4 or len(v) > (hi + 2) // 3 * 4 or not _B64.fullmatch(v)
                              or len(v) // 4 * 3 - (len(v) - len(v.rstrip("="))) > hi):
            return f"must be base64 of at most {hi} bytes"
        return None
    return rule


def list_of(item: Rule | tuple, hi: int, types: tuple = STR) -> Rule:
    """A list of at most `hi` items, each of `types` passing `item` (a rule) if given."""
    def rule(v):
        if v is None:
            return None
        if len(v) > hi:
            return f"has {len(v)} items (at most {hi})"
        for i, x in enumerate(v):
            if type(x) not in types:
                raise Bad(f"[{i}]", f"must be {_types_text(types)}")
            if item is not None:
                try:
                    why = item(x)
                except Bad as b:
                    raise Bad(f"[{i}]{b.where}", b.why) from None
                if why:
                    raise Bad(f"[{i}]", why)
        return None
    nested = getattr(item, "inline", ("",))
    if item is None or nested[0] != "record":
        rule.inline = ("cached",)
    elif types == DICT:
        rule.inline = ("records", nested[1], hi)
    else:
        rule.inline = ()
    return rule


def record(rec: Record) -> Rule:
    """A nested record (checked field by field)."""
    def rule(v):
        if v is not None:
            check_record(rec, v, "")
        return None
    rule.inline = ("record", rec)
    return rule


def _types_text(types: tuple) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def check_record(rec: Record, obj, what: str) -> None:
    """Check one record against its table: an object, no unknown key, every required one, each
    value's type and rule. Raise ImageError naming `what` (or Bad, inside a nested value).

    The table is compiled into a function (_compile) once it has checked _COMPILE_AFTER records:
    10,000 mounts are checked in a few milliseconds more than reading them takes, which a loop
    over the table would not do. Compiling costs about a millisecond per table, more than a small
    image's whole check, so the first records of each table go through the loop (_interpret), which
    accepts and refuses exactly what the compiled check does."""
    fn = _compiled.get(rec.name)
    if fn is None:
        n = _interpreted[rec.name] = _interpreted.get(rec.name, 0) + 1
        if n <= _COMPILE_AFTER:
            _interpret(rec, obj, what)
            return
        fn = _compile_into(rec)
    fn(obj, what)


def _interpret(rec: Record, obj, what: str) -> None:
    """The check of one record by a loop over its table: _slow is the generic test of one field,
    the one the compiled check itself falls back to for its error."""
    _unknown_or_missing(rec, obj, what)
    for key, v in obj.items():
        _slow(rec, what, key, v)


def _compile_into(rec: Record) -> Callable:
    fn = _compiled[rec.name] = _compile(rec)
    return fn


_compiled: dict[str, Callable] = {}
_interpreted: dict[str, int] = {}   # record name -> records checked by _interpret so far
_COMPILE_AFTER = 64
_MISSING = object()
_CACHE_MAX = 1 << 16


def _slow(rec: Record, what: str, key: str, v) -> None:
    """The generic check of one field (its types, then its rule), raising the error; the compiled
    code calls it when a fast test did not pass (or for rules it does not inline)."""
    f = rec.fields[key]
    if type(v) not in f.types:
        _where(what, key, f"must be {_types_text(f.types)}")
    if f.rule is not None:
        try:
            why = f.rule(v)
        except Bad as b:
            _where(what, f"{key}{b.where}", b.why)
        if why:
            _where(what, key, why)


def _unknown_or_missing(rec: Record, obj, what: str) -> None:
    if type(obj) is not dict:
        _where(what, "", f"must be an object ({rec.name})")
    if not obj.keys() <= rec.fields.keys():   # (one set test; the loop names the first unknown one)
        for k in obj:
            if k not in rec.fields:
                _where(what, "", f"unknown field {str(k)[:40]!r} in {rec.name}")
    missing = rec.required - obj.keys()
    if missing:
        _where(what, min(missing), "is missing")


def _compile(rec: Record) -> Callable:
    """One record's check: by its list of keys (dump writes a few, sorted), a check made for
    exactly those keys (_compile_shape, ~4x fewer steps a mount); any other list, or more than
    _MAX_SHAPES of them (a hostile image), the check of the whole table (_compile_table)."""
    table = _compile_table(rec)
    shapes: dict[tuple, Callable] = {}
    seen: dict[str, set] = {}   # a cached rule's values that passed, shared by the shapes' checks
    allowed, required = rec.fields.keys(), rec.required

    def check(o, what):
        if type(o) is dict:
            keys = tuple(o)
            fn = shapes.get(keys)
            if fn is None and len(shapes) < _MAX_SHAPES and required <= o.keys() <= allowed:
                fn = shapes[keys] = _compile_shape(rec, keys, table, seen)
            if fn is not None:
                return fn(o, what)
        return table(o, what)
    return check


_MAX_SHAPES = 64


def _env(rec: Record) -> dict:
    return {"_rec": rec, "_slow": _slow, "_um": _unknown_or_missing, "_M": _MISSING, "dict": dict,
            "MAXP": MAX_PATH, "CMAX": _CACHE_MAX, "_seen": _seen, "_new_types": _new_types,
            "TypeError": TypeError, "tuple": tuple, "type": type, "len": len, "str": str, "map": map,
            "NONE": type(None), "Bad": Bad, "_where": _where}


def _compile_shape(rec: Record, keys: tuple, table: Callable, seen: dict) -> Callable:
    """The check of records with exactly these keys: values fetched at once, their types compared
    as one tuple with the type tuples seen to pass (a new one is checked by `table` first), then
    each field's rule."""
    env = _env(rec)
    env.update({"KEYS": keys, "TABLE": table, "TT": set()})
    lines = ["def check(o, what):"]
    if not keys:
        return lambda o, what: None   # (no field: all are optional, the caller saw the keys)
    if len(keys) == 1:
        lines.append(f"    vals = (o[{keys[0]!r}],)")
    else:
        env["IG"] = itemgetter(*keys)
        lines.append("    vals = IG(o)")
    lines.append("    if tuple(map(type, vals)) not in TT: _new_types(TABLE, TT, o, what, vals)")
    lines.append("    " + "".join(f"v{n}, " for n in range(len(keys))) + "= vals")
    for n, key in enumerate(keys):
        f = rec.fields[key]
        lines += _rule_lines(n, key, f, env, f"v{n}", "    ", seen.setdefault(key, set()), typed=True)
    exec(compile("\n".join(lines) + "\n", f"<imageformat record {rec.name} {len(keys)} keys>", "exec"), env)  # noqa: S102
    return env["check"]


def _new_types(table: Callable, tt: set, o: dict, what, vals: tuple) -> None:
    table(o, what)   # (raises on a type the table does not allow)
    if len(tt) < _CACHE_MAX:
        tt.add(tuple(map(type, vals)))


def _seen(seen: set, rec: Record, what, key: str, v, hashed) -> None:
    _slow(rec, what, key, v)
    if hashed is not None and len(seen) < _CACHE_MAX:
        seen.add(hashed)


def _compile_table(rec: Record) -> Callable:
    """Python source for one record's check, straight-line, with the common rules inlined."""
    env = _env(rec)
    # Unknown and missing keys are found by counting: every allowed key present adds one, a
    # missing required one fails at once, and a count short of len(o) means an unknown key.
    lines = ["def check(o, what):",
             "    if type(o) is not dict:",
             "        _um(_rec, o, what)",
             "    g = o.get",
             "    c = 0"]
    for n, (key, f) in enumerate(rec.fields.items()):
        env[f"T{n}"] = f.types
        k = repr(key)
        lines.append(f"    v = g({k}, _M)")
        if f.required:
            lines.append("    if v is _M: _um(_rec, o, what)")
        lines.append("    if v is not _M:")
        lines.append("        c += 1")
        types = " and ".join(f"t is not T{n}[{i}]" for i in range(len(f.types)))
        lines.append("        t = type(v)")
        lines.append(f"        if {types}: _slow(_rec, what, {k}, v)")
        lines += _rule_lines(n, key, f, env, "v", "        ", set(), typed=False)
    lines.append("    if c != len(o):")
    lines.append("        _um(_rec, o, what)")
    exec(compile("\n".join(lines) + "\n", f"<imageformat record {rec.name}>", "exec"), env)  # noqa: S102
    return env["check"]


def _rule_lines(n: int, key: str, f: F, env: dict, v: str, ind: str, seen: set, typed: bool) -> list[str]:
    """The lines that test field `key`'s rule on variable `v` (of a type the table allows), calling
    _slow for the error; `typed`: without the variable `t` (its type) the table's check sets."""
    k = repr(key)
    kind = (getattr(f.rule, "inline", None) or ("call",)) if f.rule is not None else ("none",)
    nullable = f"{v} is not None and " if type(None) in f.types else ""
    t = f"type({v})" if typed else "t"
    slow = f"_slow(_rec, what, {k}, {v})"
    if kind[0] == "none":
        return []
    if kind[0] == "range":
        return [f"{ind}if {nullable}not {kind[1]!r} <= {v} <= {kind[2]!r}: {slow}"]
    if kind[0] == "pattern":
        env[f"RX{n}"] = kind[1].match
        return [f"{ind}if {nullable}RX{n}({v}) is None: {slow}"]
    if kind[0] == "strlen":
        return [f"{ind}if {nullable}(len({v}) > {kind[1]!r} or '\\x00' in {v}): {slow}"]
    if kind[0] == "path":
        return [f"{ind}if {nullable}({v}[:1] != '/' or '/.' in {v} or '//' in {v} or '\\x00' in {v} "
                f"or len({v}) > MAXP or ({v}[-1] == '/' and {v} != '/')):",
                f"{ind}    {slow}"]
    if kind[0] == "cached":
        # Same value, same answer: equal option lists (thousands of mounts share a few) are checked once.
        env[f"SEEN{n}"] = seen
        if typed and f.types == STR:
            return [f"{ind}if {v} not in SEEN{n}: _seen(SEEN{n}, _rec, what, {k}, {v}, {v})"]
        return [f"{ind}try:",
                f"{ind}    key = {v} if {t} is str else tuple({v}) if {t} is list else None",
                f"{ind}    hit = key is not None and key in SEEN{n}",
                f"{ind}except TypeError:",
                f"{ind}    key, hit = None, False",
                f"{ind}if not hit: _seen(SEEN{n}, _rec, what, {k}, {v}, key)"]
    if kind[0] in ("record", "records"):
        # The nested record's own compiled check, called directly; its error gets this field's name
        # (a list's item: _slow again, for the item's index in the message).
        env[f"CHK{n}"] = _compiled.get(kind[1].name) or _on_first_use(env, f"CHK{n}", kind[1])
        one = kind[0] == "record"
        return [f"{ind}if {v} is not None:"] + ([] if one else [f"{ind}    if len({v}) > {kind[2]!r}: {slow}"]) + [
            f"{ind}    try:",
            f"{ind}        CHK{n}({v}, '')" if one else f"{ind}        for x in {v}: CHK{n}(x, '')",
            f"{ind}    except Bad as b:",
            f"{ind}        " + (f"_where(what, {k} + b.where, b.why)" if one else slow)]
    return [f"{ind}{slow}"]


def _on_first_use(env: dict, name: str, rec: Record) -> Callable:
    """A nested record's compiled check, made when first called (an image with no such record, as
    most have no socket file, loop device or overlay layer, compiles none: ~0.2-0.5 ms each), then
    called directly: it takes the stub's `name` in the calling check's globals `env`."""
    def first(o, what):
        fn = env[name] = _compiled.get(rec.name) or _compile_into(rec)
        return fn(o, what)
    return first


def _where(what, field: str, why: str):
    if type(what) is tuple:  # (template, args...): formatted only when there is an error
        what = what[0].format(*(str(a)[:40] for a in what[1:]))
    if not what:  # nested: the caller adds its own place
        raise Bad(f".{field}" if field else "", why)
    _fail(f"{what}: {field!r} {why}" if field else f"{what}: {why}")


# --- the records ------------------------------------------------------------------------------

LOC_FIELDS = {
    "mnt": F(INT, rule=rng(1, MAX_ID)),                       # a mount id (of the tree, or detached)
    "path": F(STR, rule=path_rule),                           # relative to that mount's root
    "detached": F(BOOL, required=False),                      # the mount is in "detached"
}
LOC = Record("location", LOC_FIELDS)
# A root or cwd: a directory removed while in use is reopened from its ghost (engine/ghosts.py).
DIR_LOC = Record("root or cwd", {
    **LOC_FIELDS,
    "ghost": F(STR, required=False, rule=pattern(_GHOST_ID, "a ghost id g-N")),
    # /proc/N of a process gone at dump: entered while N is restore's (engine/deadpid.py)
    "dead_pid": F(INT, required=False, rule=rng(2, 1 << 22)),
})

# A mapped file: one unlinked since is mapped again from its ghost, and one on a detached mount
# (lazily unmounted) from that mount (engine/mappings.py).
MAP_LOC = Record("mapping", {
    **LOC_FIELDS,
    "ghost": F(STR, required=False, rule=pattern(_GHOST_ID, "a ghost id g-N")),
})

_DESC_ID = rx.compile(r"^d-[0-9]{1,9}\Z")
_OBJ_ID = rx.compile(r"^[a-z]{1,16}-[0-9-]{1,64}\Z")

# Fields of every fd entry, whatever its kind (engine/fds/): a kind adds its own (FdKind.fields)
# and, when its fd names a file on a mount (FdKind.placed), the location fields.
FD_BASE = {
    "fd": F(INT, rule=rng(0, MAX_FD)),
    "flags": F(INT, rule=lambda v: None if v & ~OPEN_FLAGS == 0 and v >= 0
               else f"has bits that are no open(2) flags ({v:#o})"),
    "pos": F(INT, rule=rng(0, MAX_OFF)),
    "kind": F(STR, required=False, rule=pattern(rx.compile(r"^[a-z]{1,16}\Z"), "an fd kind name")),  # absent: file
    # One open file description held by several fds (of one or several processes).
    "desc": F(STR, required=False, rule=pattern(_DESC_ID, "a description id d-N")),
    # An entry of "objects" (a pipe, a socket pair, a memfd, a pty) the description belongs to.
    "obj": F(STR, required=False, rule=pattern(_OBJ_ID, "an object id")),
    # Signal owner of the description (engine/fown.py; O_ASYNC's, a socket's SIGURG, a lease's
    # break): the process of the image that gets the signal (F_SETOWN; async_tid: F_OWNER_TID, its
    # main thread; async_pgrp: F_OWNER_PGRP, the group it leads) and the signal (F_SETSIG, absent: SIGIO).
    "async_owner": F(INT, required=False, rule=rng(1, MAX_PID)),
    "async_tid": F(BOOL, required=False),
    "async_pgrp": F(BOOL, required=False),
    "async_signal": F(INT, required=False, rule=rng(1, 64)),
}

FD = Record("fd", {
    **FD_BASE,
    **LOC_FIELDS,
    # "sock": an O_PATH fd on a socket file (engine/fds/file.py).
    "type": F(STR, required=False, rule=lambda v: None if v in ("file", "dir", "sock") else
              "must be 'file', 'dir' or 'sock'"),
    # A file unlinked while open: reopened from that ghost (engine/ghosts.py), on the same superblock.
    "ghost": F(STR, required=False, rule=pattern(_GHOST_ID, "a ghost id g-N")),
    # Opened through a mount outside the dumped namespaces: restored on the visible one (dump.py).
    "outside": F(BOOL, required=False),
    # A file of /proc/N/ whose process N was gone at dump: reopened while N is ours (engine/fds/file.py).
    "dead_pid": F(INT, required=False, rule=rng(2, 1 << 22)),
    # A file of /proc/N/ of a live process of the tree (its pid in the image): reopened under the
    # number that process has at restore in that proc mount's pid namespace (engine/fds/file.py).
    "live_pid": F(INT, required=False, rule=rng(1, MAX_PID)),
    # A directory read to its end on a filesystem restore makes again: read to its end again
    # (engine/dirpos.py; its offset, a cookie of the dumped filesystem, says nothing there).
    "dir_end": F(BOOL, required=False),
})

_EXT_FILE_KEY = rx.compile(r"^[^\s\[\]/\x00]{1,256}\Z")

# An fd declared external at dump (--external file[PATH]:KEY) has no mount: restore opens the
# host path given for KEY (--external file[KEY]:HOSTPATH), with these flags and offset.
# Its signal owner fields are every fd's (checked by _check_fown): restore sets them on the host's file.
EXTERNAL_FD = Record("fd (external file)", {
    **FD_BASE,
    "type": F(STR, required=False, rule=lambda v: None if v in ("file", "dir") else "must be 'file' or 'dir'"),
    "external": F(STR, rule=pattern(_EXT_FILE_KEY, "a key of --external file[PATH]:KEY")),
})

def _map_rule(v) -> str | None:
    """A uid_map / gid_map: at most MAX_MAP [inside, outside, count] ranges of 32-bit ids, no two
    overlapping on either side (the kernel's own rules)."""
    if len(v) > MAX_MAP:
        return f"has {len(v)} ranges, at most {MAX_MAP}"
    for r in v:
        if type(r) is not list or len(r) != 3 or any(type(x) is not int for x in r):
            return "ranges must be [inside, outside, count] integers"
        inside, outside, count = r
        if not (0 <= inside < 1 << 32 and 0 <= outside < 1 << 32 and 1 <= count):
            return f"range {r} is out of bounds"
        if inside + count > 1 << 32 or outside + count > 1 << 32:
            return f"range {r} runs past the last 32-bit id"
    for side in (0, 1):
        spans = sorted((r[side], r[side] + r[2]) for r in v)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                return f"ranges overlap on the {'inside' if side == 0 else 'outside'}"
    return None


def _limits_rule(v: dict) -> str | None:
    for k, x in v.items():
        if k not in USERNS_LIMITS:
            return f"{k!r} is not a user namespace limit ({', '.join(USERNS_LIMITS)})"
        if type(x) is not int or not 0 <= x < 1 << 31:
            return f"{k}: must be an integer of 0..2^31-1"
    return None


def _caps_rule(v: dict) -> str | None:
    if set(v) != {"inh", "prm", "eff", "bnd", "amb"}:
        return "must have exactly inh, prm, eff, bnd and amb"
    if any(type(x) is not int or not 0 <= x < 1 << 64 for x in v.values()):
        return "each must be a 64-bit mask"
    # (what the kernel keeps true; a stand-in's capset or ambient raise would fail after the stop)
    if v["eff"] & ~v["prm"] or v["amb"] & ~(v["prm"] & v["inh"]):
        return "eff must be within prm, amb within prm and inh"
    return None


USERNS = Record("user namespace", {
    "parent": F(OPT_STR, required=False, rule=pattern(_USERNS_ID, "a user namespace id user-N")),
    "uid_map": F(LIST, rule=_map_rule),
    "gid_map": F(LIST, rule=_map_rule),
    "setgroups": F(STR, rule=lambda v: None if v in ("allow", "deny") else "must be allow or deny"),
    "owner": F(OPT_INT, required=False, rule=rng(0, MAX_UID)),   # the uid that made it (dumper's ids)
    "limits": F(DICT, required=False, rule=_limits_rule),         # {NAME: value} of /proc/sys/user/max_NAME
})


def _ids_rule(n: int, hi: int = 4):
    def rule(v) -> str | None:
        if not n <= len(v) <= hi or any(type(x) is not int or not 0 <= x <= MAX_UID for x in v):
            return f"must be {n if n == hi else f'{n} to {hi}'} ids of 0..{MAX_UID}"
        return None
    return rule


IDMAP = Record("idmap", {
    "uid_map": F(LIST, rule=_map_rule),
    "gid_map": F(LIST, rule=_map_rule),
})


CREDS = Record("credentials", {
    "uid": F(LIST, rule=_ids_rule(4)),                        # real, effective, saved, fs
    "gid": F(LIST, rule=_ids_rule(4)),
    "groups": F(LIST, rule=_ids_rule(0, MAX_NGROUPS)),
    # Supplementary groups its user namespace does not map (held from before it: `unshare -r` by a
    # user of several groups), in the dumper's ids; its stand-in holds them before it enters.
    "unmapped_groups": F(LIST, required=False, rule=_ids_rule(1, MAX_NGROUPS)),
    "dumpable": F(OPT_BOOL, required=False),                  # prctl(PR_SET_DUMPABLE) after the ids
    # Not dumpable, its memory made (exec'd) in its own user namespace: /proc files its root's
    "memory_in_userns": F(OPT_BOOL, required=False),
})

# Its scheduling attributes and per-process knobs (engine/schedattrs.py), set on its stand-in.
SCHED = Record("scheduling attributes", {
    # SCHED_OTHER, FIFO, RR, BATCH or IDLE, maybe with SCHED_RESET_ON_FORK (never DEADLINE: refused at dump)
    "policy": F(INT, rule=lambda v: None if v & ~0x40000000 in (0, 1, 2, 3, 5) and 0 <= v <= 0x40000005
                else "must be a policy of 0..3 or 5, maybe | 0x40000000"),
    "rt_priority": F(INT, rule=rng(0, 99)),
    "nice": F(INT, rule=rng(-20, 19)),
    "ioprio": F(INT, rule=rng(0, 0xFFFF)),
    "oom_score_adj": F(INT, rule=rng(-1000, 1000)),
    "timerslack_ns": F(INT, rule=rng(0, (1 << 64) - 1)),
    "personality": F(INT, rule=rng(0, 0xFFFFFFFE)),   # (0xffffffff: personality(2) only answers, sets nothing)
    # its CPU affinity, when not the dumper's: CPU numbers, ascending
    "cpus": F(LIST, required=False, rule=lambda v: None if 0 < len(v) <= 8192 and all(
        type(c) is int and 0 <= c < 8192 for c in v) and v == sorted(set(v)) else "must be ascending CPU numbers"),
})

_CLOCKS = ("monotonic", "boottime")
_TIMENS_MAX = ((1 << 63) - 1) // 10**9 // 2   # (KTIME_SEC_MAX / 2: no clock of a time namespace passes it)
_TIME_ID = rx.compile(r"time-[1-9][0-9]{0,5}\Z")
# Its time namespace when not the dumper's, and its children's when not its own (engine/timens.py):
# the clock offsets [seconds, nanoseconds] and the initial namespace's clocks (ns) at the dump.
TIMENS = Record("time namespace", {
    "id": F(STR, rule=pattern(_TIME_ID, "a time namespace id time-N")),
    "offsets": F(DICT, rule=lambda v: None if set(v) == set(_CLOCKS) and all(
        type(x) is list and len(x) == 2 and all(type(n) is int for n in x) and abs(x[0]) <= _TIMENS_MAX
        and 0 <= x[1] < 10**9 for x in v.values()) else "must map monotonic and boottime to [seconds, nanoseconds], "
        f"seconds within +-{_TIMENS_MAX} (the kernel's)"),
    "at": F(DICT, rule=lambda v: None if set(v) == set(_CLOCKS) and all(
        type(n) is int and 0 <= n < 1 << 63 for n in v.values()) else "must map monotonic and boottime to nanoseconds"),
})

def _seccomp_rule(v) -> str | None:
    """A process's seccomp filters (engine/seccomp.py), oldest first: BPF programs of 1 to 4096
    8-byte instructions, as hex, and their LOG flag."""
    if not 0 < len(v) <= 512:
        return "must hold 1 to 512 filters"
    for f in v:
        if type(f) is not dict or set(f) != {"insns", "log"} or type(f["log"]) is not bool \
                or type(f["insns"]) is not str or not 0 < len(f["insns"]) <= 16 * 4096 or len(f["insns"]) % 16 \
                or not _HEX.match(f["insns"]):
            return "each filter must be {insns: hex of 8-byte instructions, log: true or false}"
    from engine import seccomp
    for i, f in enumerate(v):
        why = seccomp.check_program(bytes.fromhex(f["insns"]))
        if why:
            return f"filter {i}, {why}: not a program the kernel takes"
    return None


_HEX = rx.compile(r"[0-9a-f]*\Z")

# A file lock the process holds (engine/filelocks.py), taken again through its fd `fd`: a POSIX lock
# of the process, or the flock lock, OFD lock or lease of that fd's open file description.
LOCK = Record("file lock", {
    "fd": F(INT, rule=rng(0, MAX_FD)),
    "type": F(STR, rule=lambda v: None if v in ("posix", "flock", "ofd", "lease")
              else "must be posix, flock, ofd or lease"),
    "mode": F(STR, rule=lambda v: None if v in ("read", "write") else "must be read or write"),
    "start": F(INT, rule=rng(0, MAX_OFF)),
    "end": F(OPT_INT, rule=rng(0, MAX_OFF)),                  # the last byte; null: to the end of file
    # A flock lock this process took on a description it no longer holds: `fd` is process `of`'s.
    "of": F(INT, required=False, rule=rng(1, MAX_PID)),
    # A flock lock on this process's fd whose taker is gone: restore's own process takes it and exits.
    "gone": F(BOOL, required=False),
})

# A thread of the process but its leader (engine/threads.py): made again with the process's state,
# named as it was (tids are not restored), with its signal mask when not its leader's.
THREAD = Record("thread", {
    "comm": F(STR, rule=comm_rule),
    "sig_blocked": F(INT, required=False, rule=rng(0, (1 << 64) - 1)),
})

# A POSIX timer of the process (engine/posixtimers.py), made again by its stand-in under its id and
# armed with what was left of it (nanoseconds; a value 0: disarmed).
POSIX_TIMER = Record("posix timer", {
    "id": F(INT, rule=rng(0, posixtimers.MAX_ID)),
    "clock": F(INT, rule=lambda v: None if v in posixtimers.CLOCKS else f"is no clock a timer is restored on ({v})"),
    "notify": F(STR, rule=lambda v: None if v in ("signal", "thread", "none") else "must be signal, thread or none"),
    "signo": F(INT, required=False, rule=rng(1, 64)),
    "sigval": F(INT, required=False, rule=rng(0, (1 << 64) - 1)),
    "thread": F(INT, required=False, rule=rng(0, MAX_THREADS)),   # (0: the leader; i: threads[i - 1])
    # (on the CPU clock of threads[i - 1], clock -2: the stand-in makes it from that thread's new tid)
    "clock_thread": F(INT, required=False, rule=rng(1, MAX_THREADS)),
    "value": F(INT, rule=rng(0, posixtimers.MAX_NS)),
    "interval": F(INT, rule=rng(0, posixtimers.MAX_NS)),
    "overrun": F(INT, rule=rng(0, posixtimers.MAX_ID)),
})

# An armed interval timer of the process (engine/itimers.py): 0 ITIMER_REAL, 1 _VIRTUAL, 2 _PROF;
# its time left and interval in microseconds.
ITIMER = Record("interval timer", {
    "which": F(INT, rule=rng(0, 2)),
    "value": F(INT, rule=rng(1, itimers.MAX_US)),
    "interval": F(INT, rule=rng(0, itimers.MAX_US)),
})

PROCESS = Record("process", {
    "pid": F(INT, rule=rng(1, MAX_PID)),
    "ppid": F(OPT_INT, required=False, rule=rng(1, MAX_PID)),
    "ns": F(DICT),                                            # {kind: namespace id}, every kind of NS_KINDS
    "host_ns": F(LIST, required=False, rule=list_of(
        lambda v: None if v in NS_KINDS else f"must be one of {', '.join(NS_KINDS)}", len(NS_KINDS))),
    "root": F(DICT, rule=record(DIR_LOC)),
    "cwd": F(DICT, rule=record(DIR_LOC)),
    "fds": F(LIST),                                           # FD records, checked with their count
    # Mapped files and the executable on mounts of the tree (engine/mappings.py).
    "maps": F(LIST, required=False, rule=list_of(record(MAP_LOC), MAX_FDS, DICT)),
    "exe": F(DICT, required=False, rule=record(MAP_LOC)),   # (a deleted one: its mapping's ghost)
    # System V segments it attached, [shmid, read-only] per mapping (engine/shmattach.py; checked
    # against its ipc namespace's segments in _check_sysvipc).
    "shm": F(LIST, required=False),
    "stopped": F(BOOL, required=False),                       # stopped (SIGSTOP, Ctrl-Z) before the dump
    # Its session and process group ids as the dumper saw them, like "pid" (engine/sessions.py).
    "sid": F(INT, required=False, rule=rng(0, MAX_PID)),
    "pgid": F(INT, required=False, rule=rng(0, MAX_PID)),
    # A session leader holding /dev/tty: its terminal's foreground group, when not its own.
    "tty_fg": F(INT, required=False, rule=rng(1, MAX_PID)),
    # A member of a session that has its leader's controlling terminal (engine/ctty.py).
    "ctty": F(BOOL, required=False),
    # A session leader holding no fd on its pty terminal: where it takes it again (engine/ctty.py).
    "ctty_node": F(DICT, required=False),
    "umask": F(INT, required=False, rule=rng(0, 0o777)),      # its umask, and its no_new_privs bit:
    "no_new_privs": F(BOOL, required=False),                  # both taken by its stand-in as it detaches
    # Signals it ignores, bit n-1 for signal n (`nohup`, a shell's background job): taken by its stand-in too.
    "sig_ignored": F(INT, required=False, rule=rng(0, (1 << 64) - 1)),
    "thp_disable": F(BOOL, required=False),                   # prctl(PR_SET_THP_DISABLE) (engine/thp.py)
    # /proc/PID/cmdline and /proc/PID/environ, base64 (both always written): shown by its stand-in
    # (engine/procargs.py)
    "cmdline": F(STR, required=False, rule=b64(procargs.MAX_BYTES)),
    "environ": F(STR, required=False, rule=b64(procargs.MAX_BYTES)),
    # Its parent-death signal (prctl PR_SET_PDEATHSIG; engine/pdeathsig.py), never the root's: its
    # stand-in takes it as it detaches, under its parent's stand-in.
    "pdeathsig": F(INT, required=False, rule=rng(1, 64)),
    # Signals its main thread blocks (tini, dumb-init, catatonit), and whether it is a child
    # subreaper (`tini -s`; engine/subreaper.py): both taken by its stand-in as it detaches.
    "sig_blocked": F(INT, required=False, rule=rng(0, (1 << 64) - 1)),
    # Signals pending on its main thread and on the process, blocked by every thread: raised again by
    # its stand-in as it detaches (engine/pendingsigs.py)
    "sig_pending": F(INT, required=False, rule=rng(0, (1 << 64) - 1)),
    "sig_pending_shared": F(INT, required=False, rule=rng(0, (1 << 64) - 1)),
    "child_subreaper": F(BOOL, required=False),
    # {NAME: [soft, hard]} (-1: unlimited), taken by its stand-in as it detaches (engine/image.py RLIMITS)
    "sched": F(DICT, required=False, rule=record(SCHED)),
    "timens": F(DICT, required=False, rule=record(TIMENS)),
    "timens_children": F(DICT, required=False, rule=record(TIMENS)),   # its children's, made by it
    # The pid namespace its children go to when not its own (`unshare --pid --fork`), one below its
    # own that a process of the image is in.
    "pidns_children": F(STR, required=False, rule=pattern(_NS_ID, "a pid namespace id pid-N")),
    # ...or that of its zombie child (a pid), which was init there: the namespace is gone with it.
    "pidns_children_zombie": F(INT, required=False),
    # ...or a new one it made that has no init yet (`unshare --pid` without --fork): its stand-in
    # makes it again (unshare), owned by its user namespace.
    "pidns_children_new": F(BOOL, required=False),
    # Its stand-in makes `pidns_children` (as its children were forked: always into it) inside its
    # `userns_start`, before it enters its own user namespace (engine/userns_cr.py).
    "pidns_children_early": F(BOOL, required=False),
    "seccomp": F(LIST, required=False, rule=_seccomp_rule),
    "loginuid": F(INT, required=False, rule=rng(0, 4294967295)),   # its audit login uid, when not the dumper's
    "rlimits": F(DICT, required=False, rule=lambda v: None if all(
        k in RLIMITS and type(x) is list and len(x) == 2 and all(type(n) is int and -1 <= n < 1 << 63 for n in x)
        and x[0] % (1 << 64) <= x[1] % (1 << 64)   # (the kernel keeps no soft limit above its hard one; -1: none)
        for k, x in v.items()) else "must map resource names to [soft, hard], soft at most hard (-1: unlimited)"),
    # Its user namespace (absent: the restorer's own) and its ids there (engine/userns_cr.py).
    "userns": F(STR, required=False, rule=pattern(_USERNS_ID, "a user namespace id user-N")),
    "creds": F(DICT, required=False, rule=record(CREDS)),
    "userns_first": F(BOOL, required=False),                  # its stand-in starts in its user namespace
    # ... after it entered its mount namespace, root and cwd, forked late (`unshare -rpf` without -m)
    "enter_first": F(BOOL, required=False),
    # Its namespaces (kind -> user-N) that another user namespace than its own made: restore makes
    # them there first and the stand-in joins them (engine/userns_cr.py).
    "ns_made_in": F(DICT, required=False),
    # Its namespaces the dumper's user namespace owns though its stand-in starts in its own (uts,
    # ipc, pid): made, or joined, before it enters (engine/userns_cr.py).
    "ns_before_userns": F(LIST, required=False, rule=list_of(
        lambda v: None if v in ("uts", "ipc", "pid", "net", "cgroup") else "must be uts, ipc, pid, net or cgroup", 5)),
    # The user namespace (above its own) its stand-in starts in: its pid namespace's owner.
    "userns_start": F(STR, required=False, rule=pattern(_USERNS_ID, "a user namespace id user-N")),
    # Its name (/proc/PID/comm: the kernel keeps 15 bytes); the stand-in takes it (prctl PR_SET_NAME):
    # checked here as bytes, so that a longer one is refused, not cut, and one no encoding takes
    # does not fail in the stand-in once the tree is made.
    "comm": F(STR, required=False, rule=comm_rule),
    "locks": F(LIST, required=False, rule=list_of(record(LOCK), MAX_FDS, DICT)),
    "caps": F(DICT, required=False, rule=_caps_rule),        # {inh, prm, eff, bnd, amb}: capability bit masks
    "threads": F(LIST, required=False, rule=list_of(record(THREAD), MAX_THREADS, DICT)),
    "posix_timers": F(LIST, required=False, rule=list_of(record(POSIX_TIMER), posixtimers.MAX_TIMERS, DICT)),
    "itimers": F(LIST, required=False, rule=list_of(record(ITIMER), 3, DICT)),
    # The signals its timers deliver that it caught (engine/timersigs.py), bit n-1 for signal n.
    "timer_sig_caught": F(INT, required=False, rule=rng(1, (1 << 64) - 1)),
})

# A process of the tree that had exited and that its parent had not reaped (engine/zombies.py): made
# again by its parent's stand-in, which forks it and never reaps it. Nothing else of it is left.
ZOMBIE = Record("zombie", {
    "pid": F(INT, rule=rng(1, MAX_PID)),
    "ppid": F(INT, rule=rng(1, MAX_PID)),                     # a live process of the image
    "comm": F(STR, rule=comm_rule),
    # Its wait status (/proc/PID/stat exit_code): code << 8, or a fatal signal (| 0x80: a core).
    "status": F(INT, rule=lambda v: None if 0 <= v <= 0xFFFF and zombies.status_problem(v) is None
                else f"is no exit status of a process ({zombies.status_problem(v) if 0 <= v <= 0xFFFF else v})"),
    "sid": F(INT, rule=rng(0, MAX_PID)),
    "pgid": F(INT, rule=rng(0, MAX_PID)),
    # It was init of a pid namespace of its own (below its parent's): its stand-in is too.
    "pidns_init": F(BOOL, required=False),
    # Real, effective, saved, fs ids in its parent's user namespace (absent: the restorer's).
    "uid": F(LIST, required=False, rule=_ids_rule(4)),
    "gid": F(LIST, required=False, rule=_ids_rule(4)),
})

MOUNT = Record("mount", {
    "id": F(INT, rule=rng(1, MAX_ID)),
    "parent": F(OPT_INT, required=False, rule=rng(1, MAX_ID)),  # null only for the namespace root
    "mountpoint": F(STR, rule=path_rule),
    "root": F(STR, rule=root_rule),                           # path of the mount's root in its superblock
    "sb": F(STR),                                             # a superblock id (checked: it must exist)
    "mount_opts": F(LIST, rule=list_of(
        lambda v: None if v in MOUNT_OPTS else f"is no per-mount option ({v[:40]!r})", MAX_OPTS)),
    "shared": F(OPT_INT, required=False, rule=rng(1, MAX_ID)),
    "master": F(OPT_INT, required=False, rule=rng(1, MAX_ID)),
    "propagate_from": F(OPT_INT, required=False, rule=rng(1, MAX_ID)),
    "unbindable": F(OPT_BOOL, required=False),
    "external": F(OPT_STR, required=False, rule=pattern(_KEY, "an external key")),
    "uid": F(OPT_INT, required=False, rule=rng(0, (1 << 64) - 1)),  # 64-bit unique id (creation order)
    "dir": F(BOOL, required=False),                           # whether its root is a directory
    # Its root was unlinked (mountinfo `ROOT//deleted`): made from that ghost; `root` is its path.
    "ghost": F(STR, required=False, rule=pattern(_GHOST_ID, "a ghost id g-N")),
    # What mountinfo showed (restore takes them from the superblock, but a `source` other than the
    # superblock's, engine/restore.py `_other_source`; kept for `mntcr show`).
    "fstype": F(STR, required=False, rule=pattern(_FSTYPE, "a filesystem type name", cached=True)),
    "source": F(STR, required=False, rule=strlen(MAX_PATH)),
    "super_opts": F(LIST, required=False, rule=list_of(strlen(MAX_OPT), MAX_OPTS)),
    "dev": F(OPT_STR, required=False, rule=pattern(_DEVNUM, "MAJOR:MINOR")),
    # Locked in its namespace (MNT_LOCKED), and which of its flags are locked (engine/mntlocks.py).
    "locked": F(BOOL, required=False),
    # The map of an idmapped mount (the user namespace restore gives it), in the dumper's ids.
    "idmap": F(DICT, required=False, rule=record(IDMAP)),
    "locked_flags": F(LIST, required=False, rule=list_of(
        lambda v: None if v in LOCK_FLAGS else f"is no lockable flag ({v[:40]!r})", len(LOCK_FLAGS))),
    # The namespace of the image it binds (a type that makes each mount from its own object, `per_mount`:
    # nsfs, `ip netns add`): one some process of the image is in (not as the host's), or a `lone_ns` of
    # its superblock; its `root` is then "/".
    "bound_ns": F(STR, required=False, rule=pattern(_BOUND_NS_ID, "a namespace id like net-1")),
})

MNTNS = Record("mount namespace", {
    "root": F(INT, rule=rng(1, MAX_ID)),
    "mounts": F(LIST),                                        # MOUNT records, checked with their count
    "owner": F(STR, required=False, rule=pattern(_USERNS_ID, "a user namespace id user-N")),
})


MAX_SOCKET_FILES = 65536


def _file_path_rule(v) -> str | None:
    """A path of a file in a directory (not the directory itself)."""
    return path_rule(v) or (None if v != "/" else "must name a file beneath the root, not the root")


SOCKET_FILE = Record("socket file", {
    "path": F(STR, rule=_file_path_rule),
    "mode": F(INT, rule=rng(0, 0o7777)),
    "uid": F(INT, rule=rng(0, MAX_UID)),
    "gid": F(INT, rule=rng(0, MAX_UID)),
    "mtime_ns": F(INT, rule=rng(-(1 << 62), 1 << 62)),
})


def _inode_flags_rule(v) -> str | None:
    """Attributes restore sets again (engine/content.py INODE_FLAGS), one at least."""
    return None if v and not v & ~INODE_FLAGS else f"must be a non-empty set of the bits {INODE_FLAGS:#x} (got {v})"


INODE_ATTRS = Record("inode attributes", {
    "path": F(STR, rule=path_rule),
    "flags": F(INT, rule=_inode_flags_rule),
})


ARCHIVE_REF = Record("archive reference", {
    "file": F(STR, rule=pattern(ARCHIVE_NAME, "an archive name files-N.tar")),
    "member": F(STR, rule=pattern(_MEMBER, "a member name sb-N")),
    "root": F(STR, rule=path_rule),                           # where the member's files go in the superblock
    # The member holds only this file of that directory (a file bind with no directory mount).
    "only": F(STR, required=False, rule=lambda v: _name_rule(v)),
    # Socket files beneath the member's root, which tar leaves out: made again (engine/content.py).
    "sockets": F(LIST, required=False, rule=list_of(record(SOCKET_FILE), MAX_SOCKET_FILES, DICT)),
    # Files and directories beneath it with immutable, append-only or nodump attributes, which tar
    # does not keep: set again once every file is in place (engine/restore.py seal).
    "attrs": F(LIST, required=False, rule=list_of(record(INODE_ATTRS), MAX_SOCKET_FILES, DICT)),
})


def _name_rule(v) -> str | None:
    """One directory entry name: no '/', not '.' or '..', no NUL, at most 255 bytes."""
    if v in ("", ".", "..") or "/" in v or "\0" in v or len(v.encode("utf-8", "surrogateescape")) > 255:
        return f"must be one file name (got {v[:80]!r})"
    return None


MAX_GHOST_LINKS = 64   # other unlinked names one ghost may have been open under

GHOST = Record("ghost", {
    "sb": F(STR, rule=pattern(_SB_ID, "a superblock id sb-N")),  # a tmpfs, ramfs or overlay of the image
    "path": F(STR, rule=path_rule),                           # its old path in that superblock
    # Its archive (absent with `linked`):
    "file": F(STR, required=False, rule=pattern(ARCHIVE_NAME, "an archive name files-N.tar")),
    "member": F(STR, required=False, rule=pattern(_MEMBER, "a member name sb-N")),
    "only": F(STR, required=False, rule=lambda v: _name_rule(v)),   # the name the member holds: path's last
    # Other unlinked names of the same file, linked too while fds are reopened through them.
    "links": F(LIST, required=False, rule=list_of(_file_path_rule, MAX_GHOST_LINKS)),
    # A name the file still has (restored with the superblock's files): linked at `path` again.
    "linked": F(STR, required=False, rule=_file_path_rule),
    # A directory removed through an overlay whose lower layer still has it: restore takes the whiteout
    # out of the upper layer (fs uncover_layer), opens the directory and removes it again (no archive).
    "uncover": F(BOOL, required=False),
})

EMPTY_ROOT = Record("empty root", {
    "root": F(STR, rule=path_rule),
    "mode": F(INT, rule=rng(0, 0o7777)),
    "uid": F(INT, rule=rng(0, MAX_UID)),
    "gid": F(INT, rule=rng(0, MAX_UID)),
})

LOOP = Record("loop device", {
    "sb": F(STR, rule=pattern(_SB_ID, "a superblock id sb-N")),  # the content superblock holding the file
    "path": F(STR, rule=path_rule),                           # the backing file in that superblock
    "offset": F(INT, rule=rng(0, MAX_OFF)),
    "sizelimit": F(INT, rule=rng(0, MAX_OFF)),
    "ro": F(BOOL),
})

DEVICE = Record("device", {
    "dev": F(OPT_STR, required=False, rule=pattern(_DEVNUM, "MAJOR:MINOR")),  # as seen at dump
    "key": F(STR, required=False, rule=pattern(_KEY, "an external key")),      # --external dev[KEY]:PATH
    "loop": F(DICT, required=False, rule=record(LOOP)),
    "unresolved": F(BOOL, required=False),                    # dump found neither (then the sb is external)
})

INPUT = Record("daemon input", {
    "sb": F(STR, rule=pattern(_SB_ID, "a superblock id sb-N")),  # the content superblock holding the file
    "path": F(STR, rule=path_rule),                           # the file in that superblock
})

LAYER = Record("overlay layer", {
    "path": F(STR, rule=path_rule),                           # the path the overlay options name
    "mnt": F(INT, rule=rng(1, MAX_ID)),                       # the mount of the image it lies on
    "rel": F(STR, rule=path_rule),                            # the path inside that mount
    "detached": F(BOOL, required=False),                      # the mount is in "detached"
})

SUPERBLOCK = Record("superblock", {
    "fstype": F(STR, rule=pattern(_FSTYPE, "a filesystem type name")),
    "source": F(STR, rule=strlen(MAX_PATH)),
    "super_opts": F(LIST, rule=list_of(strlen(MAX_OPT), MAX_OPTS)),
    "dev": F(OPT_STR, required=False, rule=pattern(_DEVNUM, "MAJOR:MINOR")),
    "external": F(BOOL, required=False),
    "archives": F(LIST, required=False, rule=list_of(record(ARCHIVE_REF), MAX_ARCHIVES, DICT)),
    # Each archived root that held no files (its mode and owner); `empty_root`: one, images before session 20.
    "empty_roots": F(LIST, required=False, rule=list_of(record(EMPTY_ROOT), MAX_MOUNTS, DICT)),
    "empty_root": F(OPT_DICT, required=False, rule=record(EMPTY_ROOT)),
    "device": F(OPT_DICT, required=False, rule=record(DEVICE)),
    "layers": F(OPT_LIST, required=False, rule=list_of(record(LAYER), MAX_LAYERS, DICT)),
    "pidns": F(OPT_STR, required=False, rule=pattern(_NS_ID, "a namespace id")),
    "input": F(OPT_DICT, required=False, rule=record(INPUT)),   # a daemon type's source file
    # What the type's probe recorded beyond files and options (binfmt_misc formats): its module checks it.
    "payload": F(OPT_DICT, required=False),
    # Network namespaces no process is in that its mounts bind (`ip netns add` alone): restore makes each
    # afresh, then gives it its manifest `netvars` and `net_lo_up` as a process's namespace.
    "lone_ns": F(OPT_LIST, required=False, rule=list_of(pattern(_LONE_NS_ID, "a network namespace id net-N"),
                                                        MAX_MOUNTS)),
    # The user namespace that made it (absent: the restorer's); restore makes it from inside.
    "owner": F(STR, required=False, rule=pattern(_USERNS_ID, "a user namespace id user-N")),
})

PIDNS = Record("pid namespace", {
    "parent": F(OPT_STR, required=False, rule=pattern(_NS_ID, "a namespace id")),
    "host": F(BOOL, required=False),
})

DETACHED = Record("detached mount", {
    "id": F(INT, rule=rng(1, MAX_ID)),
    "sb": F(STR, rule=pattern(_SB_ID, "a superblock id sb-N")),
    "root": F(STR, rule=path_rule),
    "mount_opts": F(LIST, rule=list_of(
        lambda v: None if v in MOUNT_OPTS else f"is no per-mount option ({v[:40]!r})", MAX_OPTS)),
    "mountpoint": F(STR, required=False, rule=strlen(64)),
})

ARCHIVE_FILE = Record("archive", {
    "size": F(INT, rule=rng(0, MAX_OFF)),
    "sha256": F(STR, rule=pattern(_SHA256, "64 lowercase hex digits")),
})

MANIFEST = Record("manifest", {
    "format": F(STR),
    "version": F(INT),
    "kernel": F(STR, required=False, rule=strlen(256)),       # informational
    "created": F(STR, required=False, rule=strlen(64)),       # informational
    "superblocks": F(DICT),
    "mntns": F(DICT),
    "pidns": F(DICT),
    "processes": F(LIST),
    "hostnames": F(DICT, required=False),
    "domainnames": F(DICT, required=False),                   # {uts ns: NIS domain name}, only those set
    "detached": F(OPT_DICT, required=False),
    "files": F(OPT_DICT, required=False),
    "ghosts": F(OPT_DICT, required=False),                    # {g-N: GHOST}: deleted files and mount roots
    "objects": F(OPT_DICT, required=False),                   # {id: object of an fd kind} (engine/fds/)
    "userns": F(OPT_DICT, required=False),                    # {user-N: USERNS} below the dumper's own
    "zombies": F(LIST, required=False),                       # [ZOMBIE], checked with their count
    "sysvipc": F(DICT, required=False),                       # {ipc ns: System V IPC objects} (engine/sysvipc.py)
    "netvars": F(DICT, required=False),                       # {net ns: {sysctl: text}} (engine/netvars.py)
    "net_lo_up": F(LIST, required=False),                     # [net ns whose lo is up] (engine/netdevs.py)
    "netdevs": F(DICT, required=False),                       # {net ns: its links, addresses, routes} (engine/netlinks.py)
    "netfilter": F(DICT, required=False),                     # {net ns: its firewall ruleset} (engine/netfilter.py)
})

_REQUIRED = {r.name: r.required for r in (LOC, DIR_LOC, FD, EXTERNAL_FD, PROCESS, MOUNT, MNTNS, ARCHIVE_REF, SOCKET_FILE, INODE_ATTRS, EMPTY_ROOT, LOOP,
                                          DEVICE, LAYER, SUPERBLOCK, PIDNS, DETACHED, ARCHIVE_FILE, MANIFEST, GHOST, USERNS, CREDS, IDMAP,
                                          LOCK, ZOMBIE)}


# --- the validator ----------------------------------------------------------------------------

# Per-process records every dump of this mntcr writes, and what a process lacking one gets at
# restore (the restorer's own): the format grows by optional fields (version 1 throughout), so an
# image of an older mntcr loads, and `older_writer` tells what it does not say.
ALWAYS_WRITTEN = {"caps": "capabilities", "rlimits": "resource limits", "sched": "scheduling attributes",
                  "sid": "session and process group", "umask": "umask", "cmdline": "command line and environment"}


def older_writer(doc: dict) -> str | None:
    """A note for an image of an older mntcr (a validated manifest): which per-process records it
    lacks, restored as the restorer's own; None for an image of this one."""
    missing = [what for key, what in ALWAYS_WRITTEN.items() if any(key not in p for p in doc["processes"])]
    if not missing:
        return None
    return (f"the image is an older mntcr's: its processes have no record of their {', '.join(missing)}, "
            "which they get from this restore (the restorer's own); dump again with this mntcr for an exact tree")


def validate(doc) -> None:
    """Check the whole manifest; raise ImageError (one line) on the first problem.

    Order: format and version, then every count (before any record is looked
    at), then the records kind by kind, each with its references.
    """
    if type(doc) is not dict:
        _fail("the manifest is not an object")
    if doc.get("format") != FORMAT:
        _fail(f"format is {str(doc.get('format'))[:40]!r}, expected {FORMAT!r}")
    version = doc.get("version")
    if version != VERSION or type(version) is not int:
        import json   # (as JSON wrote it: "1", a string, is no 1)
        newer = type(version) is int and version > VERSION
        _fail(f"format version {json.dumps(version)[:20]} is not supported by this mntcr (it reads version {VERSION})"
              + (": the image is a newer mntcr's, restore it with that one" if newer else ""))
    check_record(MANIFEST, doc, "manifest")
    _check_counts(doc)
    files = doc.get("files") or {}
    for name, meta in files.items():
        if not ARCHIVE_NAME.match(name):
            _fail(f"archive name {name[:80]!r} is not files-N.tar")
        check_record(ARCHIVE_FILE, meta, f"archive {name}")
    pidns = doc["pidns"]
    _check_pidns(pidns)
    sbs = doc["superblocks"]
    for sid, sb in sbs.items():
        if not _SB_ID.match(sid):
            _fail(f"superblock id {sid[:40]!r} is not sb-N")
        check_record(SUPERBLOCK, sb, f"superblock {sid}")
    loops = sum(1 for sb in sbs.values() if (sb.get("device") or {}).get("loop") and not sb.get("external"))
    if loops > MAX_LOOPS:
        _fail(f"{loops} loop devices is absurd (at most {MAX_LOOPS}: each is a device of the whole host)")
    mounts = _check_mntns(doc["mntns"], sbs)
    detached = _check_detached(doc.get("detached") or {}, sbs, mounts)
    _check_superblocks(sbs, files, pidns, mounts, detached)
    _check_ghosts(doc.get("ghosts") or {}, sbs, files, mounts, detached)
    _check_objects(doc.get("objects") or {})
    _check_processes(doc, mounts, detached)
    _check_inflight_descs(doc)
    _check_host_ns(doc["processes"])
    _check_zombies(doc)
    _check_sessions(doc)
    _check_userns(doc, mounts)
    _check_bound_ns(doc, mounts, detached)
    _check_mntns_bind_cycles(doc)
    _check_restorers_proc(doc, mounts, detached)


def mntns_binds(doc: dict) -> dict[str, set[str]]:
    """{mount namespace: the other mount namespaces of the image its mounts bind} (those that bind one)."""
    binds: dict[str, set[str]] = {}
    for ns_id, ns in doc["mntns"].items():
        for m in ns["mounts"]:
            bound = m.get("bound_ns")
            if type(bound) is str and bound.startswith("mnt-") and bound != ns_id and bound in doc["mntns"]:
                binds.setdefault(ns_id, set()).add(bound)
    return binds


def _check_mntns_bind_cycles(doc: dict) -> None:
    """No mount namespace binds, through its mounts and those of the namespaces they bind, itself:
    the kernel binds a mount namespace only in an older one (mnt_ns_loop), so no tree has such a
    cycle, and restore, which makes a bound namespace after its binder's, would fail midway."""
    binds = mntns_binds(doc)
    done: set[str] = set()
    for start in binds:
        path, stack = {start}, [(start, iter(sorted(binds[start])))]
        while stack:
            nxt = next(stack[-1][1], None)
            if nxt is None:
                node = stack.pop()[0]
                done.add(node)
                path.discard(node)
                continue
            if nxt in path:
                _fail(f"mount namespace {nxt}: its mounts bind, through other mount namespaces, {nxt} itself "
                      "(a cycle of bound mount namespaces no kernel makes)")
            if nxt not in done:
                path.add(nxt)
                stack.append((nxt, iter(sorted(binds.get(nxt, ())))))


def _check_host_ns(procs: list) -> None:
    """A namespace is the restorer's (`host_ns`) for every process in it or for none, as dump
    tells it (by the namespace's inode): restore joins the restorer's for one process and makes or
    joins the image's for another (a stand-in inside a user namespace then failed 'setns: Operation
    not permitted')."""
    seen: dict[tuple[str, str], tuple[int, bool]] = {}
    for p in procs:
        mine = set(p.get("host_ns") or ())
        for kind, nsid in p["ns"].items():
            first, was = seen.setdefault((kind, nsid), (p["pid"], kind in mine))
            if was != (kind in mine):
                _fail(f"process {p['pid']}: its {kind} namespace {nsid} is {'not ' if was else ''}the restorer's "
                      f"(host_ns), but it is {'' if was else 'not '}for process {first}")


def _check_restorers_proc(doc: dict, mounts: dict, detached: dict) -> None:
    """A superblock tagged with a host pid namespace no process is in is a proc the restorer makes of
    its own pid namespace (the host's /proc beneath the tree's, `unshare --mount-proc`): only where
    no path reaches it, each of its mounts covered by another at its mount point, none detached, not
    made by a user namespace of the image. (A root of the tree's user namespace may unmount a cover
    it made and see the restorer's processes there, as the original saw the dumper's: as much as
    /proc shows any user of the host.)"""
    hostless = {n for n, r in doc["pidns"].items() if r.get("host")} - {p["ns"]["pid"] for p in doc["processes"]}
    sids = {sid for sid, sb in doc["superblocks"].items() if sb.get("pidns") in hostless}
    if not sids:
        return
    covers = {(m.get("parent"), m["mountpoint"]) for m in mounts.values()}
    _nothing_on(doc, {m["id"]: m["sb"] for m in mounts.values() if m["sb"] in sids})
    for sid in sids:
        what = f"superblock {sid} (a proc of the restorer's own pid namespace)"
        if doc["superblocks"][sid].get("owner") is not None:
            _fail(f"{what}: made by a user namespace of the image")
        if any(m["sb"] == sid for m in detached.values()):
            _fail(f"{what}: a detached mount of it")
        for m in mounts.values():
            if m["sb"] == sid and (m["id"], m["mountpoint"]) not in covers:
                _fail(f"{what}: mount {m['id']} ({m['mountpoint'][:80]}) is not covered by another at its mount point")


def _nothing_on(doc: dict, ids: dict) -> None:
    """Refuse any record of the image placed on one of the mounts `ids` ({mount id: superblock}):
    an fd, root, cwd, mapping, socket file, watch, layer... (a `mnt` of theirs). Restore would open
    it on the restorer's own /proc for the tree, as root: its pid 1's files, the host's init's."""
    stack: list = [(k, v) for k, v in doc.items() if k != "mntns"]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict):
            if type(node.get("mnt")) is int and node["mnt"] in ids:
                _fail(f"{key}: a file on mount {node['mnt']} of superblock {ids[node['mnt']]} (a proc of the "
                      "restorer's own pid namespace, which nothing of the tree reaches)")
            stack.extend((key, v) for v in node.values())
        elif isinstance(node, list):
            stack.extend((key, v) for v in node)


def per_mount_sbs(sbs: dict) -> set[str]:
    """The superblocks of `sbs`, not external, whose type makes each mount from an object of its own
    (`per_mount`: nsfs binds a namespace): each type asked once, not each superblock or mount."""
    from engine import fs
    own = {t for t in set(map(itemgetter("fstype"), sbs.values())) if getattr(fs.lookup(t), "per_mount", False)}
    return {sid for sid, sb in sbs.items() if sb["fstype"] in own and not sb.get("external")} if own else set()


def _check_bound_ns(doc: dict, mounts: dict, detached: dict) -> None:
    """A mount of a `per_mount` type binds a namespace the image itself makes: one a process is in
    (not one it shares with the host: restore would bind the restorer's own) or a lone one its
    superblock records; nothing else may name one (a hostile image must not bind the host's)."""
    procs = [p for p in doc["processes"] if type(p) is dict and type(p.get("ns")) is dict]
    host = {p["ns"].get(k) for p in procs for k in (p.get("host_ns") or ()) if type(k) is str}
    made = {n for p in procs for n in p["ns"].values() if type(n) is str} - host
    made.update(n for n in (doc.get("userns") or {}) if type(n) is str)   # (restore makes each, with its parents)
    made.update(t["id"] for p in procs for k in ("timens", "timens_children")
                if type(t := p.get(k)) is dict and type(t.get("id")) is str)
    if any("userns" not in p for p in procs):
        made.add("user-0")   # (the restorer's own, which such a process is in: binding it grants nothing)
    sbs = doc["superblocks"]
    binding = per_mount_sbs(sbs)
    seen: set[str] = set()
    for sid in compress(sbs, map(contains, sbs.values(), repeat("lone_ns"))):   # (those with the key, in C)
        sb = sbs[sid]
        lone = sb["lone_ns"] or []
        if not lone:
            continue
        if sid not in binding:
            _fail(f"superblock {sid}: only a superblock whose mounts bind namespaces records network namespaces")
        bound = {m.get("bound_ns") for m in mounts.values() if m["sb"] == sid}
        for nsid in lone:
            if nsid in made or nsid in host or nsid in seen:
                _fail(f"superblock {sid}: lone namespace {nsid!r} is no net-N apart from the processes' ones "
                      "and the other lone ones")
            seen.add(nsid)
            if nsid not in bound:
                _fail(f"superblock {sid}: lone namespace {nsid}, which none of its mounts binds")
    every = (*mounts.values(), *detached.values())
    # (without a binding superblock, only the mounts naming a namespace, picked in C: ~0.3 M steps at 10k mounts)
    for m in every if binding else compress(every, map(contains, every, repeat("bound_ns"))):
        binds = m["sb"] in binding
        if "bound_ns" not in m and not binds:
            continue
        sb = sbs[m["sb"]]
        what = f"mount {m['id']} ({m.get('mountpoint', 'detached')})"
        if "bound_ns" not in m:
            _fail(f"{what}: a {sb['fstype']} mount names no namespace it binds (bound_ns)")
        if not binds:
            _fail(f"{what}: only a mount of a type that binds namespaces (nsfs) names one")
        nsid = m["bound_ns"]
        if nsid == "user-0" and "user-0" in (doc.get("userns") or {}):
            _fail(f"{what}: binds user-0, the id of the user namespace restore runs in, which the image also declares "
                  "as one restore makes (dump numbers those from user-1)")
        if nsid not in made and nsid not in (sb.get("lone_ns") or ()):
            _fail(f"{what}: binds namespace {nsid}, which the image does not make (no process of the image is "
                  "in it but as the host's, and its superblock records no such lone namespace)")
        if m["root"] != "/":
            _fail(f"{what}: a mount binding a namespace has root /, not {m['root'][:80]!r}")
        if nsid.startswith("mnt-") and any(x is m for x in (doc["mntns"].get(nsid) or {}).get("mounts", ())):
            _fail(f"{what}: binds {nsid}, the mount namespace it is in (a loop the kernel refuses)")


def _covered(ranges, by) -> int | None:
    """The first outside id of `ranges` not inside an outside range of `by` (None: all are)."""
    for _, outside, count in ranges:
        pos, end = outside, outside + count
        while pos < end:
            hit = next((o + c for _, o, c in by if o <= pos < o + c), None)
            if hit is None:
                return pos
            pos = hit
    return None


def _unmapped(ids, ranges, side: int = 0) -> int | None:
    """The first of `ids` no inside range (`side` 1: outside range) of `ranges` maps (None: all are
    mapped)."""
    spans = sorted((r[side], r[side] + r[2]) for r in ranges)
    starts = [lo for lo, _ in spans]
    for i in dict.fromkeys(ids):
        k = bisect.bisect_right(starts, i) - 1
        if k < 0 or i >= spans[k][1]:
            return i
    return None


def _check_creds(p: dict, users: dict) -> None:
    """A process in a user namespace of the image has ids that namespace maps: its stand-in takes
    them there, and an unmapped one fails (setresuid: EINVAL), once the stand-in is past its last
    answer (the last steps of a detached stand-in: engine/lastword.py); dump records none else.
    Its "unmapped_groups" are unmapped there, and, below a namespace a non-root user made, groups
    that user has on this machine (engine/ownergroups.py): restore, root, would give any."""
    creds = p.get("creds")
    if creds is None:
        return
    if "userns" not in p:
        if "unmapped_groups" in creds:
            _fail(f"process {p['pid']}: unmapped_groups without a user namespace")
        return
    ns = users[p["userns"]]
    for what, ids, key in (("uid", creds["uid"], "uid_map"), ("gid", creds["gid"], "gid_map"),
                           ("group", creds["groups"], "gid_map")):
        bad = _unmapped(ids, ns[key])
        if bad is not None:
            _fail(f"process {p['pid']}: its {what} {bad} is not mapped in its user namespace {p['userns']}")
    outside = creds.get("unmapped_groups") or []
    if len(creds["groups"]) + len(outside) > MAX_NGROUPS:
        _fail(f"process {p['pid']}: more than {MAX_NGROUPS} supplementary groups")
    mapped = next((g for g in outside if _unmapped([g], ns["gid_map"], side=1) is None), None)
    if mapped is not None:
        _fail(f"process {p['pid']}: unmapped group {mapped} is mapped in its user namespace {p['userns']}")
    top = _rootless(p["userns"], users)
    if outside and top is not None:
        from engine import ownergroups   # (only then: it reads the passwd and group databases)
        line = ownergroups.refusal(f"process {p['pid']}", outside, users[top]["gid_map"], users[top]["owner"])
        if line is not None:
            _fail(line)


def _rootless(name: str, users: dict) -> str | None:
    """The outermost user namespace at or above `name` that a non-root user made (None: root made
    them all): what its owner held is what the namespace maps."""
    out = None
    while name is not None:
        if users[name].get("owner"):
            out = name
        name = users[name].get("parent")
    return out


def _check_fd_ids(p: dict, users: dict) -> None:
    """The ids an fd of a process in a user namespace a non-root user made takes at restore for
    itself (FdKind.ids: a listener's) are ids that namespace maps: the stand-in takes them before
    it joins its namespace, where any id is the restorer's to give (SO_PEERCRED would tell the
    host's clients a rootless tree's socket is root's). Groups it holds unmapped (_check_creds
    bounds them) it may listen with too."""
    top = _rootless(p["userns"], users) if "userns" in p else None
    if top is None:
        return
    held = set((p.get("creds") or {}).get("unmapped_groups") or ())
    for fd in p["fds"]:
        taken = _fd_kind(fd, "fd").ids(fd) if "external" not in fd else {}
        made = f"user namespace {top}, made by uid {users[top]['owner']}"
        for key, ids in taken.items():
            if ids is None:
                _fail(f"process {p['pid']} fd {fd['fd']}: takes ids at restore without the supplementary groups "
                      f"that go with them (an older image's), which in {made}, would be the restorer's")
            ids = [i for i in ids if i not in held] if key == "groups" else ids
            bad = _unmapped(ids, users[top]["uid_map" if key == "uid" else "gid_map"], side=1)
            if bad is not None:
                _fail(f"process {p['pid']} fd {fd['fd']}: takes {'uid' if key == 'uid' else 'gid'} {bad} at "
                      f"restore, which {made}, does not map: no id that user could give it")


def _check_start(p: dict, users: dict, mntns: dict) -> None:
    """Where a process's stand-in starts, as dump plans it (engine/userns_cr.py): `userns_start`, the
    owner of its pid namespace, above its own user namespace; a stand-in that starts in its user
    namespace (`userns_first`) enters a mount namespace that one owns, or enters it first
    (`enter_first`). A stand-in started otherwise failed late, with a bare 'setns: Operation not
    permitted' or 'cannot start a stand-in inside its user namespace'."""
    own = p.get("userns")
    if "userns_start" in p:
        above, cur = set(), users[own].get("parent")
        while cur is not None and cur not in above:
            above.add(cur)
            cur = users.get(cur, {}).get("parent")
        if p["userns_start"] not in above:
            _fail(f"process {p['pid']}: userns_start {p['userns_start']} is no ancestor of its user namespace {own}")
    mnt = mntns.get(p["ns"]["mnt"]) if type(p.get("ns")) is dict else None
    if p.get("userns_first") and not p.get("enter_first") and type(mnt) is dict and mnt.get("owner") != own:
        _fail(f"process {p['pid']}: its stand-in starts in its user namespace {own}, which does not own its mount "
              f"namespace {p['ns']['mnt']}, and does not enter that first (enter_first)")


def _check_userns(doc: dict, mounts: dict) -> None:
    """User namespace records, their parent chains, and who names them."""
    users = doc.get("userns") or {}
    if len(users) > MAX_USERNS:
        _fail(f"{len(users)} user namespaces, at most {MAX_USERNS}")
    for uid, u in users.items():
        if not _USERNS_ID.match(uid):
            _fail(f"user namespace id {uid[:40]!r} is not user-N")
        check_record(USERNS, u, f"user namespace {uid}")
    for uid, u in users.items():
        seen, cur = {uid}, u.get("parent")
        while cur is not None:
            if cur not in users:
                _fail(f"user namespace {uid}: unknown parent {cur!r}")
            if cur in seen:
                _fail(f"user namespace {uid}: parent cycle")
            seen.add(cur)
            cur = users[cur].get("parent")
        parent = users.get(u.get("parent")) if u.get("parent") else None
        if parent is not None:
            # The kernel only lets a namespace map ids its parent maps.
            for key in ("uid_map", "gid_map"):
                bad = _covered(u[key], parent[key])
                if bad is not None:
                    _fail(f"user namespace {uid}: {key} maps id {bad}, which its parent {u['parent']} does not map")
    for p in doc["processes"]:
        if "userns" in p and p["userns"] not in users:
            _fail(f"process {p['pid']}: unknown user namespace {p['userns']!r}")
        _check_creds(p, users)
        _check_fd_ids(p, users)
        if p.get("userns_first") and "userns" not in p:
            _fail(f"process {p['pid']}: userns_first without a user namespace")
        if p.get("enter_first") and not (p.get("userns_first") or p.get("userns_start")):
            _fail(f"process {p['pid']}: enter_first without userns_first or userns_start")
        for kind, owner in (p.get("ns_made_in") or {}).items():
            if kind not in ("pid", "uts", "ipc", "net", "cgroup") or not isinstance(owner, str) or owner not in users:
                _fail(f"process {p['pid']}: ns_made_in {str(kind)[:20]!r}: {str(owner)[:20]!r} is no namespace kind "
                      "and user namespace of the image")
        if p.get("ns_before_userns") and (not p.get("userns_first") or set(p["ns_before_userns"]) & set(
                p.get("host_ns") or ()) or len(set(p["ns_before_userns"])) != len(p["ns_before_userns"])):
            _fail(f"process {p['pid']}: ns_before_userns needs userns_first and names a namespace once, none of "
                  "the restorer's")
        if "userns_start" in p and (p["userns_start"] not in users or "userns" not in p):
            _fail(f"process {p['pid']}: userns_start needs a user namespace of its own")
        if p.get("pidns_children_early") and not (p.get("userns_first") and p.get("userns_start")
                                                  and "pidns_children" in p):
            _fail(f"process {p['pid']}: pidns_children_early needs userns_first, userns_start and pidns_children")
        _check_start(p, users, doc["mntns"])
    procs = {p["pid"]: p for p in doc["processes"]}
    for z in doc.get("zombies") or ():
        name = procs[z["ppid"]].get("userns")
        for key, m in (("uid", "uid_map"), ("gid", "gid_map")):
            bad = _unmapped(z.get(key) or (), users[name][m]) if name is not None else None
            if bad is not None:
                _fail(f"zombie {z['pid']}: its {key} {bad} is not mapped in its parent's user namespace {name}")
    for sid, sb in doc["superblocks"].items():
        if "owner" in sb and sb["owner"] not in users:
            _fail(f"superblock {sid}: unknown owner {sb['owner']!r}")
    for ns_id, ns in doc["mntns"].items():
        if "owner" in ns and ns["owner"] not in users:
            _fail(f"mount namespace {ns_id}: unknown owner {ns['owner']!r}")
        owned, root = "owner" in ns, ns["root"]
        by_id = {m["id"]: m for m in ns["mounts"]}
        for m in ns["mounts"]:
            if owned or "locked" in m or "locked_flags" in m:
                if (m.get("locked") or m.get("locked_flags")) and not owned:
                    _fail(f"mount {m['id']}: locked in {ns_id}, which no user namespace of the image owns")
                if owned and m.get("locked") and m.get("parent") == root and not by_id.get(root, {}).get("locked"):
                    # Restore mounts an unlocked root over its locked copy, which hides such a mount.
                    _fail(f"mount {m['id']}: locked on the unlocked root of {ns_id}, owned by {ns['owner']}")
            if ("idmap" in m) != ("idmapped" in m["mount_opts"]):
                _fail(f"mount {m['id']}: 'idmapped' and an idmap record go together")
            if "locked_flags" in m:
                for flag in m["locked_flags"] or ():
                    if flag != "atime" and flag not in m["mount_opts"]:
                        _fail(f"mount {m['id']}: flag {flag} is locked but not set")


def _check_counts(doc: dict) -> None:
    """Every count is bounded before the records are walked (a huge list costs nothing then)."""
    procs, mntns = doc["processes"], doc["mntns"]
    if not procs:
        _fail("no processes")
    if len(procs) + len(doc.get("zombies") or ()) > MAX_PROCESSES:
        _fail(f"{len(procs)} processes and {len(doc.get('zombies') or ())} zombies is absurd "
              f"(at most {MAX_PROCESSES} in all)")
    total = 0
    for ns_id, ns in mntns.items():
        check_record(MNTNS, ns, f"mount namespace {str(ns_id)[:40]}")
        total += len(ns["mounts"])
    if total > MAX_MOUNTS:
        _fail(f"{total} mounts is absurd (at most {MAX_MOUNTS})")
    nfds = nthreads = ntimers = 0
    for i, p in enumerate(procs):
        if type(p) is not dict or type(p.get("fds")) is not list or type(p.get("threads", [])) is not list \
                or type(p.get("posix_timers", [])) is not list:
            check_record(PROCESS, p, f"process #{i}")
        nfds += len(p["fds"])
        nthreads += len(p.get("threads", ()))
        ntimers += len(p.get("posix_timers", ()))
    if ntimers > posixtimers.MAX_ALL:   # (each one restore makes is kernel memory of the host's)
        _fail(f"{ntimers} POSIX timers is absurd (at most {posixtimers.MAX_ALL} in all)")
    if nfds > MAX_FDS:
        _fail(f"{nfds} fds is absurd (at most {MAX_FDS})")
    if nthreads + len(procs) > MAX_PID:   # (each thread has a pid of the host's)
        _fail(f"{nthreads} threads is absurd (at most {MAX_PID - len(procs)})")
    for key, hi in (("superblocks", MAX_MOUNTS), ("pidns", MAX_PROCESSES), ("detached", MAX_FDS),
                    ("ghosts", MAX_FDS + MAX_MOUNTS),
                    ("hostnames", MAX_PROCESSES), ("files", MAX_ARCHIVES)):
        if len(doc.get(key) or ()) > hi:
            _fail(f"{len(doc[key])} {key} is absurd (at most {hi})")


def _check_pidns_children(doc: dict, p: dict, what: str) -> None:
    """A process's pid namespace for children: below its own, and one a process is in (restore
    joins it through that process)."""
    want, pidns = p["pidns_children"], doc["pidns"]
    if want not in pidns or not any(q["ns"]["pid"] == want for q in doc["processes"] if type(q) is dict
                                    and type(q.get("ns")) is dict):
        _fail(f"{what}: pidns_children {want[:40]!r} is no pid namespace a process is in")
    cur = pidns[want].get("parent")
    while cur is not None and cur != p["ns"]["pid"]:
        cur = pidns[cur].get("parent")
    if cur is None:
        _fail(f"{what}: pidns_children {want!r} is not below its own pid namespace")


def _check_pidns(pidns: dict) -> None:
    for pid_id, p in pidns.items():
        if not _NS_ID.match(pid_id) or not pid_id.startswith("pid-"):
            _fail(f"pid namespace id {pid_id[:40]!r} is not pid-N")
        check_record(PIDNS, p, f"pid namespace {pid_id}")
        if p.get("parent") is not None and p["parent"] not in pidns:
            _fail(f"pid namespace {pid_id}: unknown parent {p['parent']!r}")
    for pid_id in pidns:   # parent chains end (no cycles)
        seen, cur = set(), pid_id
        while cur is not None:
            if cur in seen:
                _fail(f"pid namespace {pid_id}: parent cycle")
            seen.add(cur)
            cur = pidns[cur].get("parent")


def _check_mntns(mntns: dict, sbs: dict) -> dict[int, dict]:
    """Mount records, ids unique over all namespaces, one root each, every parent chain reaching it."""
    all_mounts: dict[int, dict] = {}
    for ns_id, ns in mntns.items():
        what = f"mount namespace {ns_id}"
        if not _NS_ID.match(ns_id) or not ns_id.startswith("mnt-"):
            _fail(f"mount namespace id {ns_id[:40]!r} is not mnt-N")
        by_id: dict[int, dict] = {}
        # A few mounts go through the loop (check_record): compiling the table costs more (~2 ms).
        check_mount = _compiled.get(MOUNT.name) or (
            _compile_into(MOUNT) if len(ns["mounts"]) > _COMPILE_AFTER else lambda m, w: check_record(MOUNT, m, w))
        for i, m in enumerate(ns["mounts"]):
            check_mount(m, ("mount {}", m.get("id")) if type(m) is dict else ("{} mount #{}", ns_id, i))
            mid = m["id"]
            if mid in all_mounts:
                _fail(f"{what}: duplicate mount id {mid}")
            all_mounts[mid] = by_id[mid] = m
            sb = sbs.get(m["sb"])
            if sb is None:
                _fail(f"mount {mid}: unknown superblock {m['sb']!r}")
            if m.get("external") is not None and not sb.get("external"):
                _fail(f"mount {mid}: external key {m['external']!r} on superblock {m['sb']}, which is not external")
        root = ns["root"]
        if root not in by_id:
            _fail(f"{what}: root mount {root} is not among its mounts")
        if by_id[root].get("parent") is not None:
            _fail(f"{what}: root mount {root} has a parent")
        if by_id[root]["mountpoint"] != "/":
            _fail(f"{what}: root mount {root} is not mounted at /")
        # Every mount reaches the root (no cycles, no second root), iteratively at any depth. Most
        # mounts come after their parent (mountinfo's order): `done` (reaches the root) at once.
        done, later = {root}, []
        for m in ns["mounts"]:
            mid = m["id"]
            if mid == root:
                continue
            parent = m.get("parent")
            if parent not in by_id:
                _fail(f"mount {mid}: parent {parent!r} is not in {ns_id}")
            base, mp = by_id[parent]["mountpoint"], m["mountpoint"]
            if not (base == "/" or mp == base or mp.startswith(base + "/")):   # (is_beneath)
                _fail(f"mount {mid}: mountpoint {mp} is outside its parent's {base}")
            if parent in done:
                done.add(mid)
            else:
                later.append(m)
        for m in later:
            chain, on_chain, cur = [], set(), m["id"]
            while cur not in done:
                if cur in on_chain:
                    _fail(f"mount {m['id']}: parent cycle")
                on_chain.add(cur)
                chain.append(cur)
                cur = by_id[cur].get("parent")
                if cur is None:
                    _fail(f"mount {m['id']}: does not reach the namespace root")
            done.update(chain)
    return all_mounts


def _check_detached(detached: dict, sbs: dict, mounts: dict) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for key, d in detached.items():
        what = f"detached mount {str(key)[:24]}"
        check_record(DETACHED, d, what)
        if str(d["id"]) != key or d["id"] in mounts or d["id"] in out:
            _fail(f"{what}: bad or duplicate id {d['id']}")
        if d["sb"] not in sbs:
            _fail(f"{what}: unknown superblock {d['sb']!r}")
        out[d["id"]] = d
    return out


def _check_superblocks(sbs: dict, files: dict, pidns: dict, mounts: dict, detached: dict) -> None:
    """What each superblock may carry follows from its filesystem type (engine/fs):

    - archives and an empty root only on types whose files are dumped (tmpfs, ramfs);
      never on a namespace-bound one (mqueue, cgroup2, proc, sysfs...: restore would
      write into the host's own when the namespace is the host's);
    - a block filesystem only with a device record: an external device the user maps at
      restore (key) or a loop device over a file of a content superblock of the image;
    - overlayfs only with its layers record, every layer path its options name recorded
      on a mount of the image; no layer cycle between overlays;
    - no super option naming a host device or file; a block source only under /dev;
    - a pid namespace only on proc, and proc always with one;
    - external superblocks are only bound from the paths the user maps: nothing to create.
    """
    from engine import fs
    used_sbs = {m["sb"] for m in mounts.values()} | {d["sb"] for d in detached.values()}
    # Roots that are no path (nsfs names like net:[N]) are rare: only external mounts may have one.
    odd_roots: dict[str, list[dict]] = {}
    for m in mounts.values():
        if m["root"][:1] != "/":
            odd_roots.setdefault(m["sb"], []).append(m)
    members: set[tuple[str, str]] = set()
    archive_bytes: dict[str, int] = {}
    # Per type and per option list (most superblocks share a few: image._Sharing), asked once.
    handlers: dict[str, object] = {}
    opts_ok: set[tuple[int, int]] = set()      # (ids of) a super_opts list of `sbs` and its type, checked
    limits: dict[int, int | None] = {}         # id of a super_opts list -> _size_limit
    roots: set[tuple[str, str]] | None = None   # (sb, root) of every mount and detached mount, once needed
    for sid, sb in sbs.items():
        what = f"superblock {sid} ({sb['fstype']})"
        handler = handlers.get(sb["fstype"], handlers)
        if handler is handlers:
            handler = handlers[sb["fstype"]] = fs.lookup(sb["fstype"])
        external = sb.get("external", False)
        if handler is None and not external and sid in used_sbs:
            _fail(f"{what}: filesystem type {sb['fstype']!r} is not supported")
        archives = sb.get("archives") or []
        content = handler is not None and handler.content and not external
        empties = empty_roots(sb)
        if (archives or empties) and not content:
            _fail(f"{what}: only a tmpfs or ramfs made by restore gets archived files "
                  f"({'external' if external else sb['fstype']} does not)")
        if len({e["root"] for e in empties}) < len(empties):
            _fail(f"{what}: an empty root is listed twice")
        if empties:
            # (dump records the root of a mount of it that held no files: any other path made
            # directories the tree never had, as many as a manifest holds)
            if roots is None:
                roots = set(map(itemgetter("sb", "root"), chain(mounts.values(), detached.values())))
            for e in empties:
                if (sid, e["root"]) not in roots:
                    _fail(f"{what}: empty root {e['root'][:80]!r} is the root of no mount of it")
        for a in archives:
            if a["file"] not in files:
                _fail(f"{what}: archive {a['file']!r} is not listed in 'files'")
            if (a["file"], a["member"]) in members:
                _fail(f"{what}: duplicate archive member {a['file']}:{a['member']}")
            members.add((a["file"], a["member"]))
            limit = limits.get(id(sb["super_opts"]), limits)
            if limit is limits:
                limit = limits[id(sb["super_opts"])] = _size_limit(sb)
            if archive_bytes.get(a["file"], 0) is not None:
                archive_bytes[a["file"]] = None if limit is None else archive_bytes.get(a["file"], 0) + limit
        if not external and (id(sb["super_opts"]), id(handler)) not in opts_ok:
            _check_super_opts(what, sb["super_opts"], handler)
            opts_ok.add((id(sb["super_opts"]), id(handler)))
        if sb.get("pidns") is not None:
            if handler is None or handler.ns_key != "pidns":
                _fail(f"{what}: a pid namespace only belongs to a proc superblock")
            if sb["pidns"] not in pidns:
                _fail(f"{what}: unknown pid namespace {sb['pidns']!r}")
        device, layers = sb.get("device"), sb.get("layers")
        if not external:
            for m in odd_roots.get(sid, ()):
                _fail(f"mount {m['id']}: root {m['root']!r} is no path; only an external mount may have that")
        if external or handler is None:
            if layers is not None or (device or {}).get("loop") or (device or {}).get("key") \
                    or sb.get("input") is not None or sb.get("payload") is not None:
                _fail(f"{what}: an external superblock is bound from the host path given at restore; "
                      "it has no device or layers to create it from")
            continue
        if handler.device:
            _check_device(what, sid, sb, device, sbs)
        elif device is not None:
            _fail(f"{what}: a device record only belongs to a block filesystem")
        if handler.layers:
            _check_layers(what, sb, handler, layers, mounts, detached)
        elif layers is not None:
            _fail(f"{what}: a layers record only belongs to an overlay")
        if sb.get("input") is not None:
            _check_input(what, sid, sb, handler, sbs)
        if sb.get("payload") is not None and (bad := handler.check_payload(what, sb)):
            _fail(bad)
        if handler.ns_key == "pidns" and sid in used_sbs and not sb.get("pidns"):
            _fail(f"{what}: a proc superblock needs its pid namespace")
    for name, limit in archive_bytes.items():
        # (+ the end of archive and tar's padding to its 10 KiB record)
        if limit is not None and limit + 10240 < files[name]["size"]:
            _fail(f"archive {name}: {files[name]['size']} bytes is more than its superblocks may hold ({limit})")
    _check_overlay_cycles(sbs, mounts, detached)


def _check_layers(what: str, sb: dict, handler, layers, mounts: dict, detached: dict) -> None:
    """An overlay's layers record: every layer its options name recorded, each on a mount (or a
    detached mount) of the image."""
    if layers is None:
        _fail(f"{what}: an overlay needs its layers record (layers come only from mounts of the image)")
    recorded = {x["path"] for x in layers}
    for key, path in handler.layer_paths(sb["super_opts"]):
        if path not in recorded:
            _fail(f"{what}: layer {key}={path[:200]} is not in its layers record")
    for x in layers:
        if x.get("detached"):
            if x["mnt"] not in detached:
                _fail(f"{what}: layer {x['path']} lies on detached mount {x['mnt']}, which is not in the image")
        elif x["mnt"] not in mounts:
            _fail(f"{what}: layer {x['path']} lies on mount {x['mnt']}, which is not in the image")


def _check_input(what: str, sid: str, sb: dict, handler, sbs: dict) -> None:
    """A daemon-served superblock's input file lies on a tmpfs or ramfs of the image."""
    from engine import fs
    inp = sb["input"]
    base = sbs.get(inp["sb"])
    base_type = fs.lookup(base["fstype"]) if base is not None else None
    if not handler.daemon:
        _fail(f"{what}: an input file only belongs to a filesystem served by a daemon (fuse)")
    if base is None or base.get("external") or base_type is None or not base_type.content or inp["sb"] == sid:
        _fail(f"{what}: its input file must lie on a tmpfs or ramfs of the image (not {inp['sb']!r})")


def _check_super_opts(what: str, opts: list, handler) -> None:
    """No super option naming a host device or file (`handler`: the superblock's type, or None)."""
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key in HOST_OPTS:
            _fail(f"{what}: super option {key!r} names a device or file of the host: refused")
        # (options restore never passes back, like btrfs subvol=/x, name paths inside the fs)
        if value.startswith("/") and not (handler is not None and (key in handler.drop_opts
                                                                   or key in handler.path_opts)):
            _fail(f"{what}: super option {opt[:80]!r} names a host path: refused")


def _check_ghosts(ghosts: dict, sbs: dict, files: dict, mounts: dict, detached: dict) -> None:
    """Ghosts lie on a tmpfs, ramfs or overlay the image makes (fs.holds_ghosts), each its own archive member (one no
    superblock extracts), named as the last part of its path; a mount made from a ghost has
    the ghost's superblock and path as its own (fds are checked with their processes)."""
    from engine import fs
    taken = {(a["file"], a["member"]) for sb in sbs.values() for a in sb.get("archives") or ()}
    for gid, g in ghosts.items():
        what = f"ghost {str(gid)[:24]}"
        if not _GHOST_ID.match(gid):
            _fail(f"ghost id {gid[:40]!r} is not g-N")
        check_record(GHOST, g, what)
        sb = sbs.get(g["sb"])
        if sb is None or sb.get("external") or not fs.holds_ghosts(sb["fstype"]):
            _fail(f"{what}: it must lie on a tmpfs, ramfs or overlay of the image (not {g['sb']!r})")
        if g["path"] == "/":
            _fail(f"{what}: a ghost is not the root of its filesystem")
        names = [g["path"], *(g.get("links") or ())]
        if len(set(names)) != len(names) or g.get("linked") in names:
            _fail(f"{what}: its names must differ from each other and from 'linked'")
        if g.get("uncover"):
            _check_uncover(what, g, sb, sbs, mounts, detached)
            continue
        if g.get("linked") is not None:
            if any(k in g for k in ("file", "member", "only")):
                _fail(f"{what}: a ghost 'linked' to a name of its file has no archive")
            continue
        if any(k not in g for k in ("file", "member", "only")):
            _fail(f"{what}: needs 'file', 'member' and 'only' (its archive), or 'linked'")
        if g["path"].rsplit("/", 1)[1] != g["only"]:
            _fail(f"{what}: 'only' must be the last name of its path {g['path'][:80]}")
        if g["file"] not in files:
            _fail(f"{what}: archive {g['file']!r} is not listed in 'files'")
        if (g["file"], g["member"]) in taken:
            _fail(f"{what}: duplicate archive member {g['file']}:{g['member']}")
        taken.add((g["file"], g["member"]))
    for m in mounts.values():
        gid = m.get("ghost")
        if gid is not None and (gid not in ghosts or ghosts[gid]["sb"] != m["sb"] or ghosts[gid]["path"] != m["root"]):
            _fail(f"mount {m['id']}: ghost {gid!r} is unknown or not its deleted root")


def _check_uncover(what: str, g: dict, sb: dict, sbs: dict, mounts: dict, detached: dict) -> None:
    """A ghost restore uncovers (`uncover`: a whiteout of its superblock's layer taken out as root)
    has no archive and no other name, on a type that uncovers, whose layer lies on a mount the image
    makes: never a whiteout of the host's files."""
    from engine import fs
    if any(k in g for k in ("file", "member", "only", "linked", "links")):
        _fail(f"{what}: an uncovered ghost has no archive and no other name")
    layer = fs.lookup(sb["fstype"]).uncover_layer(sb)
    if layer is None:
        _fail(f"{what}: its filesystem ({sb['fstype']}) has no layer to uncover it in")
    m = (detached if layer.get("detached") else mounts).get(layer["mnt"])
    lsb = None if m is None else sbs.get(m["sb"])
    if lsb is None or lsb.get("external"):
        _fail(f"{what}: the layer it is uncovered in must lie on a filesystem the image makes")


def _check_device(what: str, sid: str, sb: dict, device: dict | None, sbs: dict) -> None:
    """A block superblock made by restore: from the user's --external dev[KEY] or an image loop file."""
    if device is None or (device.get("key") is None) == (device.get("loop") is None):
        _fail(f"{what}: a block filesystem is mounted only from the device the user maps at restore "
              "(--external dev[KEY]:PATH) or a loop file of the image: it needs a device record with one of them")
    if device.get("unresolved"):
        _fail(f"{what}: its device was not resolved at dump")
    src = sb["source"]
    if src.startswith("/") and not src.startswith("/dev/"):
        _fail(f"{what}: source {src[:80]!r} is not a device name under /dev")
    if src.startswith("/"):
        check_abs_path(src, f"{what} source")
    loop = device.get("loop")
    if loop is not None:
        from engine import fs
        base = sbs.get(loop["sb"])
        handler = fs.lookup(base["fstype"]) if base is not None else None
        if base is None or base.get("external") or handler is None or not handler.content or loop["sb"] == sid:
            _fail(f"{what}: its loop file must lie on a tmpfs or ramfs of the image (not {loop['sb']!r})")


def _size_limit(sb: dict) -> int | None:
    """The most archive bytes a tmpfs may take by its size= and nr_inodes= options (None: no limit
    shown, e.g. ramfs): twice the data (sparse and block padding) plus two 512-byte blocks an inode
    (header, long name), or 64 MiB of headers when nr_inodes is not shown."""
    size = inodes = None
    for opt in sb["super_opts"]:
        key, _, v = opt.partition("=")
        if key in ("size", "nr_inodes") and v:
            mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(v[-1].lower(), 1)
            digits = v[:-1] if mult != 1 else v
            if digits.isdigit():
                if key == "size":
                    size = int(digits) * mult
                else:
                    inodes = int(digits) * mult
    if not size:  # size=0 is "no limit" too
        return None
    return 2 * size + (1024 * inodes if inodes else 64 << 20)


def _check_overlay_cycles(sbs: dict, mounts: dict, detached: dict) -> None:
    """An overlay whose layer lies (through other overlays) on itself could never be made."""
    deps = {sid: {(detached if x.get("detached") else mounts)[x["mnt"]]["sb"] for x in sb.get("layers") or ()}
            for sid, sb in sbs.items() if sb.get("layers")}
    for start in deps:
        seen, stack = set(), [start]
        while stack:
            cur = stack.pop()
            for nxt in deps.get(cur, ()):
                if nxt == start:
                    _fail(f"superblock {start} (overlay): its layers lie on itself (a layer cycle)")
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)


def _check_places(doc: dict, p: dict, what: str, mounts: dict, detached: dict, refs: "_Refs") -> None:
    """Where process p is and what it maps: root, cwd, mappings, its terminal's node, executable."""
    for key in ("root", "cwd"):
        _check_loc(p[key], mounts, detached, f"{what} {key}")
        _check_ghost_ref(doc, p[key], mounts, f"{what} {key}")
        if "dead_pid" in p[key]:
            refs.check(f"{what} {key}", "proc", p[key], "a /proc file ('dead_pid')")
    for loc in p.get("maps") or []:
        _check_loc(loc, mounts, detached, f"{what} mapping")
        _check_ghost_ref(doc, loc, mounts, f"{what} mapping")
    if "ctty_node" in p:
        if p.get("sid") != p["pid"]:   # (only a session leader takes a terminal: restore ignored it)
            _fail(f"{what} ctty_node: the process leads no session")
        _check_ctty_node(doc, p["ctty_node"], mounts, f"{what} ctty_node")
    if "exe" in p:
        _check_loc(p["exe"], mounts, detached, f"{what} executable")
        _check_ghost_ref(doc, p["exe"], mounts, f"{what} executable")


def _check_processes(doc: dict, mounts: dict, detached: dict) -> None:
    mntns, pidns = doc["mntns"], doc["pidns"]
    pids: set[int] = set()
    uts_used = set()
    forked: set = set()   # processes restore forks for fds (FdKind.forks)
    refs = _Refs(doc, mounts, detached)
    for i, p in enumerate(doc["processes"]):
        what = f"process {p['pid']}" if type(p) is dict and type(p.get("pid")) is int else f"process #{i}"
        check_record(PROCESS, p, what)
        pid = p["pid"]
        if pid in pids:
            _fail(f"duplicate process {pid}")
        pids.add(pid)
        ns = p["ns"]
        if set(ns) != set(NS_KINDS):
            _fail(f"{what}: 'ns' must name exactly the namespaces {', '.join(NS_KINDS)}")
        for kind, nsid in ns.items():
            if type(nsid) is not str or not _NS_ID.match(nsid) or not nsid.startswith(kind + "-"):
                _fail(f"{what}: {kind} namespace {str(nsid)[:40]!r} is not {kind}-N")
        if ns["mnt"] not in mntns:
            _fail(f"{what}: unknown mount namespace {ns['mnt']!r}")
        if ns["pid"] not in pidns:
            _fail(f"{what}: unknown pid namespace {ns['pid']!r}")
        if "pidns_children" in p:
            _check_pidns_children(doc, p, what)
        uts_used.add(ns["uts"])
        if len(set(p.get("host_ns") or ())) != len(p.get("host_ns") or ()):
            _fail(f"{what}: 'host_ns' names a namespace twice")
        _check_places(doc, p, what, mounts, detached, refs)
        seen_fd = set()
        for fd in p["fds"]:
            fwhat = f"{what} fd {fd['fd']}" if type(fd) is dict and type(fd.get("fd")) is int else f"{what} fd"
            if type(fd) is dict and "external" in fd:
                check_record(EXTERNAL_FD, fd, fwhat)
                if fd.get("kind", "file") != "file":
                    _fail(f"{fwhat}: an external file is of kind file")
                _check_fown(fd, refs, fwhat)
                if fd["fd"] in seen_fd:
                    _fail(f"{what}: duplicate fd number {fd['fd']}")
                seen_fd.add(fd["fd"])
                continue
            kind = _fd_kind(fd, fwhat)
            check_record(FD if kind.name == "file" else _kind_record(kind), fd, fwhat)
            _check_fown(fd, refs, fwhat)
            kind.check(fd, fwhat)
            refs.own_netns(p, kind, fwhat)
            if "obj" in fd and fd["obj"] not in (doc.get("objects") or {}):
                _fail(f"{fwhat}: unknown object {fd['obj']!r}")
            if "obj" in fd and doc["objects"][fd["obj"]]["kind"] != (kind.obj_kind or kind.name):
                # (the kind that makes it reads its own kind's fields: a pipe's size, a memfd's name)
                _fail(f"{fwhat}: object {fd['obj']} is a {doc['objects'][fd['obj']]['kind']}, not what an fd of "
                      f"kind {kind.name} names")
            if kind.forks(fd) is not None:
                forked.add(kind.forks(fd))
            for mnt in kind.mounts(fd):
                if mnt not in mounts:
                    _fail(f"{fwhat}: unknown mount {mnt}")
            if "ptmx" in fd and kind.name in ("pty", "ctty"):
                _check_ptmx(doc, fd["ptmx"], mounts, f"{fwhat} ptmx")
            if kind.name == "pty" and fd.get("ctty"):
                _check_own_pty(doc, fd, mounts, f"{fwhat} (its controlling terminal)")
            elif kind.name == "ctty" and "tty" in fd:
                _check_pty_node(doc, fd["tty"], mounts, f"{fwhat} (its controlling terminal)")
            _check_ghost_ref(doc, fd, mounts, fwhat)
            if fd["fd"] in seen_fd:
                _fail(f"{what}: duplicate fd number {fd['fd']}")
            seen_fd.add(fd["fd"])
            if kind.placed:
                _check_loc(fd, mounts, detached, fwhat)
            for ref, value, text in kind.refs(fd):
                refs.check(fwhat, ref, value, text)
    if len(doc["processes"]) + len(forked) + len(doc.get("zombies") or ()) > MAX_PROCESSES:
        _fail(f"{len(doc['processes'])} processes and {len(forked)} more that fds name (restore forks one for "
              f"each) is absurd (at most {MAX_PROCESSES} in all)")
    procs = {p["pid"]: p for p in doc["processes"]}
    for p in doc["processes"]:
        _check_file_locks(p, procs, f"process {p['pid']}")
        _check_timers(p, f"process {p['pid']}")
    # Stand-ins are forked parents first: the first process is the root of the tree, every
    # other one's parent comes before it (so there is no cycle either).
    earlier: set[int] = set()
    for i, p in enumerate(doc["processes"]):
        ppid = p.get("ppid")
        if i == 0 and ppid is not None:
            _fail(f"process {p['pid']}: the first process is the root of the tree and has no parent in it")
        if i == 0 and "pdeathsig" in p:
            _fail(f"process {p['pid']}: the root's parent-death signal is not kept (its parent is outside the tree)")
        if i > 0 and ppid not in earlier:
            _fail(f"process {p['pid']}: parent {ppid} is not listed before it in the image")
        earlier.add(p["pid"])
    _check_sysvipc(doc)
    _check_net(doc)
    for key, what in (("hostnames", "hostname"), ("domainnames", "domain name")):
        for uts, name in (doc.get(key) or {}).items():
            if uts not in uts_used:
                _fail(f"{what} for {str(uts)[:40]!r}, a uts namespace no process is in")
            # (bytes, as the kernel counts them: 64 characters of two bytes each failed at restore
            # with a bare "Invalid argument")
            if type(name) is not str or not _fits_bytes(name, MAX_HOSTNAME):
                _fail(f"{what} of {uts}: must be a string of at most {MAX_HOSTNAME} bytes (UTF-8) without NUL")


def _check_timers(p: dict, what: str) -> None:
    """A process's timers (engine/posixtimers.py, engine/itimers.py): one of each id (each kind of
    interval timer); a signal exactly for those that deliver one; a notified thread, or one whose
    CPU clock it runs on, one of the process's (its stand-in makes that timer once it made the
    thread); the caught timer signals among those its timers deliver (engine/timersigs.py)."""
    from engine import timersigs
    timers = p.get("posix_timers") or ()
    if len({t["id"] for t in timers}) != len(timers):
        _fail(f"{what}: two POSIX timers with one id")
    for t in timers:
        if ("signo" in t) != (t["notify"] != "none") or ("sigval" in t) != ("signo" in t):
            _fail(f"{what}: POSIX timer {t['id']}: a signal and its value exactly when it notifies by one")
        if ("thread" in t) != (t["notify"] == "thread"):
            _fail(f"{what}: POSIX timer {t['id']}: a thread exactly when it notifies one")
        if t.get("thread", 0) > len(p.get("threads") or ()):
            _fail(f"{what}: POSIX timer {t['id']} notifies thread {t['thread']}, which the process does not have")
        if "clock_thread" in t and (t["clock"] != posixtimers.THREAD_CLOCK
                                    or t["clock_thread"] > len(p.get("threads") or ())):
            _fail(f"{what}: POSIX timer {t['id']}: clock_thread names a thread of the process, on clock "
                  f"{posixtimers.THREAD_CLOCK} only")
    which = [t["which"] for t in p.get("itimers") or ()]
    if len(set(which)) != len(which):
        _fail(f"{what}: two interval timers of one kind")
    if p.get("timer_sig_caught", 0) & (1 << 8 | 1 << 18):
        _fail(f"{what}: timer_sig_caught names SIGKILL or SIGSTOP: SIGKILL and SIGSTOP cannot be caught")
    extra = p.get("timer_sig_caught", 0) & ~sum(1 << (s - 1) for s in timersigs.delivered(p))
    if extra:
        _fail(f"{what}: timer_sig_caught names signals no timer of it delivers ({extra:#x})")


def _check_sysvipc(doc: dict) -> None:
    """The ipc objects (engine/sysvipc.py) only of namespaces restore makes: no process may have
    one as the host's (restore would join the host's namespace for it); the processes' attachments
    only of those objects."""
    if "sysvipc" in doc:
        from engine import sysvipc
        host = {p["ns"]["ipc"] for p in doc["processes"] if "ipc" in (p.get("host_ns") or ())}
        sysvipc.check(doc["sysvipc"], {p["ns"]["ipc"] for p in doc["processes"]} - host, _fail)
    _check_shm_attachments(doc)


def _check_shm_attachments(doc: dict) -> None:
    """Each process's System V attachments (engine/shmattach.py) only of segments the image makes in
    its own ipc namespace."""
    for p in doc["processes"]:
        if "shm" in p:
            from engine import shmattach   # (only then)
            own = (doc.get("sysvipc") or {}).get(p["ns"]["ipc"]) or {}
            ids = set() if "ipc" in (p.get("host_ns") or ()) else {s["id"] for s in own.get("shm", ())}
            why = shmattach.check(p["shm"], ids)
            if why:
                _fail(f"process {p['pid']}: shm: {why}")


def _check_net(doc: dict) -> None:
    """The network namespaces' sysctls and devices (`_check_netvars`), the tun fds attached to those
    devices (engine/tundev.py), the packet sockets' rings together (engine/fds/packet.py)."""
    if "netvars" in doc or "net_lo_up" in doc or "netdevs" in doc or "netfilter" in doc:
        _check_netvars(doc)
    if any(f.get("kind") == "tun" and "dev" in f for p in doc["processes"] for f in p["fds"]):
        from engine import tundev
        tundev.check_attached(doc, _net_made(doc), _fail)
    if any(f.get("kind") == "packet" and f.get("rings") for p in doc["processes"] for f in p["fds"]):
        from engine.fds import packet
        packet.check_total(doc, _fail)


def _net_made(doc: dict) -> set[str]:
    """The network namespaces restore makes: those of the processes and the lone ones bound, never
    one a process has as the host's."""
    host = {p["ns"]["net"] for p in doc["processes"] if "net" in (p.get("host_ns") or ())}
    lone = {n for sb in (doc.get("superblocks") or {}).values() for n in sb.get("lone_ns") or ()}   # (_check_bound_ns)
    return ({p["ns"]["net"] for p in doc["processes"]} | lone) - host


def _check_netvars(doc: dict) -> None:
    """A network namespace's own sysctls (engine/netvars.py) and devices (engine/netlinks.py) only of
    namespaces restore makes: no process may have one as the host's (restore would write the host's)."""
    from engine import netvars
    made = _net_made(doc)
    for nsid, kept in (doc.get("netvars") or {}).items():
        if nsid not in made:
            _fail(f"netvars for {str(nsid)[:40]!r}: not a network namespace restore makes")
        netvars.check(kept, f"netvars {nsid}", _fail)
    if "netdevs" in doc:   # (a device only in a namespace restore makes: never the restorer's own)
        from engine import netlinks
        netlinks.check(doc["netdevs"], made, _fail)
    if "netfilter" in doc:   # (rules only for a namespace restore makes: never the restorer's own)
        from engine import netfilter
        netfilter.check(doc["netfilter"], made, doc.get("netdevs") or {}, _fail)
    ups = doc.get("net_lo_up") or []
    if not all(type(u) is str for u in ups) or len(set(ups)) != len(ups) or not set(ups) <= made:
        _fail("net_lo_up: network namespaces restore makes, each once")


class _Refs:
    """What an fd or cwd may name elsewhere in the image: a pid, a namespace, a proc mount. Restore
    would make such an fd from whatever the restorer has under that name (its own pid namespace's
    process 1, its own network namespace), or look /proc files up beneath a mount of the image's
    own files, where a FIFO blocks the lookup forever."""

    def __init__(self, doc: dict, mounts: dict, detached: dict):
        procs = [p for p in doc["processes"] if type(p) is dict]
        self.pids = {p.get("pid") for p in procs}
        self.ns = {n for p in procs if type(p.get("ns")) is dict for n in p["ns"].values() if type(n) is str}
        self.users = doc.get("userns") or {}
        self.sbs, self.mounts, self.detached = doc["superblocks"], mounts, detached
        # (network namespaces restore joins, the restorer's own: FdKind.own_netns)
        self.host_net = {p["ns"].get("net") for p in procs if type(p.get("ns")) is dict
                         and type(p.get("host_ns")) is list and "net" in p["host_ns"]}

    def own_netns(self, p: dict, kind, what: str) -> None:
        """Refuse an fd of `kind` made in its process's network namespace (FdKind.own_netns: a socket bound
        to its ports) when that is the restorer's own: an image never makes restore bind in a namespace it
        did not create."""
        if kind.own_netns and ("net" in (p.get("host_ns") or ()) or p["ns"]["net"] in self.host_net):
            _fail(f"{what}: a {kind.name} socket of the restorer's own network namespace (restore makes such "
                  "sockets only in a network namespace it creates)")

    def check(self, what: str, ref: str, value, text: str) -> None:
        """Refuse `value` (for "proc": the location, {mnt, detached?}) unless the image has it."""
        if ref == "process" and value not in self.pids:
            _fail(f"{what}: {text}, which is no process of the image")
        if ref == "namespace" and str(value).startswith("user-") and value not in self.users:
            _fail(f"{what}: {text}, which is no user namespace of the image")
        if ref == "namespace" and not str(value).startswith("user-") and value not in self.ns:
            _fail(f"{what}: {text}, which no process of the image is in")
        if ref == "private":
            from engine import fs
            sb = self.sbs[self.mounts[value["mnt"]]["sb"]] if value["mnt"] in self.mounts else None
            if sb is None or sb.get("external") or not fs.made_for_image(sb["fstype"]):
                _fail(f"{what}: {text} on mount {value['mnt']}, whose filesystem restore does not make for the "
                      "image alone (the host's accesses to it would wait for a stand-in that never answers)")
        if ref == "proc":
            from engine import fs
            m = (self.detached if value.get("detached") else self.mounts).get(value["mnt"])
            handler = fs.lookup(self.sbs[m["sb"]]["fstype"]) if m is not None else None
            if handler is None or handler.ns_key != "pidns":
                _fail(f"{what}: {text} on mount {value['mnt']}, which is no proc mount of the image")


def _check_fown(fd: dict, refs: "_Refs", what: str) -> None:
    """Signal owner fields: the owner a process of the image (restore would make a host process the
    signal's target otherwise)."""
    for key in ("async_tid", "async_pgrp"):
        if key in fd and "async_owner" not in fd:
            _fail(f"{what}: '{key}' without 'async_owner'")
    if fd.get("async_tid") and fd.get("async_pgrp"):
        _fail(f"{what}: a signal owner is a thread or a process group, not both")
    if fd["flags"] & os.O_PATH and (fd["flags"] & O_ASYNC or "async_owner" in fd or "async_signal" in fd):
        # (fcntl refuses them on such a description, and dump keeps none: it would fail once the tree is made)
        _fail(f"{what}: an O_PATH fd has no signal owner, signal or O_ASYNC")
    if "async_owner" in fd:
        refs.check(what, "process", fd["async_owner"], f"its signal owner (F_SETOWN) {fd['async_owner']}")


def _check_ctty_node(doc: dict, node, mounts: dict, what: str) -> None:
    """A leader's terminal node (engine/ctty.py): on mounts of the image, naming a pty object."""
    from engine.fds import pty
    pty.check_node(node, what)
    for mnt in (node["mnt"], node["ptmx"]["mnt"]):
        if mnt not in mounts:
            _fail(f"{what}: unknown mount {mnt}")
    if (doc.get("objects") or {}).get(node["obj"], {}).get("kind") != "pty":
        _fail(f"{what}: {node['obj'][:40]!r} is no pty of the image")
    _check_own_pty(doc, node, mounts, what)
    m = mounts[node["ptmx"]["mnt"]]
    if m.get("external") is not None or doc["superblocks"].get(m.get("sb"), {}).get("external"):
        # (its master is the tree's, on the devpts restore makes for the node: never a host file)
        _fail(f"{what}: its ptmx lies on external mount {m.get('id')}")
    _check_ptmx(doc, node["ptmx"], mounts, f"{what} ptmx")


def _check_ptmx(doc: dict, ptmx: dict, mounts: dict, what: str) -> None:
    """Where a pty master is opened again (restore opens it read-write until the kernel hands out
    the pty's number): on an external mount (the host's files) only a node called ptmx (the host's
    devpts the user gave; dump records that name), never another host file or device."""
    m = mounts[ptmx["mnt"]]
    if m.get("external") is None and not doc["superblocks"].get(m.get("sb"), {}).get("external"):
        return
    in_sb = m.get("root", "/") if ptmx["path"] == "/" else str(m.get("root", "/")).rstrip("/") + ptmx["path"]
    if in_sb.rsplit("/", 1)[-1] != "ptmx":
        _fail(f"{what}: {ptmx['path'][:60]!r} on external mount {m.get('id')} is no ptmx")


def _check_own_pty(doc: dict, node: dict, mounts: dict, what: str) -> None:
    """A terminal a stand-in takes (TIOCSCTTY) through a node of a pty of the tree: only the node of
    that pty's number on a devpts the restore makes (never a host terminal on an external one)."""
    m = mounts.get(node.get("mnt"))
    if m is None:
        _fail(f"{what}: unknown mount {str(node.get('mnt'))[:40]}")
    sb = doc["superblocks"].get(m.get("sb"), {})
    # (its path in the superblock: a pty bound as /dev/console is its mount's root, "/N")
    in_sb = m.get("root", "/") if node["path"] == "/" else str(m.get("root", "/")).rstrip("/") + node["path"]
    if sb.get("fstype") != "devpts" or sb.get("external") or m.get("external") is not None \
            or in_sb.rsplit("/", 1)[-1] != str(doc["objects"][node["obj"]].get("index")):
        _fail(f"{what}: not the node of its pty on a devpts mount the restore makes")


def _check_pty_node(doc: dict, node: dict, mounts: dict, what: str) -> None:
    """The terminal a /dev/tty fd names (its stand-in takes it, TIOCSCTTY): a pty's node on a devpts
    mount, as dump records it; on an external one a terminal of the host the user gave, never
    another device of an external mount (a console, a virtual terminal)."""
    m = mounts[node["mnt"]]
    in_sb = m.get("root", "/") if node["path"] == "/" else str(m.get("root", "/")).rstrip("/") + node["path"]
    number = in_sb.rsplit("/", 1)[-1]
    if doc["superblocks"].get(m.get("sb"), {}).get("fstype") != "devpts" or not (number.isascii() and number.isdigit()):
        _fail(f"{what}: not the node of a pty on a devpts mount")


def _check_sessions(doc: dict) -> None:
    """The sessions and process groups of the processes and zombies (made after them) can be made
    (engine/sessions.py: the stand-ins only inherit, setsid and setpgid), and so can the controlling
    terminals of the members of sessions (engine/ctty.py)."""
    problem = sessions.plan(zombies.in_order(doc["processes"], doc.get("zombies") or ())).problem
    if problem is not None:
        what = {"session": "session", "pgrp": "process group", "foreground": "terminal's foreground group"}[problem[1]]
        _fail(f"process {problem[0]}: its {what} {problem[2]} can be neither inherited nor made (engine/sessions.py)")
    problem = ctty.plan(doc["processes"]).problem
    if problem is not None:
        _fail(f"process {problem[0]}: its controlling terminal cannot be made ({problem[1]}: engine/ctty.py)")


def _check_zombies(doc: dict) -> None:
    """Zombie records: pids of their own (none a live process's), each the child of a live process
    of the image (its stand-in forks it); its ids are checked with the user namespaces."""
    procs = {p["pid"]: p for p in doc["processes"]}
    pids = set(procs)
    seen = set()
    for i, z in enumerate(doc.get("zombies") or ()):
        what = f"zombie {z['pid']}" if type(z) is dict and type(z.get("pid")) is int else f"zombie #{i}"
        check_record(ZOMBIE, z, what)
        if z["pid"] in pids or z["pid"] in seen:
            _fail(f"{what}: its pid is another process's")
        seen.add(z["pid"])
        parent = procs.get(z["ppid"])
        if parent is None:
            _fail(f"{what}: parent {z['ppid']} is no live process of the image")
        if ("uid" in z) != ("gid" in z):
            _fail(f"{what}: 'uid' and 'gid' go together")
        if z.get("pidns_init") and zombies.init_status_problem(z["status"]):
            _fail(f"{what}: {zombies.init_status_problem(z['status'])}")
    for p in doc["processes"]:
        want = p.get("pidns_children_zombie")
        if want is not None and not any(z["pid"] == want and z["ppid"] == p["pid"] and z.get("pidns_init")
                                         for z in doc.get("zombies") or ()):
            _fail(f"process {p['pid']}: pidns_children_zombie {want} is no zombie child of it that was init "
                  "of a pid namespace")
        if sum(k in p for k in ("pidns_children", "pidns_children_zombie", "pidns_children_new")) > 1:
            _fail(f"process {p['pid']}: pidns_children, pidns_children_zombie and pidns_children_new exclude "
                  "each other")


def _check_file_locks(p: dict, procs: dict, what: str) -> None:
    """A process's file locks: each on one of its fds (a flock lock: or of process `of`'s, another
    process of the image), a range that is one (flock locks and leases cover the whole file), a
    lease only on a regular file, one lock of a kind and range an fd."""
    fds = {fd["fd"]: fd for fd in p["fds"]}
    seen = set()
    for lock in p.get("locks") or ():
        lwhat = f"{what} {lock['type']} lock on fd {lock['fd']}"
        if "of" in lock:
            if lock["type"] != "flock" or lock["of"] == p["pid"] or lock["of"] not in procs:
                _fail(f"{lwhat}: 'of' names a flock lock's holder, another process of the image")
            lwhat += f" of process {lock['of']}"
        if lock.get("gone") and (lock["type"] != "flock" or "of" in lock):
            _fail(f"{lwhat}: 'gone' is for a flock lock on the process's own fd")
        fd = (fds if "of" not in lock else {f["fd"]: f for f in procs[lock["of"]]["fds"]}).get(lock["fd"])
        if fd is None:
            _fail(f"{lwhat}: the process has no such fd")
        if lock["end"] is not None and lock["end"] < lock["start"]:
            _fail(f"{lwhat}: its range ends before it starts")
        if lock["type"] in ("flock", "lease") and (lock["start"] or lock["end"] is not None):
            _fail(f"{lwhat}: a {lock['type']} covers the whole file (0 to EOF)")
        if lock["type"] == "lease" and (fd.get("kind", "file") != "file" or fd.get("type") == "dir"):
            _fail(f"{lwhat}: a lease is on a regular file")
        if lock["type"] == "lease" and lock["mode"] == "write":
            # (an open of the file by anyone, a host process too when it is an external file, waits
            # for the lease's holder to give it up: a stand-in never does, so for lease-break-time)
            _fail(f"{lwhat}: a write lease: dump never records one (engine/filelocks.py)")
        key = (lock["fd"], lock.get("of"), lock["type"], lock["start"], lock["end"])
        if key in seen:
            _fail(f"{lwhat}: listed twice")
        seen.add(key)


def _check_ghost_ref(doc: dict, loc: dict, mounts: dict, what: str) -> None:
    """A location reopened from a ghost: the ghost exists and lies on the superblock of its mount."""
    gid = loc.get("ghost")
    if gid is not None:
        g = (doc.get("ghosts") or {}).get(gid)
        if g is None or loc.get("detached") or loc["mnt"] not in mounts or mounts[loc["mnt"]]["sb"] != g["sb"]:
            _fail(f"{what}: ghost {gid!r} is unknown or on another filesystem")


def _check_loc(loc: dict, mounts: dict, detached: dict, what: str) -> None:
    if loc.get("detached"):
        if loc["mnt"] not in detached:
            _fail(f"{what}: unknown detached mount {loc['mnt']}")
    elif loc["mnt"] not in mounts:
        _fail(f"{what}: unknown mount {loc['mnt']}")


# --- fd kinds (engine/fds/) ---------------------------------------------------------------------

_KIND_RECORDS: dict[str, Record] = {}


def _fd_kind(fd, what: str):
    """The FdKind of an fd entry (refused when unknown)."""
    from engine import fds
    name = fd.get("kind", "file") if type(fd) is dict else "file"
    kind = fds.lookup(name) if type(name) is str else None
    if kind is None:
        _fail(f"{what}: unknown fd kind {str(name)[:40]!r}")
    return kind


def _kind_record(kind) -> Record:
    """The record of an fd of `kind`: the common fields, location fields when placed, its own."""
    rec = _KIND_RECORDS.get(kind.name)
    if rec is None:
        placed = {**LOC_FIELDS, "outside": F(BOOL, required=False)} if kind.placed else {}
        rec = Record(f"fd ({kind.name})", {**FD_BASE, **placed, **kind.fields})
        _KIND_RECORDS[kind.name] = rec
        _REQUIRED[rec.name] = rec.required
    return rec


def _check_inflight_descs(doc: dict) -> None:
    """The fds in flight that share a description with other fds (engine/fds/unix_check.py; loaded
    only for an image with queued messages)."""
    if any("msgs" in e for p in doc["processes"] for e in p["fds"]) \
            or any("msgs" in o for o in (doc.get("objects") or {}).values()):
        from engine.fds import unix_check
        unix_check.check_inflight_descs(doc)


def _check_objects(objects: dict) -> None:
    """Each object (a pipe, socket pair, memfd, pty) checked by the kind it names."""
    from engine import fds
    for key, obj in objects.items():
        if not _OBJ_ID.match(key):
            _fail(f"object id {key[:40]!r} is not KIND-N")
        kind = fds.lookup(obj.get("kind")) if type(obj) is dict and type(obj.get("kind")) is str else None
        if kind is None:
            _fail(f"object {key}: unknown kind")
        kind.check_object(obj, f"object {key}")
