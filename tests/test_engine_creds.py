"""A process under other ids than root's, in a tree without any user namespace, keeps them.

CRIU's zdtm tests run as uid 18943, gid 58467, groups 27495 48244 after setuid
in the host's user namespace (zdtm/criu_tests.py): their stand-ins came back as
root, because dump recorded ids only when the tree held a user namespace.
"""

from __future__ import annotations

import os

import pytest

from enginecase import HOLD, case  # noqa: F401  (fixture)

# The setuid process runs a copy of sleep (/mntcr-hold) on the container's own tmpfs root, so its executable
# and mappings are compared too (those on the host's external /usr are not).
SETUP = f"""
cp "$(readlink -f {HOLD})" /mntcr-hold   # (its comm tells the tree is ready)
setpriv --reuid 18943 --regid 58467 --groups 27495,48244 /mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""


def _creds(state) -> list[str]:
    """The processes' ids (their capabilities left out: compared whole by roundtrip)."""
    return sorted(line.split(" caps ")[0] for p in state.snap.procs for line in p.text().splitlines()
                  if line.startswith("creds:"))


def test_ids_of_a_process_without_user_namespace_are_kept(case):
    """The setuid child comes back with its uid, gid and groups, and its executable (set while the
    stand-in was still privileged), dumpable as it was (taking the ids had cleared it: its /proc
    files were root's); the root holder stays root."""
    before, after = case.roundtrip(SETUP)
    exe = [line for p in after.snap.procs for line in p.text().splitlines() if line.startswith("map exe")]
    assert "map exe /mntcr-hold mnt=/" in exe
    # (`proc`: the owner of its /proc/PID files, its own ids: it is dumpable, as its stand-in is again
    # after taking them)
    assert _creds(before) == ["creds: uid 0,0,0,0 gid 0,0,0,0 groups - proc 0:0",
                              "creds: uid 18943,18943,18943,18943 gid 58467,58467,58467,58467 groups 27495,48244 "
                              "proc 18943:58467"]
    assert _creds(after) == _creds(before)


def test_root_with_supplementary_group_root_keeps_it(case):
    """dockerd's runc gives a container's root process the supplementary group 0 (uid 0, gid 0,
    groups 0), as initgroups does for root (schroot, su, cron): all its ids were root's, so dump
    recorded none and its stand-in came back with the restorer's groups (none)."""
    setup = f"""
cp "$(readlink -f {HOLD})" /mntcr-hold
setpriv --groups 0 /mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""
    before, after = case.roundtrip(setup)
    assert "creds: uid 0,0,0,0 gid 0,0,0,0 groups 0 proc 0:0" in _creds(before)
    assert _creds(after) == _creds(before)


def test_capability_sets_are_kept(case):
    """Runtimes drop capabilities (runc's default keeps 14 in the bounding set, bwrap none): every
    stand-in came back with the restorer's full sets. A root process whose bounding set holds only
    kill and net_bind_service (its permitted and effective sets follow at exec) keeps those."""
    setup = f"""
cp "$(readlink -f {HOLD})" /mntcr-hold
setpriv --bounding-set -all,+kill,+net_bind_service --inh-caps=-all /mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""
    before, after = case.roundtrip(setup)
    caps = sorted(line.split(" caps ")[1] for p in after.snap.procs for line in p.text().splitlines()
                  if line.startswith("creds:"))
    assert "inh 0000000000000000 prm 0000000000000420 eff 0000000000000420 bnd 0000000000000420 " \
           "amb 0000000000000000" in caps, caps
    assert [p.text() for p in before.snap.procs] and caps == sorted(
        line.split(" caps ")[1] for p in before.snap.procs for line in p.text().splitlines()
        if line.startswith("creds:"))


def test_distinct_real_effective_saved_and_fs_ids_are_kept(case):
    """A process whose real, effective, saved and file system ids all differ (CRIU's pid00: gids
    5,6,7,8, uids 1,2,3 with fsuid 2) comes back with each of them: setresgid/setresuid set the fs ids
    to the effective ones, so the stand-in sets them after (it kept the fsgid at the egid)."""
    setup = f"""
python3 -c '
import ctypes, os, signal
libc = ctypes.CDLL(None)
os.setresgid(5, 6, 7); libc.setfsgid(8); os.setresuid(1, 2, 3)   # (an exec would reset saved and fs ids)
libc.prctl(15, b"mntcr-hold", 0, 0, 0)   # PR_SET_NAME: ready
while True:
    signal.pause()
' </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""
    before, after = case.roundtrip(setup)
    assert any(c.startswith("creds: uid 1,2,3,2 gid 5,6,7,8 groups - ") for c in _creds(before)), _creds(before)
    assert _creds(after) == _creds(before)


_KEEPCAPS = """
python3 -c '
import ctypes, os, signal
libc = ctypes.CDLL(None)
libc.prctl(8, 1, 0, 0, 0)   # PR_SET_KEEPCAPS
os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
libc.prctl(8, 0, 0, 0, 0)
libc.prctl(15, b"mntcr-hold", 0, 0, 0)   # PR_SET_NAME: ready
while True:
    signal.pause()
' </dev/null >/dev/null 2>&1 &
"""
_AMBIENT = f"""
cp "$(readlink -f {HOLD})" /mntcr-hold
setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps +net_bind_service --ambient-caps +net_bind_service \\
    /mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
"""

# In a user namespace (0-65535 as 100000-165535), where its stand-in started: it takes the ids there
# in become_exe's code too (the Python path: test_python_stand_in_path_takes_ids_then_bounding_set_then_caps).
_USERNS = f"""
cp "$(readlink -f {HOLD})" /mntcr-hold
python3 -c '
import ctypes, os, time
ctypes.CDLL(None).unshare(0x10000000)   # CLONE_NEWUSER
while not os.path.exists("/mapped"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)   # (mapped now: root there, which the exec keeps)
os.execv("/usr/bin/setpriv", ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "--inh-caps",
         "+net_bind_service", "--ambient-caps", "+net_bind_service", "/mntcr-hold", "100000"])
' </dev/null >/dev/null 2>&1 &
while [ "$(readlink /proc/$!/ns/user)" = "$(readlink /proc/self/ns/user)" ]; do sleep 0.05; done
echo "0 100000 65536" > /proc/$!/uid_map; echo "0 100000 65536" > /proc/$!/gid_map; touch /mapped
"""


# (and a bounding set of two, dropped by the stand-in before it takes the ids; running the host's program)
_USERNS_BOUNDED = _USERNS.replace('"--clear-groups",', '"--clear-groups", "--bounding-set", "-all,+kill,+net_bind_service",') \
    .replace('"/mntcr-hold", "100000"', f'"{HOLD}", "100000"')


@pytest.mark.parametrize("start", [_KEEPCAPS, _AMBIENT, _USERNS, _USERNS_BOUNDED],
                         ids=["keepcaps", "ambient", "userns", "userns_bounded"])
def test_capabilities_of_a_non_root_process_are_kept(case, start):
    """A non-root process with permitted capabilities (kept through setresuid, as a daemon dropping
    root does; ambient ones, as systemd's AmbientCapabilities=) comes back with them: the stand-in's
    change of ids cleared its permitted set, which capset cannot raise again (become_exe's code, which
    also keeps the ambient one's executable now)."""
    before, after = case.roundtrip(start + f"exec {HOLD} 100000 </dev/null >/dev/null 2>&1\n")
    creds = lambda state: sorted(line for p in state.snap.procs for line in p.text().splitlines()  # noqa: E731
                                 if line.startswith("creds:"))
    mine = [c for c in creds(before) if c.startswith(("creds: uid 1000", "creds: uid 101000"))]
    assert mine and " prm 0000000000000000 " not in mine[0], mine
    assert creds(after) == creds(before)


@pytest.mark.parametrize("caps", [
    {"inh": 0x400, "prm": 0x400, "eff": 0x400, "bnd": 0x420, "amb": 0x400},
    # an inheritable capability outside the bounding set (capset takes it only before the drop)
    {"inh": 0x1000, "prm": 0x400, "eff": 0x400, "bnd": 0x420, "amb": 0},
], ids=["ambient", "inheritable_unbounded"])
def test_python_stand_in_path_takes_ids_then_bounding_set_then_caps(caps):
    """A stand-in that takes its ids in Python (one joining its user namespace by setns, or without
    become_exe) does what op_become and op_detach do, in order: the ids (its effective set emptied),
    the bounding set (which needs CAP_SETPCAP there), the capabilities."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the stand-in starts as root)")
    from engine import kernel, userns_cr
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            userns_cr.become(None, [1000] * 4, [1000] * 4, [], None, userns_cr._keeps({"caps": caps}))
            kernel.caps_before_bounding(caps)
            kernel.drop_bounding(caps["bnd"])
            kernel.take_caps(caps)
            os.write(w, repr(kernel.read_caps(os.getpid())).encode())
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(pid, 0)
    assert got == repr(caps), got
