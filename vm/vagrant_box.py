"""Build the Vagrant box of the vagrant provider offline: one Debian root file system, no kernel.

    path = ensure_box()          # <cache>/vagrant/mntcr-bookworm-<key>.box, built once

Steps: debootstrap (minbase, the machine's own Debian mirror read from its apt
sources at run time) in a private mount namespace (debootstrap mounts /proc
in its target), the `vagrant` user with Vagrant's insecure public key (from
the installed vagrant package, never downloaded), a static address for qemu's
user-mode network, services that slow the boot masked; then `mkfs.ext4 -d`
(no mount, no loop device), `qemu-img convert` to qcow2 and a tar with
metadata.json. There is no bootloader: every kernel of the matrix boots the
same box through libvirt's <kernel>/<initrd> (vm.vagrant).
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from vm import aptfetch, cache
from vm.errors import VMError
from vm.progress import say

SUITE = "bookworm"
# What the brief of the box asks for, plus what the scenario runner needs in the guest
# (python3-yaml/jinja2 for zdtm, tar/util-linux are in minbase already).
PACKAGES = ("openssh-server", "python3", "sudo", "iproute2", "systemd-sysv", "udev", "kmod", "procps",
            "python3-yaml", "python3-jinja2")
SIZE_GB = 4
# Units that cost boot time and do nothing useful in a throwaway VM (seen under TCG:
# udev coldplug 10-20 s, networkd 15 s, journald 6 s). The initrd configures the
# network (vm/guest/init-disk) and devtmpfs provides the device nodes.
MASKED = ("getty@tty1.service", "serial-getty@ttyS0.service", "getty-static.service", "apt-daily.timer",
          "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
          "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
          "systemd-timesyncd.service", "systemd-pstore.service", "systemd-random-seed.service",
          "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "systemd-journal-flush.service",
          "systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
          "systemd-udevd-control.socket", "systemd-udevd-kernel.socket", "systemd-hwdb-update.service",
          "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
          "systemd-journald-audit.socket", "systemd-firstboot.service", "systemd-machine-id-commit.service",
          "ldconfig.service", "dpkg-db-backup.timer", "logrotate.timer", "ssh.socket", "modprobe@.service",
          "dev-hugepages.mount", "dev-mqueue.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
          "sys-kernel-config.mount", "sys-fs-fuse-connections.mount", "kmod-static-nodes.service")
# Vagrant's well-known insecure key: shipped by the Debian package (and the upstream build).
_KEY_GLOBS = ("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
              "/usr/lib/ruby/vendor_ruby/vagrant/keys/vagrant.pub",
              "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
              "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub")
GUEST_ADDR = "10.0.2.15/24"   # qemu user-mode network (slirp) defaults, inside qemu only
GUEST_GW = "10.0.2.2"
GUEST_DNS = "10.0.2.3"


def insecure_key(public: bool = True) -> Path:
    """Vagrant's insecure key pair as installed with vagrant (public or private half)."""
    for pattern in _KEY_GLOBS:
        for pub in sorted(glob.glob(pattern), reverse=True):
            p = Path(pub) if public else Path(pub[: -len(".pub")])
            if p.is_file():
                return p
    raise VMError("Vagrant's insecure key (keys/vagrant.pub) not found: apt-get install --no-install-recommends vagrant")


# Bump when _configure() changes in a way the cached box must follow.
RECIPE = 3


def _key() -> str:
    h = hashlib.sha256(repr((RECIPE, SUITE, PACKAGES, MASKED, SIZE_GB, GUEST_ADDR)).encode())
    h.update(insecure_key().read_bytes())
    return h.hexdigest()[:12]


def box_name() -> str:
    """The name the box is added to Vagrant under (changes when this recipe changes)."""
    return f"mntcr/{SUITE}-{_key()}"


def _run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        tail = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise VMError(f"box build: {what} failed (exit {p.returncode}): {tail[0]}")
    return p


def _debootstrap(root: Path, mirror: str) -> None:
    """debootstrap into root, or unpack the cached result of an identical earlier run."""
    key = hashlib.sha256(repr((SUITE, PACKAGES, mirror)).encode()).hexdigest()[:12]
    base = cache.sub("vagrant") / f"base-{SUITE}-{key}.tar"
    if base.exists():
        say(f"box: unpacking the cached debootstrap tree {base.name}")
        root.mkdir()
        _run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(base)], "unpacking the base tree")
        return
    say(f"box: debootstrap {SUITE} (minbase) from {mirror}")
    # debootstrap mounts proc/sys inside the target: keep those mounts out of the host's namespace
    _run(["unshare", "-m", "--propagation", "private", "debootstrap", "--variant=minbase",
          "--include=" + ",".join(PACKAGES), SUITE, str(root), mirror], "debootstrap")
    # keep the download: a change of _configure() then rebuilds the box in seconds
    tmp = base.with_suffix(".partial")
    _run(["tar", "-C", str(root), "--numeric-owner", "-cpf", str(tmp), "."], "saving the base tree")
    tmp.rename(base)
    for old in base.parent.glob(f"base-{SUITE}-*.tar"):
        if old != base:
            old.unlink(missing_ok=True)


def _chroot(root: Path, script: str, what: str) -> None:
    _run(["unshare", "-m", "--propagation", "private", "chroot", str(root), "/bin/sh", "-ec", script], what)


def _configure(root: Path, mirror: str) -> None:
    say("box: vagrant user, ssh, network, masked services")
    pub = insecure_key().read_text().strip()
    _chroot(root, "useradd -m -s /bin/bash -U vagrant && passwd -d vagrant >/dev/null", "useradd vagrant")
    ssh_dir = root / "home/vagrant/.ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(pub + "\n")
    (ssh_dir / "authorized_keys").chmod(0o600)
    _chroot(root, "chown -R vagrant:vagrant /home/vagrant/.ssh", "chown .ssh")
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n")
    sudoers.chmod(0o440)
    (root / "etc/ssh/sshd_config.d/mntcr.conf").write_text(
        "UseDNS no\nGSSAPIAuthentication no\nPasswordAuthentication no\nMaxStartups 50\nMaxSessions 50\n")
    # sshd -t before every start costs seconds under TCG; the config is fixed at build time
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "mntcr.conf").write_text("[Service]\nExecStartPre=\n")
    (root / "etc/hostname").write_text("mntcr-box\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 mntcr-box\n")
    # no fstab entry: the initrd mounts the root rw, and an entry makes systemd wait for udev's dev-vda.device
    (root / "etc/fstab").write_text("# root is mounted by the initrd (mntcr)\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text(f"nameserver {GUEST_DNS}\n")
    (root / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    units = " ".join(MASKED)
    _chroot(root, f"systemctl enable ssh.service >/dev/null 2>&1; "
                  f"systemctl mask {units} >/dev/null 2>&1; "
                  "systemctl set-default multi-user.target >/dev/null 2>&1; "
                  "apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old", "systemctl setup")
    # a fixed id: an empty one makes every boot a first boot (presets, firstboot units)
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")


def _image(root: Path, out_dir: Path) -> Path:
    raw = out_dir / "root.raw"
    say(f"box: mkfs.ext4 -d ({SIZE_GB} GiB, sparse)")
    with open(raw, "wb") as f:
        f.truncate(SIZE_GB << 30)
    _run(["mkfs.ext4", "-q", "-F", "-L", "mntcr-root", "-d", str(root), str(raw)], "mkfs.ext4 -d")
    img = out_dir / "box.img"
    say("box: qemu-img convert to qcow2")
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(img)], "qemu-img convert")
    raw.unlink()
    return img


def build(dest: Path) -> Path:
    """Build the box file at dest (a tar: metadata.json, Vagrantfile, box.img)."""
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "unshare", "chroot"):
        if not shutil.which(tool):
            raise VMError(f"box build needs {tool}: apt-get install debootstrap e2fsprogs qemu-utils util-linux")
    mirror = aptfetch.archive_url()
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="box-", dir=cache.sub("vagrant")))
    try:
        root = work / "root"
        _debootstrap(root, mirror)
        _configure(root, mirror)
        img = _image(root, work)
        shutil.rmtree(root)
        (work / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2",
                                                        "virtual_size": SIZE_GB}))
        (work / "Vagrantfile").write_text("# mntcr box: settings come from the project's Vagrantfile\n")
        tmp = dest.with_suffix(".partial")
        say("box: packing")
        with tarfile.open(tmp, "w") as t:  # uncompressed: qcow2 is compact enough, gzip costs a minute
            for name in ("metadata.json", "Vagrantfile"):
                t.add(work / name, arcname=name)
            t.add(img, arcname="box.img")
        tmp.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"box built in {time.monotonic() - t0:.0f}s: {dest}")
    return dest


def ensure_box() -> Path:
    """The box file for the current recipe, built on first use (then reused from the cache)."""
    d = cache.sub("vagrant")
    out = d / f"mntcr-{SUITE}-{_key()}.box"
    if out.exists():
        return out
    with aptfetch.locked(cache.cache_dir() / "locks" / "vagrant-box"):
        if out.exists():
            return out
        build(out)
        for old in d.glob(f"mntcr-{SUITE}-*.box"):
            if old != out:
                old.unlink(missing_ok=True)
    return out
