"""content.extract(here=True): the filler's archives extracted in its own process, not a child each.

The same checks, the same result and the same refusals as the extraction child's path; only the
process differs (it ends up in a private mount namespace of its own, the child's way, made once
for all its archives). Each case runs in a forked child with a mount namespace of its own: nothing
touches the host's.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from engine import channel, content, forkrun, kernel, standin

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fsmount, mount namespaces)")


def _archive(tmp_path, member: str = "sb-0/f") -> tuple[str, dict]:
    """An archive holding `member` (a file reading "data"), with its manifest entry."""
    src = tmp_path / "src"
    (src / os.path.dirname(member)).mkdir(parents=True, exist_ok=True)
    (src / member).write_text("data")
    out = tmp_path / "files-0.tar"
    subprocess.run([content.tar(), "-C", str(src), "--numeric-owner", "-cf", str(out), member.split("/")[0]],
                   check=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        return str(out), content.digest_fd(fd)
    finally:
        os.close(fd)


def _extract(path: str, expect: dict, here: bool, member: str = "sb-0", times: int = 1) -> dict:
    """In this (forked) process: new tmpfs filled from the archive, `times` over; what came of it."""
    def no_child(*a):
        raise AssertionError("forked an extraction child")
    if here:
        channel.call_in_child = no_child   # (this process only: it is a throwaway fork)
    ns = os.stat("/proc/self/ns/mnt").st_ino
    sbs = [standin.fsmount("tmpfs", "x", [], 0) for _ in range(times)]
    before = set(os.listdir("/proc/self/fd"))
    seen_ns, error = set(), None
    for sb in sbs:
        afd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            content.extract(afd, "files-0.tar", expect, [(sb, member)], here=here)
        except OSError as e:
            error = str(e)
        finally:
            os.close(afd)
        seen_ns.add(os.stat("/proc/self/ns/mnt").st_ino)
    data = []
    for sb in sbs:
        try:
            data.append(open(f"/proc/self/fd/{sb}/f").read())
        except OSError:
            data.append(None)
    return {"error": error, "data": data, "own_ns": seen_ns != {ns}, "namespaces": len(seen_ns),
            "fds_left": sorted(set(os.listdir("/proc/self/fd")) - before)}


@pytest.mark.parametrize("here", [False, True])
def test_extracts_the_same_in_either_process(tmp_path, here):
    path, expect = _archive(tmp_path)
    got = forkrun.run(_extract, path, expect, here, times=3, unshare_flags=kernel.CLONE_NEWNS)
    assert got["error"] is None and got["data"] == ["data"] * 3
    assert got["own_ns"] is here     # here: this process went into the staging namespace itself,
    assert got["namespaces"] == 1    # made once for all its archives
    assert got["fds_left"] == []     # the clones attached in staging are closed, in either path


@pytest.mark.parametrize("here", [False, True])
def test_refuses_the_same_in_either_process(tmp_path, here):
    path, expect = _archive(tmp_path)
    damaged = forkrun.run(_extract, path, dict(expect, sha256="0" * 64), here, unshare_flags=kernel.CLONE_NEWNS)
    assert "files-0.tar is damaged" in damaged["error"] and damaged["data"] == [None]
    assert damaged["fds_left"] == [] and damaged["own_ns"] is False   # refused before any staging
    # A member that is not the one this superblock takes: refused by the listing's check, untouched.
    stray = forkrun.run(_extract, path, expect, here, "sb-1", unshare_flags=kernel.CLONE_NEWNS)
    assert "unsafe member 'sb-0" in stray["error"] and stray["data"] == [None] and stray["fds_left"] == []


def _times(path: str, sb_dirs: list[str]) -> dict:
    sb = standin.fsmount("tmpfs", "x", [], 0)
    afd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        content.extract(afd, "files-0.tar", content.digest_fd(afd), [(sb, "sb-0")], here=True)
    finally:
        os.close(afd)
    return {d: os.lstat(f"/proc/self/fd/{sb}/{d}").st_mtime_ns for d in sb_dirs}


def test_directory_times_come_back(tmp_path):
    # Directories whose files are extracted after them: tar sets each one's times as it leaves it
    # (dump's archives list a directory's members right after it), not at the end of the archive.
    src = tmp_path / "src" / "sb-0"
    dirs = ["d", "d/e", "d/e/g", "h"]
    for d in dirs:
        (src / d).mkdir(parents=True, exist_ok=True)
        (src / d / "f").write_text(d)
    for n, d in enumerate(reversed(dirs)):   # (deepest first: a child's utime does not touch its parent)
        os.utime(src / d, (10**9 + 1000 * n, 10**9 + 1000 * n))   # (whole seconds: ustar keeps no more)
    out = tmp_path / "files-0.tar"
    subprocess.run([content.tar(), "-C", str(tmp_path / "src"), "--numeric-owner", "-cf", str(out), "sb-0"],
                   check=True)
    want = {d: os.lstat(src / d).st_mtime_ns for d in dirs}
    assert forkrun.run(_times, str(out), dirs, unshare_flags=kernel.CLONE_NEWNS) == want


def _many(path: str, n: int, limit: int) -> dict:
    """In this (forked) process, fd limit `limit`: n new tmpfs filled from one archive (here)."""
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    sbs = [standin.fsmount("tmpfs", "x", [], 0) for _ in range(n)]
    afd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        content.extract(afd, "files-0.tar", content.digest_fd(afd), [(sb, f"sb-{i}") for i, sb in enumerate(sbs)],
                        here=True)
    finally:
        os.close(afd)
    return [open(f"/proc/self/fd/{sb}/f").read() for sb in sbs]


def test_one_archive_of_many_superblocks_takes_one_fd_more(tmp_path):
    """Dump puts up to 500 superblocks' roots in one archive; the filler holds each one's fd. Each is
    cloned as it is staged (then closed), not all before: 400 of them extract under a limit of 464,
    where a clone of each at once (800 fds) ended in open_tree's EMFILE."""
    n = 400
    src = tmp_path / "src"
    for i in range(n):
        (src / f"sb-{i}").mkdir(parents=True)
        (src / f"sb-{i}" / "f").write_text(f"data {i}")
    out = tmp_path / "files-0.tar"
    subprocess.run([content.tar(), "-C", str(src), "--numeric-owner", "-cf", str(out), *sorted(os.listdir(src))],
                   check=True)
    got = forkrun.run(_many, str(out), n, n + 64, unshare_flags=kernel.CLONE_NEWNS)
    assert got == [f"data {i}" for i in range(n)]
