"""engine.content's tar runner (posix_spawn, not subprocess) and its archive digests (builtin sha256
under a MiB, OpenSSL's above): what the callers rely on, checked against the real outcome."""

import hashlib
import os
import signal

import pytest

from engine import content


def _sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_run_returns_status_and_both_outputs():
    code, out, err = content.run(_sh("echo out; echo err >&2; exit 3"))
    assert (code, out, err) == (3, b"out\n", b"err\n")


def test_run_stdin_fd_and_stdout_fd(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(b"abc\n" * 1000)
    with open(src, "rb") as i, open(dst, "wb") as o:
        code, out, err = content.run(["/bin/cat"], stdin=i.fileno(), stdout=o.fileno())
    assert (code, out, err) == (0, b"", b"")
    assert dst.read_bytes() == src.read_bytes()


def test_run_stdin_defaults_to_dev_null():
    assert content.run(["/bin/cat"])[:2] == (0, b"")


def test_run_large_output_does_not_block():
    # More than a pipe holds (64 KiB): the output goes to a memory file, read after the exit.
    code, out, _ = content.run(_sh("head -c 1000000 /dev/zero"))
    assert code == 0 and len(out) == 1000000


def test_run_passes_only_pass_fds():
    inherited = os.open("/dev/null", os.O_RDONLY)   # not close-on-exec: subprocess's close_fds closed it too
    os.set_inheritable(inherited, True)
    passed = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        code, out, _ = content.run(_sh("ls /proc/self/fd"), pass_fds=(passed,))
        fds = {int(x) for x in out.split()}
        assert passed in fds and inherited not in fds, fds
        assert os.get_inheritable(passed) is False   # as it was before the spawn
        content.run(["/bin/true"], pass_fds=(inherited,))
        assert os.get_inheritable(inherited) is True
    finally:
        os.close(inherited)
        os.close(passed)


def test_run_restores_sigpipe_default():
    # Python ignores SIGPIPE, and an ignored signal stays ignored through exec: tar must die of it
    # as from a shell, as subprocess arranged.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    code, out, _ = content.run(_sh("grep SigIgn /proc/self/status"))
    assert code == 0
    assert not int(out.split()[1], 16) & (1 << (signal.SIGPIPE - 1))


@pytest.mark.parametrize("closed", ["0", "0 1", "0 1 2"])
def test_run_with_our_stdio_closed(tmp_path, closed):
    """A caller whose fds 0-2 are closed (a verb started with `<&-`): the memory files for the
    program's outputs land there unless moved, and the dup2 of the fd before them overwrote them
    (the program's output went to its stdin, its error message nowhere)."""
    script = tmp_path / "run.py"
    result = tmp_path / "result"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from engine import content
r, w = os.pipe()
os.write(w, b"in"); os.close(w)
r = os.dup2(r, 10)
for fd in ({closed.replace(" ", ", ")},):
    os.close(fd)
a = content.run(["/bin/cat"], stdin=10)
b = content.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
open({str(result)!r}, "w").write(repr((a, b)))
""")
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/usr/bin/python3", ["python3", str(script)])
        finally:
            os._exit(127)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert result.read_text() == repr(((0, b"in", b""), (3, b"out\n", b"err\n")))


def test_run_env():
    code, out, _ = content.run(_sh('echo "$LC_ALL"'), env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert (code, out) == (0, b"C\n")


def test_run_missing_program_raises():
    with pytest.raises(FileNotFoundError):
        content.run(["/nonexistent/tar"])


@pytest.mark.parametrize("size", [0, 1, content.BIG - 1, content.BIG, content.BIG + 12345])
def test_digest_is_sha256_on_both_sides_of_big(tmp_path, size):
    p = tmp_path / "a"
    data = os.urandom(size)
    p.write_bytes(data)
    assert content.digest_path(str(p)) == {"size": size, "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("at", [0, 5, 6, 7, 9, 10, 11, 15, 19])
@pytest.mark.parametrize("chunk", [1, 3, 10, 1 << 20])
def test_digest_finds_a_word_anywhere(tmp_path, at, chunk):
    # Across the edges of the reads too (chunk 10: the word at 7-12 straddles the first edge).
    p = tmp_path / "a"
    data = bytearray(b"-" * 25)
    data[at:at + 6] = b"xattr."
    p.write_bytes(bytes(data))
    fd = os.open(p, os.O_RDONLY)
    try:
        got, found = content._digest(fd, content.XATTR_WORDS, chunk=chunk)
        assert found and got == {"size": 25, "sha256": hashlib.sha256(data).hexdigest()}
        data[at + 5] = ord("_")    # no word left
        p.write_bytes(bytes(data))
        assert content._digest(fd, content.XATTR_WORDS, chunk=chunk)[1] is False
    finally:
        os.close(fd)


@pytest.mark.parametrize("what", ["xattr", "acl", "none"])
def test_tar_archive_words_tell_xattrs_and_acls(tmp_path, what):
    # What GNU tar writes for a file's xattr or ACL is found; a plain archive has no such word.
    # (setfattr on the host's /tmp: an archive of one file, made as dump makes them.)
    import subprocess
    d = tmp_path / "d"
    d.mkdir()
    f = d / "f"
    f.write_bytes(b"data\n")
    if what == "xattr":
        os.setxattr(f, "trusted.mark", b"1")
    elif what == "acl":
        # version 2; USER_OBJ rw, USER 1234 r, GROUP_OBJ r, MASK r, OTHER none
        acl = b"\x02\x00\x00\x00" + b"".join(
            tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + uid.to_bytes(4, "little")
            for tag, perm, uid in [(1, 6, 0xFFFFFFFF), (2, 4, 1234), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
                                   (0x20, 0, 0xFFFFFFFF)])
        os.setxattr(f, "system.posix_acl_access", acl)
    out = tmp_path / "a.tar"
    subprocess.run([content.tar(), "-C", str(d), *content.COMMON, "-cf", str(out), "."], check=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        assert content._digest(fd, content.XATTR_WORDS)[1] is (what != "none")
    finally:
        os.close(fd)


def test_big_archive_hash_without_openssl_in_reach(monkeypatch):
    # A helper out of the library's reach (its archive was not read ahead) still hashes: builtin sha256.
    def unreachable(big=False):
        raise ImportError("hashlib")
    monkeypatch.setattr(content, "tools", unreachable)
    monkeypatch.setattr(content, "hashlib", None)
    h = content._sha256(content.BIG)
    h.update(b"x")
    assert h.hexdigest() == hashlib.sha256(b"x").hexdigest()
