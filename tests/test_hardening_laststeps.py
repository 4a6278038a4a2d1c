"""A stand-in's last steps (session 12's review): the executable it becomes, the ids and the
capabilities it takes once detached, after its channel's last answer.

Those steps ignored failures: become_exe's machine code went on after a failed prctl, setresuid,
setfsuid or capset, and the Python path's exceptions ended the stand-in after the restorer had
heard "ok", so a restore "succeeded" with a process that kept the restorer's identity, the
interpreter as its executable, or was missing. Now each step is checked and the stand-in's last
word (engine/lastword.py) fails the restore: exit 2, one line naming the process and the step,
nothing left running, no pid file (test_hardening_hostile.refused).
"""

from __future__ import annotations

import os
import signal
import struct

import pytest

import enginecase
from enginecase import HOLD, case, copy_image  # noqa: F401 (case: a fixture)
from test_hardening_hostile import _mutated, refused

# A tmpfs with a data file (mode 0644: no executable) and a copy of the holder; a child runs that
# copy, the root the holder itself.
SETUP = f"""
mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo data > /mnt/t/f
cp "$(readlink -f {HOLD})" /mnt/t/mntcr-hold
/mnt/t/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """The image of SETUP's tree."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _exe_on_data_file(d, which: int) -> None:
    """Process `which` (0: the root) made to become /f of the tmpfs, a file the kernel refuses as an
    executable (no x bit): its stand-in's prctl(PR_SET_MM_MAP) fails with EACCES."""
    p = d["processes"][which]
    assert "exe" in p, p
    ns = d["mntns"][p["ns"]["mnt"]]
    mnt = next(m for m in ns["mounts"] if m["mountpoint"] == "/mnt/t")
    p["exe"] = {"mnt": mnt["id"], "path": "/f"}


def test_base_image_restores(case, base_image, tmp_path):
    """Control: the unchanged copy restores (both stand-ins become their executables)."""
    assert case.restore(copy_image(base_image, tmp_path)) > 0


@pytest.mark.parametrize("which", [1, 0], ids=["child", "root"])
def test_executable_the_kernel_refuses_fails_the_restore(base_image, tmp_path, which):
    """A non-root stand-in tells before the commit, the root one after it (it keeps the privilege to
    kill the tree until then): either way the restore fails and nothing is left."""
    img = _mutated(base_image, tmp_path, lambda d: _exe_on_data_file(d, which))
    refused(img, r"process \d+: prctl\(PR_SET_MM_MAP\) making its executable: Permission denied", tmp_path)


def _last_word(fn, seen: dict | None = None, look=None) -> bytes:
    """Run `fn(report_fd)` in a forked child (a stand-in's last steps); what it told, once it closed
    the report fd; the child, which then pauses for good, is killed (its ids noted in `seen` first,
    and `look(pid)` called)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fn(w)
        finally:
            os._exit(3)
    os.close(w)
    out = b""
    try:
        while chunk := os.read(r, 4096):
            out += chunk
    finally:
        os.close(r)
        try:
            if seen is not None:
                with open(f"/proc/{pid}/status") as f:
                    seen.update(line.split(":", 1) for line in f if line.startswith(("Uid:", "Gid:")))
            if look is not None:
                look(pid)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return out


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (a stand-in's last steps take ids and capabilities)")


def test_machine_code_stops_at_the_first_failed_step_and_says_which():
    """become_exe's program on a file the kernel refuses as an executable: the word names the
    prctl and its errno; no later step ran (the ids stayed root's)."""
    _needs_root()
    from engine import lastword, mappings
    if not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")

    def steps(w):
        fd = os.open("/proc/self/status", os.O_RDONLY)   # (a regular file without an x bit)
        mappings.become_exe(fd, w, ([1000] * 4, [1000] * 4, [], True, False), None)

    seen: dict = {}
    word = _last_word(steps, seen)
    assert lastword.explain(word) == (13, "prctl(PR_SET_MM_MAP) making its executable: Permission denied"), word
    assert seen["Uid"].split() == ["0"] * 4 and seen["Gid"].split() == ["0"] * 4, seen
    index = struct.unpack("=QQ", word[:16])[0]
    nr = lastword.ENTRY.unpack(word[16:16 + lastword.ENTRY.size])[0]
    assert nr == 157 and index >= 1, (index, nr)


def test_machine_code_tells_success():
    """The same program on a real executable with ids: 16 zero bytes."""
    _needs_root()
    from engine import lastword, mappings
    if not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")

    def steps(w):
        fd = os.open("/bin/true", os.O_RDONLY)
        mappings.become_exe(fd, w, ([1000] * 4, [1000] * 4, [1000], True, False), None)

    seen: dict = {}
    assert _last_word(steps, seen) == lastword.OK
    assert seen["Uid"].split() == ["1000"] * 4 and seen["Gid"].split() == ["1000"] * 4, seen


def test_machine_code_asks_the_fs_id_again():
    """setfsuid answers the old id whether it took or not: asked again, an fs uid none of the other
    uids is (and no CAP_SETUID left after setresuid) is told, not kept silently as the euid."""
    _needs_root()
    from engine import lastword, mappings
    if not mappings.can_become_exe():
        pytest.skip("become_exe works on x86-64 only")

    def steps(w):
        fd = os.open("/bin/true", os.O_RDONLY)
        mappings.become_exe(fd, w, ([1000, 1000, 1000, 2000], [1000] * 4, [], True, False), None)

    assert lastword.explain(_last_word(steps)) == (1, "setfsuid(2000) did not take: the id stayed 1000")


def test_python_path_tells_a_failed_capset():
    """Without become_exe (no executable to become), _detach takes the ids and capabilities in
    Python: a capability the changed ids lost (no keepcaps: the permitted set was cleared) cannot be
    raised again, and the word says so instead of the stand-in ending unnoticed."""
    _needs_root()
    from engine import lastword, standin
    caps = {"inh": 0, "prm": 0x400, "eff": 0x400, "bnd": (1 << 41) - 1, "amb": 0}
    word = _last_word(lambda w: standin._detach(set(), w, None, ([1000] * 4, [1000] * 4, [], None, False), caps))
    assert lastword.explain(word) == (1, "capset: Operation not permitted"), word


_MAPS = {"uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]], "setgroups": "allow"}
CREDS = {
    "uid-not-mapped": ({"uid": [0, 70000, 0, 0], "gid": [0] * 4, "groups": []}, r"its uid 70000 is not mapped"),
    "gid-not-mapped": ({"uid": [0] * 4, "gid": [0, 0, 0, 65536], "groups": []}, r"its gid 65536 is not mapped"),
    "group-not-mapped": ({"uid": [0] * 4, "gid": [0] * 4, "groups": [5, 1 << 20]},
                         r"its group 1048576 is not mapped"),
}


@pytest.mark.parametrize("kind", sorted(CREDS))
def test_ids_its_user_namespace_does_not_map_are_refused(base_image, tmp_path, kind):
    """A process in a user namespace of the image takes its ids there, in become_exe's code once
    detached: an id the namespace does not map failed there (setresuid: EINVAL) and the stand-in
    stayed that namespace's root. The validator refuses it before anything is made."""
    creds, pattern = CREDS[kind]

    def mutate(d):
        d["userns"] = {"user-0": dict(_MAPS)}
        d["processes"][1].update(userns="user-0", creds=creds)
    refused(_mutated(base_image, tmp_path, mutate), rf"process \d+: {pattern} in its user namespace user-0", tmp_path)


# --- objects named by an fd of another kind --------------------------------------------------------

FD_SETUP = enginecase.py_hold("""
r, w = os.pipe(); os.write(w, b"x"); os.dup2(r, 7); os.dup2(w, 8)
m = os.memfd_create("m"); os.write(m, b"y"); os.dup2(m, 9)
os.dup2(os.pidfd_open(os.getpid()), 10)
""")


@pytest.fixture(scope="module")
def fd_image(tmp_path_factory):
    """The image of a process holding a pipe (fds 7, 8), a memfd (fd 9) and a pidfd of itself (fd 10)."""
    yield from enginecase.dumped_image(tmp_path_factory, FD_SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _swap_obj(d, fd: int, kind: str) -> None:
    """Fd `fd` made to name the image's object of `kind` (and every fd of its description)."""
    p = d["processes"][0]
    other = next(k for k, o in d["objects"].items() if o["kind"] == kind)
    e = next(f for f in p["fds"] if f["fd"] == fd)
    for f in p["fds"]:
        if f is e or (e.get("desc") is not None and f.get("desc") == e["desc"]):
            f["obj"] = other


OBJS = {"memfd-on-a-pipe": (9, "pipe"), "pipe-on-a-memfd": (7, "memfd")}


@pytest.mark.parametrize("kind", sorted(OBJS))
def test_fd_naming_an_object_of_another_kind_is_refused(fd_image, tmp_path, kind):
    """An fd's `obj` is an object of its own kind: the kind that makes it reads that kind's fields."""
    fd, other = OBJS[kind]
    refused(_mutated(fd_image, tmp_path, lambda d: _swap_obj(d, fd, other)),
            rf"fd \d+: object \S+ is a {other}, not what an fd of kind \w+ names", tmp_path)


def test_pidfds_of_exited_processes_are_bounded(fd_image, tmp_path):
    """Restore forks a child for each exited process pidfds name (a distinct `dead` inode): as many
    of them as an image may have fds (a million forks of the restorer) are refused, counted with the
    image's processes against their bound."""
    from engine.image import MAX_PROCESSES

    def mutate(d):
        p = d["processes"][0]
        e = next(f for f in p["fds"] if f["fd"] == 10)
        e.pop("pid")
        e["dead"] = "7000"   # (one of those below: one exited process)
        p["fds"] += [dict(e, fd=1000 + i, dead=str(7000 + i)) for i in range(MAX_PROCESSES)]
    refused(_mutated(fd_image, tmp_path, mutate), rf"1 processes and {MAX_PROCESSES} more that fds name \(restore "
            r"forks one for each\) is absurd", tmp_path)


# --- dump: an executable that is not one any more ----------------------------------------------------

@pytest.mark.parametrize("change", ["chmod -x /mnt/t/mntcr-hold", "mount -o remount,noexec /mnt/t"],
                         ids=["no-x-bit", "noexec-mount"])
def test_executable_that_is_not_one_any_more_refused_unstopped(case, change):
    """A dump that succeeds must restore: a process whose executable lost its x bits (or whose mount
    became noexec) since the exec cannot get it back as /proc/PID/exe (the kernel refuses it, and
    restore now fails on that), so dump refuses it before the stop."""
    from test_engine_prestop import _refused_unstopped
    from enginecase import STOP_WATCH
    setup = STOP_WATCH + SETUP.replace("/mnt/t/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &\n",
                                       "/mnt/t/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &\n"
                                       # the change must come after the exec, or the exec fails on it
                                       'until [ "$(readlink /proc/$!/exe)" = /mnt/t/mntcr-hold ]; do sleep 0.01; done\n'
                                       f"{change}\n")
    assert change in setup
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ executable \(/mnt/t/mntcr-hold\): not executable any more \((mode "
                                  r"0644, no x bit|on a noexec mount)\): restore could not make it the process's "
                                  r"executable again")


# --- the child that makes a user namespace for its owner -----------------------------------------------

def test_owner_child_holds_nothing_of_the_restorers():
    """The child that unshares a user namespace as the owner the image names (any host uid: the
    attacker's own) is that user's to ptrace once it is in the namespace. It held root's gid and
    groups and every fd of the restorer (its lifeline among them); now only its pipes, gid nogroup
    and no supplementary groups."""
    _needs_root()
    from engine import userns
    extra = os.open("/", os.O_PATH)   # (stands for the restorer's fds)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            userns.become_owner(4242, False, (w,))
            os.write(w, repr((os.getresuid(), os.getresgid(), os.getgroups(),
                              sorted(int(n) for n in os.listdir("/proc/self/fd")))).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(extra)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(pid, 0)
    # (the listing's own directory fd shows too: the lowest number free)
    ids, gids, groups, fds = eval(got)   # noqa: S307  (our own child's repr)
    assert ids == (4242,) * 3 and gids == (userns.NOGROUP,) * 3 and groups == [], got
    assert w in fds and len(fds) <= 2, got


@pytest.mark.parametrize("tells", ["ok", "nothing", "gone"])
def test_commit_succeeds_only_on_the_root_word(tmp_path, monkeypatch, tells):
    """After the commit, only the root's OK word makes a success: a root that ended without telling
    (it died in its last steps) or was gone before the commit fails the restore, the tree killed
    and no pid file left (both used to count as a success)."""
    import _socket
    import threading
    from engine import lastword, restore
    killed = []
    monkeypatch.setattr(restore.pidfile_mod, "kill_tree", killed.append)
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: killed.append(("group", pgid, sig)))
    ours, root = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    pidfile = tmp_path / "pid"
    pidfile.write_text("4242\n")

    def the_root():   # (what standin._await_commit and _detach do on the lifeline)
        if tells != "gone" and root.recv(1) == b"c" and tells == "ok":
            root.sendall(lastword.OK)
        root.close()

    t = threading.Thread(target=the_root)
    t.start()
    if tells == "gone":
        t.join()
    try:
        if tells == "ok":
            restore._commit(ours, 4242, str(pidfile), 1)
            assert killed == [] and pidfile.exists()
            return
        with pytest.raises(restore.RestoreError) as e:
            restore._commit(ours, 4242, str(pidfile), 1)
    finally:
        t.join()
    assert "process 1: " in str(e.value) and e.value.errno, e.value
    assert killed == [4242, ("group", 4242, signal.SIGKILL)] and not pidfile.exists()


@pytest.mark.parametrize("uid", [1000, 4294967294])
def test_fs_ids_keeping_caps_checks_like_set_fs_ids(uid):
    """kernel.fs_ids_keeping_caps (files made as an image's owner) checks its ids as set_fs_ids
    does: an id above 2^31 takes (setfs*id answers a signed int: compared unmasked it was refused)."""
    _needs_root()
    from engine import forkrun, kernel
    forkrun.run(kernel.fs_ids_keeping_caps, uid, uid)   # (raises the child's OSError)
