"""Random process trees whose processes make namespaces of their own (user namespaces with their
maps, pid, network, uts, ipc, mount, cgroup and time namespaces, in any order, at any depth), as
container runtimes, sandboxes and CRIU's uns tests leave them: a dump of such a tree must either
refuse it in one line or restore the same namespaces, owners and maps (tests/test_random_nstrees.py).

A tree is nested tuples (ops, kids): `ops` run in order in the process, then it forks each kid,
then every process holds. An op is ("user", uid_map) or ("ns", flags, name); tests add ("fork",):
fork a child there that holds (`make` never does).
"""

from __future__ import annotations

import random

# unshare(2) flags by name: those a process may unshare for itself (time and pid apply to its
# later children)
FLAGS = {"mnt": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000, "net": 0x40000000,
         "pid": 0x20000000, "cgroup": 0x02000000, "time": 0x00000080}

# User namespace maps by the ids the namespace it is made in maps (None: the runner's, all of
# them): the whole range shifted as rootless runtimes map it, the identity, root alone.
_MAPS = {None: ("0 0 65536", "0 100000 65536", "0 0 1"), 65536: ("0 0 65536", "0 1000 1000", "0 0 1"),
         1000: ("0 0 1000", "0 0 1"), 1: ("0 0 1",)}


def make(seed: int, max_depth: int = 3) -> tuple:
    """The tree of `seed` (deterministic): up to `max_depth` levels, up to 2 kids a process, up to 3
    ops each (the root at least one)."""
    rnd = random.Random(f"nstree-{seed}")
    return _node(rnd, max_depth, None, 1)


def _node(rnd: random.Random, depth: int, size: int | None, least: int) -> tuple:
    ops: list[tuple] = []
    used: set[str] = set()
    for _ in range(rnd.randrange(least, 4)):
        if "user" not in used and rnd.random() < 0.35:
            m = rnd.choice(_MAPS[size])
            ops.append(("user", m))
            used.add("user")
            size = int(m.split()[2])
            continue
        names = [n for n in FLAGS if n not in used]
        pick = rnd.sample(names, k=min(len(names), rnd.choice((1, 1, 2))))
        used.update(pick)
        ops.append(("ns", sum(FLAGS[n] for n in pick), "+".join(pick)))
    kids = [] if depth <= 1 else [_node(rnd, depth - 1, size, 0) for _ in range(rnd.choice((0, 1, 1, 2)))]
    return tuple(ops), tuple(kids)


def describe(tree: tuple, indent: str = "") -> str:
    """The tree as indented lines, for a failure's message."""
    ops, kids = tree
    words = [f"user[{op[1]}]" if op[0] == "user" else op[2] if op[0] == "ns" else op[0] for op in ops] or ["-"]
    return "\n".join([indent + " ".join(words)] + [describe(k, indent + "  ") for k in kids])


# The process body (run by tests' py_hold): a helper forked before each user namespace writes its
# maps from the namespace it was made in (any map its root may write), then the process takes
# root there. A failing op ends the setup (its message in /tmp/nstree-failed).
BODY = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
TREE = json.loads(%r)
class Hold(Exception):
    pass
def fail(what):
    open("/tmp/nstree-failed", "a").write(what + "\\n")
    os._exit(1)
def unshare(flags, what):
    if libc.unshare(flags) != 0:
        fail(f"unshare {what}: {os.strerror(ctypes.get_errno())}")
def mapper(m):
    # a helper forked before any op (so it is in no namespace the process makes) writes the maps
    # of the user namespace the process makes later; returns the call that makes it
    proc = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(w)
        os.close(r2)
        os.read(r, 1)
        try:
            for name in ("uid_map", "gid_map"):
                fd = os.open(name, os.O_WRONLY, dir_fd=proc)
                os.write(fd, m.encode())
                os.close(fd)
        except OSError as e:
            fail(f"maps {m}: {e}")
        os.write(w2, b"1")
        os._exit(0)
    for fd in (r, w2, proc):
        os.close(fd)
    def make():
        unshare(0x10000000, "user")
        os.write(w, b"1")
        if os.read(r2, 1) != b"1":
            fail("the map helper failed")
        os.waitpid(helper, 0)
        os.close(w)
        os.close(r2)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        libc.prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE (the id change cleared it), as runtimes do
    return make
def run(node):
    ops, kids = node
    make = next((mapper(op[1]) for op in ops if op[0] == "user"), None)
    for op in ops:
        if op[0] == "user":
            make()
        elif op[0] == "fork":
            if os.fork() == 0:
                raise Hold
        else:
            unshare(op[1], op[2])
    for kid in kids:
        if os.fork() == 0:
            run(kid)
            raise Hold
try:
    run(TREE)
except Hold:
    pass
"""


def body(tree: tuple) -> str:
    """The Python body (for a py_hold setup) that builds `tree`."""
    import json
    return BODY % json.dumps(tree)


def count(tree: tuple) -> int:
    """Processes the tree holds (user namespace helpers exit and are reaped)."""
    return 1 + sum(op[0] == "fork" for op in tree[0]) + sum(count(k) for k in tree[1])
