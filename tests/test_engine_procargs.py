"""A process's command line and environment (/proc/PID/cmdline, /proc/PID/environ) go into the image
and its stand-in shows them again (engine/procargs.py: PR_SET_MM_MAP). Stand-ins showed the
restorer's: `python3 -S -c ... restore -D DIR` and the environment mntcr ran with. Every scenario's
snapshot compares both files (zdtm.snapshot); scenarios/fds/process_args.yaml has real programs."""

from __future__ import annotations

import base64
import os
import signal

import pytest

from engine import imageformat, procargs
from enginecase import HOLD, case  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids


def _shown_by_child(cmdline: bytes, environ: bytes) -> tuple[bytes, bytes]:
    """What /proc/CHILD/cmdline and environ show once a fork of ours took `cmdline` and `environ`."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            procargs.take(cmdline, environ)
            os.write(w, b"x")
            signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x", "the child could not take them"
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            shown_cmd = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            shown_env = f.read()
        return shown_cmd, shown_env
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)


@pytest.mark.parametrize("cmdline, environ", [
    (b"sleep\x00100000\x00", b"FOO=bar\x00PATH=/bin\x00"),
    (b"sleep\x00100000\x00", b""),                                   # env -i
    (b"nginx: master process /usr/sbin/nginx", b"A=1\x00"),          # setproctitle: no NUL last
    (b"worker: idle\x00", b"        "),                             # perl's $0: padded with spaces
    (b"raw\xff\xfe\x00", b"RAW=\xff\x00BIG=" + b"a" * 200000 + b"\x00"),
    (b"", b""),
])
def test_a_stand_in_shows_the_bytes_it_was_given(cmdline, environ):
    assert _shown_by_child(cmdline, environ) == (cmdline, environ)


def test_the_image_keeps_base64_up_to_the_limit():
    rule = imageformat.PROCESS.fields["environ"].rule
    assert rule(base64.b64encode(b"A=1\x00").decode()) is None
    assert rule("not base64!") is not None
    assert "at most" in rule(base64.b64encode(b"x" * (procargs.MAX_BYTES + 1)).decode())


def test_dump_and_restore_keep_them(case):
    pid = case.start(f"env -i SECRET=s3cr3t LANG=C.UTF-8 {HOLD} 100001 </dev/null >/dev/null 2>&1 &\n"
                     f"exec </dev/null >/dev/null 2>&1\nexec env -i HOLDER=1 {HOLD} 100000\n")
    child = next(p for p in tree_pids(pid) if p != pid)

    def shown(p: int) -> tuple[bytes, bytes]:
        with open(f"/proc/{p}/cmdline", "rb") as f, open(f"/proc/{p}/environ", "rb") as g:
            return f.read(), g.read()
    want = {shown(pid), shown(child)}
    assert (f"{HOLD}\x00100001\x00".encode(), b"SECRET=s3cr3t\x00LANG=C.UTF-8\x00") in want, want
    after = case.cr(pid)
    assert {shown(p) for p in tree_pids(after)} == want
