"""A unix socket connection whose other end a process outside the tree holds
(engine/fds/unix_prestop.py `_refuse_outside_peers`): the tree's stdout connected to a log daemon,
a client attached from outside to a server of the tree. Until session 24 dump took the tree's end
for one end of a pair and restore made it connected to nothing, silently; now it is refused before
the stop, naming the outside process."""

from __future__ import annotations

import re

import pytest

from enginecase import case  # noqa: F401  (fixture)
from enginecase import CRError, in_own_pidns, was_stopped, STOP_WATCH

HOLD = "/.hold/mntcr-hold 1000000"

# A server outside the tree (pid namespace) that accepts and keeps every connection.
SERVER = """cat > /run/srv.py <<'END'
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/run/log.sock")
s.listen(4)
open("/run/srv.ready", "w").close()
kept = []
while True:
    kept.append(s.accept()[0])
END
python3 /run/srv.py </dev/null >/dev/null 2>&1 &
while [ ! -e /run/srv.ready ]; do sleep 0.01; done
"""

# The tree: its stdout a connection to that server.
CLIENT_TREE = SERVER + f"""exec python3 -c 'import socket, os
c = socket.socket(socket.AF_UNIX); c.connect("/run/log.sock"); os.dup2(c.fileno(), 1); c.close()
os.execvp("unshare", ["unshare", "-fp", "--mount-proc", "sh", "-c", "exec {HOLD}"])' </dev/null 2>/dev/null
"""

# The tree a server (in its own pid namespace) holding a connection accepted from a client outside it.
SERVER_TREE = """cat > /run/tree.py <<'END'
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/run/app.sock")
s.listen(4)
open("/run/tree.ready", "w").close()
c = s.accept()[0]
os.dup2(c.fileno(), 5)
os.execv("/.hold/mntcr-hold", ["mntcr-hold", "1000000"])
END
unshare -fp --mount-proc python3 /run/tree.py </dev/null >/dev/null 2>&1 &
while [ ! -e /run/tree.ready ]; do sleep 0.01; done
exec python3 -c 'import socket, time
c = socket.socket(socket.AF_UNIX); c.connect("/run/app.sock"); time.sleep(1e6)' </dev/null >/dev/null 2>&1
"""


@pytest.mark.parametrize("setup,fd,holder", [(CLIENT_TREE, 1, "python3"), (SERVER_TREE, 5, "python3")],
                         ids=["stdout-to-a-daemon", "client-attached-from-outside"])
def test_connection_with_an_end_outside_refused_unstopped(case, setup, fd, holder):
    """One line naming the tree's fd and the outside process; the tree never stopped."""
    pid = in_own_pidns(case.start(STOP_WATCH + setup, host_pidns=True, daemons=("unshare", "python3", "sh")))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(rf"process {pid} fd {fd} \(socket:\[\d+\]\): the other end of this unix stream connection is "
                     rf"held by process \d+ \({holder}\) outside the tree", msg), msg
    assert len(err.value.proc.stderr.strip().splitlines()) == 1, msg
    assert not was_stopped(pid), "dump stopped the tree before it refused"
