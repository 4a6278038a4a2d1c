"""`mntcr diff` and `mntcr show` on real namespaces and files."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from engine import cli, kernel, mountinfo
from engine.forkrun import in_mount_ns
from enginecase import case  # noqa: F401  (fixture)


def _mountinfo_with_extra_tmpfs() -> tuple[str, str]:
    """(mountpoint, mountinfo text) of a private child namespace with one more tmpfs."""
    target = tempfile.mkdtemp(prefix="mntcr-diff-")
    kernel.mount("extra src", target, "tmpfs", 0, "size=1m")
    with open("/proc/self/mountinfo") as f:
        return target, f.read()


@pytest.fixture
def other_namespace(tmp_path):
    """Two mountinfo files: a private copy of this namespace, and the same plus one tmpfs."""
    def plain():
        with open("/proc/self/mountinfo") as f:
            return f.read()
    base = tmp_path / "base.mountinfo"
    base.write_text(in_mount_ns(plain))
    target, text = in_mount_ns(_mountinfo_with_extra_tmpfs)
    other = tmp_path / "other.mountinfo"
    other.write_text(text)
    yield str(base), str(other), target
    os.rmdir(target)  # an empty directory on the host: the tmpfs lived in the child


def test_diff_two_namespaces_names_the_mount(other_namespace, capsys):
    base, other, target = other_namespace
    assert cli.main(["diff", base, other]) == 1
    out = capsys.readouterr().out
    assert out.startswith("different: 0 changed, 0 only in A, 1 only in B")
    plus = [line for line in out.splitlines() if line.startswith("+")]
    assert len(plus) == 1 and target in plus[0] and r"extra\040src" in plus[0]  # escaped like mountinfo
    # The reverse direction reports it as dropped.
    assert cli.main(["diff", other, base]) == 1
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("-") and target in line]


def test_diff_live_process_in_other_namespace(capsys):
    d = tempfile.mkdtemp(prefix="mntcr-diff-")
    try:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o ro live {d} && echo ready && exec sleep 60"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            assert cli.main(["diff", "pid:self", f"pid:{proc.pid}"]) == 1
            out = capsys.readouterr().out
            plus = [line for line in out.splitlines() if line.startswith("+")]
            assert any(d in line and "ro" in line for line in plus), out
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.rmdir(d)


def test_diff_pid1_with_itself(capsys):
    assert cli.main(["diff", "pid:1", "pid:1"]) == 0
    assert capsys.readouterr().out.startswith("equal:")


def test_diff_exit_codes_through_the_real_command(tmp_path):
    f = tmp_path / "m"
    f.write_text("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")
    g = tmp_path / "n"
    g.write_text("7 3 9:9 / / rw - ext4 /dev/sda1 rw\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "engine.cli", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run("diff", str(f), str(g)).returncode == 0  # same up to renumbering
    h = tmp_path / "o"
    h.write_text("7 3 9:9 / / ro - ext4 /dev/sda1 rw\n")
    r = run("diff", str(f), str(h))
    assert r.returncode == 1 and "options: rw -> ro" in r.stdout


@pytest.mark.parametrize("content, reason", [
    (None, "No such file"),
    ("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:5 /proc rw - proc proc rw\n", "line 2"),
])
def test_diff_bad_input_exits_2_with_one_line(tmp_path, capsys, content, reason):
    bad = tmp_path / "bad.mountinfo"
    if content is not None:
        bad.write_text(content)
    assert cli.main(["diff", str(bad), "pid:self"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("mntcr diff:") and reason in captured.err


def test_diff_bad_pid(capsys):
    assert cli.main(["diff", "pid:nope", "pid:self"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_show_self(capsys):
    assert cli.main(["show", "pid:self"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "TARGET", "SOURCE", "FSTYPE", "OPTIONS", "PROPAGATION"]
    ids = {str(m.mnt_id) for m in mountinfo.read_pid("self")}
    shown = {line.split()[0] for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()}
    assert shown == ids


def test_show_file_with_propagation(tmp_path, capsys):
    f = tmp_path / "m"
    f.write_text("1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
                 "2 1 0:5 / /a rw shared:2 master:1 - tmpfs t rw\n"
                 "3 2 0:5 / /a rw propagate_from:4 master:7 unbindable - tmpfs t rw\n")
    assert cli.main(["show", str(f)]) == 0
    out = capsys.readouterr().out
    assert "shared:2 master:1" in out and "master:7 propagate_from:4 unbindable" in out
    assert "[covered by 3]" in out and "[on top of 2]" in out


@pytest.mark.parametrize("verb, words", [("diff", ["0 equal", "1 different", "2 error"]),
                                         ("show", ["propagat", "pid:N"])])
def test_help(verb, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"mntcr {verb}" in out
    for w in words:
        assert w in out


def test_no_test_mounts_left_on_host():
    # The checks above mounted in child namespaces only; none of it may show up here.
    leftovers = [m.mountpoint for m in mountinfo.read_pid("self") if "/mntcr-diff-" in m.mountpoint]
    assert leftovers == []


def test_diff_restored_tree_against_its_image(case):
    """`mntcr diff pid:N DIR`: a restored tree against the image it came from is equal; a tmpfs
    mounted in it since makes them differ, naming the mount."""
    from enginecase import mntcr
    pid = case.start("mkdir -p /mnt/a /mnt/b; mount -t tmpfs t /mnt/a; mount --make-shared /mnt/a; "
                     "mount --bind /mnt/a /mnt/b\nhold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    restored = case.restore(images)
    r = mntcr("diff", f"pid:{restored}", images)
    assert r.returncode == 0 and r.stdout.startswith("equal"), r.stdout + r.stderr
    subprocess.run(["nsenter", "-t", str(restored), "-m", "mount", "-t", "tmpfs", "late", "/mnt/a"], check=True)
    r = mntcr("diff", f"pid:{restored}", images)
    assert r.returncode == 1 and "/mnt/a" in r.stdout, r.stdout + r.stderr
