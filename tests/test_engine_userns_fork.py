"""A process that made a user namespace and a pid namespace together forks pid 1 there, which
forks a child (CRIU's zdtm tests under the uns flavor: ns.c's pid 1 forks the test). The child's
stand-in, forked by a stand-in already in the user namespace, joined it again at the end of
restore: setns EINVAL, "user namespaces: setns: Invalid argument"."""

from __future__ import annotations

from enginecase import case, py_hold  # noqa: F401  (fixture)

BODY = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x20000000 | 0x00020000) == 0   # CLONE_NEWUSER | NEWPID | NEWNS
open("/tmp/unshared", "w").close()
while not os.path.exists("/tmp/mapped"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
if os.fork() == 0:      # pid 1 of the new pid namespace
    os.fork()           # and its child, in the same user and pid namespaces
"""

SETUP = "(" + py_hold(BODY).strip() + ") </dev/null >/dev/null 2>&1 &\n" + """
wait_for /tmp/unshared
echo "0 20000 20000" > /proc/$!/uid_map; echo "0 400000 50000" > /proc/$!/gid_map; touch /tmp/mapped
hold
"""


def test_child_of_a_stand_in_already_in_the_user_namespace(case):
    before, after = case.roundtrip(SETUP)
    assert len(after.snap.procs) == 4
