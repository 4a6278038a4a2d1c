"""A process that made a user namespace and a pid namespace together forks pid 1 there, which
forks a child (CRIU's zdtm tests under the uns flavor: ns.c's pid 1 forks the test). The child's
stand-in, forked by a stand-in already in the user namespace, joined it again at the end of
restore: setns EINVAL, "user namespaces: setns: Invalid argument"."""

from __future__ import annotations

from enginecase import case, userns_setup  # noqa: F401  (fixture)

SETUP = userns_setup(0x20000000 | 0x00020000, """
if os.fork() == 0:      # pid 1 of the new pid namespace (CLONE_NEWPID | NEWNS)
    os.fork()           # and its child, in the same user and pid namespaces
""")


def test_child_of_a_stand_in_already_in_the_user_namespace(case):
    before, after = case.roundtrip(SETUP)
    assert len(after.snap.procs) == 4
