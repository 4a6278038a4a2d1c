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


# --- hostile images: where a stand-in starts (engine/userns_cr.py, engine/standin.py) -------------

# `unshare -rpfn` without -m: pid 1 of a pid namespace its user namespace owns (enter_first), its
# child forked by the late stand-in; the net namespace the user namespace's too (ns_made_in)
RPF_BODY = """
os.makedirs("/tmp/sub", exist_ok=True)
if os.fork() == 0:
    os.chdir("/tmp/sub")
    os.fork()
"""


@pytest.fixture(scope="module")
def rpf_image(tmp_path_factory):
    """The dumped tree of `unshare -rpfn` without -m (processes: the shell, the unsharer, pid 1, its child)."""
    if os.geteuid() != 0:
        pytest.skip("making user namespaces with any map needs root")
    yield from enginecase.dumped_image(tmp_path_factory, enginecase.userns_setup(0x20000000 | 0x40000000, RPF_BODY),
                                       "hostile image tests need root (they dump a real container and restore)")


def _late_child_in_the_restorers_net(d):
    d["processes"][3]["ns"]["net"] = d["processes"][0]["ns"]["net"]   # (the shell's: host_ns net)


def _no_enter_first(d):
    d["processes"][2].pop("enter_first")


def _start_in_its_own(d):
    d["processes"][2]["userns_start"] = d["processes"][2]["userns"]


HOSTILE_STARTS = {
    "late child in the restorer's net namespace": (_late_child_in_the_restorers_net,
                                                   r"bad image: process \d+: its net namespace net-0 is not the "
                                                   r"restorer's \(host_ns\), but it is for process \d+"),
    "enter_first dropped": (_no_enter_first, r"bad image: process \d+: its stand-in starts in its user namespace "
                                             r"user-1, which does not own its mount namespace mnt-0, and does not "
                                             r"enter that first \(enter_first\)"),
    "userns_start its own": (_start_in_its_own, r"bad image: process \d+: userns_start user-1 is no ancestor of its "
                                                r"user namespace user-1"),
}


@pytest.mark.parametrize("name", HOSTILE_STARTS)
def test_a_stand_in_started_where_it_cannot_be_is_refused_by_the_validator(rpf_image, tmp_path, name):
    """Combinations dump never writes: the first two failed late with 'setns: Operation not
    permitted', the third with 'cannot start a stand-in inside its user namespace' (nothing left
    behind, but no line that tells what is wrong)."""
    mutate, pattern = HOSTILE_STARTS[name]
    d = enginecase.load_manifest(rpf_image)
    assert d["processes"][2].get("enter_first") and d["processes"][2].get("userns_first"), d["processes"][2]
    assert "net" in d["processes"][0]["host_ns"] and "net" not in d["processes"][3]["host_ns"]
    refused(_mutated(rpf_image, tmp_path, mutate), pattern, tmp_path)


# --- dump never writes an image restore refuses -----------------------------------------------

# Processes sharing an environment of 3.84 MB (exec takes up to 6 MiB with a stack limit of 24 MiB
# or more): 28 of them are 143 MB of base64 in the manifest, more than restore reads (128 MiB).
_BIG_ENV = """
import ctypes, os, signal, sys
if "V0" not in os.environ:
    os.execve(sys.executable, [sys.executable, "/tmp/big_env.py"], {f"V{i}": "x" * 120000 for i in range(32)})
for _ in range(27):
    if os.fork() == 0:
        break
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
while True:
    signal.pause()
"""


def test_a_manifest_larger_than_restore_reads_is_refused_at_dump(case, tmp_path):
    """Dump wrote such an image (restore then refused it: 'mntcr.json is absurdly large'); now it
    refuses in one line and the tree runs on."""
    pid = case.start("ulimit -s 65536\ncat > /tmp/big_env.py <<'PYEND'\n" + _BIG_ENV + "PYEND\n"
                     "exec python3 /tmp/big_env.py </dev/null >/dev/null 2>&1\n")
    from zdtm.snapshot import tree_pids
    pids = tree_pids(pid)
    assert len(pids) == 28, pids
    with open(f"/proc/{pids[-1]}/environ", "rb") as f:
        assert len(f.read()) > 3_800_000
    images = str(tmp_path / "img")
    r = enginecase.mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert re.fullmatch(r"mntcr dump: the image's manifest would be larger than restore reads \(134217728 bytes\), "
                        r"\d+ bytes of it the processes' command lines and environments \(base64\): dump fewer "
                        r"processes or give them smaller environments", lines[0]), lines[0]
    assert not os.path.exists(images)
    assert sorted(tree_pids(pid)) == sorted(pids), "dump killed processes of the tree"
    for p in pids:   # (resumed: none left stopped)
        with open(f"/proc/{p}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] != "T", p


def test_an_environment_exec_took_under_a_big_stack_limit_comes_back(case):
    """exec takes up to 6 MiB of arguments and environment when the stack limit is 24 MiB or more
    (`ulimit -s unlimited`: a linker's command line, a CI job's environment); dump refused more than
    4 MiB, after the stop ('which an image does not keep')."""
    pid = case.start("ulimit -s 65536\ncat > /tmp/big_env.py <<'PYEND'\n"
                     + _BIG_ENV.replace("range(32)", "range(50)").replace("range(27)", "range(0)")
                     + "PYEND\nexec python3 /tmp/big_env.py </dev/null >/dev/null 2>&1\n")
    with open(f"/proc/{pid}/environ", "rb") as f:
        want = f.read()
    assert len(want) > 5_900_000
    after = case.cr(pid)
    with open(f"/proc/{after}/environ", "rb") as f:
        assert f.read() == want


@pytest.mark.parametrize("where", ["cmdline", "environ"])
def test_a_command_line_or_environment_of_300_kb_comes_back(case, where):
    """A stand-in's detach request carried both: past the channel socket's send buffer (~200 KiB by
    default) restore failed after the dump with 'Message too long' (a java -cp of a thousand jars)."""
    # (built by the shell: one string of argv or the environment holds 128 KiB at most)
    run = f"{enginecase.HOLD} 100000 $(seq 60000)" if where == "cmdline" else \
        f"env B1=$x B2=$x B3=$x {enginecase.HOLD} 100000"
    pid = case.start(f"x=$(head -c 100000 /dev/zero | tr '\\0' x)\nexec </dev/null >/dev/null 2>&1\nexec {run}\n")
    with open(f"/proc/{pid}/{where}", "rb") as f:
        want = f.read()
    assert len(want) > 300_000
    after = case.cr(pid)
    with open(f"/proc/{after}/{where}", "rb") as f:
        assert f.read() == want
