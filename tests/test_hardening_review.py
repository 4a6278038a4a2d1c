"""Hostile images, session 11's attacker review: references between records that the field checks
alone let through, and opens of image files that a FIFO (or a slow device) would block forever.

The attacker writes the image directory only. Each variant below is a real dumped image changed
the way that attacker would, and must be refused with exit status 2, one line, nothing left
running or mounted and no file outside the test touched (test_hardening_hostile.refused):

- a pidfd's `pid`, a /proc file's `live_pid` naming no process of the image; an nsfs fd's `ns`
  naming no namespace of the image (restore made these fds from whatever the restorer had);
- `dead_pid` / `live_pid` on a mount that is no proc mount: restore looked up `1/ns/pid` or
  `N/status` beneath it with plain opens, where a FIFO of the image's tmpfs blocked forever;
- image files restore opens that are FIFOs where a file is meant (an fd of kind file, a loop
  device's backing file, a FUSE daemon's input): an open that blocked forever;
- corrupt manifests (a directory, a version of another JSON type): one line that says so.
"""

from __future__ import annotations

import os
import re

import pytest

import enginecase
from enginecase import case, copy_image  # noqa: F401 (case: a fixture)
from test_hardening_hostile import _mutated, refused

# A tmpfs with a FIFO where restore's /proc lookups would go (1/ns/pid, 1/status) and one at /fifo;
# an mqueue (a superblock without archive, to turn into another type); a process holding a pidfd of itself (fd 7), an fd on its network namespace (fd 8) and a file (fd 5).
SETUP = """
mkdir /mnt/t /mnt/mq
mount -t mqueue mq /mnt/mq
mount -t tmpfs -o size=8m t /mnt/t; echo data > /mnt/t/f; mkdir -p /mnt/t/1/ns /mnt/t/d
mkfifo /mnt/t/fifo /mnt/t/1/ns/pid /mnt/t/1/status
""" + enginecase.py_hold("""
os.dup2(os.pidfd_open(os.getpid()), 7)
os.dup2(os.open("/proc/self/ns/net", os.O_RDONLY), 8)
os.dup2(os.open("/mnt/t/f", os.O_RDONLY), 5)
os.chdir("/mnt/t/d")
""")


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """The image of SETUP's tree."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _proc(d) -> dict:
    return d["processes"][0]


def _fd(d, n: int) -> dict:
    return next(f for f in _proc(d)["fds"] if f["fd"] == n)


def _set_fd(d, n: int, **fields) -> None:
    """Change fd `n` and every fd of its open file description (restore makes a description once)."""
    desc = _fd(d, n).get("desc")
    for f in _proc(d)["fds"]:
        if f["fd"] == n or (desc is not None and f.get("desc") == desc):
            f.update(fields)


def _mnt(d, mountpoint: str) -> dict:
    ns = d["mntns"][_proc(d)["ns"]["mnt"]]
    return next(m for m in ns["mounts"] if m["mountpoint"] == mountpoint)


def _on(d, mountpoint: str, fd: int, **fields) -> None:
    """Fd `fd` (a plain file) moved to a path of the mount at `mountpoint`."""
    f = _fd(d, fd)
    f.pop("desc", None)
    f.update(mnt=_mnt(d, mountpoint)["id"], **fields)


def _turn_mqueue(d, fstype: str, **sb) -> None:
    """The mqueue at /mnt/mq (no archive) turned into a superblock of `fstype`."""
    m = _mnt(d, "/mnt/mq")
    d["superblocks"][m["sb"]].update(fstype=fstype, archives=[], **sb)
    d["superblocks"][m["sb"]].pop("payload", None)   # (an mqueue's root owner and mode: engine/fs/mqueue.py)
    m.update(fstype=fstype, source=sb["source"])


REFS = {
    # the pidfd of fds 3 and 7 (one description; the first is named), of process 1: the restorer's own init
    "pidfd-of-another-process": (lambda d: _set_fd(d, 7, pid=1),
                                 r"fd [37]: a pidfd of process 1, which is no process of the image"),
    "nsfs-of-another-namespace": (lambda d: _set_fd(d, 8, ns="net-7"),
                                  r"fd [48]: namespace net-7, which no process of the image is in"),
    "nsfs-of-another-user-namespace": (lambda d: _set_fd(d, 8, ns="user-3"),
                                       r"fd [48]: namespace user-3, which is no user namespace of the image"),
    "live-pid-of-another-process": (lambda d: _on(d, "/proc", 5, path="/1/status", live_pid=4242),
                                    r"fd 5: 'live_pid' 4242, which is no process of the image"),
    # restore looked the restored process up in N/status beneath the mount: a FIFO there
    "live-pid-on-a-tmpfs": (lambda d: _on(d, "/mnt/t", 5, path="/1/status", live_pid=_proc(d)["pid"]),
                            r"fd 5: a /proc file \('live_pid'\) on mount \d+, which is no proc mount"),
    # restore opened 1/ns/pid beneath the mount for the pid namespace: a FIFO there
    "dead-pid-on-a-tmpfs": (lambda d: _on(d, "/mnt/t", 5, path="/2", dead_pid=2),
                            r"fd 5: a /proc file \('dead_pid'\) on mount \d+, which is no proc mount"),
    "dead-pid-cwd-on-a-tmpfs": (lambda d: _proc(d).update(cwd={"mnt": _mnt(d, "/mnt/t")["id"], "path": "/2",
                                                               "dead_pid": 2}),
                                r"cwd: a /proc file \('dead_pid'\) on mount \d+, which is no proc mount"),
}

_CAPS = {"inh": 0, "prm": 0x400, "eff": 0x400, "bnd": 0x400, "amb": 0}
CAPS = {
    "effective-beyond-permitted": ({**_CAPS, "eff": 0x420}, r"eff must be within prm, amb within prm and inh"),
    "ambient-beyond-inheritable": ({**_CAPS, "amb": 0x400}, r"eff must be within prm, amb within prm and inh"),
    # (bit 63: no kernel has it; a stand-in's capset after the commit would fail)
    "beyond-the-restorer": ({**_CAPS, "prm": 1 << 63 | 0x400}, r"capabilities cap_63 \(mask 0x8000000000000000\) are not "
                                                                r"the restorer's to give"),
}


@pytest.mark.parametrize("kind", sorted(CAPS))
def test_capability_sets_the_kernel_would_not_take_are_refused(base_image, tmp_path, kind):
    """A process's capability sets are ones a process can have, and the restorer can give (a stand-in
    sets them after the commit)."""
    caps, pattern = CAPS[kind]
    refused(_mutated(base_image, tmp_path, lambda d: _proc(d).update(caps=caps)), pattern, tmp_path)


@pytest.mark.parametrize("kind", sorted(REFS))
def test_references_name_the_image(base_image, tmp_path, kind):
    """A pid, namespace or proc mount an fd or cwd names is one of the image's, checked before anything
    is made."""
    mutate, pattern = REFS[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path)


def test_file_fd_on_a_fifo_is_refused(base_image, tmp_path):
    """An fd of kind file whose path is a FIFO of the image: the open blocked forever (no writer)."""
    img = _mutated(base_image, tmp_path, lambda d: _set_fd(d, 5, path="/fifo"))
    refused(img, r"fd 5 \(file\): /fifo is a FIFO, where the image has a file", tmp_path)


def test_loop_file_on_a_fifo_is_refused(base_image, tmp_path):
    """A block superblock on a read-only loop device whose backing file is a FIFO of the image."""
    img = _mutated(base_image, tmp_path, lambda d: _turn_mqueue(
        d, "ext4", source="/dev/loop7", super_opts=["ro"],
        device={"loop": {"sb": _mnt(d, "/mnt/t")["sb"], "path": "/fifo", "offset": 0, "sizelimit": 0, "ro": True}}))
    refused(img, r"on ext4: its loop device's backing file /fifo is no regular file", tmp_path)


def test_fuse_input_on_a_fifo_is_refused(base_image, tmp_path):
    """A FUSE superblock whose input (the daemon's source) is a FIFO of the image: the open blocked
    before the user's command ran."""
    img = _mutated(base_image, tmp_path, lambda d: _turn_mqueue(
        d, "fuse.squashfuse", source="/mnt/t/fifo", super_opts=["rw", "user_id=0", "group_id=0"],
        input={"sb": _mnt(d, "/mnt/t")["sb"], "path": "/fifo"}))
    refused(img, r"on fuse\.squashfuse: its input file /fifo is no regular file", tmp_path,
            extra=("--fuse-restart", "squashfuse=true {source} {conn}"))


def test_manifest_that_is_a_directory_is_refused(base_image, tmp_path):
    img = copy_image(base_image, tmp_path)
    os.unlink(os.path.join(img, "mntcr.json"))
    os.mkdir(os.path.join(img, "mntcr.json"))
    refused(img, r"bad image: mntcr\.json is not a regular file", tmp_path)


@pytest.mark.parametrize("version", ["1", 1.0, True, None])
def test_version_of_another_type_is_named_so(base_image, tmp_path, version):
    """A version "1" (a string), 1.0 or true was refused as "format version 1 is not supported ...
    (it reads version 1)"."""
    img = _mutated(base_image, tmp_path, lambda d: d.update(version=version))
    refused(img, r"format version (\"1\"|1\.0|true|null) is not supported", tmp_path)


# --- fanotify permission groups: marks on what the host shares ------------------------------------
# A group of a permission class (FAN_CLASS_CONTENT) whose inode or filesystem mark lies on a
# filesystem of the host (an external mount: /usr here, the host's root filesystem) would, with a
# permission event in its mask, make every access of the host's own processes there wait for the
# stand-in's answer, which never comes. The marks below carry a notification mask only (FAN_OPEN):
# were the refusal to fail, what restore marks must not freeze the machine the tests share.

def _fanotify(d, kind: str, mountpoint: str, init: int = 0x4) -> None:
    mark = {"type": kind, "mnt": _mnt(d, mountpoint)["id"], "mflags": 0, "mask": 0x20, "ignored": 0}
    if kind == "inode":
        mark["path"] = "/bin"
    _proc(d)["fds"].append({"fd": 30, "flags": 0, "pos": 0, "kind": "fanotify", "init": init,
                            "event_flags": 0, "marks": [mark]})


FANOTIFY = {
    "filesystem-mark-on-external": (lambda d: _fanotify(d, "filesystem", "/usr"),
                                    r"fd 30: fanotify filesystem mark 0 of a permission class group on mount \d+, "
                                    r"whose filesystem restore does not make for the image alone"),
    "inode-mark-on-external": (lambda d: _fanotify(d, "inode", "/usr"),
                               r"fd 30: fanotify inode mark 0 of a permission class group on mount \d+"),
    "unlimited-queue-filesystem-mark-on-external": (lambda d: _fanotify(d, "filesystem", "/usr", init=0x10),
                                                    r"fd 30: fanotify filesystem mark 0 of a group with an unlimited "
                                                    r"queue on mount \d+, whose filesystem restore does not make"),
    "pre-content-filesystem-mark-on-proc": (lambda d: _fanotify(d, "filesystem", "/proc", init=0x8),
                                            r"fd 30: fanotify filesystem mark 0 of a permission class group"),
}


@pytest.mark.parametrize("kind", sorted(FANOTIFY))
def test_fanotify_permission_marks_on_host_filesystems_are_refused(base_image, tmp_path, kind):
    mutate, pattern = FANOTIFY[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path)


def test_fanotify_permission_marks_on_image_filesystems_restore(case, base_image, tmp_path):
    """The rule's other side: a permission class group's filesystem mark on a tmpfs of the image, and
    its mount mark on the external /usr (only the restored tree's own clone of it), restore."""
    def mutate(d):
        _fanotify(d, "filesystem", "/mnt/t")
        _proc(d)["fds"][-1]["marks"].append({"type": "mount", "mnt": _mnt(d, "/usr")["id"], "mflags": 0,
                                             "mask": 0x20, "ignored": 0})
    pid = case.restore(_mutated(base_image, tmp_path, mutate))
    with open(f"/proc/{pid}/fdinfo/30") as f:
        assert len([x for x in f if x.startswith("fanotify ")]) == 3   # the group line and two marks


def test_dump_refuses_a_permission_group_marking_a_host_filesystem(case):
    """Dump refuses what restore would: a FAN_CLASS_CONTENT group with an inode mark on the external
    /usr, before the tree is stopped."""
    from enginecase import STOP_WATCH, CRError, was_stopped
    setup = enginecase.py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
f = libc.fanotify_init(0x4, os.O_RDONLY)
assert f >= 0 and libc.fanotify_mark(f, 0x1, 0x20, -100, b"/usr/bin") == 0, ctypes.get_errno()
os.dup2(f, 10); os.close(f)
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    # (CRError shortens the line in its middle)
    assert re.search(r"fd 10 \(anon_inode:\[fanotify\]\): fanotify inode mark 0 of a permi.*only on filesystems it "
                     r"makes for the tree alone \(tmpfs, ramfs, overlay, FUSE\): not supported", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


# --- the host's devtmpfs: every device node of the host, whatever --devices says -------------------

@pytest.mark.parametrize("policy", ["container", "none"])
def test_devtmpfs_needs_devices_all(base_image, tmp_path, policy):
    """The mqueue at /mnt/mq turned into a devtmpfs: restore mounted the host's one device filesystem
    into the tree (/dev/sda, /dev/mem...), past the device policy that holds for archives."""
    if "devtmpfs" not in open("/proc/filesystems").read():
        pytest.skip("no devtmpfs on this kernel")
    img = _mutated(base_image, tmp_path, lambda d: _turn_mqueue(d, "devtmpfs", source="devtmpfs", super_opts=["rw"]))
    refused(img, rf"superblock sb-\d+ \(devtmpfs\): one superblock of the whole host, .* the device policy "
                 rf"\({policy}\) refuses; --devices all", tmp_path, extra=("--devices", policy))


def test_devtmpfs_and_a_missing_external_told_at_once(base_image, tmp_path):
    """An image that needs both --devices all and an external the user did not give: one line names
    both (a user should not learn one missing option per run); nothing is left behind."""
    if "devtmpfs" not in open("/proc/filesystems").read():
        pytest.skip("no devtmpfs on this kernel")
    img = _mutated(base_image, tmp_path, lambda d: _turn_mqueue(d, "devtmpfs", source="devtmpfs", super_opts=["rw"]))
    pidfile = os.path.join(str(tmp_path), "both.pid")
    r = enginecase.mntcr("restore", "-D", img, "--external", "mnt[usr]:/usr", "--pidfile", pidfile)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert re.search(r"the image needs externals: give --external mnt\[etc\]:HOSTPATH; and superblock sb-\d+ "
                     r"\(devtmpfs\): .*--devices all restores it", lines[0]), lines[0]
    assert not os.path.exists(pidfile)


@pytest.mark.parametrize("fstype", ["debugfs", "tracefs", "securityfs"])
def test_host_global_pseudo_filesystems_need_devices_all(base_image, tmp_path, fstype):
    """The mqueue turned into one of the machine's single-superblock filesystems: restore mounted the
    host's own (its tracing, its LSM policy files) into the tree."""
    if fstype not in open("/proc/filesystems").read():
        pytest.skip(f"no {fstype} on this kernel")
    img = _mutated(base_image, tmp_path, lambda d: _turn_mqueue(d, fstype, source=fstype, super_opts=["rw"]))
    refused(img, rf"superblock sb-\d+ \({fstype}\): one superblock of the whole host, mounted again, would give "
                 r"the tree the host's own .*\(container\) refuses; --devices all", tmp_path)


# --- socket queues larger than a socket holds ------------------------------------------------------

def test_socket_queue_that_does_not_fit_is_refused(base_image, tmp_path):
    """A dangling datagram socket whose queue (1,000 messages, within the validator's bounds) is more
    than a socket's send buffer takes: the stand-in's sends blocked forever, with no reader."""
    import base64
    msg = base64.b64encode(b"x" * 100).decode()
    img = _mutated(base_image, tmp_path, lambda d: _proc(d)["fds"].append(
        {"fd": 31, "flags": 2, "pos": 0, "kind": "unix", "type": "dgram", "dangling": True, "msgs": [msg] * 1000}))
    refused(img, r"fd 31 \(unix\): its queue does not fit back: the socket takes \d+ of its 1000 messages", tmp_path)


def test_loop_devices_are_bounded(base_image, tmp_path):
    """257 block superblocks on loop devices over one file of the image: restore would attach (and the
    host's loop-control create) a loop device for each."""
    def mutate(d):
        loop = {"sb": _mnt(d, "/mnt/t")["sb"], "path": "/f", "offset": 0, "sizelimit": 0, "ro": True}
        for i in range(257):
            d["superblocks"][f"sb-{1000 + i}"] = {"fstype": "ext4", "source": "/dev/loop7", "super_opts": ["ro"],
                                                  "device": {"loop": loop}}
    refused(_mutated(base_image, tmp_path, mutate), r"257 loop devices is absurd \(at most 256", tmp_path)


# --- user namespaces given to a user ---------------------------------------------------------------

def test_userns_owned_by_a_user_must_not_reach_host_root(tmp_path, monkeypatch):
    """An image may say a non-root user made a user namespace (restore gives it to that user: every
    capability in it). Its maps, whose outside ids are the restorer's at every depth (the image
    keeps them in the dumper's ids), must not reach the host's id 0: that would hand the user the
    host's root files (restore checks before anything is made). A nested one below a namespace
    root made that maps the host's 0 under another id (5) was let through when its map was read
    as its parent's ids."""
    from engine import subids
    from engine.restore import RestoreError, _check_userns_owners
    # (uid 1000's ranges: a rootless podman's; engine/subids.py reads them)
    (tmp_path / "subuid").write_text("1000:100000:65536\n")
    (tmp_path / "subgid").write_text("1000:1000:1\n")
    monkeypatch.setattr(subids, "ETC", str(tmp_path))
    rootless = {"uid_map": [[0, 1000, 1], [1, 100000, 65536]], "gid_map": [[0, 1000, 1]], "owner": 1000,
                "setgroups": "allow"}
    nested = {"parent": "user-0", "uid_map": [[0, 1000, 1], [1, 100000, 99]], "gid_map": [[0, 1000, 1]],
              "owner": 1000, "setgroups": "allow"}
    _check_userns_owners({"userns": {"user-0": rootless, "user-1": nested}})          # (a rootless podman)
    _check_userns_owners({"userns": {"user-0": dict(rootless, owner=0, uid_map=[[0, 0, 10]])}})  # root's own
    roots = {"uid_map": [[5, 0, 1], [1000, 1000, 1]], "gid_map": [[5, 0, 1], [1000, 1000, 1]]}   # root's, 0 as 5
    for users, key in (({"user-0": dict(rootless, uid_map=[[0, 0, 1]])}, "uid_map"),
                       ({"user-0": dict(rootless, gid_map=[[5, 0, 3]])}, "gid_map"),
                       ({"user-0": {"uid_map": [[0, 0, 10]], "gid_map": [[0, 0, 10]]},   # root's, mapping 0
                         "user-1": dict(nested, uid_map=[[7, 0, 1]])}, "uid_map"),
                       ({"user-0": roots, "user-1": dict(nested, uid_map=[[0, 0, 1]], gid_map=[[0, 1000, 1]])},
                        "uid_map")):
        with pytest.raises(RestoreError, match=rf"user namespace user-\d: owned by uid 1000, yet its {key} "
                                               r"reaches the host's id 0"):
            _check_userns_owners({"userns": users})
