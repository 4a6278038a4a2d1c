"""engine/sessions.py: which setsid/setpgid steps remake a tree's sessions and process groups, and
the one-line refusals of those the stand-ins cannot make (checked before the stop and in images)."""

import pytest

from engine import sessions
from enginecase import STOP_WATCH, case  # noqa: F401  (fixture)
from test_engine_prestop import _refused_unstopped


def proc(pid, ppid, sid, pgid):
    return {"pid": pid, "ppid": ppid, "sid": sid, "pgid": pgid}


def test_job_control_shell():
    """`sh -i` leads its session; a pipeline job is a group led by its first process."""
    procs = [proc(1, None, 1, 1), proc(10, 1, 10, 10), proc(11, 10, 10, 11), proc(12, 10, 10, 11),
             proc(13, 11, 10, 11)]
    assert sessions.plan(procs)[:5] == ({1, 10}, {11: 11, 12: 11}, [], None, {})


def test_leader_made_after_its_member():
    """A member forked before its group's leader joins once every stand-in exists; its child, forked
    after the leader (parents first, by pid), joins at once."""
    procs = [proc(1, None, 1, 1), proc(12, 1, 1, 15), proc(15, 1, 1, 15), proc(20, 12, 1, 15)]
    setsid, now, later, problem = sessions.plan(procs)[:4]
    assert now == {15: 15, 20: 15} and later == [(12, 15)] and problem is None
    procs = [proc(1, None, 1, 1), proc(12, 1, 1, 15), proc(13, 12, 1, 15), proc(15, 1, 1, 15)]
    assert sessions.plan(procs)[1:3] == ({15: 15}, [(12, 15), (13, 15)])


def test_inherited_groups_need_no_step():
    """Children in their parent's session and group, the root's outside the tree included."""
    procs = [proc(1, None, 500, 400), proc(2, 1, 500, 400), proc(3, 2, 500, 400)]
    assert sessions.plan(procs)[:5] == (set(), {}, [], None, {})


def test_daemon_forked_twice():
    """A session whose leader is gone is made for its first process; its descendants inherit it, and a
    group of their own within it is made as usual."""
    procs = [proc(1, None, 1, 1), proc(12, 1, 7, 7), proc(13, 12, 7, 7), proc(14, 12, 7, 14)]
    assert sessions.plan(procs)[:5] == ({1}, {14: 14}, [], None, {12: "session"})


def test_group_whose_leader_is_gone():
    """`printf x | sleep | cat &` in `sh -i`, printf gone: the group is made for sleep, cat joins it
    through sleep; a later member of the session joins it the same way."""
    procs = [proc(1, None, 1, 1), proc(10, 1, 10, 10), proc(12, 10, 10, 11), proc(13, 10, 10, 11),
             proc(14, 13, 10, 14), proc(15, 14, 10, 11)]
    assert sessions.plan(procs)[:5] == ({1, 10}, {13: 12, 14: 14, 15: 12}, [], None, {12: "group"})


@pytest.mark.parametrize("procs, problem", [
    ([proc(1, None, 1, 1), proc(12, 1, 7, 7), proc(13, 1, 7, 7)], (13, "session", 7)),   # two of a gone leader
    # its parent no ancestor of the leader; its parent below the leader
    ([proc(1, None, 1, 1), proc(5, 1, 5, 5), proc(7, 1, 1, 1), proc(6, 7, 5, 5)], (6, "session", 5)),
    ([proc(1, None, 1, 1), proc(5, 1, 5, 5), proc(6, 5, 6, 6), proc(7, 6, 5, 5)], (7, "session", 5)),
    ([proc(1, None, 1, 1), proc(12, 1, 7, 7), proc(13, 12, 7, 9)], None),               # a group made in it
    ([proc(1, None, 1, 1), proc(12, 1, 7, 8)], (12, "pgrp", 8)),             # a gone leader's group and session
    ([proc(1, None, 1, 1), proc(5, 1, 5, 5), proc(6, 1, 1, 5)], (6, "pgrp", 5)),   # another session's group
])
def test_what_cannot_be_made(procs, problem):
    assert sessions.plan(procs).problem == problem


def test_foreground_group_of_a_terminal():
    """A leader's terminal may give the foreground to a group with a process of its session in the tree
    (its leader gone or not), no other."""
    procs = [proc(1, None, 1, 1), proc(10, 1, 10, 10), proc(11, 10, 10, 11), proc(13, 10, 10, 12)]
    procs[1]["tty_fg"] = 11
    assert sessions.plan(procs).problem is None and sessions.foreground_member(procs, procs[1]) == 11
    procs[1]["tty_fg"] = 12   # (`printf x | sleep` in the foreground, printf gone)
    assert sessions.plan(procs).problem is None and sessions.foreground_member(procs, procs[1]) == 13
    for fg in (1, 14):
        procs[1]["tty_fg"] = fg
        assert sessions.plan(procs).problem == (10, "foreground", fg)
    procs[1]["tty_fg"], procs[2]["tty_fg"] = 11, 11   # (only a session leader's)
    assert sessions.plan(procs).problem == (11, "foreground", 11)


def test_refusal_line_names_the_process_and_what_to_do():
    tree = [(1, None), (12, 1), (13, 1)]
    line = sessions.refusal(tree, {1: (1, 1), 12: (7, 7), 13: (7, 7)})
    assert line.startswith("process 13 (") and "session 7" in line and "its leader is gone" in line
    assert "dump a tree whose processes share a session only with their ancestors" in line
    assert line.endswith("the tree keeps running") and "\n" not in line
    line = sessions.refusal(tree, {1: (1, 1), 12: (12, 12), 13: (1, 12)})
    assert "process group 12" in line and "another session's" in line and "\n" not in line
    assert sessions.refusal(tree, {1: (1, 1), 12: (12, 12), 13: (7, 7)}) is None


def test_two_daemons_of_one_gone_leader_refused_unstopped(case):
    """Two processes in one session whose leader is gone, neither the other's ancestor: refused
    before the stop, naming the process and what to do; the tree runs on."""
    setup = STOP_WATCH + """
setsid sh -c '/.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 & /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
  touch /run/.daemon' </dev/null >/dev/null 2>&1 &
n=0; until [ -e /run/.daemon ]; do n=$((n + 1)); [ $n -lt 200 ] || exit 1; sleep 0.05; done
hold
"""
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ \(mntcr-hold\) is in session \d+, which it can neither inherit from "
                                  r"its parent nor make: its leader is gone and another process of the tree, not its "
                                  r"ancestor, is in it too, .*; the tree keeps running")


SESSIONS_SETUP = """
setsid sh -c '/.hold/mntcr-hold 100000 & exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
python3 -c '
import os
os.setpgid(0, 0)
if os.fork() == 0:
    os.setpgid(0, os.getppid())
    os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
' </dev/null >/dev/null 2>&1 &
python3 -c '
import ctypes, os
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)   # (a subreaper: the daemon stays in the tree with a host pid namespace)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
    os._exit(0)
os.wait()
os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
' </dev/null >/dev/null 2>&1 &
hold
"""


def test_image_sessions_and_hostile_values(case):
    """The image names each process's session and group; a session or group restore cannot make
    (or a bad value) fails validation with one line."""
    import json
    import os
    from engine import image, imageformat
    pid = case.start(SESSIONS_SETUP)
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    procs = good["processes"]
    assert all("sid" in p and "pgid" in p for p in procs)
    assert sum(p["sid"] == p["pid"] for p in procs) == 2, procs        # the holder and setsid's sh
    assert sum(p["pgid"] == p["pid"] for p in procs) == 3, procs       # ... and python3's group
    assert sum(p["sid"] not in {q["pid"] for q in procs} for p in procs) == 1, procs   # the daemon
    imageformat.validate(json.loads(json.dumps(good)))
    other = procs[1]["pid"]   # (a child of the root leading its session: no ancestor of the daemon)
    for mutate, words in ((lambda p: p.update(sid=other), rf"session {other} can be neither inherited nor made"),
                          (lambda p: p.update(pgid=procs[0]["pid"]), "process group \\d+ can be neither inherited nor made"),
                          (lambda p: p.update(tty_fg=p["pid"]), "terminal's foreground group"),
                          (lambda p: p.update(sid=-1), "sid"), (lambda p: p.update(pgid="1"), "pgid")):
        doc = json.loads(json.dumps(good))
        mutate(next(p for p in doc["processes"] if p["sid"] not in {q["pid"] for q in procs}))   # the daemon
        with pytest.raises(image.ImageError, match=words) as e:
            imageformat.validate(doc)
        assert "\n" not in str(e.value)


def test_killed_restore_kills_stand_ins_of_other_sessions(case, tmp_path):
    """A root stand-in that is not init of its pid namespace kills, when the restore does not commit,
    the stand-ins that left its process group (other sessions and groups: its killpg misses them)."""
    from test_engine_failures import _killed_restore, host_mountinfo
    from enginecase import assert_same, take, tree_hash
    from zdtm.snapshot import kill_tree
    pid = case.start(SESSIONS_SETUP, host_pidns=True)
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


def test_dumb_init_setsid_orphan_is_adopted():
    """dumb-init's setsid mode: the holder (1) runs dumb-init (10), whose child shell (20) leads a
    session; the shell's orphan (30, and its child 31) went to the holder. Its stand-in is forked in
    the shell's session and adopted by the holder's, after the shell's (listed before it here)."""
    procs = [proc(1, None, 1, 1), proc(30, 1, 20, 20), proc(31, 30, 20, 20), proc(10, 1, 1, 1), proc(20, 10, 20, 20)]
    plan = sessions.plan(procs)
    assert plan.problem is None and plan.adopt == {30: 20} and plan.setsid == {1, 20}
    assert plan.order == [1, 10, 20, 30, 31] and plan.now == {} and plan.orphans == {}
    # Siblings keep their order (restored pids keep it, as the snapshot compares): one after the
    # orphan waits for it, unless the orphan's leader lies below it (then its place is dropped).
    procs2 = [proc(1, None, 1, 1), proc(10, 1, 1, 1), proc(30, 1, 20, 20), proc(40, 1, 1, 1), proc(20, 10, 20, 20)]
    assert sessions.plan(procs2).order == [1, 10, 20, 30, 40]
    # (its own group within the shell's session, made as usual)
    procs[2]["pgid"] = 31
    assert sessions.plan(procs).now == {31: 31}


@pytest.mark.parametrize("change", [
    lambda ps: ps[1].update(ns={"pid": "pid-2"}),   # another pid namespace than the holder's and the shell's
    lambda ps: ps[1].update(userns="user-1"),        # another user namespace
    lambda ps: ps[1].update(status=0),               # a zombie (made by its parent's stand-in alone)
    lambda ps: ps[3].update(status=0),               # a zombie leader (it forks nothing)
])
def test_adoption_needs_one_pid_and_user_namespace_and_a_living_process(change):
    procs = [proc(1, None, 1, 1), proc(30, 1, 20, 20), proc(10, 1, 1, 1), proc(20, 10, 20, 20)]
    for p in procs:
        p["ns"] = {"pid": "pid-1"}
    assert sessions.plan(procs).adopt == {30: 20}
    change(procs)
    assert sessions.plan(procs).problem == (30, "session", 20)


DUMB_INIT_SETSID = """
python3 -c '
import os
if os.fork() == 0:          # the session leader dumb-init forks (its shell)
    os.setsid()
    if os.fork() == 0:      # a subshell whose child outlives it
        if os.fork() == 0:
            os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
        os._exit(0)
    os.wait()
    open("/run/.orphaned", "w").close()
    os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])   # dumb-init
' </dev/null >/dev/null 2>&1 &
wait_for /run/.orphaned
hold
"""


def test_orphan_in_the_session_of_a_living_non_ancestor_restored(case):
    """dumb-init's setsid mode: the orphan of the shell's subshell went to the holder (pid 1), in the
    shell's session, which the holder is not in. It was refused; its stand-in is now forked in the
    shell's session and adopted by the holder's, and the snapshot's sessions and tree compare."""
    from enginecase import take, assert_same
    from zdtm import snapshot
    pid = case.start(DUMB_INIT_SETSID)

    def layout(root):
        ids = {p: sessions.read(p) for p in snapshot.tree_pids(root)}
        ppid = {p: int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) for p in ids}
        leader = next(p for p in ids if ids[p][0] == p and p != root)
        orphan = next(p for p in ids if ids[p][0] == leader and p != leader)
        return ppid[orphan] == root and ppid[leader] != root, ids[orphan] == (leader, leader)

    assert layout(pid) == (True, True)
    before = take(pid)
    new = case.cr(pid)
    assert layout(new) == (True, True)
    assert_same(before, take(new))
