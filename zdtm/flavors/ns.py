"""The `ns` flavor: a scenario in throwaway namespaces on the running kernel.

Process layout (nothing is mounted in the host's mount namespace):

    runner (pytest)
      └─ keeper: python -m zdtm.flavors.ns CONFIG   (host namespaces; unshare(CLONE_NEWPID))
           └─ init: pid 1 of a new PID namespace; unshares mount, UTS, IPC;
                    builds the container root, pivot_root, setsid, exec sh -c SETUP
                    ... which ends in `exec zdtm-hold` (zdtm/holder.py)

The container root is a tmpfs made inside the new mount namespace, holding
read-only binds of the host's /usr, /bin, /lib, /lib64, /sbin, /etc (those that
are directories; merged-/usr symlinks are copied as symlinks), declared
external to the backend under their names (usr, etc...); a fresh /proc of the
new PID namespace; a private /dev tmpfs with null, zero, full, random, urandom
and tty; /tmp, /mnt, /run, /root directories.

Setup's stdout/stderr are a pipe to the runner (its output is shown when setup
fails); the holder moves its own stdio to the container's /dev/null, and the
runner waits for the pipe to close, so no process of the tree points outside
its root when it is dumped.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

from zdtm import holder
from zdtm.flavors import External, Flavor, Running, SetupError

HOST_DIRS = ("usr", "bin", "lib", "lib64", "sbin", "etc")
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
              ("tty", 5, 0))
# After the holder is ready, the setup pipe must close this fast (else a
# process started by setup still has it as stdout/stderr).
_PIPE_GRACE = 3.0
SETUP_FAILED = 125


def host_externals() -> list[External]:
    """The host directories the container root binds (directories only, not merged-/usr symlinks)."""
    out = []
    for name in HOST_DIRS:
        host = "/" + name
        if os.path.isdir(host) and not os.path.islink(host):
            out.append(External(key=name, mountpoint=host, host_path=host))
    return out


# --- inside: the container's init ------------------------------------------

def _build_root(root: str) -> None:
    from engine import kernel
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
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
        socket.sethostname("zdtm")
        staging = "/tmp"  # hidden by the new root only in this private namespace
        _build_root(staging)
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
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C"}
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
    kernel.unshare(kernel.CLONE_NEWPID)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _container_init(cfg, out_fd)
    os.close(out_fd)  # only the container holds the setup pipe, so the runner sees it close
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


# --- outside: the runner's side --------------------------------------------

class _Keeper:
    """The keeper process and the setup output collected from its pipe."""

    def __init__(self, proc: subprocess.Popen, out_r: int):
        self.proc = proc
        self.output = bytearray()
        self.closed = threading.Event()
        self.pid: int | None = None
        self.exit_code: int | None = None
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
        line = b""
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            ch = os.read(fd, 1)
            if not ch:
                return None
            line += ch
        return line.decode().strip()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class NsFlavor(Flavor):
    """Throwaway mount, PID, UTS and IPC namespaces with a container root, on this kernel."""

    name = "ns"

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "the ns flavor needs root (it creates namespaces and mounts inside them)"
        return None

    def start(self, scenario, workdir: str) -> Running:
        os.makedirs(workdir, exist_ok=True)
        deadline = time.monotonic() + scenario.timeout
        out_r, out_w = os.pipe()
        config = os.path.join(workdir, "ns-config.json")
        with open(config, "w") as f:
            json.dump({"setup": scenario.setup, "out_fd": out_w}, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = open(os.path.join(workdir, "keeper.log"), "wb")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "zdtm.flavors.ns", config], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=log, pass_fds=(out_w,), env=env,
                                    cwd=_PROJECT_ROOT)
        finally:
            os.close(out_w)
            log.close()
        keeper = _Keeper(proc, out_r)
        running = Running(pid=0, externals=host_externals(), handle=keeper)
        try:
            line = keeper.read_line(deadline)
            if not line or not line.startswith("pid "):
                proc.kill()
                proc.wait()
                with open(os.path.join(workdir, "keeper.log"), errors="replace") as f:
                    err = f.read().strip()
                raise SetupError(f"ns flavor: the keeper did not start the container: {err or line or 'no output'}")
            running.pid = keeper.pid = int(line.split()[1])
            self._wait_ready(scenario, keeper, deadline)
        except BaseException:
            self.stop(running)
            running.setup_output = keeper.text()
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

    def forget(self, running: Running) -> None:
        keeper = running.handle
        if keeper is not None and keeper.wait(10) is None:
            keeper.proc.kill()
            keeper.proc.wait()

    def stop(self, running: Running) -> None:
        from zdtm.snapshot import kill_tree
        if running.pid:
            kill_tree(running.pid)
        keeper = running.handle
        if keeper is not None:
            if keeper.wait(10) is None:
                keeper.proc.kill()
                keeper.proc.wait()
            keeper.proc.stdout.close()


FLAVOR = NsFlavor()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(keeper_main(sys.argv[1]))
