"""A scenario's external server: daemons outside the dumped tree that its mounts are clients of.

A scenario's `server` (the --fstype battery's nfs recipe: the kernel NFS server) is
sh that the item runner starts before the container, in a network and mount namespace
of its own, and stops after the tree is gone:

    item runner (zdtm.item.run)
      ├─ server holder: python -m zdtm.fsserver CONFIG   (new net + mount namespace, lo up,
      │    └─ sh -c START, then what it started       child subreaper: daemons stay its own)
      └─ keeper, container, dump, restore             (in the server's network namespace)

The runner joins the server's network namespace for the item (and returns to its own
after), so the container, the dump and the restore share it: the tree's mounts reach the
server on the loopback address, the engine sees that namespace as the one it runs in
(restore makes the client superblocks there again, from the same server), and no process
or mount of the server is part of the tree. The server's mounts (an nfsd control
filesystem, the exported tmpfs) live in its own mount namespace, never the host's.

START runs with SERVER set to an empty directory of the item's workdir (a mount point
for exports); it starts its daemons in the background and exits 0 once they serve.
STOP runs when the runner closes the holder's stdin (the item is over, or the runner
died); then every process the server started is killed and reaped.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from zdtm.lineread import read_line

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PR_SET_CHILD_SUBREAPER = 36
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "HOME": "/root"}


# --- the holder (python -m zdtm.fsserver CONFIG) ----------------------------------

def _loopback_up() -> None:
    """Bring `lo` of this (new) network namespace up: the server listens on 127.0.0.1."""
    with socket.socket() as s:
        got = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))
        flags = struct.unpack("16sH", got[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _sh(script: str, cfg: dict, timeout: float) -> int:
    """Run `script` with SERVER set, its output appended to the server log; its exit status."""
    with open(cfg["log"], "ab") as log:
        proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=cfg["dir"], env={**_ENV, "SERVER": cfg["dir"]})
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log.write(f"zdtm server: timed out after {timeout:g}s\n".encode())
            return 124


def _children() -> set[int]:
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out |= {int(x) for x in f.read().split()}
    return out


def _end_all() -> None:
    """Kill every process the server left (daemons are ours: we are their subreaper) and reap them."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + grace
        for pid in _children():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        while time.monotonic() < deadline:
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                return
            time.sleep(0.05)


def holder_main(config_path: str) -> int:
    """The holder: new namespaces, START, "ready" on stdout, wait for stdin to close, STOP, end all."""
    from engine import kernel
    with open(config_path) as f:
        cfg = json.load(f)
    kernel.unshare(kernel.CLONE_NEWNS | kernel.CLONE_NEWNET)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)   # nothing reaches the host
    _loopback_up()
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    status = _sh(cfg["start"], cfg, cfg["timeout"])
    if status == 0:
        print("ready", flush=True)
        while sys.stdin.buffer.read(4096):
            pass
    else:
        print(f"failed {status}", flush=True)
    _sh(cfg["stop"], cfg, cfg["timeout"])
    _end_all()
    return 0


# --- the runner's side ------------------------------------------------------------

class ServerError(Exception):
    """The server did not start; the message is one line plus the server's log."""


class Server:
    """A started server holder; `join()` moves the calling thread into its network namespace."""

    def __init__(self, proc: subprocess.Popen, log: str):
        self.proc = proc
        self.log = log
        self._own_net: int | None = None

    @classmethod
    def start(cls, start: str, stop: str, workdir: str, timeout: float) -> "Server":
        """Start the holder for (START, STOP) with its files in WORKDIR/server; ServerError if START fails."""
        sdir = os.path.join(os.path.abspath(workdir), "server")
        os.makedirs(sdir, exist_ok=True)
        log = os.path.join(os.path.abspath(workdir), "server.log")
        config = os.path.join(os.path.abspath(workdir), "server-config.json")
        with open(config, "w") as f:
            json.dump({"start": start, "stop": stop, "dir": sdir, "log": log, "timeout": timeout}, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "zdtm.fsserver", config], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, env=env, cwd=_PROJECT_ROOT)
        server = cls(proc, log)
        line = server._read_line(time.monotonic() + timeout)
        if line != "ready":
            server.stop()
            why = "timed out" if line is None else f"exited ({line})"
            raise ServerError(f"the scenario's server did not start: {why}:\n{server.output()}")
        return server

    def _read_line(self, deadline: float) -> str | None:
        line, whole = read_line(self.proc.stdout.fileno(), deadline)
        if whole is None:
            return None
        if not whole:
            return line.decode(errors="replace").strip() or "no output"
        return line.decode().strip()

    def output(self) -> str:
        """The server's log (START's and STOP's output, the holder's errors)."""
        try:
            with open(self.log, errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    def join(self) -> None:
        """Move this thread (and what it starts from now on) into the server's network namespace."""
        from engine import kernel
        self._own_net = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(f"/proc/{self.proc.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            kernel.setns(fd, kernel.CLONE_NEWNET)
        finally:
            os.close(fd)

    def leave(self) -> None:
        """Back into the network namespace this thread had before `join`."""
        from engine import kernel
        if self._own_net is not None:
            try:
                kernel.setns(self._own_net, kernel.CLONE_NEWNET)
            finally:
                os.close(self._own_net)
                self._own_net = None

    def stop(self) -> None:
        """STOP, then the server's processes and namespaces go (the holder exits)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(holder_main(sys.argv[1]))
