"""The host daemons the vagrant provider needs: dbus, virtlogd and libvirtd, started when absent.

Machines like the CI's run no init system: nothing starts libvirtd. ensure_running()
starts whichever daemon does not answer and returns what it started, so that
the caller (a test module, the benchmark) can stop exactly those with stop().
A VagrantVM only calls ensure_running(): other VMs may still use the daemons.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
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


def ensure_running(timeout: float = 15.0) -> list[str]:
    """Start dbus, virtlogd and libvirtd where their socket does not answer; the names started."""
    reason = missing_tools()
    if reason:
        raise VMError(reason)
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
    """Stop the daemons ensure_running() started (by the pid in their pid file), libvirtd first."""
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
