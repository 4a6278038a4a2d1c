"""vm/: kernel matrix parsing, archive discovery from apt sources, initramfs contents (no VM boot)."""

from __future__ import annotations

import lzma
import stat
import struct
from pathlib import Path

import pytest

from vm import aptfetch, cpio, initramfs, kernels, matrix
from vm.errors import VMError


def test_shipped_matrix_has_the_agreed_rows():
    rows = matrix.load()
    for name in ("host", "5.10", "6.1", "6.12", "7.2"):
        assert name in rows
    assert rows["host"].is_host and rows["host"].suite is None
    assert rows["5.10"].suite == "bullseye" and rows["5.10"].expect == "5.10."
    assert rows["6.1-cloud"].nine_p is False and rows["6.1"].nine_p is True


def test_parse_rejects_unknown_keys_and_missing_package():
    with pytest.raises(ValueError, match=r"kernel\.x: unknown key\(s\) pakage"):
        matrix.parse('[kernel.x]\nsuite = "sid"\npakage = "linux-image-amd64"\n')
    with pytest.raises(ValueError, match=r"kernel\.x: missing package"):
        matrix.parse('[kernel.x]\nsuite = "sid"\n')
    with pytest.raises(ValueError, match="unknown top-level"):
        matrix.parse('[kernels.x]\nsuite = "sid"\n')
    with pytest.raises(ValueError, match="nine_p must be"):
        matrix.parse('[kernel.x]\nsuite = "sid"\npackage = "p"\nnine_p = "no"\n')


def test_lookup_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown kernel 'nope'.*6.1"):
        matrix.lookup("nope")


def test_archive_url_from_deb822_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(aptfetch, "_host_codename", lambda: "bookworm")
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text("deb http://elsewhere/debian bookworm main\n")
    assert aptfetch.archive_url(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("# x\ndeb [arch=amd64] http://one.example/debian bookworm main\n")
    assert aptfetch.archive_url(tmp_path) == "http://one.example/debian"
    (tmp_path / "sources.list").write_text("")
    with pytest.raises(VMError, match="no Debian archive entry"):
        aptfetch.archive_url(tmp_path)


def test_cpio_round_trip_keeps_types_and_data():
    import io
    buf = io.BytesIO()
    w = cpio.Writer(buf)
    w.dir("etc")
    w.file("etc/a", b"hello", 0o600)
    w.symlink("etc/l", "a")
    w.chr("dev/console", 5, 1)
    w.close()
    got = {e.path: e for e in cpio.read(buf.getvalue())}
    assert got["etc"].kind == "dir"
    assert got["etc/a"].data == b"hello" and stat.S_IMODE(got["etc/a"].mode) == 0o600
    assert got["etc/l"].kind == "symlink" and got["etc/l"].data == b"a"
    assert got["dev/console"].kind == "chr" and got["dev/console"].rdev == (5, 1)


def _fake_kernel(tmp_path: Path) -> kernels.Kernel:
    moddir = tmp_path / "root/lib/modules/9.9.9"
    (moddir / "kernel").mkdir(parents=True)
    deps = {"a": [], "b": ["a"], "c": ["b", "a"], "unused": []}
    lines = []
    for name, ds in deps.items():
        (moddir / f"kernel/{name}.ko.xz").write_bytes(lzma.compress(b"\x7fELF" + name.encode()))
        lines.append(f"kernel/{name}.ko.xz: " + " ".join(f"kernel/{d}.ko.xz" for d in ds))
    (moddir / "modules.dep").write_text("\n".join(lines) + "\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    return kernels.Kernel("fake", "9.9.9", tmp_path / "root", tmp_path / "vmlinuz", None, moddir, ())


def test_module_order_puts_dependencies_first(tmp_path):
    k = _fake_kernel(tmp_path)
    assert initramfs.module_order(k.moddir, ("c",)) == ["kernel/a.ko.xz", "kernel/b.ko.xz", "kernel/c.ko.xz"]
    assert initramfs.module_order(k.moddir, ("virtio", "b")) == ["kernel/a.ko.xz", "kernel/b.ko.xz"]
    with pytest.raises(VMError, match="module nothere is neither built into"):
        initramfs.module_order(k.moddir, ("nothere",))


@pytest.mark.skipif(not initramfs.BUSYBOX.exists(), reason="busybox-static is not installed (/bin/busybox)")
def test_initramfs_contents(tmp_path):
    k = _fake_kernel(tmp_path)
    entries = {e.path: e for e in cpio.read(initramfs.build_bytes(k, ("c",)))}
    assert entries["init"].data.startswith(b"#!/bin/busybox sh") and entries["init"].mode & 0o111
    assert entries["bin/busybox"].data == initramfs.BUSYBOX.read_bytes()
    assert entries["dev/console"].kind == "chr" and entries["dev/console"].rdev == (5, 1)
    assert "etc/mntcr/stage2" in entries
    # modules are decompressed for busybox insmod and listed dependencies first
    assert entries["lib/modules/c.ko"].data == b"\x7fELFc"
    assert entries["etc/mntcr/modules"].data.decode().split() == ["a.ko", "b.ko", "c.ko"]
    assert "lib/modules/unused.ko" not in entries


def test_initramfs_lists_with_system_cpio(tmp_path):
    import shutil
    import subprocess
    if not shutil.which("cpio") or not initramfs.BUSYBOX.exists():
        pytest.skip("cpio or busybox-static not installed")
    k = _fake_kernel(tmp_path)
    img = tmp_path / "i.cpio"
    img.write_bytes(initramfs.build_bytes(k, ("b",)))
    listed = subprocess.run(["cpio", "-t"], stdin=open(img, "rb"), capture_output=True, text=True).stdout.split()
    assert {"init", "bin/busybox", "lib/modules/a.ko", "lib/modules/b.ko", "etc/mntcr/modules"} <= set(listed)


def _elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    blob = b""
    for name, ntype in notes:
        n = name + b"\0"
        blob += struct.pack("<III", len(n), 4, ntype) + n + b"\0" * ((4 - len(n) % 4) % 4) + b"\0\0\0\0"
    phoff = 64
    notes_off = phoff + 56
    hdr = bytearray(64)
    hdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", hdr, 0x20, phoff)
    struct.pack_into("<HH", hdr, 0x36, 56, 1)
    ph = struct.pack("<IIQQQQQQ", 4, 0, notes_off, 0, 0, len(blob), len(blob), 4)
    return bytes(hdr) + ph + blob


def test_pvh_note_detection_and_extraction(tmp_path):
    pvh = _elf_with_notes([(b"GNU", 3), (b"Xen", 18)])
    plain = _elf_with_notes([(b"Xen", 5)])
    assert kernels.has_pvh_note(pvh) and not kernels.has_pvh_note(plain)
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(b"MZ" + b"\0" * 100 + lzma.compress(pvh, format=lzma.FORMAT_XZ) + b"trailer")
    assert kernels.extract_vmlinux(bz, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == pvh
    bz.write_bytes(b"MZ" + lzma.compress(plain, format=lzma.FORMAT_XZ))
    assert not kernels.extract_vmlinux(bz, tmp_path / "vmlinux2")


@pytest.mark.skipif(not initramfs.BUSYBOX.exists(), reason="busybox-static is not installed (/bin/busybox)")
def test_initramfs_cache_is_safe_under_concurrent_first_use(tmp_path, monkeypatch):
    """Two xdist workers building the same image on a cold cache both get it (6.12 row once failed so)."""
    import multiprocessing
    monkeypatch.setenv("MNTCR_CACHE", str(tmp_path / "cache"))
    k = _fake_kernel(tmp_path)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        paths = pool.starmap(initramfs.ensure, [(k, ("c",))] * 8)
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == initramfs.build_bytes(k, ("c",))
    assert [p.name for p in Path(paths[0]).parent.iterdir()] == [Path(paths[0]).name]  # no partial left


def test_guest_keeps_interpreter_and_project_under_tmp(monkeypatch):
    """A virtualenv under /tmp (which the guest mounts afresh) is bound back in by stage 1."""
    import sys
    from vm import qemu
    monkeypatch.setattr(sys, "prefix", "/tmp/venv")
    monkeypatch.setattr(sys, "exec_prefix", "/tmp/venv")
    monkeypatch.setattr(qemu, "_PROJECT", Path("/tmp/venv/src/mntcr"))
    keep = qemu.keep_paths()
    assert "/tmp/venv" in keep and not any(p.startswith("/tmp/venv/") for p in keep)
    assert all(p.startswith(("/tmp/", "/run/")) for p in keep)
    assert "mntcr.keep=" in (initramfs.INIT.read_text())
