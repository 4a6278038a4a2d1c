"""Session 34's rootless gate gaps: a rootless tree (its outermost user namespace made by a
non-root user) reaches the host's files only as far as that user could (engine/userns.py
host_gate, engine/restore.py host_reach). Each image is a real dump changed as an attacker with
write access to the image directory would, refused with exit status 2 and one line, nothing left
running or mounted (test_hardening_hostile.refused); or a unit of the gate on a stub restorer.
"""

from __future__ import annotations

import os
import types

import pytest

import enginecase
from enginecase import case  # noqa: F401  (the fixture)
from test_hardening_hostile import _mutated, refused
from test_hardening_s13 import SETUP
from test_hardening_s15 import _nobody
from test_hardening_s33 import _held_after_restore, _reach, _rootless_fd, _subids


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """test_hardening_s13's tree: a child in a user namespace mapping 0-65535 to 100000-165535."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _locked_etc(tmp_path, dir_owner: int, dir_mode: int):
    """tmp_path/etc holding dir/secret (ids 100033, mode 0600: its namespace maps them), dir of
    `dir_owner` with `dir_mode`."""
    etc = tmp_path / "etc"
    (etc / "dir").mkdir(parents=True)
    (etc / "dir" / "secret").write_text("x")
    os.chown(etc / "dir" / "secret", 100033, 100033)
    os.chmod(etc / "dir" / "secret", 0o600)
    os.chown(etc / "dir", dir_owner, dir_owner)
    os.chmod(etc / "dir", dir_mode)
    return etc


def test_mapped_file_in_roots_private_directory_is_refused(image, tmp_path):
    """The capability fallback (root of the tree's namespace passes a check on a file whose ids it
    maps) looked at the file alone: a file of mapped ids in root's 0700 directory was handed over,
    though no process of the tree could walk into that directory. Now each directory on the way
    must be one its user may search or one of ids the namespace maps."""
    etc = _locked_etc(tmp_path, 0, 0o700)
    img = _mutated(image, tmp_path, _rootless_fd("/dir/secret"))
    refused(img, r"process \d+ fd 5 \(file\): /dir/secret on mount \d+: .*Permission denied", tmp_path,
            extra=("--external", f"mnt[etc]:{etc}"), subids=_subids())


def test_mapped_file_in_a_mapped_private_directory_is_kept(image, tmp_path):
    """The same file in a 0700 directory of ids the namespace maps (its root may search it): kept."""
    etc = _locked_etc(tmp_path, 100000, 0o700)
    img = _mutated(image, tmp_path, _rootless_fd("/dir/secret"))
    assert _held_after_restore(img, etc, tmp_path) == "/etc/dir/secret"


def _walk(top):
    def dirs():
        return [os.open(top, os.O_PATH | os.O_CLOEXEC), os.open(top / "dir", os.O_PATH | os.O_CLOEXEC)]
    return dirs


@pytest.mark.parametrize("dir_owner, reached", [(0, False), (100000, True)])
def test_fallback_checks_every_directory_on_the_way(tmp_path, dir_owner, reached):
    """host_reach's fallback with the directories a walk searches (`dirs`): one of root's 0700 on the
    way keeps the file out of reach; one of mapped ids does not."""
    etc = _locked_etc(tmp_path, dir_owner, 0o700)
    reach = _reach(tmp_path, _nobody().pw_uid)
    path = etc / "dir" / "secret"
    at = lambda: os.open(path, os.O_PATH | os.O_CLOEXEC)   # noqa: E731

    def fn():
        os.close(os.open(path, os.O_RDONLY))
        return "opened"
    if reached:
        assert reach(1, at, fn, _walk(etc)) == "opened"
    else:
        with pytest.raises(PermissionError):
            reach(1, at, fn, _walk(etc))


def test_host_gate_reads_the_user_database_once_per_owner(monkeypatch):
    """_opening_for runs a few times a process; each read /etc/passwd and /etc/group again
    (getpwuid, getgrouplist). Now once per owner for a restore."""
    import pwd
    from engine import restore
    calls = []
    real = pwd.getpwuid
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: calls.append(uid) or real(uid))
    users = {"user-1": {"owner": _nobody().pw_uid, "parent": None,
                        "uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]]}}
    stub = types.SimpleNamespace(doc={"userns": users}, _owner_ids={})
    for _ in range(5):
        for pid in (1, 2):
            restore._Restorer._opening_for(stub, {"pid": pid, "userns": "user-1"})
    assert calls == [_nobody().pw_uid]
    assert stub._open_as == ("user-1", (_nobody().pw_uid, _nobody().pw_gid,
                                        os.getgrouplist(_nobody().pw_name, _nobody().pw_gid)))


# --- item 1: mounts of the host's files other than the external ones -----------------------------

def _detached_etc(path: str, flags: int = os.O_RDONLY, root: str = "/"):
    """The child's namespace made by nobody, its process holding `path` open at fd 5 on a detached
    mount of the host's /etc superblock (the external mount's) with root `root`."""
    def mutate(d):
        from test_hardening_s33 import _etc
        from test_hardening_s13 import _kid
        ext = next(m for ns in d["mntns"].values() for m in ns["mounts"] if m["id"] == _etc(d))
        mid = 1 + max(m["id"] for ns in d["mntns"].values() for m in ns["mounts"])
        d.setdefault("detached", {})[str(mid)] = {"id": mid, "sb": ext["sb"], "root": ext["root"].rstrip("/") + root
                                                  if root != "/" else ext["root"], "mount_opts": ["rw"]}
        d["userns"][_kid(d)["userns"]]["owner"] = _nobody().pw_uid
        _kid(d)["fds"].append({"fd": 5, "flags": flags, "mnt": mid, "detached": True, "path": path, "pos": 0})
    return mutate


def test_rootless_process_gets_no_host_file_through_a_detached_mount(image, tmp_path):
    """A detached mount of the host's /etc superblock was no host mount to the gate (only attached
    ones were): a rootless tree's fd on /shadow there was opened as root."""
    if os.stat("/etc/shadow").st_mode & 0o004:
        pytest.skip("/etc/shadow is open to all here")
    img = _mutated(image, tmp_path, _detached_etc("/shadow"))
    refused(img, r"process \d+ fd 5 \(file\): /shadow on mount \d+: .*Permission denied", tmp_path, subids=_subids())


def test_detached_bind_beneath_roots_private_directory_is_refused(image, tmp_path):
    """A detached mount of the host's /etc superblock whose root is top/sub (top root's 0700, sub
    open): its files were reached from sub, the search check of top skipped; the tree's user could
    never walk there. Refused at restore now, naming the mount."""
    etc = tmp_path / "etc"
    (etc / "top" / "sub").mkdir(parents=True)
    (etc / "top" / "sub" / "file").write_text("x")
    os.chmod(etc / "top", 0o700)
    img = _mutated(image, tmp_path, _detached_etc("/file", root="/top/sub"))
    refused(img, r"mount \d+ \(detached\): its root /\S*top/sub lies beneath a directory of the host's that its "
                 r"rootless tree's user \(uid \d+\) may not search", tmp_path,
            extra=("--external", f"mnt[etc]:{etc}"), subids=_subids())


def test_detached_bind_beneath_an_open_directory_is_kept(image, tmp_path):
    """The same with top open to all: the tree's user could walk there; restored."""
    etc = tmp_path / "etc"
    (etc / "top" / "sub").mkdir(parents=True)
    (etc / "top" / "sub" / "file").write_text("x")
    os.chmod(etc / "top", 0o755)
    img = _mutated(image, tmp_path, _detached_etc("/file", root="/top/sub"))
    pidfile = str(tmp_path / "ok.pid")
    r = enginecase.mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--external", f"mnt[etc]:{etc}",
                         "--pidfile", pidfile, timeout=120, subids=_subids())
    assert r.returncode == 0, r.stderr
    from zdtm.snapshot import kill_tree
    with open(pidfile) as f:
        kill_tree(int(f.read()))


def _overlay_on_etc(owner_kid: bool, rel: str = "/lower"):
    """The tmpfs at /dev of the rootless tree's namespace made an overlay whose lower layers are
    `rel`/a and `rel`/b of the host's /etc (the external mount), at /lower/a and /lower/b (one alone
    needs an upper), made by root (`owner_kid` False) or by the kid's namespace."""
    def mutate(d):
        from test_hardening_s33 import _etc
        from test_hardening_s13 import _kid
        d["userns"][_kid(d)["userns"]]["owner"] = _nobody().pw_uid
        ns = d["mntns"][_kid(d)["ns"]["mnt"]]
        m = next(m for m in ns["mounts"] if m["mountpoint"] == "/dev")
        sb = d["superblocks"][m["sb"]]
        if "source" in m:
            m["source"] = "overlay"
        for p in d["processes"]:   # (an overlay without upper is read-only: fds on /dev/null read only)
            for f in p["fds"]:
                if f.get("mnt") == m["id"]:
                    f["flags"] = os.O_RDONLY
        sb.update(fstype="overlay", source="overlay", archives=[], super_opts=["ro", "lowerdir=/lower/a:/lower/b"],
                  layers=[{"path": f"/lower/{x}", "mnt": _etc(d), "rel": f"{rel}/{x}"} for x in "ab"])
        for k in ("size", "nr_inodes", "mode"):
            sb.pop(k, None)
        if owner_kid:
            sb["owner"] = _kid(d)["userns"]
        else:
            sb.pop("owner", None)
    return mutate


def _overlaid(image, tmp_path, owner_kid: bool, rel: str = "/lower") -> str:
    """_overlay_on_etc's image, /dev's archive members dropped from the archive (and the manifest
    vouching for it again): restore refuses members no superblock names."""
    import hashlib
    import tarfile
    from enginecase import load_manifest, save_manifest
    member = []

    def mutate(d):
        from test_hardening_s13 import _kid
        ns = d["mntns"][_kid(d)["ns"]["mnt"]]
        arc = d["superblocks"][next(m for m in ns["mounts"] if m["mountpoint"] == "/dev")["sb"]]["archives"][0]
        member.append(arc)
        _overlay_on_etc(owner_kid, rel)(d)
    img = _mutated(image, tmp_path, mutate)
    arc = member[0]
    path = os.path.join(img, arc["file"])
    with tarfile.open(path) as src, tarfile.open(path + ".new", "w", format=tarfile.GNU_FORMAT) as dst:
        for m in src.getmembers():
            if m.name != arc["member"] and not m.name.startswith(arc["member"] + "/"):
                dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    os.rename(path + ".new", path)
    with open(path, "rb") as f:
        data = f.read()
    doc = load_manifest(img)
    doc["files"][arc["file"]] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    save_manifest(img, doc)
    return img


def _lower_layers(top):
    """`top`/lower/a (with f, and null: the tree's fds 0-2 are on /dev/null) and `top`/lower/b."""
    for x in "ab":
        (top / "lower" / x).mkdir(parents=True)
    (top / "lower" / "a" / "f").write_text("x")
    (top / "lower" / "a" / "null").write_text("")
    os.chmod(top / "lower" / "a" / "null", 0o666)


def _lower_etc(tmp_path):
    etc = tmp_path / "etc"
    _lower_layers(etc)
    return etc


def test_root_made_overlay_on_host_layers_for_a_rootless_tree_is_refused(image, tmp_path):
    """An overlay a rootless tree sees, made with root's credentials on a layer of the host's files:
    it reads (and would copy up) as root whatever the layer holds. Its user could never make it."""
    etc = _lower_etc(tmp_path)
    img = _overlaid(image, tmp_path, False)
    refused(img, r"mount \d+ \(/dev\) on overlay: made with root's credentials on a layer of the host's mount \d+, "
                 r"for a rootless tree whose user could not make it", tmp_path, extra=("--external", f"mnt[etc]:{etc}"), subids=_subids())


def test_rootless_overlay_on_a_layer_beneath_roots_private_directory_is_refused(image, tmp_path):
    """The overlay made by the tree's own namespace (its credentials, not root's) on top/lower/a and
    b of the host's /etc, top root's 0700: the layer's clone skipped the search check of top. Refused."""
    etc = tmp_path / "etc"
    _lower_layers(etc / "top")
    os.chmod(etc / "top", 0o700)
    img = _overlaid(image, tmp_path, True, "/top/lower")
    refused(img, r"mount \d+ \(/dev\) on overlay: its layer directory /top/lower on mount \d+ lies beneath a directory "
                 r"of the host's that its rootless tree's user \(uid \d+\) may not search", tmp_path,
            extra=("--external", f"mnt[etc]:{etc}"), subids=_subids())


def test_rootless_overlay_on_an_open_host_layer_is_restored(image, tmp_path):
    """The same with top open to all: made (by the tree's namespace), its file shown."""
    etc = tmp_path / "etc"
    _lower_layers(etc / "top")
    os.chmod(etc / "top", 0o755)
    img = _overlaid(image, tmp_path, True, "/top/lower")
    pidfile = str(tmp_path / "ok.pid")
    r = enginecase.mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--external", f"mnt[etc]:{etc}",
                         "--pidfile", pidfile, timeout=120, subids=_subids())
    assert r.returncode == 0, r.stderr
    from zdtm.snapshot import kill_tree
    with open(pidfile) as f:
        root = int(f.read())
    try:
        with open(f"/proc/{root}/root/dev/f") as f:
            assert f.read() == "x"
    finally:
        kill_tree(root)


# --- item 3: a host file root passed into a rootless namespace is refused at dump, unstopped ------

# A child opens the container's /etc/shadow (the host's, an external mount) as root, becomes uid
# 1000 and unshares a user namespace (uid 1000's: a rootless tree), mapped 0 -> 1000 by its parent,
# and holds the file at fd 5 (restore would refuse it: uid 1000 cannot open /etc/shadow).
_ROOTLESS_KID = """
import time
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    import ctypes, signal
    OPENED
    os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
    assert ctypes.CDLL(None).unshare(FLAGS) == 0
    os.write(w, b"x")
    while not os.path.exists("/run/mapped"):
        time.sleep(0.02)
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
os.read(r, 1)
for m, text in (("setgroups", "deny"), ("uid_map", "0 1000 1"), ("gid_map", "0 1000 1")):
    with open(f"/proc/{kid}/{m}", "w") as f:
        f.write(text)
open("/run/mapped", "w").close()
"""


def rootless_kid(opened: str = "pass", flags: int = 0x10000000) -> str:
    """A holder's script: its child runs `opened` as root, becomes uid 1000 and unshares `flags`
    (CLONE_NEWUSER, and more), mapped 0 -> 1000 by the holder: a rootless tree."""
    return _ROOTLESS_KID.replace("OPENED", opened).replace("FLAGS", hex(flags))


_ROOT_FILE_IN_ROOTLESS = rootless_kid('os.dup2(os.open("/etc/FILE", os.O_RDONLY), 5)')


def test_root_opened_host_file_in_a_rootless_tree_is_refused_at_dump_unstopped(case):
    """A root process opened the host's /etc/shadow and passed it into a user namespace uid 1000
    made: dump took it, restore refused it (uid 1000 could not open it). Dump refuses it now,
    before the stop, naming the fd and the user."""
    from enginecase import STOP_WATCH, py_hold
    from test_engine_prestop import _refused_unstopped
    st = os.stat("/etc/shadow")
    if st.st_mode & 0o004:
        pytest.skip("/etc/shadow is open to all here")
    pid = case.start(STOP_WATCH + py_hold(_ROOT_FILE_IN_ROOTLESS.replace("FILE", "shadow")))
    _refused_unstopped(case, pid, r"process \d+ fd 5: /etc/shadow is a file of the host's that its rootless tree's "
                                  r"user \(uid 1000\) could not open \(root opened it\): restore would refuse it; "
                                  r"declare it --external file\[PATH\]:KEY, or have the tree open it as its user")


def test_root_opened_host_file_its_user_could_open_is_dumped(case):
    """The same tree holding /etc/passwd (open to all): dumped."""
    from enginecase import STOP_WATCH, py_hold
    pid = case.start(STOP_WATCH + py_hold(_ROOT_FILE_IN_ROOTLESS.replace("FILE", "passwd")))
    images = case.new_images_dir()
    case.dump(pid, images)
    assert os.path.exists(os.path.join(images, "mntcr.json"))
