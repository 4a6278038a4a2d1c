"""bubblewrap `--userns FD --pidns FD`: a sandbox joining the user and pid namespaces another
process of the tree made (flatpak-spawn --sandbox, launchers that put sandboxes in one container's
namespaces), with a mount namespace of its own, its /proc and a bind. Where the namespaces' maker
has a mount namespace of its own (`unshare -rpfm`, an outer bwrap sandbox) the tree restores, the
joined processes' namespaces and owners as they were. Where it has not (`unshare -rpf` without -m)
its stand-in is forked late, after every mount, and so is the sandbox's, which joins its pid
namespace (dump refused it: "its pid namespace is that of process N, whose stand-in ... late");
a /proc of that pid namespace in the sandbox is refused before the stop (restore makes superblocks
before late stand-ins exist). scenarios/runtimes/bubblewrap_pidns.yaml has the same without --userns."""

from __future__ import annotations

import os
import re
import shutil

import pytest

import enginecase
from enginecase import CRError, case  # noqa: F401  (fixture)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")]

# The namespaces' maker (`unshare -U -r -p -f OUTER`, its pid 1 holding), then bwrap joining its
# user and pid namespaces (BWRAP: more bwrap options) with a mount namespace and /proc of its own.
SETUP = r"""
mkdir -p /run/report
args=""
for b in bin lib lib64 sbin; do
  if [ -L /$b ]; then args="$args --symlink $(readlink /$b) /$b"; elif [ -d /$b ]; then args="$args --ro-bind /$b /$b"; fi
done
unshare -U -r -p -f OUTER sh -c 'touch /run/report/up; exec /.hold/mntcr-hold 100003' </dev/null >/dev/null 2>&1 &
u=$!
wait_for /run/report/up
P=$(cat /proc/$u/task/$u/children); P=${P% }
exec 6</proc/$P/ns/pid 7</proc/$P/ns/user
bwrap --userns 7 --pidns 6 BWRAP --ro-bind /usr /usr $args PROC --tmpfs /tmp --bind /run/report /report \
  --ro-bind /.hold /.hold sh -c 'echo $$ > /report/inner; exec /.hold/mntcr-hold 200000' \
  </dev/null >/dev/null 2>/run/bwrap.err &
wait_for /run/report/inner || { cat /run/bwrap.err >&2; exit 1; }
exec 6<&- 7<&-
hold
"""
DAEMONS = ("bwrap", "unshare")   # (bwrap's monitor and unshare wait, never `hold`)


def _setup(outer: str, bwrap: str = "", proc: str = "--proc /proc") -> str:
    return SETUP.replace("OUTER", outer).replace("BWRAP", bwrap).replace("PROC", proc)


@pytest.mark.parametrize("outer, bwrap, proc", [("-m", "", "--proc /proc"), ("-m", "--unshare-pid", "--proc /proc"),
                                               ("-m --mount-proc", "", "--proc /proc"), ("", "", "")],
                         ids=["joined", "unshare-pid", "mount-proc", "no-m-no-proc"])
def test_bwrap_joining_a_user_and_pid_namespace_restores(case, outer, bwrap, proc):
    # (no-m-no-proc: the sandbox, in the pid namespace of a process forked late, is forked late too)
    pid = case.start(_setup(outer, bwrap, proc), daemons=DAEMONS)
    before = enginecase.take(pid)
    sandbox = [p.pid for p in before.snap.procs if _cmdline(p.pid) == "/.hold/mntcr-hold 200000"]
    assert len(sandbox) == 1, "the setup made no bwrap sandbox"
    holder = [p.pid for p in before.snap.procs if _cmdline(p.pid) == "/.hold/mntcr-hold 100003"]
    assert _same(sandbox[0], holder[0], "user") and _same(sandbox[0], holder[0], "pid") != bool(bwrap), \
        "the sandbox did not join the holder's namespaces"
    images = case.new_images_dir()
    case.dump(pid, images)
    after = enginecase.take(case.restore(images))
    enginecase.assert_same(before, after)


@pytest.mark.parametrize("bwrap", ["", "--unshare-pid"], ids=["joined", "unshare-pid"])
def test_bwrap_joining_the_namespaces_of_unshare_rpf_without_m_is_refused_unstopped(case, bwrap):
    # its /proc is of a pid namespace a process forked late is the first in (the joined one, or
    # --unshare-pid's below it): restore makes superblocks before late stand-ins exist
    pid = case.start(enginecase.STOP_WATCH + _setup("", bwrap), daemons=DAEMONS)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(r"mntcr dump: superblock \S+ \(proc\): it belongs to pid-\d+, made by a process whose stand-in, "
                     r"or an ancestor's, enters its mount namespace before its user namespace", msg), msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def _same(a: int, b: int, kind: str) -> bool:
    return os.readlink(f"/proc/{a}/ns/{kind}") == os.readlink(f"/proc/{b}/ns/{kind}")
