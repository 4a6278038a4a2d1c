"""The ptmx node of a devpts instance belongs to whoever mounted it (an unprivileged LXC
container's root binds it onto /dev/ptmx: scenarios/runtimes/app_containers.yaml): restore gives the
new instance's ptmx that owner (engine/fs/devpts.py), not the restorer's; the validator's rule."""

from __future__ import annotations

import pytest

from enginecase import case, take  # noqa: F401  (fixture)

_SETUP = """
mkdir -p /run/c
unshare -U -m sh -c '
    while [ "$(wc -l < /proc/self/uid_map)" = 0 ] || [ "$(wc -l < /proc/self/gid_map)" = 0 ]; do sleep 0.05; done
    mkdir /run/c/pts
    mount -t devpts -o newinstance,ptmxmode=0666 devpts /run/c/pts
    chown 1000:1005 /run/c/pts/ptmx
    touch /run/c/ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
c=$!
# (its maps are written once it is in its new user namespace)
n=0; while [ "$(readlink /proc/$c/ns/user)" = "$(readlink /proc/self/ns/user)" ]; do
    n=$((n + 1)); [ $n -lt 400 ] || { echo "unshare -U made no user namespace" >&2; exit 1; }; sleep 0.05; done
echo '0 0 65536' > /proc/$c/uid_map
echo '0 0 65536' > /proc/$c/gid_map
wait_for /run/c/ready
hold
"""

_CHECK = """self=$(readlink /proc/self/ns/mnt)
for p in /proc/[0-9]*; do
    [ "$(readlink $p/ns/mnt)" != "$self" ] && stat -c '%u:%g %a %t:%T' $p/root/run/c/pts/ptmx || :
done
"""


def test_ptmx_owner_kept(case):
    """A devpts of a user namespace's own whose ptmx was given another owner: that owner after
    restore too (the new instance's ptmx is the restorer's until restore chowns it)."""
    pid = case.start(_SETUP)
    before = take(pid, _CHECK)
    assert before.snap.check_output.split() == ["1000:1005", "666", "5:2"], before.snap.check_output
    after = take(case.cr(pid), _CHECK)
    assert after.snap.check_output == before.snap.check_output


@pytest.mark.parametrize("payload", [
    {"ptmx": {"uid": -1, "gid": 0}}, {"ptmx": {"uid": 0}}, {"ptmx": {"uid": 1, "gid": 1}, "x": 1},
    {"ptmx": [1, 1]}, {"ptmx": {"uid": "1", "gid": 1}},
])
def test_validator(payload):
    """The payload is {ptmx: {uid, gid}} and nothing else."""
    from engine.fs import devpts
    assert devpts.TYPE.check_payload("sb-1", {"payload": payload}) is not None
    assert devpts.TYPE.check_payload("sb-1", {"payload": {"ptmx": {"uid": 100000, "gid": 100005}}}) is None
