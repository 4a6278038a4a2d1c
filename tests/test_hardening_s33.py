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
        assert os.readlink(f"/proc/{kid}/fd/5") == "/etc/secret"
    finally:
        kill_tree(root)


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
