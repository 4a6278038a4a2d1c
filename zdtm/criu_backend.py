"""The ``criu`` backend: checkpoint/restore a scenario's process tree with criu dump / criu restore.

What criu needs from the tree it dumps (measured with criu 4.1.1 on 6.18):

- the root task is a session leader, else ``--shell-job`` (chosen automatically);
- every fd, the exe and mapped files sit on mounts visible in the tree's own
  mount namespace (stdio on host pipes or files outside its root make dump
  fail with "Can't lookup mount");
- criu does not dump the mount namespace's root mount (nor its contents): the
  restore needs ``--root R`` with R a directory of the same mode holding the
  mountpoint directories of the root mount's children and every file the tree
  uses on the root mount (exe, open files, cwd). `dump` copies the root mount
  (not its children) into the images dir first, `prepare_root` copies it back
  out; R is a plain directory (no mounts on the host), removed with
  shutil.rmtree once the restored tree is gone. The restored root mount is a
  bind of R (ext4 or whatever holds R), not the dumped fs: compare the root
  mount as external;
- a mount whose master peer group has no shared member in any mount namespace
  of the tree (its master lives outside, e.g. a container's rslave bind of a
  host mount) is "external slavery": criu refuses it ("has unreachable
  sharing. Try --enable-external-masters") unless given that flag. `dump`
  derives it from the live tree (`unreachable_masters`), records it and
  passes the flag to dump and restore;
- the restore can only take the dumped pid back once it is gone (reaped), else
  "Can't fork for PID: File exists"; `restore` waits for it.

`dump` records those facts in ``<images_dir>/mntcr-criu.json`` and the root
copy in ``<images_dir>/mntcr-root`` (criu ignores files it does not know).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time

from engine import kernel, mountinfo
from zdtm import criu_env

__all__ = ["BackendError", "CriuBackend", "META_FILE", "ROOT_FILES"]

META_FILE = "mntcr-criu.json"
ROOT_FILES = "mntcr-root"  # a copy of the tree's root mount, saved at dump
# Regular file contents copied from the root mount at most (a container root is a small
# tmpfs; past this, files are created empty and criu says which one it missed).
ROOT_COPY_LIMIT = 256 << 20


class BackendError(Exception):
    """A dump or restore failed; the message is one line (criu's first error line)."""


def env_is_userland(backend: "CriuBackend") -> bool:
    """Whether the backend's criu runs pivoted into a userland (which a tmpfs root needs)."""
    try:
        return backend.env().root is not None
    except criu_env.CriuEnvError:
        return False


def _log_seconds(log_path: str) -> float | None:
    """The last "(SS.ffffff)" timestamp of a criu log: criu's own run time."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    stamps = re.findall(r"^\(\s*(\d+\.\d+)\)", tail, re.M)
    return float(stamps[-1]) if stamps else None


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (every thread's children), parents first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
    return out


def unreachable_masters(mountinfos: list[str]) -> list[str]:
    """Mountpoints (``ns N: /path``) of mounts whose master peer group is not shared by any
    mount of the given mount namespaces (the tree's): what --enable-external-masters is for."""
    parsed = [mountinfo.parse(text) for text in mountinfos]
    shared = {m.shared for mounts in parsed for m in mounts if m.shared is not None}
    return [f"ns {i}: {m.mountpoint} (master:{m.master})" for i, mounts in enumerate(parsed)
            for m in mounts if m.master is not None and m.master not in shared]


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
        self.verbosity = verbosity
        self.timeout = timeout
        # Extra criu flags per action, e.g. restore_args=("--mntns-compat-mode",) (restore-only in criu 4).
        self.dump_args = tuple(dump_args)
        self.restore_args = tuple(restore_args)
        self._env: criu_env.CriuEnv | None = None
        # Per action ("dump"/"restore") of the last call: {"wall": s, "criu": s}; "criu" is
        # criu's own duration from its log (without entering the userland), None if unknown.
        self.timings: dict[str, dict] = {}
        # Per action: the criu arguments of the last call (which flags were derived).
        self.last_args: dict[str, list[str]] = {}

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
        return ok, f"{env.describe()}: {reason}"

    # -- helpers ----------------------------------------------------------------------------

    def _env_or_error(self, action: str) -> criu_env.CriuEnv:
        try:
            return self.env()
        except criu_env.CriuEnvError as e:
            raise BackendError(f"criu {action}: {e}") from None

    def _run(self, action: str, args: list[str], log_path: str, binds: list, tmpfs_root: dict | None = None) -> None:
        env = self._env_or_error(action)
        self.last_args[action] = list(args)
        start = time.monotonic()
        try:
            proc = env.run(args, binds=binds, timeout=self.timeout, tmpfs_root=tmpfs_root)
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
        self.timings[action] = {"wall": time.monotonic() - start, "criu": _log_seconds(log_path)}

    # -- dump / restore ---------------------------------------------------------------------

    def dump(self, pid: int, images_dir: str, externals: dict[str, str] | None = None, log_dir: str | None = None,
             *, external_masters: bool | None = None, leave_running: bool = False, tag: str = "") -> None:
        """``criu dump -t pid -D images_dir``; the tree is killed afterwards unless ``leave_running``.

        ``externals`` maps a mountpoint (as seen inside the tree) to the key the
        restore will bind a host path on. Raises BackendError with criu's first
        error line; criu's log is ``log_dir/dump<tag>.log`` (default: images_dir).
        Before criu runs, the tree's root mount (which criu does not dump) is
        copied under images_dir/mntcr-root for `prepare_root`.
        ``external_masters`` None (default) passes --enable-external-masters
        when the tree has a mount whose master is outside it (`unreachable_masters`);
        the choice is recorded for `restore`.
        """
        images_dir = os.path.abspath(images_dir)
        log_dir = os.path.abspath(log_dir or images_dir)
        os.makedirs(images_dir, exist_ok=True)
        os.makedirs(log_dir, exist_ok=True)
        # Both read from the live tree: criu kills it.
        meta = self._record(pid)
        meta["root_copy"] = _snapshot_root(pid, os.path.join(images_dir, ROOT_FILES))
        if external_masters is None:
            external_masters = bool(meta["unreachable_masters"])
        meta["external_masters"] = bool(external_masters)
        with open(os.path.join(images_dir, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        log_path = os.path.join(log_dir, f"dump{tag}.log")
        args = ["dump", "-t", str(pid), "-D", images_dir, "-o", log_path, f"-v{self.verbosity}"]
        if meta["shell_job"]:
            args.append("--shell-job")
        if external_masters:
            args.append("--enable-external-masters")
        if leave_running:
            args.append("--leave-running")
        for mountpoint, key in sorted((externals or {}).items()):
            args += ["--external", f"mnt[{mountpoint}]:{key}"]
        args += self.dump_args
        self._run("dump", args, log_path, [images_dir, log_dir])

    def restore(self, images_dir: str, externals: dict[str, str] | None = None, root: str | None = None,
                log_dir: str | None = None, *, external_masters: bool | None = None, wait_timeout: float = 10.0,
                tag: str = "") -> int:
        """``criu restore -d`` from images_dir; returns the restored root task's host pid.

        ``externals`` maps each key given at dump to the host path to bind there.
        ``root`` is the directory the restored mount namespace gets as its root
        (see `prepare_root`). With None and a tmpfs root at dump, the root is a
        tmpfs like the dumped one (same source and options), filled from the
        dump's root copy inside criu's namespace (a userland's, or a private
        one made for a host criu): it lives only in the restored namespace,
        nothing to clean up. Waits (up to
        ``wait_timeout`` s) until the dumped pid is gone first. criu's log is
        ``log_dir/restore<tag>.log``. ``external_masters`` None: as chosen at dump.
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
                    raise BackendError(f"criu restore: dumped pid {dumped} still exists after {wait_timeout:g} s "
                                       f"(a zombie its parent has not reaped?)")
                time.sleep(0.01)
        env = self._env_or_error("restore")
        log_path = os.path.join(log_dir, f"restore{tag}.log")
        pidfile = os.path.join(log_dir, f"restore{tag}.pid")
        try:
            os.unlink(pidfile)  # criu refuses to overwrite it
        except FileNotFoundError:
            pass
        args = ["restore", "-d", "-D", images_dir, "-o", log_path, f"-v{self.verbosity}", "--pidfile", pidfile]
        binds: list = [images_dir, log_dir]
        tmpfs_root = None
        if root is None and (tmpfs_root := self._tmpfs_root(images_dir, meta, env.root is not None)):
            args += ["--root", tmpfs_root["inside"]]
        elif root is not None:
            root = os.path.abspath(root)
            args += ["--root", root]
            binds.append(root)
        if meta.get("shell_job"):
            args.append("--shell-job")
        if external_masters is None:
            external_masters = bool(meta.get("external_masters"))
        if external_masters:
            args.append("--enable-external-masters")
        for key, path in sorted((externals or {}).items()):
            # criu opens the source inside its own root: host paths a userland would hide
            # (the host's /usr over the userland's) are bound in elsewhere.
            inside = env.inside(path, f"ext-{key}")
            args += ["--external", f"mnt[{key}]:{inside}"]
            binds.append((os.path.abspath(path), inside))
        args += self.restore_args
        self._run("restore", args, log_path, binds, tmpfs_root=tmpfs_root)
        try:
            with open(pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as e:
            raise BackendError(f"criu restore: no pid in {pidfile}: {e}") from None

    # -- the restore root -------------------------------------------------------------------

    @staticmethod
    def _record(pid: int) -> dict:
        """What restore needs and what a reader of the images wants to know, from the live tree."""
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                text = f.read()
            sid = os.getsid(pid)
        except OSError as e:
            raise BackendError(f"criu dump: cannot read pid {pid}: {e.strerror}") from None
        mounts = mountinfo.parse(text)
        root = next((m for m in mounts if m.mountpoint == "/"), None)
        children = [m.mountpoint for m in mounts
                    if root is not None and m.parent_id == root.mnt_id and m.mnt_id != root.mnt_id]
        # Every mount namespace of the tree (criu dumps them all), once each.
        by_ns: dict[str, str] = {}
        for p in tree_pids(pid):
            try:
                ns = os.readlink(f"/proc/{p}/ns/mnt")
                if ns not in by_ns:
                    with open(f"/proc/{p}/mountinfo") as f:
                        by_ns[ns] = f.read()
            except OSError:
                continue  # exited meanwhile
        return {"pid": pid, "shell_job": sid != pid, "root_children": children, "mountinfo": text,
                "unreachable_masters": unreachable_masters(list(by_ns.values()) or [text])}

    @staticmethod
    def _tmpfs_root(images_dir: str, meta: dict, userland: bool = True) -> dict | None:
        """The tmpfs_root spec (zdtm.criu_env.CriuEnv.run) recreating a dumped tmpfs root, else None.

        In a userland it sits on the userland's /run tmpfs; a host criu gets it over an empty
        directory of the images dir (covered only in criu's own namespace)."""
        saved = os.path.join(images_dir, ROOT_FILES)
        mounts = mountinfo.parse(meta.get("mountinfo", ""))
        root = next((m for m in mounts if m.mountpoint == "/"), None)
        if root is None or root.fstype != "tmpfs" or root.root != "/" or not os.path.isdir(saved):
            return None
        # Writable, like the directory CRIU's zdtm.py passes as --root (ns flavor): the root
        # copy is written into it, and making the restored root read-only is criu's job (a
        # read-only root that comes back writable is criu's finding, not this adapter's).
        flags = 0
        for opt, flag in (("nosuid", kernel.MS_NOSUID), ("nodev", kernel.MS_NODEV), ("noexec", kernel.MS_NOEXEC)):
            if opt in root.mount_opts:
                flags |= flag
        data = ",".join(o for o in root.super_opts if o not in ("rw", "ro"))
        inside = criu_env.ALIAS_DIR + "/root"
        if not userland:
            inside = os.path.join(images_dir, "mntcr-root-mnt")
            os.makedirs(inside, exist_ok=True)
        return {"inside": inside, "source": root.source, "flags": flags, "data": data, "copy_from": saved}

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
        """Make ``dest`` a restore root for the images: a copy of the dumped tree's root mount
        (files, symlinks, device nodes, modes, owners; the mountpoints of its child mounts as
        empty directories or files), as saved by dump.

        ``dest`` is a plain directory: nothing is mounted on the host. Remove it with
        shutil.rmtree after the restored tree has exited (its mounts live only in the
        restored tree's own mount namespace and vanish with it).
        """
        saved = os.path.join(images_dir, ROOT_FILES)
        if not cls.read_meta(images_dir) or not os.path.isdir(saved):
            raise BackendError(f"no {META_FILE} or {ROOT_FILES} in {images_dir}: images not dumped by this backend")
        criu_env.copy_tree(saved, dest)
        return dest


# -- the root mount's copy ------------------------------------------------------------------

def _snapshot_root(pid: int, dest: str) -> dict:
    """Copy the root mount of ``pid``'s mount namespace (not its child mounts) to ``dest``.

    Walks /proc/PID/root; an entry whose statx mount id is not the root's is a
    child mount's mountpoint: it becomes an empty directory or file and is not
    descended. Returns counts for the record.
    """
    base = f"/proc/{pid}/root"
    counts = {"entries": 0, "bytes": 0, "mountpoints": 0, "emptied": 0}

    def walk(src: str, dst: str, root_id: int) -> None:
        for entry in os.scandir(src):
            s_path, d_path = entry.path, os.path.join(dst, entry.name)
            st = os.lstat(s_path)
            counts["entries"] += 1
            on_root = stat.S_ISLNK(st.st_mode) or root_id == kernel.statx_mnt_id(
                s_path, flags=kernel.AT_SYMLINK_NOFOLLOW | kernel.AT_NO_AUTOMOUNT)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(d_path)
                if on_root:
                    walk(s_path, d_path, root_id)
                else:
                    counts["mountpoints"] += 1
                os.chown(d_path, st.st_uid, st.st_gid)
                os.chmod(d_path, stat.S_IMODE(st.st_mode))
                continue
            content = on_root and counts["bytes"] + st.st_size <= ROOT_COPY_LIMIT
            if not on_root:
                counts["mountpoints"] += 1
            elif stat.S_ISREG(st.st_mode):
                if content:
                    counts["bytes"] += st.st_size
                else:
                    counts["emptied"] += 1
            criu_env.copy_entry(s_path, d_path, st, content)

    shutil.rmtree(dest, ignore_errors=True)
    try:
        os.makedirs(dest)
        walk(base, dest, kernel.statx_mnt_id(base))
        st = os.stat(base)
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
    except OSError as e:
        raise BackendError(f"criu dump: cannot copy the root mount of pid {pid}: {e}") from None
    return counts
