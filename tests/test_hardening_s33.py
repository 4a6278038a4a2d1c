"""Session 33's findings of the image fuzzer (zdtm/imagefuzz.py, tests/test_image_fuzz.py): each
is a real dump changed as an attacker with write access to the image directory would, refused
with exit status 2 and one line, nothing left running or mounted (test_hardening_hostile.refused).
"""

from __future__ import annotations

import os

import pytest

import enginecase
from test_hardening_hostile import _mutated, refused
from test_hardening_s13 import SETUP, _kid, _restored
from test_hardening_s15 import _nobody


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """test_hardening_s13's tree: a child in a user namespace mapping 0-65535 to 100000-165535."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _etc(d) -> int:
    return next(m["id"] for ns in d["mntns"].values() for m in ns["mounts"] if m.get("external") == "etc")


def _rootless_fd(path: str, flags: int = os.O_RDONLY):
    """The child's namespace made by nobody (a rootless tree), its process holding `path` of the
    host's /etc (the external mount) open at fd 5."""
    def mutate(d):
        d["userns"][_kid(d)["userns"]]["owner"] = _nobody().pw_uid
        _kid(d)["fds"].append({"fd": 5, "flags": flags, "mnt": _etc(d), "path": path, "pos": 0})
    return mutate


def _subids() -> str:
    return f"{_nobody().pw_uid}:100000:65536\n"   # (the namespace's ranges are nobody's here)



def _held_after_restore(img: str, etc, tmp_path) -> str:
    """Restore `img` with `etc` as its external /etc (nobody's subids): what the child's fd 5 names."""
    pidfile = str(tmp_path / "ok.pid")
    r = enginecase.mntcr("restore", "-D", img, "--external", "mnt[usr]:/usr", "--external", f"mnt[etc]:{etc}",
                         "--pidfile", pidfile, timeout=120, subids=_subids())
    assert r.returncode == 0, r.stderr
    from zdtm.snapshot import kill_tree
    with open(pidfile) as f:
        root = int(f.read())
    try:
        with open(f"/proc/{root}/task/{root}/children") as f:
            kid = int(f.read().split()[0])
        return os.readlink(f"/proc/{kid}/fd/5")
    finally:
        kill_tree(root)


@pytest.mark.parametrize("path, flags", [("/shadow", os.O_RDONLY), ("/passwd", os.O_WRONLY)])
def test_rootless_process_gets_no_host_file_its_ids_cannot_open(image, tmp_path, path, flags):
    """Restore opened every fd as root: an image of a rootless tree (a user namespace nobody made)
    whose process holds the host's /etc/shadow, or /etc/passwd for writing, got it (host uid
    100000 holding root's files, which its owner, nobody, could take with pidfd_getfd). A host's
    file is opened with the process's own ids now."""
    if not os.path.exists("/etc" + path):
        pytest.skip(f"no /etc{path} here")
    st = os.stat("/etc" + path)
    if st.st_mode & (0o004 if flags == os.O_RDONLY else 0o002):
        pytest.skip(f"/etc{path} is open to all here")
    img = _mutated(image, tmp_path, _rootless_fd(path, flags))
    refused(img, rf"process \d+ fd 5 \(file\): {path} on mount \d+: .*Permission denied", tmp_path,
            subids=_subids())


def test_rootless_process_keeps_a_host_file_its_ids_open(image, tmp_path):
    """The same tree holding the host's /etc/passwd for reading (every user may): restored."""
    img = _mutated(image, tmp_path, _rootless_fd("/passwd"))
    with _restored(img, tmp_path, subids=_subids()) as root:
        with open(f"/proc/{root}/task/{root}/children") as f:
            kid = int(f.read().split()[0])
        assert os.readlink(f"/proc/{kid}/fd/5") == "/etc/passwd"


def test_rootless_root_keeps_a_host_file_of_ids_its_namespace_maps(image, tmp_path):
    """Its namespace's root (CAP_DAC_OVERRIDE there) holding a host's file mode 0600 of an id the
    namespace maps (100033, its uid 33): the kernel lets it, so restore does too."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "secret").write_text("x")
    os.chown(etc / "secret", 100033, 100033)
    os.chmod(etc / "secret", 0o600)
    img = _mutated(image, tmp_path, _rootless_fd("/secret"))
    assert _held_after_restore(img, etc, tmp_path) == "/etc/secret"


# --- a resource limit whose soft value is above its hard one -------------------------------------

@pytest.mark.parametrize("limit, pair", [("AS", [-1, 0]), ("NOFILE", [2048, 1024])])
def test_soft_limit_above_hard_is_refused_by_the_validator(image, tmp_path, limit, pair):
    """The fuzzer's `rlimits.AS` [-1, 0]: the validator took it and the stand-in's last steps failed
    (prlimit64: Invalid argument), naming RLIMIT_NPROC. The kernel never shows such a pair."""
    img = _mutated(image, tmp_path, lambda d: d["processes"][0].setdefault("rlimits", {}).__setitem__(limit, pair))
    refused(img, r"bad image: process \d+: 'rlimits' must map resource names to \[soft, hard\], soft at most hard",
            tmp_path)


@pytest.mark.parametrize("nr, name", [(9, "RLIMIT_AS"), (2, "RLIMIT_DATA"), (6, "RLIMIT_NPROC")])
def test_a_late_limit_that_fails_is_named(nr, name):
    """A stand-in's last prlimit64 step that fails names its own limit (it said RLIMIT_NPROC for all)."""
    import errno
    import struct
    from engine import lastword
    word = struct.pack("=QQ", 3, (-errno.EINVAL) & ((1 << 64) - 1)) + lastword.ENTRY.pack(302, 0, nr, 0, 0, 0, 0, 1, 0)
    assert lastword.explain(word) == (errno.EINVAL, f"prlimit64 (its {name}, once its threads are made): "
                                                    "Invalid argument")


def test_rootless_process_keeps_a_host_file_its_user_opened_before_dropping_ids(image, tmp_path):
    """A process holds what it opened before it dropped its ids (a log its container's root opened,
    then setuid to www-data): restore opens a host's file as far as the tree's user could (here
    nobody's own 0600 file), not as far as the process's present ids could (host uid 100000, which
    was refused: Permission denied)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "log").write_text("x")
    nobody = _nobody()
    os.chown(etc / "log", nobody.pw_uid, nobody.pw_gid)
    os.chmod(etc / "log", 0o600)
    os.chmod(tmp_path, 0o755)
    img = _mutated(image, tmp_path, _rootless_fd("/log"))
    assert _held_after_restore(img, etc, tmp_path) == "/etc/log"


def _reach(tmp_path, owner: int):
    """restore._Restorer.host_reach on a stub restorer whose mount 1 is the host's, for a tree whose
    user namespace `user-1` user `owner` made, mapping 0-65535 to 100000-165535."""
    import types
    from engine import restore, userns
    users = {"user-1": {"owner": owner, "parent": None,
                        "uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]]}}
    stub = types.SimpleNamespace(doc={"userns": users}, _host_ids=lambda: frozenset({1}))
    gate = userns.host_gate({"pid": 1, "userns": "user-1"}, users)
    return restore._Restorer.host_reach(stub, gate)


def _connect(at: int):
    """Connect to the socket file of O_PATH fd `at` as restore does: through its /proc magic link
    (no search of the directories above it as the user)."""
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/proc/self/fd/{at}")
    finally:
        s.close()


@pytest.mark.parametrize("sock_owner, mode, reached", [(0, 0o600, False), (0, 0o666, True), (100033, 0o600, True)])
def test_rootless_connect_to_a_host_socket_as_its_user_could(tmp_path, sock_owner, mode, reached):
    """A rootless tree's connection to a host's socket (a `connect` on an external mount) is made
    only where the tree's user could make it: root's 0600 socket (/run/docker.sock) is refused, an
    open one or one of ids its namespace maps is reached. Before, restore connected as root."""
    import socket
    path = tmp_path / "sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    os.chown(path, sock_owner, sock_owner)
    os.chmod(path, mode)
    reach = _reach(tmp_path, _nobody().pw_uid)
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    at = lambda: os.dup(fd)   # noqa: E731
    try:
        if reached:
            reach(1, at, lambda: _connect(fd))
        else:
            with pytest.raises(PermissionError):
                reach(1, at, lambda: _connect(fd))
        reach(2, at, lambda: _connect(fd))   # (a mount the tree makes: as root)
    finally:
        os.close(fd)
        srv.close()


def test_unix_connect_goes_through_reach(monkeypatch):
    """unix._connect_to connects to a named socket on a mount through RestoreFd.reach (the gate)."""
    from engine.fds import unix, unix_ghost, RestoreFd
    monkeypatch.setattr(unix_ghost, "sock_file", lambda r, c: os.open("/", os.O_PATH))
    seen = []

    def reach(mnt, at, fn):
        os.close(at())
        seen.append(mnt)
        raise PermissionError(13, "denied")
    r = RestoreFd(entry={"fd": 3}, objects={}, state={}, open_at=None, standin=None, keep=[], reach=reach)
    with pytest.raises(PermissionError):
        unix._connect_to(r, None, {"mnt": 7, "at": "/run/docker.sock"})
    assert seen == [7]
