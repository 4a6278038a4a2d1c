"""Hostile images against session 13's surfaces: listeners' credentials (`cred`, `cred_groups`,
`cred_gone`: engine/fds/unix_bind.py, engine/threadids.py), fds' signal owners (`async_owner`,
`async_signal`: engine/fown.py), threads and setgroups-deny groups (engine/userns_groups.py).

Each image is a real dump changed the way an attacker with write access to the image directory
would; each must be refused with exit status 2 and one line, nothing left running or mounted and
nothing outside the test touched (test_hardening_hostile.refused), or, where the image is one an
honest dump makes, restored.
"""

from __future__ import annotations

import contextlib
import errno
import ctypes
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import termios
import time

import pytest

import enginecase
from enginecase import STOP_WATCH, case, copy_image, load_manifest, mntcr, py_hold, save_manifest  # noqa: F401
from test_hardening_hostile import Host, _mutated, _victim, refused

# The root holds a listener (fd 11) with one pending connection whose client is gone and the read
# end of a pipe whose write end is closed (fd 12); its child
# unshares a user namespace (0-65535 as 100000-165535), is its root there, and holds a listener it
# made there (fd 10).
SETUP = py_hold("""
import socket, time
os.mkdir("/run/k"); os.chmod("/run/k", 0o777)
ls = socket.socket(socket.AF_UNIX); ls.bind("/run/root.sock"); ls.listen(4)
c = socket.socket(socket.AF_UNIX); c.connect("/run/root.sock"); c.close()
os.dup2(ls.fileno(), 11); ls.close()
r, w = os.pipe(); os.dup2(r, 12); os.close(r); os.close(w)
kid = os.fork()
if kid == 0:
    import ctypes, signal
    ctypes.CDLL(None).unshare(0x10000000)   # CLONE_NEWUSER
    while not os.path.exists("/run/mapped"):
        time.sleep(0.02)
    os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
    s = socket.socket(socket.AF_UNIX); s.bind("/run/k/kid.sock"); s.listen(4)
    os.dup2(s.fileno(), 10); s.close(); os.close(11); os.close(12)
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
while os.readlink(f"/proc/{kid}/ns/user") == os.readlink("/proc/self/ns/user"):
    time.sleep(0.02)
for m in ("uid_map", "gid_map"):
    with open(f"/proc/{kid}/{m}", "w") as f:
        f.write("0 100000 65536")
open("/run/mapped", "w").close()
""")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The dumped tree of SETUP."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _kid(doc) -> dict:
    return next(p for p in doc["processes"] if "userns" in p)


def _fd(p: dict, n: int) -> dict:
    return next(f for f in p["fds"] if f["fd"] == n)


def _owned(d, **listener) -> None:
    """The child's user namespace made by uid 1000 (a rootless runtime's), its listener changed."""
    d["userns"][_kid(d)["userns"]]["owner"] = 1000
    _fd(_kid(d), 10).update(listener)


@pytest.mark.parametrize("listener", [
    {"cred": [0, 0]},
    {"cred": [100000, 0]},
    {"cred": [100000, 100000], "cred_groups": [0]},
    {"cred": [100000, 100000], "cred_groups": [100000, 6]},
    {"cred": [0, 0], "cred_gone": True},
], ids=["root", "root-gid", "root-group", "disk-group", "root-gone"])
def test_listener_ids_its_rootless_namespace_lacks_are_refused(image, tmp_path, listener):
    """A listener of a process in a user namespace a non-root user made listens again with ids
    that namespace maps: restore listens while the stand-in is still in the restorer's user
    namespace, so an id it does not map (the host's root, its disk group) would be taken there,
    and SO_PEERCRED / SO_PEERGROUPS would tell the host's clients the tree's socket is root's."""
    img = _mutated(image, tmp_path, lambda d: _owned(d, **listener))
    refused(img, r"process \d+ fd 10: takes (uid|gid) \d+ at restore, which user namespace user-1, made by uid "
                 r"1000, does not map", tmp_path)




@contextlib.contextmanager
def _restored(img: str, tmp_path, subids: str | None = None):
    """Restore `img` (it must work; `subids`: see enginecase.mntcr); yields the root's pid, killed after."""
    from zdtm.snapshot import kill_tree
    pidfile = os.path.join(str(tmp_path), "ok.pid")
    r = mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--pidfile", pidfile, timeout=120,
              subids=subids)
    assert r.returncode == 0, r.stderr
    with open(pidfile) as f:
        root = int(f.read())
    try:
        yield root
    finally:
        kill_tree(root)
        os.unlink(pidfile)


def test_listener_ids_its_rootless_namespace_maps_are_kept(image, tmp_path):
    """The same namespace made by uid 1000 with the listener as dumped: restored, its clients see
    the ids it listened with (100000, the namespace's root), no more."""
    img = _mutated(image, tmp_path, lambda d: _owned(d, cred_groups=[100000, 100007]))
    with _restored(img, tmp_path, subids="1000:100000:65536\n") as root:   # (its ranges here)
        with open(f"/proc/{root}/task/{root}/children") as f:
            kid = int(f.read().split()[0])
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(f"/proc/{kid}/root/run/k/kid.sock")
            _, uid, gid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            groups = c.getsockopt(socket.SOL_SOCKET, 59, 64)   # SO_PEERGROUPS
    assert (uid, gid) == (100000, 100000)
    assert sorted(struct.unpack(f"{len(groups) // 4}I", groups)) == [100000, 100007]



def _state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("State:"))


@pytest.mark.parametrize("signum", [0, signal.SIGSTOP], ids=["SIGIO", "SIGSTOP"])
def test_signal_owner_gets_no_signal_of_restore_itself(image, tmp_path, signum):
    """The root's pipe read end (its writer closed), in O_ASYNC mode, owned by the child: restore's
    own copy of the writer, released once every process holds its fds, signalled the owner's
    stand-in mid-restore (SIGIO killed it: "peer closed the channel"; an image's SIGSTOP stopped
    it and hung the restore). Restored, the owner runs, and gets the signal when a writer goes."""
    def mutate(d):
        _fd(d["processes"][0], 12).update(flags=os.O_ASYNC, async_owner=_kid(d)["pid"],
                                          **({"async_signal": int(signum)} if signum else {}))
    img = _mutated(image, tmp_path, mutate)
    with _restored(img, tmp_path) as root:
        with open(f"/proc/{root}/task/{root}/children") as f:
            kid = int(f.read().split()[0])
        assert _state(kid) == "S"
        os.close(os.open(f"/proc/{root}/fd/12", os.O_WRONLY))   # (a writer comes and goes)
        deadline = time.monotonic() + 60
        while _state(kid) not in ("T", "Z", "X") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(kid) == ("T" if signum else "Z")   # (SIGIO kills a stand-in: it has no handler)



@pytest.mark.parametrize("field,line", [({"async_owner": 1}, r"fd 12: .*its signal owner \(F_SETOWN\) 1"),
                                        ({"async_tid": True}, r"fd 12: 'async_tid' without 'async_owner'")])
def test_external_file_signal_owner_is_a_process_of_the_image(image, tmp_path, field, line):
    """An fd on an --external file (the host's file, opened by restore) keeps its signal owner like
    every fd: one that is no process of the image (pid 1 of the host) is refused, the host file untouched."""
    def mutate(d):
        fds = d["processes"][0]["fds"]
        fds[fds.index(_fd(d["processes"][0], 12))] = {"fd": 12, "flags": 0, "pos": 0, "external": "k", **field}
    victim = os.path.join(str(tmp_path), "victim")
    os.makedirs(victim)
    with open(os.path.join(victim, "file"), "w") as f:
        f.write("victim\n")
    refused(_mutated(image, tmp_path, mutate), line, tmp_path,
            extra=("--external", f"file[k]:{victim}/file"), victim=victim)


def test_listener_with_ngroups_max_groups(image, tmp_path):
    """A listener that listened with NGROUPS_MAX (65536) supplementary groups listens with them
    again: its stand-in read its user namespace's map once for them all (once per group it took
    1.6 s a listener, minutes for a manifest of such listeners), not one more is refused."""
    groups = list(range(1000, 1000 + 65536))
    img = _mutated(image, tmp_path, lambda d: _fd(d["processes"][0], 11).update(cred_groups=groups))
    t = time.monotonic()
    with _restored(img, tmp_path) as root:
        took = time.monotonic() - t
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(f"/proc/{root}/root/run/root.sock")
            size = ctypes.c_uint(4 * 65536)
            buf = (ctypes.c_uint * 65536)()
            assert ctypes.CDLL(None).getsockopt(c.fileno(), socket.SOL_SOCKET, 59, buf, ctypes.byref(size)) == 0
    assert sorted(buf[:size.value // 4]) == groups
    assert took < 90, took   # (minutes before the fix; a loaded machine's restore takes longer)
    img = _mutated(image, tmp_path / "more", lambda d: _fd(d["processes"][0], 11).update(cred_groups=groups + [7]))
    refused(img, r"cred_groups.*at most 65536", tmp_path)


# A process that dropped to uid 1000 and made a user namespace (uid 1000's: 0 as 1000) holds a
# listener a root process listened on (its parent, exited since: cred_gone).
_ROOT_LISTENER_IN_ROOTLESS = py_hold("""
import socket, time
os.mkdir("/run/k"); os.chmod("/run/k", 0o777)
r, w = os.pipe()
a = os.fork()
if a == 0:
    ls = socket.socket(socket.AF_UNIX); ls.bind("/run/k/l.sock"); ls.listen(4)
    if os.fork():
        os._exit(0)
    import ctypes, signal
    os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
    ctypes.CDLL(None).unshare(0x10000000)   # CLONE_NEWUSER
    os.write(w, b"x")
    while not os.path.exists("/run/k/mapped"):
        time.sleep(0.02)
    os.dup2(ls.fileno(), 10); ls.close()
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
os.waitpid(a, 0)
os.read(r, 1)
me = os.getpid()
kid = next(int(c) for c in open(f"/proc/{me}/task/{me}/children").read().split()   # (the orphan is ours)
           if os.readlink(f"/proc/{c}/ns/user") != os.readlink("/proc/self/ns/user"))
for m, text in (("setgroups", "deny"), ("uid_map", "0 1000 1"), ("gid_map", "0 1000 1")):  # (as the kernel lets 1000)
    with open(f"/proc/{kid}/{m}", "w") as f:
        f.write(text)
open("/run/k/mapped", "w").close()
""")


def test_dump_refuses_a_rootless_process_listener_listened_by_root(case):
    """What the validator refuses (a listener's ids its rootless namespace does not map), dump
    refuses before the stop, naming the fd, the id and the namespace's owner."""
    from test_engine_prestop import _refused_unstopped
    _refused_unstopped(case, case.start(STOP_WATCH + _ROOT_LISTENER_IN_ROOTLESS),
                       r"process \d+ fd 10 \(socket:\[\d+\]\): a listener that listened as uid 0, which the user "
                       r"namespace uid 1000 made \(its process's\) does not map: restore gives no id that user "
                       r"lacks; not supported")


def test_more_threads_than_the_machine_can_make_are_refused_first(image, tmp_path):
    """Threads within the image's bounds (65536 a process) but more than the machine can make
    (pid_max is 32768 on a small one): restore refused before anything is made, instead of taking
    every free pid of the host (no host process could fork) before its clone failed."""
    from engine import restore
    room, _ = restore._task_room()
    doc = load_manifest(image)
    # a margin well above 10: on a loaded machine (a CI beside other jobs) hundreds of tasks end
    # between this reading and the restore's own, and the room grows by as many
    want = room + 4096
    if want > 65536 * len(doc["processes"]):
        pytest.skip(f"this machine can make {room} more tasks: more than the image's processes can list threads")
    per = -(-want // len(doc["processes"]))

    def mutate(d):
        for p in d["processes"]:
            p["threads"] = [{"comm": "t"}] * min(per, 65536)
    img = _mutated(image, tmp_path, mutate)
    with pytest.raises(restore.RestoreError, match="more than this machine can make now"):   # (before the CLI)
        restore._check_task_room(load_manifest(img))
    refused(img, r"the image makes \d+ processes and threads, more than this machine can make now \(\d+: "
                 r"kernel\.pid_max \d+, kernel\.threads-max \d+, \d+ tasks running\); refused before anything "
                 r"is made", tmp_path)


@pytest.mark.parametrize("field", [{"async_signal": 10}, {"async_owner": 0}, {"flags": os.O_PATH | os.O_ASYNC}],
                         ids=["signal", "owner", "O_ASYNC"])
def test_o_path_fd_has_no_signal_owner(image, tmp_path, field):
    """An O_PATH description has no owner, signal or O_ASYNC (fcntl refuses them; dump keeps none):
    refused by the validator, not by an fcntl failing once the tree is made."""
    def mutate(d):
        f = _fd(d["processes"][0], 0)
        f.update({"flags": os.O_PATH, **field})
        f.pop("desc", None)
        if "async_owner" in field:
            f["async_owner"] = d["processes"][0]["pid"]
    refused(_mutated(image, tmp_path, mutate), r"process \d+ fd 0: an O_PATH fd has no signal owner, signal or "
                                                r"O_ASYNC", tmp_path)


def _deny(d, groups=None, **user) -> None:
    """The child's user namespace denies setgroups (its stand-in holds its groups before it enters,
    set in the restorer's namespace: engine/userns_groups.py); its groups and the namespace changed."""
    kid = _kid(d)
    d["userns"][kid["userns"]].update(setgroups="deny", **user)
    if groups is not None:
        kid["creds"]["groups"] = groups


@pytest.mark.parametrize("mutate, why", [
    (lambda d: _deny(d, [70000]), r"process \d+: its group 70000 is not mapped in its user namespace user-1"),
    (lambda d: _deny(d, [0], owner=1000, gid_map=[[0, 0, 1], [1, 100000, 65535]]),
     r"user namespace user-1: owned by uid 1000, yet its gid_map reaches the host's id 0"),
], ids=["unmapped", "host-root-group"])
def test_setgroups_deny_groups_the_namespace_lacks_are_refused(image, tmp_path, mutate, why):
    """Groups a stand-in would set on the host before it enters a namespace that denies setgroups:
    one the namespace does not map, or the host's group 0 in a namespace a non-root user made, is
    refused before anything is made (setgroups in the restorer's namespace would take any)."""
    refused(_mutated(image, tmp_path, mutate), why, tmp_path)


# --- device nodes that are the host's: the restorer's terminal, the console ------------------------

def _with_node(d, img: str, name: str, major: int, minor: int) -> None:
    """A character node /dev/NAME in the container's /dev tmpfs, and an fd of the root on it (O_RDWR)."""
    from test_hardening_hostile import _info, _mount, _rewrite_archive
    save_manifest(img, d)
    _rewrite_archive(img, "/dev", [(_info(f"MEMBER/{name}", tarfile.CHRTYPE, mode=0o666, devmajor=major,
                                          devminor=minor), None)])
    d.clear()
    d.update(load_manifest(img))
    d["processes"][0]["fds"].append({"fd": 20, "flags": os.O_RDWR, "pos": 0, "mnt": _mount(d, "/dev")["id"],
                                     "path": f"/{name}"})
    save_manifest(img, d)


def test_tty_node_fd_is_not_the_terminal_restore_runs_in(image, tmp_path):
    """A tty node (5:0, every container's /dev/tty) with an fd on it as a plain file: restore opened
    it itself, so the tree held the terminal `mntcr restore` ran in (the root user's: its
    keystrokes, for whoever the image lets at the tree's fds). The restorer has no controlling
    terminal: the open fails, one line, nothing left; the terminal's session is untouched."""
    img = copy_image(image, tmp_path)
    _with_node(load_manifest(img), img, "tty", 5, 0)
    host = Host(img, _victim(tmp_path))
    pidfile = os.path.join(str(tmp_path), "tty.pid")
    master, slave = os.openpty()

    def ctty():   # (a session of its own, whose terminal is our pty)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    try:
        r = subprocess.run([sys.executable, "-m", "engine.cli", "restore", "-D", img, *enginecase.RESTORE_EXTERNALS,
                            "--pidfile", pidfile], preexec_fn=ctty, stdin=slave, capture_output=True, text=True,
                           timeout=120, cwd=enginecase.ENGINE_ROOT,
                           env=dict(os.environ, PYTHONPATH=enginecase.ENGINE_ROOT))
        if r.returncode == 0:
            from zdtm.snapshot import kill_tree
            with open(pidfile) as f:
                root = int(f.read())
            fd = enginecase.grab_fd(root, 20)
            held = struct.unpack("I", fcntl.ioctl(fd, 0x80045432, b"0000"))[0]   # TIOCGDEV: the tty it is
            os.close(fd)
            kill_tree(root)
            os.unlink(pidfile)
            pytest.fail(f"restored, the tree holding fd 20 on tty {os.major(held)}:{os.minor(held)} (our pty: "
                        f"{os.major(os.fstat(slave).st_rdev)}:{os.minor(os.fstat(slave).st_rdev)})")
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert re.search(r"process \d+ fd 20 \(file\): /tty on mount \d+: .*No such device or address", r.stderr), r.stderr
    host.assert_untouched(pidfile)


def test_console_node_is_refused_by_the_container_policy(image, tmp_path):
    """A console node (5:1) is the host's console (its serial line or VT), not a container's (a pty
    bound onto /dev/console): restore made it and opened the fd on it, handing the tree the host's
    console. The default device policy refuses the node; --devices all trusts it."""
    img = copy_image(image, tmp_path)
    _with_node(load_manifest(img), img, "console", 5, 1)
    refused(img, r"member 'sb-\d+/console' is a character device 5:1, which the device policy \(container\) "
                 r"refuses", tmp_path)


def _children() -> list[int]:
    me = os.getpid()
    out = []
    for tid in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="taking other ids needs root")
def test_cred_gone_child_dies_when_listen_fails():
    """A listener that listened in a process gone since listens again from a short-lived child of
    the stand-in (unix_bind.as_creds): when its listen fails (an image's socket cannot listen),
    the error comes back and the child is gone, nothing left behind."""
    def in_child():
        before = _children()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)   # (no datagram socket listens)
        from engine.fds import unix_bind
        try:
            unix_bind.as_creds({"cred": [1234, 2345], "cred_groups": [7], "cred_gone": True},
                               lambda: s.listen(5))
        except OSError as e:
            return e.errno, sorted(set(_children()) - set(before))
        return None, sorted(set(_children()) - set(before))
    from engine import forkrun
    err, left = forkrun.run(in_child)
    assert err == errno.EOPNOTSUPP and left == [], (err, left)


def test_rootless_listener_without_its_groups_is_refused(image, tmp_path):
    """A listener's `cred` without `cred_groups` (an image from before they were kept) listens
    with the stand-in's groups, the restorer's (root's) at that point: in a tree a non-root user
    made, refused (its clients would see root's groups), not guessed."""
    img = _mutated(image, tmp_path, lambda d: (_owned(d), _fd(_kid(d), 10).pop("cred_groups")))
    refused(img, r"process \d+ fd 10: takes ids at restore without the supplementary groups that go with them "
                 r"\(an older image's\), which in user namespace user-1, made by uid 1000, would be the restorer's",
            tmp_path)


def test_show_prints_no_control_character_of_the_image(image, tmp_path):
    """`mntcr show -D` on an image whose names hold an escape sequence (an OSC that retitles the
    terminal, or writes its clipboard), a newline that forges a line, or an undecodable byte:
    shown as \\xNN (\\uXXXX), never sent raw to the terminal of whoever looks at the image."""
    def mutate(d):
        _fd(d["processes"][0], 0).update(path="/nu\x1b]0;owned\x07ll\n    fd 99: forged\udcff")
        _fd(d["processes"][0], 0).pop("desc", None)
    img = _mutated(image, tmp_path, mutate)
    r = mntcr("show", "-D", img)
    assert r.returncode == 0, r.stderr
    assert not any(c in r.stdout for c in "\x1b\x07\x9b") and "fd 99" not in r.stdout.replace("\\x0a    fd 99", ""), \
        r.stdout
    assert re.search(r"fd 0: file mount \d+ /nu\\x1b\]0;owned\\x07ll\\x0a    fd 99: forged\\udcff flags=",
                     r.stdout), r.stdout


def test_error_line_prints_no_control_character_of_the_image(image, tmp_path):
    """A refusal names the image's element (a path that does not open): its escape sequence is
    shown as \\xNN in the one line on stderr, not sent to the terminal."""
    def mutate(d):
        _fd(d["processes"][0], 0).update(path="/nu\x1b]0;owned\x07ll")
        _fd(d["processes"][0], 0).pop("desc", None)
    line = refused(_mutated(image, tmp_path, mutate), r"fd 0 \(file\): /nu\\x1b\]0;owned\\x07ll on mount \d+: ",
                   tmp_path)
    assert "\x1b" not in line and "\x07" not in line, line


def test_outermost_owned_keeps_no_fd_when_its_walk_fails(monkeypatch):
    """userns.outermost_owned closes its fds on the namespaces it walked on every path: a walk that
    fails once it found an owned namespace (its parent unreadable) leaves none of ours open."""
    import subprocess
    import time
    from engine import userns
    child = subprocess.Popen(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
                              "unshare", "-U", "sleep", "30"])
    try:
        deadline = time.monotonic() + 60   # (until it runs in its own user namespace; slow when loaded)
        while True:
            try:
                if os.stat(f"/proc/{child.pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino and \
                        os.readlink(f"/proc/{child.pid}/exe").endswith("sleep"):
                    break
            except OSError:
                pass
            if child.poll() is not None:
                pytest.skip("a user namespace made by uid 1000 could not be made here")
            if time.monotonic() > deadline:
                raise enginecase.SetupError("unshare -U as uid 1000 did not reach its sleep within 60s")
            time.sleep(0.05)
        maps, owner = userns.outermost_owned(child.pid)
        assert owner == 1000, (maps, owner)   # (no map written: unshare -U alone)

        def unreadable(fd):
            raise OSError(3, "gone")
        monkeypatch.setattr(userns, "parent_fd", unreadable)
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="gone"):
            userns.outermost_owned(child.pid)
        assert sorted(os.listdir("/proc/self/fd")) == before
    finally:
        child.kill()
        child.wait()
