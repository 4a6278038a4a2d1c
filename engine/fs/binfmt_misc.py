"""binfmt_misc: one instance for the initial user namespace (the host's formats: nothing dumped),
and since Linux 6.7 one for each user namespace that mounts it (CRIU's zdtm binfmt_misc). Such an
instance's registered formats are dumped (each entry file read back into the line `register`
takes) and registered again, through the new superblock's own register file, when restore has
made it; the instance's status (enabled or not) too.

A format with the F flag ("fix binary") had its interpreter opened when it was registered, in the
registering process's mount namespace: restore writes from outside the restored tree, so it would
open another file. Refused, before the tree is stopped (the probe also runs on the running tree);
so is a format whose line the image's check refuses (one registered with another delimiter than
':', with ':' in a field). Restore writes the lines as root: only into the instance the owner's
user namespace made (never the host's, checked again before writing)."""

from __future__ import annotations

import errno
import os
from engine import rx

from engine.records import record
from engine.fs import FsError, FsType, register

_FIXED = frozenset({"register", "status"})
MAX_FORMATS = 256
MAX_LINE = 1920        # the kernel's limit of one register write
_NAME = rx.compile(r"[^/:\s\x00]{1,255}")
_FLAGS = rx.compile(r"^[POC]{0,3}\Z")
# :name:type:offset:magic:mask:interpreter:flags, magic and mask as \xHH escapes
_LINE = rx.compile(r":([^/:\x00\n]{1,255}):([ME]):([0-9]*):((?:\\x[0-9a-f]{2})*|[^:/\x00\n]*):"
                   r"((?:\\x[0-9a-f]{2})*):(/[^:\x00\n]{0,1024}):([POC]{0,3})")


def _escaped(hexdigits: str) -> str:
    """'7f45' -> '\\x7f\\x45' (what register takes for arbitrary bytes)."""
    return "".join(f"\\x{hexdigits[i:i + 2]}" for i in range(0, len(hexdigits), 2))


def register_line(name: str, entry: str) -> tuple[str, bool]:
    """The `register` line that makes format `name` again from its entry file's text, and whether
    it is enabled. FsError for what cannot be registered again (the F flag, an unknown layout)."""
    lines = entry.splitlines()
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    flags = fields.get("flags:", "").strip()
    if "F" in flags:
        raise FsError(errno.EOPNOTSUPP, f"binfmt_misc format {name}: flag F (its interpreter "
                                        f"{fields.get('interpreter', '?')} opened when registered, in the "
                                        "tree's mount namespace) cannot be registered again from outside the tree")
    if not lines or lines[0] not in ("enabled", "disabled") or "interpreter" not in fields \
            or not _FLAGS.match(flags):
        raise FsError(errno.EOPNOTSUPP, f"binfmt_misc format {name}: entry not understood ({entry[:80]!r})")
    interp = fields["interpreter"]
    if "extension" in fields:
        line = f":{name}:E::{fields['extension'].lstrip('.')}::{interp}:{flags}"
    elif "magic" in fields:
        line = (f":{name}:M:{fields.get('offset', '0')}:{_escaped(fields['magic'])}:"
                f"{_escaped(fields.get('mask', ''))}:{interp}:{flags}")
    else:
        raise FsError(errno.EOPNOTSUPP, f"binfmt_misc format {name}: neither magic nor extension ({entry[:80]!r})")
    if not _valid({"name": name, "line": line, "enabled": True}):
        # (registered with another delimiter than ':', a name or path with ':' in it: restore's
        # check would refuse the image, so dump does, before the stop)
        raise FsError(errno.EOPNOTSUPP, f"binfmt_misc format {name[:80]!r}: {line[:120]!r} is no line restore "
                                        "registers (':' in a field, or longer than one register write)")
    return line, lines[0] == "enabled"


BINPRM_BUF = 256       # the bytes of a file the kernel matches a magic in (offset + magic fit)


def _valid(f) -> bool:
    """Whether `f` is a format record restore registers: a plain name, the line ':' delimits, no F,
    a magic within the bytes the kernel reads (an extension has no offset)."""
    if not (isinstance(f, dict) and set(f) == {"name", "line", "enabled"}
            and isinstance(f["name"], str) and bool(_NAME.fullmatch(f["name"]))
            and f["name"] not in _FIXED | {".", ".."}
            and isinstance(f["line"], str) and len(f["line"]) <= MAX_LINE
            and bool(m := _LINE.fullmatch(f["line"])) and m[1] == f["name"] and isinstance(f["enabled"], bool)):
        return False
    if m[2] == "E":
        return m[3] == ""
    size = len(m[4]) // 4 if m[4].startswith("\\x") else len(m[4])
    return len(m[3]) <= 3 and int(m[3] or 0) + size <= BINPRM_BUF


def _read(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def _write(dir_fd: int, name: str, text: str, where: str) -> None:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
    except OSError as e:
        raise FsError(e.errno or errno.EIO, f"{where}: binfmt_misc {name}: writing {text[:80]!r}: "
                                            f"{e.strerror or e}") from None


_host_dev: list[int] = []


def _host_instance() -> int | None:
    """st_dev of the initial user namespace's instance: the one a new binfmt_misc superblock made
    here is (a detached mount, closed at once: nothing is attached anywhere). None when the
    kernel makes none here."""
    if not _host_dev:
        from engine import standin
        try:
            fd = standin.fsmount("binfmt_misc", None, [])
        except OSError:
            return None
        try:
            _host_dev.append(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
    return _host_dev[0]


@record(frozen=True)
class BinfmtMisc(FsType):
    """binfmt_misc: a user namespace's own instance keeps its registered formats."""

    def wants_probe(self) -> bool:
        return True

    def probe(self, sid: str, mid: int, mount_fd: int, plan) -> None:
        if os.fstat(mount_fd).st_dev == _host_instance():
            return   # the host's formats: never dumped, never registered again
        formats = []
        for name in sorted(n for n in os.listdir(f"/proc/self/fd/{mount_fd}") if n not in _FIXED):
            line, enabled = register_line(name, _read(mount_fd, name))
            formats.append({"name": name, "line": line, "enabled": enabled})
        if len(formats) > MAX_FORMATS:
            raise FsError(errno.EOPNOTSUPP, f"binfmt_misc: {len(formats)} formats, more than an image may hold "
                                            f"({MAX_FORMATS})")
        status = _read(mount_fd, "status").strip()
        sb = plan.superblocks.get(sid)
        if sb is not None:
            sb["payload"] = {"formats": formats, "enabled": status == "enabled"}

    def check_payload(self, what: str, sb: dict) -> str | None:
        """Formats only on a user namespace's own instance, each a line `register` takes (no F)."""
        payload = sb["payload"]
        if not sb.get("owner"):
            return f"{what}: formats only belong to a user namespace's own binfmt_misc (the host's are the host's)"
        if set(payload) != {"formats", "enabled"} or not isinstance(payload["enabled"], bool) \
                or not isinstance(payload["formats"], list) or len(payload["formats"]) > MAX_FORMATS:
            return f"{what}: payload is not {{formats: [at most {MAX_FORMATS}], enabled: true|false}}"
        for f in payload["formats"]:
            if not _valid(f):
                return f"{what}: binfmt_misc format {str(f)[:120]} is no format restore registers"
        names = [f["name"] for f in payload["formats"]]
        if len(set(names)) != len(names):
            return f"{what}: binfmt_misc formats of one name twice (the second register would fail)"
        return None

    def fill(self, sb: dict, mount_fd: int, where: str) -> None:
        payload = sb.get("payload")
        if not payload:
            return
        if os.fstat(mount_fd).st_dev == _host_instance():
            # (the owner's fsmount must have made that namespace's own instance: formats written
            # to the host's would run for every process of the machine)
            raise FsError(errno.EPERM, f"{where}: binfmt_misc: the superblock made is the host's instance; "
                                       "its formats are not registered there")
        for f in payload["formats"]:
            _write(mount_fd, "register", f["line"], where)
            if not f["enabled"]:
                _write(mount_fd, f["name"], "0", where)
        if not payload["enabled"]:
            _write(mount_fd, "status", "0", where)


TYPE = register(BinfmtMisc("binfmt_misc", host_global=True, requires=("binfmt_misc",)))
