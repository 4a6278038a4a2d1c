"""content.ReadAhead: the archives `mntcr restore` reads (hashes, lists) while it loads the manifest.

What it reads must be what the extraction child would have found on the same fd; whatever it does
not read (too big, not a regular file, not an archive's name, beyond the count) is left to the
usual checks. No mounts: plain files in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from engine import content


@pytest.fixture(autouse=True)
def _small_archives_too(monkeypatch):
    monkeypatch.setattr(content, "AHEAD_MIN", 0)   # (the archives here are a few KiB)


def _tar(tmp_path, name: str, xattr: bool = False) -> bytes:
    src = tmp_path / f"src-{name}"
    (src / "sb-0").mkdir(parents=True)
    (src / "sb-0" / "f").write_text(name)
    if xattr:
        os.setxattr(src / "sb-0" / "f", "trusted.mark", b"1")
    out = tmp_path / "img" / name
    out.parent.mkdir(exist_ok=True)
    subprocess.run([content.tar(), "-C", str(src), *content.COMMON, "-cf", str(out), "sb-0"], check=True)
    return out.read_bytes()


def test_reads_each_archive_as_the_extraction_child_would(tmp_path):
    _tar(tmp_path, "files-0.tar")
    _tar(tmp_path, "files-1.tar", xattr=True)
    (tmp_path / "img" / "mntcr.json").write_text("{}")          # not an archive's name: not read
    os.mkfifo(tmp_path / "img" / "files-2.tar")                  # not a regular file: not read (nor blocked on)
    os.symlink("files-0.tar", tmp_path / "img" / "files-3.tar")  # a symlink: not followed
    ahead = content.ReadAhead(str(tmp_path / "img"))
    try:
        assert sorted(ahead.fds) == ["files-0.tar", "files-1.tar"]
        for name, xattrs in (("files-1.tar", True), ("files-0.tar", False)):   # any order
            fd = ahead.take_fd(name)
            try:
                got, words, code, err, listing = ahead.result(name)
                try:
                    assert (got, words) == content._digest(fd, content.XATTR_WORDS)
                    assert words is xattrs
                    assert code == 0 and b"sb-0/f" in content.read_from_start(listing)
                finally:
                    os.close(listing)
            finally:
                os.close(fd)
        for name in ("files-2.tar", "files-3.tar", "mntcr.json", "files-9.tar"):
            assert ahead.take_fd(name) is None and ahead.result(name) is None
        assert ahead.pending is None   # its last answer came: reaped
    finally:
        ahead.close()


def test_too_big_and_too_many_are_left_to_the_usual_checks(tmp_path, monkeypatch):
    data = _tar(tmp_path, "files-0.tar")
    monkeypatch.setattr(content, "AHEAD_MAX", len(data) - 1)
    ahead = content.ReadAhead(str(tmp_path / "img"))
    try:
        assert ahead.fds == {} and ahead.pending is None and ahead.result("files-0.tar") is None
    finally:
        ahead.close()
    monkeypatch.setattr(content, "AHEAD_MAX", 64 << 20)
    monkeypatch.setattr(content, "_AHEAD_FILES", 2)
    for n in (1, 2, 10):
        (tmp_path / "img" / f"files-{n}.tar").write_bytes(data)
    ahead = content.ReadAhead(str(tmp_path / "img"))
    try:
        assert sorted(ahead.fds) == ["files-0.tar", "files-1.tar"]   # in dump's order (files-10 last)
    finally:
        ahead.close()
    assert ahead.fds == {} and ahead.pending is None


def test_a_damaged_listing_is_reported_by_the_check(tmp_path):
    # tar -t's failure read ahead is the check's failure, as it would have been in the child.
    data = _tar(tmp_path, "files-0.tar")
    (tmp_path / "img" / "files-0.tar").write_bytes(b"x" * 512 + data[512:])
    ahead = content.ReadAhead(str(tmp_path / "img"))
    try:
        fd = ahead.take_fd("files-0.tar")
        _, _, code, err, listing = ahead.result("files-0.tar")
        assert code != 0
        with pytest.raises(OSError, match="archive files-0.tar is damaged"):
            content.check_members(fd, "files-0.tar", {"sb-0"}, (code, content.read_from_start(listing), err))
        os.close(listing)
        os.close(fd)
    finally:
        ahead.close()


def test_a_helper_that_fails_leaves_every_archive_to_the_usual_checks(tmp_path, monkeypatch):
    _tar(tmp_path, "files-0.tar")
    monkeypatch.setattr(content, "_tar", lambda: "/nonexistent/tar")   # its spawn fails
    ahead = content.ReadAhead(str(tmp_path / "img"))
    try:
        fd = ahead.take_fd("files-0.tar")
        assert ahead.result("files-0.tar") is None and ahead.pending is None
        os.close(fd)
    finally:
        ahead.close()


def test_a_missing_directory_raises_for_restore_to_leave_to_image_load(tmp_path):
    with pytest.raises(OSError):
        content.ReadAhead(str(tmp_path / "none"))


def test_close_does_not_wait_for_the_helper(tmp_path, monkeypatch):
    # A restore that fails early (a refused manifest) ends at once: the helper is killed, not awaited.
    import signal
    _tar(tmp_path, "files-0.tar")
    monkeypatch.setattr(content, "_digest", lambda fd, words: signal.pause())   # reads forever
    ahead = content.ReadAhead(str(tmp_path / "img"))
    pid = ahead.pending.pid
    statuses = []
    real = os.waitpid

    def waitpid(p, options):
        got = real(p, options)
        statuses.append(got)
        return got
    monkeypatch.setattr(os, "waitpid", waitpid)
    ahead.close()
    assert ahead.pending is None
    (got_pid, status), = statuses
    assert got_pid == pid and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_small_archives_are_left_to_the_extraction_children(tmp_path, monkeypatch):
    data = _tar(tmp_path, "files-0.tar")
    _tar(tmp_path, "files-1.tar")
    monkeypatch.setattr(content, "AHEAD_MIN", 2 * len(data) + 1)   # both together are smaller
    ahead = content.ReadAhead(str(tmp_path / "img"))
    assert ahead.fds == {} and ahead.pending is None and ahead.result("files-0.tar") is None
    ahead.close()
    monkeypatch.setattr(content, "AHEAD_MIN", 2 * len(data))
    ahead = content.ReadAhead(str(tmp_path / "img"))
    try:
        assert sorted(ahead.fds) == ["files-0.tar", "files-1.tar"] and ahead.pending is not None
    finally:
        ahead.close()
