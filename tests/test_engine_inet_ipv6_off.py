"""A network namespace with IPv6 turned off (`net.ipv6.conf.all.disable_ipv6=1`, as container
runtimes and Kubernetes pods without IPv6 set it) holding an inet socket: its lo lacks ::1, which
restore's sysctls (engine/netvars.py, written before any socket) take away again, so dump no
longer refuses it as "addresses differ (lo ::1/128)" (engine/fds/inet_net.py `differs`)."""

from __future__ import annotations

from tests.enginecase import case, py_hold  # noqa: F401  (fixture)

_BODY = """
import socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", "w") as f:
    f.write("1")
srv = socket.socket()
srv.bind(("127.0.0.1", 8080))
srv.listen()
"""
_SHOW = ("nsenter -t 1 -n sh -c 'cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/lo/disable_ipv6; "
         "ip -o addr show dev lo | tr -s \" \" | cut -d\" \" -f3,4; ss -Hltn | tr -s \" \"'")


def test_ipv6_off_namespace_with_a_listener_restored(case):
    hold = py_hold(_BODY)
    before, after = case.roundtrip("exec unshare -n " + hold[len("exec "):], _SHOW)
    out = after.snap.check_output
    assert out.startswith("1\n1\n") and "::1" not in out and "127.0.0.1:8080" in out, out
