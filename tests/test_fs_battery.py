"""Filesystem type modules (engine/fs/) and the --fstype battery (scenarios/battery/, zdtm/battery.py).

A new type is one module: a copy of the project in a temporary directory with a type module
copied under a new name is found by discovery, and `pytest scenarios/ --fstype NEW` collects
and runs the battery for it with no other change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import enginecase
from enginecase import case  # noqa: F401  (fixture)
from engine import fs
from zdtm import battery

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_module_is_discovered():
    """Each engine/fs/NAME.py (not a _helper) registers at least one type, or only says why dump refuses
    its type (`refuse`, asked by fs.refusal); none is listed anywhere."""
    import importlib
    modules = {n[:-3] for n in os.listdir(os.path.join(PROJECT_ROOT, "engine", "fs"))
               if n.endswith(".py") and not n.startswith("_")}
    found = {fs.module_of(name) for name in fs.supported()}
    refusing = {n for n in modules - found if callable(getattr(importlib.import_module(f"engine.fs.{n}"), "refuse", None))}
    assert found | refusing == modules


def test_dump_help_names_every_supported_type_and_fd_kind():
    """`mntcr dump --help` tells the truth: a type or fd kind added without saying so there fails."""
    r = subprocess.run([sys.executable, "-m", "engine.cli", "dump", "--help"], capture_output=True,
                       text=True, cwd=PROJECT_ROOT, check=True)
    text = " ".join(r.stdout.split())
    missing = [n for n in fs.supported() if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert missing == [], f"dump --help does not name {missing}"
    # (unix_*.py, inet_*.py, pty_*.py and pipe_*.py are helper modules of the unix, inet, pty and pipe kinds)
    kinds = {n[:-3] for n in os.listdir(os.path.join(PROJECT_ROOT, "engine", "fds"))
             if n.endswith(".py") and not n.startswith(("_", "unix_", "inet_", "pty_", "pipe_"))} - {"file", "sys"}
    words = {"pipe": "pipes", "pty": "ptys", "unix": "unix sockets", "netlink": "netlink sockets"}
    missing = [k for k in sorted(kinds) if words.get(k, k) not in text]
    assert missing == [], f"dump --help does not name the fd kinds {missing}"


def test_dump_and_restore_name_no_filesystem_type():
    """The algorithm asks the type modules; it never names a type (words like 'process' aside)."""
    import re
    names = sorted({t.name for t in fs.types()} | {"loop", "overlayfs"}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)
    for part in ("dump.py", "restore.py"):
        with open(os.path.join(PROJECT_ROOT, "engine", part)) as f:
            for no, line in enumerate(f, 1):
                # /proc paths are the kernel's interface, not the proc filesystem type; EROFS is an errno;
                # users["proc"] is per-process user namespace data (engine/userns.py).
                text = re.sub(r"/proc\b|hostproc|errno\.EROFS|users\[\"proc\"\]", "", line)
                m = pattern.search(text)
                assert m is None, f"engine/{part}:{no} names {m.group(0)!r}: {line.strip()}"


def test_battery_lists_types_with_recipes():
    names = battery.select("all")
    assert {"tmpfs", "ext4", "xfs", "btrfs", "squashfs", "erofs", "debugfs"} <= set(names)
    with pytest.raises(ValueError, match="no type module engine/fs/nosuchfs.py"):
        battery.select("nosuchfs")


def _copy_project(dest) -> str:
    root = os.path.join(str(dest), "project")
    ignore = shutil.ignore_patterns("__pycache__", ".git", "*.pyc")
    for part in ("engine", "zdtm", "vm"):
        shutil.copytree(os.path.join(PROJECT_ROOT, part), os.path.join(root, part), ignore=ignore)
    shutil.copytree(os.path.join(PROJECT_ROOT, "scenarios", "battery"), os.path.join(root, "scenarios", "battery"))
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(os.path.join(PROJECT_ROOT, name), root)
    return root


def test_a_copied_type_module_runs_the_battery(tmp_path):
    """engine/fs/tmpfs.py copied unchanged as engine/fs/copiedfs.py: the battery runs it."""
    root = _copy_project(tmp_path)
    shutil.copy(os.path.join(root, "engine", "fs", "tmpfs.py"), os.path.join(root, "engine", "fs", "copiedfs.py"))
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([sys.executable, "-m", "pytest", "scenarios/", "--fstype", "copiedfs", "-p", "no:cacheprovider",
                        "-q", "-rA"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    ran = [line for line in out.splitlines() if line.startswith("PASSED ") and "fstype=copiedfs" in line]
    assert len(ran) == len([n for n in os.listdir(os.path.join(root, "scenarios", "battery")) if n.endswith(".yaml")]), \
        out[-4000:]


def test_a_hugetlbfs_with_files_is_refused(case):
    """hugetlbfs files cannot be archived: dump refuses one that holds any (its probe hook), names
    the mount and the file, writes no image, before it stops the tree."""
    with open("/proc/filesystems") as f:
        if "hugetlbfs" not in f.read():
            pytest.skip("hugetlbfs is not in /proc/filesystems (kernel without CONFIG_HUGETLBFS)")
    pid = case.start(enginecase.STOP_WATCH + "mkdir /mnt/h; mount -t hugetlbfs battery /mnt/h; touch /mnt/h/pages\n"
                     "hold\n")
    images = case.new_images_dir()
    r = enginecase.mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS)
    assert r.returncode == 2, r.stderr
    assert re.search(r"^mntcr dump: mount \d+ \(/mnt/h\) on hugetlbfs: it holds files \(pages\.\.\.\), which "
                     r"cannot be dumped; declare it with --external mnt\[/mnt/h\]:KEY, or empty it$",
                     r.stderr.strip()), r.stderr
    assert not os.path.exists(images)
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state in ("S", "R"), f"the tree was left in state {state} after a refused dump"


def test_fuse_restart_command_takes_only_fd_paths():
    """The user's --fuse-restart template: {conn}/{source} become fd paths; a template
    without {conn} (the daemon would mount by itself) or naming a {source} the image lacks is refused."""
    from engine.fs import FsError
    from engine.fs import fuse
    assert fuse.command("squashfuse -f {source} {conn}", 5, 7, "squashfuse") == \
        ["squashfuse", "-f", "/proc/self/fd/7", "/dev/fd/5"]
    assert fuse.restart_key("fuse.squashfuse") == "squashfuse" and fuse.restart_key("fuse") == "fuse"
    with pytest.raises(FsError, match=r"put \{conn\} where the mount point goes"):
        fuse.command("squashfuse {source} /mnt", 5, 7, "squashfuse")
    with pytest.raises(FsError, match=r"holds no file for the superblock's source"):
        fuse.command("squashfuse {source} {conn}", 5, None, "squashfuse")
