"""Hostile images against session 18's surface: System V IPC objects and POSIX message queues
(engine/sysvipc.py, engine/posixmq.py), ptys and controlling terminals (engine/fds/pty.py,
engine/ctty.py).

The image is a real dump of a tree in its own ipc namespace (a shared memory segment, a semaphore
set, a message queue with a message, a POSIX queue with a message) holding a pty of its own devpts
(a session leader without an fd on its terminal: `ctty_node`), changed the way an attacker with
write access to the image directory would. Each is refused with exit status 2 and one line, nothing
left running or mounted, nothing of the host touched (test_hardening_hostile.refused), or fails
validation in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import enginecase
from engine import image, imageformat
from enginecase import IPC_LIBC, case, load_manifest  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, _victim, refused
from test_hardening_images import _nodes, restore_outcome

SETUP = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
""" + enginecase.py_hold("""
import ctypes, fcntl, struct, time
""" + IPC_LIBC + """seg = ok(libc.shmget(0x1234, 4096, 0o1640))
p = ok(libc.shmat(seg, None, 0)); ctypes.memmove(p, b"kept", 4); libc.shmdt(ctypes.c_void_p(p))
s = ok(libc.semget(0x5678, 2, 0o1600)); ok(libc.semctl(s, 0, 17, (ctypes.c_ushort * 2)(3, 7)))
q = ok(libc.msgget(0x9abc, 0o1600))
buf = ctypes.create_string_buffer(struct.pack("l", 1) + b"hello")
ok(libc.msgsnd(q, buf, 5, 0))
rt = ctypes.CDLL("librt.so.1", use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
mq = rt.mq_open(b"/jobs", os.O_RDWR | os.O_CREAT, 0o600, ctypes.byref(Attr(0, 4, 64, 0)))
assert mq >= 0 and rt.mq_send(mq, b"first", 5, 0) == 0, ctypes.get_errno()
os.close(mq)
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
r, w = os.pipe()
if os.fork() == 0:
    os.close(m); os.close(r)
    os.setsid()
    os.close(os.open(f"/dev/pts/{n}", os.O_RDWR))   # (its controlling terminal, no fd on it)
    os.write(w, b"x"); os.close(w)
else:
    os.close(w)
    os.read(r, 1); os.close(r)
    time.sleep(0.2)
    os.dup2(m, 20); os.close(m)
""")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The dumped tree of SETUP."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _ipc(doc) -> dict:
    return next(iter(doc["sysvipc"].values()))


def _invalid(img: str, mutate, pattern: str) -> None:
    """The manifest of `img` changed by `mutate` fails validation in one line matching `pattern`."""
    doc = load_manifest(img)
    imageformat.validate(json.loads(json.dumps(doc)))
    mutate(doc)
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "\n" not in str(e.value) and re.search(pattern, str(e.value)), e.value


def test_image_has_what_the_tests_change(image_dir):
    """The dump holds every object the tests below change (else they would pass for nothing)."""
    doc = load_manifest(image_dir)
    objs = _ipc(doc)
    assert [len(objs.get(k, ())) for k in ("shm", "sem", "msg", "mqueue")] == [1, 1, 1, 1], objs.keys()
    assert any("ctty_node" in p for p in doc["processes"])
    assert any(f.get("kind") == "pty" and f["end"] == "master" for p in doc["processes"] for f in p["fds"])


# --- System V IPC and POSIX message queues (engine/sysvipc.py, engine/posixmq.py) ---------------

def test_segment_sizes_count_against_the_bound(image_dir, tmp_path):
    """Eight 64 MiB segments whose data is empty: the bound counted only the data an image carries,
    so restore made 512 MiB of shared memory (dump counts the segments' sizes, and refuses more than
    64 MiB). Refused by their sizes now."""
    def mutate(d):
        seg = _ipc(d)["shm"][0]
        _ipc(d)["shm"] = [dict(seg, id=i, key=0, size=64 << 20, data="") for i in range(1, 9)]
    refused(_mutated(image_dir, tmp_path, mutate), r"sysvipc: more than 64 MiB of contents", tmp_path)


def test_segment_data_longer_than_its_size_refused(image_dir):
    """A segment's data is at most its size (dump reads exactly its size)."""
    _invalid(image_dir, lambda d: _ipc(d)["shm"][0].update(size=2), r"sysvipc ipc-\d+ shm 0: bad size or data")


@pytest.mark.parametrize("kind", ["shm", "sem", "msg"])
def test_ipc_key_twice_refused(image_dir, tmp_path, kind):
    """Two objects of a kind with one key (other than IPC_PRIVATE): the second one's IPC_CREAT|IPC_EXCL
    failed once the namespace was half made ("shmget: File exists"); refused before anything is made
    now. Two private ones (key 0) are fine."""
    def mutate(d):
        objs = _ipc(d)[kind]
        objs.append(dict(objs[0], id=objs[0]["id"] + 1))
    key = load_manifest(image_dir)["sysvipc"]
    key = next(iter(key.values()))[kind][0]["key"]
    refused(_mutated(image_dir, tmp_path, mutate), rf"sysvipc ipc-\d+ {kind}: key {key} twice", tmp_path)
    doc = load_manifest(image_dir)
    objs = _ipc(doc)[kind]
    objs[0]["key"] = 0
    objs.append(dict(objs[0], id=objs[0]["id"] + 1))
    imageformat.validate(doc)


def test_posix_queues_alone_are_bounded():
    """The 64 MiB bound on contents was checked only after a System V object: an ipc namespace with
    POSIX queues alone was not bounded at all (a manifest holds ~96 MiB of them)."""
    from engine import sysvipc
    text = "QUJD" * (1 << 18)   # (768 KiB, shared by every message)

    def fail(msg):
        raise ValueError(msg)
    queues = [{"name": f"q{i}", "mode": 0o600, "uid": 0, "gid": 0, "maxmsg": 16, "msgsize": 1 << 20,
               "msgs": [[0, text]] * 16} for i in range(6)]
    sysvipc.check({"ipc-0": {"mqueue": queues[:5]}}, {"ipc-0"}, fail)   # (60 MiB: within)
    with pytest.raises(ValueError, match="more than 64 MiB of contents"):
        sysvipc.check({"ipc-0": {"mqueue": queues}}, {"ipc-0"}, fail)


@pytest.mark.parametrize("name, why", [
    ("\u00e9" * 200, "400 bytes: past NAME_MAX, mq_open failed mid-restore"),
    ("\ud800", "a surrogate that stands for no byte"),
    ("a/b", "a slash"),
    ("..", "the parent directory's name"),
    ("", "no name"),
])
def test_posix_queue_name_refused(image_dir, tmp_path, name, why):
    """A queue's name is at most 255 bytes (not characters), each one a byte of a name."""
    refused(_mutated(image_dir, tmp_path, lambda d: _ipc(d)["mqueue"][0].update(name=name)),
            r"sysvipc ipc-\d+ mqueue: bad or repeated queue name", tmp_path)


def test_posix_queue_names_of_the_same_bytes_refused(image_dir):
    """"\\udcc3\\udca9" (two undecodable bytes, as dump reads a name) and "\u00e9" are the same bytes:
    one name twice, refused (mq_open's O_EXCL failed mid-restore)."""
    def mutate(d):
        q = _ipc(d)["mqueue"]
        q[0]["name"] = "\u00e9"
        q.append(dict(q[0], name="\udcc3\udca9"))
    _invalid(image_dir, mutate, r"bad or repeated queue name")


def test_posix_queue_name_of_undecodable_bytes_restored(image_dir, tmp_path):
    """A queue whose name is no UTF-8 (dump reads it with its bytes as surrogates) is made again with
    those bytes; restore encoded the name strictly and failed ("surrogates not allowed")."""
    from engine import sysvipc
    img = _mutated(image_dir, tmp_path, lambda d: _ipc(d)["mqueue"][0].update(name="j\udcffbs"))
    pid = enginecase.EngineCase(str(tmp_path)).restore(img)
    try:
        names = [q["name"] for q in sysvipc.read(pid).get("mqueue", ())]
    finally:
        from zdtm.snapshot import kill_tree
        kill_tree(pid)
    assert names == ["j\udcffbs"], names


@pytest.mark.parametrize("change, pattern", [
    # (a message past msgmax, a queue's bytes past msgmnb: restore raises them while it makes the
    # objects, tests/test_hardening_ipcvars.py)
    (lambda o: o["mqueue"][0].update(maxmsg=65536, msgsize=16 << 20), r"POSIX message queue /jobs: mq_open: "),
    (lambda o: o["mqueue"][0].update(name="\x1b]0;x\x07q", maxmsg=65536, msgsize=16 << 20),
     r"POSIX message queue /\\x1b\]0;x\\x07q: mq_open: "),
])
def test_objects_the_kernel_refuses_fail_in_one_line(image_dir, tmp_path, change, pattern):
    """Objects within the image's bounds that the new namespace refuses (a POSIX queue past the
    restorer's RLIMIT_MSGQUEUE): the restore fails
    in one line naming the object (its name's control characters shown escaped), nothing left."""
    refused(_mutated(image_dir, tmp_path, lambda d: change(_ipc(d))), pattern, tmp_path)


# --- ptys and controlling terminals (engine/fds/pty.py, engine/ctty.py) -------------------------

@contextlib.contextmanager
def _opens(path: str):
    """A list that, after the block, holds the inotify event masks on `path` (IN_CLOSE_WRITE, 8: it
    was opened for writing; refused() reads it, IN_CLOSE_NOWRITE, to tell it is unchanged)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ino = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert ino >= 0 and libc.inotify_add_watch(ino, path.encode(), 0xfff) >= 0, ctypes.get_errno()
    seen: list[int] = []
    try:
        yield seen
        try:
            data = os.read(ino, 4096)
        except BlockingIOError:
            data = b""
        while data:   # (struct inotify_event: wd, mask, cookie, len, name)
            seen.append(int.from_bytes(data[4:8], "little"))
            data = data[16 + int.from_bytes(data[12:16], "little"):]
    finally:
        os.close(ino)


def _external_etc(doc) -> dict:
    """The external mount /etc, made read-write (the attacker's image says so; restore mounts it so)."""
    m = next(m for ns in doc["mntns"].values() for m in ns["mounts"] if m.get("external") == "etc")
    m["mount_opts"] = [o for o in m["mount_opts"] if o != "ro"]
    return m


def _master_fd(doc) -> dict:
    return next(f for p in doc["processes"] for f in p["fds"] if f.get("kind") == "pty" and f["end"] == "master")


def _ctty_node(doc) -> dict:
    return next(p["ctty_node"] for p in doc["processes"] if "ctty_node" in p)


@pytest.mark.parametrize("where", ["master", "ctty_node"])
def test_ptmx_on_an_external_mount_refused(image_dir, tmp_path, where):
    """A pty master's ptmx, or the one a leader's terminal node names, pointed at a file of an external
    mount (the user maps it to a directory of the host): restore opened that host file read-write
    (then failed: TIOCGPTN), or, for the node, failed with an internal KeyError (and opened it once
    that mount was kept). Refused by the validator now, the host file never opened."""
    victim = _victim(tmp_path)

    def mutate(d):
        m = _external_etc(d)
        (_master_fd(d) if where == "master" else _ctty_node(d))["ptmx"] = {"mnt": m["id"], "path": "/file"}
    img = _mutated(image_dir, tmp_path, mutate)
    pattern = "is no ptmx" if where == "master" else "its ptmx lies on external mount"
    with _opens(os.path.join(victim, "file")) as seen:
        refused(img, pattern, tmp_path, extra=("--external", f"mnt[etc]:{victim}"), victim=victim)
    assert 8 not in seen, f"restore opened the host's file for writing (inotify events {seen})"


def test_ptmx_named_so_on_an_external_mount_passes(image_dir):
    """A ptmx node of an external mount (the host's devpts the user gives, as dump records a master
    opened there) stays valid."""
    doc = load_manifest(image_dir)
    _master_fd(doc)["ptmx"] = {"mnt": _external_etc(doc)["id"], "path": "/pts/ptmx"}
    imageformat.validate(doc)


@pytest.mark.parametrize("item", [4, 5], ids=["ispeed", "ospeed"])
def test_pty_line_speed_no_terminal_has_refused(image_dir, tmp_path, item):
    """A pty's termios with a line speed that is no Bnnn value: tcsetattr raised termios.error (no
    OSError), and the restore ended in "restore failed: error: (22, 'Invalid argument')", naming
    nothing. Refused by the validator now."""
    def mutate(d):
        next(o for o in d["objects"].values() if o["kind"] == "pty")["termios"][item] = 12345
    refused(_mutated(image_dir, tmp_path, mutate), r"object pty-\d+: bad pty termios", tmp_path)


def test_terminal_node_of_a_process_that_leads_no_session_refused(image_dir):
    """`ctty_node` on a process of another's session: restore ignored it (the process came back
    without the terminal the image gave it). Refused by the validator."""
    def mutate(d):
        p = next(p for p in d["processes"] if "ctty_node" in p)
        p["sid"] = d["processes"][0]["sid"]
    _invalid(image_dir, mutate, r"process \d+ ctty_node: the process leads no session")


_PTMX_NODE = """
mkdir -p /run/d; mount -t tmpfs d /run/d; mknod -m 666 /run/d/ptmx c 5 2; mkdir /run/d/pts
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /run/d/pts
""" + enginecase.py_hold("""
import fcntl, struct, time
m = os.open("/run/d/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
r, w = os.pipe()
if os.fork() == 0:
    os.close(m); os.close(r)
    os.setsid()
    os.close(os.open(f"/run/d/pts/{n}", os.O_RDWR))   # (its terminal; no fd on it)
    os.write(w, b"x"); os.close(w)
else:
    os.close(w)
    os.read(r, 1); os.close(r)
    time.sleep(0.2)
    os.dup2(m, 20); os.close(m)
""")


def test_leader_without_fd_on_a_pty_opened_through_a_ptmx_node(case):
    """The tree opened its pty through a ptmx node of a tmpfs (beside the devpts: /dev/ptmx of a
    container's /dev), its session leader holds no fd on the terminal (`ctty_node`): no fd lies on
    the devpts mount, which restore closed as done, then looked up for the leader's terminal:
    "restore failed: KeyError". Restored, the leader with its terminal."""
    from engine import ctty
    states = case.roundtrip(_PTMX_NODE)   # (compares each process's terminal before and after too)
    leaders = [p.pid for p in states[-1].snap.procs if os.getsid(p.pid) == p.pid and ctty.tty_nr(p.pid)]
    assert [ctty.device(ctty.tty_nr(p))[0] for p in leaders] == [136], leaders


# --- fuzz: the fields of session 18's kinds mutated at random -----------------------------------

def _host_ipc() -> set[tuple[str, int]]:
    """(kind, key) of the System V objects and ("mqueue", name) of the POSIX queues of the host's ipc
    namespace (the queues listed on an mqueue mount of a private mount namespace of our own)."""
    out = set()
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            out.update((kind, int(line.split()[0])) for line in f.read().splitlines()[1:] if line.strip())
    ls = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                         "d=$(mktemp -d) && mount -t mqueue none $d && ls -A $d"],
                        capture_output=True, text=True, timeout=30)
    out.update(("mqueue", name) for name in ls.stdout.split())
    return out


def _surface(doc) -> list[tuple]:
    """The places of the image's System V IPC, POSIX queues, ptys and terminals (paths into it)."""
    def dicts(v):
        return v if isinstance(v, dict) else {}

    def items(v):
        return enumerate(v) if isinstance(v, list) else ()
    roots = [("sysvipc",)] if "sysvipc" in doc else []
    roots += [("objects", k) for k, o in dicts(doc.get("objects")).items() if dicts(o).get("kind") == "pty"]
    for i, p in items(doc.get("processes")):
        roots += [("processes", i, k) for k in ("ctty_node", "sid", "pgid", "tty_fg", "ctty") if k in dicts(p)]
        roots += [("processes", i, "fds", j) for j, f in items(dicts(p).get("fds"))
                  if dicts(f).get("kind") in ("pty", "ctty")]
    out = []
    for root in roots:
        out += [root + path for path, _ in _nodes(enginecase.at(doc, root))]
    return out


_VALUES = st.one_of(
    st.sampled_from([None, True, 0, -1, 1, 7, 32767, 32768, 65536, 65537, 1 << 24, (1 << 31) - 1, 1 << 31,
                     (1 << 32) - 1, 1 << 32, 1 << 63, -(1 << 63), 1.5, "", "/", "..", "a/b", "/0", "/ptmx", "/1",
                     "\udcff", "\ud800", "\x1b[2J", "\u00e9" * 200, "QUJD", "QUJD" * 3000, "!!", "mnt-0", "pty-0",
                     "pty-9", "ipc-0", "ipc-9", [], [[]], [[1, ""]], [[0, "QUJD"]] * 5, {}, {"x": 1}]),
    st.integers(), st.text(max_size=12))

_MUTATIONS = st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(["set", "set", "delete", "duplicate"]),
                                _VALUES), min_size=1, max_size=3)


@settings(max_examples=int(os.environ.get("MNTCR_S19_EXAMPLES") or 25), deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(muts=_MUTATIONS)
def test_fuzz_session_18_fields(image_dir, muts):
    """Random changes of the image's System V objects, POSIX queues, ptys, terminal nodes and sessions:
    restore refuses in one line (exit 2, no traceback) or restores (the tree is then killed); never a
    leak (test_hardening_images.restore_outcome: mounts, the image unchanged, no pid file), and never
    an object in the host's ipc namespace."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s19-") as tmp:
        work = enginecase.copy_image(image_dir, tmp)
        doc = load_manifest(work)
        enginecase.mutate(doc, muts, _surface)
        try:
            enginecase.save_manifest(work, doc)
        except (ValueError, UnicodeEncodeError):
            return   # (not representable as JSON)
        before = _host_ipc()
        restore_outcome(work, list(enginecase.RESTORE_EXTERNALS), tmp)
        assert _host_ipc() <= before, f"restore made objects in the host's ipc namespace: {_host_ipc() - before}"


def _leaves(doc) -> list[tuple]:
    """The places of `_surface` that hold an int (not a bool) or a string."""
    out = []
    for path in _surface(doc):
        node = doc
        for k in path:
            node = node[k]
        # (not each of the 32 control characters: they would take most of the draws)
        if (type(node) is int or type(node) is str) and path and "termios" not in path[-3:-1]:
            out.append(path)
    return out


@settings(max_examples=int(os.environ.get("MNTCR_S19_EXAMPLES") or 15), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(-2, 1 << 33), st.binary(max_size=64),
                                  st.booleans()), min_size=1, max_size=4))
def test_fuzz_session_18_values_in_range(image_dir, changes):
    """As above with values of the field's own type (near its old one, a power of two, random bytes in
    base64), so that more images pass the validator and reach what restore makes of them: System V
    objects and queues in the new namespace, the pty's termios and bytes, the terminal node."""
    import base64
    with tempfile.TemporaryDirectory(prefix="mntcr-s19-") as tmp:
        work = enginecase.copy_image(image_dir, tmp)
        doc = load_manifest(work)
        for choice, number, raw, near in changes:
            places = _leaves(doc)
            path = places[choice % len(places)]
            parent = doc
            for k in path[:-1]:
                parent = parent[k]
            old = parent[path[-1]]
            if type(old) is int:
                parent[path[-1]] = old + number % 3 if near else number
            else:
                parent[path[-1]] = base64.b64encode(raw).decode() if near else raw.decode("latin-1")
            note(f"{path!r}: {old!r} -> {parent[path[-1]]!r}")
        enginecase.save_manifest(work, doc)
        before = _host_ipc()
        restore_outcome(work, list(enginecase.RESTORE_EXTERNALS), tmp)
        assert _host_ipc() <= before, f"restore made objects in the host's ipc namespace: {_host_ipc() - before}"


# --- overlay layers on a detached mount (engine/fs/_layers_detached.py) -------------------------

@pytest.fixture(scope="module")
def detached_layers(tmp_path_factory):
    """The manifest of an overlay whose layers lie on a detached tmpfs (a file of it held)."""
    from test_engine_overlay_detached_layers import _needs_overlay, _setup
    _needs_overlay()
    for images in enginecase.dumped_image(tmp_path_factory, _setup(True, False), "needs root"):
        yield load_manifest(images)


def _overlay(doc) -> dict:
    return next(s for s in doc["superblocks"].values() if s["fstype"] == "overlay")


@pytest.mark.parametrize("change, pattern", [
    # the detached mount the layers lie on is the overlay itself
    (lambda d, det, mnt: det.update(sb=next(k for k, s in d["superblocks"].items() if s["fstype"] == "overlay")),
     r"its layers lie on itself \(a layer cycle\)"),
    # a layer `detached` on a mount of a namespace (no detached mount of that id)
    (lambda d, det, mnt: _overlay(d)["layers"][0].update(mnt=mnt), r"lies on detached mount \d+, which is not in"),
    (lambda d, det, mnt: det.update(root="/../x"), r"detached mount \d+: 'root' path has '\.' or '\.\.'"),
    # a detached mount under a namespace mount's id
    (lambda d, det, mnt: d["detached"].update({str(mnt): dict(det, id=mnt)}),
     r"detached mount \d+: bad or duplicate id"),
    (lambda d, det, mnt: _overlay(d)["layers"][1].update(rel="/ov2/../../u"), r"path has '\.' or '\.\.'"),
], ids=["self", "not-detached", "root-dotdot", "id-of-a-mount", "rel-dotdot"])
def test_detached_layers_hostile_values(detached_layers, change, pattern):
    """A detached layers record that points back at the overlay, at a mount that is no detached one,
    or out of the detached mount: one line from the validator, before anything is made."""
    doc = json.loads(json.dumps(detached_layers))
    imageformat.validate(json.loads(json.dumps(doc)))
    (det,) = doc["detached"].values()
    mnt = doc["mntns"][doc["processes"][0]["ns"]["mnt"]]["root"]
    change(doc, det, mnt)
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "\n" not in str(e.value) and re.search(pattern, str(e.value)), e.value


def test_objects_of_a_namespace_claimed_as_the_hosts_refused(image_dir, tmp_path):
    """The image says its processes are in the host's ipc namespace (`host_ns`) and still carries objects
    for it: restore would make them among the host's own. Refused before anything is made, and the
    host's ipc namespace has no new object."""
    def mutate(d):
        for p in d["processes"]:
            p["host_ns"] = sorted(set(p.get("host_ns") or ()) | {"ipc"})
    before = _host_ipc()
    refused(_mutated(image_dir, tmp_path, mutate), r"sysvipc of 'ipc-\d+': an ipc namespace no process is in",
            tmp_path)
    assert _host_ipc() <= before
