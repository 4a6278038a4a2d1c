"""Which qemu accelerator to use: KVM when a probe boot reaches the guest's init quickly, else TCG.

    accel, why = choose(kernel)      # ("tcg", "KVM probe: ... ; cached") or ("kvm", "--vm-accel")

An explicit choice wins (the `accel` argument, from --vm-accel, then
MNTCR_VM_ACCEL). Otherwise a usable /dev/kvm is probed once: a KVM boot of
the fast path's kernel and initramfs with `mntcr.probe=1` on its command line,
whose stage 1 prints a marker on the console and powers off at once. The
verdict is cached per host kernel and qemu binary (in the cache's probes/
directory, under a lock, so two xdist workers probe once between them): a
machine where /dev/kvm exists but KVM hangs (nested virtualisation gone
wrong) pays the probe's timeout once, not per VM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vm import cache
from vm.errors import VMError

ACCELS = ("kvm", "tcg")
ENV = "MNTCR_VM_ACCEL"
MARKER = "mntcr-probe: init reached"
# A KVM boot reaches the initramfs' init in well under a second; a loaded
# 2-core host gets a margin, a hung KVM costs this once (then it is cached).
PROBE_SECONDS = 15.0

_memo: dict[str, tuple[str, str]] = {}


def forced(accel: str | None = None) -> str | None:
    """The explicitly chosen accelerator (argument, else MNTCR_VM_ACCEL), validated; None when unset."""
    value = accel or os.environ.get(ENV) or None
    if value is not None and value not in ACCELS:
        source = "--vm-accel" if accel else ENV
        raise VMError(f"{source}={value}: unknown accelerator; use one of {', '.join(ACCELS)}")
    return value


def _probe_key() -> str:
    qemu = shutil.which("qemu-system-x86_64") or ""
    st = os.stat(qemu) if qemu else None
    return f"{os.uname().release}|{qemu}|{st.st_size if st else 0}|{int(st.st_mtime) if st else 0}"


def _kvm_usable() -> str | None:
    """None when /dev/kvm can be opened, else why not."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    os.close(fd)
    return None


def probe(boot_image: Path, initrd: Path, timeout: float = PROBE_SECONDS) -> tuple[bool, str]:
    """Boot `boot_image` + `initrd` under KVM until the init's marker; (works, what happened)."""
    tmp = Path(tempfile.mkdtemp(prefix="mntcr-kvm-probe-"))
    console = tmp / "console.log"
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-machine", "pc", "-cpu", "host", "-smp", "1", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(boot_image), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1 acpi=off mntcr.probe=1",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        while time.monotonic() - t0 < timeout:
            try:
                if MARKER in console.read_text(errors="replace"):
                    return True, f"KVM boot reached init in {time.monotonic() - t0:.1f}s"
            except FileNotFoundError:
                pass
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                return False, f"qemu -accel kvm exited {proc.returncode}: {err[-1] if err else 'no message'}"
            time.sleep(0.1)
        return False, f"KVM boot did not reach init within {timeout:.0f}s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait()
        proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


def choose(boot_image: Path, initrd: Path, accel: str | None = None) -> tuple[str, str]:
    """(accelerator, why): the explicit choice, else the cached or fresh KVM probe's verdict."""
    explicit = forced(accel)
    if explicit:
        return explicit, ("--vm-accel" if accel else ENV)
    key = _probe_key()
    if key in _memo:
        return _memo[key]
    reason = _kvm_usable()
    if reason:
        _memo[key] = ("tcg", f"KVM unusable: {reason}")
        return _memo[key]
    from vm.aptfetch import locked
    path = cache.sub("probes") / "kvm.json"
    with locked(cache.cache_dir() / "locks" / "kvm-probe"):
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("key") == key:
            verdict = (saved["accel"], f"{saved['why']} (probed earlier, cached in {path})")
        else:
            works, why = probe(boot_image, initrd)
            verdict = ("kvm" if works else "tcg", f"KVM probe: {why}")
            tmp = path.with_name(f"kvm.json.{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "accel": verdict[0], "why": verdict[1]}))
            os.replace(tmp, path)
    _memo[key] = verdict
    return verdict
