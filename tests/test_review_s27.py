"""Session 27's review of session 26's code (engine/procargs.py, the stand-ins' last steps, user
namespace owners, the firewall's late step): trees that must come back, hostile images that must be
refused with one line."""

from __future__ import annotations

import os
import re

import pytest

import enginecase
from enginecase import case, copy_image  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, refused


def _limits(pid: int) -> list[str]:
    with open(f"/proc/{pid}/limits") as f:
        return [line for line in f if line.startswith(("Max data size", "Max address space", "Max processes"))]


@pytest.mark.parametrize("limit", ["ulimit -d 3000", "ulimit -v 12000"])
def test_a_tree_under_a_small_memory_limit_comes_back(case, limit):
    """A stand-in holds the restorer's memory (its heap, the interpreter): a process's RLIMIT_DATA
    taken before PR_SET_MM_MAP made it refuse the brk (EINVAL: 'giving back its command line' and
    'making its executable'), an RLIMIT_AS below the restorer's size made every allocation after
    fail (ENOMEM). The tree ran under them: both are taken last (engine/threads.py `limits_before`)."""
    pid = case.start(f"{limit}\nhold\n")
    want = _limits(pid)
    after = case.cr(pid)
    assert _limits(after) == want


# --- images from elsewhere: an image dumped here, changed as another machine's would differ -----

ELSEWHERE_SETUP = "mkdir /mnt/cg; mount -t cgroup2 none /mnt/cg\nhold\n"


@pytest.fixture(scope="module")
def elsewhere_image(tmp_path_factory):
    """A tree in the host's cgroup namespace with a cgroup2 mount of its own."""
    yield from enginecase.dumped_image(tmp_path_factory, ELSEWHERE_SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _cgroup2_mount(doc: dict) -> dict:
    return next(m for ns in doc["mntns"].values() for m in ns["mounts"] if m["fstype"] == "cgroup2")


@pytest.mark.parametrize("root", ["/does/not/exist", "/system.slice/docker-0123abcd.scope"])
def test_a_cgroup_this_machine_lacks_is_refused_saying_what_to_do(elsewhere_image, tmp_path, root):
    """A cgroup2 mount of a cgroup the runtime removed with the container (nspawn's
    machine-X.scope bound at /sys/fs/cgroup), or that another machine had: one line that says to
    create it (it said only 'openat2(...): No such file or directory')."""
    img = _mutated(elsewhere_image, tmp_path, lambda d: _cgroup2_mount(d).update(root=root))
    refused(img, rf"mount \d+ \(/mnt/cg\): cannot bind root {re.escape(root)}: no such cgroup here: create it "
                 r"\(mkdir in this machine's cgroup2 hierarchy", tmp_path)


def test_an_image_of_another_kernel_release_restores(case, elsewhere_image, tmp_path):
    """The release an image was dumped on is not asked: what restore needs is probed here."""
    img = _mutated(elsewhere_image, tmp_path, lambda d: d.update(kernel="5.10.0-30-amd64"))
    pid = case.restore(img)
    assert os.path.ismount(f"/proc/{pid}/root/mnt/cg")


def test_missing_externals_are_named_in_one_line(elsewhere_image, tmp_path):
    r = enginecase.mntcr("restore", "-D", copy_image(elsewhere_image, tmp_path), "--pidfile", str(tmp_path / "p"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == "mntcr restore: the image needs externals: give --external mnt[etc]:HOSTPATH, " \
                       "--external mnt[usr]:HOSTPATH", lines[0]
    assert not os.path.exists(tmp_path / "p")
