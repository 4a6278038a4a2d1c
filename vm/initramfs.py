"""Build the small busybox initramfs that boots a cached kernel for the fast path.

Contents: busybox-static (from Debian's busybox-static package, /bin/busybox),
/dev/console, the stage 1 and stage 2 scripts of vm/guest/, and the modules the
fast path needs (virtio PCI, 9p, overlay, virtio console, ...) with everything
they depend on, decompressed and listed in load order in /etc/mntcr/modules.
Built once per kernel and module set, then reused from the cache.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vm import cache, cpio
from vm.errors import VMError
from vm.kernels import Kernel
from vm.progress import say

BUSYBOX = Path("/bin/busybox")
GUEST = Path(__file__).with_name("guest")
# Only what stage 1 needs: every insmod costs ~0.1-0.5 s under TCG (signature
# check, relocation). Other modules (loop, ext4, squashfs...) load on demand with
# modprobe in the guest, which sees the kernel's depmod'ed modules directory.
DEFAULT_MODULES = ("virtio_pci", "virtio_console", "virtio_rng", "9pnet_virtio", "9p", "overlay")
# The Vagrant box has no kernel of its own: its initrd brings the disk, network and root fs drivers.
DISK_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
INIT = GUEST / "init"
DISK_INIT = GUEST / "init-disk"


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _modname(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            return _norm(base[: -len(suffix)])
    return _norm(base)


def module_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Relative paths of `wanted` modules and their dependencies, dependencies first.

    Modules built into the kernel (modules.builtin) need no file and are left out;
    a wanted module the kernel has neither built in nor as a file is an error.
    """
    deps: dict[str, list[str]] = {}
    path_of: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        name = _modname(mod)
        path_of[name] = mod
        deps[name] = [_modname(d) for d in rest.split()]
    builtin: set[str] | None = None  # None: unknown (7.x packages ship no modules.builtin)
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_modname(l) for l in bfile.read_text().split()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for d in deps.get(name, []):
            visit(d)
        order.append(path_of[name])

    for w in wanted:
        w = _norm(w)
        if w in path_of:
            visit(w)
        elif builtin is None:
            say(f"{moddir.name}: no {w} module and no modules.builtin; assuming {w} is built in")
        elif w not in builtin:
            raise VMError(f"kernel module {w} is neither built into {moddir.name} nor shipped with it")
    return order


def _module_bytes(path: Path) -> bytes:
    """The module's ELF, decompressed (busybox insmod takes plain .ko files)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    if path.name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    return data


def build_bytes(kernel: Kernel, modules: tuple[str, ...] = DEFAULT_MODULES, init: Path = INIT) -> bytes:
    """The initramfs image (uncompressed newc cpio) for `kernel`, with `init` as /init.

    INIT is the fast path's stage 1 (host / over 9p); DISK_INIT boots the
    Vagrant box's root disk (/dev/vda).
    """
    if not BUSYBOX.exists():
        raise VMError(f"{BUSYBOX} missing: apt-get install busybox-static")
    order = module_order(kernel.moddir, modules)
    buf = io.BytesIO()
    w = cpio.Writer(buf)
    for d in ("bin", "dev", "etc", "etc/mntcr", "lib", "lib/modules", "proc", "sys", "run", "tmp", "newroot"):
        w.dir(d)
    w.chr("dev/console", 5, 1)
    w.chr("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    w.file("init", init.read_bytes(), 0o755)
    w.file("etc/mntcr/stage2", (GUEST / "stage2").read_bytes(), 0o644)
    names = []
    for rel in order:
        name = _modname(rel) + ".ko"
        w.file(f"lib/modules/{name}", _module_bytes(kernel.moddir / rel))
        names.append(name)
    w.file("etc/mntcr/modules", ("\n".join(names) + "\n").encode())
    w.close()
    return buf.getvalue()


def _key(kernel: Kernel, modules: tuple[str, ...], init: Path) -> str:
    h = hashlib.sha256()
    for p in (BUSYBOX, init, GUEST / "stage2", Path(__file__), Path(cpio.__file__)):
        h.update(p.read_bytes())
    h.update(repr((kernel.version, modules)).encode())
    return h.hexdigest()[:16]


def ensure(kernel: Kernel, modules: tuple[str, ...] = DEFAULT_MODULES, init: Path = INIT) -> Path:
    """The cached initramfs for kernel + modules + init script, built on first use."""
    # one cached image per kernel and init script; the key changes with any input
    prefix = kernel.name if init == INIT else f"{kernel.name}-{init.name}"
    out = cache.sub("initramfs") / f"{prefix}-{_key(kernel, modules, init)}.cpio"
    if out.exists():
        return out
    say(f"building initramfs for {kernel.name} ({kernel.version})")
    # Two xdist workers may build the same image on a cold cache: each writes its own
    # partial file and renames it into place (atomic; the second rename replaces an
    # identical image), so neither ever renames or reads the other's half-written file.
    fd, tmp_name = tempfile.mkstemp(prefix=f"{out.stem}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(build_bytes(kernel, modules, init))
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    for old in out.parent.glob(f"{prefix}-*.cpio"):
        if old != out and old.name[len(prefix) + 1:].count("-") == 0:
            old.unlink(missing_ok=True)
    return out
