"""Random process trees holding a random mix of fds (tests/test_random_fdtrees.py): from a seed, 1-4
processes (forked after everything is opened, so they share open file descriptions), each holding
some ends of the mix at their numbers, some dup'ed to odd numbers, some close-on-exec. The mix:
pipes and FIFOs with data queued (some full), socketpairs (stream, dgram, seqpacket) with records
queued both ways, some carrying fds of the mix (SCM_RIGHTS) and some ends shut down, named and
abstract unix listeners with pending connections, connected unix datagram sockets, files at a
position (O_APPEND, O_NONBLOCK, POSIX and OFD locks), eventfd, timerfd, signalfd, epoll (targets
from the mix), inotify (events queued), sealed memfds, a pty pair with input queued, and in a
network namespace of the tree's own TCP (listener with pending connections, an established pair
with data queued both ways, a half shut down) and UDP, with SO_* options set.

A tree is a JSON-able dict: "procs" (each with its "parent", None for the root), "objs" (each a
dict with "kind", its parameters and "ends": role -> home fd number) and "holds" (per process,
[obj index, role, fd number, cloexec] rows). The body (run by py_hold) builds every object in the
root with each end at its home number, queues what the object says, forks the processes, and each
one keeps only what it holds (and marker fd MARK + its index, to be found after a restore).
`queues(tree)` says what each queue must give when drained: the test compares that with what the
restored tree's fds give.
"""

from __future__ import annotations

import json
import random
import string

MARK = 1010          # process i holds /dev/null at MARK + i
KINDS = ("pipe", "fifo", "pair", "ulisten", "udgram", "file", "eventfd", "timerfd", "signalfd",
         "epoll", "inotify", "memfd", "pty", "tcp", "udp")
_SOCK = {"stream": 1, "dgram": 2, "seqpacket": 5}


def _text(rnd: random.Random, tag: str, most: int = 40) -> str:
    return tag + ":" + "".join(rnd.choices(string.ascii_letters, k=rnd.randrange(1, most)))


def make(seed: int) -> dict:
    """The tree of `seed` (deterministic): 1-4 processes, 2-7 objects."""
    rnd = random.Random(f"fdtree-{seed}")
    procs = [{"parent": None}] + [{"parent": None} for _ in range(rnd.choice((0, 0, 1, 1, 2, 3)))]
    for i, p in enumerate(procs[1:], 1):
        p["parent"] = rnd.randrange(i)
    tree = {"procs": procs, "objs": [], "holds": [[] for _ in procs]}
    home = iter(range(100, 500))
    for n in range(rnd.randrange(2, 8)):
        kind = rnd.choice(KINDS)
        if kind == "pty" and any(o["kind"] == "pty" for o in tree["objs"]):
            kind = "pipe"
        obj = globals()["_make_" + kind](rnd, n, tree["objs"])
        obj["kind"] = kind
        obj["ends"] = {role: next(home) for role in obj["ends"]}
        tree["objs"].append(obj)
    spare = rnd.sample(range(500, 1000), 60)
    for o, obj in enumerate(tree["objs"]):
        for role, num in obj["ends"].items():
            if rnd.random() < 0.1 and obj["kind"] not in ("file", "memfd", "eventfd", "epoll"):
                continue   # (held by nobody: closed, or only in flight)
            who = rnd.sample(range(len(procs)), k=rnd.randint(1, len(procs)))
            for p in who:
                at = spare.pop() if rnd.random() < 0.25 else num
                tree["holds"][p].append([o, role, at, rnd.random() < 0.2])
                if rnd.random() < 0.1:   # (and a second number)
                    tree["holds"][p].append([o, role, spare.pop(), rnd.random() < 0.5])
    return tree


def _earlier(rnd: random.Random, objs: list, most: int) -> list:
    """Up to `most` [obj, role] ends of objects made before (to send or to watch)."""
    ends = [[o, r] for o, obj in enumerate(objs) for r in obj["ends"]]
    return rnd.sample(ends, k=min(len(ends), rnd.randint(0, most)))


def _make_pipe(rnd, n, objs):
    if rnd.random() < 0.3:
        return {"ends": ["r", "w"], "full": True, "data": "", "nonblock": rnd.random() < 0.5}
    return {"ends": ["r", "w"], "full": False, "data": "".join(_text(rnd, f"p{n}.{k}") for k in range(rnd.randint(0, 3))),
            "nonblock": rnd.random() < 0.3}


def _make_fifo(rnd, n, objs):
    rdwr = rnd.random() < 0.3
    return {"ends": ["rw"] if rdwr else ["r", "w"], "rdwr": rdwr,
            "data": "".join(_text(rnd, f"f{n}.{k}") for k in range(rnd.randint(0, 3)))}


def _opts(rnd, unix: bool = True) -> list:
    """SO_* options to set on a socket: [level, name, value] (SO_PASSCRED on unix sockets only)."""
    pick = [[1, 7, rnd.choice((4608, 16384, 65536))], [1, 8, rnd.choice((4608, 32768))],   # SO_SNDBUF, SO_RCVBUF
            [1, 16, 1], [1, 9, 1], [1, 12, rnd.randint(1, 6)], [1, 18, rnd.randint(2, 9)]]  # PASSCRED, KEEPALIVE, PRIORITY, RCVLOWAT
    pick = pick if unix else [p for p in pick if p[1] != 16]
    return rnd.sample(pick, k=rnd.randint(0, 2))


def _make_pair(rnd, n, objs):
    typ = rnd.choice(list(_SOCK))
    msgs = []
    for k in range(rnd.randint(0, 4)):
        rights = _earlier(rnd, objs, 2) if rnd.random() < 0.4 else []
        msgs.append([rnd.choice("ab"), _text(rnd, f"s{n}.{k}"), rights])
    shut = [rnd.choice("ab"), rnd.choice((0, 1, 2))] if typ != "dgram" and rnd.random() < 0.3 else None
    return {"ends": ["a", "b"], "type": typ, "msgs": msgs, "shut": shut,
            "opts": {"a": _opts(rnd), "b": _opts(rnd)}}


def _make_ulisten(rnd, n, objs):
    k = rnd.randint(0, 3)
    return {"ends": ["l"] + [f"c{i}" for i in range(k)], "type": rnd.choice(("stream", "seqpacket")),
            "name": rnd.choice((f"/run/sock{n}", f"\0fdhunt-{n}")),
            "data": [_text(rnd, f"u{n}.{i}") if rnd.random() < 0.6 else "" for i in range(k)]}


def _make_udgram(rnd, n, objs):
    return {"ends": ["s", "c"], "name": rnd.choice((f"/run/dgram{n}", f"\0fdhunt-d{n}")),
            "msgs": [_text(rnd, f"d{n}.{k}") for k in range(rnd.randint(0, 4))]}


def _make_file(rnd, n, objs):
    return {"ends": ["f"], "mode": rnd.choice(("r", "rw", "wa", "ra")), "size": rnd.randint(0, 300),
            "pos": rnd.randint(0, 300), "nonblock": rnd.random() < 0.3,
            "lock": rnd.choice((None, None, "posix", "ofd", "flock")), "path": f"/run/file{n}"}


def _make_eventfd(rnd, n, objs):
    return {"ends": ["e"], "value": rnd.randint(0, 5), "flags": rnd.choice((0, 1, 0o4000, 1 | 0o4000))}


def _make_timerfd(rnd, n, objs):
    return {"ends": ["t"], "armed": rnd.random() < 0.6, "clock": rnd.choice((0, 1))}


def _make_signalfd(rnd, n, objs):
    return {"ends": ["s"], "signals": rnd.sample((10, 12, 34, 35), k=rnd.randint(1, 3))}


def _make_epoll(rnd, n, objs):
    return {"ends": ["e"], "targets": [[o, r, rnd.choice((1, 4, 5))] for o, r in _earlier(rnd, objs, 3)
                                       if objs[o]["kind"] not in ("file", "epoll", "memfd")]}


def _make_inotify(rnd, n, objs):
    return {"ends": ["i"], "dir": f"/run/ino{n}", "files": [f"n{k}" for k in range(rnd.choice((0, 0, 0, 1, 2)))]}


def _make_memfd(rnd, n, objs):
    return {"ends": ["m"], "size": rnd.randint(0, 5000), "pos": rnd.randint(0, 100),
            "seals": rnd.choice((0, 1, 2 | 4, 8, 1 | 2 | 4 | 8))}


def _make_pty(rnd, n, objs):
    return {"ends": ["m", "s"], "input": "".join(_text(rnd, f"t{n}.{k}", 20) + "\n" for k in range(rnd.randint(0, 2)))}


def _make_tcp(rnd, n, objs):
    k = rnd.randint(0, 2)
    return {"ends": ["l", "c", "a"] + [f"p{i}" for i in range(k)], "port": 7000 + n,
            "pending": [_text(rnd, f"q{n}.{i}") if rnd.random() < 0.6 else "" for i in range(k)],
            "c2a": _text(rnd, f"c{n}") if rnd.random() < 0.7 else "", "a2c": _text(rnd, f"a{n}") if rnd.random() < 0.7 else "",
            "shut": rnd.choice((None, None, "c", "a")), "nodelay": rnd.random() < 0.4,
            "opts": {"c": _opts(rnd, False), "a": _opts(rnd, False)}}


def _make_udp(rnd, n, objs):
    return {"ends": ["s", "c"], "port": 7500 + n, "msgs": [_text(rnd, f"g{n}.{k}") for k in range(rnd.randint(0, 3))]}


def uses(tree: dict, kind: str) -> bool:
    """Whether the tree has an object of `kind`."""
    return any(o["kind"] == kind for o in tree["objs"])


def holders(tree: dict, o: int, role: str) -> list[tuple[int, int]]:
    """(process index, fd number) of every holder of end `role` of object `o`."""
    return [(p, num) for p, rows in enumerate(tree["holds"]) for oo, r, num, _ in rows if (oo, r) == (o, role)]


def in_flight(tree: dict, o: int, role: str) -> bool:
    """Whether end `role` of object `o` is sent in some message of the mix."""
    return any([o, role] in m[2] for obj in tree["objs"] if obj["kind"] == "pair" for m in obj["msgs"])


def queues(tree: dict) -> list[dict]:
    """What each queue held by some process must give, drained after restore: dicts with "obj",
    "role" (the end to read), "how" (bytes, records, accept, eventfd, inotify), "want" and, for a
    stream whose writer's fate is known, "eof"."""
    out = []
    for o, obj in enumerate(tree["objs"]):
        out += globals().get("_q_" + obj["kind"], lambda *_: [])(tree, o, obj)
    return [q for q in out if holders(tree, q["obj"], q["role"])]


def _gone(tree: dict, o: int, role: str) -> bool | None:
    """True: the end is closed for good; False: someone holds it; None: only in flight."""
    if holders(tree, o, role):
        return False
    return None if in_flight(tree, o, role) else True


def _q_pipe(tree, o, obj):
    want = "\xff" * 65536 if obj["full"] else obj["data"]
    return [{"obj": o, "role": "r", "how": "bytes", "want": want, "eof": _gone(tree, o, "w")}]


def _q_fifo(tree, o, obj):
    if obj["rdwr"]:
        return [{"obj": o, "role": "rw", "how": "bytes", "want": obj["data"], "eof": False}]
    return [{"obj": o, "role": "r", "how": "bytes", "want": obj["data"], "eof": _gone(tree, o, "w")}]


def _q_pair(tree, o, obj):
    out = []
    for rx, tx in (("a", "b"), ("b", "a")):
        recs = [[m[1], m[2]] for m in obj["msgs"] if m[0] == tx]
        shut = obj["shut"]   # (SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2: a reader's RD or its writer's WR ends its stream)
        shut_here = shut and ((shut[0] == tx and shut[1] in (1, 2)) or (shut[0] == rx and shut[1] in (0, 2)))
        eof = True if shut_here else _gone(tree, o, tx)
        if obj["type"] == "dgram":
            eof = False
        out.append({"obj": o, "role": rx, "how": "stream" if obj["type"] == "stream" else "records",
                    "want": recs, "eof": eof})
    return out


def _q_ulisten(tree, o, obj):
    return [{"obj": o, "role": "l", "how": "accept", "want": obj["data"], "type": obj["type"]}]


def _q_udgram(tree, o, obj):
    return [{"obj": o, "role": "s", "how": "records", "want": [[m, []] for m in obj["msgs"]], "eof": False}]


def _q_eventfd(tree, o, obj):
    if not obj["value"]:
        return []
    return [{"obj": o, "role": "e", "how": "eventfd", "want": 1 if obj["flags"] & 1 else obj["value"]}]


def _q_inotify(tree, o, obj):
    return [{"obj": o, "role": "i", "how": "inotify", "want": obj["files"]}]


def _q_pty(tree, o, obj):
    # (a slave whose master is closed is hung up: it reads end of file, its input is gone)
    want = "" if _gone(tree, o, "m") else obj["input"]
    return [{"obj": o, "role": "s", "how": "bytes", "want": want, "eof": False}]


def _q_tcp(tree, o, obj):
    out = [{"obj": o, "role": "l", "how": "accept", "want": obj["pending"], "type": "tcp"}]
    for rx, tx, key in (("a", "c", "c2a"), ("c", "a", "a2c")):
        eof = True if obj["shut"] == tx else (False if _gone(tree, o, tx) is False else None)
        out.append({"obj": o, "role": rx, "how": "stream", "want": [[obj[key], []]] if obj[key] else [], "eof": eof})
    return out


def _q_udp(tree, o, obj):
    return [{"obj": o, "role": "s", "how": "records", "want": [[m, []] for m in obj["msgs"]], "eof": False}]


def describe(tree: dict) -> str:
    """The tree as lines, for a failure's message."""
    lines = [f"process {i}: parent {p['parent']}, holds " + " ".join(
        f"{o}.{r}@{n}{'e' if ce else ''}" for o, r, n, ce in tree["holds"][i]) for i, p in enumerate(tree["procs"])]
    for o, obj in enumerate(tree["objs"]):
        lines.append(f"obj {o}: " + json.dumps(obj))
    return "\n".join(lines)


def body(tree: dict) -> str:
    """The Python body (for a py_hold setup) that builds `tree`."""
    return BODY.replace("@TREE@", repr(json.dumps(tree)))


BODY = r"""
import ctypes, fcntl, json, signal, socket, struct, termios
libc = ctypes.CDLL(None, use_errno=True)
TREE = json.loads(@TREE@)
END = {}
def home(o, role, fd):
    num = TREE["objs"][o]["ends"][role]
    if fd != num:
        os.dup2(fd, num)
        os.close(fd)
    END[(o, role)] = num
    return num
def sock(o, role, s):
    return home(o, role, s.detach())
def S(o, role):
    return socket.socket(fileno=os.dup(END[(o, role)]))
def setopts(o, role, opts):
    s = S(o, role)
    for level, name, value in opts:
        s.setsockopt(level, name, value)
    s.close()
def mk_pipe(o, obj):
    r, w = os.pipe()
    if obj["full"]:
        fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
        try:
            while True:
                os.write(w, b"\xff" * 4096)
        except BlockingIOError:
            pass
        if not obj["nonblock"]:
            fcntl.fcntl(w, fcntl.F_SETFL, 0)
    else:
        os.write(w, obj["data"].encode()) if obj["data"] else None
        if obj["nonblock"]:
            fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)
    home(o, "r", r); home(o, "w", w)
def mk_fifo(o, obj):
    path = f"/run/fifo{o}"
    os.mkfifo(path)
    if obj["rdwr"]:
        f = os.open(path, os.O_RDWR)
        os.write(f, obj["data"].encode()) if obj["data"] else None
        home(o, "rw", f)
        return
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY)
    fcntl.fcntl(r, fcntl.F_SETFL, 0)
    os.write(w, obj["data"].encode()) if obj["data"] else None
    home(o, "r", r); home(o, "w", w)
def mk_pair(o, obj):
    a, b = socket.socketpair(socket.AF_UNIX, {"stream": 1, "dgram": 2, "seqpacket": 5}[obj["type"]])
    sock(o, "a", a); sock(o, "b", b)
    for role in "ab":
        setopts(o, role, obj["opts"][role])
    for tx, data, rights in obj["msgs"]:
        s = S(o, tx)
        fds = [END[(ro, rr)] for ro, rr in rights]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        assert s.sendmsg([data.encode()], anc) == len(data)
        s.close()
    if obj["shut"]:
        s = S(o, obj["shut"][0]); s.shutdown(obj["shut"][1]); s.close()
def mk_ulisten(o, obj):
    typ = {"stream": 1, "seqpacket": 5}[obj["type"]]
    l = socket.socket(socket.AF_UNIX, typ); l.bind(obj["name"]); l.listen(8)
    sock(o, "l", l)
    for i, data in enumerate(obj["data"]):
        c = socket.socket(socket.AF_UNIX, typ); c.connect(obj["name"])
        if data:
            c.send(data.encode())
        sock(o, f"c{i}", c)
def mk_udgram(o, obj):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(obj["name"])
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.connect(obj["name"])
    for m in obj["msgs"]:
        c.send(m.encode())
    sock(o, "s", s); sock(o, "c", c)
def mk_file(o, obj):
    with open(obj["path"], "wb") as f:
        f.write(bytes(i % 251 for i in range(obj["size"])))
    mode = {"r": os.O_RDONLY, "rw": os.O_RDWR, "wa": os.O_WRONLY | os.O_APPEND, "ra": os.O_RDWR | os.O_APPEND}[obj["mode"]]
    f = os.open(obj["path"], mode | (os.O_NONBLOCK if obj["nonblock"] else 0))
    os.lseek(f, obj["pos"], 0)
    home(o, "f", f)
    f = END[(o, "f")]
    lk = obj["lock"]
    if lk == "flock":
        fcntl.flock(f, fcntl.LOCK_SH if obj["mode"] == "r" else fcntl.LOCK_EX)
    elif lk:
        typ = fcntl.F_RDLCK if obj["mode"] == "r" else fcntl.F_WRLCK
        fcntl.fcntl(f, 37 if lk == "ofd" else fcntl.F_SETLK, struct.pack("hhqqi4x", typ, 0, 2, 5, 0))
def mk_eventfd(o, obj):
    home(o, "e", os.eventfd(obj["value"], obj["flags"]))
def mk_timerfd(o, obj):
    libc.timerfd_create.restype = ctypes.c_int
    t = libc.timerfd_create(obj["clock"], 0)
    if obj["armed"]:
        spec = struct.pack("4q", 0, 0, 5000, 0)
        assert libc.timerfd_settime(t, 0, spec, None) == 0
    home(o, "t", t)
def mk_signalfd(o, obj):
    mask = 0
    for s in obj["signals"]:
        mask |= 1 << (s - 1)
    home(o, "s", libc.signalfd(-1, struct.pack("Q", mask) + bytes(120), 0))
def mk_epoll(o, obj):
    e = select_epoll()
    for to, tr, ev in obj["targets"]:
        e.register(END[(to, tr)], ev)
    home(o, "e", os.dup(e.fileno()))
    e.close()
def select_epoll():
    import select
    return select.epoll()
def mk_inotify(o, obj):
    os.mkdir(obj["dir"])
    i = libc.inotify_init1(0)
    assert libc.inotify_add_watch(i, obj["dir"].encode(), 0x100) == 1   # IN_CREATE
    for name in obj["files"]:
        open(obj["dir"] + "/" + name, "w").close()
    home(o, "i", i)
def mk_memfd(o, obj):
    m = os.memfd_create(f"fdhunt{o}", os.MFD_ALLOW_SEALING)
    os.write(m, bytes(i % 253 for i in range(obj["size"])))
    os.lseek(m, obj["pos"], 0)
    if obj["seals"]:
        fcntl.fcntl(m, 1033, obj["seals"])   # F_ADD_SEALS
    home(o, "m", m)
def mk_pty(o, obj):
    m, s = os.openpty()
    os.write(m, obj["input"].encode()) if obj["input"] else None
    home(o, "m", m); home(o, "s", s)
def mk_tcp(o, obj):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", obj["port"])); l.listen(8)
    c = socket.socket(); c.connect(("127.0.0.1", obj["port"])); a, _ = l.accept()
    sock(o, "l", l); sock(o, "c", c); sock(o, "a", a)
    for role in "ca":
        setopts(o, role, obj["opts"][role])
    if obj["nodelay"]:
        s = S(o, "c"); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); s.close()
    for role, key in (("c", "c2a"), ("a", "a2c")):
        if obj[key]:
            s = S(o, role); s.sendall(obj[key].encode()); s.close()
    if obj["shut"]:
        s = S(o, obj["shut"]); s.shutdown(socket.SHUT_WR); s.close()
    for i, data in enumerate(obj["pending"]):
        p = socket.socket(); p.connect(("127.0.0.1", obj["port"]))
        if data:
            p.sendall(data.encode())
        sock(o, f"p{i}", p)
def mk_udp(o, obj):
    s = socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1", obj["port"]))
    c = socket.socket(type=socket.SOCK_DGRAM); c.connect(("127.0.0.1", obj["port"]))
    for m in obj["msgs"]:
        c.send(m.encode())
    sock(o, "s", s); sock(o, "c", c)
signal.pthread_sigmask(signal.SIG_BLOCK, [10, 12, 34, 35])
for o, obj in enumerate(TREE["objs"]):
    globals()["mk_" + obj["kind"]](o, obj)
def arrange(i):
    rows = TREE["holds"][i]
    keep = {0, 1, 2, @MARK@ + i}
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, @MARK@ + i)
    os.close(null)
    for o, role, num, ce in rows:
        if num != END[(o, role)]:
            os.dup2(END[(o, role)], num)
        keep.add(num)
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass
    for o, role, num, ce in rows:
        os.set_inheritable(num, not ce)
def run(i):
    for k, p in enumerate(TREE["procs"]):
        if p["parent"] == i and os.fork() == 0:
            return run(k)
    arrange(i)
run(0)
""".replace("@MARK@", str(MARK))
