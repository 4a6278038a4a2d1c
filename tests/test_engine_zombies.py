"""engine/zombies.py: a child that exited and that its parent never reaps (`sh -c 'cmd & exec app'`)
is dumped as a zombie and made again by its parent's stand-in: same parent, name, exit status,
session and process group, ids; the snapshot (zdtm/snapshot.py) compares them."""

import json
import os
import signal
import time

import pytest

from enginecase import case, py_hold, take, assert_same  # noqa: F401  (fixture)


def _zombie_children(pid: int) -> list[tuple[str, int, int, int]]:
    """(comm, status, sid, pgid) of each zombie child of `pid`."""
    out = []
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = [int(x) for x in f.read().split()]
    for k in kids:
        with open(f"/proc/{k}/stat", "rb") as f:
            data = f.read()
        fields = data.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            comm = data[data.index(b"(") + 1:data.rindex(b")")].decode()
            out.append((comm, int(fields[49]), int(fields[3]) == k, int(fields[2]) == k))
    return sorted(out)


def _wait_zombies(pid: int, n: int, of=None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(_zombie_children(of or pid)) < n:
        assert time.monotonic() < deadline, f"no {n} zombies under {of or pid}"
        time.sleep(0.02)


def _cr(case, pid: int) -> tuple[int, dict]:
    before = take(pid)
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        doc = json.load(f)
    new = case.restore(images)
    after = take(new)
    assert_same(before, after)
    return new, doc


# A child named NAME that exits with CODE (or dies of signal SIG), never reaped by the holder.
def _child(name: str, code: int = 0, sig: int = 0) -> str:
    # (not dumpable: a core signal writes no core of the test's on the host)
    die = f"ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); os.kill(os.getpid(), {sig})" if sig else f"os._exit({code})"
    return (f"if os.fork() == 0:\n"
            f"    import ctypes; ctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0)\n"
            f"    {die}\n")


@pytest.mark.parametrize("code, sig, status", [(3, 0, 3 << 8), (0, 0, 0), (0, signal.SIGTERM, signal.SIGTERM),
                                               (0, signal.SIGKILL, signal.SIGKILL),
                                               (0, signal.SIGABRT, signal.SIGABRT)])
def test_zombie_child_of_the_root(case, code, sig, status):
    """The root's child that exited (with a code, or killed by a signal) comes back a zombie of the
    restored root with its name and status; a second C/R keeps it."""
    pid = case.start(py_hold(_child("gone-child", code, sig)))
    _wait_zombies(pid, 1)
    new, doc = _cr(case, pid)
    assert [(z["comm"], z["status"]) for z in doc["zombies"]] == [("gone-child", status)]
    assert _zombie_children(new) == [("gone-child", status, False, False)]
    again, _ = _cr(case, new)
    assert _zombie_children(again) == [("gone-child", status, False, False)]


def test_core_flag_does_not_come_back(case):
    """An image whose zombie dumped core (SIGABRT | 0x80) restores it killed by SIGABRT without the
    flag: its stand-in is not dumpable, so no core file of it is written on the restoring host."""
    from enginecase import load_manifest, save_manifest
    pid = case.start(py_hold(_child("core-dumped", 0, signal.SIGABRT)))
    _wait_zombies(pid, 1)
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = load_manifest(images)
    doc["zombies"][0]["status"] = signal.SIGABRT | 0x80
    save_manifest(images, doc)
    new = case.restore(images)
    assert _zombie_children(new) == [("core-dumped", signal.SIGABRT, False, False)]


def test_zombie_of_a_parent_that_ignores_sigchld_since(case):
    """A parent that ignores SIGCHLD has its children reaped as they exit, but one that set SIG_IGN
    after a child exited keeps that zombie: its stand-in ignores SIGCHLD once the zombie exists
    (as it detaches), which reaps nothing, so it is kept too."""
    body = _child("before-ign", 1) + ("import signal, time\n"
                                      "while open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read() and "
                                      "not any(open(f'/proc/{k}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z' "
                                      "for k in open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read().split()): "
                                      "time.sleep(0.01)\n"
                                      "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n")
    pid = case.start(py_hold(body))
    _wait_zombies(pid, 1)
    new, doc = _cr(case, pid)
    assert doc["processes"][0]["sig_ignored"] & (1 << (signal.SIGCHLD - 1))
    assert _zombie_children(new) == [("before-ign", 1 << 8, False, False)]


def test_zombie_leader_of_its_own_session(case):
    """A child that called setsid() and exited: restored, its stand-in makes a session of its own
    before it dies (engine/sessions.py), so the zombie leads its session and group again."""
    pid = case.start(py_hold("if os.fork() == 0:\n    os.setsid(); os._exit(2)\n"))
    _wait_zombies(pid, 1)
    new, doc = _cr(case, pid)
    (z,) = doc["zombies"]
    assert z["sid"] == z["pgid"] == z["pid"]
    assert _zombie_children(new) == [("python3", 2 << 8, True, True)]


def test_zombie_in_a_nested_pid_namespace(case):
    """Init of a pid namespace inside the container has a zombie child: the zombie's stand-in is
    forked there by its parent's (pid namespaces nest as they did)."""
    body = ("import ctypes\n"
            "r, w = os.pipe()\n"
            "ctypes.CDLL(None).unshare(0x20000000)\n"   # CLONE_NEWPID: our next child is its init
            "if os.fork() == 0:\n"
            + "".join("    " + line + "\n" for line in _child("nested-gone", 7).splitlines()) +
            "    n = os.open('/dev/null', os.O_RDWR); [os.dup2(n, i) for i in (0, 1, 2)]\n"
            "    os.execv('/.hold/mntcr-hold', ['mntcr-hold', '100000'])\n")
    pid = case.start(py_hold(body))
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        init = int(f.read().split()[0])
    _wait_zombies(pid, 1, of=init)
    new, doc = _cr(case, pid)
    assert [(z["comm"], z["status"]) for z in doc["zombies"]] == [("nested-gone", 7 << 8)]
    with open(f"/proc/{new}/task/{new}/children") as f:
        init = int(f.read().split()[0])
    with open(f"/proc/{init}/status") as f:
        nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
    assert len(nspid) >= 3 and nspid[-1] == "1", nspid   # (host, container, nested: its init)
    assert _zombie_children(init) == [("nested-gone", 7 << 8, False, False)]


def test_zombie_init_of_its_own_pid_namespace(case):
    """A parent that unshared a pid namespace and forked: its child was that namespace's init, and
    exited (`unshare -p -f` whose program ended, its parent not waiting). Restored, the zombie's
    stand-in is again init of a pid namespace below its parent's."""
    body = ("import ctypes\n"
            "ctypes.CDLL(None).unshare(0x20000000)\n"
            + _child("ns-init-gone", 9))
    pid = case.start(py_hold(body))
    _wait_zombies(pid, 1)
    new, doc = _cr(case, pid)
    (z,) = doc["zombies"]
    assert z.get("pidns_init") is True
    # (its parent's children go to the zombie's namespace: engine/zombies.py pidns_children)
    assert next(p for p in doc["processes"] if p["pid"] == pid).get("pidns_children_zombie") == z["pid"], doc
    (zpid,) = [k for k in map(int, open(f"/proc/{new}/task/{new}/children").read().split()) if _state(k) == "Z"]
    with open(f"/proc/{zpid}/status") as f:
        nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
    with open(f"/proc/{new}/status") as f:
        parent = next(line for line in f if line.startswith("NSpid:")).split()[1:]
    assert len(nspid) == len(parent) + 1 and nspid[-1] == "1", (nspid, parent)


def test_zombie_leader_of_a_process_group(case):
    """A child that led a process group exited while another child is still in the group: the group
    keeps its zombie leader; restored, the member is again in the zombie's group."""
    body = ("import signal\n"
            "r, w = os.pipe()\n"
            "a = os.fork()\n"
            "if a == 0:\n"
            "    os.setpgid(0, 0); os.close(w); os.read(r, 1); os._exit(5)\n"
            "os.setpgid(a, a)\n"   # (here too: b must find the group whoever runs first)
            "b = os.fork()\n"
            "if b == 0:\n"
            "    os.setpgid(0, a)\n"
            "    n = os.open('/dev/null', os.O_RDWR); [os.dup2(n, i) for i in (0, 1, 2)]\n"
            "    os.execv('/.hold/mntcr-hold', ['mntcr-hold', '100000'])\n"
            "while os.getpgid(b) != a: pass\n"   # (b joined: now its leader may exit)
            "os.write(w, b'x')\n")
    pid = case.start(py_hold(body))
    _wait_zombies(pid, 1)
    new, doc = _cr(case, pid)
    (z,) = doc["zombies"]
    assert z["pgid"] == z["pid"] and z["status"] == 5 << 8
    (comm, status, _, leader), = _zombie_children(new)
    assert leader and status == 5 << 8
    with open(f"/proc/{new}/task/{new}/children") as f:
        kids = [int(x) for x in f.read().split()]
    groups = {k: os.getpgid(k) for k in kids}
    zpid = next(k for k in kids if _state(k) == "Z")
    member = next(k for k in kids if k != zpid)
    assert groups[member] == zpid, groups


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# --- the image record: one validator (engine/imageformat.py) ----------------------------------------

@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    """An image of a holder with two zombie children (exit 3, SIGTERM)."""
    import enginecase
    yield from enginecase.dumped_image(tmp_path_factory, py_hold(_child("z-exit", 3) + _child("z-term", 0, 15)),
                                       "engine tests need root")


def _load(img: str) -> dict:
    with open(os.path.join(img, "mntcr.json")) as f:
        return json.load(f)


def test_image_records_each_zombie(zimage):
    doc = _load(zimage)
    root = doc["processes"][0]
    got = sorted((z["comm"], z["status"], z["ppid"] == root["pid"], z["sid"] == root["sid"], z["pgid"] == root["pgid"],
                  "uid" in z) for z in doc["zombies"])
    assert got == [("z-exit", 3 << 8, True, True, True, False), ("z-term", 15, True, True, True, False)]
    assert all(z["pid"] not in {p["pid"] for p in doc["processes"]} for z in doc["zombies"])


@pytest.mark.parametrize("mutate, words", [
    (lambda d, z: z.update(status=0x137F), "no exit status"),                  # stopped by SIGSTOP: no death
    (lambda d, z: z.update(status=int(signal.SIGCHLD)), "no process dies"),
    (lambda d, z: z.update(status=0x10000), "no exit status"),
    (lambda d, z: z.update(status=0x0305), "both an exit code and a signal"),
    (lambda d, z: z.update(ppid=12345), "no live process of the image"),
    (lambda d, z: z.update(ppid=d["zombies"][1]["pid"]), "no live process of the image"),   # a zombie's zombie
    (lambda d, z: z.update(pid=d["processes"][0]["pid"]), "another process's"),
    (lambda d, z: z.update(fds=[]), "fds"),                                   # a zombie holds nothing
    (lambda d, z: z.update(comm="x" * 16), "comm"),
    (lambda d, z: z.update(uid=[1, 1, 1, 1]), "'uid' and 'gid' go together"),
    (lambda d, z: z.update(pgid=777, sid=778), "neither inherited nor made"),   # both leaders gone
    (lambda d, z: z.update(pidns_init=True, status=int(signal.SIGSEGV)), "die of SIGKILL only"),   # (an init)
])
def test_validator_refuses_a_bad_zombie(zimage, mutate, words):
    from engine import imageformat
    from engine.image import ImageError
    doc = _load(zimage)
    imageformat.validate(doc)   # (as dumped)
    mutate(doc, doc["zombies"][0])
    with pytest.raises(ImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        imageformat.validate(doc)


@pytest.mark.parametrize("status, ok", [(0, True), (255 << 8, True), (9, True), (6 | 0x80, True), (64, True),
                                        (19, False), (28, False), (65, False), (0x7F, False), (256 << 8, False)])
def test_status_problem(status, ok):
    from engine import zombies
    assert (zombies.status_problem(status) is None) == ok


def test_show_lists_the_zombies(zimage):
    """`mntcr show -D` names each zombie, its parent and how it died."""
    from engine import image
    doc = _load(zimage)
    text = image.render(doc)
    for z in doc["zombies"]:
        how = "exit 3" if z["comm"] == "z-exit" else "signal 15"
        assert f"  zombie {z['pid']} (ppid {z['ppid']}) {z['comm']}: {how}, " in text, text


def _uid_line(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line for line in f if line.startswith("Uid:")).split(None, 1)[1].strip()


def test_zombie_of_a_process_in_a_user_namespace(case):
    """A zombie whose parent is in a user namespace (0 -> 100000) took ids there (5): restored, its
    stand-in takes them in its parent's restored namespace (the host sees 100005 again)."""
    body = ("import ctypes\n"
            "r, w = os.pipe(); r2, w2 = os.pipe()\n"
            "c = os.fork()\n"
            "if c == 0:\n"
            "    ctypes.CDLL(None).unshare(0x10000000); os.write(w, b'x'); os.read(r2, 1)\n"   # CLONE_NEWUSER
            "    os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)\n"
            "    if os.fork() == 0:\n"
            "        os.setresuid(5, 5, 5); os._exit(6)\n"
            "    n = os.open('/dev/null', os.O_RDWR); [os.dup2(n, i) for i in (0, 1, 2)]\n"
            "    os.execv('/.hold/mntcr-hold', ['mntcr-hold', '100000'])\n"
            "os.read(r, 1)\n"
            "for f in ('uid_map', 'gid_map'):\n"
            "    with open(f'/proc/{c}/{f}', 'w') as m: m.write('0 100000 65536')\n"
            "os.write(w2, b'x')\n")
    pid = case.start(py_hold(body))
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        inner = int(f.read().split()[0])
    _wait_zombies(pid, 1, of=inner)
    zombie = next(k for k in map(int, open(f"/proc/{inner}/task/{inner}/children").read().split())
                  if _state(k) == "Z")
    assert _uid_line(zombie).split() == ["100005"] * 4
    new, doc = _cr(case, pid)
    (z,) = doc["zombies"]
    assert z["uid"] == [5] * 4 and z["gid"] == [0] * 4 and z["status"] == 6 << 8
    with open(f"/proc/{new}/task/{new}/children") as f:
        inner = int(f.read().split()[0])
    zombie = next(k for k in map(int, open(f"/proc/{inner}/task/{inner}/children").read().split())
                  if _state(k) == "Z")
    assert _uid_line(zombie).split() == ["100005"] * 4
    assert os.readlink(f"/proc/{inner}/ns/user") != os.readlink("/proc/self/ns/user")


def test_restore_killed_at_any_step_leaves_no_zombie(case, tmp_path):
    """MNTCR_FAULT_STEP=k kills the restorer at its k-th step (k = 1.. until a restore succeeds):
    each killed restore leaves no stand-in, zombie or mount behind (a zombie's stand-in goes with
    its parent's); the one that finishes has the zombie leading its group again."""
    from test_engine_failures import _killed_restore
    from enginecase import host_mountinfo, tree_hash
    name = f"zf-{os.getpid()}"   # (the zombie's name, this run's only: zombies are looked for machine-wide)
    body = ("r, w = os.pipe()\n"
            "a = os.fork()\n"
            "if a == 0:\n"
            f"    import ctypes; ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
            "    os.setpgid(0, 0); os.close(w); os.read(r, 1); os._exit(5)\n"
            "os.setpgid(a, a)\n"   # (here too: b must find the group whoever runs first)
            "b = os.fork()\n"
            "if b == 0:\n"
            "    os.setpgid(0, a)\n"
            "    n = os.open('/dev/null', os.O_RDWR); [os.dup2(n, i) for i in (0, 1, 2)]\n"
            "    os.execv('/.hold/mntcr-hold', ['mntcr-hold', '100000'])\n"
            "while os.getpgid(b) != a: pass\n"
            "os.write(w, b'x')\n")
    pid = case.start(py_hold(body))
    _wait_zombies(pid, 1)
    before = take(pid)
    img = case.new_images_dir()
    case.dump(pid, img)
    digest, mounts = tree_hash(img), host_mountinfo()
    problems, k = [], 0
    while True:
        k += 1
        assert k <= 200, "restore never succeeded"
        pidfile = os.path.join(str(tmp_path), f"k{k}.pid")
        seen = _killed_restore(img, k, pidfile, mounts, digest)
        if seen is None:
            break
        problems += seen
        # (a zombie has no command line naming the image: found by its name; the dumped one went
        # with its tree)
        # (one whose parent just died is reaped by whoever adopts it: give it a moment)
        deadline = time.monotonic() + 60
        while _named_zombies(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        problems += [f"step {k}: zombie {p} left behind" for p in _named_zombies(name)]
    with open(pidfile) as f:
        new = int(f.read())
    case.trees.append(new)
    assert k > 3 and problems == [], "\n".join(problems)
    assert_same(before, take(new))


def _named_zombies(comm: str) -> list[int]:
    """The host's zombies named `comm`."""
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:   # (any process of the machine: another test's may have a name of undecodable bytes)
            with open(f"/proc/{p}/stat", errors="surrogateescape") as f:
                data = f.read()
        except OSError:
            continue
        if data[data.index("(") + 1:data.rindex(")")] == comm and data.rsplit(")", 1)[1].split()[0] == "Z":
            out.append(int(p))
    return out


def test_zombie_in_a_pid_namespace_its_parent_joined_is_refused_unstopped(case):
    """A parent that unshared a pid namespace forked its init (alive) and then a second child, which
    exited: that zombie is in a pid namespace that is neither its parent's nor one of its own, which
    restore cannot make. Dump refuses it, and a zombie's pid namespace never changes, so it does so
    before the stop: the tree is never stopped (engine/prestop.py's rule)."""
    from enginecase import STOP_WATCH, CRError, was_stopped
    body = ("import ctypes\n"
            "ctypes.CDLL(None).unshare(0x20000000)\n"   # CLONE_NEWPID: our next child is its init
            "if os.fork() == 0:\n"
            "    n = os.open('/dev/null', os.O_RDWR); [os.dup2(n, i) for i in (0, 1, 2)]\n"
            "    os.execv('/.hold/mntcr-hold', ['mntcr-hold', '100000'])\n"
            "import time; time.sleep(0.2)\n"            # (init first: the next child is pid 2 there)
            + _child("joined-gone", 5))
    pid = case.start(STOP_WATCH + py_hold(body))
    _wait_zombies(pid, 1)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert "a pid namespace its parent joined" in str(err.value), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused the zombie"
    assert _state(pid) in "SR", "the tree was not left running"


def test_zombie_with_ids_its_parents_user_namespace_does_not_map_is_refused_unstopped(case):
    """A child exited as uid 1234 of the host, and its parent unshared a user namespace (0 -> 100000)
    since: the zombie's ids are not mapped where its stand-in would be made. Dump refuses it, and a
    zombie's ids never change, so before the stop: the tree is never stopped."""
    from enginecase import STOP_WATCH, CRError, was_stopped
    body = ("import ctypes\n"
            "r, w = os.pipe(); r2, w2 = os.pipe()\n"
            "c = os.fork()\n"
            "if c == 0:\n"
            "    if os.fork() == 0:\n"
            "        os.setresgid(1234, 1234, 1234); os.setresuid(1234, 1234, 1234); os._exit(6)\n"
            "    ctypes.CDLL(None).unshare(0x10000000); os.write(w, b'x'); os.read(r2, 1)\n"   # CLONE_NEWUSER
            "    os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)\n"
            "    n = os.open('/dev/null', os.O_RDWR); [os.dup2(n, i) for i in (0, 1, 2)]\n"
            "    os.execv('/.hold/mntcr-hold', ['mntcr-hold', '100000'])\n"
            "os.read(r, 1)\n"
            "for f in ('uid_map', 'gid_map'):\n"
            "    with open(f'/proc/{c}/{f}', 'w') as m: m.write('0 100000 65536')\n"
            "os.write(w2, b'x')\n")
    pid = case.start(STOP_WATCH + py_hold(body))
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        inner = int(f.read().split()[-1])
    _wait_zombies(pid, 1, of=inner)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert "are not mapped in its parent's user namespace" in str(err.value), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused the zombie"
    assert _state(pid) in "SR", "the tree was not left running"


def test_zombie_init_of_its_own_pid_namespace_killed(case):
    """The init of a pid namespace its parent unshared was SIGKILLed (from the parent's namespace:
    nothing inside can kill an init that has no handler). Restored, its stand-in is init of a new
    pid namespace again, and dies of SIGKILL again."""
    body = ("import ctypes, signal\n"
            "ctypes.CDLL(None).unshare(0x20000000)\n"
            "r, w = os.pipe()\n"
            "c = os.fork()\n"
            "if c == 0:\n"
            "    ctypes.CDLL(None).prctl(15, b'ns-init-killed', 0, 0, 0)\n"
            "    os.write(w, b'x')\n"
            "    while True: signal.pause()\n"
            # (killed once named: a kill before its prctl left a zombie named python3)
            "os.read(r, 1); os.close(r); os.close(w); os.kill(c, signal.SIGKILL)\n")
    pid = case.start(py_hold(body))
    _wait_zombies(pid, 1)
    new, doc = _cr(case, pid)
    (z,) = doc["zombies"]
    assert z.get("pidns_init") is True and z["status"] == signal.SIGKILL
    assert _zombie_children(new) == [("ns-init-killed", signal.SIGKILL, False, False)]
