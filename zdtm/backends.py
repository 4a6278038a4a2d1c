"""Backends: what checkpoints and restores a scenario's process tree.

Interface (`Backend`):

- ``name``: what ``--backend`` and a scenario's ``expect: {NAME: ...}`` call it;
- ``unavailable()``: None, or why it cannot run here (the scenario is skipped);
- ``expectation(scenario)``: pass / crfail(reason) / skip(reason) for this backend;
- ``dump(pid, images_dir, externals, ctx)``: dump the tree at host pid `pid`
  into `images_dir` and kill it; raise BackendError (one line) on refusal;
- ``restore(images_dir, externals, ctx) -> pid``: restore it; return the host
  pid of the restored root; raise BackendError on refusal.

`externals` are the flavor's host mounts (zdtm.flavors.External: key,
mountpoint inside the container, host path). `ctx` (`Context`) gives the
scenario, the flavor, a log directory (kept in the report on failure) and
``on_cleanup(fn)`` for what must go once the restored tree is dead (e.g. a
criu restore root). New backends register with `register`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field

from engine import cli as engine_cli
from zdtm import freshfork

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BackendError(Exception):
    """The backend refused or failed to dump/restore; the message's first line is the reason."""

    def __init__(self, stage: str, message: str, log: str | None = None):
        self.stage = stage
        self.log = log
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.stage, str(self), self.log), self.__dict__)


@dataclass
class Context:
    """What a backend may use besides pid and images: the scenario, its flavor, where to log."""

    scenario: object
    flavor: object
    log_dir: str
    workdir: str
    iteration: int = 0
    cleanups: list = field(default_factory=list)

    def on_cleanup(self, fn) -> None:
        """Run `fn()` after the restored tree has been killed."""
        self.cleanups.append(fn)

    def log_path(self, name: str) -> str:
        os.makedirs(self.log_dir, exist_ok=True)
        return os.path.join(self.log_dir, f"{name}.iter{self.iteration}.log")


class Backend:
    """Base class; see the module docstring."""

    name = "?"
    # Whether restore puts a tree that sat in the runner's time namespace into a new one whose
    # offsets carry its clocks at dump (snapshot.clocks_carried): criu does, by design.
    carries_clocks = False

    def unavailable(self) -> str | None:
        return None

    def expectation(self, scenario):
        return scenario.expectation(self.name)

    def dump(self, pid: int, images_dir: str, externals, ctx: Context) -> None:
        raise NotImplementedError

    def restore(self, images_dir: str, externals, ctx: Context) -> int:
        raise NotImplementedError


def _error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class MntcrBackend(Backend):
    """Our engine, through its command line (engine.cli's main in a process of its own: zdtm/freshfork.py),
    so a crash stays a failure."""

    name = "mntcr"

    def __init__(self, timeout: float | None = None):
        self.timeout = timeout

    def _run(self, stage: str, args: list[str], ctx: Context) -> None:
        log = ctx.log_path(stage)
        cmd = engine_cli.command(stage, *args)   # what the log shows: the same verb from a shell
        timeout = self.timeout or ctx.scenario.timeout
        try:
            code, out, err = freshfork.run_verb([stage, *args], timeout, cwd=_PROJECT_ROOT)
        except subprocess.TimeoutExpired:
            raise BackendError(stage, f"mntcr {stage}: timed out after {timeout:g}s", log) from None
        with open(log, "wb") as f:
            f.write(b"$ " + shlex.join(cmd).encode() + b"\n--- stdout\n" + out + b"--- stderr\n" + err)
        if code != 0:
            err_line = _error_line(err.decode(errors="replace")) or f"exit status {code}, no message"
            raise BackendError(stage, err_line, log)

    def dump(self, pid, images_dir, externals, ctx):
        args = ["-t", str(pid), "-D", images_dir]
        for ext in externals:
            args += ["--external", f"mnt[{ext.mountpoint}]:{ext.key}"]
        for name, _outer in ctx.scenario.veths:
            args += ["--external", f"veth[{name}]:{name}"]
        self._run("dump", args, ctx)

    def restore(self, images_dir, externals, ctx):
        pidfile = os.path.join(ctx.workdir, f"restore.iter{ctx.iteration}.pid")
        # The image was just dumped by this run: its device nodes (a container's loop devices,
        # /dev/fuse) are trusted, unlike an image from elsewhere (IMAGE.md, --devices).
        args = ["-D", images_dir, "--pidfile", pidfile, "--devices", "all"]
        for ext in externals:
            args += ["--external", f"mnt[{ext.key}]:{ext.host_path}"]
        for key, cmd in ctx.scenario.fuse_restart:
            # {outside}: $OUT of `container.outside`, where the restore (in the keeper's namespace) finds
            # what a daemon serves from outside the tree (podman's storage for fuse-overlayfs)
            cmd = cmd.replace("{outside}", os.path.join(ctx.workdir, "outside"))
            args += ["--fuse-restart", f"{key}={cmd}"]
        for name, outer in ctx.scenario.veths:
            args += ["--external", f"veth[{name}]:{outer}"]
        for spec in _idmap_allowances(images_dir):
            args += ["--allow-idmap", spec]
        self._run("restore", args, ctx)
        try:
            with open(pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as e:
            raise BackendError("restore", f"mntcr restore succeeded but left no pid in {pidfile}: {e}") from None


def _idmap_allowances(images_dir: str) -> list[str]:
    """The --allow-idmap values the image's idmapped mounts of the flavor's host mounts need: this
    run dumped it, so those idmaps are the scenario's own (engine/hostidmap.py). An image that does
    not load is left to restore to refuse."""
    from engine import hostidmap, image
    try:
        return hostidmap.needed(image.load(images_dir))
    except (OSError, ValueError):
        return []


_CRIU_FAILED = re.compile(r"^criu \w+ failed \(exit (-?\d+)\): (.*?)(?: \[log: (\S+)\])?$", re.S)


def split_criu_error(text: str) -> tuple[str, str | None]:
    """criu_backend's "criu dump failed (exit N): LINE [log: PATH]" -> ("LINE (criu exit N)", PATH).

    The cycle already says which stage failed; the message keeps criu's own error line
    first, so it survives the summary table's truncation. Other texts pass unchanged.
    """
    m = _CRIU_FAILED.match(text.strip())
    if not m:
        return text, None
    return f"{m.group(2)} (criu exit {m.group(1)})", m.group(3)


class CriuBackend(Backend):
    """criu through zdtm.criu_backend (which finds or builds a criu that runs here)."""

    name = "criu"
    # (criu/timens.c: a restore makes a time namespace whose CLOCK_MONOTONIC and CLOCK_BOOTTIME go on
    # from their values at dump, whenever the image has them, which criu dumps for every tree)
    carries_clocks = True

    def __init__(self, spec: str = "auto"):
        self.spec = spec
        self._impl = None

    def impl(self):
        if self._impl is None:
            from zdtm import criu_backend
            self._impl = criu_backend.CriuBackend(self.spec)
        return self._impl

    def unavailable(self):
        ok, reason = self.impl().available()
        return None if ok else reason

    def _call(self, stage, fn, *args, **kwargs):
        from zdtm import criu_backend
        try:
            return fn(*args, **kwargs)
        except criu_backend.BackendError as e:
            message, log = split_criu_error(str(e))
            raise BackendError(stage, message, log) from None

    def dump(self, pid, images_dir, externals, ctx):
        self._call("dump", self.impl().dump, pid, images_dir, {e.mountpoint: e.key for e in externals},
                   ctx.log_dir, tag=f".iter{ctx.iteration}")

    def restore(self, images_dir, externals, ctx):
        # root=None: criu_backend rebuilds the dumped tmpfs root inside criu's own namespace.
        return self._call("restore", self.impl().restore, images_dir, {e.key: e.host_path for e in externals},
                          None, ctx.log_dir, tag=f".iter{ctx.iteration}")


_REGISTRY: dict[str, object] = {"mntcr": MntcrBackend, "criu": CriuBackend}


def register(name: str, factory) -> None:
    """Make backend `name` available to --backend (`factory(config)` returns a Backend)."""
    _REGISTRY[name] = factory


def names() -> list[str]:
    """Registered backend names."""
    return list(_REGISTRY)


def create(name: str, config=None, *, criu: str | None = None) -> Backend:
    """A backend instance; ValueError naming the registered ones when `name` is unknown.

    `criu` is the --criu choice of the criu backend (else read from a pytest
    `config`, else "auto"); other factories get `config` as before.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(_REGISTRY)}")
    factory = _REGISTRY[name]
    if name == "criu" and factory is CriuBackend:
        if criu is None and config is not None:
            criu = config.getoption("criu", None)
        return CriuBackend(criu or "auto")
    return factory() if isinstance(factory, type) else factory(config)
