"""The ``criu`` backend: checkpoint/restore a scenario's process tree with criu dump / criu restore.

What criu needs from the tree it dumps (measured with criu 4.1.1 on 6.18):

- the root task is a session leader, else ``--shell-job`` (chosen automatically);
- every fd, the exe and mapped files sit on mounts visible in the tree's own
  mount namespace (stdio on host pipes or files outside its root make dump
  fail with "Can't lookup mount");
- criu does not dump the mount namespace's root mount (nor its contents): the
  restore needs ``--root R`` with R a directory of the same mode holding the
  mountpoint directories of the root mount's children and any file the tree
  uses on the root mount. `prepare_root` builds such a directory from what
  `dump` recorded; it is a plain directory (no mounts on the host), removed
  with shutil.rmtree once the restored tree is gone;
- the restore can only take the dumped pid back once it is gone (reaped), else
  "Can't fork for PID: File exists"; `restore` waits for it.

`dump` records those facts in ``<images_dir>/mntcr-criu.json`` (criu ignores
files it does not know in its images dir).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time

from engine import mountinfo
from zdtm import criu_env

__all__ = ["BackendError", "CriuBackend", "META_FILE"]

META_FILE = "mntcr-criu.json"
ROOT_FILES = "mntcr-root"  # files the tree uses on its root mount, saved at dump


class BackendError(Exception):
    """A dump or restore failed; the message is one line (criu's first error line)."""


def _tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (host pids), via /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _gone(pid: int) -> bool:
    """True when pid no longer exists (a zombie still holds its pid)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
    except ChildProcessError:
        pass
    return not os.path.exists(f"/proc/{pid}")


class CriuBackend:
    """Dump and restore through criu; ``spec`` is the ``--criu`` choice (see zdtm.criu_env)."""

    name = "criu"

    def __init__(self, spec: str | None = "auto", *, verbosity: int = 4, timeout: float = 300.0,
                 dump_args: tuple[str, ...] = (), restore_args: tuple[str, ...] = ()):
        self.spec = spec or "auto"
        # Extra criu flags per action, e.g. restore_args=("--mntns-compat-mode",) (restore-only in criu 4).
        self.dump_args = tuple(dump_args)
        self.restore_args = tuple(restore_args)
        self.verbosity = verbosity
        self.timeout = timeout
        self._env: criu_env.CriuEnv | None = None

    # -- availability -----------------------------------------------------------------------

    def env(self) -> criu_env.CriuEnv:
        """The resolved criu (building its userland on first use); CriuEnvError when it cannot be had."""
        if self._env is None:
            self._env = criu_env.resolve(self.spec)
        return self._env

    def available(self) -> tuple[bool, str]:
        """(ok, reason): whether this criu runs here, with ``criu check``'s own verdict as the reason."""
        try:
            env = self.env()
        except criu_env.CriuEnvError as e:
            return False, str(e)
        ok, reason = env.check()
        return ok, (f"{env.describe()}: {reason}")

    # -- helpers ----------------------------------------------------------------------------

    def _run(self, action: str, args: list[str], log_path: str, binds: list[str]) -> None:
        try:
            proc = self.env().run(args, binds=binds, timeout=self.timeout)
        except criu_env.CriuEnvError as e:
            raise BackendError(f"criu {action}: {e}") from None
        except Exception as e:  # timeout, exec failure: still one line
            raise BackendError(f"criu {action}: {type(e).__name__}: {e}") from None
        if proc.returncode != 0:
            text = proc.stdout
            try:
                with open(log_path, errors="replace") as f:
                    text = f.read() + "\n" + text
            except OSError:
                pass
            err = criu_env.first_error(text) or (proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise BackendError(f"criu {action} failed (exit {proc.returncode}): {err} [log: {log_path}]")

    @staticmethod
    def _external_args(pairs) -> list[str]:
        args = []
        for left, right in pairs:
            args += ["--external", f"mnt[{left}]:{right}"]
        return args

    # -- dump / restore ---------------------------------------------------------------------

    def dump(self, pid: int, images_dir: str, externals: dict[str, str] | None = None, log_dir: str | None = None,
             *, external_masters: bool = False, leave_running: bool = False) -> None:
        """``criu dump -t pid -D images_dir``; the tree is killed afterwards unless ``leave_running``.

        ``externals`` maps a mountpoint (as seen inside the tree) to the key the
        restore will bind a host path on. Raises BackendError with criu's first
        error line; criu's log is ``log_dir/dump.log`` (default: images_dir).
        """
        images_dir = os.path.abspath(images_dir)
        log_dir = os.path.abspath(log_dir or images_dir)
        os.makedirs(images_dir, exist_ok=True)
        os.makedirs(log_dir, exist_ok=True)
        meta = self._record(pid)
        log_path = os.path.join(log_dir, "dump.log")
        args = ["dump", "-t", str(pid), "-D", images_dir, "-o", log_path, f"-v{self.verbosity}"]
        if meta["shell_job"]:
            args.append("--shell-job")
        if external_masters:
            args += ["--enable-external-masters"]
        if leave_running:
            args.append("--leave-running")
        args += self._external_args(sorted((externals or {}).items()))
        args += self.dump_args
        # Written before dump: the pid and the tree's root are only readable while it runs.
        with open(os.path.join(images_dir, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        self._save_root_files(meta, images_dir)
        self._run("dump", args, log_path, [images_dir, log_dir])

    def restore(self, images_dir: str, externals: dict[str, str] | None = None, root: str | None = None,
                log_dir: str | None = None, *, external_masters: bool = False, wait_timeout: float = 10.0) -> int:
        """``criu restore -d`` from images_dir; returns the restored root task's host pid.

        ``externals`` maps each key given at dump to the host path to bind there.
        ``root`` is the directory the restored mount namespace gets as its root
        (see `prepare_root`); None lets criu use its own root. Waits (up to
        ``wait_timeout`` s) until the dumped pid is gone first.
        """
        images_dir = os.path.abspath(images_dir)
        log_dir = os.path.abspath(log_dir or images_dir)
        os.makedirs(log_dir, exist_ok=True)
        meta = self.read_meta(images_dir)
        dumped = meta.get("pid")
        if dumped:
            deadline = time.monotonic() + wait_timeout
            while not _gone(dumped):
                if time.monotonic() > deadline:
                    raise BackendError(f"criu restore: dumped pid {dumped} still exists after {wait_timeout:.0f} s "
                                       f"(a zombie its parent has not reaped?)")
                time.sleep(0.01)
        log_path = os.path.join(log_dir, "restore.log")
        pidfile = os.path.join(log_dir, "restore.pid")
        try:
            os.unlink(pidfile)  # criu refuses to overwrite it
        except FileNotFoundError:
            pass
        args = ["restore", "-d", "-D", images_dir, "-o", log_path, f"-v{self.verbosity}", "--pidfile", pidfile]
        binds = [images_dir, log_dir]
        if root is not None:
            root = os.path.abspath(root)
            args += ["--root", root]
            binds.append(root)
        if meta.get("shell_job"):
            args.append("--shell-job")
        if external_masters:
            args += ["--enable-external-masters"]
        ext = sorted((externals or {}).items())
        args += self._external_args((key, os.path.abspath(path)) for key, path in ext)
        binds += [os.path.abspath(path) for _, path in ext]
        args += self.restore_args
        self._run("restore", args, log_path, binds)
        try:
            with open(pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as e:
            raise BackendError(f"criu restore: no pid in {pidfile}: {e}") from None

    # -- the restore root -------------------------------------------------------------------

    @staticmethod
    def _record(pid: int) -> dict:
        """What restore and prepare_root need, read from the live tree before criu kills it."""
        try:
            text = open(f"/proc/{pid}/mountinfo").read()
            st = os.stat(f"/proc/{pid}/root")
            sid = os.getsid(pid)
        except OSError as e:
            raise BackendError(f"criu dump: cannot read pid {pid}: {e.strerror}") from None
        mounts = mountinfo.parse(text)
        ids = {m.mnt_id for m in mounts}
        roots = [m for m in mounts if m.parent_id not in ids or m.mountpoint == "/"]
        root = next((m for m in roots if m.mountpoint == "/"), roots[0] if roots else None)
        children = []
        for m in mounts:
            if root is not None and m.parent_id == root.mnt_id and m.mountpoint != "/":
                children.append(m.mountpoint)
        return {
            "pid": pid,
            "shell_job": sid != pid,
            "root_mode": stat.S_IMODE(st.st_mode),
            "root_uid": st.st_uid,
            "root_gid": st.st_gid,
            "root_children": children,
            "files_on_root": CriuBackend._files_on_root(pid, root.mnt_id if root else None),
            "mountinfo": text,
        }

    @staticmethod
    def _files_on_root(pid: int, root_mnt_id: int | None) -> dict[str, str]:
        """{path: /proc link to read it through} for what the tree uses on its root mount:
        executables, mapped files, open files and directories, cwds. criu does not dump the
        root mount's files, it reopens them by path, so the restore root must hold them."""
        if root_mnt_id is None:
            return {}
        found: dict[str, str] = {}
        for p in _tree_pids(pid):
            links = [f"/proc/{p}/exe", f"/proc/{p}/cwd"]
            for sub in ("fd", "map_files"):
                try:
                    links += [f"/proc/{p}/{sub}/{n}" for n in os.listdir(f"/proc/{p}/{sub}")]
                except OSError:
                    pass
            for link in links:
                try:
                    path = os.readlink(link)
                    fd = os.open(link, os.O_PATH)
                except OSError:
                    continue  # sockets, pipes, anon inodes: not files on a mount
                try:
                    with open(f"/proc/self/fdinfo/{fd}") as f:
                        mnt = next((int(l.split()[1]) for l in f if l.startswith("mnt_id:")), None)
                finally:
                    os.close(fd)
                if mnt == root_mnt_id and path.startswith("/") and not path.endswith(" (deleted)"):
                    found.setdefault(path, link)
        return found

    @staticmethod
    def _save_root_files(meta: dict, images_dir: str) -> None:
        """Copy the root mount's files the tree uses (through their /proc links) under images_dir/mntcr-root."""
        for path, link in meta["files_on_root"].items():
            dst = os.path.join(images_dir, ROOT_FILES, path.lstrip("/"))
            try:
                if os.path.isdir(link):
                    os.makedirs(dst, exist_ok=True)
                elif os.path.isfile(link):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(link, dst)
                    shutil.copymode(link, dst)
            except OSError as e:
                raise BackendError(f"criu dump: cannot save {path} (via {link}): {e.strerror}") from None

    @staticmethod
    def read_meta(images_dir: str) -> dict:
        """What `dump` recorded about the tree (empty when the images were not made by this backend)."""
        try:
            with open(os.path.join(images_dir, META_FILE)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @classmethod
    def prepare_root(cls, images_dir: str, dest: str) -> str:
        """Make ``dest`` a restore root for the images: same mode and owner as the dumped root,
        the mountpoint dirs of the root mount's children, and the files the tree used on
        the root mount (executables, open and mapped files, cwds; saved by dump).

        ``dest`` is a plain directory: nothing is mounted on the host. Remove it with
        shutil.rmtree after the restored tree has exited (its mounts live only in the
        restored tree's own mount namespace and vanish with it).
        """
        meta = cls.read_meta(images_dir)
        if not meta:
            raise BackendError(f"no {META_FILE} in {images_dir}: images not dumped by this backend")
        os.makedirs(dest, exist_ok=True)
        for mp in sorted(meta["root_children"], key=len):
            os.makedirs(os.path.join(dest, mp.lstrip("/")), exist_ok=True)
        saved = os.path.join(images_dir, ROOT_FILES)
        if os.path.isdir(saved):
            shutil.copytree(saved, dest, symlinks=True, dirs_exist_ok=True)
        os.chown(dest, meta["root_uid"], meta["root_gid"])
        os.chmod(dest, meta["root_mode"])
        return dest
