"""A process's threads (engine/threads.py): dumped with their names, made again by its stand-in
once it took the process's ids and capabilities (so they hold them too), and refused before the
stop when a thread holds a state of its own (an fs, a namespace, ids) restore would not give it.

Before, a stand-in held one thread: redis-server's background threads were lost and nothing said
so (only scenarios/fds/apps.yaml's check noticed)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import threading

import pytest

from engine import imageformat, kernel, lastword, threads
from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)
from test_hardening_laststeps import _last_word
from zdtm.snapshot import tree_pids

_libc = ctypes.CDLL(None, use_errno=True)


def _tasks(pid: int) -> list[dict]:
    """Per thread of `pid` (its leader first): its name and the status lines restore gives it."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=lambda t: (int(t) != pid, int(t))):
        st = kernel.proc_status(f"{pid}/task/{tid}", {"Uid", "Gid", "Groups", "CapPrm", "CapEff", "CapInh"})
        out.append({"comm": kernel.read_comm(f"{pid}/task/{tid}"), **{k: " ".join(v.split()) for k, v in st.items()}})
    return out


def _last_steps(fn) -> tuple[bytes, list[dict]]:
    """Run `fn(report_fd)` (a stand-in's last steps) in a forked child; (its last word, its threads
    as _tasks reads them once it told)."""
    tasks: list[dict] = []
    word = _last_word(fn, look=lambda pid: tasks.extend(_tasks(pid)))
    return word, tasks


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (a stand-in's last steps take ids and capabilities)")


IDS = ([1000] * 4, [1000] * 4, [1000, 27], True, True)
CAPS = {"inh": 0, "prm": 1 << 10, "eff": 1 << 10, "bnd": (1 << 41) - 1, "amb": 0}
NAMES = ["worker-0", "worker-1", "raw\udcffname"]


def _made_as_the_process(tasks: list[dict]) -> None:
    """Each thread holds the leader's ids and capabilities, the ones the steps took, and its name."""
    leader, *rest = tasks
    assert leader["Uid"] == "1000 1000 1000 1000" and set(leader["Groups"].split()) == {"27", "1000"}, leader
    assert int(leader["CapEff"], 16) == 1 << 10, leader
    assert sorted(t["comm"] for t in rest) == sorted(NAMES), tasks
    for t in rest:
        assert {k: v for k, v in t.items() if k != "comm"} == {k: v for k, v in leader.items() if k != "comm"}, tasks


def test_machine_code_makes_the_threads_last():
    """become_exe's program with ids, capabilities and threads: every step took, the threads are
    named as asked and hold the ids and capabilities the raw (per-thread) setresuid and capset gave
    the leader, and the leader kept its own name."""
    _needs_root()
    from engine import mappings
    if not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")

    def steps(w):
        kernel.set_comm("the-leader")
        fd = os.open("/bin/true", os.O_RDONLY)
        mappings.become_exe(fd, w, IDS, CAPS, NAMES)

    word, tasks = _last_steps(steps)
    assert word == lastword.OK, lastword.explain(word)
    assert tasks[0]["comm"] == "the-leader", tasks
    _made_as_the_process(tasks)


def test_python_path_makes_the_threads_last():
    """Without become_exe (no executable to become), _detach takes the ids and capabilities in
    Python and then makes the threads: the same outcome."""
    _needs_root()
    from engine import standin

    def steps(w):
        kernel.set_comm("the-leader")
        standin._detach(set(), w, None, IDS, CAPS, NAMES)

    word, tasks = _last_steps(steps)
    assert word == lastword.OK, lastword.explain(word)
    assert tasks[0]["comm"] == "the-leader", tasks
    _made_as_the_process(tasks)


def test_a_failed_clone_is_told():
    """A thread the kernel will not make (RLIMIT_NPROC reached for the ids taken, which root no
    longer escapes) fails the last steps, and the word names the clone."""
    _needs_root()
    from engine import mappings
    if not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")
    import resource

    def steps(w):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        fd = os.open("/bin/true", os.O_RDONLY)
        mappings.become_exe(fd, w, ([54321] * 4, [54321] * 4, [], True, False), None, ["t"])

    word, tasks = _last_steps(steps)
    assert lastword.explain(word) == (11, "clone (making a thread): Resource temporarily unavailable"), word
    assert len(tasks) == 1, tasks


def test_an_nproc_of_0_is_taken_after_the_threads():
    """A process that set RLIMIT_NPROC to 0 once its threads ran (haproxy forbids forking so): its
    stand-in keeps ours until it made the threads as the process's ids, then takes 0 (else the
    clone fails, as above)."""
    _needs_root()
    from engine import mappings
    if not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")
    limits: list = []

    def steps(w):
        early, late = threads.limits_before({"NPROC": [0, 0]})
        assert late == {"NPROC": [0, 0]} and early["NPROC"] != [0, 0], (early, late)
        kernel.set_rlimits(early)
        fd = os.open("/bin/true", os.O_RDONLY)
        mappings.become_exe(fd, w, ([54321] * 4, [54321] * 4, [], True, False), None, ["t"], late_limits=late)

    def look(pid):
        with open(f"/proc/{pid}/limits") as f:
            limits.extend(line.split()[2:4] for line in f if line.startswith("Max processes"))
        limits.append(len(os.listdir(f"/proc/{pid}/task")))

    word = _last_word(steps, look=look)
    assert word == lastword.OK, lastword.explain(word)
    assert limits == [["0", "0"], 2], limits


def test_the_image_bounds_threads_and_their_names():
    rule = imageformat.PROCESS.fields["threads"].rule
    assert rule([{"comm": "bio_aof"}, {"comm": "raw\udcff"}]) is None
    with pytest.raises(imageformat.Bad, match="at most 15"):
        rule([{"comm": "x" * 16}])
    with pytest.raises(imageformat.Bad, match="NUL"):
        rule([{"comm": "a\0b"}])
    assert "at most" in rule([{"comm": "t"}] * (imageformat.MAX_THREADS + 1))


# --- a live process whose thread holds a state of its own -------------------------------------

# What a thread does to hold a state of its own: (how, what the refusal names).
OWN = {
    "cwd": ("unshare(0x200); os.chdir('/tmp')", r"its own working directory \(/tmp on mount \d+"),
    "mntns": ("unshare(0x20000)", r"its own mnt namespace \(mnt:\[\d+\]"),
    "netns": ("unshare(0x40000000)", r"its own net namespace \(net:\[\d+\]"),
    "uid": ("setresuid(1000)", r"its own uids \(1000 1000 1000 1000; the process's: 0 0 0 0\)"),
}

# A holder whose thread "odd" does `how` (libc's unshare and a raw setresuid act on the calling
# thread alone) and then waits; the main thread's name tells the harness the tree is ready.
ODD = """
import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def unshare(flags):
    if libc.unshare(flags):
        raise OSError(ctypes.get_errno(), "unshare")
def setresuid(uid):
    if libc.syscall(117, uid, uid, uid):
        raise OSError(ctypes.get_errno(), "setresuid")
done = threading.Event()
def odd():
    libc.prctl(15, b"odd", 0, 0, 0)
    HOW
    done.set()
    while True:
        time.sleep(1000)
threading.Thread(target=odd, daemon=True).start()
done.wait()
"""


def _odd_child(how: str) -> int:
    """A forked child of this test running ODD's thread doing `how`; its pid, once the thread did."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            exec(ODD.replace("HOW", how), {"os": os})
            os.write(w, b"x")
            signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    return pid


@pytest.mark.parametrize("kind", sorted(OWN))
def test_read_refuses_a_thread_with_its_own_state(kind):
    """Dump reads the threads once the tree is stopped with the same check (a thread made after
    the pre-stop check): threads.read refuses, naming the process, the thread and what differs."""
    _needs_root()
    how, why = OWN[kind]
    pid = _odd_child(how)
    try:
        with pytest.raises(threads.ThreadError) as err:
            threads.read(pid)
        assert re.search(rf"process {pid} \(\S+\): thread \d+ \(odd\) has {why}", str(err.value)), err.value
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_read_records_plain_threads():
    """Threads that share everything with their leader are recorded by name, in creation order."""
    pid = _odd_child("libc.prctl(15, b'plain', 0, 0, 0)")
    try:
        assert threads.read(pid) == [{"comm": "plain"}]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "SR"


@pytest.mark.parametrize("kind", sorted(OWN))
def test_a_thread_with_its_own_state_is_refused_unstopped(case, kind):
    """The same trees in a container: dump refuses before it stops anything, and the tree runs on
    (the odd thread still odd)."""
    how, why = OWN[kind]
    pid = case.start(STOP_WATCH + py_hold(ODD.replace("HOW", how)))
    holder = next(p for p in tree_pids(pid) if len(os.listdir(f"/proc/{p}/task")) > 1)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(rf"process {holder} \(mntcr-hold\): thread \d+ \(odd\) has {why}.*the tree keeps running",
                     str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _running(pid) and len(os.listdir(f"/proc/{holder}/task")) == 2


# Threads named by themselves (one with bytes UTF-8 cannot decode), one blocked reading a pipe of
# a file overmounted since, one left with the interpreter's name; the holder runs as uid 1000
# (os.setresuid: glibc changes every thread's), so the restored threads must too. (Not with
# PR_SET_KEEPCAPS: that flag is the calling thread's, and the other threads would lose their
# capabilities where the leader keeps its own: refused, as its own permitted capabilities.)
NAMED = """
import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
os.mkfifo("/run/fifo")
rfd = os.open("/run/fifo", os.O_RDWR)
os.system("mount -t tmpfs over /run")
ready = threading.Barrier(4)
def named(name, wait):
    if name:
        libc.prctl(15, name, 0, 0, 0)
    ready.wait()
    wait()
threading.Thread(target=named, args=(b"worker-0", lambda: time.sleep(100000)), daemon=True).start()
threading.Thread(target=named, args=(b"raw\\xff\\xfename", lambda: time.sleep(100000)), daemon=True).start()
threading.Thread(target=named, args=(None, lambda: os.read(rfd, 1)), daemon=True).start()
ready.wait()
os.setgroups([27]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
"""


def test_threads_are_restored_named_and_as_the_process(case):
    """Round trip of NAMED (the snapshot compares every process's thread count and names): the
    restored holder has its three threads, named as dumped, each with the process's ids."""
    states = case.roundtrip(py_hold(NAMED))
    after = states[-1].pid
    holder = next(p for p in tree_pids(after) if len(os.listdir(f"/proc/{p}/task")) > 1)
    tasks = _tasks(holder)
    assert sorted(t["comm"] for t in tasks[1:]) == ["python3", "raw\udcff\udcfename", "worker-0"], tasks
    for t in tasks:
        assert t["Uid"] == "1000 1000 1000 1000" and t["Gid"] == "1000 1000 1000 1000", tasks
        assert {k: v for k, v in t.items() if k != "comm"} == {k: v for k, v in tasks[0].items() if k != "comm"}
