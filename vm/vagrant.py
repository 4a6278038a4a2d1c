"""The Vagrant path: python-vagrant driving vagrant-libvirt, one throwaway machine per VM.

    with VagrantVM(kernel, results_dir) as vm:
        r = vm.run(["sh", "-c", "echo hi; exit 3"])   # r.status == 3, r.stdout == "hi\\n"

Same interface as vm.qemu.QemuVM (start/run/close, boot_seconds, Result).
One box (vm.vagrant_box, built offline, kernel-less) serves every kernel: the
rendered Vagrantfile (vm/Vagrantfile.j2) has libvirt boot the kernel directly
with a per-kernel initrd (vm/guest/init-disk) under qemu TCG (`driver = qemu`).
The guest is reached over qemu user-mode networking: 127.0.0.1:PORT -> :22,
no libvirt network or bridge; vm/vagrant_usernet.rb makes vagrant-libvirt
answer 127.0.0.1 for it.

Files: the project tree is copied into the guest at its host path (tar over
ssh) at start; the results directory is pushed before and pulled back after
each command, so results come back while the VM never writes to the host:
the pull is unpacked by the host with tarfile's `data` filter (no absolute
paths, no links leading out) into the results directory only.

Commands run as root (sudo) over plain ssh with the ssh_config python-vagrant
reads from `vagrant ssh-config`, with a ControlMaster: python-vagrant's own
ssh() loses the remote exit status; ssh(1) passes it through, and a wrapper
shell keeps it when the command dies of a signal (128+N like the fast path).
"""

from __future__ import annotations

import hashlib
import io
import os
import select
import shlex
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from vm import box_volume, cache, guestclock, initramfs, libvirt_host, vagrant_box, vagrant_owner
from vm.errors import VMError
from vm.kernels import Kernel
from vm.progress import say
from vm.qemu import Result

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent
TEMPLATE = HERE / "Vagrantfile.j2"
USERNET_RB = HERE / "vagrant_usernet.rb"
# Where libvirt's qemu (user libvirt-qemu) can read the kernel and initrd: the
# cache under /root is not traversable for it.
BOOT_DIR = box_volume.STATE_DIR
GUEST_PYTHON = "/usr/bin/python3"
# Module subtrees copied into the box (filesystems, loop, what they depend on: crc, raid6, crypto).
GUEST_MODULE_DIRS = ("kernel/fs", "kernel/lib", "kernel/crypto", "kernel/arch", "kernel/drivers/block")
# Never copied into the guest: VCS data and caches.
_EXCLUDE = (".git", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", "*.pyc")
# How long one ssh handshake step may take (Vagrant's config.ssh.connect_timeout, and ssh(1)'s
# ConnectTimeout for our own commands). Net::SSH applies it to the server's banner and to every
# key-exchange packet, and Vagrant retries a step that exceeds it silently with a fresh connection:
# under TCG on a loaded host the guest's sshd (re-exec, key exchange on one emulated CPU) took
# longer than the 3 s used before, every attempt was abandoned half-way, the abandoned sshd
# children kept the guest's only CPU busy, and `vagrant up` ended at its boot timeout.
SSH_STEP_SECONDS = {"tcg": 60, "kvm": 10}
# Failed machines' vagrant.log, console.log and Vagrantfile are kept here (the newest few).
FAILED_KEEP = 10


def unavailable() -> str | None:
    """Why the vagrant provider cannot work on this machine (a one-line reason), or None."""
    if not shutil.which("vagrant"):
        return "vagrant is not installed (apt-get install --no-install-recommends vagrant vagrant-libvirt libvirt-daemon-system)"
    if not any(Path(p).is_dir() for p in ("/usr/share/rubygems-integration/all/gems/vagrant-libvirt-0.11.2",)) \
            and not list(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-libvirt-*")):
        return "the vagrant-libvirt plugin is not installed (apt-get install --no-install-recommends vagrant-libvirt)"
    reason = libvirt_host.missing_tools()
    if reason:
        return reason
    for tool in ("qemu-system-x86_64", "debootstrap", "qemu-img", "mkfs.ext4", "ssh"):
        if not shutil.which(tool):
            return f"{tool} is not installed (needed to build and reach the box)"
    try:
        import vagrant  # noqa: F401 - python-vagrant
    except ImportError:
        return "python-vagrant is not installed (pip install python-vagrant)"
    if os.geteuid() != 0:
        return "the vagrant provider needs root (libvirt's system daemon, debootstrap for the box)"
    return None


def disk_modules(kernel: Kernel) -> tuple[str, ...]:
    """The initrd's modules for booting the box: DISK_MODULES plus the crc32c ext4 needs.

    ext4 asks the crypto API for crc32c at mount time (a soft dependency that
    modules.dep does not list); the module providing it changed name in 7.x.
    """
    dep = (kernel.moddir / "modules.dep").read_text()
    for name in ("crc32c_generic", "crc32c-cryptoapi", "crc32c_cryptoapi"):
        if f"/{name}.ko" in dep:
            return initramfs.DISK_MODULES + (name,)
    return initramfs.DISK_MODULES  # built in


def _free_port() -> int:
    # a port the kernel considers free now; qemu binds it moments later
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A staged file no VM has started from for this long is removed (a domain reads its kernel and
# initrd when it starts; a start follows the staging within minutes).
STAGED_MAX_AGE = 24 * 3600


def _stage(src: Path, name: str) -> Path:
    """src copied (once per content) into BOOT_DIR, readable by libvirt's qemu user.

    BOOT_DIR is one per machine, shared by every run and every MNTCR_CACHE: the name carries
    the content's hash, so runs with different caches share a file of the same content and
    never replace one another's (removing the other cache's kernel made a concurrent
    `vagrant up` fail "unable to stat ...-kernel-..."). Each use refreshes the file's mtime;
    files of `name` unused for STAGED_MAX_AGE are removed.
    """
    BOOT_DIR.mkdir(parents=True, exist_ok=True)
    BOOT_DIR.chmod(0o755)
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    dest = BOOT_DIR / f"{name}-{h.hexdigest()[:16]}"
    if not dest.exists():
        tmp = dest.with_name(dest.name + f".{os.getpid()}.partial")
        shutil.copyfile(src, tmp)
        tmp.chmod(0o644)
        tmp.rename(dest)
    os.utime(dest)
    now = time.time()
    for old in BOOT_DIR.glob(f"{name}-*"):
        try:
            if old != dest and now - old.stat().st_mtime > STAGED_MAX_AGE:
                old.unlink()
        except FileNotFoundError:
            pass  # another run removed it first
    return dest


class VagrantVM:
    """One throwaway Vagrant machine; start() brings it up, run() runs commands, close() destroys it."""

    def __init__(self, kernel: Kernel, results_dir: Path | str, *, memory_mb: int = 1024, cpus: int = 1,
                 boot_timeout: float = 300.0, project: Path | str = PROJECT_ROOT, extra_cmdline: str = "",
                 accel: str | None = None):
        self.kernel = kernel
        self.results = Path(results_dir).resolve()
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.project = Path(project).resolve()
        self.extra_cmdline = extra_cmdline
        # TCG (libvirt driver "qemu") unless KVM is asked for: libvirtd runs with /dev/kvm hidden
        # (vm/libvirt_host.py), so the KVM probe of the fast path does not apply here.
        from vm import accel as accel_mod
        self.accel = accel_mod.forced(accel) or "tcg"
        # The limit callers give is sized for the fast path's busybox init; the box boots systemd and
        # sshd, which under TCG on a loaded machine took over 300 s (`mntcr vm run` passes 120 s).
        if self.accel == "tcg":
            self.boot_timeout = max(boot_timeout * 3, 600.0)
        self.id = uuid.uuid4().hex[:8]
        self.dir: Path | None = None
        self.v = None  # vagrant.Vagrant
        self.ssh_config: Path | None = None
        self.boot_seconds = 0.0
        self.up_seconds = 0.0
        self.guest_release = ""
        self.port = 0
        self._created = False
        self._owner: int | None = None   # the fd holding this machine's ownership record (vm/vagrant_owner.py)
        self.ctl_dir: Path | None = None

    def guest_python(self) -> str:
        """The interpreter the guest runs the runner with: the box's own python3 (vm/vagrant_box.py

        installs it with PyYAML and Jinja2); the host's interpreter is not in the guest.
        """
        return GUEST_PYTHON

    # --- lifecycle -----------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(VAGRANT_HOME=str(cache.sub("vagrant", "home")), VAGRANT_DEFAULT_PROVIDER="libvirt",
                   VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1", VAGRANT_SUPPRESS_WARNINGS="1",
                   # vagrant.log then says why each ssh attempt failed ("SSH not ready: ...")
                   VAGRANT_LOG="info")
        env.pop("LIBVIRT_DEFAULT_URI", None)
        return env

    @contextmanager
    def _log(self):
        with open(self.dir / "vagrant.log", "a") as f:
            yield f

    def _vagrant_tail(self) -> str:
        try:
            lines = [l for l in (self.dir / "vagrant.log").read_text(errors="replace").splitlines() if l.strip()]
        except (OSError, TypeError):
            return "no vagrant output"
        if any("Timed out while waiting for the machine to boot" in l for l in lines):
            # Vagrant's own text only points "above"; the last reason it logged (VAGRANT_LOG=info) says more
            why = [l.split("SSH not ready:", 1)[1].strip() for l in lines if "SSH not ready:" in l]
            return (f"no ssh login within the boot timeout ({self.boot_timeout:.0f}s)"
                    + (f", last attempt: {why[-1][:160]}" if why else ""))
        errs = [l for l in lines if "rror" in l or "Timed out" in l]
        return (errs or lines or ["no vagrant output"])[-1].strip()

    def console_tail(self, n: int = 15) -> list[str]:
        """The last n lines the guest printed on its serial console."""
        try:
            text = (self.dir / "console.log").read_text(errors="replace")
        except (OSError, TypeError):
            return []
        return [l.rstrip("\r") for l in text.splitlines() if l.strip()][-n:]

    def _diagnosis(self) -> str:
        lines = self.console_tail(60)
        for l in lines:
            if "Kernel panic" in l or "mntcr-init: FATAL" in l:
                return l.strip()
        return lines[-1].strip() if lines else "no console output"

    def keep_logs(self) -> Path | None:
        """Copy this machine's vagrant.log, console.log and Vagrantfile to <cache>/vagrant/failed/vm-ID.

        close() removes the machine directory; a failure's logs must outlive it.
        Only the newest FAILED_KEEP such directories are kept. The directory, or None.
        """
        if self.dir is None or not self.dir.is_dir():
            return None
        dest = cache.sub("vagrant", "failed") / f"vm-{self.id}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("vagrant.log", "console.log", "Vagrantfile"):
            try:
                shutil.copyfile(self.dir / name, dest / name)
            except OSError:
                pass
        old = sorted(dest.parent.glob("vm-*"), key=lambda d: d.stat().st_mtime)
        for d in old[:-FAILED_KEEP]:
            if d != dest:
                shutil.rmtree(d, ignore_errors=True)
        return dest

    def _fail(self, msg: str) -> None:
        diag = self._diagnosis()
        kept = self.keep_logs()
        self.close()
        where = f"; logs in {kept}" if kept else ""
        raise VMError(f"kernel {self.kernel.name} (vagrant): {msg}; console: {diag}{where}")

    def _box(self, env: dict[str, str]) -> str:
        """The box name, added to Vagrant (under the cache's VAGRANT_HOME) on first use."""
        name = vagrant_box.box_name()
        p = subprocess.run(["vagrant", "box", "list", "--machine-readable"], env=env, capture_output=True,
                           text=True, cwd=self.dir)
        if f",box-name,{name}" in p.stdout:
            return name
        path = vagrant_box.ensure_box()
        with vagrant_box_lock():
            p = subprocess.run(["vagrant", "box", "list", "--machine-readable"], env=env, capture_output=True,
                               text=True, cwd=self.dir)
            if f",box-name,{name}" not in p.stdout:
                say(f"vagrant box add {name}")
                p = subprocess.run(["vagrant", "box", "add", "--force", "--name", name, str(path)], env=env,
                                   capture_output=True, text=True, cwd=self.dir)
                if p.returncode != 0:
                    raise VMError(f"vagrant box add failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        self._drop_old_boxes(env, name)
        return name

    @staticmethod
    def _box_image(env: dict[str, str], box: str) -> Path:
        """The box's image as `vagrant box add` unpacked it (what vagrant-libvirt uploads to the pool)."""
        return Path(env["VAGRANT_HOME"]) / "boxes" / box.replace("/", "-VAGRANTSLASH-") / "0" / "libvirt" / "box.img"

    def _drop_old_boxes(self, env: dict[str, str], keep: str) -> None:
        """Remove boxes of earlier recipes from Vagrant and their base volumes from libvirt's pool."""
        p = subprocess.run(["vagrant", "box", "list", "--machine-readable"], env=env, capture_output=True,
                           text=True, cwd=self.dir)
        prefix = keep.rsplit("-", 1)[0] + "-"
        for line in p.stdout.splitlines():
            parts = line.split(",")
            if len(parts) >= 4 and parts[2] == "box-name" and parts[3].startswith(prefix) and parts[3] != keep:
                subprocess.run(["vagrant", "box", "remove", "--force", "--all", parts[3]], env=env,
                               capture_output=True, cwd=self.dir)
                vol = parts[3].replace("/", "-VAGRANTSLASH-")
                vols = subprocess.run(["virsh", "-q", "vol-list", "default"], capture_output=True, text=True)
                for vline in vols.stdout.splitlines():
                    if vline.split() and vline.split()[0].startswith(vol + "_vagrant_box_image"):
                        subprocess.run(["virsh", "-q", "vol-delete", "--pool", "default", vline.split()[0]],
                                       capture_output=True)

    def render(self, box: str, kernel_path: Path, initrd: Path) -> str:
        """The Vagrantfile text for this VM."""
        import jinja2
        cmdline = ("root=/dev/vda rw console=ttyS0 quiet panic=-1 oops=panic mitigations=off "
                   f"{guestclock.cmdline(self.accel)} "
                   "net.ifnames=0 systemd.show_status=0 rd.udev.log_level=3 systemd.log_level=warning "
                   "systemd.firstboot=off "
                   f"mntcr.ip={vagrant_box.GUEST_ADDR} mntcr.gw={vagrant_box.GUEST_GW}")
        if self.extra_cmdline:
            cmdline += " " + self.extra_cmdline
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.from_string(TEMPLATE.read_text()).render(
            kernel_name=self.kernel.name, kernel_version=self.kernel.version, box=box, machine="default",
            driver="kvm" if self.accel == "kvm" else "qemu",
            prefix=f"mntcr-{self.id}-", boot_timeout=self.boot_timeout, ssh_port=self.port,
            ssh_step=SSH_STEP_SECONDS[self.accel],
            private_key=str(vagrant_box.insecure_key(public=False)), memory_mb=self.memory_mb, cpus=self.cpus,
            kernel=str(kernel_path), initrd=str(initrd), cmdline=cmdline, usernet_rb=str(USERNET_RB),
            console_log=str(self.dir / "console.log"))

    def start(self) -> "VagrantVM":
        """Bring the machine up, copy the project in; VMError with the console's last line on failure.

        Whatever goes wrong after the machine was created (an ssh timeout, an interrupt), the
        machine is destroyed before the exception leaves: callers that never reach close()
        (a fixture whose start() raised) leave no libvirt domain behind.
        """
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> "VagrantVM":
        reason = unavailable()
        if reason:
            raise VMError(reason)
        import vagrant
        libvirt_host.ensure_running()
        self.results.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"vm-{self.id}-", dir=cache.sub("vagrant", "machines")))
        self.dir.chmod(0o755)  # virtlogd writes the console log here
        vagrant_owner.sweep()   # machines left by killed runs: before this one takes a CPU too
        self._owner = vagrant_owner.claim(self.id, self.dir)
        env = self._env()
        box = self._box(env)
        initrd = initramfs.ensure(self.kernel, disk_modules(self.kernel), initramfs.DISK_INIT)
        kpath = _stage(self.kernel.boot_image, f"{self.kernel.name}-kernel")
        ipath = _stage(initrd, f"{self.kernel.name}-initrd")
        self.port = _free_port()
        (self.dir / "Vagrantfile").write_text(self.render(box, kpath, ipath))
        say(f"vagrant up: kernel {self.kernel.name} ({self.kernel.version}), accel {self.accel}, "
            f"ssh on 127.0.0.1:{self.port}")
        t0 = time.monotonic()
        with self._log() as log:
            self.v = vagrant.Vagrant(root=str(self.dir), env=env, out_cm=lambda: _keep(log),
                                     err_cm=lambda: _keep(log))
            self._created = True
            try:
                # the box's base volume in libvirt's pool is shared by every process and cache (vm/box_volume.py)
                with box_volume.held(box, self._box_image(env, box)):
                    self.v.up(provider="libvirt")
            except subprocess.CalledProcessError:
                self._fail(f"vagrant up failed: {self._vagrant_tail()}")
            self.up_seconds = time.monotonic() - t0
            self.ssh_config = self.dir / "ssh_config"
            # unix socket paths are limited to 108 bytes: the control socket lives in a short /tmp dir
            self.ctl_dir = Path(tempfile.mkdtemp(prefix="mntcr-ssh-"))
            self.ssh_config.write_text(self.v.ssh_config()
                                       + _CONTROL.format(dir=self.ctl_dir, step=SSH_STEP_SECONDS[self.accel]))
        r = self._ssh(["uname -r"], timeout=3 * SSH_STEP_SECONDS[self.accel])
        if r.returncode != 0:
            self._fail(f"ssh into the machine failed: {r.stderr.decode(errors='replace').strip()[-200:]}")
        self.guest_release = r.stdout.decode().strip()
        self._push(self.project, exclude=_EXCLUDE)
        self._push_modules()
        self.boot_seconds = time.monotonic() - t0
        say(f"kernel {self.kernel.name} up in {self.boot_seconds:.1f}s (vagrant up {self.up_seconds:.1f}s)")
        return self

    def close(self) -> None:
        """Destroy the machine (vagrant destroy -f) and remove its files; safe to call twice."""
        gone = True   # (no machine was made, or it was destroyed)
        if self.v is not None and self._created:
            self._created = False
            if self.ssh_config and self.ssh_config.exists():
                subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", "default"],
                               capture_output=True, timeout=10)
            try:
                with self._log() as log:
                    self.v.out_cm = self.v.err_cm = (lambda: _keep(log))
                    self.v.destroy()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
                say(f"vagrant destroy failed: {self._vagrant_tail()}; removing the domain with virsh")
            # vagrant destroy can "succeed" and leave the domain defined (seen after a failed
            # up under load): check libvirt itself
            name = vagrant_owner.domain_name(self.id)
            names = vagrant_owner.defined_domains()
            if names is None or name in names:
                gone = vagrant_owner.remove_domain(self.id)
        if self._owner is not None:
            # a machine still defined keeps its record, unlocked: the next run's sweep destroys it
            vagrant_owner.release(self.id, self._owner, forget=gone)
            self._owner = None
        for d in (self.dir, self.ctl_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        self.dir = self.ctl_dir = None

    def __enter__(self) -> "VagrantVM":
        return self.start()  # start() destroys the machine itself when it fails

    def __exit__(self, *exc) -> None:
        self.close()

    # --- ssh -----------------------------------------------------------------

    def _ssh_argv(self, remote: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-q", "default", "--", remote]

    def _ssh(self, remote: list[str] | str, *, input: bytes | None = None, timeout: float = 60.0):
        cmd = remote if isinstance(remote, str) else " ".join(remote)
        try:
            return subprocess.run(self._ssh_argv(cmd), input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self._fail(f"ssh command timed out after {timeout:.0f}s: {cmd[:80]}")

    def _push(self, src: Path, exclude: tuple[str, ...] = ()) -> None:
        """Copy host directory src to the same path in the guest (tar over ssh, as root)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            t.add(str(src), arcname=str(src).lstrip("/"),
                  filter=lambda ti: None if any(Path(ti.name).match(p) for p in exclude) else ti)
        r = self._ssh(f"sudo -n tar -C / --no-same-owner -xf -", input=buf.getvalue(), timeout=300)
        if r.returncode != 0:
            self._fail(f"copying {src} into the VM failed: {r.stderr.decode(errors='replace').strip()[-200:]}")

    def _push_modules(self) -> None:
        """The kernel's filesystem, block and library modules into the box's /lib/modules/VERSION.

        The box has no kernel of its own; with these (and the depmod indexes)
        modprobe in the guest loads ext4, xfs, btrfs, loop... as the fast path's
        guest does from the 9p-visible module tree.
        """
        moddir = self.kernel.moddir
        buf = io.BytesIO()
        dest = f"lib/modules/{self.kernel.version}"
        with tarfile.open(fileobj=buf, mode="w") as t:
            for p in sorted(moddir.glob("modules.*")):
                t.add(str(p), arcname=f"{dest}/{p.name}")
            for sub in GUEST_MODULE_DIRS:
                if (moddir / sub).is_dir():
                    t.add(str(moddir / sub), arcname=f"{dest}/{sub}")
        r = self._ssh("sudo -n tar -C / --no-same-owner -xf -", input=buf.getvalue(), timeout=300)
        if r.returncode != 0:
            self._fail(f"copying the kernel's modules into the VM failed: "
                       f"{r.stderr.decode(errors='replace').strip()[-200:]}")

    def _pull(self, dest: Path) -> None:
        """Copy the guest's dest directory back into the host's dest (only there)."""
        q = shlex.quote(str(dest))
        r = self._ssh(f"sudo -n tar -C {q} -cf - .", timeout=600)
        if r.returncode != 0:
            self._fail(f"copying {dest} back from the VM failed: {r.stderr.decode(errors='replace').strip()[-200:]}")
        refused = []

        def only_data(member, path):
            # tarfile's data filter refuses absolute names, '..', links leading out of dest and
            # device nodes; such members are left out (named in a progress line), the rest arrives
            try:
                return tarfile.data_filter(member, path)
            except tarfile.FilterError:
                refused.append(member.name)
                return None

        with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r") as t:
            t.extractall(dest, filter=only_data)
        if refused:
            say(f"not copied back from the VM (would lead outside {dest}): {', '.join(refused[:5])}")

    # --- commands ------------------------------------------------------------

    def run(self, argv: list[str] | str, *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600.0, on_output: Callable[[str, bytes], None] | None = None) -> Result:
        """Run argv (a list, or a shell string) as root in the VM; its status and output.

        cwd defaults to the caller's working directory (the project is at the
        same path in the guest). The results directory is copied in before and
        back after the command. A timeout destroys the VM and raises VMError.
        """
        if self.ssh_config is None:
            raise VMError("the VM is not running")
        cmd = argv if isinstance(argv, str) else shlex.join(argv)
        lines = [f"cd {shlex.quote(str(cwd or os.getcwd()))} || exit 125"]
        for k, v in (env or {}).items():
            lines.append(f"export {k}={shlex.quote(v)}")
        lines.append(cmd)
        script = "\n".join(lines) + "\n"
        t0 = time.monotonic()
        self._push(self.results)
        # The outer shell survives a command killed by a signal and exits 128+N itself
        # (ssh would report 255 for a remote shell that died of a signal).
        wrapper = '/bin/sh -c "$1" </dev/null; exit $?'
        remote = f"sudo -n /bin/sh -c {shlex.quote(wrapper)} mntcr {shlex.quote(script)}"
        p = subprocess.Popen(self._ssh_argv(remote), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        chunks = {"stdout": [], "stderr": []}
        streams = {p.stdout: "stdout", p.stderr: "stderr"}
        deadline = t0 + timeout
        while streams:
            left = deadline - time.monotonic()
            if left <= 0:
                p.kill()
                p.wait()
                self._fail(f"command timed out after {timeout:.0f}s: {cmd[:80]}")
            ready, _, _ = select.select(list(streams), [], [], min(left, 0.5))
            for f in ready:
                data = os.read(f.fileno(), 65536)
                if not data:
                    del streams[f]
                    continue
                chunks[streams[f]].append(data)
                if on_output:
                    on_output(streams[f], data)
        status = p.wait()
        if status == 255 and self._ssh("true", timeout=3 * SSH_STEP_SECONDS[self.accel]).returncode != 0:
            self._fail("the VM stopped answering ssh during the command")
        self._pull(self.results)
        return Result(status, b"".join(chunks["stdout"]).decode(errors="replace"),
                      b"".join(chunks["stderr"]).decode(errors="replace"), time.monotonic() - t0)


@contextmanager
def _keep(f):
    """A context manager yielding an already open file without closing it (python-vagrant's out_cm)."""
    yield f


@contextmanager
def vagrant_box_lock():
    """Serialise `vagrant box add` between processes (xdist workers)."""
    from vm.aptfetch import locked
    with locked(cache.cache_dir() / "locks" / "vagrant-box-add"):
        yield


# ssh multiplexing: the first ssh opens the master, later commands reuse it (~0.1 s instead of ~1 s)
_CONTROL = """  ControlMaster auto
  ControlPath {dir}/c
  ControlPersist 600
  ConnectTimeout {step}
  ServerAliveInterval 10
  ServerAliveCountMax 12
"""
