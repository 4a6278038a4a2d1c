"""A stand-in executed again inside its user namespace, so that its memory belongs to it.

The kernel gives the /proc/PID files of a process that is not dumpable (one that changed its ids:
sshd's session, memcached's and apache's workers after setuid) to the root of the user namespace
its memory was made in (mm->user_ns, set at exec and inherited by fork), and checks ptrace access
against that namespace. A stand-in forked by the restorer has memory of the initial user
namespace: inside a container its processes' /proc files would be the host's root's and the
container's root could not read them. The first stand-in of such a user namespace therefore
executes the interpreter again once it is inside (`into_userns`); the stand-ins it forks inherit
its memory's namespace.

Inside, the stand-in keeps the host's root ids (unmapped there), so an exec would drop its
capabilities: they are raised ambient for the exec and put back right after (`main`). The
modules the restorer had loaded are imported again before the stand-in serves its channel (it
may chroot later, where the engine is out of reach). Where the interpreter or the engine cannot
be reached, or lie elsewhere than in the host's view the restorer started with (a late
stand-in inside its restored root), or what the loader would map (its libraries, their cache,
ld.so.preload) is not the host's file or lies beneath a mount, the stand-in goes on as forked
(`into_userns` returns): it holds the host's root ids, and a restored root that is the host's may
carry an image's mount over a library. The exec passes none of the restorer's LD_* and PYTHON*
variables (paths they name would be looked up in the stand-in's view).
"""

from __future__ import annotations

import ctypes
import os
import sys

from engine import kernel

ENGINE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.realpath(sys.executable)
_MODULES = "MNTCR_REEXEC_MODULES"
# What the restorer worked out before it forked (probed once, on the host's side): carried over
# the exec, which would otherwise probe again from inside the container, or after a chroot.
_CARRIED = {"engine.strategy": ("_current",), "engine.features": ("_cache",), "engine.mappings": ("_KERNEL_MEMORY",),
            "engine.fds": ("_loaded", "_names"), "engine.fs": ("_loaded", "_names"),
            "engine.content": ("_device_policy",), "engine.restore": ("_FAULT_AT", "_fault_step")}
_PR_CAP_AMBIENT, _RAISE, _CLEAR_ALL = 47, 2, 4


def _where(path: str) -> tuple[int, int] | None:
    """(device, inode) of `path` as we see it, None when it cannot be reached."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mapped_code() -> list[str]:
    """The files our process runs code of (the interpreter, the dynamic loader, the C library and
    each library and extension module loaded so far), as the kernel names them (a file replaced
    since by the name it had; no memfd, which has none)."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.rstrip("\n").split(None, 5)
            if len(fields) == 6 and fields[1][2:3] == "x" and fields[5].startswith("/") \
                    and not fields[5].startswith(("/memfd:", "/dev/")):
                out.add(fields[5].removesuffix(" (deleted)"))
    return sorted(out)


def _interp(path: str) -> list[str]:
    """The dynamic loader `path` (an ELF executable) names (PT_INTERP), as it names it: [] if none."""
    import struct
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return []
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                kind, _flags, off, _va, _pa, size = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                if kind == 3:   # (PT_INTERP)
                    f.seek(off)
                    return [f.read(size).rstrip(b"\0").decode()]
    except (OSError, UnicodeDecodeError, struct.error):
        return []
    return []


# (the standard library's directory and the engine's, and those of the code the loader maps: what
# the executed interpreter reads)
_CODE = _mapped_code()
_CODE_DIRS = (os.path.dirname(os.__file__), os.path.join(ENGINE_ROOT, "engine"),
              *sorted({os.path.dirname(c) for c in _CODE} - {os.path.dirname(os.__file__)}))
# (the loader's cache names the libraries it maps: a replaced one maps another file)
_PATHS = ("/", "/usr", "/etc", "/etc/ld.so.cache", PYTHON, os.path.join(ENGINE_ROOT, "engine", "reexec.py"),
          *_interp(PYTHON), *_CODE, *_CODE_DIRS)
# Where they were when the restorer imported this (the host's view, before anything of the image
# is mounted or entered): a stand-in executes again only while its view is the same, never a
# file an image provided (a stand-in holds the host's root ids). ld.so.preload, which the loader
# maps into every program, where it was or absent as it was.
_HOST = tuple(_where(p) for p in _PATHS)
_PRELOAD = "/etc/ld.so.preload"
_HOST_PRELOAD = _where(_PRELOAD)
# What the executed interpreter takes from the environment is ours alone: a path the restorer's
# names (a preloaded library, a library or module path) would be looked up in the stand-in's view.
_UNSAFE_ENV = ("LD_", "PYTHON")


def _last_cap() -> int:
    """The highest capability this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _inheritable(value: int | None = None) -> int:
    """Our inheritable capability set; set it to `value` first when given (a subset of the permitted)."""
    head, data = kernel._cap_buffers()
    kernel._check(kernel._libc.capget(ctypes.byref(head), data), "capget")
    if value is not None:
        for i in range(2):
            data[i].inheritable = (value >> (32 * i)) & 0xFFFFFFFF
        kernel._check(kernel._libc.capset(ctypes.byref(head), data), "capset")
    return data[0].inheritable | data[1].inheritable << 32


def _permitted() -> int:
    """Our permitted capability set."""
    head, data = kernel._cap_buffers()
    kernel._check(kernel._libc.capget(ctypes.byref(head), data), "capget")
    return data[0].permitted | data[1].permitted << 32


def into_userns(sock_fd: int) -> None:
    """In a fresh stand-in inside its user namespace (its channel at `sock_fd`): execute the
    interpreter again to serve the channel there (`main`); returns only when it cannot."""
    if not host_view():
        return
    saved = _inheritable()
    prm = _permitted() & ((1 << (_last_cap() + 1)) - 1)
    modules = sorted(m for m in sys.modules if m.startswith("engine."))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_UNSAFE_ENV)}
    env.update(PYTHONPATH=ENGINE_ROOT, PYTHONDONTWRITEBYTECODE="1", **{_MODULES: ",".join(modules)})
    try:
        state = _carry()
    except Exception:   # noqa: BLE001 - (anything unpicklable: served as forked)
        return
    try:
        _inheritable(prm)
        for c in range(_last_cap() + 1):
            if prm >> c & 1:
                kernel._check(kernel._libc.prctl(_PR_CAP_AMBIENT, _RAISE, c, 0, 0), f"prctl(PR_CAP_AMBIENT_RAISE, {c})")
        os.set_inheritable(sock_fd, True)
        os.execve(PYTHON, [PYTHON, "-S", "-m", "engine.reexec", str(sock_fd), str(saved), str(state)], env)
    except OSError:
        os.close(state)
        os.set_inheritable(sock_fd, False)
        kernel._libc.prctl(_PR_CAP_AMBIENT, _CLEAR_ALL, 0, 0, 0)
        _inheritable(saved)


def host_view() -> bool:
    """Whether what executing the interpreter reads (the interpreter, its loader, libraries and
    their cache, the standard library, the engine) is what the restorer saw when it started: the
    same files, no mount on or beneath their directories, no ld.so.preload but as then."""
    if None in _HOST or tuple(_where(p) for p in _PATHS) != _HOST or _where(_PRELOAD) != _HOST_PRELOAD:
        return False
    if not os.access(PYTHON, os.X_OK):
        return False
    # (a mount beneath the code it would read: maybe an image's, in a restored namespace)
    return not _mounted_in(_CODE_DIRS)


def _mounted_in(dirs) -> bool:
    """Whether a mount of our namespace lies on or beneath one of `dirs` (a module file or package
    bound over by a restored tree's mounts would run with our ids; the host keeps none there)."""
    from engine import mountinfo
    with open("/proc/self/mountinfo", errors="surrogateescape") as f:
        points = [line.split(" ", 5)[4] for line in f]
    for d in dirs:
        want = mountinfo.escape(d)
        if any(p == want or p.startswith(want + "/") for p in points):
            return True
    return False


def _carry() -> int:
    """An inheritable memfd holding the module state `_CARRIED` names (pickled)."""
    import pickle
    data = pickle.dumps({m: {a: getattr(sys.modules[m], a) for a in attrs if hasattr(sys.modules[m], a)}
                         for m, attrs in _CARRIED.items() if m in sys.modules})
    fd = os.memfd_create("mntcr-reexec", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _restore_state(fd: int) -> None:
    """Set the module state `_carry` wrote into memfd `fd` (the modules imported already)."""
    import pickle
    with os.fdopen(fd, "rb") as f:
        for m, attrs in pickle.load(f).items():
            for a, v in attrs.items():
                setattr(sys.modules[m], a, v)


def main(argv: list[str]) -> None:
    """The executed stand-in: its capabilities as before the exec, the restorer's modules, then
    the channel served (engine/standin.py)."""
    sock_fd, saved, state = int(argv[1]), int(argv[2]), int(argv[3])
    try:
        kernel._check(kernel._libc.prctl(_PR_CAP_AMBIENT, _CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
        _inheritable(saved)
        os.set_inheritable(sock_fd, False)
        import importlib
        for m in filter(None, os.environ.pop(_MODULES, "").split(",")):
            importlib.import_module(m)
        _restore_state(state)
        from engine import standin
        standin.serve_fd(sock_fd)
    finally:
        os._exit(1)


if __name__ == "__main__":
    main(sys.argv)
