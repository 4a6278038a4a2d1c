"""Which criu to run, and how to run it.

`--criu SPEC` picks one:

- ``system``: the host's own ``criu`` from $PATH (Debian bookworm's 3.17.1
  cannot start on kernels >= 6.13).
- ``trixie`` / ``sid``: a minbase Debian userland with criu, debootstrapped on
  first use into ``$MNTCR_CACHE/criu/<suite>`` (default ``~/.cache/mntcr``),
  from the Debian mirror the host's own apt sources name. criu 4.x needs glibc
  2.38, which bookworm lacks, so it runs from that userland.
- ``auto``: ``system`` on kernels before 6.13 when the host has criu, else ``trixie``.
- a PATH: a criu binary (run as is) or a userland directory holding ``usr/sbin/criu``.

A userland criu runs in a private mount namespace whose root is the userland,
entered by pivot_root (a plain chroot leaves the host's mount tree around
criu's root, which makes criu fail on its own mount tree). It stays in the
host's pid and network namespaces: criu must see the processes it dumps, and
reaches the target's other namespaces through /proc/PID. It gets a fresh
/proc, the host's /sys and /dev (recursive binds) and a /run tmpfs. Every path
criu must see (images dir, restore root, external mount sources) is bound in
at the same path, except paths that would cover the userland's own (the host's
/usr as an external mount source): those go under /run/mntcr/<name>
(`CriuEnv.inside` says where). The namespace dies with criu, so nothing stays mounted; the
empty mountpoint directories created inside the userland are removed after.
"""

from __future__ import annotations

import fcntl
import glob
import os
import platform
import re
import json
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field

from engine import kernel

__all__ = ["CriuEnv", "CriuEnvError", "resolve", "cache_dir", "debian_mirror", "build_userland"]

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("trixie", "sid")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# criu itself, plus what it execs for a tree with its own network namespace
# (iptables-restore/-save for network locking and rules, ip for addresses and routes).
PACKAGES = ("criu", "iptables", "iproute2")
MARKER = ".mntcr-packages"  # in the userland: the package list it was built with


class CriuEnvError(RuntimeError):
    """criu cannot be located or its userland cannot be built; the message is one line."""


def cache_dir() -> str:
    """The project's cache directory: ``$MNTCR_CACHE`` or ``~/.cache/mntcr``."""
    return os.environ.get("MNTCR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mntcr")


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _sources_entries() -> list[tuple[str, list[str]]]:
    """(uri, suites) for every ``deb`` entry of the host's apt sources, one-line and deb822."""
    entries: list[tuple[str, list[str]]] = []
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in files:
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        for line in text.splitlines():
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1], [line[2]]))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    return entries


def debian_mirror() -> str:
    """The Debian archive URL the host's own apt sources use (read now, never changed).

    Picks the first ``deb`` entry whose suite is a plain Debian release (not
    -security/-updates/-backports) and whose URL is not the security archive.
    """
    for uri, suites in _sources_entries():
        if "security" in uri:
            continue
        if any(re.fullmatch(r"[a-z]+", s) for s in suites) and "debian" in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def build_userland(suite: str, dest: str, *, log=sys.stderr) -> None:
    """Debootstrap a minbase ``suite`` userland with criu into ``dest`` (atomic: built aside, then renamed).

    Progress goes to ``log``. Concurrent callers (xdist workers) serialize on a
    lock file next to ``dest``; the second one finds the finished userland.
    debootstrap runs in a private mount namespace: nothing is mounted on the host.
    """
    if suite not in SUITES:
        raise CriuEnvError(f"unknown criu suite {suite!r}: expected one of {', '.join(SUITES)}")
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None)
    if not debootstrap:
        raise CriuEnvError("debootstrap is not installed (apt-get install debootstrap) - needed to build the criu userland")
    if not os.path.exists(KEYRING):
        raise CriuEnvError(f"{KEYRING} missing (apt-get install debian-archive-keyring)")
    unshare = shutil.which("unshare")
    if not unshare:
        raise CriuEnvError("unshare is not installed (apt-get install util-linux) - needed to build the criu userland")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _userland_ready(dest):
            return
        if os.path.exists(dest):
            print(f"mntcr: rebuilding {dest}: built without some of {', '.join(PACKAGES)}", file=log, flush=True)
            shutil.rmtree(dest)
        # Under the lock no other build runs: any build directory left here is a killed build's.
        for stale in glob.glob(glob.escape(dest) + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = f"{dest}.tmp-{os.getpid()}"
        mirror = debian_mirror()
        print(f"mntcr: building criu userland: debootstrap --variant=minbase {suite} from {mirror} "
              f"into {dest} (about a minute, once)", file=log, flush=True)
        start = time.monotonic()
        # debootstrap mounts proc and sys inside the target (and chroots there): in a private mount
        # namespace of its own, so none of that reaches the host's mount table, even when it is killed.
        cmd = [unshare, "--mount", "--propagation", "private", debootstrap, "--variant=minbase", "--include=" + ",".join(PACKAGES), f"--keyring={KEYRING}",
               suite, tmp, mirror]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-20:]
            # Only debootstrap's stage lines, not one per package: enough to show it is alive.
            if line.startswith(("I: Retrieving InRelease", "I: Resolving", "I: Installing core", "I: Unpacking the base",
                                "I: Configuring the base", "I: Base system installed", "E:", "W: Failure")):
                print(f"mntcr:   {line}", file=log, flush=True)
        if proc.wait() != 0 or not _userland_criu(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            errors = [l for l in tail if l.startswith("E:")] or tail[-1:] or ["no output"]
            raise CriuEnvError(f"debootstrap {suite} failed (exit {proc.returncode}): {errors[0]}")
        # debootstrap's apt cache is dead weight here.
        for deb in glob.glob(os.path.join(tmp, "var/cache/apt/archives/*.deb")):
            os.unlink(deb)
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write("\n".join(PACKAGES) + "\n")
        os.rename(tmp, dest)
        print(f"mntcr: criu userland ready in {time.monotonic() - start:.1f} s: {dest}", file=log, flush=True)


def _userland_ready(root: str) -> bool:
    """True when ``root`` is a userland built with every package of PACKAGES."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            built = set(f.read().split())
    except OSError:
        return False
    return set(PACKAGES) <= built and _userland_criu(root) is not None


def _userland_criu(root: str) -> str | None:
    for rel in ("usr/sbin/criu", "sbin/criu", "usr/bin/criu"):
        if os.path.isfile(os.path.join(root, rel)) and os.access(os.path.join(root, rel), os.X_OK):
            return "/" + rel
    return None


@dataclass
class CriuEnv:
    """A criu to run: ``binary`` on the host (``root`` None), or ``binary`` inside the userland ``root``."""

    spec: str
    binary: str
    root: str | None = None
    _check: tuple[bool, str] | None = field(default=None, repr=False, compare=False)
    _version: str | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line naming this criu, e.g. ``criu 4.1.1 (trixie userland /root/.cache/mntcr/criu/trixie)``."""
        where = f"{self.spec} userland {self.root}" if self.root else self.binary
        return f"criu {self.version()} ({where})"

    def version(self) -> str:
        """criu's version number, or ``unknown``."""
        if self._version is None:
            try:
                out = self.run(["--version"], timeout=30).stdout
                m = re.search(r"Version:\s*(\S+)", out)
                self._version = m.group(1) if m else "unknown"
            except (OSError, subprocess.SubprocessError):
                self._version = "unknown"
        return self._version

    def inside(self, host_path: str, alias: str) -> str:
        """Where criu will see ``host_path``: the same path for a host criu or a harmless
        path inside a userland, else ``/run/mntcr/<alias>`` (e.g. the host's /usr, which
        would otherwise cover the userland's own /usr)."""
        host_path = os.path.abspath(host_path)
        if self.root is None or not _shadows_userland(host_path):
            return host_path
        return f"{ALIAS_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', alias)}"

    def run(self, args: list[str], *, binds=(), timeout: float | None = None, stdin=subprocess.DEVNULL,
            tmpfs_root: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``criu *args`` and return the finished process (stdout and stderr as text, merged).

        ``binds`` are what criu must see: host paths (bound at the same path) or
        (host path, path inside) pairs, see `inside`. Ignored for a host criu.
        ``tmpfs_root``: {"inside", "source", "flags", "data", "copy_from"}: a
        tmpfs mounted at ``inside`` in criu's namespace and filled from the
        host directory ``copy_from`` before criu starts; a restore given it as
        --root keeps it alive in the restored namespace (it never exists on the
        host). For a host criu (no userland) ``inside`` must be an existing
        directory: it is covered only in criu's private namespace.
        """
        cmd = [self.binary, *args]
        if self.root is None and not tmpfs_root:
            return subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout)
        if self.root is None:
            # A host criu with a tmpfs root: the helper only makes a private (slave) mount
            # namespace, mounts the tmpfs at tmpfs_root["inside"] (an existing host directory,
            # covered only in that namespace) and execs criu there; no pivot_root, no binds.
            binds = ()
        pairs = sorted({(os.path.abspath(b), os.path.abspath(b)) if isinstance(b, str)
                        else (os.path.abspath(b[0]), b[1]) for b in binds}, key=lambda hb: len(hb[1]))
        for host, inside in pairs:
            if _shadows_userland(inside) and not inside.startswith(ALIAS_DIR + "/"):
                raise CriuEnvError(f"cannot bind {host} at {inside} in the criu userland: it would cover "
                                   f"the userland's own files (use CriuEnv.inside)")
        made = _prepare_mountpoints(self.root, [p for p in pairs if not p[1].startswith("/run/")]) if self.root else []
        spec = json.dumps({"root": self.root, "pairs": pairs, "tmpfs_root": tmpfs_root})
        # A fresh interpreter enters the namespace and execs criu: no preexec_fn in a
        # (possibly threaded) runner, and room to copy files before pivot_root.
        helper = [sys.executable, "-m", "zdtm.criu_env", "enter", spec, "--", *cmd]
        env = dict(os.environ)
        env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            return subprocess.run(helper, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, env=env)
        finally:
            _remove_mountpoints(made)

    def check(self) -> tuple[bool, str]:
        """Run ``criu check`` once (cached) -> (ok, reason). reason is criu's verdict line or its first error."""
        if self._check is None:
            try:
                proc = self.run(["check"], timeout=120)
            except (OSError, subprocess.SubprocessError) as e:
                self._check = (False, f"criu check could not run: {e}")
            else:
                lines = [l.strip() for l in proc.stdout.splitlines() if l.strip()]
                if proc.returncode == 0:
                    self._check = (True, lines[-1] if lines else "criu check passed")
                else:
                    err = first_error(proc.stdout) or (lines[-1] if lines else "no output")
                    self._check = (False, f"criu check failed (exit {proc.returncode}): {err}")
        return self._check


# Error lines criu logs and then carries on from: not the reason anything failed.
_BENIGN_ERRORS = ("Can't setup RLIMIT_NOFILE",)


def first_error(text: str) -> str | None:
    """criu's first error line in a log or output text, without its timestamp prefix; None if none."""
    for line in text.splitlines():
        if "Error" in line and not any(b in line for b in _BENIGN_ERRORS):
            # criu log lines look like "(00.012345) Error (criu/mount.c:123): message",
            # restore's with the task's pid after the timestamp: "(00.01) 1: Error ...".
            return re.sub(r"^\(\s*[\d.]+\)\s*(\d+:\s*)?", "", line).strip()
    return None


ALIAS_DIR = "/run/mntcr"  # on the userland's /run tmpfs: mountpoints there leave nothing behind
# Userland paths a same-path bind must not cover (criu's own binary, libraries, config, mounts).
_USERLAND_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys", "/dev",
                  "/run", "/var/lib", "/var/run")


def _shadows_userland(path: str) -> bool:
    path = os.path.abspath(path)
    return path == "/" or any(path == d or path.startswith(d + "/") or d.startswith(path + "/")
                              for d in _USERLAND_DIRS)


def _prepare_mountpoints(root: str, pairs) -> list[str]:
    """Create, inside the userland, the mountpoints for (host, inside) ``pairs``; return what was created."""
    made: list[str] = []
    for host, inside in pairs:
        parts = inside.strip("/").split("/")
        cur = root
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            if os.path.lexists(cur):
                continue
            if i == len(parts) - 1 and not os.path.isdir(host):
                open(cur, "w").close()  # a file bind needs a file to sit on
            else:
                os.mkdir(cur)
            made.append(cur)
    return made


def _remove_mountpoints(made: list[str]) -> None:
    for path in reversed(made):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass  # not empty or busy: harmless leftover in the cache


def _enter_userland(root: str, pairs, tmpfs_root: dict | None = None) -> None:
    """In the helper process before exec: private mount ns, userland mounts, pivot_root into it.

    Errors are written to stderr (criu's output pipe) and end the helper with
    status 126, so the caller sees the reason.
    """
    try:
        kernel.unshare(kernel.CLONE_NEWNS)
        # Slave, not private: bound-in host mounts keep their master (needed for
        # --enable-external-masters), yet nothing mounted here reaches the host.
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_SLAVE)
        if root is None:  # a host criu that only needs its tmpfs root (see CriuEnv.run)
            kernel.mount(tmpfs_root["source"], tmpfs_root["inside"], "tmpfs", tmpfs_root["flags"],
                         tmpfs_root["data"] or None)
            copy_tree(tmpfs_root["copy_from"], tmpfs_root["inside"])
            return
        kernel.mount(root, root, None, kernel.MS_BIND)
        kernel.mount("proc", os.path.join(root, "proc"), "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
        kernel.mount("/sys", os.path.join(root, "sys"), None, kernel.MS_BIND | kernel.MS_REC)
        kernel.mount("/dev", os.path.join(root, "dev"), None, kernel.MS_BIND | kernel.MS_REC)
        kernel.mount("tmpfs", os.path.join(root, "run"), "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=755")
        for host, inside in pairs:  # shortest inside path first: nested binds land on their parents
            target = os.path.join(root, inside.lstrip("/"))
            if inside.startswith(ALIAS_DIR + "/"):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.isdir(host):
                    os.makedirs(target, exist_ok=True)
                elif not os.path.exists(target):
                    open(target, "w").close()
            kernel.mount(host, target, None, kernel.MS_BIND | kernel.MS_REC)
        if tmpfs_root:
            target = os.path.join(root, tmpfs_root["inside"].lstrip("/"))
            os.makedirs(target, exist_ok=True)
            kernel.mount(tmpfs_root["source"], target, "tmpfs", tmpfs_root["flags"], tmpfs_root["data"] or None)
            copy_tree(tmpfs_root["copy_from"], target)
        os.chdir(root)
        kernel.pivot_root(".", ".")
        kernel.umount2(".", kernel.MNT_DETACH)
        os.chdir("/")
    except BaseException as e:  # noqa: BLE001 - must not return into exec on failure
        os.write(2, f"mntcr: cannot enter criu userland {root}: {e}\n".encode())
        os._exit(126)


# -- copying a file tree (the restore root) ---------------------------------------------------

def copy_entry(src: str, dst: str, st: os.stat_result, content: bool = True) -> None:
    """Recreate one non-directory entry ``src`` at ``dst`` (file content only when ``content``)."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(mode):
        if content:
            shutil.copyfile(src, dst, follow_symlinks=False)
        else:
            open(dst, "wb").close()
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, 0o600)
    else:
        return  # sockets: criu recreates bound unix sockets itself
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(mode):
        os.chmod(dst, stat.S_IMODE(mode))


def copy_tree(src: str, dst: str) -> None:
    """Copy directory ``src`` into ``dst`` keeping device nodes, fifos, symlinks, modes and owners."""
    os.makedirs(dst, exist_ok=True)
    for entry in os.scandir(src):
        s_path, d_path = entry.path, os.path.join(dst, entry.name)
        st = os.lstat(s_path)
        if stat.S_ISDIR(st.st_mode):
            copy_tree(s_path, d_path)
        elif not os.path.lexists(d_path):
            copy_entry(s_path, d_path, st)
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


_RESOLVED: dict[str, CriuEnv] = {}


def resolve(spec: str | None = "auto") -> CriuEnv:
    """Locate (building on first use) the criu named by ``spec``; cached per spec for this process.

    Raises CriuEnvError with a one-line reason when that criu cannot be had.
    """
    spec = spec or "auto"
    if spec in _RESOLVED:
        return _RESOLVED[spec]
    if spec == "auto":
        host = shutil.which("criu")
        env = resolve("system") if host and _kernel_version() < (6, 13) else resolve("trixie")
    elif spec == "system":
        host = shutil.which("criu")
        if not host:
            raise CriuEnvError("no criu on the host's PATH (apt-get install criu, or use --criu trixie)")
        env = CriuEnv("system", host)
    elif spec in SUITES:
        dest = os.path.join(cache_dir(), "criu", spec)
        if not _userland_ready(dest):
            build_userland(spec, dest)
        env = CriuEnv(spec, _userland_criu(dest), dest)
    elif os.path.isdir(spec):
        binary = _userland_criu(spec)
        if not binary:
            raise CriuEnvError(f"{spec} is a directory without usr/sbin/criu")
        env = CriuEnv(spec, binary, os.path.abspath(spec))
    elif os.path.isfile(spec) and os.access(spec, os.X_OK):
        env = CriuEnv(spec, os.path.abspath(spec))
    else:
        raise CriuEnvError(f"--criu {spec}: not system, auto, {', '.join(SUITES)}, a criu binary or a userland dir")
    _RESOLVED[spec] = env
    return env


def _main(argv: list[str]) -> int:
    """``python -m zdtm.criu_env enter SPEC -- criu ARGS``: the helper `CriuEnv.run` starts."""
    if len(argv) < 4 or argv[0] != "enter" or argv[2] != "--":
        print("usage: python -m zdtm.criu_env enter SPEC_JSON -- CRIU [ARGS...]", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    _enter_userland(spec["root"], [tuple(p) for p in spec["pairs"]], spec.get("tmpfs_root"))
    try:
        os.execv(argv[3], argv[3:])
    except OSError as e:
        print(f"mntcr: cannot run {argv[3]} in the criu userland: {e}", file=sys.stderr)
        return 126


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
