"""The image records of fd kinds (engine/fds/) are untrusted input too: a dumped image with every
kind validates, and each hostile change to an fd entry, an object or a mapping is refused by the
one validator (engine/imageformat.py) with one line naming the element."""

from __future__ import annotations

import copy

import pytest

from enginecase import case, load_manifest, py_hold  # noqa: F401  (fixture)
from engine import image

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d; head -c 4096 /dev/zero > /mnt/t/lib
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
""" + py_hold("""
import ctypes, fcntl, mmap, select, socket, struct
libc = ctypes.CDLL(None)
r, w = os.pipe(); os.write(w, b"x"); os.dup2(r, 10); os.dup2(w, 11)
os.dup2(os.eventfd(1), 12)
ep = select.epoll(); ep.register(12, select.EPOLLIN); os.dup2(ep.fileno(), 13)
a, b = socket.socketpair(); os.dup2(a.fileno(), 14); os.dup2(b.fileno(), 15)
i = libc.inotify_init1(0); libc.inotify_add_watch(i, b"/mnt/t/d", 0x100); os.dup2(i, 16)
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
os.dup2(m, 17)
f = open("/mnt/t/lib", "rb"); mm = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
os.dup2(os.open("/proc/self/ns/uts", os.O_RDONLY), 18)
os.dup2(os.pidfd_open(os.getpid()), 19)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
sh = libc.mmap(None, 4096, 3, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
os.dup2(os.open(f"/proc/self/map_files/{sh:x}-{sh + 4096:x}", os.O_RDWR), 20)
""")


def _fd(doc, kind):
    return next(f for p in doc["processes"] for f in p["fds"] if f.get("kind") == kind)


def _obj(doc, kind):
    return next(o for o in doc["objects"].values() if o["kind"] == kind)


MUTATIONS = {
    "unknown kind": lambda d: _fd(d, "eventfd").update(kind="bogus"),
    "unknown field": lambda d: _fd(d, "eventfd").update(colour="red"),
    "pipe without object": lambda d: _fd(d, "pipe").pop("obj"),
    "missing object": lambda d: _fd(d, "pipe").update(obj="pipe-1-2"),
    "pipe data not base64": lambda d: _obj(d, "pipe").update(data="!!"),
    "pipe of no size": lambda d: _obj(d, "pipe").update(size=0),
    "pipe data beyond its size": lambda d: _obj(d, "pipe").update(size=1, data="eHl6"),
    "epoll target fd": lambda d: _fd(d, "epoll")["targets"][0].update(fd=-1),
    "unix relative path": lambda d: _fd(d, "unix").update(path="relative/sock"),
    "unix pair end": lambda d: _fd(d, "unix").update(end=7),
    "unix messages on a stream pair": lambda d: _obj(d, "unix").update(msgs=[["eA=="], []]),
    "unix messages not a queue pair": lambda d: _obj(d, "unix").update(type="dgram", msgs=[["eA=="]]),
    "unix empty message on a stream": lambda d: _fd(d, "unix").update(type="stream", dangling=True, msgs=[""]),
    "unix fd in flight of a kind": lambda d: _obj(d, "unix").update(type="dgram", msgs=[[{"data": "", "fds": [
        {"kind": "eventfd", "flags": 0, "pos": 0, "mnt": 1, "path": "/"}]}], []]),
    "unix pipe in flight on a mount": lambda d: _obj(d, "unix").update(type="dgram", msgs=[[{"data": "", "fds": [
        {"kind": "pipe", "flags": 0, "pos": 0, "mnt": 1, "path": "/", "obj": _fd(d, "pipe")["obj"]}]}], []]),
    "unix pipe in flight without its pipe": lambda d: _obj(d, "unix").update(type="dgram", msgs=[[{"data": "", "fds": [
        {"kind": "pipe", "flags": 0, "pos": 0}]}], []]),
    "unix fd in flight path": lambda d: _obj(d, "unix").update(type="dgram", msgs=[[{"data": "", "fds": [
        {"kind": "file", "flags": 0, "pos": 0, "mnt": 1, "path": "/../x"}]}], []]),
    "unix mounts of fds in flight": lambda d: _fd(d, "unix").update(mnts=[987654]),
    "unix messages on a socket with a peer": lambda d: _fd(d, "unix").update(msgs=["eA=="]),
    "inotify watch mount": lambda d: _fd(d, "inotify")["watches"][0].update(mnt=987654),
    "inotify watch path": lambda d: _fd(d, "inotify")["watches"][0].update(path="/../etc"),
    "pty ptmx mount": lambda d: _fd(d, "pty")["ptmx"].update(mnt=987654),
    "pty master hung up": lambda d: _fd(d, "pty").update(orphan=True),
    "unix ghost id": lambda d: _fd(d, "unix").update(unlinked="../x"),
    "unix stream data on a pair end": lambda d: _fd(d, "unix").update(data="eA=="),
    "unix gone connections on no listener": lambda d: _fd(d, "unix").update(gone=[{"order": 0}]),
    "unix gone connection order": lambda d: _fd(d, "unix").update(listen=4, gone=[{"order": -1}]),
    "unix gone connection data": lambda d: _fd(d, "unix").update(listen=4, gone=[{"order": 0, "sent": ["eA=="]}]),
    "inotify watch ghost id": lambda d: _fd(d, "inotify")["watches"][0].update(ghost="x"),
    "file of a gone pid elsewhere": lambda d: next(f for f in d["processes"][0]["fds"]
                                                  if "kind" not in f).update(dead_pid=5),
    "cwd of a gone pid elsewhere": lambda d: d["processes"][0]["cwd"].update(dead_pid=1),
    "file of a live pid not under /N": lambda d: next(f for f in d["processes"][0]["fds"]
                                                      if "kind" not in f).update(live_pid=5),
    "file of a live pid and a gone one": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(
        path="/5/status", live_pid=5, dead_pid=5),
    "file read part way not a directory": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(
        type="file", dir_read=1, dir_last="61"),
    "directory read part way name not hex": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(
        type="dir", dir_read=1, dir_last="../x"),
    "directory read part way without its name": lambda d: next(f for f in d["processes"][0]["fds"]
                                                              if "kind" not in f).update(type="dir", dir_read=3),
    "directory read part way none in": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(
        type="dir", dir_read=0, dir_last="61"),
    "socket file reopened not O_PATH": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(
        type="sock", flags=0),
    "socket file from a ghost": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(
        type="sock", flags=0o10000000, ghost="g-1"),
    "file type": lambda d: next(f for f in d["processes"][0]["fds"] if "kind" not in f).update(type="fifo"),
    "unix shutdown directions": lambda d: _fd(d, "unix").update(shut=4),
    "mapping path": lambda d: d["processes"][0]["maps"][0].update(path="/a/../b"),
    "mapping mount": lambda d: d["processes"][0]["maps"][0].update(mnt=987654),
    "mapping ghost": lambda d: d["processes"][0]["maps"][0].update(ghost="g-99"),
    "mapping on an unknown detached mount": lambda d: d["processes"][0]["maps"][0].update(mnt=987654, detached=True),
    "executable on an unknown detached mount": lambda d: d["processes"][0]["exe"].update(detached=True),
    "nsfs namespace id": lambda d: _fd(d, "nsfs").update(ns="../net-1"),
    "nsfs time namespace": lambda d: _fd(d, "nsfs").update(ns="time-1"),
    "pidfd pid": lambda d: _fd(d, "pidfd").update(pid=0),
    "pidfd pid not a number": lambda d: _fd(d, "pidfd").update(pid="1"),
    "pidfd of a live and an exited process": lambda d: _fd(d, "pidfd").update(dead="123"),
    "pidfd of no process": lambda d: _fd(d, "pidfd").pop("pid"),
    "pidfd exited id": lambda d: _fd(d, "pidfd").update(dead="../1"),
    "shared memory content": lambda d: _obj(d, "shmem").update(data=7),
    "object id": lambda d: d["objects"].update({"../x": {"kind": "pipe", "size": 1, "data": ""}}),
}


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """(manifest, image dir) of a tree holding one fd of each kind."""
    import enginecase
    for img in enginecase.dumped_image(tmp_path_factory, SETUP, "needs root (namespaces)"):
        yield load_manifest(img), img


def test_dumped_image_with_every_kind_validates(dumped):
    doc, img = dumped
    kinds = {f.get("kind", "file") for p in doc["processes"] for f in p["fds"]}
    assert {"pipe", "eventfd", "epoll", "unix", "inotify", "pty", "nsfs", "pidfd", "shmem"} <= kinds
    assert doc["processes"][0]["maps"]
    image.validate(copy.deepcopy(doc), img)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_hostile_fd_records_are_refused(dumped, name):
    doc, img = dumped
    bad = copy.deepcopy(doc)
    MUTATIONS[name](bad)
    with pytest.raises(image.ImageError) as err:
        image.validate(bad, img)
    assert "\n" not in str(err.value)
