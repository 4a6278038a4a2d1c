"""Fds in flight (SCM_RIGHTS not received) that are the same open file description as an fd the tree
holds, or as another fd in flight: restore sends the very description again (engine/fds/unix_queue.py,
engine/fdtable.py mark_shared, engine/fdmaker.py), so an eventfd's counter, a file's or memfd's
offset and flags, an epoll's interest list, a pipe end's O_NONBLOCK stay shared. An fd in flight on a
pipe reopened as a description of its own stays one of its own, with its own flags."""

from __future__ import annotations

import fcntl
import os
import select
import socket

import pytest

from enginecase import case, copy_image, grab_fd, load_manifest, py_hold, save_manifest  # noqa: F401  (fixture)

from engine.fds import sys as fsys

# A datagram pair a(10) -> b(11); the process keeps each description sent beside its copy in flight:
# an eventfd (42), a file at offset 4 (43), a memfd at offset 3 (44), a pipe's read end (45, made
# non-blocking after the send: the copy in flight is too), a pipe's read end reopened non-blocking
# (46 keeps the blocking one, the reopened one is in flight alone), an epoll watching end b (47) and
# one watching the eventfd (50: in flight, an epoll may watch any file when a process holds it too).
KEPT = py_hold("""
import fcntl, select, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
e = os.eventfd(0, os.EFD_NONBLOCK)
f = os.open("/run/f", os.O_RDWR | os.O_CREAT, 0o600); os.write(f, b"0123456789"); os.lseek(f, 4, os.SEEK_SET)
m = os.memfd_create("pool"); os.write(m, b"abcdefgh"); os.lseek(m, 3, os.SEEK_SET)
socket.send_fds(a, [b"ef"], [e, f]); socket.send_fds(a, [b"m"], [m])
r, w = os.pipe(); os.write(w, b"piped")
socket.send_fds(a, [b"r"], [r]); os.set_blocking(r, False)
r2, w2 = os.pipe(); other = os.open(f"/proc/self/fd/{r2}", os.O_RDONLY | os.O_NONBLOCK)
socket.send_fds(a, [b"r2"], [other]); os.close(other)
ep = select.epoll(); ep.register(11, select.EPOLLIN)
socket.send_fds(a, [b"ep"], [ep.fileno()])
ep2 = select.epoll(); ep2.register(e, select.EPOLLIN)
socket.send_fds(a, [b"ep2"], [ep2.fileno()])
for n, x in ((42, e), (43, f), (44, m), (45, r), (46, r2), (47, ep.fileno()), (48, w), (49, w2), (50, ep2.fileno())):
    os.dup2(x, n)
""")


def _recv(b: socket.socket, want: bytes, n: int) -> list[int]:
    data, fds, _, _ = socket.recv_fds(b, 100, n)
    assert data == want and len(fds) == n, (data, fds)
    return fds


def _same(fd1: int, fd2: int) -> bool:
    return fsys.same_file(os.getpid(), fd1, os.getpid(), fd2)


def test_fds_in_flight_share_the_descriptions_the_process_keeps(case):
    state = case.roundtrip(KEPT, iters=2)[-1]
    kept = {n: grab_fd(state.pid, n) for n in range(42, 48)}
    got: list[int] = []
    try:
        with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
            b.setblocking(False)
            e, f = _recv(b, b"ef", 2)
            (m,) = _recv(b, b"m", 1)
            (r,) = _recv(b, b"r", 1)
            (r2,) = _recv(b, b"r2", 1)
            (ep,) = _recv(b, b"ep", 1)
            (ep2,) = _recv(b, b"ep2", 1)
            got += [e, f, m, r, r2, ep, ep2]
        kept[50] = grab_fd(state.pid, 50)
        for mine, theirs in ((e, 42), (f, 43), (m, 44), (r, 45), (ep, 47), (ep2, 50)):
            assert _same(mine, kept[theirs]), f"fd {theirs}: the fd in flight is another description"
        os.eventfd_write(kept[42], 3)
        with select.epoll.fromfd(os.dup(ep2)) as poll:
            assert len(poll.poll(0)) == 1   # (its target, the eventfd, counts 3)
        assert os.eventfd_read(e) == 3   # (one counter)
        assert os.lseek(f, 0, os.SEEK_CUR) == 4
        os.lseek(kept[43], 7, os.SEEK_SET)
        assert os.read(f, 10) == b"789"
        fcntl.fcntl(kept[43], fcntl.F_SETFL, os.O_APPEND)
        assert fcntl.fcntl(f, fcntl.F_GETFL) & os.O_APPEND
        assert os.lseek(m, 0, os.SEEK_CUR) == 3 and os.read(kept[44], 2) == b"de" and os.read(m, 1) == b"f"
        assert not os.get_blocking(r) and os.read(r, 10) == b"piped"
        # The pipe end reopened on its own: another description, non-blocking where the kept one blocks.
        assert not _same(r2, kept[46]) and not os.get_blocking(r2) and os.get_blocking(kept[46])
        with open(f"/proc/self/fdinfo/{ep}") as fi:
            assert [line.split()[1] for line in fi if line.startswith("tfd:")] == ["11"]
    finally:
        for fd in got + list(kept.values()):
            os.close(fd)


# Descriptions in flight only, each more than once: an eventfd twice in one message and again in a
# second, a memfd on two pairs' queues, a file in two messages; the sender closed its own. And a
# signalfd in flight on a stream pair (s 14 -> t 15) that the process keeps (20), and a FIFO opened
# once, kept (21) and in flight.
TWICE = py_hold("""
import ctypes, signal, socket
s, t = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
mask = ctypes.c_uint64(1 << (signal.SIGUSR2 - 1))
sfd = ctypes.CDLL(None).signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK)
s.send(b"head "); socket.send_fds(s, [b"sig"], [sfd])
os.dup2(sfd, 20); os.close(sfd); os.dup2(s.fileno(), 14); os.dup2(t.fileno(), 15)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
e = os.eventfd(0, os.EFD_NONBLOCK)
m = os.memfd_create("twice"); os.write(m, b"abcdefgh"); os.lseek(m, 2, os.SEEK_SET)
f = os.open("/run/g", os.O_RDWR | os.O_CREAT, 0o600); os.write(f, b"0123456789"); os.lseek(f, 1, os.SEEK_SET)
socket.send_fds(a, [b"ee"], [e, e]); socket.send_fds(a, [b"em"], [e, m]); socket.send_fds(c, [b"m"], [m])
socket.send_fds(a, [b"f1"], [f]); socket.send_fds(a, [b"f2"], [f])
for x in (e, m, f): os.close(x)
os.mkfifo("/run/q"); q = os.open("/run/q", os.O_RDWR | os.O_NONBLOCK)
socket.send_fds(a, [b"q"], [q]); os.dup2(q, 21)
for n, x in ((10, a), (11, b), (12, c), (13, d)): os.dup2(x.fileno(), n)
""")


def test_a_description_in_flight_twice_comes_back_once(case):
    state = case.roundtrip(TWICE)[-1]
    got: list[int] = []
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b, socket.socket(fileno=grab_fd(state.pid, 13)) as d:
        b.setblocking(False)
        d.setblocking(False)
        for sock, want, n in ((b, b"ee", 2), (b, b"em", 2), (d, b"m", 1), (b, b"f1", 1), (b, b"f2", 1), (b, b"q", 1)):
            got += _recv(sock, want, n)
    with socket.socket(fileno=grab_fd(state.pid, 15)) as t:
        t.setblocking(False)
        got += _recv(t, b"head sig", 1)
    got += [grab_fd(state.pid, 20), grab_fd(state.pid, 21)]
    try:
        e1, e2, e3, m1, m2, f1, f2, q, sig, kept, fifo = got
        assert _same(sig, kept) and _same(q, fifo)
        os.write(fifo, b"through")
        assert os.read(q, 10) == b"through" and not os.get_blocking(q)
        assert _same(e1, e2) and _same(e1, e3) and _same(m1, m2) and _same(f1, f2)
        os.eventfd_write(e1, 5)
        assert os.eventfd_read(e3) == 5
        assert os.read(m1, 2) == b"cd" and os.read(m2, 2) == b"ef"
        assert os.read(f2, 3) == b"123" and os.lseek(f1, 0, os.SEEK_CUR) == 4
    finally:
        for fd in got:
            os.close(fd)


def _inflight(doc: dict):
    """Each fd in flight of image `doc` (the dicts themselves)."""
    queues = [e.get("msgs") or () for p in doc["processes"] for e in p["fds"]]
    queues += [q for o in (doc.get("objects") or {}).values() for q in o.get("msgs") or ()]
    return [f for q in queues for m in q if isinstance(m, dict) for f in m["fds"]]


def test_a_description_in_flight_is_named_once_and_a_forged_one_refused(case, tmp_path):
    """The image: each fd in flight that shares a description names it ("desc", as the tree's fds
    do), and only the epoll's copy kept by the process registers its targets. A forged image whose
    fd in flight names a description no other fd holds, or one of another kind, is refused."""
    from engine import image
    pid = case.start(KEPT)
    img = case.new_images_dir()
    case.dump(pid, img)
    doc = load_manifest(img)
    flying = _inflight(doc)
    held = {e["desc"]: e for p in doc["processes"] for e in p["fds"] if "desc" in e}
    shared = [f for f in flying if "desc" in f]
    assert sorted(f["kind"] for f in shared) == ["epoll", "epoll", "eventfd", "file", "memfd", "pipe"], flying
    for f in shared:
        assert held[f["desc"]].get("kind", "file") == f["kind"]
    assert [f["targets"] for f in shared if f["kind"] == "epoll"] == [[], []]
    image.load(img)
    for forge in ("d-999", "eventfd"):
        bad = copy_image(img, tmp_path / forge)
        doc = load_manifest(bad)
        f = next(f for f in _inflight(doc) if f.get("kind") == ("file" if forge == "eventfd" else "memfd"))
        f["desc"] = forge if forge.startswith("d-") else next(d for d, e in held.items() if e.get("kind") == forge)
        save_manifest(bad, doc)
        with pytest.raises(image.ImageError) as err:
            image.load(bad)
        assert "\n" not in str(err.value) and "in flight" in str(err.value), err.value
        assert f["desc"] in str(err.value), err.value


def test_validator_refuses_descriptions_in_flight_it_cannot_send_again():
    """A description id in flight: well formed (d-N), held by another fd of its kind, and of an
    epoll's copies one at most registers targets (none when a process holds it): else one line."""
    from engine import image
    from engine.fds import unix_check
    ev = {"kind": "eventfd", "flags": 2, "pos": 0, "count": 1, "semaphore": False}
    ep = {"kind": "epoll", "flags": 2, "pos": 0, "targets": [{"fd": 5, "events": 1, "data": 5, "end": 1}]}

    def doc(held: list, flying: list) -> dict:
        pair = {"kind": "unix", "type": "dgram", "data": ["", ""],
                "msgs": [[{"data": "eA==", "fds": flying}], []]}
        return {"processes": [{"pid": 1, "fds": held}], "objects": {"unixpair-1": pair}}

    unix_check.check_inflight_descs(doc([{"fd": 3, **ev, "desc": "d-0"}], [{**ev, "desc": "d-0"}]))
    unix_check.check_inflight_descs(doc([], [{**ep, "desc": "d-1"}, {**ep, "targets": [], "desc": "d-1"}]))
    for held, flying, why in (
            ([], [{**ev, "desc": "d-7"}], "d-7, which no other fd holds"),
            ([{"fd": 3, "kind": "memfd", "desc": "d-0"}], [{**ev, "desc": "d-0"}], r"other kinds \(eventfd, memfd\)"),
            ([{"fd": 3, **ep, "desc": "d-0"}], [{**ep, "desc": "d-0"}], "registers targets"),
            ([], [{**ep, "desc": "d-1"}, {**ep, "desc": "d-1"}], "registers targets")):
        with pytest.raises(image.ImageError, match=why):
            unix_check.check_inflight_descs(doc(held, flying))
    for bad in ("x-1", 7, "d-"):
        with pytest.raises(image.ImageError, match="bad description id of an fd in flight"):
            unix_check._check_msgs([{"data": "eA==", "fds": [{**ev, "desc": bad}]}], "fd 3")
    with pytest.raises(image.ImageError, match="bad description id of an fd in flight"):
        unix_check._check_msgs([{"data": "eA==", "fds": [{"kind": "pair_end", "end": 0, "desc": "d-0"}]}], "x",
                               pair=True)
