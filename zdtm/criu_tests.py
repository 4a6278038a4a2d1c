"""Run one of CRIU's real zdtm static tests (a compiled C program) through a mntcr dump and restore.

CRIU's test/zdtm.py starts an `ns`-flavor test like this (and so does `run`):
the test directory is bind-mounted privately at ZDTM_ROOT, a fresh tmpfs with a
few device nodes is ZDTM_DEV, and the test binary is started from
ZDTM_ROOT/zdtm/static with ZDTM_NEWNS=1 and its Makefile's arguments
(`--pidfile --outfile [--dirname|--filename]`). The test (test/zdtm/lib/ns.c)
clones new pid, mount, uts, ipc and net namespaces (with ZDTM_USERNS=1, the
`uns` flavor, a user namespace too), pivots into ZDTM_ROOT, binds ZDTM_DEV at
/dev, mounts /proc, /run and a devpts, then its pid 1 forks the test proper,
which sets up what it tests, daemonizes and writes the pid file. On SIGTERM it
checks its state and writes PASS or FAIL into its outfile.

mntcr restores mounts and stand-in processes, not a program's memory: a
stand-in cannot run the test's check. So one run here proves two things:

1. restore is exact: the test is dumped with --leave-running and the restored
   tree (`mntcr restore --root ZDTM_ROOT`, /dev external as CRIU's zdtm.py
   declares it) is compared with the running test by the runner's snapshot
   (every process's mount tree, fds, root, cwd, mappings: zdtm/snapshot.py);
2. dump leaves the tree intact: after the restored tree is killed, the test
   itself gets SIGTERM and its own check must write PASS (a dump that consumed
   a pipe's data or disturbed a mount fails here, as it would under CRIU).

A dump refusal is an outcome of its own ("refused", with mntcr's one line)
when the test is still running after it and then passes its own check. Everything happens in a private
mount namespace of a helper process (`python -m zdtm.criu_tests`, started
under `unshare --mount --propagation private`): nothing is mounted on the
host, and the helper kills what it started before it exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from engine import cli as engine_cli
from engine import mountinfo
from zdtm import criu_env, snapshot, watchdog
from zdtm import criu_source
from zdtm.criu_source import TestProgram

__all__ = ["Result", "run", "unsupported_flavor"]

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# test/zdtm.py's ns_flavor: the root's directories, and the test's credentials when it is not 'suid'.
ROOT_DIRS = ("bin", "sbin", "etc", "lib", "lib64", "dev", "tmp", "usr", "proc", "run")
TEST_CREDS = {"ZDTM_UID": "18943", "ZDTM_GID": "58467", "ZDTM_GROUPS": "27495 48244"}
FLAVORS = ("ns", "uns")
DEFAULT_TIMEOUT = 30.0

# criu options a .desc passes (opts: dump and restore, dopts: dump, ropts: restore) that need nothing
# from mntcr, and why. Any other option makes the test a skip naming it: never run it half-configured.
IGNORED_OPTS = {
    "--link-remap": "mntcr keeps files open under a deleted or linked name without a flag",
    "--file-locks": "mntcr always dumps the tree's file locks (engine/filelocks.py), or refuses naming one",
    "--mntns-compat-mode": "criu's choice of its mount engine; mntcr has one",
    "--no-mntns-compat-mode": "criu's choice of its mount engine; mntcr has one",
    "--manage-cgroups": "cgroup membership is not mntcr's (cgroup mounts are dumped)",
    "--manage-cgroups=full": "cgroup membership is not mntcr's (cgroup mounts are dumped)",
    "--manage-cgroups=ignore": "cgroup membership is not mntcr's (cgroup mounts are dumped)",
    "--ghost-limit": "mntcr keeps deleted files of any size: there is no limit to raise",
    "--ghost-fiemap": "how criu finds a deleted file's holes; mntcr's archive keeps them (tar --sparse)",
    "--no-ghost-fiemap": "how criu finds a deleted file's holes; mntcr's archive keeps them (tar --sparse)",
    "--force-irmap": "how criu names an inotify watch's file (by a scan); mntcr finds it by its inode on the mount",
    "--irmap-scan-path": "where criu's scan for an inotify watch's file starts; mntcr does not scan",
    "--tcp-established": "mntcr always keeps the established TCP connections whose two ends the tree holds "
                         "(engine/fds/inet_tcp.py), or refuses naming one",
}
# --external mnt[]:FLAGS and mnt[] ask criu to detect external mounts itself; mntcr dumps every mount
# it can and names the others, so they ask nothing more of it.
_AUTO_EXTERNAL = ("mnt[]", "mnt[]:s", "mnt[]:m", "mnt[]:ms", "mnt[]:sm")
# Kernel features a .desc may require (zdtm.py's --feature checks), probed here.
FEATURES = {
    "mnt_id": lambda: os.path.exists("/proc/self/fdinfo/0") and "mnt_id:" in open("/proc/self/fdinfo/0").read(),
    "move_mount_set_group": lambda: _kernel_at_least(5, 15),
    "cgroupns": lambda: os.path.exists("/proc/self/ns/cgroup"),
    "autofs": lambda: "autofs" in _kernel_filesystems(),
    "sk_unix_file": lambda: _sk_unix_file(),
    "kcmp_epoll": lambda: _kernel_at_least(4, 13),   # kcmp(KCMP_EPOLL_TFD)
    "timerfd": lambda: _kernel_at_least(3, 17),      # timerfd state in fdinfo
    "fdinfo_lock": lambda: _kernel_at_least(4, 1),   # "lock:" lines in fdinfo (engine/filelocks.py reads them)
    "tcp_half_closed": lambda: _kernel_at_least(4, 11),   # TCP_REPAIR on a connection past ESTABLISHED
    "seccomp_filters": lambda: _kernel_at_least(4, 4),    # PTRACE_SECCOMP_GET_FILTER (engine/seccomp.py)
    "seccomp_suspend": lambda: _kernel_at_least(4, 3),    # PTRACE_O_SUSPEND_SECCOMP
    "loginuid": lambda: os.path.exists("/proc/self/loginuid"),   # (audit: engine/loginuid.py)
    "timens": lambda: os.path.exists("/proc/self/ns/time"),
    "ns_pid": lambda: "NSpid:" in open("/proc/self/status").read(),
    "tun": lambda: os.path.exists("/dev/net/tun"),
    "tun_ns": lambda: os.path.exists("/dev/net/tun") and _kernel_at_least(5, 2),   # TUNGETDEVNETNS
    "link_nsid": lambda: _kernel_at_least(4, 0),   # IFLA_LINK_NETNSID of a veth whose peer is in another namespace
    "sockopt_buf_lock": lambda: _kernel_at_least(5, 14),   # SO_BUF_LOCK
    "aio_remap": lambda: _kernel_at_least(3, 19),          # mremap of an aio ring
    "memfd_hugetlb": lambda: _kernel_at_least(4, 14),      # MFD_HUGETLB
    # (criu reads raw sockets with raw_diag; mntcr with /proc/net/raw: engine/fds/inet_proc.py)
    "net_diag_raw": lambda: os.path.exists("/proc/self/net/raw"),
    "ipv6_freebind": lambda: _ipv6_freebind(),   # IPV6_FREEBIND (Linux 4.15)
    # the test's own tools: iptables-legacy and nft run inside its root (its .desc's deps)
    "has_ipt_legacy": lambda: shutil.which("iptables-legacy") is not None,
    "nftables": lambda: shutil.which("nft") is not None,
}


def _sk_unix_file() -> bool:
    """SIOCUNIXFILE (an O_PATH fd on a bound unix socket's file): zdtm.py's sk_unix_file feature."""
    import fcntl
    import socket
    d = tempfile.mkdtemp(prefix="mntcr-sk-probe-")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(os.path.join(d, "s"))
            try:
                os.close(fcntl.ioctl(s.fileno(), 0x89E0))
            except OSError:
                return False
            return True
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _ipv6_freebind() -> bool:
    """IPV6_FREEBIND (78) on an IPv6 socket: zdtm.py's ipv6_freebind feature (criu check)."""
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, 78, 1)
    except OSError:
        return False
    return True


def _kernel_filesystems() -> set[str]:
    with open("/proc/filesystems") as f:
        return {line.split()[-1] for line in f if line.strip()}


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split(".")
    try:
        return (int(release[0]), int(release[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


@dataclass(frozen=True)
class Options:
    """What a test's .desc asks of the checkpointer, in mntcr's terms."""

    dump: tuple[str, ...] = ()      # extra `mntcr dump` arguments (--external mnt[MOUNTPOINT]:KEY)
    restore: tuple[str, ...] = ()   # extra `mntcr restore` arguments (--external mnt[KEY]:HOSTPATH)
    auto_masters: bool = False      # --ext-mount-map auto --enable-external-masters: see _auto_externals
    unsupported: str | None = None  # the first option nothing here translates, or None


def _opt_words(text: str) -> list[tuple[str, str | None]]:
    """criu's options as (option, value) pairs; `--opt=value` and `--opt value` for the ones with a value."""
    with_value = {"--external", "--ext-mount-map", "--enable-fs", "--cgroup-root", "--cgroup-yard",
                  "--lsm-mount-context", "--ghost-limit", "--irmap-scan-path"}
    words, out, i = text.split(), [], 0
    while i < len(words):
        word = words[i]
        if word in with_value and i + 1 < len(words):
            out.append((word, words[i + 1]))
            i += 2
            continue
        key, eq, value = word.partition("=")
        out.append((key, value) if eq and key in with_value else (word, None))
        i += 1
    return out


def options(desc: dict) -> Options:
    """Translate a .desc's criu options (opts, dopts, ropts) into mntcr's.

    ``--external mnt[MOUNTPOINT]:KEY`` at dump and ``mnt[KEY]:PATH`` at restore mean
    the same to mntcr (a relative PATH is taken from criu's root, "/");
    ``--ext-mount-map auto`` with ``--enable-external-masters`` is criu detecting
    mounts whose master is outside and binding them again from the same host mount:
    the driver finds those after the test started (mntcr has no auto mode).
    """
    dump_args: list[str] = []
    restore_args: list[str] = []
    flags: set[str] = set()
    for field, stages in (("opts", ("dump", "restore")), ("dopts", ("dump",)), ("ropts", ("restore",))):
        for opt, value in _opt_words(desc.get(field, "")):
            if opt == "--external" and value in _AUTO_EXTERNAL:
                continue
            if opt == "--external" and value and value.startswith("mnt[") and "]:" in value:
                inside, _, rest = value[4:].partition("]:")
                for stage in stages:
                    if stage == "dump":
                        dump_args += ["--external", f"mnt[{inside}]:{rest}"]
                    else:
                        restore_args += ["--external", f"mnt[{inside}]:{os.path.join('/', rest)}"]
                continue
            if opt == "--external" and value and value.startswith("dev[") and "]:" in value:
                # (criu's dev[MAJOR/MINOR]:KEY at dump, dev[KEY]:PATH at restore; mntcr's dev[MAJOR:MINOR])
                inside, _, rest = value[4:].partition("]:")
                for stage in stages:
                    (dump_args if stage == "dump" else restore_args).extend(
                        ["--external", f"dev[{inside.replace('/', ':')}]:{rest}"])
                continue
            if opt == "--ext-mount-map" and value == "auto":
                flags.add("auto")
                continue
            if opt == "--enable-external-masters":
                flags.add("masters")
                continue
            if opt == "--enable-fs" and value:
                # criu mounts such a filesystem fresh; mntcr does that for every type it has a module
                # for (engine/fs) and refuses the others by name: only the kernel must have it
                missing = [fs for fs in value.split(",") if fs not in _kernel_filesystems()]
                if missing:
                    return Options(unsupported=f"--enable-fs {value} (this kernel has no {','.join(missing)})")
                continue
            if opt in IGNORED_OPTS:
                continue
            return Options(unsupported=f"{opt} {value}" if value else opt)
    if "masters" in flags and "auto" not in flags:
        return Options(unsupported="--enable-external-masters without --ext-mount-map auto")
    return Options(tuple(dump_args), tuple(restore_args), flags == {"auto", "masters"})


@dataclass(frozen=True)
class Result:
    """How a real test fared: outcome pass | fail | refused | skip, the stage, and one-paragraph detail."""

    name: str
    outcome: str
    stage: str = ""
    detail: str = ""

    def line(self) -> str:
        """`name: outcome (stage: first line of detail)`."""
        first = self.detail.splitlines()[0] if self.detail else ""
        why = f" ({self.stage}: {first})" if self.stage or first else ""
        return f"{self.name}: {self.outcome}{why}"


def unsupported_flavor(program: TestProgram, flavor: str) -> str | None:
    """Why `program` cannot run in `flavor` here, or None."""
    if flavor not in FLAVORS:
        return f"unknown flavor {flavor!r}: one of {', '.join(FLAVORS)}"
    allowed = program.desc.get("flavor", "h ns uns").split()
    if flavor not in allowed:
        return f"{program.name}.desc allows flavors {' '.join(allowed)}, not {flavor}"
    arches = program.desc.get("arch", "").split()
    if arches and os.uname().machine not in arches:
        # (zdtm.py skips such a test too: its check reads registers of another architecture)
        return f"{program.name}.desc is for {' '.join(arches)}, not {os.uname().machine}"
    for feature in program.desc.get("feature", "").split():
        probe = FEATURES.get(feature)
        if probe is None:
            return f"{program.name}.desc needs the criu feature {feature!r}, which this driver does not probe"
        if not probe():
            return f"{program.name}.desc needs the kernel feature {feature!r}, which this kernel lacks"
    unsupported = options(program.desc).unsupported
    if unsupported:
        return f"{program.name}.desc runs criu with {unsupported}, which this driver does not translate"
    return None


def run(program: TestProgram, workdir: str, flavor: str = "ns", timeout: float | None = None) -> Result:
    """Start `program` in `flavor`, dump it with mntcr, restore, compare, then let it check itself.

    Runs in a helper process in a private mount namespace; `workdir` (created,
    must be empty) keeps the image, the logs and the snapshots.
    """
    if "code" in program.desc:
        return _with_device(program, workdir, flavor, timeout)
    why = unsupported_flavor(program, flavor)
    if why:
        return Result(program.name, "skip", "", why)
    os.makedirs(workdir, exist_ok=True)
    timeout = float(timeout or program.desc.get("timeout") or DEFAULT_TIMEOUT)
    # The mount points of the test's root and /dev: on a path every user can walk, as zdtm.py
    # makes its tests root 0755 (the `uns` test's root user is host uid 20000, and workdir may
    # lie in a 0700 directory, pytest's). Only empty directories: the tmpfs mounts die with the helper.
    mounts = tempfile.mkdtemp(prefix="mntcr-zdtm-", dir="/tmp")
    os.chmod(mounts, 0o755)
    spec = {"program": asdict(program), "workdir": os.path.abspath(workdir), "mounts": mounts, "flavor": flavor,
            "timeout": timeout}
    env = dict(os.environ)
    env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "zdtm.criu_tests",
           "--inside", json.dumps(spec)]
    log = os.path.join(workdir, "driver.log")
    before = _host_dirs()
    with open(log, "wb") as out, open(_RUNNING_LOCK, "a") as running:
        fcntl.flock(running, fcntl.LOCK_SH)
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out, env=env,
                                  cwd=_PROJECT_ROOT, timeout=6 * timeout + 60)
        except subprocess.TimeoutExpired:
            return Result(program.name, "fail", "driver", f"the driver timed out; see {log}")
        finally:
            shutil.rmtree(mounts, ignore_errors=True)
            fcntl.flock(running, fcntl.LOCK_UN)
            _remove_host_dirs(_host_dirs() - before, running)
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        return Result(**json.loads(lines[-1]))
    except (IndexError, ValueError, TypeError):
        with open(log, errors="replace") as f:
            tail = f.read().strip().splitlines()[-5:]
        return Result(program.name, "fail", "driver",
                      f"the driver exited {proc.returncode} without a result: {' | '.join(tail)}")


# Some tests make their outside mounts' directories on the host's / or /tmp (the helper's mount
# namespace is private, its directories are not): /tmp/zdtm_ext_auto.XXXXXX, /.zdtm_root_ext.tmp...
_HOST_DIRS = ("/", "/tmp")
_RUNNING_LOCK = "/tmp/.mntcr-criu-tests.lock"   # held shared by each run while its test lives


def _host_dirs() -> set[str]:
    found = set()
    for d in _HOST_DIRS:
        try:
            found |= {os.path.join(d, n) for n in os.listdir(d) if n.startswith(("zdtm_", ".zdtm_"))}
        except OSError:
            pass
    return found


def _remove_host_dirs(new: set[str], lock) -> None:
    """rmdir the empty directories a test left on the host, when no other run is under way (one of
    them may be another run's mount point, and rmdir would detach its mount)."""
    if not new:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return   # the last run to finish removes them
    try:
        for path in sorted(new, key=len, reverse=True):
            try:
                os.rmdir(path)
            except OSError:
                pass   # not empty, or gone: not ours to clear
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


# --- inside the helper's private mount namespace ---------------------------------------------

def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, stdin=subprocess.DEVNULL, capture_output=True)


def _ldd(binary: str) -> list[str]:
    """The shared libraries `binary` loads (test/zdtm.py copies them into the root the same way)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if not line.startswith("\t") or not parts or parts[0].startswith(("linux-vdso", "linux-gate")):
            continue
        path = parts[2] if len(parts) > 2 and parts[1] == "=>" else parts[0]
        if path.startswith("/"):
            libs.append(path)
    return libs


def _copy_in(root: str, path: str) -> None:
    target = root + path
    if os.path.exists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(path, target)


def _mount_root(path: str) -> None:
    os.makedirs(path)
    _mount("-t", "tmpfs", "-o", "mode=0755", "zdtm-root", path)
    _mount("--make-private", path)


def _build_root(root: str, program: TestProgram) -> str:
    """test/zdtm.py's ns root: its directories, /usr/* links, the test binary and the desc's deps."""
    for d in ROOT_DIRS:
        os.mkdir(os.path.join(root, d))
        os.chmod(os.path.join(root, d), 0o777)
    for d in ("bin", "sbin", "lib", "lib64"):
        os.symlink("../" + d, os.path.join(root, "usr", d))
    # ns.c pivots into the root with ./old as put_old and makes it if missing, which the `uns`
    # flavor's root (host root's files, unmapped there) cannot: zdtm.py's checkout has it after a run.
    os.mkdir(os.path.join(root, "old"))
    os.chmod(os.path.join(root, "old"), 0o777)
    static = os.path.join(root, "zdtm", "static")
    os.makedirs(static)
    shutil.copy2(program.binary, os.path.join(static, program.name))
    for alternatives in program.desc.get("deps", []):
        found = [d for d in alternatives.split("|") if os.path.exists(d)]
        if not found:
            raise RuntimeError(f"{program.name}.desc needs {alternatives}, which this machine lacks")
        for path in [found[0], *_ldd(found[0])]:
            _copy_in(root, path)
    return static


def _with_device(program: TestProgram, workdir: str, flavor: str, timeout: float | None) -> Result:
    """`run` a test whose .desc is code that needs ZDTM_MNT_EXT_DEV (mnt_ext_dev: it mounts that
    ext4 block device): a loop device on a fresh 64 MiB ext4 image in `workdir`, its .desc
    evaluated as zdtm.py does (with `os` alone), detached again at the end."""
    import dataclasses
    os.makedirs(workdir, exist_ok=True)
    img = os.path.join(workdir, "ext-dev.img")
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True, capture_output=True)
        dev = subprocess.run(["losetup", "--find", "--show", img], check=True, capture_output=True,
                             text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        os.unlink(img)
        return Result(program.name, "skip", "", f"no ext4 loop device for {criu_source.EXT_DEV}: {e}")
    try:
        os.environ[criu_source.EXT_DEV] = dev
        desc = eval(program.desc["code"], {"__builtins__": {}, "os": os})   # noqa: S307 (zdtm.py's own way)
        return run(dataclasses.replace(program, desc=desc if isinstance(desc, dict) else {}), workdir, flavor,
                   timeout)
    finally:
        os.environ.pop(criu_source.EXT_DEV, None)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        os.unlink(img)


def _build_dev(dev: str) -> None:
    """ZDTM_DEV: a tmpfs with the nodes test/zdtm.py makes (tty, null, net/tun, rtc, autofs)."""
    os.makedirs(dev)
    _mount("-t", "tmpfs", "criu-test-dev", dev)
    os.chmod(dev, 0o777)
    for d in ("pts", "net"):
        os.mkdir(os.path.join(dev, d), 0o755)
    nodes = {"tty": os.makedev(5, 0), "null": os.makedev(1, 3), "autofs": os.makedev(10, 235)}
    for name in ("net/tun", "rtc"):
        try:
            nodes[name] = os.stat("/dev/" + name).st_rdev
        except OSError:
            pass   # zdtm.py skips what the host lacks too
    for name, rdev in nodes.items():
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, rdev)
        os.chmod(path, 0o666)
    ext = os.environ.get(criu_source.EXT_DEV)
    if ext:   # (the block device mnt_ext_dev mounts, where the test finds it: `_with_device`)
        os.mknod(os.path.join(dev, os.path.basename(ext)), 0o600 | stat.S_IFBLK, os.stat(ext).st_rdev)



def _auto_externals(pid: int) -> list[tuple[str, str]]:
    """criu's ``--ext-mount-map auto --enable-external-masters`` for the test `pid`: each of its mounts
    that is a slave of a peer group no mount of its namespace is in, as (mountpoint, host path): the
    path in the helper's namespace where a member of that group shows the same directory. A group
    the helper cannot see is left alone (dump then names the mount)."""
    inside = mountinfo.read_pid(pid)
    groups = {m.shared for m in inside if m.shared}
    outside = [m for m in mountinfo.read_pid("self") if m.shared]
    found = []
    for m in inside:
        if not m.master or m.master in groups:
            continue
        for h in outside:
            if h.shared != m.master or h.dev != m.dev:
                continue
            if h.root == "/" or m.root == h.root or m.root.startswith(h.root.rstrip("/") + "/"):
                rest = m.root[len(h.root.rstrip("/")):].lstrip("/")
                found.append((m.mountpoint, os.path.join(h.mountpoint, rest) if rest else h.mountpoint))
                break
    return found


def _tail(path: str, n: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(ln.strip() for ln in f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


TIMED_OUT = "timed out"   # (what `_mntcr` says of a stage it killed: never a refusal)


def _mntcr(stage: str, args: list[str], log: str, timeout: float) -> str | None:
    """Run `mntcr STAGE ARGS`; None when it succeeded, else its last stderr line."""
    env = dict(os.environ, PYTHONPATH=_PROJECT_ROOT)
    cmd = engine_cli.command(stage, *args)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=_PROJECT_ROOT,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{TIMED_OUT} after {timeout:g}s"
    with open(log, "wb") as f:
        f.write(b"$ " + shlex.join(cmd).encode() + b"\n--- stdout\n" + proc.stdout + b"--- stderr\n" + proc.stderr)
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}, no message"


class _Run:
    """One test's run inside the helper; `result()` never raises for the test's own failures."""

    def __init__(self, spec: dict):
        self.p = TestProgram(**{**spec["program"], "args": tuple(spec["program"]["args"])})
        self.w = spec["workdir"]
        self.flavor = spec["flavor"]
        self.timeout = spec["timeout"]
        self.mounts = spec["mounts"]
        self.root = os.path.join(self.mounts, "root")
        self.dev = os.path.join(self.mounts, "dev")
        self.test_pid: int | None = None
        self.restored: int | None = None
        self.held: list[int] = []   # the test's processes the driver stopped (hold_still)

    def res(self, outcome: str, stage: str = "", detail: str = "") -> Result:
        return Result(self.p.name, outcome, stage, detail)

    def start(self) -> Result | None:
        # zdtm.py binds the test directory here; a tmpfs (private, as zdtm.py's bind) lets the restored
        # tree get an equal one (same source, options and root path) holding a copy (`cycle`).
        _mount_root(self.root)
        static = _build_root(self.root, self.p)
        _build_dev(self.dev)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": "/tmp",
               "LANG": "C", "ZDTM_NEWNS": "1", "ZDTM_ROOT": self.root, "ZDTM_DEV": self.dev}
        if self.flavor == "uns":
            env["ZDTM_USERNS"] = "1"
        flags = self.p.desc.get("flags", "").split()
        # zdtm.py's __add_wperms: the test writes its pid and out files as another user. zdtm.py adds
        # them for a non-suid test only, but on the one directory every test shares, which is writable
        # once any non-suid test ran: a suid test that drops root (mlock_setuid) needs that too.
        os.chmod(static, os.stat(static).st_mode | 0o222)
        if "suid" not in flags:
            env.update(TEST_CREDS)
        if os.environ.get(criu_source.EXT_DEV):
            env[criu_source.EXT_DEV] = os.environ[criu_source.EXT_DEV]
        name = self.p.name
        with open(os.path.join(self.w, "start.log"), "wb") as log:
            try:
                proc = subprocess.run([f"./{name}", *self.p.args], cwd=static, env=env, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return self.res("fail", "start", f"the test did not get ready in {self.timeout:g}s")
        pidfile = os.path.join(static, f"{name}.pid")
        if proc.returncode != 0 or not os.path.exists(pidfile):
            self.keep_outputs()
            why = _tail(os.path.join(static, f"{name}.out.inprogress")) or _tail(os.path.join(self.w, "start.log"))
            return self.res("fail", "start", f"the test failed to start (exit {proc.returncode}): {why}")
        with open(pidfile) as f:
            self.test_pid = int(f.read().strip())
        watchdog.guard(self.test_pid)
        return None

    def cycle(self) -> Result:
        pid = self.test_pid
        ignore = ()
        before = snapshot.take(pid, ignore_maps_on=ignore)   # (taken once the test sleeps: snapshot.settle)
        before = self.hold_still(before)
        _save(os.path.join(self.w, "before.txt"), before.text())
        images = os.path.join(self.w, "images")
        opts = options(self.p.desc)
        dump_ext, restore_ext = list(opts.dump), list(opts.restore)
        if opts.auto_masters:
            for n, (mountpoint, host_path) in enumerate(_auto_externals(pid)):
                dump_ext += ["--external", f"mnt[{mountpoint}]:AUTO{n}"]
                restore_ext += ["--external", f"mnt[AUTO{n}]:{host_path}"]
        err = _mntcr("dump", ["-t", str(pid), "-D", images, "--leave-running", "--external", "mnt[/dev]:ZDTM_DEV",
                              *dump_ext],
                     os.path.join(self.w, "dump.log"), self.timeout * 2)
        self.resume()
        if err:
            if err.startswith(TIMED_OUT):
                return self.res("fail", "dump", f"mntcr dump {err}")   # (killed: no refusal line)
            if not snapshot.alive(pid):
                return self.res("fail", "dump", f"dump refused and the test is gone: {err}")
            # A refusal must leave the tree running and untouched: the test's own check says so.
            after_refusal = self.verdict()
            if after_refusal.outcome != "pass":
                return self.res("fail", "dump", f"dump refused ({err}), and then {after_refusal.detail}")
            return self.res("refused", "dump", err)
        # The test keeps running: the restored tree gets a copy of its root as it is after the dump
        # (CRIU's zdtm.py restores on the dead test's own root), so that neither sees the other's
        # FIFO buffers or socket files. Sockets are not copied: restore binds them again.
        restore_root = os.path.join(self.mounts, "restore-root")
        _mount_root(restore_root)
        left = _inotify_fds(pid, queued=True)
        if left:   # (the dump refuses a queue that is not empty: these are its own reads')
            return self.res("fail", "dump", "the dump left inotify events on the test's " + ", ".join(
                f"process {p} fd {n} ({b} bytes)" for p, n, b in left))
        criu_env.copy_tree(self.root, restore_root)
        _drop_copy_events(pid)
        pidfile = os.path.join(self.w, "restored.pid")
        err = _mntcr("restore", ["-D", images, "--root", restore_root, "--external", f"mnt[ZDTM_DEV]:{self.dev}",
                                 *restore_ext, "--pidfile", pidfile, "--devices", "all"],
                     os.path.join(self.w, "restore.log"), self.timeout * 2)
        if err:
            return self.res("fail", "restore", err)
        with open(pidfile) as f:
            self.restored = int(f.read().strip())
        watchdog.guard(self.restored)
        after = snapshot.take(self.restored, ignore_maps_on=ignore)
        _save(os.path.join(self.w, "after.txt"), after.text())
        equal, report = snapshot.compare(before, after, names=("test", "restored"))
        if not equal:
            # The kernel may change what no process does between `before` and the dump (TCP autotunes
            # a send buffer): the restored tree equals the test's state at the dump, which is then
            # its state after it (left running, it keeps what the kernel changed).
            equal = snapshot.compare(snapshot.take(pid, ignore_maps_on=ignore), after)[0]
        snapshot.kill_tree(self.restored)
        self.restored = None
        if not equal:
            busy = "" if before.settled else " (the test was still running when its state was taken: it never slept)"
            return self.res("fail", "compare", f"restored state differs from the test's{busy}:\n" + report)
        return self.verdict()

    def hold_still(self, before: snapshot.Snapshot) -> snapshot.Snapshot:
        """The test's state as the dump will read it. A test that moves on its own (it never sleeps, or a
        second look differs: a heartbeat, a timer's thread, TCP moving its bytes) would be read by the
        dump in another state than `before`: the driver stops each of its processes (SIGSTOP, as a job
        is stopped; the dump keeps them stopped and restore makes them stopped again) and takes its
        state once two looks agree; `resume` lets them go on after the dump. Returns the state."""
        pid = self.test_pid
        again = snapshot.take(pid, ignore_maps_on=())
        equal, report = snapshot.compare(before, again, names=("first look", "second look"))
        if before.settled and equal:
            return before
        print(f"criu_tests: {self.p.name} moves on its own ({'never sleeps' if not before.settled else report}): "
              "stopped (SIGSTOP) for its state and the dump", file=sys.stderr, flush=True)
        # Parents first, each stopped before its children: a child's stop sends its parent SIGCHLD,
        # which a parent still running would handle meanwhile (zdtm's ns init: stopped inside its
        # handler, its mask then blocks SIGCHLD and SIGTERM); a stopped one keeps it pending.
        self.held = [p for p in snapshot.tree_pids(pid) if _state(p) not in ("T", "t", "Z", "X", "")]   # (not a
        # stopped or traced one: it stays so; SIGCONT would wake it)
        deadline = time.monotonic() + self.timeout
        for p in self.held:
            os.kill(p, signal.SIGSTOP)
            while any(_state(t) not in ("T", "t", "Z", "X", "") for t in _tids(p)) and time.monotonic() < deadline:
                time.sleep(0.005)
        now = snapshot.take(pid, ignore_maps_on=())
        for _ in range(10):   # (the kernel may still move bytes between stopped processes' sockets)
            before, now = now, snapshot.take(pid, ignore_maps_on=())
            if snapshot.compare(before, now)[0]:
                break
        return now

    def resume(self) -> None:
        """SIGCONT the processes `hold_still` stopped."""
        for p in self.held:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.held = []

    def keep_outputs(self) -> None:
        """Copy the test's own output files (NAME.out*, the root dies with the helper) into the workdir."""
        static = os.path.join(self.root, "zdtm", "static")
        for n in os.listdir(static):
            if n.startswith(self.p.name + ".out"):
                try:
                    shutil.copy(os.path.join(static, n), os.path.join(self.w, n))
                except OSError:
                    pass

    def verdict(self) -> Result:
        """SIGTERM the test (its pid 1 passes it on); its outfile must say PASS."""
        name, static = self.p.name, os.path.join(self.root, "zdtm", "static")
        os.kill(self.test_pid, signal.SIGTERM)
        if not snapshot.wait_gone(self.test_pid, self.timeout):
            return self.res("fail", "verdict", f"the test did not exit within {self.timeout:g}s of SIGTERM")
        self.test_pid = None
        out = os.path.join(static, f"{name}.out")
        try:
            with open(out, errors="replace") as f:
                text = f.read()
        except OSError:
            return self.res("fail", "verdict", f"the test wrote no {name}.out: "
                            + (_tail(out + ".inprogress") or _tail(os.path.join(static, f"{name}.outns"))))
        if "PASS" not in text.split():
            self.keep_outputs()
            return self.res("fail", "verdict", "the test's own check after the dump failed: " + _tail(out))
        return self.res("pass")

    def cleanup(self) -> None:
        for pid in (self.restored, self.test_pid):
            if pid:
                snapshot.kill_tree(pid)
        # zdtm.py's `NAME.hook --clean`: undoes what outlives the test's namespaces (binfmt_misc
        # registrations of the host's instance, cgroups); run from the root, as zdtm.py runs it
        # from its test directory. Its mounts die with this helper's namespace.
        _clear_zdtm_cgroups(self.mounts)
        hook = self.p.binary + ".hook"
        if os.path.exists(hook) and os.path.isdir(self.root):
            with open(os.path.join(self.w, "hook-clean.log"), "wb") as log:
                try:
                    subprocess.run(["bash", hook, "--clean"], cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, timeout=60)
                except (OSError, subprocess.SubprocessError):
                    pass   # its log says what went wrong; nothing it cleans is needed by the result


def _state(pid: int) -> str:
    """The state letter of process (or thread) `pid` in /proc/PID/stat, "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", errors="surrogateescape") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _drop_copy_events(pid: int) -> None:
    """Drop the inotify events our copy of the test's root made on the test's watches (it opened and
    read the watched files: CRIU's inotify04 found them after the dump): every event waiting on an
    inotify fd of the tree at `pid`, whose queue was empty at the dump (which refuses one that is
    not); the test is asleep in test_waitsig and makes none of its own."""
    from engine.fds import inotify
    for p, n, copy in _inotify_fds(pid):
        inotify.drain(copy)


def _inotify_fds(pid: int, queued: bool = False) -> list[tuple]:
    """(pid, fd, our copy) of each inotify fd of the tree at `pid`; with `queued`, (pid, fd, bytes
    of events waiting) of those with events waiting instead (copies closed)."""
    from engine.fds import inotify
    from engine.fds import sys as fsys
    out = []
    for p in snapshot.tree_pids(pid):
        try:
            fds = [int(n) for n in os.listdir(f"/proc/{p}/fd")
                   if os.readlink(f"/proc/{p}/fd/{n}") == "anon_inode:inotify"]
            pidfd = os.pidfd_open(p)
        except OSError:
            continue
        try:
            for n in fds:
                copy = fsys.pidfd_getfd(pidfd, n)
                if not queued:
                    out.append((p, n, copy))
                    continue
                try:
                    if inotify.queued(copy):
                        out.append((p, n, inotify.queued(copy)))
                finally:
                    os.close(copy)
        finally:
            os.close(pidfd)
    return out


def _clear_zdtm_cgroups(scratch: str) -> None:
    """Remove the cgroups tests leave in the named cgroup v1 hierarchy "zdtmtst" (cgroup_stray's
    /bar: zdtm.py clears them itself), mounted here in the helper's namespace; a cgroup still in
    use stays (rmdir: EBUSY)."""
    try:
        with open("/proc/self/cgroup") as f:
            if not any(line.split(":")[1] == "name=zdtmtst" for line in f if line.count(":") >= 2):
                return
    except OSError:
        return
    top = os.path.join(scratch, "cgroup-zdtmtst")
    os.makedirs(top, exist_ok=True)
    try:
        _mount("-t", "cgroup", "-o", "none,name=zdtmtst", "zdtmtst", top)
    except subprocess.CalledProcessError:
        return
    try:
        for d, subdirs, _files in os.walk(top, topdown=False):
            if d != top:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
    finally:
        subprocess.run(["umount", top], capture_output=True)


def _save(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _inside(spec: dict) -> Result:
    r = _Run(spec)
    try:
        return r.start() or r.cycle()
    except Exception as e:  # noqa: BLE001 - the driver's own error, reported as such
        return r.res("fail", "driver", f"{type(e).__name__}: {e}")
    finally:
        r.cleanup()


def _main(argv: list[str]) -> int:
    """``python -m zdtm.criu_tests [--flavor ns|uns] [--workdir DIR] NAME...``: run CRIU's tests by
    name, one result line each (exit 1 when one fails); ``--inside SPEC`` is the helper `run` starts."""
    import argparse
    import tempfile
    if argv[:1] == ["--inside"] and len(argv) == 2:
        print(json.dumps(asdict(_inside(json.loads(argv[1])))), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="python -m zdtm.criu_tests",
                                 description="Run CRIU's real zdtm static tests under mntcr (zdtm/criu_tests.py).")
    ap.add_argument("names", nargs="+", metavar="NAME", help="test/zdtm/static test names, e.g. mntns_open")
    ap.add_argument("--flavor", choices=FLAVORS, default="ns")
    ap.add_argument("--workdir", help="keep each test's root, image, logs and snapshots in DIR/NAME")
    args = ap.parse_args(argv)
    from zdtm import criu_source
    try:
        built = criu_source.build(args.names)
    except criu_source.SourceError as e:
        print(f"criu_tests: {e}", file=sys.stderr)
        return 2
    failed = False
    base = args.workdir or tempfile.mkdtemp(prefix="mntcr-criu-tests-")
    for name in args.names:
        program = built[name]
        if isinstance(program, Exception):
            print(f"{name}: not built: {program}")
            failed = True
            continue
        result = run(program, os.path.join(base, name), args.flavor)
        print(result.line() if result.outcome != "fail" else f"{result.line()}\n{result.detail}", flush=True)
        failed |= result.outcome == "fail"
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
