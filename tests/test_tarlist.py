"""engine.tarlist: a small archive's members read from its headers must be what `tar -tv` lists.

A battery of archives made by GNU tar with dump's own options (content._COMMON, --sparse, the
POSIX format this tar writes) over trees of every member kind dump archives: files, directories,
symlinks, hard links, device nodes, FIFOs, xattrs, an ACL, owners, long names (the ustar prefix and
pax paths). For each, tarlist.members either reads them all, and then equals tar's own listing
(content._listing of `tar -tv`), or returns None (the caller then asks tar). Archives whose headers
it must not read alone (sparse files, names with other bytes, damage) must give None, and randomly
damaged archives must never give a listing tar does not give the same.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess

import pytest

from engine import content, tarlist

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners, trusted xattrs)")


def _acl(path: str) -> None:
    """A POSIX access ACL (user 1000 may read) on `path`, set as its xattr (no setfacl here)."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
               (0x20, 4, 0xFFFFFFFF)]
    os.setxattr(path, "system.posix_acl_access",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))


def _tree(root: str, kind: str) -> None:
    """sb-0 and sb-1 under `root`, holding what `kind` names."""
    a, b = os.path.join(root, "sb-0"), os.path.join(root, "sb-1")
    os.makedirs(os.path.join(a, "d", "e"))
    os.makedirs(b)
    with open(os.path.join(a, "d", "f"), "w") as f:
        f.write("data\n")
    os.chown(os.path.join(a, "d", "f"), 1000, 2000)
    os.chmod(os.path.join(a, "d"), 0o1750)
    if kind == "plain":
        return
    if kind == "all":
        os.link(os.path.join(a, "d", "f"), os.path.join(b, "hl"))
        os.link(os.path.join(a, "d", "f"), os.path.join(a, "hl2"))
        os.symlink("d/f", os.path.join(a, "sl"))
        os.symlink("/etc/../nowhere", os.path.join(b, "abs"))
        os.mknod(os.path.join(a, "null"), 0o666 | 0o020000, os.makedev(1, 3))
        os.mknod(os.path.join(a, "wh"), 0o000 | 0o020000, os.makedev(0, 0))
        os.mknod(os.path.join(b, "blk"), 0o600 | 0o060000, os.makedev(7, 200))
        os.mkfifo(os.path.join(b, "fifo"))
        os.setxattr(os.path.join(a, "d", "f"), "user.k", b"v\nwith=odd\0bytes")
        os.setxattr(os.path.join(a, "d"), "trusted.overlay.opaque", b"y")
        _acl(os.path.join(b, "hl"))
        with open(os.path.join(b, "empty"), "w"):
            pass
        os.utime(os.path.join(b, "empty"), ns=(1, 1_700_000_000_123_456_789))
    elif kind == "long":
        deep = os.path.join(b, *(["x" * 60] * 4))
        os.makedirs(deep)
        with open(os.path.join(deep, "y" * 120), "w") as f:
            f.write("z")
        os.link(os.path.join(deep, "y" * 120), os.path.join(a, "L" * 200))
        os.symlink("t" * 300, os.path.join(a, "longlink"))
        os.makedirs(os.path.join(a, "p" * 90, "q" * 90))   # (ustar prefix + name)
    elif kind == "odd":
        for name in ("sp ace", 'quo"te', "back\\slash", "tab\there", "new\nline", "caf\xe9", "x?*[]"):
            with open(os.path.join(a, name), "w") as f:
                f.write(name)
    elif kind == "sparse":
        with open(os.path.join(a, "sparse"), "wb") as f:
            f.truncate(1 << 20)
            f.write(b"end")


def _make(tmp_path, kind: str) -> str:
    src = tmp_path / kind
    src.mkdir()
    _tree(str(src), kind)
    out = str(tmp_path / f"{kind}.tar")
    subprocess.run([content.tar(), "-C", str(src), "--sparse", "--one-file-system", *content.COMMON,
                    "--quoting-style=c", "-cf", out, "sb-0", "sb-1"], check=True, env={**os.environ, "LC_ALL": "C"})
    return out


def _both(path: str) -> tuple[list | None, list | None]:
    """(tarlist.members, tar -tv's listing or None when tar refuses the archive)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mine = tarlist.members(fd, os.fstat(fd).st_size)
        listed = content.run([content.tar(), *content._LIST], stdin=fd)
        try:
            theirs = content._listing(listed, "t")
        except OSError:
            theirs = None
        return mine, theirs
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["plain", "all", "long"])
def test_read_alone_equals_tar(tmp_path, kind):
    mine, theirs = _both(_make(tmp_path, kind))
    assert mine is not None, "a dump-like archive was not read from its headers (tar would run again)"
    assert mine == theirs
    kinds = {m[0] for m in mine}
    if kind == "all":
        assert kinds == {"d", "-", "h", "l", "c", "b", "p"}


@pytest.mark.parametrize("kind", ["odd", "sparse"])
def test_left_to_tar(tmp_path, kind):
    mine, theirs = _both(_make(tmp_path, kind))
    assert mine is None
    assert theirs   # (tar lists it: the caller's fallback works)


def test_too_big_left_to_tar(tmp_path):
    path = _make(tmp_path, "plain")
    with open(path, "ab") as f:
        f.write(bytes(tarlist.MAX_SIZE))
    assert _both(path)[0] is None


@pytest.mark.parametrize("kind", ["all", "long"])
def test_damage_never_read_otherwise(tmp_path, kind):
    """Random bytes changed: whenever tarlist still reads it, tar lists the same (and exits 0)."""
    data = open(_make(tmp_path, kind), "rb").read()
    rnd = random.Random(kind)
    bad = str(tmp_path / "bad.tar")
    read = 0
    for _ in range(150):
        b = bytearray(data)
        for _ in range(rnd.choice((1, 1, 2, 5))):
            at = rnd.randrange(len(data)) if rnd.random() < 0.3 else rnd.randrange(0, 3 * 1024)
            b[at] = rnd.choice((0, 0x20, 0x2F, 0x2E, 0x30, 0x31, 0x35, 0x78, rnd.randrange(256)))
        with open(bad, "wb") as f:
            f.write(b)
        mine, theirs = _both(bad)
        if mine is not None:
            read += 1
            assert mine == theirs, bytes(b[:1024])
    assert read   # (some damage, e.g. in a file's data or an unread field, is still read alone)


def test_truncated_and_trailing(tmp_path):
    data = open(_make(tmp_path, "all"), "rb").read()
    end = data.rstrip(b"\0")
    end += bytes(-len(end) % 512)
    for cut, tail in ((end, b""), (end + bytes(512), b""), (data[:1536], b""), (data, b"\1" + bytes(511))):
        path = str(tmp_path / "cut.tar")
        with open(path, "wb") as f:
            f.write(cut + tail)
        assert _both(path)[0] is None


def test_check_members_refuses_as_before(tmp_path):
    """The fast path's listing goes through the same checks: a name outside `allowed`, a hard link
    out, a device the policy refuses."""
    path = _make(tmp_path, "all")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="unsafe member 'sb-1'"):
            content.check_members(fd, "x", {"sb-0"})
        content.set_device_policy("container")
        try:
            with pytest.raises(OSError, match="device 7:200"):
                content.check_members(fd, "x", {"sb-0", "sb-1"})
        finally:
            content.set_device_policy("all")
        content.check_members(fd, "x", {"sb-0", "sb-1"})
    finally:
        os.close(fd)
