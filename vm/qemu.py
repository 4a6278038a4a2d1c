"""The fast path: boot a cached kernel directly in qemu and run commands inside.

    with QemuVM(kernel, results_dir) as vm:
        r = vm.run(["sh", "-c", "echo hi; exit 3"])   # r.status == 3, r.stdout == "hi\n"

The guest sees the host's / read-only over 9p (under a RAM overlay, so it may
write anywhere without touching the host) and `results_dir` writable at the
same path: that directory is the only place the VM can write to on the host.
Commands reach the guest's agent (vm/guest/stage2) over a virtio serial
control port; their output comes back through files in results_dir/.mntcr-vm/.
A VM that panics, powers off or stops answering raises VMError with the last
console lines instead of hanging.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vm import accel as accel_mod
from vm import guestclock
from vm import initramfs
from vm.errors import VMError
from vm.kernels import Kernel
from vm.progress import say

# The checkout the guest must see (it may lie under /tmp, which the guest mounts afresh).
_PROJECT = Path(__file__).resolve().parent.parent

QEMU = "qemu-system-x86_64"
JOBS = ".mntcr-vm"


@dataclass
class Result:
    """What a command in the VM produced."""

    status: int
    stdout: str
    stderr: str
    seconds: float


# Directories the guest mounts afresh (tmpfs): host files there are hidden unless kept (keep_paths).
GUEST_PRIVATE = ("/tmp", "/run")


def unavailable() -> str | None:
    """Why the fast path cannot run here (one line), or None. Boots nothing."""
    if not shutil.which(QEMU):
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if not initramfs.BUSYBOX.exists():
        return f"{initramfs.BUSYBOX} is missing (apt-get install busybox-static)"
    for p in keep_paths():
        if any(c.isspace() or c in "'\"\\$`:" for c in p):
            return f"{p} (the interpreter or the project) has whitespace, quotes or ':' in its path; the VM cannot keep it"
    return None


def _under_private(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in GUEST_PRIVATE)


def keep_paths() -> list[str]:
    """Host paths the guest must see that lie where it mounts a fresh tmpfs: the project, the
    interpreter, the cache.

    The guest runs the host's own interpreter (guest_python) from the host's /
    over 9p; a virtualenv or interpreter under /tmp or /run would be hidden by
    the guest's own tmpfs there, so stage 1 binds these back over it. So is
    MNTCR_CACHE (the kernel's modules, bound by stage 1 in any case, and what a
    scenario's backend takes from it, such as the criu userland).
    """
    import sys
    from vm import cache
    wanted = {str(_PROJECT), sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable)), str(cache.cache_dir())}
    paths = sorted(os.path.realpath(p) for p in wanted if p)
    paths = [p for p in paths if _under_private(p)]
    # a path inside another kept path comes with it
    return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]


def _die_with_parent() -> None:
    """In the qemu child before exec: SIGKILL it when the process that started it dies.

    An interrupted pytest kills its xdist workers without their atexit hooks;
    qemu runs in a session of its own (so a ^C meant for pytest does not reach
    it) and would otherwise keep running with nobody to close it.
    """
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _check_path(p: Path, what: str) -> None:
    # Paths travel on the kernel command line and through sh: keep them plain.
    if any(c.isspace() or c in "'\"\\$`" for c in str(p)):
        raise VMError(f"{what} path {p} contains whitespace or quotes; the VM cannot use it")


class QemuVM:
    """One throwaway VM; start() boots it, run() runs commands, close() destroys it."""

    def __init__(self, kernel: Kernel, results_dir: Path | str, *, memory_mb: int = 1024,
                 accel: str | None = None, extra_cmdline: str = "", boot_timeout: float = 120.0,
                 modules: tuple[str, ...] = initramfs.DEFAULT_MODULES, init: str | None = None):
        self.kernel = kernel
        self.results = Path(results_dir).resolve()
        _check_path(self.results, "results")
        _check_path(kernel.moddir, "modules")
        self.memory_mb = memory_mb
        self.accel_choice = accel     # --vm-accel; None: MNTCR_VM_ACCEL, else the KVM probe (at start)
        self.accel = accel_mod.forced(accel) or ""
        self.accel_why = ""
        self.extra_cmdline = extra_cmdline
        self.boot_timeout = boot_timeout
        self.modules = modules
        self.init = init
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._buf = b""
        self._seq = 0
        self.tmp: Path | None = None
        self.boot_seconds = 0.0
        self.guest_release = ""

    def guest_python(self) -> str:
        """The interpreter the guest runs the runner with: this one (the guest sees the host's /)."""
        import sys
        return sys.executable

    # --- lifecycle -----------------------------------------------------------

    def argv(self, initrd: Path) -> list[str]:
        """The qemu command line (without the binary's path resolution)."""
        assert self.tmp is not None
        # acpi=ht: ACPI's tables are read (the HPET among them) but its interpreter does not run
        # (no device enumeration: most of the ~1-1.5 s that full ACPI adds to a 5-6 s TCG boot).
        # Not acpi=off: without the HPET the guest cannot calibrate its TSC and falls back to the
        # refined-jiffies clock, which under TCG on a loaded host loses ticks (measured: 31 guest
        # seconds in 63 real ones, benchmarks/HISTORY.md), so every timeout, sleep and phase timing
        # in the guest was off by that much. The guest ends with `reboot -f`, which -no-reboot
        # turns into qemu's exit. cryptomgr.notests: no self-tests of every crypto algorithm at boot.
        cmdline = (f"console=ttyS0 quiet panic=-1 oops=panic mitigations=off {guestclock.cmdline(self.accel)} acpi=ht "
                   f"cryptomgr.notests "
                   f"mntcr.results={self.results} mntcr.moddir={self.kernel.moddir} "
                   f"mntcr.kver={self.kernel.version}")
        keep = keep_paths()
        if keep:
            cmdline += " mntcr.keep=" + ":".join(keep)
        if self.init:
            cmdline += f" rdinit={self.init}"
        if self.extra_cmdline:
            cmdline += " " + self.extra_cmdline
        # -cpu qemu64 under TCG: ~0.4 s less CPU to result than -cpu max (fewer features to emulate
        # and probe); the userland only needs baseline x86-64. q35, 512 MB, no virtio-rng: no gain.
        return [
            QEMU, "-accel", self.accel, "-machine", "pc", "-cpu", "qemu64" if self.accel == "tcg" else "host",
            "-smp", "1", "-m", str(self.memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.kernel.boot_image), "-initrd", str(initrd), "-append", cmdline,
            "-chardev", f"file,id=con,path={self.tmp / 'console.log'}", "-serial", "chardev:con",
            # host / read-only: the VM must not write to the host outside results
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=results,path={self.results},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ctl,path={self.tmp / 'ctl.sock'},server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=mntcr.ctl",
            "-device", "virtio-rng-pci",
        ]

    def start(self) -> "QemuVM":
        """Boot the VM and wait until its agent is ready (VMError on panic or timeout)."""
        if not shutil.which(QEMU):
            raise VMError(f"{QEMU} not found: apt-get install qemu-system-x86")
        initrd = initramfs.ensure(self.kernel, self.modules)
        self.accel, self.accel_why = accel_mod.choose(self.kernel.boot_image, initrd, self.accel_choice)
        self.results.mkdir(parents=True, exist_ok=True)
        (self.results / JOBS).mkdir(exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="mntcr-vm-"))
        say(f"booting kernel {self.kernel.name} ({self.kernel.version}) with qemu -accel {self.accel} "
            f"({self.accel_why})")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(initrd), stdin=subprocess.DEVNULL,
                                     stdout=open(self.tmp / "qemu.log", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = t0 + self.boot_timeout
        self.sock = self._connect(deadline)
        line = self._readline(deadline, "boot")
        if not line.startswith("ready"):
            self._fail(f"unexpected greeting from the VM agent: {line!r}")
        self.guest_release = line.split(" ", 1)[1] if " " in line else ""
        self.boot_seconds = time.monotonic() - t0
        say(f"kernel {self.kernel.name} up in {self.boot_seconds:.1f}s")
        return self

    def _connect(self, deadline: float) -> socket.socket:
        path = str(self.tmp / "ctl.sock")
        while True:
            self._check_alive("boot")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
            if time.monotonic() > deadline:
                self._fail(f"qemu did not open its control socket within {self.boot_timeout:.0f}s")
            time.sleep(0.02)

    def close(self) -> None:
        """Power the VM off (kill it if it does not go) and remove its temporary files."""
        if self.proc and self.proc.poll() is None:
            try:
                if self.sock:
                    self.sock.sendall(b"quit\n")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._kill()
        if self.sock:
            self.sock.close()
            self.sock = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        shutil.rmtree(self.results / JOBS, ignore_errors=True)

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "QemuVM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- errors --------------------------------------------------------------

    def console_tail(self, n: int = 15) -> list[str]:
        """The last n lines the guest printed on its console."""
        if not self.tmp:
            return []
        try:
            text = (self.tmp / "console.log").read_text(errors="replace")
        except OSError:
            return []
        return [l.rstrip("\r") for l in text.splitlines() if l.strip()][-n:]

    def _diagnosis(self) -> str:
        lines = self.console_tail(60)
        for l in lines:
            if "Kernel panic" in l:
                return l.strip()
        for l in reversed(lines):
            if "mntcr-init" in l:
                return l.strip()
        return lines[-1].strip() if lines else "no console output"

    def _fail(self, msg: str) -> None:
        diag = self._diagnosis()
        self._kill()
        raise VMError(f"kernel {self.kernel.name}: {msg}; console: {diag}")

    def _check_alive(self, phase: str) -> None:
        if self.proc and self.proc.poll() is not None:
            qlog = ""
            if self.tmp and (self.tmp / "qemu.log").exists():
                ql = (self.tmp / "qemu.log").read_text(errors="replace").strip().splitlines()
                qlog = f" (qemu: {ql[-1]})" if ql else ""
            self._fail(f"VM stopped during {phase} (qemu exit {self.proc.returncode}){qlog}")

    def _readline(self, deadline: float, phase: str) -> str:
        while b"\n" not in self._buf:
            self._check_alive(phase)
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no answer from the VM within the {phase} timeout")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.2))
            if r:
                chunk = self.sock.recv(4096)
                if not chunk:
                    time.sleep(0.05)
                    self._check_alive(phase)
                    self._fail(f"VM closed its control port during {phase}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    # --- commands ------------------------------------------------------------

    def run(self, argv: list[str] | str, *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600.0, on_output: Callable[[str, bytes], None] | None = None) -> Result:
        """Run argv (a list, or a shell string) as root in the VM; its status and output.

        cwd defaults to the caller's working directory (the host's tree is visible
        at the same paths). on_output(stream, data) is called with output as it
        arrives ('stdout' or 'stderr'). A timeout kills the VM and raises VMError.
        """
        if not self.sock:
            raise VMError("the VM is not running")
        self._seq += 1
        jid = str(self._seq)
        d = self.results / JOBS / jid
        d.mkdir(parents=True)
        cmd = argv if isinstance(argv, str) else shlex.join(argv)
        lines = [f"cd {shlex.quote(str(cwd or os.getcwd()))} || exit 125"]
        for k, v in (env or {}).items():
            lines.append(f"export {k}={shlex.quote(v)}")
        lines.append(cmd)
        (d / "cmd.sh").write_text("\n".join(lines) + "\n")
        t0 = time.monotonic()
        self.sock.sendall(f"{jid}\n".encode())
        offsets = {"stdout": 0, "stderr": 0}

        def pump() -> None:
            if not on_output:
                return
            for stream, fname in (("stdout", "out"), ("stderr", "err")):
                try:
                    with open(d / fname, "rb") as f:
                        f.seek(offsets[stream])
                        data = f.read()
                except FileNotFoundError:
                    continue
                if data:
                    offsets[stream] += len(data)
                    on_output(stream, data)

        deadline = t0 + timeout
        while b"\n" not in self._buf:
            pump()
            self._check_alive("the command")
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"command timed out after {timeout:.0f}s: {cmd[:80]}")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.1))
            if r:
                chunk = self.sock.recv(4096)
                if not chunk:
                    time.sleep(0.05)
                    self._check_alive("the command")
                    self._fail("VM closed its control port during the command")
                self._buf += chunk
        line = self._readline(deadline, "the command")
        pump()
        got_id, _, status = line.partition(" ")
        if got_id != jid or not status.strip().lstrip("-").isdigit():
            self._fail(f"VM agent answered {line!r} to job {jid}")
        out = (d / "out").read_text(errors="replace")
        err = (d / "err").read_text(errors="replace")
        shutil.rmtree(d, ignore_errors=True)
        return Result(int(status), out, err, time.monotonic() - t0)
