"""A process under other ids than root's, in a tree without any user namespace, keeps them.

CRIU's zdtm tests run as uid 18943, gid 58467, groups 27495 48244 after setuid
in the host's user namespace (zdtm/criu_tests.py): their stand-ins came back as
root, because dump recorded ids only when the tree held a user namespace.
"""

from __future__ import annotations

from enginecase import HOLD, case  # noqa: F401  (fixture)

# The setuid process runs a copy of sleep (/mntcr-hold) on the container's own tmpfs root, so its executable
# and mappings are compared too (those on the host's external /usr are not).
SETUP = f"""
cp "$(readlink -f {HOLD})" /mntcr-hold   # (its comm tells the tree is ready)
setpriv --reuid 18943 --regid 58467 --groups 27495,48244 /mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""


def _creds(state) -> list[str]:
    return sorted(line for p in state.snap.procs for line in p.text().splitlines() if line.startswith("creds:"))


def test_ids_of_a_process_without_user_namespace_are_kept(case):
    """The setuid child comes back with its uid, gid and groups, and its executable (set while the
    stand-in was still privileged); the root holder stays root."""
    before, after = case.roundtrip(SETUP)
    exe = [line for p in after.snap.procs for line in p.text().splitlines() if line.startswith("map exe")]
    assert "map exe /mntcr-hold mnt=/" in exe
    assert _creds(before) == ["creds: uid 0,0,0,0 gid 0,0,0,0 groups -",
                              "creds: uid 18943,18943,18943,18943 gid 58467,58467,58467,58467 groups 27495,48244"]
    assert _creds(after) == _creds(before)


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
    assert "creds: uid 1,2,3,2 gid 5,6,7,8 groups -" in _creds(before), _creds(before)
    assert _creds(after) == _creds(before)
