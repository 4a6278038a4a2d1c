"""The host daemons the vagrant provider needs: dbus, virtlogd and libvirtd, started when absent.

Machines like the CI's run no init system: nothing starts libvirtd. ensure_running()
starts whichever daemon does not answer and returns what it started, so that
the caller (a test module, the benchmark) can stop exactly those with stop().
A VagrantVM only calls ensure_running(): other VMs may still use the daemons.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from vm.errors import VMError
from vm.progress import say

# (name, control socket, pid file, argv)
DAEMONS = (
    ("dbus", "/run/dbus/system_bus_socket", "/run/dbus/pid", ["dbus-daemon", "--system", "--fork"]),
    ("virtlogd", "/run/libvirt/virtlogd-sock", "/run/virtlogd.pid", ["virtlogd", "--daemon"]),
    ("libvirtd", "/run/libvirt/libvirt-sock", "/run/libvirtd.pid", ["libvirtd", "--daemon"]),
)


KVM = "/dev/kvm"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def _libvirtd_argv() -> list[str]:
    """libvirtd, started where /dev/kvm is shadowed when KVM is not used (the default here).

    libvirtd probes qemu's capabilities as root (KVM works) but checks /dev/kvm
    against the qemu user (libvirt-qemu; no udev here gives it the kvm group):
    the mismatch invalidates the capability cache on every lookup, and each
    re-probe costs ~2 s, so one `vagrant up` took ~110 s. In a private mount
    namespace of its own, libvirtd sees a root-only empty file at /dev/kvm:
    both checks agree that KVM is absent, the cache holds, and the domains
    (driver qemu = TCG) are unaffected. The host's /dev and /etc are not
    touched: the shadowing and libvirtd's copy of qemu.conf (without per-domain
    /dev namespaces) exist in that namespace only.
    """
    if not os.path.exists(KVM) or os.environ.get("MNTCR_VM_ACCEL") == "kvm":
        return ["libvirtd", "--daemon"]
    from vm import cache
    d = cache.sub("libvirt")
    hide = d / "no-kvm"
    hide.touch()
    hide.chmod(0)
    # libvirt would rebuild /dev per domain and fail to carry the shadowing mount over
    # (EINVAL moving a file mount): its copy of qemu.conf turns that hardening off
    conf = d / "qemu.conf"
    base = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    conf.write_text(base + "\n# mntcr: /dev/kvm is shadowed in libvirtd's namespace\nnamespaces = []\n")
    conf.chmod(0o600)
    binds = f"mount --bind {hide} {KVM}; "
    if QEMU_CONF.exists():
        binds += f"mount --bind {conf} {QEMU_CONF}; "
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec", binds + "exec libvirtd --daemon"]


def _answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def missing_tools() -> str | None:
    """Why the daemons cannot be started here (a missing binary), or None."""
    for name, _sock, _pid, argv in DAEMONS:
        if not shutil.which(argv[0]):
            return f"{argv[0]} is not installed (apt-get install --no-install-recommends libvirt-daemon-system)"
    return None


# Who uses daemons mntcr started: one file per process (user-PID), one per daemon mntcr started
# (started-NAME). Several processes (xdist workers, a benchmark next to a test run) share the
# daemons; the last one out stops them, never one while another's machines still need them.
USERS_DIR = Path("/run/mntcr-libvirt")


@contextmanager
def _users_locked():
    USERS_DIR.mkdir(parents=True, exist_ok=True)
    with open(USERS_DIR / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _other_users() -> list[int]:
    """Live processes other than this one registered as users; dead ones' files are removed."""
    live = []
    for f in USERS_DIR.glob("user-*"):
        try:
            pid = int(f.name[len("user-"):])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            live.append(pid)
        else:
            f.unlink(missing_ok=True)
    return live


def ensure_running(timeout: float = 15.0) -> list[str]:
    """Start dbus, virtlogd and libvirtd where their socket does not answer; the names started.

    The calling process is registered as a user of the daemons until stop().
    """
    reason = missing_tools()
    if reason:
        raise VMError(reason)
    if os.geteuid() != 0:
        return _ensure_running(timeout)
    with _users_locked():
        started = _ensure_running(timeout)
        for name in started:
            (USERS_DIR / f"started-{name}").touch()
        (USERS_DIR / f"user-{os.getpid()}").touch()
    return started


def _ensure_running(timeout: float) -> list[str]:
    started = []
    for name, sock, pidfile, argv in DAEMONS:
        if _answers(sock):
            continue
        if os.geteuid() != 0:
            raise VMError(f"{name} is not running and only root can start it")
        Path(sock).parent.mkdir(parents=True, exist_ok=True)
        if name == "dbus":
            # a stale socket/pid file from a dead daemon makes dbus-daemon refuse to start
            for stale in (sock, pidfile):
                Path(stale).unlink(missing_ok=True)
        say(f"starting {name} (not running)")
        if name == "libvirtd":
            argv = _libvirtd_argv()
        p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise VMError(f"starting {name} failed (exit {p.returncode}): "
                          f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}")
        deadline = time.monotonic() + timeout
        while not _answers(sock):
            if time.monotonic() > deadline:
                raise VMError(f"{name} started but {sock} does not answer within {timeout:.0f}s")
            time.sleep(0.1)
        started.append(name)
    return started


def stop(names: list[str]) -> None:
    """Unregister this process; when no other user is left, stop the daemons mntcr started, libvirtd first.

    `names` (what this process's ensure_running() started) are stopped too when
    no one else uses them, which is the whole of it for a single process.
    """
    if os.geteuid() != 0 or not USERS_DIR.is_dir():
        _stop(names)
        return
    with _users_locked():
        (USERS_DIR / f"user-{os.getpid()}").unlink(missing_ok=True)
        others = _other_users()
        if others:
            if names:
                say(f"leaving {', '.join(names)} running: still used by pid {', '.join(map(str, others))}")
            return
        markers = {f.name[len("started-"):] for f in USERS_DIR.glob("started-*")}
        _stop(sorted(markers | set(names)))
        for name in markers:
            (USERS_DIR / f"started-{name}").unlink(missing_ok=True)


def _stop(names: list[str]) -> None:
    for name, sock, pidfile, _argv in reversed(DAEMONS):
        if name not in names:
            continue
        try:
            pid = int(Path(pidfile).read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
