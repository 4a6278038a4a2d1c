"""Kernel fetch and cache: matrix row -> unpacked kernel image + modules.

A kernel is fetched once into `<cache>/kernels/<name>/`: its packages are
downloaded with the private apt configuration (vm.aptfetch), unpacked with
`dpkg -x` into `root/` (never into the host's /boot or /lib/modules), depmod
is run there, and an uncompressed `vmlinux` is extracted from the vmlinuz when
it carries a PVH entry note (qemu boots it directly; saves the in-guest
decompression, ~3 s under TCG).
"""

from __future__ import annotations

import json
import lzma
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from vm import cache, matrix
from vm.aptfetch import PrivateApt, locked
from vm.errors import VMError
from vm.progress import say

# Packages that make up a kernel: the image package and, from 7.x, its split parts.
_KERNEL_PARTS = ("linux-image-", "linux-binary-", "linux-modules-")
_META = "meta.json"


@dataclass(frozen=True)
class Kernel:
    """An unpacked, ready-to-boot kernel from the cache."""

    name: str
    version: str          # uname -r of the guest
    root: Path            # the dpkg -x tree
    vmlinuz: Path
    vmlinux: Path | None  # uncompressed PVH ELF, when the image has the note
    moddir: Path          # root/.../lib/modules/<version>
    packages: tuple[str, ...]

    @property
    def boot_image(self) -> Path:
        """What qemu -kernel gets: vmlinux when bootable directly, else the vmlinuz."""
        return self.vmlinux or self.vmlinuz


def kernel_dir(name: str) -> Path:
    """The cache directory of kernel `name` (not created)."""
    return cache.cache_dir() / "kernels" / name


def cached(name: str) -> Kernel | None:
    """The cached kernel `name`, or None when it has not been fetched."""
    meta = kernel_dir(name) / _META
    try:
        m = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    d = kernel_dir(name)
    return Kernel(name=name, version=m["version"], root=d / "root", vmlinuz=d / m["vmlinuz"],
                  vmlinux=(d / m["vmlinux"]) if m.get("vmlinux") else None, moddir=d / m["moddir"],
                  packages=tuple(m["packages"]))


def _closure(apt: PrivateApt, package: str) -> list[str]:
    """package plus every linux-image/binary/modules package it depends on, transitively."""
    seen: list[str] = []
    todo = [package]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(d for d in apt.depends(p) if d.startswith(_KERNEL_PARTS))
    return seen


def ensure(spec: matrix.KernelSpec) -> Kernel:
    """The kernel of matrix row `spec`, fetched and unpacked on first use."""
    if spec.is_host:
        raise VMError("kernel 'host' is the running kernel: it needs no VM (use the ns flavor)")
    k = cached(spec.name)
    if k:
        return k
    d = kernel_dir(spec.name)
    with locked(cache.cache_dir() / "locks" / f"kernel-{spec.name}"):
        k = cached(spec.name)
        if k:
            return k
        say(f"fetching kernel {spec.name}: {spec.package} from Debian {spec.suite}")
        apt = PrivateApt(spec.suite)
        apt.update()
        pkgs = _closure(apt, spec.package)
        tmp = d.with_name(d.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        debs = apt.download(pkgs, tmp / "debs")
        root = tmp / "root"
        for deb in debs:
            say(f"unpacking {deb.name}")
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        shutil.rmtree(tmp / "debs")
        version, moddir, vmlinuz = _locate(root)
        if spec.expect and not version.startswith(spec.expect):
            raise VMError(f"kernel {spec.name}: {spec.package} in {spec.suite} resolved to {version}, "
                          f"expected {spec.expect}*; update vm/kernels.toml")
        _depmod(root, version)
        vmlinux = tmp / "vmlinux"
        say(f"extracting vmlinux from {vmlinuz.name}")
        if not extract_vmlinux(vmlinuz, vmlinux):
            vmlinux = None
        meta = {"version": version, "packages": pkgs, "suite": spec.suite,
                "vmlinuz": str(vmlinuz.relative_to(tmp)), "moddir": str(moddir.relative_to(tmp)),
                "vmlinux": "vmlinux" if vmlinux else None}
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
        say(f"kernel {spec.name} = {version} cached in {d}")
    k = cached(spec.name)
    assert k is not None
    return k


def _locate(root: Path) -> tuple[str, Path, Path]:
    """(version, modules dir, vmlinuz) inside an unpacked kernel tree."""
    for base in (root / "usr/lib/modules", root / "lib/modules"):
        if not base.is_dir():
            continue
        for moddir in sorted(base.iterdir()):
            version = moddir.name
            for cand in (moddir / "vmlinuz", root / "boot" / f"vmlinuz-{version}"):
                if cand.is_file():
                    return version, moddir, cand
    raise VMError(f"no modules directory with a vmlinuz found under {root}")


def _depmod(root: Path, version: str) -> None:
    """Run depmod inside the unpacked tree (depmod -b looks under BASE/lib/modules)."""
    if not (root / "lib").exists() and (root / "usr/lib").is_dir():
        (root / "lib").symlink_to("usr/lib")
    p = subprocess.run(["depmod", "-a", "-b", str(root), version], capture_output=True, text=True)
    if p.returncode != 0:
        raise VMError(f"depmod for {version} failed: {p.stderr.strip().splitlines()[-1:]}")


# --- vmlinux extraction -----------------------------------------------------

_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _decompress_payload(data: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage: try each known compressor's magic in turn."""
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip")):
        start = data.find(magic)
        while start != -1:
            out = _try_decompress(kind, data[start:])
            if out and out[:4] == b"\x7fELF":
                return out
            start = data.find(magic, start + 1)
    return None


def _try_decompress(kind: str, blob: bytes) -> bytes | None:
    try:
        if kind == "xz":
            return lzma.LZMADecompressor().decompress(blob)
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
        if kind == "zstd" and shutil.which("zstd"):
            p = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True)
            return p.stdout or None  # zstd complains about trailing bytes but still writes the frame
    except (lzma.LZMAError, zlib.error):
        return None
    return None


def has_pvh_note(elf: bytes) -> bool:
    """True when the ELF has the Xen PHYS32_ENTRY note qemu needs to boot it directly."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:  # 64-bit only
        return False
    e_phoff, = struct.unpack_from("<Q", elf, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(e_phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", elf, e_phoff + i * e_phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
            name = elf[off + 12: off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            off += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def extract_vmlinux(vmlinuz: Path, dest: Path) -> bool:
    """Write the uncompressed ELF of vmlinuz to dest if it is PVH-bootable; True on success."""
    elf = _decompress_payload(vmlinuz.read_bytes())
    if not elf or not has_pvh_note(elf):
        return False
    dest.write_bytes(elf)
    return True
