"""engine/ctty.py: controlling terminals of a tree's processes made again (members of a session forked
late, once their leader took the terminal), what is refused before the stop, and bytes waiting in a pty
(engine/fds/pty_data.py: kept exactly, or refused before the stop, never lost)."""

import json
import os
import re
import termios
import time

import pytest

from engine import ctty
from enginecase import STOP_WATCH, case, py_hold  # noqa: F401  (fixture)
from test_engine_prestop import _refused_unstopped


def proc(pid, ppid, sid, ctty=False, takes=False, ns=None):
    p = {"pid": pid, "ppid": ppid, "sid": sid, "fds": [], "ns": ns or {"pid": "pid-0", "net": "net-0"}}
    if ctty:
        p["ctty"] = True
    if takes:
        p["fds"] = [{"kind": "pty", "end": "slave", "ctty": True}]
    return p


def test_shell_jobs_are_forked_late():
    """`sh -i` leads its session on a pty; its jobs (and a job's child) have the terminal and are forked
    late; a `setsid` child of a job leaves it (forked late, as its parent, without it); a child of the
    shell forked before it took the terminal (no terminal) is forked early."""
    procs = [proc(1, None, 1), proc(10, 1, 10, takes=True), proc(11, 10, 10, ctty=True), proc(12, 11, 10, ctty=True),
             proc(13, 11, 13), proc(14, 10, 10)]
    plan = ctty.plan(procs)
    assert plan == ([11, 12, 13], [10], None)


def test_a_late_leader_takes_its_own_terminal():
    """A job that starts a session of its own on another pty (`script` run from the shell): forked late,
    it takes its terminal before its own members are forked."""
    procs = [proc(1, None, 1, takes=True), proc(2, 1, 1, ctty=True), proc(3, 2, 3, takes=True),
             proc(4, 3, 3, ctty=True)]
    assert ctty.plan(procs) == ([2, 3, 4], [1, 3], None)


@pytest.mark.parametrize("procs, problem", [
    ([proc(1, None, 9, ctty=True)], (1, "outside")),                               # a terminal of a session outside
    ([proc(1, None, 1), proc(2, 1, 1, ctty=True)], (2, "parent")),                 # its leader gives it back not
    ([proc(1, None, 1, takes=True), proc(2, 1, 1), proc(3, 2, 1, ctty=True)], (3, "parent")),   # its parent left it
    ([proc(1, None, 1, takes=True), proc(2, 1, 1, ctty=True), proc(3, 2, 1)], (3, "unwanted")),  # TIOCNOTTY
    ([proc(1, None, 1, takes=True), proc(2, 1, 1, ctty=True, ns={"pid": "pid-1", "net": "net-0"})],
     (2, "namespaces")),
    ([proc(1, None, 1, takes=True, ctty=True)], (1, "leader")),
    # (a child of the leader forked before it took the terminal, in the group of a job that has it)
    ([proc(1, None, 1, takes=True), dict(proc(2, 1, 1, ctty=True), pgid=2), dict(proc(3, 1, 1), pgid=2)],
     (3, "group")),
])
def test_what_cannot_be_made(procs, problem):
    assert ctty.plan(procs).problem == problem


_PTY = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
""" + py_hold("""
import fcntl, struct, termios, time
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
r, w = os.pipe()
if os.fork() == 0:
    os.close(m); os.close(r)
    os.setsid()
    s = os.open(f"/dev/pts/{n}", os.O_RDWR)   # (its controlling terminal)
    a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a)
    if MODE == "no_fd":
        os.close(s)   # (its stdio /dev/null: py_hold's tail)
    else:
        os.dup2(s, 10); os.close(s)
    if MODE not in ("member", "no_fd", "zombie", "shell") or os.fork():   # (a member: the terminal inherited)
        os.write(w, b"x")
    elif MODE == "zombie" and os.fork() == 0:
        os._exit(7)   # (the member's child, never reaped: a zombie of a late stand-in)
    elif MODE == "shell":   # (a job of the leader's shell: the terminal, no fd on it; fd 11 tells it)
        os.close(10); os.dup2(os.open("/dev/null", os.O_RDONLY), 11)
    os.close(w)
else:
    os.close(w)
    os.read(r, 1); os.close(r)
    time.sleep(0.2)
    os.dup2(m, 20); os.close(m)
""")


def _pty_tree(case, mode):
    return case.start(STOP_WATCH + _PTY.replace("MODE", f"\"{mode}\""))


# Bytes waiting in a pty of the tree (engine/fds/pty_data.py): SLAVE_OPS run on the slave `s` (its
# termios, output its program writes), then MASTER_OPS on the master `m` (input typed), nobody reads.
_WAITING = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
""" + py_hold("""
import fcntl, struct, termios, time
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
r, w = os.pipe()
if os.fork() == 0:
    os.close(m); os.close(r)
    os.setsid()
    s = os.open(f"/dev/pts/{n}", os.O_RDWR)
    SLAVE_OPS
    os.dup2(s, 10); os.close(s)
    os.write(w, b"x"); os.close(w)
else:
    os.close(w)
    os.read(r, 1); os.close(r)
    MASTER_OPS
    time.sleep(0.2)
    os.dup2(m, 20); os.close(m)
""")

_SCENARIOS = {
    # canonical, echo on: lines ended by NL (typed CR: ICRNL), by VEOF (a partial line, then VEOF
    # alone: an empty read, also last), a literal NL typed with VLNEXT, a VEOL line; output through OPOST
    "canonical": ("a = termios.tcgetattr(s); a[6][termios.VEOL] = b\"#\"; termios.tcsetattr(s, termios.TCSANOW, a); "
                  "os.write(s, b\"out\\nline\\n\")",
                  "[os.write(m, x) or time.sleep(0.02) for x in (b\"abc\\r\", b\"de\\x04\", b\"\\x04\", "
                  "b\"x\\x16\\ny\\n\", b\"hash#\", b\"\\x16\\x04\\n\", b\"\\x04\")]"),
    # raw: no canonical lines, no echo, no signals; CR and ^C as they are
    "raw": ("a = termios.tcgetattr(s); a[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG); "
            "termios.tcsetattr(s, termios.TCSANOW, a); os.write(s, b\"o\\n\")",
            "os.write(m, b\"raw\\r\\n\\x03x\")"),
    # more than the line disciplines hold: output past the master's 4 KiB waits in the tty buffer
    # behind it; input lines, many of their bytes special characters typed literally (VLNEXT)
    "big": ("a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a); "
            "[os.write(s, bytes([48 + i]) * 1000) or time.sleep(0.01) for i in range(10)]",
            "[os.write(m, b\"\\x16\\x04\" * 100 + b\"\\x16\\n\\n\") or time.sleep(0.005) for _ in range(15)]"),
}
# Output stopped at dump (tcflow TCOOFF; VSTOP typed with IXON): dump starts it to write the bytes
# back and stops it again the same way (VSTART still restarts it). No echo: a stopped terminal
# holds its echoes, which come out once started (the same bytes, earlier).
_STOPPED = {
    "tcooff": ("a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a); "
               "os.write(s, b\"o\\n\"); termios.tcflow(s, termios.TCOOFF)", "os.write(m, b\"in\\n\")"),
    "vstop": ("a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a); "
              "os.write(s, b\"o\\n\")", "os.write(m, b\"\\x13\"); time.sleep(0.05); os.write(m, b\"in\\n\")"),
}
# What cannot be kept (refused before the stop, the tree untouched): output waiting on a master in
# packet mode (its reads carry a status byte); raw input filling the slave's line discipline (more
# waits behind it, not processed yet: written back, it would be processed as it was not)
_UNKEPT = {
    "packet": ("os.write(s, b\"o\\n\")", "fcntl.ioctl(m, termios.TIOCPKT, struct.pack(\"i\", 1))",
               r"fd 20 \(/dev/pts/ptmx\): pty 0: 3 bytes of output nobody read from the master, which is in "
               r"packet mode \(TIOCPKT\): not supported"),
    "full": ("a = termios.tcgetattr(s); a[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG); "
             "termios.tcsetattr(s, termios.TCSANOW, a)",
             "os.set_blocking(m, False); [os.write(m, b\"x\" * 1000) for _ in range(5)]",
             r"fd 10 \(/dev/pts/0\): pty 0: \d+ bytes of input the program on the slave has not read, which "
             r"fill its line discipline .*: not supported"),
}


def _drain(master: int) -> tuple[bytes, list[bytes]]:
    """What reads give from a pty: its master (the output waiting), then its slave (input, a read
    each: lines in canonical mode), through a new fd on the slave."""
    from engine.fds import pty_data
    time.sleep(0.05)
    out = b""
    while pty_data.inq(master) > 0 or (time.sleep(0.05) or pty_data.inq(master) > 0):
        out += os.read(master, 65536)   # (then what the tty work moves in behind)
    slave = pty_data.peer(master)
    try:
        ins = []
        while len(ins) < 100:   # (until EAGAIN: a VEOF alone last reads as 0 bytes, FIONREAD 0)
            try:
                ins.append(os.read(slave, 65536))
            except BlockingIOError:
                return out, ins
        raise AssertionError(f"endless reads: {ins}")
    finally:
        os.close(slave)


def _oracle(scenario: str, more: bytes = b"") -> tuple[bytes, list[bytes]]:
    """What a pty of ours gives after the scenario's operations (then `more` typed): what the tree's
    would have given, had it not been dumped."""
    m, s = os.openpty()
    try:
        slave_ops, master_ops = {**_SCENARIOS, **_STOPPED}[scenario]
        exec(slave_ops, {"os": os, "termios": termios, "s": s, "m": m, "time": time})
        exec(master_ops, {"os": os, "termios": termios, "s": s, "m": m, "time": time})
        if more:
            os.write(m, more)
        return _drain(m)
    finally:
        os.close(m)
        os.close(s)


def _waiting_tree(case, scenario: str, typing: bytes = b"") -> int:
    slave_ops, master_ops = {**_SCENARIOS, **_STOPPED}[scenario]
    if typing:
        master_ops += f"; time.sleep(0.05); os.write(m, b\"{typing.decode()}\")"
    return case.start(STOP_WATCH + _WAITING.replace("SLAVE_OPS", slave_ops).replace("MASTER_OPS", master_ops))


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS))
def test_pty_bytes_waiting_kept_exactly(case, scenario):
    """Bytes waiting in a pty of the tree, output nobody read from the master and input the program
    on the slave did not read, are there after C/R exactly as reads would have given them: the
    same bytes, the same lines (nothing echoed, translated or signalled twice); the snapshot
    counts them on both ends (a loss fails the round trip)."""
    from enginecase import grab_fd, take, assert_same
    pid = _waiting_tree(case, scenario)
    before = take(pid)
    assert any(re.search(r"tty inq=[1-9]", f) for p in before.snap.procs for f in p.fds), before.snap.procs
    restored = case.cr(pid)
    assert_same(before, take(restored))
    m = grab_fd(restored, 20)
    try:
        got = _drain(m)
    finally:
        os.close(m)
    want = _oracle(scenario)
    assert want[0] and want[1], want
    assert got == want


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS) + sorted(_STOPPED))
def test_pty_bytes_waiting_stay_with_leave_running(case, scenario):
    """With --leave-running the tree keeps its pty's bytes exactly (dump read them and wrote them
    back), the line being typed (canonical mode: not kept in the image) among them: typed on, it
    completes as it would have; stopped output stays stopped, the way it was."""
    import select
    from enginecase import grab_fd
    pid = _waiting_tree(case, scenario, b"part")
    images = case.new_images_dir()
    case.dump(pid, images, ("--leave-running",))
    with open(os.path.join(images, "mntcr.json")) as f:
        pty = next(o for o in json.load(f)["objects"].values() if o["kind"] == "pty")
    assert pty.get("out") and pty.get("in"), pty
    m = grab_fd(pid, 20)
    try:
        if scenario in _STOPPED:
            slave = grab_fd(_child_holding(pid, 10), 10)
            try:
                assert not select.select([], [slave], [], 0.1)[1], "its output was started"
                if scenario == "vstop":
                    os.write(m, b"\x11")   # (VSTART, typed, starts it)
                    assert select.select([], [slave], [], 2)[1]
            finally:
                os.close(slave)
        os.write(m, b"Z\n")
        got = _drain(m)
    finally:
        os.close(m)
    assert got == _oracle(scenario, b"\x11partZ\n" if scenario == "vstop" else b"partZ\n")


@pytest.mark.parametrize("scenario", sorted(_UNKEPT))
def test_pty_bytes_that_cannot_be_kept_refused_unstopped(case, scenario):
    """Bytes waiting in a pty that dump could not keep exactly: refused before the stop, naming the
    fd and what to do; the bytes are still there."""
    slave_ops, master_ops, words = _UNKEPT[scenario]
    pid = case.start(STOP_WATCH + _WAITING.replace("SLAVE_OPS", slave_ops).replace("MASTER_OPS", master_ops))
    _refused_unstopped(case, pid, r"process \d+ (\(mntcr-hold\) )?" + words + "; let them be read and dump again; "
                                     r"the tree keeps running")
    from enginecase import grab_fd
    from engine.fds import pty_data
    fd = grab_fd(pid, 20)
    slave = pty_data.peer(fd)
    try:
        assert pty_data.inq(fd) == 3 if scenario == "packet" else pty_data.inq(slave) >= 4095
    finally:
        os.close(slave)
        os.close(fd)


def test_image_pty_waiting_hostile_values(case):
    """The bytes waiting in a pty object are base64 within the terminal's bounds, with its termios:
    anything else fails validation in one line, before restore writes a byte."""
    from engine import image, imageformat
    pid = _waiting_tree(case, "canonical")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    imageformat.validate(json.loads(json.dumps(good)))
    key = next(k for k, o in good["objects"].items() if o["kind"] == "pty")
    for change, words in (({"out": "not base64!"}, "must be base64"),
                          ({"out": "QUJD="}, "must be base64"),
                          ({"out": "QUJD" * 30000}, "must be base64 of at most 65536 bytes"),
                          ({"in": "QUJD"}, "in.* must be a list"),
                          ({"in": [7]}, r"in\[0\].* must be a string"),
                          ({"in": ["QUJD" * 1400]}, "must be base64 of at most 4095 bytes"),
                          ({"in": ["QUJD" * 1000, "QUJD" * 1000]}, "more input waiting in a pty than"),
                          ({"termios": None}, "bytes waiting in a pty without its termios"),
                          ({"extra": 1}, "unknown field 'extra'")):
        doc = json.loads(json.dumps(good))
        doc["objects"][key].update(change)
        if change.get("termios", 1) is None:
            del doc["objects"][key]["termios"]
        with pytest.raises(image.ImageError, match=words) as e:
            imageformat.validate(doc)
        assert "\n" not in str(e.value)


def test_leader_without_fd_on_its_terminal_keeps_it(case):
    """A session leader that closed every fd on its controlling terminal (its stdio sent elsewhere)
    still has it (tty_nr), and its member too: restore makes the leader take it through the slave's
    node (process "ctty_node": its master is the tree's), then forks the member."""
    state = case.roundtrip(_PTY.replace("MODE", '"no_fd"'))[-1]
    leader = next(int(c) for c in open(f"/proc/{state.pid}/task/{state.pid}/children").read().split()
                  if os.getsid(int(c)) == int(c) and ctty.tty_nr(int(c)))
    member = int(open(f"/proc/{leader}/task/{leader}/children").read().split()[0])
    for p in (leader, member):
        assert ctty.device(ctty.tty_nr(p)) == (136, 0), p
        assert not any(os.readlink(f"/proc/{p}/fd/{n}").startswith("/dev/pts/") for n in os.listdir(f"/proc/{p}/fd"))


def test_leader_whose_master_is_outside_refused_unstopped(case):
    """A session leader on a pty whose master is outside the dumped tree (its parent holds it; the
    leader alone is dumped) holding only the slave: restore would not make its terminal (it was lost
    silently before), so dump refuses before the stop, naming it and what to do."""
    pid = _pty_tree(case, "member")
    leader = _child_holding(pid, 10)
    _refused_unstopped(case, leader, r"process \d+ \(mntcr-hold\) leads its session and has a controlling terminal "
                                     r"that restore would not make again .*; the tree keeps running")


def test_shell_job_leaves_the_terminal_behind(case):
    """A job started from a shell (a member of a session led outside the dumped tree, with its
    terminal): refused before the stop, the message naming --shell-job; with --shell-job, dumped with
    a note, and restored without a controlling terminal (restore gives none it did not make)."""
    from enginecase import mntcr
    pid = _pty_tree(case, "shell")
    job = _child_holding(_child_holding(pid, 10), 11)
    assert ctty.tty_nr(job)
    _refused_unstopped(case, job, r"process \d+ \(mntcr-hold\) has the controlling terminal of a session led "
                                  r"outside the tree .* or dump with --shell-job to leave the terminal behind; "
                                  r"the tree keeps running")
    images = case.new_images_dir()
    r = mntcr("dump", "--shell-job", "-t", str(job), "-D", images, "--external", "mnt[/usr]:usr",
              "--external", "mnt[/etc]:etc")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"mntcr dump: note: process {job} \(mntcr-hold\): its controlling terminal \(of a "
                        r"session led outside the tree\) is left behind \(--shell-job\): restore gives it none\n",
                        r.stderr), r.stderr
    with open(os.path.join(images, "mntcr.json")) as f:
        assert "ctty" not in json.load(f)["processes"][0]
    restored = case.restore(images)
    assert ctty.tty_nr(restored) == 0


def _child_holding(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return next(int(c) for c in f.read().split() if os.path.exists(f"/proc/{c}/fd/{fd}"))


def test_image_member_terminal_hostile_values(case):
    """The image marks the members that have their leader's terminal; a mark restore cannot make (a
    member whose parent lacks the terminal, the root, a bad value) fails validation in one line."""
    from engine import image, imageformat
    pid = _pty_tree(case, "member")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    imageformat.validate(json.loads(json.dumps(good)))
    procs = good["processes"]
    assert [bool(p.get("ctty")) for p in procs[-3:]] == [False, False, True], procs   # (holder, leader, member)

    def no_terminal_fd(d):
        for f in d["processes"][-2]["fds"]:
            f.pop("ctty", None)
    for mutate, words in ((lambda d: d["processes"][0].update(ctty=True), r"controlling terminal cannot be made"),
                          (no_terminal_fd, r"process \d+: its controlling terminal cannot be made \(parent"),
                          (lambda d: d["processes"][-1].update(ctty="yes"), "ctty")):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        with pytest.raises(image.ImageError, match=words) as e:
            imageformat.validate(doc)
        assert "\n" not in str(e.value)


def test_member_keeps_its_terminal(case):
    """A session leader on a pty (its slave held) and a member forked after it took it: after restore
    the member still has the terminal (the snapshot compares each process's terminal; before
    engine/ctty.py its stand-in, forked before any terminal existed, had none)."""
    state = case.roundtrip(_PTY.replace("MODE", '"member"'))[-1]
    leader = _child_holding(state.pid, 10)
    member = _child_holding(leader, 10)
    for p in (leader, member):
        assert ctty.device(ctty.tty_nr(p)) == (136, 0), p


def test_image_ctty_node_hostile_values(case):
    """A leader's `ctty_node` names only its own pty's node on a devpts mount restore makes: another
    number (a host terminal on that devpts), an unknown mount or object, a bad shape fail validation
    in one line."""
    from engine import image, imageformat
    pid = _pty_tree(case, "no_fd")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    imageformat.validate(json.loads(json.dumps(good)))
    leader = next(i for i, p in enumerate(good["processes"]) if "ctty_node" in p)
    node = good["processes"][leader]["ctty_node"]
    assert node["path"].endswith("/0") and set(node) == {"mnt", "path", "obj", "ptmx"}, node
    for change, words in (({"path": node["path"][:-1] + "7"}, "not the node of its pty on a devpts mount"),
                          ({"mnt": 99999}, "unknown mount 99999"),
                          ({"obj": "pty-999"}, "is no pty of the image"),
                          ({"extra": 1}, "bad controlling terminal node"),
                          ({"path": "../0"}, "controlling terminal")):
        doc = json.loads(json.dumps(good))
        doc["processes"][leader]["ctty_node"].update(change)
        with pytest.raises(image.ImageError, match=words) as e:
            imageformat.validate(doc)
        assert "\n" not in str(e.value)


def test_snapshot_names_each_process_terminal():
    """zdtm/snapshot.py compares each process's terminal by what it is (a pty by number and whether
    the tree holds its master, /dev/console, none) and which group is in its foreground: a member
    that lost its terminal at restore shows."""
    from zdtm import snapshot

    def p(pid, comm, sid, pgid, tty_nr=0, tpgid=-1, masters=()):
        return snapshot.Proc(pid=pid, comm=comm, mounts=[], tree_text="", root="/", cwd="/", fds=[], sid=sid,
                             pgid=pgid, tty_nr=tty_nr, tpgid=tpgid, masters=frozenset(masters))
    pty3 = os.makedev(136, 3)
    procs = [p(1, "script", 1, 1, masters=[3]), p(10, "sh", 10, 10, pty3, 11), p(11, "sleep", 10, 11, pty3, 11),
             p(12, "cat", 10, 11, pty3, 11), p(13, "sleep", 13, 13), p(14, "init", 14, 14, os.makedev(5, 1), 14)]
    snapshot._jobs(procs)
    snapshot._cttys(procs)
    assert [q.ctty for q in procs] == [
        "none", "pty 3 (master in the tree) foreground=the group of cat,sleep",
        "pty 3 (master in the tree) foreground=its own group", "pty 3 (master in the tree) foreground=its own group",
        "none", "/dev/console foreground=its own group"]
    lost = [p(1, "script", 1, 1, masters=[3]), p(10, "sh", 10, 10, pty3, 11), p(11, "sleep", 10, 11),
            p(12, "cat", 10, 11, pty3, 11), p(13, "sleep", 13, 13), p(14, "init", 14, 14, os.makedev(5, 1), 14)]
    snapshot._jobs(lost)
    snapshot._cttys(lost)
    assert lost[2].ctty == "none" and "ctty: none" in lost[2].text()
    assert "ctty: pty 3 (master in the tree)" in procs[2].text()


def test_image_ctty_slave_of_another_pty_refused(case):
    """A leader's pty slave marked as its controlling terminal (`ctty`) must be the node of its own pty
    (restore made it): another number, or an unknown mount, fails validation in one line."""
    from engine import image, imageformat
    pid = _pty_tree(case, "member")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    where = next((i, j) for i, p in enumerate(good["processes"]) for j, f in enumerate(p["fds"])
                 if f.get("kind") == "pty" and f.get("ctty"))
    for change, words in (({"path": "/dev/pts/5"}, "not the node of its pty on a devpts mount"),
                          ({"mnt": 99999}, "unknown mount 99999")):
        doc = json.loads(json.dumps(good))
        doc["processes"][where[0]]["fds"][where[1]].update(change)
        with pytest.raises(image.ImageError, match=words) as e:
            imageformat.validate(doc)
        assert "\n" not in str(e.value)


CONSOLE = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts; touch /dev/console
""" + py_hold("""
import fcntl, struct, subprocess
m0 = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
m1 = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m1, 0x40045431, struct.pack("i", 0))
subprocess.run(["mount", "--bind", "/dev/pts/1", "/dev/console"], check=True)
os.close(m0)
r, w = os.pipe()
if os.fork() == 0:
    os.close(m1); os.close(r)
    os.setsid()
    c = os.open("/dev/console", os.O_RDWR)   # (a container's init on its console: its terminal)
    os.dup2(c, 10); os.close(c)
    if os.fork():
        os.write(w, b"x")   # (the member, forked after: it has the console too)
    os.close(w)
else:
    os.close(w); os.read(r, 1); os.close(r)
    os.dup2(m1, 20); os.close(m1)
""")


def test_leader_on_a_console_bound_pty_and_its_member(case):
    """A container's init on /dev/console (a pty of the tree bound there, CRIU's pty-console) leads
    its session with it as its terminal, its child a member: both keep it (the slave is the mount's
    root /1, the node the validator checks through the mount's root)."""
    state = case.roundtrip(CONSOLE)[-1]
    leader = _child_holding(state.pid, 10)
    member = _child_holding(leader, 10)
    for p in (leader, member):
        assert ctty.device(ctty.tty_nr(p)) == (136, 1), p


def test_zombie_of_a_member(case):
    """A member with the terminal whose child exited unreaped: the zombie's stand-in is forked by the
    member's, itself forked late (the zombies come after every late stand-in)."""
    state = case.roundtrip(_PTY.replace("MODE", '"zombie"'))[-1]
    leader = _child_holding(state.pid, 10)
    member = _child_holding(leader, 10)
    assert ctty.device(ctty.tty_nr(member)) == (136, 0)
    kids = open(f"/proc/{member}/task/{member}/children").read().split()
    assert len(kids) == 1 and open(f"/proc/{kids[0]}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_killed_restore_of_late_stand_ins_leaves_nothing(case, tmp_path):
    """A restore killed at any step, the late stand-ins' among them (forked once the mounts exist,
    engine/ctty.py), leaves no process, mount or stand-in behind; the one that runs to the end
    restores the tree with its terminals."""
    from test_engine_failures import _killed_restore, host_mountinfo
    from enginecase import assert_same, take, tree_hash
    from zdtm.snapshot import kill_tree
    pid = case.start(_PTY.replace("MODE", '"member"'), host_pidns=True)
    before = take(pid)
    img = case.new_images_dir()
    case.dump(pid, img)
    digest, mounts = tree_hash(img), host_mountinfo()
    problems = []
    for k in range(1, 200):
        pidfile = str(tmp_path / f"k{k}.pid")
        got = _killed_restore(img, k, pidfile, mounts, digest)
        if got is None:
            with open(pidfile) as f:
                new = int(f.read())
            case.trees.append(new)
            break
        problems += got
    else:
        raise AssertionError("restore never succeeded")
    assert k > 5, f"restore succeeded at step {k}: the fault hook did not fire"
    assert_same(before, take(new))
    kill_tree(new)
    assert not problems, problems
