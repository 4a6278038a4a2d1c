"""What the engine's verbs import (issue 18: a small dump or restore is mostly interpreter start-up
and imports, so what they load is part of their cost).

Each check runs a fresh `python -S` (as engine.cli.command starts the engine) and looks at
sys.modules; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Never needed by dump, restore, show, diff or check: the runner, the VM tooling, third-party
# packages, and standard modules the engine used to import at start-up for nothing.
_NEVER = ("vm", "zdtm", "certifi", "pytest", "_pytest", "jinja2", "yaml", "site", "cProfile", "profile",
          "pkgutil", "typing", "platform", "uuid", "difflib", "tarfile", "shutil", "zlib", "bz2", "lzma",
          "xml", "tomllib", "email", "http", "urllib", "logging", "asyncio", "unittest", "traceback",
          # engine.records instead of dataclasses, which loads these (~17 ms of CPU per command)
          "dataclasses", "inspect", "ast", "dis", "tokenize", "linecache",
          # tar runs through posix_spawn (content.run; ghosts.py's dump of a deleted file still
          # loads subprocess); OpenSSL's hashes: content.tools() only for archives of a MiB or more
          "subprocess", "hashlib", "_hashlib",
          # channel and forkrun pickle through the C module alone
          "pickle",
          # the engine's modules take the signal numbers and calls from _signal (signal.py's enum
          # classes: ~2.5 M instructions of each verb's imports); fds and fs load their modules by
          # __import__ (importlib's package, which loads warnings: ~1.4 M)
          "signal", "importlib",
          # its abstract context manager classes: ~2 M instructions of a restore, for one ExitStack
          "contextlib")


def _modules(code: str) -> list[str]:
    """sys.modules after `code` ran in a fresh `python -S` with the project on the path."""
    env = dict(os.environ, PYTHONPATH=_PROJECT)
    env.pop("MNTCR_PROFILE", None)
    out = subprocess.run([sys.executable, "-S", "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         env=env, cwd="/", capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def _unwanted(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".", 1)[0] in _NEVER]


@pytest.mark.parametrize("argv", [
    ["dump", "-t", "999999999", "-D", "/nonexistent/mntcr-img"],
    ["restore", "-D", "/nonexistent/mntcr-img", "--pidfile", "/nonexistent/mntcr.pid"],
    ["diff", "/proc/self/mountinfo", "/proc/self/mountinfo"],
    ["show", "/proc/self/mountinfo"],
], ids=lambda a: a[0])
def test_engine_verbs_import_only_the_engine(argv):
    """The verb runs as far as it can (dump: no such process; restore: no image) after loading
    all its modules: none of the runner's, the VM tooling's or a third party's is among them."""
    mods = _modules(f"from engine import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass")
    assert "engine.cli" in mods and f"engine.{argv[0]}" in mods or argv[0] in ("diff", "show")
    assert _unwanted(mods) == [], f"mntcr {argv[0]} imported {_unwanted(mods)}"
    # (only the socket fd kinds use socket.py: dump loads the kinds of its tree's fds alone)
    assert "socket" not in mods, f"mntcr {argv[0]} imported socket.py (channel and standin use _socket)"


def test_restore_loads_only_the_image_types():
    """restore imports the type modules of the image's superblocks (before its restorer pivots
    away), not all of them: fs.load(names) loads those modules alone."""
    mods = _modules("import engine.restore\nfrom engine import fs\nfs.load(['tmpfs', 'proc', 'fuse.squashfuse'])")
    types = sorted(m for m in mods if m.startswith("engine.fs.") and not m.startswith("engine.fs._"))
    assert types == ["engine.fs.fuse", "engine.fs.proc", "engine.fs.tmpfs"]


def test_restore_imports_no_module_of_a_strategy_or_state_the_image_may_lack():
    """engine/construct.py (sharing=construct alone: the restorer loads it at its start) and the
    network namespace state's modules (an image with lone namespaces, netvars or net_lo_up: loaded
    by make_netvars) are not among restore's imports."""
    mods = _modules("import engine.cli, engine.restore")
    assert [m for m in ("engine.construct", "engine.netdevs", "engine.netvars") if m in mods] == []


def test_restore_loads_what_an_image_needs_before_its_restorer_forks():
    """restore._load_for imports engine/reexec.py for an image with user namespaces (a stand-in that
    executes again), engine/sysvipc.py for one with System V IPC objects and engine/ghosts.py for one
    with deleted files, and none of them for an image without: the restorer and the stand-ins find them loaded where the engine's files are out of reach."""
    code = "import engine.cli, engine.restore, sys\nengine.restore._load_for({doc})\n"
    for doc, want in (({}, []), ({"userns": {"user-1": {}}}, ["engine.reexec"]),
                      ({"sysvipc": {"ipc-1": {}}}, ["engine.sysvipc"]), ({"ghosts": {"g-1": {}}}, ["engine.ghosts"])):
        mods = _modules(code.format(doc=doc))
        assert [m for m in ("engine.reexec", "engine.sysvipc", "engine.ghosts") if m in mods] == want, doc


def test_lookup_by_module_name_finds_what_the_full_load_finds():
    """A type looked up first (its namesake module alone, or all modules when it has none) is the
    type a lookup after importing every module finds: the lazy path never changes an answer."""
    full = json.loads(subprocess.run(
        [sys.executable, "-S", "-c",
         "import json\nfrom engine import fs\n"
         "print(json.dumps({t.name: [fs.module_of(t.name), type(t).__name__] for t in fs.types()}))"],
        env=dict(os.environ, PYTHONPATH=_PROJECT), capture_output=True, text=True, check=True).stdout)
    assert "tmpfs" in full and "ext2" in full
    names = sorted(full) + ["fuse.sshfs", "nosuchfs"]
    code = ("import json, sys\nfrom engine import fs\nt = fs.lookup(sys.argv[1])\n"
            "print(json.dumps(t and [fs.module_of(t.name), type(t).__name__, t.name]))")
    for name in names:
        got = json.loads(subprocess.run([sys.executable, "-S", "-c", code, name], env=dict(os.environ, PYTHONPATH=_PROJECT),
                                        capture_output=True, text=True, check=True).stdout)
        want = full.get(name) or full.get(name.split(".", 1)[0])
        assert (got[:2] if got else None) == want, f"lookup({name!r}) alone: {got}, after loading all: {want}"


def test_checkout_launcher_runs_without_site():
    """bin/mntcr (the README's way to run a checkout's mntcr without site hooks or a shim) works."""
    launcher = os.path.join(_PROJECT, "bin", "mntcr")
    with open(launcher) as f:
        interpreter = f.readline()[2:].split()[0]
    if not os.access(interpreter, os.X_OK):
        pytest.skip(f"{interpreter} (bin/mntcr's interpreter) is not installed here")
    r = subprocess.run([launcher, "diff", "/proc/self/mountinfo", "/proc/self/mountinfo"], cwd="/",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("equal")


def test_restore_loads_only_the_image_fd_kinds():
    """The fd kinds too: fds.load(names) imports those kinds' modules alone (fifo lives in pipe.py,
    ctty in pty.py, shmem in memfd.py: fds._MODULE_OF), a name no module registers loads them
    all, and importing dump loads none (it loads its tree's: tests/test_engine_dump_imports.py)."""
    mods = _modules("import engine.restore\nfrom engine import fds\nfds.load(['file', 'pipe'])")
    assert sorted(m for m in mods if m.startswith("engine.fds.")) == ["engine.fds.file", "engine.fds.pipe", "engine.fds.sys"]
    assert sorted(m for m in _modules("import engine.cli, engine.dump") if m.startswith("engine.fds.")) == ["engine.fds.sys"]
    for name, module in (("fifo", "pipe"), ("ctty", "pty"), ("shmem", "memfd")):
        mods = _modules(f"from engine import fds\nassert fds.lookup({name!r}).name == {name!r}")
        assert f"engine.fds.{module}" in mods and "engine.fds.unix" not in mods, name
    everything = _modules("from engine import fds\nassert fds.lookup('no-such-kind') is None")
    kinds = sorted(m for m in everything if m.startswith("engine.fds."))
    assert len(kinds) > 10 and "engine.fds.unix" in kinds


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_a_type_module_out_of_reach_is_an_fs_error(tmp_path):
    """A dump helper inside the tree's root (engine/nsinspect.py) that meets a type whose module
    was not imported before cannot import it (the engine's files are out of reach): an FsError
    that says so and survives pickling, not an internal ModuleNotFoundError; the registry is not
    left half loaded (a known type would then read as unsupported)."""
    code = ("import os, pickle; from engine import fs\n"
            "fs.lookup('tmpfs')\n"   # (dump's check before the stop looked its types up)
            f"os.chroot({str(tmp_path)!r}); os.chdir('/')\n"
            "for name in ('squashfs', 'no-such-type'):\n"
            "    try:\n"
            "        fs.lookup(name)\n"
            "    except fs.FsError as e:\n"
            "        e2 = pickle.loads(pickle.dumps(e))\n"
            "        print(type(e2).__name__, e2.errno, e2.strerror)\n"
            "print('loaded', fs._loaded)\n")
    env = dict(os.environ, PYTHONPATH=_PROJECT, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, cwd="/", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    for line in lines[:2]:
        assert line.startswith("FsError 2 the module of filesystem type ") and line.endswith("dump again"), line
    assert "engine/fs/squashfs.py" in lines[0]
    assert lines[2] == "loaded False"


def test_a_child_killed_by_a_signal_is_named_as_signal_names_it():
    """forkrun.signame (from _signal's constants) gives the name signal.Signals gives each signal, the
    number itself for one that has none; a forked child killed by one is reported by that name."""
    import signal
    from engine import forkrun
    for n in range(1, signal.NSIG):
        try:
            want = signal.Signals(n).name
        except ValueError:
            want = str(n)
        assert forkrun.signame(n) == want
    with pytest.raises(forkrun.ChildError, match="child killed by SIGKILL"):
        forkrun.run(lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_the_command_line_runs_without_runpy():
    """cli.command() (the runner's and the benchmarks' way to run a verb) starts main() as an installed
    console script does, not through `-m` (runpy, importlib.util and importlib.machinery: ~1 ms a verb)."""
    from engine import cli
    argv = cli.command("diff", "/proc/self/mountinfo", "/proc/self/mountinfo")
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=dict(os.environ, PYTHONPATH=_PROJECT),
                       cwd="/", capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("equal"), r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "engine.cli" in imported and "engine.topology" in imported
    assert [m for m in ("runpy", "importlib.util", "importlib.machinery") if m in imported] == []


def test_the_command_line_runs_the_system_interpreter_of_this_version(monkeypatch, tmp_path):
    """cli.command() starts bin/mntcr's interpreter (SYSTEM_PYTHON, a link to pythonX.Y) when it is this
    Python's version (a version manager's default build runs ~25% more instructions a verb), this one
    when it is another version or missing."""
    from engine import cli
    for version, want in ((f"{sys.version_info[0]}.{sys.version_info[1]}", "link"), ("2.7", sys.executable)):
        real = tmp_path / version / f"python{version}"
        real.parent.mkdir()
        real.write_text("#!/bin/sh\n")
        real.chmod(0o755)
        (tmp_path / version / "python3").symlink_to(real.name)
        monkeypatch.setattr(cli, "SYSTEM_PYTHON", str(tmp_path / version / "python3"))
        assert cli.command("dump")[0] == (cli.SYSTEM_PYTHON if want == "link" else want)
    monkeypatch.setattr(cli, "SYSTEM_PYTHON", str(tmp_path / "none" / "python3"))
    assert cli.command("dump")[0] == sys.executable
