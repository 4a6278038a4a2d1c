"""What a real dump imports (issue 18): the fd kind modules of the tree's fds alone, so that a tree
without sockets never loads socket.py, selectors, threading or ipaddress, and the routes dump
picks kinds by (engine/fds/__init__.py `modules_of`) cover every kind. No timing is asserted."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from enginecase import DUMP_EXTERNALS, PROJECT_ROOT, RESTORE_EXTERNALS, case, py_hold  # noqa: F401  (fixture)

# Loaded by the socket kinds alone (socket.py pulls selectors; unix_bind threadids, threading;
# inet ipaddress): with every fd kind, 27% of the instructions of dump's imports.
_SOCKET_ONLY = ("socket", "selectors", "threading", "ipaddress", "engine.fds.unix", "engine.fds.netlink",
                "engine.fds.inet")

# Used for trees with user namespaces alone (engine/userns_cr.py's dump side: locked mounts, owned
# superblocks, an owner's subordinate ids; restore: a stand-in that executes again) or System V IPC
# objects: neither a small dump nor a small restore loads them.
_USERNS_ONLY = ("engine.topology", "engine.mntlocks", "engine.sbowner", "engine.subids", "engine.ownergroups",
                "engine.reexec", "heapq", "pwd")

_NO_SOCKET = py_hold("""
r, w = os.pipe(); os.dup2(r, 10); os.dup2(w, 11)
ev = os.eventfd(0); os.dup2(ev, 12)
""")

_UNIX = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
""")


def _dump_modules(pid: int, images: str, before: str = "") -> list[str]:
    """sys.modules of a `python -S` that ran `before`, then a dump of tree `pid` (--leave-running)
    to `images`."""
    code = (before + "from engine import cli\n"
            f"code = cli.main(['dump', '-t', '{pid}', '-D', {images!r}, '--leave-running', "
            f"*{list(DUMP_EXTERNALS)!r}])\n"
            "import sys\nmods = sorted(sys.modules)\nimport json\nprint(json.dumps([code, mods]))")
    r = subprocess.run([sys.executable, "-S", "-c", code], env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
                       cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code, mods = json.loads(r.stdout.splitlines()[-1])
    assert code == 0, r.stderr
    return mods


def _rx_current() -> bool:
    """Whether engine/rx.py serves the patterns from its table here (else re.compile, re loaded)."""
    from engine import rx
    return rx._CURRENT


def _kinds(mods: list[str]) -> list[str]:
    return sorted(m for m in mods if m.startswith("engine.fds.") and m != "engine.fds.sys")


def test_a_dump_without_sockets_loads_no_socket_module(case):
    """Files (/dev/null, a character device, among them), a pipe and an eventfd: their kinds'
    modules, none of the socket kinds' or the heavy modules only they use, nor the terminals'."""
    pid = case.start(_NO_SOCKET)
    mods = _dump_modules(pid, case.new_images_dir())
    assert [m for m in _SOCKET_ONLY if m in mods] == []
    assert [m for m in _USERNS_ONLY if m in mods] == [], "a tree without user namespaces"
    assert "engine.standin" not in mods   # (restore's stand-ins: the block types load it only to make one)
    assert "engine.shmattach" not in mods   # (a tree with System V shared memory segments alone)
    # (engine/rx.py: the patterns from their kept code, where the interpreter's _sre is the table's;
    # base64 and shlex import re)
    assert [m for m in ("re", "enum", "base64", "shlex") if m in mods and (m not in ("re", "enum") or _rx_current())] == []
    kinds = _kinds(mods)
    assert {"engine.fds.file", "engine.fds.pipe", "engine.fds.eventfd"} <= set(kinds), kinds
    assert [k for k in ("engine.fds.epoll", "engine.fds.inotify", "engine.fds.pty") if k in kinds] == [], kinds


def test_a_dump_loads_the_construction_planner_only_for_its_strategy(case):
    """engine/construct.py plans peer groups for sharing=construct alone (kernels without
    MOVE_MOUNT_SET_GROUP): a dump under another strategy never imports it."""
    from engine import strategy
    pid = case.start(_NO_SOCKET)
    mods = _dump_modules(pid, case.new_images_dir())
    assert ("engine.construct" in mods) == (strategy.current().sharing == "construct"), strategy.current()


def test_a_dump_with_a_unix_socket_loads_the_unix_kind_alone(case):
    """A unix socket pair: the unix kind's modules and socket.py, not netlink's or inet's (nor
    ipaddress), which unix.py imports only for a socket of their family."""
    pid = case.start(_UNIX)
    mods = _dump_modules(pid, case.new_images_dir())
    assert "engine.fds.unix" in mods and "socket" in mods
    assert [m for m in ("engine.fds.netlink", "engine.fds.inet", "ipaddress") if m in mods] == []


_INOTIFY = py_hold("""
import ctypes
libc = ctypes.CDLL(None)
fd = libc.inotify_init(); assert fd >= 0 and libc.inotify_add_watch(fd, b"/tmp", 2) >= 0
os.dup2(fd, 10)
""")


def test_a_kind_the_precheck_did_not_load_is_loaded_before_the_helpers_chroot(case):
    """An inotify fd (its kind reads its watches inside the container, engine/nsinspect.py, chrooted
    where the engine's files are out of reach) that the precheck did not see (left out here, as for
    an fd opened between the precheck and the stop): dump loads its kind from the stopped tree's
    fds (fds.load_tree) before the helper enters the container, and succeeds."""
    pid = case.start(_INOTIFY)
    skip_precheck = "from engine import prestop\nprestop._check_fds = lambda *a: None\n"
    mods = _dump_modules(pid, case.new_images_dir(), skip_precheck)
    assert "engine.fds.inotify" in mods


# Link targets and modes as /proc/PID/fd shows them (and some no kind takes).
_TARGETS = ["/a/file", "/dev/pts/3", "/dev/pts/3 (deleted)", "/dev/console", "/dev/ttyS0", "/a/tty", "/a/tty (deleted)",
            "/dev/pts2/1", "/x/pts/0", "/x/dev/ptmx", "/dev/ptmx", "/dev/pts/ptmx", "/dev/tty", "/x/tty", "/dev/null",
            "/memfd:x (deleted)", "/memfd: (deleted)", "/dev/zero (deleted)", "/dev/zero", "/a/fifo (deleted)",
            "pipe:[12]", "socket:[34]", "anon_inode:[eventpoll]", "anon_inode:[eventfd]", "anon_inode:[fanotify]",
            "anon_inode:inotify", "anon_inode:[pidfd]", "anon_inode:[signalfd]", "anon_inode:[timerfd]",
            "anon_inode:[io_uring]", "anon_inode:bpf-map", "anon_inode:[userfaultfd]", "pidfd:[5]",
            "mnt:[4026531841]", "pid:[4026531836]", "uts:[1]", "ipc:[1]", "net:[1]", "cgroup:[1]", "user:[1]",
            "time:[1]", "pid_for_children:[1]", "/proc/1/ns/mnt"]
_MODES = [stat.S_IFREG, stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFLNK, 0]


def test_the_routes_name_the_module_of_every_kind_that_claims_a_target():
    """For each target and mode, every kind whose `matches` claims it lives in a module
    `modules_of` names (or it names none: all are loaded), so classify's answer with the routed
    modules alone is the answer with every kind loaded."""
    code = ("import json, sys\nfrom engine import fds\nfds.load()\n"
            "t, m = json.loads(sys.argv[1])\nbad = []\n"
            "for target in t:\n"
            "    for mode in m:\n"
            "        routes = fds.modules_of(target, mode)\n"
            "        for k in fds._REGISTRY.values():\n"
            "            module = k.open.__module__.rsplit('.', 1)[-1]\n"
            "            if k.matches(target, mode) and routes is not None and module not in routes:\n"
            "                bad.append([target, mode, k.name, routes])\n"
            "print(json.dumps([len(fds._REGISTRY), bad]))")
    r = subprocess.run([sys.executable, "-S", "-c", code, json.dumps([_TARGETS, _MODES])],
                       env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), capture_output=True, text=True, check=True)
    n, bad = json.loads(r.stdout)
    assert n > 10 and bad == []


def test_classify_alone_gives_the_full_load_answer():
    """The same (target, mode) pairs classified in a fresh process that loaded nothing (each pair
    importing its routes only) and after loading every kind: the same kind, or none, each time."""
    code = ("import json, sys\nfrom engine import fds\nt, m = json.loads(sys.argv[1])\n"
            "pairs = [(a, b) for a in t for b in m]\n"
            "lazy = [getattr(fds.classify(a, b), 'name', None) for a, b in pairs]\n"
            "loaded = sorted(x for x in sys.modules if x.startswith('engine.fds.'))\n"
            "fds.load()\n"
            "full = [getattr(fds.classify(a, b), 'name', None) for a, b in pairs]\n"
            "print(json.dumps([[p for p, x, y in zip(pairs, lazy, full) if x != y], len(set(full))]))")
    # (in one process the lazy answers come first; a pair routed nowhere loads all, so put those last)
    routed = [t for t in _TARGETS if "io_uring" not in t and "bpf" not in t and "userfault" not in t
              and not t.startswith(("pidfd:", "pid_for"))]
    r = subprocess.run([sys.executable, "-S", "-c", code, json.dumps([routed, _MODES])],
                       env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), capture_output=True, text=True, check=True)
    differ, n = json.loads(r.stdout)
    assert differ == [] and n > 10


def test_each_kind_looked_up_alone_is_the_kind_of_the_full_load():
    """fds.lookup(name) in a fresh process (its module alone, by name or fds._MODULE_OF, else
    every module) finds the kind a lookup after loading everything finds, for every kind."""
    full = json.loads(subprocess.run(
        [sys.executable, "-S", "-c", "import json\nfrom engine import fds\nfds.load()\n"
         "print(json.dumps({n: k.open.__module__ for n, k in fds._REGISTRY.items()}))"],
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), capture_output=True, text=True, check=True).stdout)
    code = ("import json, sys\nfrom engine import fds\n"
            "print(json.dumps({n: getattr(fds.lookup(n), 'open', None) and fds.lookup(n).open.__module__ "
            "for n in sys.argv[1:]}))")
    for name in sorted(full) + ["no-such-kind"]:
        got = json.loads(subprocess.run([sys.executable, "-S", "-c", code, name], capture_output=True, text=True,
                                        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), check=True).stdout)
        assert got[name] == full.get(name), name


def test_load_tree_imports_the_kinds_of_the_fds_a_process_holds():
    """fds.load_tree (dump runs it once the tree is stopped, before its helpers chroot into the
    tree's containers) imports the kind of each fd the processes hold: here an inotify fd and a
    pipe of this process, and nothing of the socket kinds."""
    code = ("import ctypes, os, sys, json\nfd = ctypes.CDLL(None).inotify_init()\nassert fd >= 0\nr, w = os.pipe()\n"
            "from engine import fds\nbefore = sorted(m for m in sys.modules if m.startswith('engine.fds.'))\n"
            "fds.load_tree([os.getpid()])\n"
            "print(json.dumps([before, sorted(m for m in sys.modules if m.startswith('engine.fds.'))]))")
    r = subprocess.run([sys.executable, "-S", "-c", code], env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
                       capture_output=True, text=True, check=True)
    before, after = json.loads(r.stdout)
    assert "engine.fds.inotify" not in before
    assert {"engine.fds.inotify", "engine.fds.pipe"} <= set(after) and "engine.fds.unix" not in after, after


def test_a_small_restore_loads_no_module_only_some_images_need(case):
    """The same tree restored by `mntcr restore` (in a fresh `python -S`): the modules the stand-ins
    and the restorer inherit from it include none of those for user namespaces, System V IPC or
    deleted files (restore._load_for imports them for an image that has them), nor the socket kinds'."""
    images = case.new_images_dir()
    case.dump(case.start(_NO_SOCKET), images)
    pidfile = images + ".pid"
    code = ("from engine import cli\n"
            f"code = cli.main(['restore', '-D', {images!r}, *{list(RESTORE_EXTERNALS)!r}, '--pidfile', {pidfile!r}])\n"
            "import sys\nmods = sorted(sys.modules)\nimport json\nprint(json.dumps([code, mods]))")
    r = subprocess.run([sys.executable, "-S", "-c", code], env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
                       cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if os.path.exists(pidfile):
        with open(pidfile) as f:
            case.trees.append(int(f.read()))   # (killed when the case closes)
    assert r.returncode == 0, r.stderr
    code, mods = json.loads(r.stdout.splitlines()[-1])
    assert code == 0, r.stderr
    assert "engine.restore" in mods and "engine.standin" in mods
    assert [m for m in _USERNS_ONLY + ("engine.sysvipc", "engine.ghosts") + _SOCKET_ONLY if m in mods] == []
    assert "base64" not in mods   # (binascii's calls)
    assert [m for m in ("re", "enum") if m in mods] == [] or not _rx_current()   # (engine/rx.py)
