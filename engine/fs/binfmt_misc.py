"""binfmt_misc: one instance for the initial user namespace (the host's formats: nothing dumped),
and since Linux 6.7 one for each user namespace that mounts it (CRIU's zdtm binfmt_misc). Such an
instance's registered formats are dumped (each entry file read back into the line `register`
takes) and registered again, through the new superblock's own register file, when restore has
made it; the instance's status (enabled or not) too.

A format with the F flag ("fix binary") had its interpreter opened when it was registered, in the
registering process's mount namespace: restore writes from outside the restored tree, so it would
open another file. Refused, before the tree is stopped (the probe also runs on the running tree)."""

from __future__ import annotations

import errno
import os
import re

from engine.records import record
from engine.fs import FsError, FsType, register

_FIXED = frozenset({"register", "status"})
MAX_FORMATS = 256
MAX_LINE = 1920        # the kernel's limit of one register write
_NAME = re.compile(r"^[^/:\s\x00]{1,255}$")
_FLAGS = re.compile(r"^[POC]{0,3}$")
# :name:type:offset:magic:mask:interpreter:flags, magic and mask as \xHH escapes
_LINE = re.compile(r"^:([^/:\x00\n]{1,255}):([ME]):([0-9]*):((?:\\x[0-9a-f]{2})*|[^:/\x00\n]*):"
                   r"((?:\\x[0-9a-f]{2})*):(/[^:\x00\n]{0,1024}):([POC]{0,3})$")


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
    return line, lines[0] == "enabled"


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
            if not isinstance(f, dict) or set(f) != {"name", "line", "enabled"} \
                    or not isinstance(f["name"], str) or not _NAME.match(f["name"]) \
                    or f["name"] in _FIXED | {".", ".."} \
                    or not isinstance(f["line"], str) or len(f["line"]) > MAX_LINE \
                    or not (m := _LINE.match(f["line"])) or m[1] != f["name"] or not isinstance(f["enabled"], bool):
                return f"{what}: binfmt_misc format {str(f)[:120]} is no format restore registers"
        return None

    def fill(self, sb: dict, mount_fd: int, where: str) -> None:
        payload = sb.get("payload")
        if not payload:
            return
        for f in payload["formats"]:
            _write(mount_fd, "register", f["line"], where)
            if not f["enabled"]:
                _write(mount_fd, f["name"], "0", where)
        if not payload["enabled"]:
            _write(mount_fd, "status", "0", where)


TYPE = register(BinfmtMisc("binfmt_misc", host_global=True, requires=("binfmt_misc",)))
