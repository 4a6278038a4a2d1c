"""engine.mountinfo: parser round trips, escapes, errors, and statmount/listmount agreement."""

from __future__ import annotations

import errno
import os
import pathlib
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import kernel, mountinfo
from engine.forkrun import in_mount_ns
from engine.mountinfo import Mount, MountinfoError

DATA = pathlib.Path(__file__).parent / "data"
LISTINGS = sorted(DATA.glob("*.mountinfo"))


def _round_trip(text: str) -> None:
    mounts = mountinfo.parse(text)
    assert len(mounts) == len(text.splitlines())
    for line, m in zip(text.splitlines(), mounts):
        assert mountinfo.format_line(m) == line
    assert mountinfo.format_all(mounts) == text if text.endswith("\n") else text + "\n"


@pytest.mark.parametrize("pid", ["self", "1"])
def test_round_trip_this_machine(pid):
    with open(f"/proc/{pid}/mountinfo") as f:
        _round_trip(f.read())


@pytest.mark.parametrize("path", LISTINGS, ids=[p.name for p in LISTINGS])
def test_round_trip_reference_listings(path):
    _round_trip(path.read_text())


def test_reference_listings_exist():
    # The listings come from both reference files; losing one would silently drop coverage.
    names = {p.name for p in LISTINGS}
    assert {"lxc-vivid-container.mountinfo", "talk-reparenting-before.mountinfo",
            "talk-reparenting-after.mountinfo"} <= names


def test_lxc_listing_fields():
    mounts = {m.mnt_id: m for m in mountinfo.read_file(str(DATA / "lxc-vivid-container.mountinfo"))}
    root = mounts[44]
    assert (root.parent_id, root.major, root.minor) == (45, 253, 1)
    assert root.root == "/usr/local/var/lib/lxc/u1/rootfs" and root.mountpoint == "/"
    assert root.master == 1 and root.shared is None
    assert root.super_opt("data") == "ordered"
    assert mounts[80].parent_id == 81 and mounts[80].root == "/sys/net"
    assert mounts[78].super_opts == ("rw", "size=100k", "mode=755")
    assert mounts[92].mount_opts == ("rw",)


def test_escapes_in_root_mountpoint_source():
    line = r"36 35 98:0 /a\040b\011c /mnt/x\012y\134z rw,noatime shared:7 master:1 - ext3 /dev/my\040disk rw,errors=continue"
    m = mountinfo.parse_line(line)
    assert m.root == "/a b\tc"
    assert m.mountpoint == "/mnt/x\ny\\z"
    assert m.source == "/dev/my disk"
    assert (m.shared, m.master, m.propagate_from, m.unbindable) == (7, 1, None, False)
    assert mountinfo.format_line(m) == line


def test_optional_fields_and_subtype():
    line = "40 30 0:50 / /m rw shared:3 master:2 propagate_from:1 unbindable - fuse.sshfs host:/x rw,user_id=0"
    m = mountinfo.parse_line(line)
    assert (m.shared, m.master, m.propagate_from, m.unbindable) == (3, 2, 1, True)
    assert (m.basetype, m.subtype) == ("fuse", "sshfs")
    assert mountinfo.format_line(m) == line


_text = st.text(alphabet=st.sampled_from("ab/ \t\n\\x-é"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(root=_text, mp=_text, source=_text.filter(lambda s: s != ""), shared=st.none() | st.integers(1, 99),
       master=st.none() | st.integers(1, 99), unbindable=st.booleans())
def test_round_trip_random_names(root, mp, source, shared, master, unbindable):
    m = Mount(mnt_id=5, parent_id=1, major=0, minor=42, root="/" + root, mountpoint="/" + mp,
              mount_opts=("rw", "relatime"), fstype="tmpfs", source=source, super_opts=("rw",),
              shared=shared, master=master, unbindable=unbindable)
    line = mountinfo.format_line(m)
    assert "\n" not in line and "\t" not in line
    assert mountinfo.parse_line(line) == m


@pytest.mark.parametrize("bad, what", [
    ("36 35 98:0 / /mnt rw - ext3", "too few fields"),
    ("36 35 98:0 / /mnt rw - ext3 /dev/x rw extra", "3 fields after"),
    ("36 35 98:0 / /mnt rw ext3 /dev/x rw", "separator"),
    ("x 35 98:0 / /mnt rw - ext3 /dev/x rw", "mount id"),
    ("36 35 98-0 / /mnt rw - ext3 /dev/x rw", "MAJ:MIN"),
    ("36 35 98:0 / mnt rw - ext3 /dev/x rw", "mount point"),
    ("36 35 98:0 / /mnt rw shared:x - ext3 /dev/x rw", "shared"),
    ("36 35 98:0 / /mnt  rw - ext3 /dev/x rw", "empty field"),
])
def test_malformed_line_names_line_number(bad, what):
    good = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:5 / /proc rw - proc proc rw\n"
    with pytest.raises(MountinfoError) as exc:
        mountinfo.parse(good + bad + "\n")
    assert exc.value.lineno == 3
    assert "line 3" in str(exc.value) and what in str(exc.value)


def test_blank_line_and_duplicate_id():
    with pytest.raises(MountinfoError, match="line 2: blank"):
        mountinfo.parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\n")
    with pytest.raises(MountinfoError, match="line 2: duplicate mount id 1"):
        mountinfo.parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")


@pytest.mark.parametrize("path", [pathlib.Path("/proc/self/mountinfo"), *LISTINGS],
                         ids=["self", *(p.name for p in LISTINGS)])
def test_brief_agrees_with_parse(path):
    text = path.read_text(errors="surrogateescape")
    assert mountinfo.brief(text) == [(m.mnt_id, m.parent_id, m.dev, m.mountpoint, m.fstype)
                                     for m in mountinfo.parse(text)]


def test_brief_reports_a_broken_line_as_parse_does():
    with pytest.raises(MountinfoError, match="line 2: .*separator"):
        mountinfo.brief("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n36 35 98:0 / /mnt rw ext3 /dev/x rw\n")
    with pytest.raises(MountinfoError, match="line 1: mount id"):
        mountinfo.brief("x 35 98:0 / /mnt rw - ext3 /dev/x rw\n")


def test_parse_takes_unique_ids():
    text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:5 / /proc rw - proc proc rw\n"
    assert [m.unique_id for m in mountinfo.parse(text, {2: 1 << 40})] == [None, 1 << 40]


# --- statmount / listmount ------------------------------------------------------

def _require_statmount():
    try:
        kernel.listmount()
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL):
            pytest.skip(f"kernel {os.uname().release} has no listmount/statmount ({e})")
        raise


def _by_id(mounts):
    return {m.mnt_id: m for m in mounts}


def _assert_agree(from_proc, from_statmount):
    a, b = _by_id(from_proc), _by_id(from_statmount)
    assert a.keys() == b.keys()
    for k in a:
        # Mount equality covers every field both sources give (unique_id is excluded from ==).
        assert a[k] == b[k], f"mount {k}:\n mountinfo {a[k]}\n statmount {b[k]}"
    assert all(m.unique_id is not None for m in from_statmount)


def test_statmount_agrees_host_namespace():
    _require_statmount()
    # Read both in a forked child so nothing else (threads, other tests) mounts in between.
    proc, sm = in_mount_ns(lambda: (mountinfo.read_pid("self"), mountinfo.read_statmount()))
    _assert_agree(proc, sm)
    _assert_agree(mountinfo.read_pid("self"), mountinfo.read_statmount())


def test_unique_ids_agree_with_statmount_records():
    """kernel.unique_ids (the dump's lean statmount loop) gives every mount's unique id, exactly as
    full statmount records do, in the host namespace and in one with odd names and sharing."""
    _require_statmount()
    here = in_mount_ns(lambda: (kernel.unique_ids(), mountinfo.read_statmount()))
    fresh = in_mount_ns(lambda: (lambda records: (kernel.unique_ids(), records))(_build_namespace()[2]))
    for ids, records in (here, fresh):
        assert len(records) > 1
        assert ids == {m.mnt_id: m.unique_id for m in records}


def _build_namespace():
    """In a private child namespace: tmpfs mounts with odd names, sharing, slaves, flags."""
    k = kernel
    base = tempfile.mkdtemp(prefix="mntcr-test-")
    k.mount("src with space", base, "tmpfs", 0, "mode=755,size=1m")
    names = ["a b", "tab\there", "new\nline", "back\\slash", "peer", "slave", "both", "ro bind", "unb",
             "sync", "strict", "noatime", "chain"]
    for n in names:
        os.mkdir(os.path.join(base, n))
    p = lambda n: os.path.join(base, n)  # noqa: E731
    k.mount("tmp fs", p("a b"), "tmpfs", 0, "size=2m")
    k.mount(None, p("a b"), None, k.MS_SHARED)
    k.mount(p("a b"), p("peer"), None, k.MS_BIND)             # peer of "a b"
    k.mount(p("a b"), p("slave"), None, k.MS_BIND)
    k.mount(None, p("slave"), None, k.MS_SLAVE)               # master: "a b"'s group
    k.mount(p("a b"), p("both"), None, k.MS_BIND)
    k.mount(None, p("both"), None, k.MS_SLAVE)
    k.mount(None, p("both"), None, k.MS_SHARED)               # shared + slave
    k.mount(p("a b"), p("ro bind"), None, k.MS_BIND)
    k.mount(None, p("ro bind"), None,
            k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | k.MS_NOSUID | k.MS_NOEXEC | k.MS_NODEV)
    k.mount("x", p("tab\there"), "tmpfs", 0)
    k.mount("y", p("new\nline"), "tmpfs", 0)
    k.mount("z\\z", p("back\\slash"), "tmpfs", 0)
    k.mount(p("tab\there"), p("unb"), None, k.MS_BIND)
    k.mount("s", p("sync"), "tmpfs", 16 | 128)  # MS_SYNCHRONOUS | MS_DIRSYNC: superblock flags
    k.mount("t", p("strict"), "tmpfs", 1 << 24)  # MS_STRICTATIME
    k.mount("n", p("noatime"), "tmpfs", 1024 | 2048)  # MS_NOATIME | MS_NODIRATIME
    # propagate_from: chain g0 -> g1 -> slave, then a nested namespace drops g1.
    k.mount("c", p("chain"), "tmpfs", 0)
    os.makedirs(p("chain") + "/g0")
    os.makedirs(p("chain") + "/g1")
    os.makedirs(p("chain") + "/s")
    k.mount("g", p("chain") + "/g0", "tmpfs", 0)
    k.mount(None, p("chain") + "/g0", None, k.MS_SHARED)
    k.mount(p("chain") + "/g0", p("chain") + "/g1", None, k.MS_BIND)
    k.mount(None, p("chain") + "/g1", None, k.MS_SLAVE)
    k.mount(None, p("chain") + "/g1", None, k.MS_SHARED)
    k.mount(p("chain") + "/g1", p("chain") + "/s", None, k.MS_BIND)
    k.mount(None, p("chain") + "/s", None, k.MS_SLAVE)
    # Keep the first namespace alive: if it died, g1 would vanish and s would be re-slaved to g0.
    keep = os.open("/proc/self/ns/mnt", os.O_RDONLY)  # noqa: F841 - closed when the child exits
    k.unshare(k.CLONE_NEWNS)
    k.mount(None, p("chain") + "/g1", None, k.MS_PRIVATE)
    # After the unshare: a namespace copy does not keep unbindable on 6.18.
    k.mount(None, p("unb"), None, k.MS_UNBINDABLE)
    return base, mountinfo.read_pid("self"), mountinfo.read_statmount()


def test_statmount_agrees_fresh_namespace():
    _require_statmount()
    base, proc, sm = in_mount_ns(_build_namespace)
    _assert_agree(proc, sm)
    mine = {m.mountpoint[len(base):]: m for m in proc if m.mountpoint.startswith(base)}
    # The namespace really has what the comparison is meant to cover.
    assert mine[""].source == "src with space"
    assert "/tab\there" in mine and "/new\nline" in mine and "/back\\slash" in mine
    assert mine["/a b"].shared is not None and mine["/peer"].shared == mine["/a b"].shared
    assert mine["/slave"].master == mine["/a b"].shared and mine["/slave"].shared is None
    assert mine["/both"].master == mine["/a b"].shared and mine["/both"].shared is not None
    assert mine["/ro bind"].mount_opts[:5] == ("ro", "nosuid", "nodev", "noexec", "relatime")
    assert mine["/unb"].unbindable
    assert {"sync", "dirsync"} <= set(mine["/sync"].super_opts)
    assert "relatime" not in mine["/strict"].mount_opts
    assert {"noatime", "nodiratime"} <= set(mine["/noatime"].mount_opts)
    s = mine["/chain/s"]
    assert s.propagate_from == mine["/chain/g0"].shared and s.master != s.propagate_from
    assert not os.path.ismount(base)  # built in the child's namespace only
    os.rmdir(base)  # on the host it is an empty directory: the tmpfs lived in the child only
