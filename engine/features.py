"""Kernel feature probe (`mntcr check`).

Each probe really calls the syscall, in a forked child inside a throwaway
private mount namespace, so nothing on the host changes and "present" means
"works here", not "the headers say so".
"""

from __future__ import annotations

import errno
import os
from engine.records import record

from engine import forkrun, kernel, mountinfo, probecache


@record(frozen=True)
class Feature:
    """One probed feature."""

    name: str
    present: bool
    detail: str
    required: bool  # restore cannot work at all without it
    since: str      # first kernel that has it


# name -> (required, first kernel)
FEATURES = {
    "open_tree": (True, "5.2"),
    "move_mount": (True, "5.2"),
    "fsopen/fsmount": (True, "5.2"),
    "mount_setattr": (False, "5.12"),  # without it: flags and propagation through mount(2)
    "MOVE_MOUNT_SET_GROUP": (False, "5.15"),
    "statmount/listmount": (False, "6.8"),
    "STATX_MNT_ID_UNIQUE": (False, "6.8"),
    # without it: new superblocks are attached in a yard and cloned from there
    "open_tree(detached)": (False, "6.15"),
    # without it: each dropped detached mount is closed alone, one RCU grace period each (engine/parking.py)
    "move_mount(to-detached)": (False, "6.15"),
    # without it: an idmapped mount's map cannot be read, so dump refuses it (engine/userns_cr.py)
    "statmount(idmap)": (False, "6.15"),
    # without it: an overlay only a lazily unmounted mount shows is refused (engine/detached.py)
    "statmount(fd)": (False, "7.0"),
    # overlayfs encodes its real layer's handle for name_to_handle_at(AT_HANDLE_FID) without nfs_export;
    # without it: an overlay whose layers' mount was lazily unmounted since is refused
    # (engine/fs/_layers_detached.py)
    "overlay(AT_HANDLE_FID)": (False, "6.6"),
}


def _clone_detached() -> None:
    # open_tree(OPEN_TREE_CLONE) of a detached mount (a fresh tmpfs): OSError where refused.
    mnt = kernel.scratch_tmpfs()
    try:
        os.close(kernel.open_tree(mnt, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH))
    finally:
        os.close(mnt)


def _stack_detached() -> None:
    # move_mount of one detached mount onto another: OSError where refused.
    below = kernel.scratch_tmpfs()
    try:
        above = kernel.scratch_tmpfs()
        try:
            kernel.move_mount(above, "", below, "", kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(above)
    finally:
        os.close(below)


def _overlay_fid(layers_detached) -> None:
    # An overlay on a fresh tmpfs over /tmp of the throwaway namespace: its root's AT_HANDLE_FID
    # handle must carry a real layer handle (what engine/fs/_layers_detached.py reads).
    kernel.mount("probe", "/tmp", "tmpfs", 0)
    for d in ("l", "u", "w", "m"):
        os.mkdir(f"/tmp/{d}")
    kernel.mount("probe", "/tmp/m", "overlay", 0, "lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w")
    fd = os.open("/tmp/m", os.O_RDONLY | os.O_DIRECTORY)
    try:
        if layers_detached.root_fid(fd) is None:
            raise OSError(errno.EOPNOTSUPP, "overlayfs gives no real layer handle of its root")
    finally:
        os.close(fd)


def _probe_in_child() -> dict[str, tuple[bool, str, int | None]]:
    # Imported before the probes mount over /tmp of this namespace: an engine that lives under
    # /tmp (a checkout there) could not be imported from afterwards.
    from engine import userns
    from engine.fs import _layers_detached
    res: dict[str, tuple[bool, str, int | None]] = {}

    def attempt(name, fn):
        try:
            detail = fn() or "ok"
            res[name] = (True, detail, None)
        except OSError as e:
            res[name] = (False, os.strerror(e.errno) if e.errno else str(e), e.errno)

    def fs():
        state["tmpfs"] = kernel.scratch_tmpfs()

    state: dict[str, int] = {}
    attempt("fsopen/fsmount", fs)
    attempt("open_tree", lambda: state.__setitem__("clone", kernel.open_tree(kernel.AT_FDCWD, "/",
                                                                              kernel.OPEN_TREE_CLONE)))

    def detached() -> int:
        # Each probe stands on its own: a detached mount from fsmount, else from open_tree,
        # else a plain tmpfs mounted the old way, so one missing call does not hide another.
        if "tmpfs" in state:
            return state["tmpfs"]
        if "clone" in state:
            return state["clone"]
        raise OSError(errno.ENOSYS, "no detached mount to try it on (fsmount and open_tree are missing)")

    def move():
        if "tmpfs" in state or "clone" in state:
            # Attach the test mount over /tmp of this throwaway namespace.
            kernel.move_mount(detached(), "", kernel.AT_FDCWD, "/tmp", kernel.MOVE_MOUNT_F_EMPTY_PATH)
        else:
            kernel.mount("probe", "/tmp", "tmpfs", 0)
            os.makedirs("/tmp/m", exist_ok=True)
            kernel.move_mount(kernel.AT_FDCWD, "/tmp", kernel.AT_FDCWD, "/tmp/m", 0)
        state["attached"] = True

    attempt("move_mount", move)

    def setattr_():
        if "tmpfs" in state or "clone" in state:
            kernel.mount_setattr(detached(), "", kernel.AT_EMPTY_PATH, attr_set=kernel.MOUNT_ATTR_NOSUID)
        else:
            kernel.mount_setattr(kernel.AT_FDCWD, "/tmp", 0, attr_set=kernel.MOUNT_ATTR_NOSUID)

    attempt("mount_setattr", setattr_)

    def set_group():
        if not state.get("attached"):
            kernel.mount("probe", "/tmp", "tmpfs", 0)
        os.makedirs("/tmp/a", exist_ok=True)
        os.makedirs("/tmp/b", exist_ok=True)
        kernel.mount(None, "/tmp", None, kernel.MS_SHARED)
        kernel.mount("/tmp", "/tmp/b", None, kernel.MS_BIND)
        # A bind of a shared mount is its peer; SET_GROUP wants a private target.
        kernel.mount(None, "/tmp/b", None, kernel.MS_PRIVATE)
        kernel.move_mount(kernel.AT_FDCWD, "/tmp", kernel.AT_FDCWD, "/tmp/b", kernel.MOVE_MOUNT_SET_GROUP)
        mounts = {m.mountpoint: m for m in mountinfo.read_pid("self")}
        if mounts["/tmp/b"].shared is None or mounts["/tmp/b"].shared != mounts["/tmp"].shared:
            raise OSError(errno.EINVAL, "SET_GROUP did not copy the peer group")

    attempt("MOVE_MOUNT_SET_GROUP", set_group)
    attempt("statmount/listmount", lambda: kernel.statmount(kernel.listmount()[0]) and None)
    attempt("STATX_MNT_ID_UNIQUE", lambda: kernel.statx_mnt_id("/", unique=True) and None)

    attempt("open_tree(detached)", _clone_detached)
    attempt("move_mount(to-detached)", _stack_detached)

    def idmap_map():
        ufd = userns.make(userns.Maps(((0, 100000, 1),), ((0, 100000, 1),), "deny"))
        try:
            fd = kernel.open_tree(kernel.AT_FDCWD, "/tmp", kernel.OPEN_TREE_CLONE)
            try:
                userns.set_idmap(fd, ufd)
                kernel.move_mount(fd, "", kernel.AT_FDCWD, "/tmp", kernel.MOVE_MOUNT_F_EMPTY_PATH)
            finally:
                os.close(fd)
        finally:
            os.close(ufd)
        uid, _ = userns._statmount_idmap(kernel.statx_mnt_id("/tmp", unique=True), 0)
        if uid != "0 100000 1":
            raise OSError(errno.ENOSYS, f"statmount shows no idmap ({uid})")

    attempt("statmount(idmap)", idmap_map)
    attempt("overlay(AT_HANDLE_FID)", lambda: _overlay_fid(_layers_detached))
    attempt("statmount(fd)", lambda: kernel.statmount_fd(detached(), kernel.STATMOUNT_MNT_BASIC) and None)
    return res


def _probe_results() -> dict[str, tuple[bool, str]]:
    """Probe every feature (a forked child in a private mount namespace) and keep a definitive answer
    for the rest of the boot (engine.probecache)."""
    try:
        raw = forkrun.in_mount_ns(_probe_in_child)
    except OSError as e:
        raw = {name: (False, f"cannot create a mount namespace: {e}", None) for name in FEATURES}
    results = {name: raw.get(name, (False, "not probed", None))[:2] for name in FEATURES}
    probecache.store(probecache.key(FEATURES), results, {name: v[2] for name, v in raw.items()})
    return results


def _features(results: dict[str, tuple[bool, str]]) -> list[Feature]:
    return [Feature(name, *results[name], required, since) for name, (required, since) in FEATURES.items()]


def probe() -> list[Feature]:
    """Probe every feature in FEATURES now (`mntcr check`: never from the cache, but refreshes it)."""
    return _features(_probe_results())


def render(report: list[Feature]) -> str:
    """Human-readable report, one line per feature, then a verdict line."""
    lines = []
    for f in report:
        state = "present" if f.present else "MISSING"
        need = "required" if f.required else "optional"
        extra = "" if f.present else f" ({f.detail}; kernel >= {f.since})"
        lines.append(f"{f.name:<24} {state:<8} {need}{extra}")
    missing = [f.name for f in report if f.required and not f.present]
    lines.append("Looks good." if not missing else f"Restore is not possible: missing {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def restore_ready(report: list[Feature]) -> bool:
    """True when every required feature is present."""
    return all(f.present for f in report if f.required)


_cache: dict[str, Feature] | None = None


def available() -> dict[str, Feature]:
    """The features by name: probed once per boot (engine.probecache), then once per process."""
    global _cache
    if _cache is None:
        results = probecache.load(probecache.key(FEATURES)) or _probe_results()
        _cache = {f.name: f for f in _features(results)}
    return _cache


def require(name: str, why: str) -> None:
    """Raise OSError(ENOSYS) with one clear line if feature `name` is missing."""
    f = available()[name]
    if not f.present:
        raise OSError(errno.ENOSYS, f"kernel lacks {name} (kernel >= {f.since}), needed for {why}: {f.detail}")
