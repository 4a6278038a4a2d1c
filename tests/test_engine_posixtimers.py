"""engine/posixtimers.py: a process's POSIX timers (timer_create) are made again in its stand-in
under their ids, with their clock, notify, signal and value, armed with what they had left (the
snapshot compares them: zdtm/snapshot.py `_timers`); a tick of one whose signal the process caught
does not kill the restored tree (engine/timersigs.py). What cannot be restored (a timer notifying
a thread other than the leader, one on a CPU clock named by a pid) is refused with one line
before the tree is stopped, and the tree keeps running."""

from __future__ import annotations

import re
import time

import pytest

from engine import inject, posixtimers
from zdtm.snapshot import tree_pids
from enginecase import STOP_WATCH, CRError, assert_same, case, py_hold, take, was_stopped  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not inject.SUPPORTED, reason="timers are read by calls made in the process: "
                                                              "engine/inject.py runs them on x86_64 only")

# make(clock, signo, notify, value, tid): a timer (struct sigevent: value, signo, notify, tid);
# arm(id, value seconds, interval seconds)
_LIB = ("import ctypes, signal, struct, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def make(clock, signo, notify, value=0, tid=0):\n"
        "    sev = ctypes.create_string_buffer(struct.pack('=Qiii', value, signo, notify, tid).ljust(64, b'\\0'), 64)\n"
        "    t = ctypes.c_int()\n"
        "    assert libc.timer_create(clock, sev, ctypes.byref(t)) == 0, ctypes.get_errno()\n"
        "    return t.value\n"
        "def arm(t, value, interval):\n"
        "    spec = struct.pack('=4q', int(interval), int(interval % 1 * 1e9), int(value), int(value % 1 * 1e9))\n"
        "    assert libc.timer_settime(ctypes.c_void_p(t), 0, spec, None) == 0, ctypes.get_errno()\n"
        "signal.signal(signal.SIGUSR1, lambda *_: None)\n")

# ids 0 (MONOTONIC, SIGUSR1 caught, value 42, armed an hour, every 7 s), 1 (REALTIME, nothing,
# disarmed), 3 (the leader thread, SIGRTMIN+2 ignored, value 0x1234, armed 1000 s; 2 deleted: a
# hole the restore keeps), 4 (the process's CPU clock, SIGUSR2 blocked)
_TIMERS = _LIB + ("import os\n"
                  "a = make(1, signal.SIGUSR1, 0, 42); arm(a, 3600, 7)\n"
                  "make(0, 0, 1)\n"
                  "gone = make(0, signal.SIGUSR1, 0)\n"
                  "signal.signal(signal.SIGRTMIN + 2, signal.SIG_IGN)\n"
                  "b = make(0, signal.SIGRTMIN + 2, 4, 0x1234, os.getpid()); arm(b, 1000, 0)\n"
                  "assert libc.timer_delete(ctypes.c_void_p(gone)) == 0\n"
                  "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})\n"
                  "c = make(2, signal.SIGUSR2, 0); arm(c, 50, 0)\n")


def _ids(pid: int) -> list[tuple]:
    return [(t["id"], t["clock"], t["notify"], t.get("signo")) for t in posixtimers.parse(pid)]


def test_posix_timers_are_restored_under_their_ids(case):
    pid = case.start(py_hold(_TIMERS))
    before = take(pid)
    ids = _ids(pid)
    assert ids == [(0, 1, "signal", 10), (1, 0, "none", 0), (3, 0, "thread", 34 + 2), (4, -6, "signal", 12)]
    assert "posix_timers=0:1:signal:10/0x2a:armed/7.000000000," in before.root.bits, before.root.bits
    after_pid = case.cr(pid)
    assert _ids(after_pid) == ids
    assert_same(before, take(after_pid))


def _alive(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_timer_that_ticks_does_not_kill_the_restored_tree(case):
    # (in a child: init of a pid namespace, the root, would drop a signal at its default action;
    # SIGUSR1 caught, every 20 ms: its stand-in catches it too)
    pid = case.start(py_hold(_LIB + "import os\n"
                                    "if os.fork() == 0:\n"
                                    "    t = make(1, signal.SIGUSR1, 0); arm(t, 0.02, 0.02)\n"))
    before = take(pid)
    assert len(before.snap.procs) == 2
    after_pid = case.cr(pid)
    time.sleep(0.5)   # (ticks: at least a few whatever the load)
    child = [p for p in tree_pids(after_pid) if p != after_pid]
    assert len(child) == 1 and _alive(child[0]), "a tick killed the restored child"
    with open(f"/proc/{child[0]}/status") as f:
        assert re.search(r"^SigCgt:\s*0*200$", f.read(), re.M), "its stand-in does not catch SIGUSR1"
    assert_same(before, take(after_pid))


@pytest.mark.parametrize("setup,reason", [
    (_LIB + "th = threading.Thread(target=threading.Event().wait, daemon=True); th.start()\n"
            "make(0, signal.SIGUSR1, 4, 0, th.native_id)\n",
     r"its POSIX timer 0 signals thread \d+, not the leader"),
    (_LIB + "import os\nmake((~os.getpid()) << 3 | 2, signal.SIGUSR1, 0)\n",   # (its own, by number)
     r"its POSIX timer 0 runs on clock -\d+ \(a CPU clock named by a pid, which restore changes\): not restored"),
], ids=["other-thread", "pid-clock"])
def test_a_timer_not_restored_is_refused_before_the_stop(case, setup, reason):
    pid = case.start(STOP_WATCH + py_hold(setup))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(rf"process \d+: {reason}", msg), msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_without_a_timer_it_dumps(case):
    pid = case.start(py_hold(""))
    case.dump(pid, case.new_images_dir())


def _bad(doc: dict, change) -> dict:
    import json
    doc = json.loads(json.dumps(doc))
    change(doc["processes"][0])
    return doc


def test_the_image_checks_its_timers(case):
    import json
    import os
    from engine import image, imageformat
    pid = case.start(py_hold(_TIMERS + "signal.signal(signal.SIGALRM, lambda *_: None)\n"
                                       "signal.setitimer(signal.ITIMER_REAL, 3600)\n"))
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    p = good["processes"][0]
    assert [t["id"] for t in p["posix_timers"]] == [0, 1, 3, 4]
    assert p["posix_timers"][0] == {"id": 0, "clock": 1, "notify": "signal", "signo": 10, "sigval": 42,
                                    "value": p["posix_timers"][0]["value"], "interval": 7_000_000_000, "overrun": 0}
    assert 3000e9 < p["posix_timers"][0]["value"] <= 3600e9
    assert p["posix_timers"][2]["thread"] == 0 and p["posix_timers"][1]["value"] == 0
    assert [t["which"] for t in p["itimers"]] == [0]
    assert p["timer_sig_caught"] == 1 << 9 | 1 << 13   # (SIGUSR1, SIGALRM: SIGUSR2 is at its default)
    imageformat.validate(json.loads(json.dumps(good)))

    def dup(q): q["posix_timers"][1]["id"] = 0
    def thread(q): q["posix_timers"][2]["thread"] = 1
    def unsignalled(q): del q["posix_timers"][0]["signo"]
    def clock(q): q["posix_timers"][0]["clock"] = 5
    def caught(q): q["timer_sig_caught"] |= 1 << 14   # (SIGTERM: no timer of it delivers it)
    def which(q): q["itimers"][0]["which"] = 3
    def twice(q): q["itimers"].append(dict(q["itimers"][0]))
    def many(q): q["posix_timers"] = [dict(q["posix_timers"][1], id=i) for i in range(posixtimers.MAX_TIMERS + 1)]
    for change, words in ((dup, "two POSIX timers with one id"), (thread, "which the process does not have"),
                          (unsignalled, "a signal and its value exactly"), (clock, "is no clock"),
                          (caught, "timer_sig_caught names signals"), (which, "out of range"),
                          (twice, "two interval timers of one kind"), (many, "items")):
        with pytest.raises(image.ImageError, match=words):
            imageformat.validate(_bad(good, change))


@pytest.mark.parametrize("restore_ids", [True, False], ids=["prctl", "fillers"])
def test_make_keeps_the_ids(restore_ids):
    """posixtimers.make in a fresh child: with PR_TIMER_CREATE_RESTORE_IDS (Linux >= 6.13), and the
    way before it (fillers made up to each id, then deleted)."""
    import json
    import os
    import signal as sig
    import subprocess
    import sys
    entries = [{"id": 0, "clock": 1, "notify": "none", "value": 0, "interval": 0, "overrun": 0},
               {"id": 2, "clock": 0, "notify": "signal", "signo": 10, "sigval": 7, "value": 5 * 10 ** 9,
                "interval": 10 ** 9, "overrun": 0},
               {"id": 5, "clock": 1, "notify": "thread", "thread": 0, "signo": 12, "sigval": 0, "value": 10 ** 10,
                "interval": 0, "overrun": 0}]
    code = ("import json, os, signal, sys\n"
            "from engine import posixtimers\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})\n"
            f"if not {restore_ids}:\n"
            "    posixtimers._restore_ids = lambda on: False\n"
            "elif not posixtimers._restore_ids(False):\n"
            "    print('[]'); sys.exit(0)\n"
            "posixtimers.make(json.loads(sys.argv[1]), os.getpid())\n"
            "print(json.dumps([[t['id'], t['clock'], t['notify'], t.get('tid') == os.getpid(), t['signo'], t['sigval']]\n"
            "                  for t in posixtimers.parse(os.getpid())]))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-S", "-c", code, json.dumps(entries)], cwd=root, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": root}).stdout
    got = json.loads(out)
    if restore_ids and not got:
        pytest.skip("no PR_TIMER_CREATE_RESTORE_IDS (Linux < 6.13)")
    assert got == [[0, 1, "none", False, 0, 0], [2, 0, "signal", False, sig.SIGUSR1, 7],
                   [5, 1, "thread", True, sig.SIGUSR2, 0]]
