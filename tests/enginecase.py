"""Throwaway containers for the engine's integration tests: build, snapshot, dump, restore, compare.

A test gives a `sh -e` setup script; `EngineCase.start(setup)` runs it as pid 1
of fresh mount, PID, UTS and IPC namespaces inside a container root built like
this (all in the new mount namespace, never on the host):

    /            tmpfs made inside the namespace (the dumped root is not external)
    /usr /etc    read-only non-recursive binds of the host's, declared external
                 (dump: mnt[/usr]:usr mnt[/etc]:etc; restore: mnt[usr]:/usr ...)
    /bin /lib /lib64 /sbin   symlinks into usr/
    /dev         tmpfs with null and zero;  /proc  of the new PID namespace
    /tmp /mnt /run /root     empty directories
    /.hold/mntcr-hold        symlink to the host's sleep

The setup's stdout/stderr are a pipe to the test (shown when setup fails); it
ends in `hold`, which moves stdio onto the container's /dev/null and execs
/.hold/mntcr-hold (comm "mntcr-hold"). The tree is ready when every process
in it is called mntcr-hold and the setup pipe has closed, so background
processes in nested namespaces must end in `hold` too (or set that comm
themselves, like a Python holder that opens O_CLOEXEC fds).

Process layout: test -> keeper (this file run as a program; optionally
entering an "outer" mount namespace first, unshares, forks) -> container pid 1.

`Outer` is a mount namespace owned by the test that plays "the host" for
masters outside the dump: private everywhere, with one shared tmpfs that the
container root binds (and setup makes a slave).

`State`/`take` snapshot a tree (zdtm.snapshot: canonical mount tree per
process, fds with flags/offset/mount label, root, cwd, namespace sharing, the
output of a check script) plus what each fd reads through /proc/PID/fd/N.
`assert_same` compares two states with engine.topology.diff_report and fails
with readable diffs.
"""

from __future__ import annotations

import ctypes
import errno
import difflib
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import tempfile
import time
from dataclasses import dataclass

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)
from zdtm import watchdog  # noqa: E402  (after the path)

# Which tree's engine the CLI runs (default: this checkout). Set MNTCR_ENGINE_ROOT to test another
# checkout's engine, e.g. an exported commit while the working tree is being edited.
ENGINE_ROOT = os.environ.get("MNTCR_ENGINE_ROOT", PROJECT_ROOT)
HOLD = "/.hold/mntcr-hold"
HOLD_COMM = "mntcr-hold"
DUMP_EXTERNALS = ("--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc")
RESTORE_EXTERNALS = ("--external", "mnt[usr]:/usr", "--external", "mnt[etc]:/etc")
SETUP_FAILED = 125
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C"}

# Prepended to every setup script.
PRELUDE = f"""
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# wait_for FILE: until FILE exists (a background process says it is done), at most 30s (a loaded
# machine needs more than 10: a wait that gives up fails the setup, it never goes on).
wait_for() {{
    _n=600
    while [ ! -e "$1" ]; do
        _n=$((_n - 1)); [ "$_n" -gt 0 ] || {{ echo "wait_for: $1 did not appear" >&2; return 1; }}
        sleep 0.05
    done
}}
# hold: stdio onto the container's /dev/null, then sleep keeping root, cwd and fds.
hold() {{
    exec </dev/null >/dev/null 2>&1
    exec {HOLD} 100000
}}
"""

# A Python holder (for fds only a program can open, e.g. O_CLOEXEC ones): run
# `exec python3 -c "$PYHOLD_HEAD ...your opens... $PYHOLD_TAIL"`-style code built with py_hold().
_PY_HOLD_TAIL = f"""
import ctypes, signal
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
ctypes.CDLL(None).prctl(15, b"{HOLD_COMM}", 0, 0, 0)  # PR_SET_NAME: ready
while True:
    signal.pause()
"""


def userns_setup(flags: int, body: str, uid_map: str = "0 20000 20000", gid_map: str = "0 400000 50000",
                 ready: str | None = None) -> str:
    """A setup whose Python process unshares a user namespace with `flags` (CLONE_NEW*), gets the
    maps from the setup's shell, takes root there, then runs `body` (`libc` is loaded) and holds;
    the shell waits for the file `ready` (made by the body) before it holds."""
    code = ("import ctypes, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"assert libc.unshare(0x10000000 | {flags:#x}) == 0\n"
            "open('/tmp/unshared', 'w').close()\n"
            "while not os.path.exists('/tmp/mapped'):\n    time.sleep(0.05)\n"
            "os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)\n" + body)
    return ("(" + py_hold(code).strip() + ") </dev/null >/dev/null 2>&1 &\nwait_for /tmp/unshared\n"
            f'echo "{uid_map}" > /proc/$!/uid_map; echo "{gid_map}" > /proc/$!/gid_map; touch /tmp/mapped\n'
            + (f"wait_for {ready}\n" if ready else "") + "hold\n")


# A holder script's System V IPC calls: libc with errno, shmat's pointer, ok() raising OSError on -1
# (scripts that start with it import ctypes first).
IPC_LIBC = """libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def ok(r):
    if r == -1 or r == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "ipc")
    return r
"""


def py_hold(body: str) -> str:
    """A setup line that execs python3 running `body` (which may open fds), then holding."""
    code = "import os\n" + body + _PY_HOLD_TAIL
    return "exec python3 -c '" + code.replace("'", "'\\''") + "'\n"


# A process of the tree that notes each SIGCONT it gets in the container's /run/.continued (no
# ptrace, nothing the dump sees differently): dump stops the tree with SIGSTOP and resumes it with
# SIGCONT, so after a refusal `was_stopped` tells whether the tree was ever stopped. Put it first
# in a setup (a shell line; the watcher waits as another mntcr-hold process).
STOP_WATCH = "python3 -c '" + """
import ctypes, os, signal
def cont(*_):
    with open("/run/.continued", "a") as f:
        f.write("SIGCONT\\n")
signal.signal(signal.SIGCONT, cont)
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
open("/run/.watching", "w").close()
while True:
    signal.pause()
""".replace("'", "'\\''") + "' </dev/null >/dev/null 2>&1 &\nwait_for /run/.watching\n"


def in_own_pidns(outer: int, timeout: float = 30) -> int:
    """The topmost process of container `outer`'s tree that lives in a pid namespace other than
    outer's, once it runs `hold` (`start` returns when the tree's `unshare -fp`, a daemon, is
    there, maybe before its child is, or before that child exec'd)."""
    from engine import freeze
    deadline = time.monotonic() + timeout
    while True:
        inner = {p: ppid for p, ppid in freeze.process_tree(outer)
                 if os.readlink(f"/proc/{p}/ns/pid") != os.readlink(f"/proc/{outer}/ns/pid")}
        top = [p for p, ppid in inner.items() if ppid not in inner]
        if len(top) == 1 and _comm(top[0]) == HOLD_COMM:
            return top[0]
        if time.monotonic() > deadline:
            raise SetupError(f"no one process running hold in a new pid namespace under {outer}: {top}")
        time.sleep(0.05)


def was_stopped(pid: int) -> bool:
    """Whether the tree of container pid `pid` (set up with STOP_WATCH) got a SIGCONT: it was stopped."""
    return os.path.exists(f"/proc/{pid}/root/run/.continued")


class SetupError(Exception):
    """The container could not be built or its setup failed (message has the setup output)."""


def wait_until(cond, what: str, timeout: float = 60.0) -> None:
    """Poll `cond()` until it is true; SetupError saying `what` did not happen after `timeout`
    seconds (generous: a loaded machine is slow, and a wait that gives up must never go on)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SetupError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.02)


class CRError(AssertionError):
    """mntcr dump or restore failed; the message has its exit status and stderr."""

    def __init__(self, verb: str, proc: subprocess.CompletedProcess):
        self.verb = verb
        self.proc = proc
        super().__init__(f"mntcr {verb} exited {proc.returncode}:\n{proc.stderr.strip()}")

    def __reduce__(self):
        return (type(self), (self.verb, self.proc), self.__dict__)


# --- the keeper and the container's pid 1 (run as a program) --------------------------

def _build_root(staging: str, binds: list[tuple[int, str]]) -> None:
    from engine import kernel
    kernel.mount("tmpfs", staging, "tmpfs", 0, "mode=0755")
    for name in ("usr", "etc"):
        target = os.path.join(staging, name)
        os.mkdir(target, 0o755)
        kernel.mount("/" + name, target, None, kernel.MS_BIND)  # not MS_REC: only that mount
        kernel.mount(None, target, None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY)
    for name in ("bin", "lib", "lib64", "sbin"):
        os.symlink("usr/" + name, os.path.join(staging, name))
    dev = os.path.join(staging, "dev")
    os.mkdir(dev, 0o755)
    kernel.mount("tmpfs", dev, "tmpfs", kernel.MS_NOSUID, "mode=0755")
    for name, minor in (("null", 3), ("zero", 5)):
        os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        os.chmod(os.path.join(dev, name), 0o666)  # mknod's mode went through the umask
    for name, mode in (("proc", 0o555), ("tmp", 0o1777), ("mnt", 0o755), ("run", 0o755), ("root", 0o700),
                       (".hold", 0o755)):
        os.mkdir(os.path.join(staging, name))
        os.chmod(os.path.join(staging, name), mode)
    os.symlink(os.path.realpath(shutil.which("sleep", path="/usr/bin:/bin")), os.path.join(staging, HOLD[1:]))
    for fd, where in binds:
        target = os.path.join(staging, where.lstrip("/"))
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.makedirs(target, exist_ok=True)
        else:  # a file bind lands on a file
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        kernel.mount(f"/proc/self/fd/{fd}", target, None, kernel.MS_BIND)
        os.close(fd)


def _container_pid1(cfg: dict, out_fd: int, binds: list[tuple[int, str]]) -> None:
    """Pid 1 of the container: root, pivot_root, /proc, then exec the setup. Never returns."""
    from engine import kernel
    try:
        # If the keeper is killed (a failed start), the container dies with it instead of lingering.
        kernel.set_pdeathsig(signal.SIGKILL)
        socket.sethostname(cfg["hostname"])
        staging = "/tmp"  # covered only in this private namespace
        _build_root(staging, binds)
        os.chdir(staging)
        kernel.pivot_root(".", ".")
        kernel.umount2(".", kernel.MNT_DETACH)
        os.chdir("/")
        kernel.mount("proc", "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.closerange(3, 65536)  # nothing of the test's leaks into the tree
        os.umask(0o022)
        os.execve("/bin/sh", ["sh", "-e", "-c", PRELUDE + cfg["setup"]], _ENV)
    except BaseException as e:  # noqa: BLE001 - reported through the setup pipe
        try:
            os.write(out_fd, f"enginecase: building the container failed: {e}\n".encode())
        finally:
            os._exit(SETUP_FAILED)


def keeper_main(cfg: dict) -> int:
    """Enter the outer namespace if any, unshare, fork the container's pid 1, report its pid, wait."""
    from engine import kernel, mountinfo
    out_fd = cfg["out_fd"]
    if cfg.get("outer_pid"):
        fd = os.open(f"/proc/{cfg['outer_pid']}/ns/mnt", os.O_RDONLY)
        kernel.setns(fd, kernel.CLONE_NEWNS)
        os.close(fd)
    bind_paths = [src for src, _ in cfg.get("binds", ())]
    # host_pidns: the tree stays in the test's pid namespace (a service with a private /proc).
    pidns = 0 if cfg.get("host_pidns") else kernel.CLONE_NEWPID
    kernel.unshare(kernel.CLONE_NEWNS | pidns | kernel.CLONE_NEWUTS | kernel.CLONE_NEWIPC)
    if cfg.get("outer_pid"):
        # The outer namespace is private except the mounts the binds' sources lie on (shared on
        # purpose): check, since mounting under a shared mount here would propagate out.
        for m in mountinfo.read_pid("self"):
            under = m.mountpoint.rstrip("/") + "/"
            if m.shared is not None and not any(p == m.mountpoint or p.startswith(under) for p in bind_paths):
                raise SystemExit(f"enginecase: outer namespace has a shared mount at {m.mountpoint}")
    else:
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    binds = [(os.open(src, os.O_PATH), dst) for src, dst in cfg.get("binds", ())]  # directories or files
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _container_pid1(cfg, out_fd, binds)
    os.close(out_fd)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # stderr was the setup pipe: only the tree keeps it
    for fd, _ in binds:
        os.close(fd)
    print(f"pid {pid}", flush=True)
    os.waitpid(pid, 0)
    return 0


# --- the test's side ---------------------------------------------------------------------

def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", errors="surrogateescape") as f:
            return f.read().strip()
    except OSError:
        return None


def _holding(pid: int) -> bool:
    """Whether `pid` runs `hold` past its exec: exec sets the new comm before it lays out the new
    arguments (until then /proc/PID/cmdline reads empty: a loaded CI saw a test read it so)."""
    if _comm(pid) != HOLD_COMM:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


class _Pipe:
    """Collects a pipe's output in a thread; `closed` is set at EOF."""

    def __init__(self, fd: int):
        self.data = bytearray()
        self.closed = threading.Event()
        threading.Thread(target=self._pump, args=(fd,), daemon=True).start()

    def _pump(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 65536):
                self.data += chunk
        finally:
            os.close(fd)
            self.closed.set()

    def text(self) -> str:
        return self.data.decode(errors="replace")


# --- seccomp: make chosen syscalls fail with ENOSYS in one child (a kernel "without" them) -----

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# The new mount API has the same numbers on every architecture (the unified syscall table).
NR = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "mount_setattr": 442}
# (older calls have a number of each architecture's own)
NR["name_to_handle_at"] = {"x86_64": 303, "aarch64": 264}.get(platform.machine(), -1)

needs_seccomp = pytest.mark.skipif(platform.machine() not in _AUDIT_ARCH,
                                   reason=f"the seccomp filter knows only {sorted(_AUDIT_ARCH)}")


def without_syscalls(*names: str):
    """A preexec_fn installing a seccomp filter: the named syscalls return ENOSYS, others run."""
    arch = _AUDIT_ARCH[platform.machine()]
    nrs = [NR[n] for n in names]
    insns = [(0x20, 0, 0, 4),                              # A = seccomp_data.arch
             (0x15, 0, len(nrs) + 1, arch),                # other arch: allow
             (0x20, 0, 0, 0)]                              # A = seccomp_data.nr
    for i, nr in enumerate(nrs):
        insns.append((0x15, len(nrs) - i, 0, nr))          # match: jump to the ENOSYS return
    insns += [(0x06, 0, 0, 0x7FFF0000),                    # SECCOMP_RET_ALLOW
              (0x06, 0, 0, 0x00050000 | 38)]               # SECCOMP_RET_ERRNO | ENOSYS
    prog = b"".join(struct.pack("HBBI", *i) for i in insns)

    def install():
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))
        fbuf = ctypes.create_string_buffer(fprog)
        ul = ctypes.c_ulong
        # Root (CAP_SYS_ADMIN) installs the filter without no_new_privs, which restore would hand
        # to every stand-in (a real old kernel's restorer has it clear); others need it first.
        if libc.prctl(22, ul(2), ul(ctypes.addressof(fbuf)), ul(0), ul(0)) == 0:  # PR_SET_SECCOMP, FILTER
            return
        if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:          # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if libc.prctl(22, ul(2), ul(ctypes.addressof(fbuf)), ul(0), ul(0)) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
    return install


def mntcr(*args: str, env: dict | None = None, nsenter: int | None = None,
          timeout: float = 120, engine_root: str | None = None,
          without: tuple[str, ...] = (), subids: str | None = None, wrap: tuple = ()) -> subprocess.CompletedProcess:
    """Run `python -m engine.cli ARGS` (inside the mount namespace of pid `nsenter` when given;
    with the engine of `engine_root`, e.g. `engine_without`'s copy, instead of ENGINE_ROOT; with
    the syscalls `without` names failing with ENOSYS, see without_syscalls; with `subids`, lines
    NAME:START:COUNT, as /etc/subuid and /etc/subgid: in a mount namespace of its own, where
    copies are bound over them, never the host's files); `wrap`: a command prefix (e.g. prlimit)."""
    root = engine_root or ENGINE_ROOT
    cmd = [*wrap, sys.executable, "-m", "engine.cli", *args]
    if subids is not None:
        fd, copy = tempfile.mkstemp(prefix="mntcr-subids.")
        with os.fdopen(fd, "w") as f:
            f.write(subids)
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-ec",
               'mount --bind "$1" /etc/subuid; mount --bind "$1" /etc/subgid; rm "$1"; shift; exec "$@"',
               "sh", copy] + cmd
    if nsenter:
        cmd = ["nsenter", "-t", str(nsenter), "-m", f"--wd={root}", "--"] + cmd
    full_env = dict(os.environ, PYTHONPATH=root, **(env or {}))
    return subprocess.run(cmd, cwd=root, env=full_env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=without_syscalls(*without) if without else None)


def engine_without(dest: str, *types: str) -> str:
    """A copy of the engine under `dest` without the type modules engine/fs/TYPE.py: filesystems it
    cannot dump, for tests of refusals (every type this kernel mounts may have a module). Returns
    the root to give `mntcr(engine_root=...)`."""
    shutil.copytree(os.path.join(ENGINE_ROOT, "engine"), os.path.join(dest, "engine"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for t in types:
        os.remove(os.path.join(dest, "engine", "fs", f"{t}.py"))
    return str(dest)


class Outer:
    """A mount namespace that plays "the host" of a container: private, one shared tmpfs at `path`.

    `path` must be an existing directory; it is mounted on only inside this namespace.
    """

    def __init__(self, path: str):
        self.path = path
        script = f"mount -t tmpfs outer {path} && mount --make-shared {path} && echo ready && exec sleep 100000"
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise SetupError(f"outer namespace: {line or 'no output'}")
        self.pid = self.proc.pid  # unshare and sh exec in place

    def sh(self, script: str) -> str:
        """Run `script` with sh in the outer namespace; return its output (fail on error)."""
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "--", "sh", "-ec", script],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"outer: {script!r} failed: {r.stderr.strip()}"
        return r.stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class EngineCase:
    """One test's containers and restored trees; `close()` kills every tree it knows."""

    def __init__(self, workdir: str):
        self.workdir = str(workdir)
        self.trees: list[int] = []      # root pids to kill at the end (original and restored)
        self.keepers: list[subprocess.Popen] = []
        self.outers: list[Outer] = []
        self.n_images = 0
        from zdtm import sbguard
        # The superblocks of every tree started or restored: each must go with its tree (zdtm/sbguard.py).
        self.sbs: sbguard.Watch | None = sbguard.Watch()

    # -- building --------------------------------------------------------------------

    def outer(self) -> Outer:
        """A fresh outer namespace (see `Outer`) whose shared tmpfs sits on a new directory."""
        path = os.path.join(self.workdir, f"outer{len(self.outers)}")
        os.mkdir(path)
        o = Outer(path)
        self.outers.append(o)
        return o

    def start(self, setup: str, outer: Outer | None = None, binds: tuple = (), timeout: float = 60,
              host_pidns: bool = False, daemons: tuple[str, ...] = ()) -> int:
        """Run `setup` as pid 1 of a new container; return its host pid once the tree is ready.

        `binds` are (outer path, container path) pairs bound into the root before pivot_root
        (sources in `outer`'s namespace). `host_pidns`: no new pid namespace (the setup is then
        not pid 1 and its /proc shows the test's pid namespace). `daemons`: names (comm) of
        processes the setup leaves running that never reach `hold` (a FUSE daemon).
        """
        out_r, out_w = os.pipe()
        cfg = {"setup": setup, "out_fd": out_w, "hostname": "mntcr-test",
               "outer_pid": outer.pid if outer else None, "binds": [list(b) for b in binds],
               "host_pidns": host_pidns}
        env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
        try:
            keeper = subprocess.Popen([sys.executable, os.path.abspath(__file__), "keeper", json.dumps(cfg)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out_w,
                                      pass_fds=(out_w,), env=env, cwd=PROJECT_ROOT, start_new_session=True)
        finally:
            os.close(out_w)
        self.keepers.append(keeper)
        pipe = _Pipe(out_r)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([keeper.stdout], [], [], left)[0]:
                break
            ch = os.read(keeper.stdout.fileno(), 1)
            if not ch:
                break
            line += ch
        if not line.startswith(b"pid "):
            keeper.kill()
            pipe.closed.wait(2)
            raise SetupError(f"the keeper did not start the container: {pipe.text().strip() or 'no output'}")
        pid = int(line.split()[1])
        self.trees.append(pid)
        watchdog.guard(pid)
        from zdtm.snapshot import alive, tree_pids
        while True:
            pids = tree_pids(pid)
            if pids and all(_holding(p) or _comm(p) in daemons for p in pids):
                break
            if not alive(pid):
                pipe.closed.wait(2)
                raise SetupError(f"setup failed before `hold`:\n{pipe.text().rstrip()}")
            if time.monotonic() > deadline:
                raise SetupError(f"setup did not reach `hold` in every process within {timeout:g}s:\n"
                                 f"{pipe.text().rstrip()}")
            time.sleep(0.02)
        if not pipe.closed.wait(15):   # (at once, unless a process kept it: 15 s for a loaded machine)
            raise SetupError("a process of the tree still has setup's stdout/stderr open (a pipe to the test): "
                             "end background processes in `hold` or redirect their stdio")
        self._watch(pid)
        return pid

    # -- C/R -----------------------------------------------------------------------------

    def new_images_dir(self) -> str:
        """A path for a new image directory (not created: dump creates it)."""
        self.n_images += 1
        return os.path.join(self.workdir, f"images{self.n_images}")

    def dump(self, pid: int, images_dir: str, extra: tuple = ()) -> None:
        """`mntcr dump` the tree at `pid` (externals /usr and /etc) into `images_dir`; raise CRError."""
        r = mntcr("dump", "-t", str(pid), "-D", images_dir, *DUMP_EXTERNALS, *extra)
        if r.returncode:
            raise CRError("dump", r)

    def restore(self, images_dir: str, extra: tuple = (), outer: Outer | None = None, wrap: tuple = ()) -> int:
        """`mntcr restore` (externals /usr and /etc) -> root stand-in pid (killed at close); `wrap`
        as for mntcr."""
        pidfile = images_dir.rstrip("/") + ".pid"
        # (the test dumped this image itself: its device nodes are trusted, see IMAGE.md)
        r = mntcr("restore", "-D", images_dir, *RESTORE_EXTERNALS, "--devices", "all", *extra,
                  "--pidfile", pidfile,
                  nsenter=outer.pid if outer else None, wrap=wrap)
        if r.returncode:
            raise CRError("restore", r)
        with open(pidfile) as f:
            pid = int(f.read())
        self.trees.append(pid)
        watchdog.guard(pid)
        self._watch(pid)
        return pid

    def _watch(self, pid: int) -> None:
        if self.sbs is not None:
            self.sbs.add_tree(pid)

    def cr(self, pid: int, dump_extra: tuple = (), restore_extra: tuple = (), outer: Outer | None = None) -> int:
        """Dump the tree at `pid` (which dies) and restore it; return the restored root pid."""
        images = self.new_images_dir()
        self.dump(pid, images, dump_extra)
        return self.restore(images, restore_extra, outer)

    def roundtrip(self, setup: str, check: str | None = None, iters: int = 1, outer: Outer | None = None,
                  binds: tuple = (), dump_extra: tuple = (), restore_extra: tuple = ()) -> list["State"]:
        """Start, snapshot, then `iters` times C/R + snapshot + compare with the first; return the states."""
        pid = self.start(setup, outer=outer, binds=binds)
        states = [take(pid, check)]
        for _ in range(iters):
            pid = self.cr(pid, dump_extra, restore_extra, outer)
            states.append(take(pid, check))
            assert_same(states[0], states[-1])
        return states

    def close(self) -> None:
        """Kill every tree, keeper and outer namespace this case started."""
        from zdtm.snapshot import kill_tree
        for pid in self.trees:
            kill_tree(pid)
        for k in self.keepers:
            try:
                k.wait(5)
            except subprocess.TimeoutExpired:
                k.kill()
                k.wait()
            k.stdout.close()
        for o in self.outers:
            o.close()
        if self.sbs is not None:
            from zdtm import sbguard
            sbs, self.sbs = self.sbs, None
            try:
                found = sbs.leaked()
            finally:
                sbs.close()
            assert not found, "the kernel keeps what the test's trees made:\n" + sbguard.describe(found)


# --- snapshots -------------------------------------------------------------------------

def grab_fd(pid: int, fd: int) -> int:
    """Our own copy of fd `fd` of process `pid` (pidfd_getfd: the same open file description)."""
    from zdtm import fdkinds
    return fdkinds._copy(pid, fd)


_EVENTFD_ID = re.compile(rb"^eventfd-id:\s*\d+", re.M)


def fd_data(pid: int) -> list[str]:
    """What each fd of `pid` reads, through /proc/PID/fd/N: size, hash and the bytes at its offset
    for files, the names for directories, the device for device nodes."""
    out = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        link = f"/proc/{pid}/fd/{name}"
        try:
            st = os.stat(link)
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                pos = int(next(line for line in f if line.startswith("pos:")).split()[1])
            if stat.S_ISREG(st.st_mode):
                with open(link, "rb") as f:
                    data = f.read()
                if os.readlink(link).startswith("/proc/"):
                    # An eventfd's id in its fdinfo comes from a machine-wide allocator: another
                    # test's eventfd made meanwhile gives the restored one another (not state).
                    data = _EVENTFD_ID.sub(b"eventfd-id: N", data)
                out.append(f"{name}: file size={len(data)} sha256={hashlib.sha256(data).hexdigest()[:16]} "
                           f"at-pos={data[pos:pos + 16]!r}")
            elif stat.S_ISDIR(st.st_mode):
                out.append(f"{name}: dir {sorted(os.listdir(link))}")
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(f"{name}: dev {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
            else:
                out.append(f"{name}: mode {st.st_mode:o}")
        except FileNotFoundError:
            continue
        except OSError as e:
            out.append(f"{name}: unreadable ({errno.errorcode.get(e.errno, e.errno)})")   # (a gone process's /proc file)
    return out


@dataclass
class State:
    """A snapshot of a tree (zdtm.snapshot) plus what each process's fds read."""

    snap: object
    fd_data: list[list[str]]   # same order as snap.procs

    @property
    def root(self):
        """The snapshot's record of the tree's root process (it is the one whose pid we were given)."""
        return next(p for p in self.snap.procs if p.pid == self.pid)

    pid: int = 0


def take(pid: int, check: str | None = None) -> State:
    """Snapshot the tree rooted at host pid `pid` (and run `check` in its namespaces and root)."""
    from zdtm import snapshot
    snap = snapshot.take(pid, check=check, timeout=30, ignore_maps_on=("/usr", "/etc"))
    return State(snap=snap, fd_data=[fd_data(p.pid) for p in snap.procs], pid=pid)


def assert_same(before: State, after: State) -> None:
    """Fail with readable diffs unless the two states are equal up to renumbering."""
    from engine import topology
    from zdtm import snapshot
    problems = []
    a, b = before.snap.procs, after.snap.procs
    if len(a) == len(b):
        for p, q in zip(a, b):
            equal, report = topology.diff_report(p.mounts, q.mounts, names=("before", "after"))
            if not equal:
                problems.append(f"mount tree of process pid {p.pid} -> {q.pid} differs:\n{report}")
    equal, report = snapshot.compare(before.snap, after.snap)
    if not equal:
        problems.append(report)
    if before.fd_data != after.fd_data:
        for p, q, da, db in zip(a, b, before.fd_data, after.fd_data):
            if da != db:
                problems.append(f"fd data of process pid {p.pid} -> {q.pid} differs:\n" + "\n".join(
                    difflib.unified_diff(da, db, "before", "after", lineterm="")))
    assert not problems, "\n".join(problems)


@pytest.fixture
def case(tmp_path):
    """An EngineCase in the test's tmp_path; every tree it started is killed at teardown."""
    if os.geteuid() != 0:
        pytest.skip("engine tests need root (they create namespaces and mount inside them)")
    c = EngineCase(tmp_path)
    try:
        yield c
    finally:
        c.close()


# --- host checks -------------------------------------------------------------------------

def host_mountinfo() -> str:
    """The test process's own mountinfo (the host's, or whatever namespace the test runs in)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def mounts_added(before: str, after: str) -> list[str]:
    """Mounts in `after` that `before` lacked, as mountinfo lines (mount ids may be reused)."""
    from zdtm import leakguard
    return [f"{m.mnt_id} {m.mountpoint} {m.fstype}" for m in leakguard.leaked(before, after)]


def dumped_image(tmp_path_factory, setup: str, reason: str):
    """Generator for a module fixture: an image dumped once from a tree built by `setup` (the
    tree is killed and its case closed after the module); skips with `reason` when not root."""
    if os.geteuid() != 0:
        pytest.skip(reason)
    c = EngineCase(tmp_path_factory.mktemp("base"))
    try:
        pid = c.start(setup)
        images = c.new_images_dir()
        c.dump(pid, images)
        yield images
    finally:
        c.close()


def ext4_on_loop(tmp_path, name: str = "disk.img") -> tuple[str, str]:
    """A fresh 32 MiB ext4 image under tmp_path attached to a free loop device: (image path,
    /dev/loopN). The caller detaches it (losetup -d)."""
    img = str(tmp_path / name)
    subprocess.run(["truncate", "-s", "32M", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", img], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", img], capture_output=True, text=True,
                         check=True).stdout.strip()
    return img, dev


def copy_image(img: str, dest: str) -> str:
    """A copy of image directory `img` at DEST/img (symlinks kept as links)."""
    out = os.path.join(str(dest), "img")
    shutil.copytree(img, out, symlinks=True)
    return out


def load_manifest(img: str) -> dict:
    """The image's mntcr.json."""
    with open(os.path.join(img, "mntcr.json")) as f:
        return json.load(f)


def save_manifest(img: str, doc) -> None:
    """Overwrite the image's mntcr.json (tests forge images this way)."""
    with open(os.path.join(img, "mntcr.json"), "w") as f:
        json.dump(doc, f)


def tree_hash(path: str) -> str:
    """A hash of a directory tree: names, types, modes, sizes, link targets and contents (not times;
    FIFOs are not read)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, path)} {st.st_mode:o} {st.st_size}\n".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def procs_with(needle: str) -> list[int]:
    """Pids (other than ours) whose command line contains `needle`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    out.append(int(name))
        except OSError:
            pass
    return out


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if len(sys.argv) == 3 and sys.argv[1] == "keeper":
        sys.exit(keeper_main(json.loads(sys.argv[2])))
    sys.exit("usage: enginecase.py keeper CONFIG_JSON")


def mutate(doc: dict, muts, surface) -> None:
    """Apply hypothesis mutations `muts` ([(choice, action, value)]) to manifest `doc` in place:
    each picks a place among `surface(doc)` (paths of keys/indexes) and sets it to `value`,
    deletes it, or duplicates it (appended to its list, or the value made a pair). The hardening
    fuzzers' one way of changing an image."""
    from hypothesis import note
    for choice, action, value in muts:
        places = surface(doc)
        if not places:
            break
        path = places[choice % len(places)]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if action == "set":
            parent[path[-1]] = value
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[path[-1]])))
        else:
            parent[path[-1]] = [parent[path[-1]], parent[path[-1]]]
        note(f"{action} {path!r} <- {value!r}")


def at(doc, path: tuple):
    """The node at `path` (keys and indexes) in manifest `doc`."""
    node = doc
    for k in path:
        node = node[k]
    return node


def mutate_in_range(doc: dict, changes, surface, value, kinds=(int, str, bool)) -> None:
    """Apply hypothesis `changes` ([(choice, number, payload, near)]) to manifest `doc` in place:
    each picks a place among `surface(doc)` that holds a value of a type in `kinds` and sets it to
    `value(old, number, payload, near)` (one of the old value's own type: near it, or any). The
    hardening fuzzers' way of changing an image so that more of them pass the validator."""
    from hypothesis import note
    for choice, number, payload, near in changes:
        places = [p for p in surface(doc) if type(at(doc, p)) in kinds]
        if not places:
            break
        path = places[choice % len(places)]
        parent = at(doc, path[:-1])
        old = parent[path[-1]]
        parent[path[-1]] = value(old, number, payload, near)
        note(f"{path!r}: {old!r} -> {parent[path[-1]]!r}")


def near_or_text(old, number: int, text: str, near: bool):
    """`mutate_in_range`'s value of sessions 22 and 23: a flag flipped, a number moved by one or
    any, a text of the fuzzer's list."""
    if type(old) is bool:
        return not old
    if type(old) is int:
        return old + number % 3 - 1 if near else number
    return text


def private_dirty(pid: int, addr: int) -> str:
    """Private_Dirty (kB, as /proc/PID/smaps says it) of the mapping of `pid` that holds `addr`;
    "none" when no mapping does."""
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            words = line.split()
            if "-" in words[0] and len(words) >= 5:
                lo, hi = (int(x, 16) for x in words[0].split("-"))
                inside = lo <= addr < hi
            elif inside and words[0] == "Private_Dirty:":
                return words[1]
    return "none"
