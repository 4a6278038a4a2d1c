"""zdtm/fsserver.py: a scenario's external server, outside the dumped tree, in namespaces of its own.

The nfs battery recipe's server (nfsd) needs a kernel this machine lacks (it runs in the VM);
here a plain TCP listener stands in for it: the container reaches it on the loopback address of
the server's network namespace, and the restored tree is in that same namespace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from zdtm import fsserver, item, scenario

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the server's namespaces and the ns place need root")

# A listener on 127.0.0.1:PORT answering "served" to each connection, started in the background.
_LISTEN = ("python3 -c 'import socket\n"
           "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind((\"127.0.0.1\", 7999)); s.listen()\n"
           "while True:\n    c, _ = s.accept(); c.sendall(b\"served\\n\"); c.close()' </dev/null >/dev/null 2>&1 &\n"
           # (started once it listens: its socket in LISTEN (0A) in /proc/net/tcp, at most 60 s)
           "n=0; until grep -q ' 0100007F:1F3F 00000000:0000 0A ' /proc/net/tcp; do\n"
           "  n=$((n + 1)); [ $n -lt 1200 ] || { echo 'the listener did not listen' >&2; exit 1; }; sleep 0.05; done\n")
_ASK = "python3 -c 'import socket; print(socket.create_connection((\"127.0.0.1\", 7999)).recv(64).decode().strip())'"


def _net(path: str) -> int:
    return os.stat(path).st_ino


def _pids_in(net_ino: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if _net(f"/proc/{name}/ns/net") == net_ino:
                    out.append(int(name))
            except OSError:
                pass
    return out


@root_only
def test_server_runs_in_its_own_net_namespace_and_stops_everything(tmp_path):
    own = _net("/proc/thread-self/ns/net")
    server = fsserver.Server.start(_LISTEN, 'echo stopped > "$SERVER/../stopped"', str(tmp_path), 60)
    try:
        theirs = _net(f"/proc/{server.proc.pid}/ns/net")
        assert theirs != own
        assert len(_pids_in(theirs)) >= 2          # the holder and the listener it started
        server.join()
        try:
            assert _net("/proc/thread-self/ns/net") == theirs
            assert socket.create_connection(("127.0.0.1", 7999), timeout=30).recv(64) == b"served\n"
        finally:
            server.leave()
        assert _net("/proc/thread-self/ns/net") == own
    finally:
        server.stop()
    assert (tmp_path / "stopped").read_text() == "stopped\n"
    assert _pids_in(theirs) == []                 # the listener was killed with the holder's namespace


@root_only
def test_a_failing_start_is_a_server_error_with_its_output(tmp_path):
    with pytest.raises(fsserver.ServerError, match=r"did not start: exited \(failed 3\):\nno daemon here"):
        fsserver.Server.start("echo no daemon here; exit 3", "true", str(tmp_path), 60)


def test_server_key_is_validated(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("description: d\nsetup: exec zdtm-hold\nserver: {start: 'true'}\n")
    with pytest.raises(scenario.ScenarioError, match="key 'server': expected a mapping with start and stop"):
        scenario.load(str(p)).render_all()


def test_nfs_battery_items_get_the_recipes_server():
    sf = scenario.load(os.path.join(PROJECT, "scenarios", "battery", "binds.yaml"))
    nfs = scenario.render(sf, {"fstype": "nfs"})
    assert nfs.server and "rpc.nfsd" in nfs.server[0] and "rpc.nfsd 0" in nfs.server[1]
    assert nfs.expectation("mntcr").outcome == "pass"
    assert scenario.render(sf, {"fstype": "tmpfs"}).server is None


@root_only
def test_item_with_a_server_is_restored_in_the_servers_network_namespace(tmp_path):
    """The tree talks to the server at setup; after each restore it is in the server's namespace still
    (the check prints its net namespace, compared before and after) and reaches it again."""
    p = tmp_path / "s.yaml"
    p.write_text("description: d\n"
                 f"server:\n  start: |\n    {_LISTEN.replace(chr(10), chr(10) + '    ')}\n  stop: 'true'\n"
                 f"setup: |\n  {_ASK} > /tmp/answer\n  exec zdtm-hold\n"
                 f"check: |\n  cat /tmp/answer; readlink /proc/1/ns/net; {_ASK}\n"
                 "iters: 2\n")
    spec = item.ItemSpec(scenario=scenario.load(str(p)).render_all()[0], backend="mntcr", flavor="ns", iters=2)
    workdir = tmp_path / "work"
    os.makedirs(workdir)
    item.write_spec(spec, str(workdir))
    env = dict(os.environ, PYTHONPATH=PROJECT)
    r = subprocess.run([sys.executable, "-m", "zdtm.item", str(workdir)], cwd=PROJECT, env=env,
                       capture_output=True, text=True, timeout=600)
    out = item.read_outcome(str(workdir))
    assert out is not None, r.stderr
    assert (out.outcome, out.message) == ("pass", ""), (workdir / "server.log").read_text()
