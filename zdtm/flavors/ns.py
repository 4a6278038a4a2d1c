"""The `ns` flavor: a scenario in throwaway namespaces on the running kernel.

Process layout (nothing is mounted in the host's mount namespace):

    runner (pytest)
      └─ keeper: a forked child (zdtm/freshfork.py) running keeper_main(CONFIG)   (host namespaces;
                 unshare(CLONE_NEWPID))
           └─ init: pid 1 of a new PID namespace; unshares mount, UTS, IPC;
                    builds the container root, pivot_root, setsid, exec sh -c SETUP
                    ... which ends in `exec zdtm-hold` (zdtm/holder.py)

The container root is a tmpfs made inside the new mount namespace, holding
read-only binds of the host's /usr, /bin, /lib, /lib64, /sbin, /etc (those that
are directories; merged-/usr symlinks are copied as symlinks), declared
external to the backend under their names (usr, etc...); a fresh /proc of the
new PID namespace; a private /dev tmpfs with null, zero, full, random, urandom
and tty; /tmp, /mnt, /run, /root directories.

External slavery (scenario key `container: {root: slave, host_dirs: ...}`):
the keeper first unshares a mount namespace of its own ("outer", recursively
private, never the host's) and makes the outside peer groups there: a shared
tmpfs on WORKDIR/outer that becomes the container root, and shared self-binds
of the chosen host dirs. The container's namespace is a recursively *slave*
copy of the keeper's, so the root and those binds are slaves of groups that
live only in the keeper's namespace (the LXC picture: `/` is `master:N` of a
host group). The root is then declared external too (key `rootfs`, host path
WORKDIR/outer), and the backend's restore runs inside the keeper's namespace
(`NsFlavor.backend_for`), where those paths are the master groups' mounts: the
engine joins the restored root to its master through them. The keeper stays
alive until `stop()`, because its namespace holds the outside groups.

Mounts made outside the tree (`container: {outside: SH, binds: {MOUNTPOINT:
PATH}, externals: {MOUNTPOINT: PATH}}`, CRIU's mnt_ext_* tests): the keeper
makes the same namespace of its own and runs SH there with $OUT
(WORKDIR/outside); the container's init binds $OUT/PATH at each MOUNTPOINT of
`binds` in the new root before setup runs; each mount point of `externals` is
declared external (key `outside-MOUNT-POINT`, host path $OUT/PATH) and restored
inside the keeper's namespace, where that path is.

Setup's stdout/stderr are a pipe to the runner (its output is shown when setup
fails); the holder moves its own stdio to the container's /dev/null, and the
runner waits for the pipe to close, so no process of the tree points outside
its root when it is dumped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

from zdtm import cgroups, freshfork, holder, watchdog
from zdtm.flavors import External, Running, SetupError
from zdtm.lineread import read_line

HOST_DIRS = ("usr", "bin", "lib", "lib64", "sbin", "etc")
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
              ("tty", 5, 0))
# After the holder is ready, the setup pipe must close this fast (else a
# process started by setup still has it as stdout/stderr). Generous: a background
# process forked just before the holder's exec may wait seconds for a CPU on a
# loaded machine before its redirections close its copy.
_PIPE_GRACE = 15.0
SETUP_FAILED = 125


OUTER_DIR = "outer"          # WORKDIR/outer: the outside root's mount point in the keeper's namespace
OUTSIDE_DIR = "outside"      # WORKDIR/outside: $OUT of `container.outside`, in the keeper's namespace
ROOT_KEY = "rootfs"          # external key of the container root when it is a slave of the outside


def host_externals() -> list[External]:
    """The host directories the container root binds (directories only, not merged-/usr symlinks)."""
    out = []
    for name in HOST_DIRS:
        host = "/" + name
        if os.path.isdir(host) and not os.path.islink(host):
            out.append(External(key=name, mountpoint=host, host_path=host))
    return out


def _bound_dirs(names) -> list[str]:
    """The names among `names` that the container root binds here (directories, not symlinks)."""
    return [n for n in names if os.path.isdir("/" + n) and not os.path.islink("/" + n)]


# --- the keeper's outer namespace (external slavery) -------------------------

def _make_outer(outer_root: str | None, slave_dirs: list[str]) -> None:
    """In the keeper: a private mount namespace of its own holding the outside peer groups.

    Nothing here reaches the host: the namespace is unshared and made
    recursively private before anything is mounted.
    """
    from engine import kernel
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    if outer_root:
        kernel.mount("zdtm-outer", outer_root, "tmpfs", 0, "mode=0755")
        kernel.mount(None, outer_root, None, kernel.MS_SHARED)
    for name in slave_dirs:
        # A self-bind makes /NAME a mount root (MOVE_MOUNT_SET_GROUP needs one) with a group of its own.
        kernel.mount("/" + name, "/" + name, None, kernel.MS_BIND)
        kernel.mount(None, "/" + name, None, kernel.MS_SHARED)


def _run_outside(script: str, out_dir: str) -> bool:
    """In the keeper's own namespace: the scenario's `container.outside` script with $OUT; its output
    goes to the keeper's log (shown when it fails). Whether it succeeded."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "OUT": out_dir, "LANG": "C"}
    done = subprocess.run(["/bin/sh", "-ec", script], env=env, stdin=subprocess.DEVNULL, stdout=2, stderr=2,
                          check=False)
    if done.returncode:
        print(f"zdtm ns flavor: container.outside exited with status {done.returncode}", file=sys.stderr,
              flush=True)
    return done.returncode == 0


def _bind_outside(root: str, sources: list[tuple[str, int]]) -> None:
    """Bind each (mount point, O_PATH fd of its source under $OUT) into the container root at `root`
    (not recursively, as CRIU's tests do), making the mount point like its source (a directory or a
    file). Through the fds: the new root may be a tmpfs on /tmp, which hides $OUT when the work
    directory lies beneath /tmp."""
    from engine import kernel
    for mountpoint, fd in sources:
        target = os.path.join(root, mountpoint.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            open(target, "w").close()
        kernel.mount(f"/proc/self/fd/{fd}", target, None, kernel.MS_BIND)
        os.close(fd)


def _bind_users(workdir: str, users: list) -> bool:
    """In the keeper's own namespace: private copies of /etc/passwd, /etc/group, /etc/subuid and
    /etc/subgid that list `users` [name, uid, gid, [gids], [start, count] or None] (their
    supplementary groups made where the host has none; the range given in both subordinate id
    files) bound over the host's, for dump and restore (scenario key `container.users`)."""
    from engine import kernel
    files = {}
    for base in ("passwd", "group", "subuid", "subgid"):
        try:
            with open("/etc/" + base) as f:
                files[base] = f.read().splitlines()
        except FileNotFoundError:
            print(f"zdtm ns flavor: container.users: /etc/{base} does not exist on this machine: nothing to "
                  "bind the item's copy over (install the passwd package)", file=sys.stderr, flush=True)
            return False
    group = [line.split(":") for line in files["group"] if line.count(":") == 3]
    for name, uid, gid, gids, subids in users:
        files["passwd"].append(f"{name}:x:{uid}:{gid}::/nonexistent:/bin/sh")
        known = {int(g[2]) for g in group if g[2].isdigit()}
        group += [[f"zdtm{g}", "x", str(g), ""] for g in dict.fromkeys([gid, *gids]) if g not in known]
        for g in group:
            if g[2] in map(str, gids):
                g[3] = ",".join(filter(None, g[3].split(",") + [name]))
        if subids:
            for base in ("subuid", "subgid"):
                files[base].append(f"{name}:{subids[0]}:{subids[1]}")
    files["group"] = [":".join(g) for g in group]
    for base, lines in files.items():
        copy = os.path.join(workdir, f"etc-{base}")
        with open(copy, "w") as f:
            f.write("\n".join(lines) + "\n" if lines else "")
        kernel.mount(copy, "/etc/" + base, None, kernel.MS_BIND)
    return True


# --- inside: the container's init ------------------------------------------

def _build_root(root: str, fresh: bool = True) -> None:
    """Fill the container root at `root`: a new tmpfs there when `fresh`, else the mount already there."""
    from engine import kernel
    if fresh:
        kernel.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
    for name in HOST_DIRS:
        host, target = "/" + name, os.path.join(root, name)
        if os.path.islink(host):
            os.symlink(os.readlink(host), target)
        elif os.path.isdir(host):
            os.mkdir(target, 0o755)
            kernel.mount(host, target, None, kernel.MS_BIND)
            kernel.mount(None, target, None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY)
    os.mkdir(os.path.join(root, "proc"), 0o555)
    kernel.mount("proc", os.path.join(root, "proc"), "proc",
                 kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
    dev = os.path.join(root, "dev")
    os.mkdir(dev, 0o755)
    kernel.mount("tmpfs", dev, "tmpfs", kernel.MS_NOSUID, "mode=0755")
    for name, major, minor in _DEV_NODES:
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)  # mknod's mode is masked by the umask
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    for name, mode in (("tmp", 0o1777), ("mnt", 0o755), ("run", 0o755), ("root", 0o700)):
        os.mkdir(os.path.join(root, name))
        os.chmod(os.path.join(root, name), mode)
    holder.install(root)


def _container_init(cfg: dict, out_fd: int) -> None:
    """Pid 1 of the scenario: namespaces, container root, then exec the setup. Never returns."""
    from engine import kernel
    try:
        kernel.unshare(kernel.CLONE_NEWNS | kernel.CLONE_NEWUTS | kernel.CLONE_NEWIPC)
        outer_root = cfg.get("outer_root")
        # Slave, not private, when the keeper holds outside groups: their copies here become
        # slaves of them (everything else in the keeper's namespace is private, and stays so).
        kernel.mount(None, "/", None, kernel.MS_REC | (kernel.MS_SLAVE if cfg.get("outer") else kernel.MS_PRIVATE))
        socket.sethostname("zdtm")
        # the outside tmpfs (a slave here) or a tmpfs on /tmp, hidden by the new root in this namespace
        staging = outer_root or "/tmp"
        sources = [(mp, os.open(src, os.O_PATH | os.O_CLOEXEC)) for mp, src in cfg.get("outside_binds", ())]
        _build_root(staging, fresh=not outer_root)
        _bind_outside(staging, sources)
        os.chdir(staging)
        kernel.pivot_root(".", ".")
        kernel.umount2(".", kernel.MNT_DETACH)
        os.chdir("/")
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.closerange(3, 65536)
        os.umask(0o022)
        # Every signal at its default action, as a runtime starts a container: no ignore of the
        # runner's (Python's SIGPIPE and SIGXFSZ, a `nohup` around the run) reaches the tree.
        kernel.take_ignored_signals(0)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C"}
        if os.environ.get("ZDTM_SESSION"):
            env["ZDTM_SESSION"] = os.environ["ZDTM_SESSION"]  # the leak guard finds this session's holders
        env[cgroups.RUN_ENV] = cfg["run_id"]  # names the cgroups the run makes (removed at stop)
        os.execve("/bin/sh", ["sh", "-c", holder.PRELUDE + cfg["setup"]], env)
    except BaseException as e:  # noqa: BLE001 - any failure here is a setup error, reported on the pipe
        try:
            os.write(out_fd, f"zdtm ns flavor: building the container failed: {e}\n".encode())
        finally:
            os._exit(SETUP_FAILED)


def keeper_main(config_path: str) -> int:
    """The keeper: new PID namespace for its child (the container's init), report its pid, wait."""
    from engine import kernel
    with open(config_path) as f:
        cfg = json.load(f)
    out_fd = cfg["out_fd"]
    if cfg.get("outer"):
        _make_outer(cfg.get("outer_root"), cfg.get("slave_dirs", []))
        if cfg.get("users") and not _bind_users(cfg["workdir"], cfg["users"]):
            return SETUP_FAILED
        if cfg.get("outside") and not _run_outside(cfg["outside"], cfg["outside_dir"]):
            return SETUP_FAILED
    kernel.unshare(kernel.CLONE_NEWPID)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _container_init(cfg, out_fd)
    os.close(out_fd)  # only the container holds the setup pipe, so the runner sees it close
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
    if cfg.get("outer"):
        # The outside groups must outlive the dumped tree (restore joins them): hold the
        # namespace until the runner closes our stdin (stop(), or the runner died).
        while sys.stdin.buffer.read(4096):
            pass
    return 0


# --- outside: the runner's side --------------------------------------------

class _Keeper:
    """The keeper process and the setup output collected from its pipe."""

    def __init__(self, proc: freshfork.Child, out_r: int):
        self.proc = proc
        self.output = bytearray()
        self.closed = threading.Event()
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.outer = self.users = False
        self._thread = threading.Thread(target=self._pump, args=(out_r,), daemon=True)
        self._thread.start()

    def _pump(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                self.output += data
        finally:
            os.close(fd)
            self.closed.set()

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def read_line(self, deadline: float) -> str | None:
        """One line of the keeper's control output, or None at EOF or the deadline."""
        line, whole = read_line(self.proc.stdout.fileno(), deadline)
        return line.decode().strip() if whole else None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", errors="surrogateescape") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class NsFlavor:
    """Throwaway mount, PID, UTS and IPC namespaces with a container root, on this kernel.

    Both a Flavor (`run`: the item runs here, in this process) and the Place
    that zdtm.item.run drives, here and inside a VM guest.
    """

    name = "ns"

    def unavailable(self, spec=None) -> str | None:
        """None as root, else why not."""
        if os.geteuid() != 0:
            return "the ns flavor needs root (it creates namespaces and mounts inside them)"
        return None

    def run(self, spec, workdir: str):
        """Run the item here (zdtm.item.run with this place); its Outcome."""
        from zdtm import item
        # (mntcr's restores here: what the kernel keeps of criu's is criu's)
        return item.run(spec, self, workdir, watch_sbs=spec.backend == "mntcr")

    def close(self) -> None:
        """Nothing outlives an item here."""

    def start(self, scenario, workdir: str) -> Running:
        os.makedirs(workdir, exist_ok=True)
        deadline = time.monotonic() + scenario.timeout
        out_r, out_w = os.pipe()
        config = os.path.join(workdir, "ns-config.json")
        cfg = {"setup": scenario.setup, "out_fd": out_w, "run_id": cgroups.new_tag()}
        externals = host_externals()
        container = getattr(scenario, "container", None)
        outer = bool(container and container.outer)
        if outer:
            cfg.update(outer=True, slave_dirs=_bound_dirs(container.slave_host_dirs))
            if container.users:
                cfg.update(users=container.users, workdir=os.path.abspath(workdir))
            if container.root == "slave":
                cfg["outer_root"] = os.path.join(os.path.abspath(workdir), OUTER_DIR)
                os.makedirs(cfg["outer_root"], exist_ok=True)
                externals.insert(0, External(key=ROOT_KEY, mountpoint="/", host_path=cfg["outer_root"]))
            if container.outside.strip():
                out = cfg["outside_dir"] = os.path.join(os.path.abspath(workdir), OUTSIDE_DIR)
                os.makedirs(out, exist_ok=True)
                cfg["outside"] = container.outside
                cfg["outside_binds"] = [(mp, os.path.join(out, rel)) for mp, rel in container.binds]
                externals += [External(key="outside" + mp.replace("/", "-"), mountpoint=mp,
                                       host_path=os.path.join(out, rel)) for mp, rel in container.externals]
        with open(config, "w") as f:
            json.dump(cfg, f)
        log = os.open(os.path.join(workdir, "keeper.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                      0o644)
        try:
            # With outside groups the keeper holds its namespace until its stdin closes. Forked
            # (zdtm/freshfork.py), not `python -m zdtm.flavors.ns`: a fresh interpreter and its
            # imports cost 2-3 s of each item's setup in a TCG guest.
            null = None if outer else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                shown = [sys.executable, "-S", "-m", "zdtm.flavors.ns", config]   # ps and the leak guard see it
                proc = freshfork.spawn(lambda: keeper_main(config), shown, freshfork.project_env(_PROJECT_ROOT),
                                       stdin=null, stdout=None, stderr=log, cwd=_PROJECT_ROOT, pass_fds=(out_w,))
            finally:
                if null is not None:
                    os.close(null)
        finally:
            os.close(out_w)
            os.close(log)
        keeper = _Keeper(proc, out_r)
        keeper.outer = outer
        keeper.users = bool(outer and container.users)
        keeper.run_id = cfg["run_id"]
        running = Running(pid=0, externals=externals, handle=keeper)
        try:
            line = keeper.read_line(deadline)
            if not line or not line.startswith("pid "):
                proc.kill()
                proc.wait()
                with open(os.path.join(workdir, "keeper.log"), errors="replace") as f:
                    err = f.read().strip()
                raise SetupError(f"ns flavor: the keeper did not start the container: {err or line or 'no output'}")
            running.pid = keeper.pid = int(line.split()[1])
            watchdog.guard(running.pid)
            self._wait_ready(scenario, keeper, deadline)
        except BaseException as e:
            self.stop(running)
            running.setup_output = keeper.text()
            if running.leaks and isinstance(e, SetupError):
                raise SetupError("\n".join([str(e), *running.leaks])) from None
            raise
        running.setup_output = keeper.text()
        return running

    def _wait_ready(self, scenario, keeper: _Keeper, deadline: float) -> None:
        pid = keeper.pid
        while not holder.is_ready(pid):
            if not _alive(pid):
                keeper.closed.wait(2)
                code = keeper.wait(5)
                status = keeper.read_line(time.monotonic() + 1)
                code = status.split()[1] if status and status.startswith("exit ") else code
                raise SetupError(self._setup_failed(f"setup exited with status {code} before `exec zdtm-hold`",
                                                    keeper))
            if time.monotonic() > deadline:
                raise SetupError(self._setup_failed(
                    f"setup did not reach `exec zdtm-hold` within {scenario.timeout:g}s", keeper))
            time.sleep(0.02)
        if not keeper.closed.wait(min(_PIPE_GRACE, max(0.1, deadline - time.monotonic()))):
            raise SetupError(self._setup_failed(
                "a process started by setup still has setup's stdout/stderr (a pipe to the runner) open; "
                "redirect background processes' stdio, e.g. `cmd </dev/null >/dev/null 2>&1 &`", keeper))

    @staticmethod
    def _setup_failed(message: str, keeper: _Keeper) -> str:
        out = keeper.text().rstrip()
        return message + (":\n" + out if out else " (no output)")

    def backend_for(self, running: Running, backend):
        """The backend to use on `running`: restore inside the keeper's namespace when it holds outside groups.

        The restored mounts must join master groups that exist only there, and
        the engine reaches them through the externals' host paths in the
        namespace its restore starts in. With `container.users` the dump runs
        there too (it reads the users' groups as restore does).
        """
        keeper = running.handle
        if keeper is None or not keeper.outer:
            return backend
        return RestoreInNamespace(backend, keeper.proc.pid, dump=bool(keeper.users))

    def forget(self, running: Running) -> None:
        keeper = running.handle
        if keeper is None or keeper.outer:
            return  # the keeper reaped the tree's init itself and holds the outside groups until stop()
        if keeper.wait(10) is None:
            keeper.proc.kill()
            keeper.proc.wait()

    def stop(self, running: Running) -> None:
        from zdtm.snapshot import kill_tree
        if running.pid:
            kill_tree(running.pid)
        keeper = running.handle
        if keeper is not None:
            if keeper.proc.stdin is not None:
                keeper.proc.stdin.close()  # an outer keeper lets its namespace go
            if keeper.wait(10) is None:
                keeper.proc.kill()
                keeper.proc.wait()
            keeper.proc.stdout.close()
            # the tree is gone: the cgroups its runtimes made are empty, or emptying
            left = cgroups.remove(keeper.run_id)
            if left:
                running.leaks.append(cgroups.describe(left))


class RestoreInNamespace:
    """A backend whose restore (and with `dump`, its dump) runs in the mount namespace of process
    `ns_pid`.

    A forked child enters the namespace (setns needs a single-threaded
    caller) and calls the wrapped backend's verb there, so the engine's
    verb starts in that namespace. BackendError comes back as such.
    """

    def __init__(self, inner, ns_pid: int, dump: bool = False):
        self.inner = inner
        self.ns_pid = ns_pid
        self.name = inner.name
        self._dump_there = dump

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def dump(self, pid, images_dir, externals, ctx):
        if not self._dump_there:
            return self.inner.dump(pid, images_dir, externals, ctx)
        return self._in_ns("dump", lambda: self.inner.dump(pid, images_dir, externals, ctx), ctx)

    def restore(self, images_dir, externals, ctx):
        return self._in_ns("restore", lambda: self.inner.restore(images_dir, externals, ctx), ctx)

    def _in_ns(self, stage: str, call, ctx):
        """call() (the wrapped backend's `stage`) by a forked child in the namespace; its result."""
        from engine import forkrun, kernel
        from zdtm.backends import BackendError

        before = len(ctx.cleanups)

        def in_ns():
            fd = os.open(f"/proc/{self.ns_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            try:
                kernel.setns(fd, kernel.CLONE_NEWNS)
            finally:
                os.close(fd)
            try:
                out = call()
            except BackendError as e:
                return ("error", e.stage, str(e), e.log)
            if len(ctx.cleanups) > before:
                # they were registered in this child and would be lost with it
                raise RuntimeError(f"backend {self.name} registered cleanups inside the keeper's namespace")
            return ("ok", out)

        try:
            result = forkrun.run(in_ns)
        except (OSError, forkrun.ChildError) as e:
            raise BackendError(stage, f"{stage} in the keeper's mount namespace (pid {self.ns_pid}): {e}") \
                from None
        if result[0] == "error":
            raise BackendError(*result[1:])
        return result[1]


FLAVOR = NsFlavor()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(keeper_main(sys.argv[1]))
