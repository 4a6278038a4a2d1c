"""engine/posixtimers.py: a process's POSIX timers (timer_create) are made again in its stand-in
under their ids, with their clock, notify, signal and value, armed with what they had left (the
snapshot compares them: zdtm/snapshot.py `_timers`); a tick of one whose signal the process caught
does not kill the restored tree (engine/timersigs.py); one notifying a thread other than the
leader (the program's own, glibc's SIGEV_THREAD helper) is made for the restored thread of the
same place, which keeps its signal mask. What cannot be restored (a timer notifying a thread that
exited, one on a CPU clock named by a pid) is refused with one line before the tree is stopped,
and the tree keeps running."""

from __future__ import annotations

import os
import re
import time

import pytest

from engine import inject, posixtimers
from zdtm.snapshot import tree_pids
from enginecase import STOP_WATCH, CRError, assert_same, case, py_hold, take, wait_until, was_stopped  # noqa: F401  (fixture)

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


def test_a_single_threaded_processs_thread_cputime_timer_is_restored(case):
    """CLOCK_THREAD_CPUTIME_ID in a process of one thread is its leader's clock: not refused (the
    refusal of such a timer among several threads stays narrow), made again on the leader's."""
    pid = case.start(py_hold(_LIB + "arm(make(3, signal.SIGUSR1, 0), 3600, 0)\n"))
    before = take(pid)
    assert _ids(pid) == [(0, -2, "signal", 10)]
    after_pid = case.cr(pid)
    assert _ids(after_pid) == [(0, -2, "signal", 10)]
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
    (_LIB + "go = threading.Event(); th = threading.Thread(target=go.wait); th.start()\n"
            "make(0, signal.SIGUSR1, 4, 0, th.native_id)\n"
            "go.set(); th.join()\n",
     r"its POSIX timer 0 signals thread \d+, which is no thread of it any more \(it exited\)"),
    # (a thread's CPU clock of the PROF kind, made by hand: not the one pthread_getcpuclockid gives)
    (_LIB + "th = threading.Thread(target=threading.Event().wait, daemon=True); th.start()\n"
            "make((~th.native_id) << 3 | 4, signal.SIGUSR1, 0)\n",
     r"its POSIX timer 0 runs on thread \d+'s CPU clock of kind 0 \(not the scheduler's\): not restored"),
    # (CLOCK_THREAD_CPUTIME_ID made by a thread other than the leader: the kernel binds it to that
    # thread, /proc/PID/timers shows clock -2 whichever thread made it; was: made on the leader's)
    (_LIB + "made = threading.Event()\n"
            "def run():\n"
            "    arm(make(3, signal.SIGUSR1, 0), 3600, 0); made.set(); threading.Event().wait()\n"
            "threading.Thread(target=run, daemon=True).start()\n"
            "assert made.wait(60)\n",
     r"its POSIX timer 0 runs on the CPU clock of the thread that made it \(clock -2: CLOCK_THREAD_CPUTIME_ID\), "
     r"which nothing tells among its 2 threads: not restored"),
], ids=["exited-thread", "thread-prof-clock", "thread-cputime-of-a-thread"])
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
    def clock_of_none(q): q["posix_timers"][1].update(clock=-2, clock_thread=1)   # (it has no thread)
    def clock_thread_not_cpu(q):
        q["threads"] = [{"comm": "t"}]
        q["posix_timers"][1].update(clock=1, clock_thread=1)
    for change, words in ((dup, "two POSIX timers with one id"), (thread, "which the process does not have"),
                          (unsignalled, "a signal and its value exactly"), (clock, "is no clock"),
                          (caught, "timer_sig_caught names signals"), (which, "out of range"),
                          (twice, "two interval timers of one kind"), (many, "items"),
                          (clock_of_none, "clock_thread names a thread"), (clock_thread_not_cpu, "on clock -2 only")):
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
            "posixtimers.make(json.loads(sys.argv[1]), [os.getpid()])\n"
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


# --- timers that signal a thread other than the leader -----------------------------------------

# A process with two threads of its own and glibc's SIGEV_THREAD helper; its timers, by id:
# 0 the leader (SIGUSR1 ignored, armed an hour), 1 glibc's SIGEV_THREAD (its helper thread, which
# waits for SIGTIMER, 32, blocking every signal; armed an hour, every hour: no callback thread
# comes and goes while the test looks), 2 thread "caught-w" (SIGALRM, which the process catches,
# every 20 ms), 3 deleted (a hole), 4 thread "blocked-w" (SIGRTMIN+3, which that thread alone
# blocks, every 20 ms: the ticks wait on it, pending, where /proc shows them), 5 on caught-w's CPU
# clock, signalling it (as haproxy's watchdog), 6 on the process's CPU clock named by its pid.
_THREADED_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static pthread_barrier_t ready;
static pid_t tids[2];
static volatile sig_atomic_t caught;
static void on_alrm(int s) { (void)s; caught++; }
static void on_tick(union sigval v) { (void)v; }

static void *worker(void *arg) {
    long i = (long)arg;
    prctl(PR_SET_NAME, i ? "blocked-w" : "caught-w");
    if (i) {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGRTMIN + 3);
        pthread_sigmask(SIG_BLOCK, &s, 0);
    }
    tids[i] = gettid();
    pthread_barrier_wait(&ready);
    for (;;)
        pause();
}

static clockid_t on = CLOCK_MONOTONIC;

static timer_t make(struct sigevent *sev, double value, double interval) {
    timer_t t;
    struct itimerspec its = {{(time_t)interval, (long)((interval - (time_t)interval) * 1e9)},
                             {(time_t)value, (long)((value - (time_t)value) * 1e9)}};
    if (timer_create(on, sev, &t) || timer_settime(t, 0, &its, 0)) {
        perror("timer");
        exit(1);
    }
    return t;
}

static timer_t to_thread(pid_t tid, int signo, double value, double interval) {
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = signo;
    sev._sigev_un._tid = tid;
    return make(&sev, value, interval);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, 0);
    signal(SIGUSR1, SIG_IGN);
    pthread_barrier_init(&ready, 0, 3);
    pthread_t th[2];
    for (long i = 0; i < 2; i++)
        pthread_create(&th[i], 0, worker, (void *)i);
    pthread_barrier_wait(&ready);
    to_thread(getpid(), SIGUSR1, 3600, 0);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = on_tick;
    make(&sev, 3600, 3600);
    to_thread(tids[0], SIGALRM, 0.02, 0.02);
    timer_delete(to_thread(tids[0], SIGALRM, 0, 0));
    to_thread(tids[1], SIGRTMIN + 3, 0.02, 0.02);
    pthread_getcpuclockid(th[0], &on);   /* (haproxy's watchdog: a thread's own CPU time) */
    to_thread(tids[0], SIGALRM, 3600, 3600);
    clock_getcpuclockid(getpid(), &on);   /* (its own process's, by number) */
    sev.sigev_notify = SIGEV_NONE;
    make(&sev, 3600, 0);
    while (!caught)
        usleep(1000);   /* (caught-w takes it) */
    prctl(PR_SET_NAME, "mntcr-hold");
    for (;;)
        pause();
}
"""


@pytest.fixture(scope="module")
def threaded_setup(tmp_path_factory) -> str:
    """A setup line running _THREADED_C, compiled here (skips without a C compiler)."""
    import base64
    import shutil
    import subprocess
    d = tmp_path_factory.mktemp("threaded")
    (d / "tt.c").write_text(_THREADED_C)
    if not shutil.which("gcc"):
        pytest.skip("no C compiler here (gcc)")
    r = subprocess.run(["gcc", "-O1", "-pthread", "-o", str(d / "tt"), str(d / "tt.c")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    blob = base64.b64encode((d / "tt").read_bytes()).decode()
    # (a child of the root: init of a pid namespace would drop a signal at its default action, which
    # must be seen to kill)
    return f"echo {blob} | base64 -d > /tmp/tt && chmod +x /tmp/tt\n/tmp/tt </dev/null >/dev/null 2>&1 &\nhold\n"


def _program(root: int) -> int:
    """The pid of the process _THREADED_C runs in the tree at `root`."""
    pids = [p for p in tree_pids(root) if p != root and _alive(p)]
    assert len(pids) == 1, f"the program is not in the tree (killed by a tick?): {pids}"
    return pids[0]


def _tasks(pid: int) -> dict[str, dict]:
    """{name: {tid, blocked, pending (its own pending signals)}} of `pid`'s threads but its leader;
    glibc's helper keeps the program's name ("tt")."""
    from engine import kernel
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) != pid:
            st = kernel.proc_status(f"{pid}/task/{tid}", {"SigBlk", "SigPnd"})
            out[kernel.read_comm(f"{pid}/task/{tid}")] = {"tid": int(tid), "blocked": int(st["SigBlk"], 16),
                                                          "pending": int(st["SigPnd"], 16)}
    return out


def _notified(pid: int) -> dict[int, int]:
    """{timer id: the tid it notifies} of `pid`'s timers that notify a thread."""
    return {t["id"]: t["tid"] for t in posixtimers.parse(pid) if t["notify"] == "thread"}


def _cpu_clocks(pid: int) -> dict[int, int]:
    """{timer id: the host tid whose CPU clock it runs on} of `pid`'s timers on a CPU clock named
    by a number."""
    return {t["id"]: posixtimers.clock_owner(pid, t["clock"]) for t in posixtimers.parse(pid) if t["clock"] < -8}


def _wait_pending(pid: int, name: str, sig: int) -> None:
    """Until thread `name` of `pid` has `sig` pending (its timer ticked while it blocks it)."""
    deadline = time.monotonic() + 30   # (a generous bound: ticks come every 20 ms)
    while True:
        assert _alive(pid), f"a tick of signal {sig} killed the restored process"
        if _tasks(pid)[name]["pending"] >> (sig - 1) & 1:
            return
        assert time.monotonic() < deadline, f"no tick of signal {sig} reached thread {name}: {_tasks(pid)}"
        time.sleep(0.05)



def test_timers_that_signal_threads_are_made_for_the_restored_threads(case, threaded_setup):
    """Each timer notifying a thread (one of the program's own, glibc's SIGEV_THREAD helper) is made
    again under its id, for the restored thread of the same place, which has its mask: after the
    restore a thread's own ticks wait on it (blocked-w), a caught signal's run the stand-in's
    handler (caught-w) without killing the tree, and the leader's timer is the leader's."""
    root = case.start(threaded_setup)
    before = take(root)
    pid = _program(root)
    tasks, notified = _tasks(pid), _notified(pid)
    assert sorted(tasks) == ["blocked-w", "caught-w", "tt"], tasks
    assert notified == {0: pid, 1: tasks["tt"]["tid"], 2: tasks["caught-w"]["tid"], 4: tasks["blocked-w"]["tid"],
                        5: tasks["caught-w"]["tid"]}
    assert [t["id"] for t in posixtimers.parse(pid)] == [0, 1, 2, 4, 5, 6]
    assert _cpu_clocks(pid) == {5: tasks["caught-w"]["tid"], 6: pid}
    after_root = case.cr(root)
    after_pid = _program(after_root)
    after = _tasks(after_pid)
    assert sorted(after) == sorted(tasks), after
    assert _notified(after_pid) == {0: after_pid, 1: after["tt"]["tid"], 2: after["caught-w"]["tid"],
                                    4: after["blocked-w"]["tid"], 5: after["caught-w"]["tid"]}
    # (the thread's CPU clock named by its new tid; the process's by pid 0, its own)
    assert _cpu_clocks(after_pid) == {5: after["caught-w"]["tid"]}
    assert {t["id"]: t["clock"] for t in posixtimers.parse(after_pid)}[6] == -6
    # (each thread's own mask. glibc's helper blocks every signal but SIGSETXID (33) and the two
    # that cannot be: SIGTIMER (32) too, whose default action would kill; /proc shows it unblocked
    # while the helper waits for it in sigwaitinfo, which the dump's stop ends)
    assert after["tt"]["blocked"] == (1 << 64) - 1 & ~(1 << 8 | 1 << 18 | 1 << 32), hex(after["tt"]["blocked"])
    assert tasks["tt"]["blocked"] == after["tt"]["blocked"] & ~(1 << 31)
    assert after["blocked-w"]["blocked"] == tasks["blocked-w"]["blocked"] == 1 << (34 + 3 - 1)
    assert after["caught-w"]["blocked"] == tasks["caught-w"]["blocked"] == 0
    _wait_pending(after_pid, "blocked-w", 34 + 3)
    # (taken by the stand-in's handler as it comes: seen pending at most for a moment, under load)
    deadline = time.monotonic() + 30
    while _tasks(after_pid)["caught-w"]["pending"]:
        assert time.monotonic() < deadline, "caught-w's SIGALRM is not taken"
        time.sleep(0.01)
    assert _alive(after_pid)
    assert_same(before, take(after_root))


def test_a_glibc_sigev_thread_timer_ticks_into_its_helper_without_killing(case, threaded_setup):
    """glibc's SIGEV_THREAD timer made to tick in the restored process (its image's time left and
    interval set to 20 ms): SIGTIMER (32) waits, pending, on the restored helper thread, which
    blocks it as glibc's did; the callback is not run (no thread runs its program again)."""
    from enginecase import load_manifest, save_manifest
    root = case.start(threaded_setup)
    images = case.new_images_dir()
    case.dump(root, images)
    doc = load_manifest(images)
    (p,) = [p for p in doc["processes"] if p.get("posix_timers")]
    (t,) = [t for t in p["posix_timers"] if t["id"] == 1]
    assert t["notify"] == "thread" and t["signo"] == 32
    assert p["threads"][t["thread"] - 1]["comm"] == "tt"
    t["value"] = t["interval"] = 20_000_000
    save_manifest(images, doc)
    after_pid = _program(case.restore(images))
    _wait_pending(after_pid, "tt", 32)
    assert _alive(after_pid), "a tick of SIGTIMER killed the restored process"


# Timers of a stand-in's last steps: 0 notifies nothing (made before the threads), 1 thread "w-b",
# 3 the process, 4 thread "w-a", 6 the leader thread, 8 and 9 on "w-b"'s CPU clock (9 notifying
# "w-a"); "w-b" blocks signal 40 of its own.
_LATE = [{"id": 0, "clock": 1, "notify": "none", "value": 0, "interval": 0, "overrun": 0},
         {"id": 1, "clock": 1, "notify": "thread", "thread": 2, "signo": 12, "sigval": 5, "value": 10 ** 12,
          "interval": 0, "overrun": 0},
         {"id": 3, "clock": 0, "notify": "signal", "signo": 10, "sigval": 0, "value": 10 ** 12, "interval": 10 ** 9,
          "overrun": 0},
         {"id": 4, "clock": 1, "notify": "thread", "thread": 1, "signo": 40, "sigval": 7, "value": 0,
          "interval": 0, "overrun": 0},
         {"id": 6, "clock": 1, "notify": "thread", "thread": 0, "signo": 41, "sigval": 0, "value": 10 ** 12,
          "interval": 0, "overrun": 0},
         {"id": 8, "clock": -2, "clock_thread": 2, "notify": "none", "value": 10 ** 12, "interval": 0, "overrun": 0},
         {"id": 9, "clock": -2, "clock_thread": 2, "notify": "thread", "thread": 1, "signo": 12, "sigval": 0,
          "value": 0, "interval": 0, "overrun": 0}]
_LATE_THREADS = [("w-a", None), ("w-b", 1 << 39)]


@pytest.mark.parametrize("how", ["machine-code", "machine-code-fillers", "python", "python-fillers"])
def test_last_steps_make_the_timers_of_threads(how):
    """A stand-in's last steps make each timer notifying a thread once that thread is made, for its
    tid, under the timer's id: in machine code (the clone writes the tid, copied into the timer's
    struct sigevent) with PR_TIMER_CREATE_RESTORE_IDS or the way before it (every timer from the
    first such id on made after the threads, fillers between), or in Python; each armed as asked,
    each thread with its mask."""
    from engine import kernel, lastword, mappings, standin
    from test_hardening_laststeps import _last_word, _needs_root
    _needs_root()
    if how.startswith("machine") and not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")
    restore_ids = not how.endswith("-fillers")
    if restore_ids and not posixtimers.ids_restorable():
        pytest.skip("no PR_TIMER_CREATE_RESTORE_IDS (Linux < 6.13)")
    seen: dict = {}

    def steps(w):
        kernel.take_blocked_signals(1 << 9 | 1 << 11 | 1 << 40)   # (SIGUSR1, SIGUSR2, 41: no tick kills)
        if not restore_ids:
            posixtimers._restore_ids = lambda on: False   # (the kernel before 6.13; in this child only)
        if how.startswith("python"):
            standin._detach(set(), w, None, None, None, _LATE_THREADS, signals=(1 << 9 | 1 << 11 | 1 << 40, 0, 0),
                            timers={"posix_timers": _LATE})
        made, late = posixtimers.split(_LATE, restore_ids)
        posixtimers.make(made, [os.getpid()])
        mappings.become_exe(os.open("/bin/true", os.O_RDONLY), w, None, None, _LATE_THREADS,
                            blocked=1 << 9 | 1 << 11 | 1 << 40, timers=(late, made, restore_ids))

    def look(pid):
        names = {int(t): kernel.read_comm(f"{pid}/task/{t}") for t in os.listdir(f"/proc/{pid}/task")}
        seen["timers"] = [(t["id"], t["notify"], names.get(t.get("tid")), t.get("signo"), t.get("sigval"))
                          for t in posixtimers.parse(pid)]
        seen["clocks"] = {t["id"]: names.get(posixtimers.clock_owner(pid, t["clock"]), t["clock"])
                          for t in posixtimers.parse(pid)}
        seen["masks"] = {names[int(t)]: kernel.read_blocked_signals(f"{pid}/task/{t}").get("sig_blocked", 0)
                         for t in os.listdir(f"/proc/{pid}/task")}
        seen["armed"] = [a[1][2] for a in inject.calls(pid, posixtimers.calls(posixtimers.parse(pid)))[::2]]

    word = _last_word(steps, look=look)
    assert word == lastword.OK, lastword.explain(word)
    leader = next(n for n in seen["masks"] if n not in ("w-a", "w-b"))
    assert seen["timers"] == [(0, "none", None, 0, 0), (1, "thread", "w-b", 12, 5), (3, "signal", None, 10, 0),
                              (4, "thread", "w-a", 40, 7), (6, "thread", leader, 41, 0), (8, "none", None, 0, 0),
                              (9, "thread", "w-a", 12, 0)], seen
    assert seen["clocks"] == {0: 1, 1: 1, 3: 0, 4: 1, 6: 1, 8: "w-b", 9: "w-b"}, seen
    assert seen["masks"] == {leader: 1 << 9 | 1 << 11 | 1 << 40, "w-a": 1 << 9 | 1 << 11 | 1 << 40,
                             "w-b": 1 << 39}, seen
    assert [s > 900 for s in seen["armed"]] == [False, True, True, False, True, True, False], seen   # (seconds left)


def test_a_thread_stopped_inside_its_timer_handler_keeps_the_mask_outside_it(case):
    """A thread whose timer's signal (SIGUSR2, caught) it is handling when the dump stops it blocks
    that signal only until its handler returns: the image keeps the mask outside the handler
    (engine/timersigs.py), else the restored thread would hold its ticks pending for good."""
    pid = case.start(py_hold(_LIB + "import os, time\n"
                                    "def stay(sig):\n"
                                    "    while True:\n"
                                    "        time.sleep(1)\n"
                                    "stay_c = ctypes.CFUNCTYPE(None, ctypes.c_int)(stay)\n"
                                    "libc.signal(signal.SIGUSR2, stay_c)\n"
                                    "th = threading.Thread(target=threading.Event().wait, daemon=True); th.start()\n"
                                    "t = make(1, signal.SIGUSR2, 4, 0, th.native_id); arm(t, 0.01, 0)\n"))
    (tid,) = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    wait_until(lambda: re.search(r"^SigBlk:\s*0*800$", open(f"/proc/{pid}/task/{tid}/status").read(), re.M),
               "the thread's entry into its handler (SIGUSR2 blocked in it)")
    images = case.new_images_dir()
    case.dump(pid, images)
    from enginecase import load_manifest
    p = load_manifest(images)["processes"][0]
    assert p["threads"] == [{"comm": "python3"}], p["threads"]   # (its mask the leader's: none of its own)
    assert p["posix_timers"][0]["thread"] == 1 and p["timer_sig_caught"] == 1 << 11, p
