"""A mount of the file of a unix socket the tree is bound to (engine/prestop.py
`_check_socket_binds`): a syslogd of the tree on /dev/log, that file bound into another mount
namespace as a container's /dev/log. Restore binds the socket anew (a new file) and the mount kept
the old one, deleted ("/log//deleted", nobody listening behind it): refused before the stop until
restore can make such a mount from the new file."""

from __future__ import annotations

import pytest

from enginecase import STOP_WATCH, CRError, case, was_stopped  # noqa: F401  (fixture)

_SETUP = STOP_WATCH + """
mkdir -p /run/log /run/ct; touch /run/ct/log
busybox syslogd -n -O /run/log/messages </dev/null >/dev/null 2>&1 &
syslogd=$!
wait_for /dev/log
# (the tree is ready once this process runs hold, which it execs after its bind: no sleep)
unshare -m --propagation private sh -c 'mount --bind /dev/log /run/ct/log; exec /.hold/mntcr-hold 100000' \
  </dev/null >/dev/null 2>&1 &
hold
"""


def test_bind_of_a_bound_socket_file_refused_unstopped(case):
    """Refused naming the mount, before the stop."""
    pid = case.start(_SETUP, daemons=("busybox",))
    with pytest.raises(CRError, match=r"mount \d+ \(/run/ct/log\) of mnt-\d+: a bind of the file of a unix socket a "
                                      r"process of the tree is bound to"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_bind_of_a_socket_file_nobody_is_bound_to(case):
    """The same bind once syslogd is gone (its socket file stays, nobody bound to it): restore keeps
    the file, the mount comes back with its root."""
    # (syslogd gone and reaped before hold: kill and wait, not a fixed sleep after pkill)
    setup = _SETUP.replace("hold\n", "kill $syslogd; wait $syslogd || true\nhold\n")
    before, after = case.roundtrip(setup.replace(STOP_WATCH, ""))
    roots = [m.root for p in after.snap.procs for m in p.mounts if m.mountpoint == "/run/ct/log"]
    assert roots and all(r == "/log" for r in roots), roots
