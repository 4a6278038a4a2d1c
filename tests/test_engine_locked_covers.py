"""Covered mounts a user namespace keeps locked (engine/nscopy.py `stream`).

`unshare -Urm` copies its parent's mount namespace into one its new user namespace owns, and the
kernel locks every copied mount together (MNT_LOCKED): a stack's cover cannot be unmounted, not
even in dump's private copy, so what the covered mount holds is out of reach there. Dump then
reads the same superblock at the same root through another mount of it the copy shows, or
through its twin in the dumper's own namespace (uncovered in a copy of that one, where nothing is
locked); with neither it refuses before the stop, leaving the tree running.

Restore locks the restored stack again (as the kernel did), so no umount shows what lies beneath
the cover afterwards: the files are checked through another mount of the restored superblock, or
in the archive.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile

import pytest

import enginecase
from enginecase import case  # noqa: F401  (fixture)

# The held process: notes each SIGCONT (dump stops and resumes the tree) in /run/.continued, as
# enginecase.STOP_WATCH does, so a refusal can tell whether the tree was stopped.
_HOLD = ("exec unshare -U -r -m --propagation private UNSHARE python3 -c '"
         "import ctypes, os, signal\n"
         "def cont(*_):\n"
         "    with open(\"/run/.continued\", \"a\") as f:\n"
         "        f.write(\"SIGCONT\\n\")\n"
         "signal.signal(signal.SIGCONT, cont)\n"
         # (stdio opened again inside: /dev/null opened before the unshare lies on a mount of the
         # container's namespace, which is not dumped)
         "os.dup2(os.open(\"/dev/null\", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)\n"
         "ctypes.CDLL(None).prctl(15, b\"mntcr-hold\", 0, 0, 0)\n"
         "while True:\n"
         "    signal.pause()\n"
         "' </dev/null >/dev/null 2>&1\n")


def _hold(nested: bool) -> str:
    """The setup's last line: the held process in a user namespace (`nested`: one inside another)."""
    return _HOLD.replace("UNSHARE ", "unshare -U -r -m --propagation private " if nested else "")


def _beneath_cover(pid: int, mountpoint: str) -> int:
    """The id of the mount at `mountpoint` in `pid`'s namespace that another there covers."""
    with open(f"/proc/{pid}/mountinfo") as f:
        rows = [line.split() for line in f]
    at = [(int(r[0]), int(r[1])) for r in rows if r[4] == mountpoint]
    (lower,) = [mid for mid, _ in at if any(parent == mid for _, parent in at)]
    return lower


@pytest.mark.parametrize("nested", [False, True], ids=["userns", "nested-userns"])
def test_locked_cover_read_through_another_mount_of_the_superblock(case, nested):
    """The covered tmpfs is bound elsewhere too, visible: dump archives it through that mount (was
    refused: 'locked over it'); restored beneath its cover with its files, which the restored bind
    of the same superblock shows. Nested: a user namespace inside the first copies it again."""
    setup = ("mkdir /mnt/stack /mnt/view\n"
             "mount -t tmpfs under /mnt/stack\n"
             "echo beneath > /mnt/stack/f; mkdir /mnt/stack/d; echo deep > /mnt/stack/d/g\n"
             "mount --bind /mnt/stack /mnt/view\n"
             "mount -t tmpfs over /mnt/stack; echo top > /mnt/stack/t\n" + _hold(nested))
    pid = case.start(setup, host_pidns=True)
    before = enginecase.take(pid)
    restored = case.cr(pid)
    enginecase.assert_same(before, enginecase.take(restored))
    with open(f"/proc/{restored}/mountinfo") as f:
        rows = {int(r[0]): r for r in (line.split() for line in f)}
    lower = _beneath_cover(restored, "/mnt/stack")
    (view,) = [r for r in rows.values() if r[4] == "/mnt/view"]
    assert view[2] == rows[lower][2], "the bind is not of the covered superblock"
    root = f"/proc/{restored}/root"
    assert sorted(os.listdir(f"{root}/mnt/view")) == ["d", "f"]
    assert open(f"{root}/mnt/view/f").read() == "beneath\n" and open(f"{root}/mnt/view/d/g").read() == "deep\n"
    assert sorted(os.listdir(f"{root}/mnt/stack")) == ["t"]


def test_locked_cover_refused_when_the_superblock_is_reachable_nowhere_else(case):
    """The covered tmpfs has no other mount, in the tree or in the dumper's namespace: refused before
    the stop, naming the mount and its cover; the tree keeps running."""
    setup = ("mkdir /mnt/stack\n"
             "mount -t tmpfs under /mnt/stack; echo beneath > /mnt/stack/f\n"
             "cd /mnt/stack\n"
             "mount -t tmpfs over /mnt/stack\n" + _hold(False))
    pid = case.start(setup, host_pidns=True)
    with pytest.raises(enginecase.CRError) as err:
        case.dump(pid, case.new_images_dir())
    lower = _beneath_cover(pid, "/mnt/stack")
    with open(f"/proc/{pid}/mountinfo") as f:
        (upper,) = [int(r[0]) for r in (line.split() for line in f) if r[4] == "/mnt/stack" and int(r[1]) == lower]
    assert re.search(rf"mount {lower} \(/mnt/stack\) is covered by mount {upper} \(/mnt/stack\), locked over it .*"
                     r"no other mount of its superblock reaches it", str(err.value)), err.value
    assert len(err.value.proc.stderr.strip().splitlines()) == 1, err.value
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    assert open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"
    assert open(f"/proc/{pid}/cwd/f").read() == "beneath\n"


def test_locked_cover_read_through_the_dumpers_twin_at_the_targets_root(case, tmp_path):
    """The tree's only mount of the tmpfs is a covered bind of its subdirectory /sub; the dumper's
    namespace has the whole tmpfs, covered too: dump uncovers it in a copy of its own namespace and
    clones it at /sub (the archive holds /sub's files, not the rest); restore puts them back."""
    outer = case.outer()
    p = outer.path
    outer.sh(f"mkdir {p}/u {p}/stack; mount -t tmpfs under {p}/u; mkdir {p}/u/sub; echo beneath > {p}/u/sub/f; "
             f"echo other > {p}/u/other")
    # The tree's namespace: a copy where the bind of /sub is all of the tmpfs, and it is covered.
    script = (f"mount --bind {p}/u/sub {p}/stack && umount {p}/u && "
              f"mount -t tmpfs over {p}/stack && exec unshare -U -r -m --propagation private "
              # (stdio opened again inside: else on mounts of a namespace the dump does not see)
              "sh -c 'exec </dev/null >/dev/null 2>&1; exec sleep 100000'")
    tree = subprocess.Popen(["nsenter", "-t", str(outer.pid), "-m", "--", "unshare", "-m", "--propagation",
                             "private", "sh", "-c", script], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    case.trees.append(tree.pid)

    def sleeping() -> bool:   # (a setup that failed is a SetupError at once, not a wait)
        if tree.poll() is not None:
            raise enginecase.SetupError(f"the tree's setup exited {tree.returncode} before its sleep")
        return open(f"/proc/{tree.pid}/comm").read().strip() == "sleep"
    enginecase.wait_until(sleeping, "the tree's exec of sleep")
    assert os.readlink(f"/proc/{tree.pid}/ns/user") != os.readlink("/proc/self/ns/user")
    outer.sh(f"mount -t tmpfs cover {p}/u")   # the dumper's twin is covered as well
    assert f"{p}/u " not in open(f"/proc/{tree.pid}/mountinfo").read()
    before = enginecase.take(tree.pid)
    images = case.new_images_dir()
    r = enginecase.mntcr("dump", "-t", str(tree.pid), "-D", images, nsenter=outer.pid)
    assert r.returncode == 0, r.stderr
    doc = enginecase.load_manifest(images)
    (sb,) = [sb for sb in doc["superblocks"].values() if sb["source"] == "under"]
    (arc,) = sb["archives"]
    assert arc["root"] == "/sub"
    with tarfile.open(os.path.join(images, arc["file"])) as t:
        names = sorted(n.split("/", 1)[1] for n in t.getnames() if n.startswith(arc["member"] + "/"))
    assert names == ["f"]
    pidfile = str(tmp_path / "restored.pid")
    r = enginecase.mntcr("restore", "-D", images, "--root", "/", "--devices", "all", "--pidfile", pidfile,
                         nsenter=outer.pid)
    assert r.returncode == 0, r.stderr
    restored = int(open(pidfile).read())
    case.trees.append(restored)
    enginecase.assert_same(before, enginecase.take(restored))
    _beneath_cover(restored, f"{p}/stack")
