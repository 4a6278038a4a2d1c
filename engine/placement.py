"""Where each dumped process's root, cwd, fds, mappings and executable lie: a mount of the tree and
a path relative to its root, the ghost of a deleted file (archived once per inode), or a detached
mount planned later (engine/detached.py `plan`).
"""

from __future__ import annotations

import errno
import os
import stat
import _signal   # (not signal.py: engine/freeze.py)

from engine import (ctty, deadpid, fs, ghosts, image, imageformat, inject, itimers, kernel, loginuid, mappings, mountrules, schedattrs,
                    pdeathsig, pendingsigs, posixtimers, procargs, seccomp,
                    sessions, subreaper, thp, threads, timens, timersigs, zombies)
from engine.dumperror import DumpError, hook
from engine.image import is_beneath, rel_to


def external_file_hint(path: str) -> str:
    """How a refusal of an fd on `path` (a file dump cannot reach) tells the user to declare it."""
    return (f"declare it with --external file[{path}]:KEY (and restore with --external file[KEY]:HOSTPATH), "
            "or run the tree with that fd on a file of its own mounts")


def unplaced_of(p: dict):
    """(location, /proc link relative to the pid) of each of p's root, cwd and fds on a detached mount."""
    for key in ("root", "cwd"):
        if p[key].get("detached"):
            yield p[key], key
    for f in p["fds"]:
        if f.get("detached"):
            yield f, f"fd/{f['fd']}"


def _check_early_filters(pid: int, entry: dict) -> None:
    """Refuse filters its stand-in must install before its ids (engine/seccomp.py `late`) that deny
    a call the stand-in makes after them (engine/seccomp_eval.py): restore would fail."""
    why = seccomp.standin_refusal(pid, entry)   # (asked before the stop too: filters added since)
    if why:
        raise DumpError(errno.EOPNOTSUPP, why)


def _asked_inside(pid: int, filters: list | None, subreaper_too: bool, pdeathsig_too: bool,
                  timers: list[dict]) -> dict:
    """What dump asks stopped process `pid` itself, all in one seize (engine/inject.py): {module:
    the answers of its CALLS (posixtimers: those reading `timers`), or the OSError that made them
    fail}. A call its seccomp filters would not let through is not sent (None in its place: each
    module decides what that means)."""
    users = [(itimers, itimers.CALLS)] + [(subreaper, subreaper.CALLS)] * subreaper_too \
        + [(pdeathsig, pdeathsig.CALLS)] * pdeathsig_too + [(posixtimers, posixtimers.calls(timers))] * bool(timers)
    try:
        got = inject.calls(pid, [c for _, calls in users for c in calls], filters or [], skip_denied=True)
    except OSError as e:
        return {u: e for u, _ in users}
    out, at = {}, 0
    for u, calls in users:
        out[u], at = got[at:at + len(calls)], at + len(calls)
    return out


def _timers(pid: int, entry: dict, got: dict, timers: list[dict], status: dict[str, str]) -> None:
    """Its POSIX and armed interval timers (engine/posixtimers.py, engine/itimers.py) into `entry`,
    with the timer signals it caught (engine/timersigs.py; `status`: the stopped process's
    kernel.read_process_status)."""
    if timers:
        entry["posix_timers"] = posixtimers.record(pid, timers, got[posixtimers])
    armed = itimers.read(pid, got[itimers])
    if armed:
        entry["itimers"] = armed
    mask = timersigs.caught(pid, timersigs.delivered(entry), status)
    if mask:
        entry["timer_sig_caught"] = mask
    # (SIGCHLD too: a parent the stop of its child reached before its own stop, which
    # freeze.stop_in_order waits for a moment only, runs its handler and stops inside it)
    mask |= timersigs.caught(pid, {_signal.SIGCHLD}, status)
    if entry.get("sig_blocked", 0) & mask:
        # (stopped inside a handler of one, most likely: the mask outside it, which the handler's
        # end puts back, else its stand-in would hold that timer's ticks pending for good, or
        # block SIGCHLD: CRIU's zdtm tests' init, whose handler blocks SIGTERM and SIGCHLD)
        outside = timersigs.mask_outside_handler(pid, entry["sig_blocked"], mask)
        if outside is not None:
            entry["sig_blocked"] = outside
            if not outside:
                del entry["sig_blocked"]


def time_names(pids: list[int]) -> dict[int, str]:
    """{inode: image id} of the time namespaces of `pids` (tree order) that `processes` records."""
    return timens.names(pids, timens.ns_ino("self"))


def processes(tree, ns_of, ns_data, names, me, mounts_by_id, fdtable, ghost_ctx, ext_files,
              map_unplaced: list, dead=()) -> list[dict]:
    """The image's process entries: namespaces, threads, root, cwd, fds (each by its kind) and mapped files.
    `dead`: the tree's zombies [(pid, ppid)] (a pid namespace's init that exited: zombies.pidns_children).
    fds on a path of `ext_files` (--external file[PATH]:KEY) are recorded by KEY only; mappings on
    detached mounts are added to `map_unplaced` (_place_maps)."""
    procs_doc = []
    used_files: set[str] = set()
    my_time = timens.ns_ino("self")
    time_names = timens.names([pid for pid, _ in tree], my_time)   # (as `time_names` gives them)
    try:
        timens.check_tree([pid for pid, _ in tree], my_time)
    except timens.TimensError as e:
        raise DumpError(e.errno, e.strerror) from None
    parents = {ppid for _, ppid in tree}
    for pid, ppid in tree:
        ino = ns_of[pid]["mnt"]
        pdata = ns_data[ino]["procs"][pid]
        entry = {
            "pid": pid, "ppid": ppid,
            "ns": {k: names[(k, ns_of[pid][k])] for k in image.NS_KINDS},
            "host_ns": [k for k in image.NS_KINDS if ns_of[pid][k] == me[k]],
            **zombies.pidns_children(pid, ns_of[pid]["pid"], names, dead),
            "fds": [],
            "comm": kernel.read_comm(pid),
            "caps": kernel.read_caps(pid, status := kernel.read_process_status(pid)),   # (stopped: 1 read, 8 uses)
            **kernel.read_fs_bits(pid, status),
            **kernel.read_ignored_signals(pid, status),
            **thp.read(pid, status),
            **kernel.read_blocked_signals(pid, status),
            "rlimits": kernel.read_rlimits(pid),
        }
        try:
            entry.update(procargs.read(pid))
            entry["sched"] = schedattrs.read(pid)
            entry.update(timens.read(pid, my_time, time_names))
            filters = seccomp.read(pid, status)
            auid = loginuid.read(pid)
            posixtimers.check([pid])   # (one made since the check before the stop)
            timers = posixtimers.parse(pid)
            # (only a parent's flag is ever seen: a stand-in never forks; the root's parent-death
            # signal is not kept: its parent is outside the tree)
            got = _asked_inside(pid, filters, pid in parents and subreaper.asked(), pid != tree[0][0], timers)
            _timers(pid, entry, got, timers, status)
            if subreaper in got and subreaper.read(pid, filters or [], got[subreaper]):
                entry["child_subreaper"] = True
        except (procargs.ArgsError, schedattrs.SchedError, timens.TimensError, seccomp.SeccompError, posixtimers.TimerError,
                subreaper.SubreaperError) as e:
            raise DumpError(e.errno, e.strerror) from None
        if filters:
            entry["seccomp"] = filters
            _check_early_filters(pid, entry)
        if auid is not None:
            entry["loginuid"] = auid
        if pdeathsig in got:
            sig = pdeathsig.read(pid, got[pdeathsig])
            if sig:
                entry["pdeathsig"] = sig
        entry["sid"], entry["pgid"] = sessions.read(pid)   # (restore makes what they mean: engine/sessions.py)
        try:
            # (checked again: one made after the pre-stop check)
            listed = threads.listed(pid, entry.get("sig_blocked", 0), entry.get("timer_sig_caught", 0))
            entry["threads"] = [e for _, e in listed]
            blocked = entry.get("sig_blocked", 0)
            entry.update(pendingsigs.read(pid, blocked, [e.get("sig_blocked", blocked) for _, e in listed],
                                          any(pp == pid for _, pp in dead)))
            posixtimers.number_threads(pid, entry.get("posix_timers") or [], [t for t, _ in listed])
        except (threads.ThreadError, posixtimers.TimerError) as e:
            raise DumpError(e.errno, e.strerror) from None
        if not entry["threads"]:
            del entry["threads"]
        for key in ("root", "cwd"):
            entry[key] = _place_dir(pid, key, pdata[key], mounts_by_id, ghost_ctx)
        for f in pdata["fds"]:
            if f["target"] in ext_files:
                entry["fds"].append(fdtable.external_entry(pid, f, ext_files[f["target"]]))
                used_files.add(f["target"])
                continue
            fd_entry = fdtable.entry(pid, f, lambda path, mnt, what, pid=pid: place(
                {"abs": path, "mnt": mnt}, mounts_by_id, pid, what), ns_data[ino]["mounts"],
                [(next(iter(d["procs"])), d["mounts"]) for other, d in ns_data.items() if other != ino and d["procs"]])
            if fd_entry.pop("placed"):
                fd_entry.update(_place_fd(pid, f, mounts_by_id, ghost_ctx))
            entry["fds"].append(fd_entry)
        if entry["sid"] == pid and not ctty.leader_takes(entry):
            # (a leader holding no fd on its terminal: it takes it again through its node, engine/ctty.py)
            node = ctty.node_of(pid, fdtable, lambda path, mnt, what, pid=pid: place(
                {"abs": path, "mnt": mnt}, mounts_by_id, pid, what), ns_data[ino]["mounts"])
            if node is not None:
                entry["ctty_node"] = node
        if entry["sid"] == pid and ctty.leader_takes(entry):
            fg = sessions.foreground(pid)   # (its terminal is restored: so is the job in its foreground)
            if fg is not None and fg != entry["pgid"]:
                entry["tty_fg"] = fg
        entry["maps"] = _place_maps(pid, pdata["maps"], mounts_by_id, ghost_ctx, map_unplaced)
        if (exe := _exe_of(pid, pdata, entry["maps"], mounts_by_id)) is not None:
            entry["exe"] = exe
        procs_doc.append(entry)
    hook(mountrules.unknown_external_files, ext_files, used_files)   # (also asked before the stop)
    return procs_doc


def _place_maps(pid: int, maps: list, mounts_by_id: dict, ghost_ctx, unplaced: list) -> list[dict]:
    """Where each file process `pid` maps lies (engine/mappings.py): on a mount of the tree (a file
    unlinked since as a ghost, when its filesystem's files are dumped: CRIU keeps a deleted library
    so), or on a mount in no dumped namespace (a lazily unmounted mount the mapping keeps alive: its
    location is added to `unplaced` as (loc, pid, link), for detached.plan). Left out: anonymous
    shared memory and memfds (mappings.kernel_memory); a deleted file restore could not make again
    is refused (mountrules.deleted_mapping)."""
    mntns_doc, superblocks = ghost_ctx[0], ghost_ctx[1]
    out = []
    for path, mnt, link, visible in maps:
        target, deleted = kernel.undeleted(path)
        if mnt not in mounts_by_id and visible is not None:
            # (a mount of a namespace outside the dump: mapped from the one its path reaches, at the
            # real path it has there, nsinspect._visible)
            mnt, path = visible
        m = mounts_by_id.get(mnt)
        if not deleted:
            if m is None:
                loc = {"mnt": mnt, "path": path, "detached": True}
                unplaced.append((loc, pid, link))
            else:
                loc = place({"abs": path, "mnt": mnt}, mounts_by_id, pid, "mapping")
            out.append(loc)
            continue
        if m is None and mappings.kernel_memory(mnt, f"/proc/{pid}/{link}"):
            continue
        try:
            st = os.stat(f"/proc/{pid}/{link}")
        except OSError:
            continue   # (not mapped any more: a process of the tree is stopped, so it exited)
        where = f"process {pid} mapping ({path})"
        sb = None if m is None else superblocks[mntns_sb(mntns_doc, mnt)]
        hook(mountrules.deleted_mapping, where, sb, st.st_mode)   # (asked before the stop too)
        if not is_beneath(target, m.mountpoint):
            raise DumpError(errno.EOPNOTSUPP, f"{where}: not beneath {m.mountpoint}, where its mount "
                                              f"{mnt} is: not supported")
        loc = place({"abs": target, "mnt": mnt}, mounts_by_id, pid, "mapping")
        loc["ghost"] = _fd_ghost(pid, link, target, m, *ghost_ctx)
        out.append(loc)
    # once each (two copies of one path may lead to one mount: a stand-in's own library and the one
    # it maps for the process)
    return list({(loc["mnt"], loc["path"], bool(loc.get("detached"))): loc for loc in out}.values())


def _exe_of(pid: int, pdata: dict, maps: list[dict], mounts_by_id: dict) -> dict | None:
    """Where process `pid`'s executable lies (`pdata`: nsinspect's record of it, `maps`: its placed
    mappings), None when not restored (none, or on a detached mount that no mapping keeps)."""
    exe = pdata["exe"]
    if exe and exe[1] not in mounts_by_id and pdata.get("exe_visible"):
        # (run from a mount of a namespace outside the dump, gone since: `unshare -m unshare -m ...`,
        # lxc-usernsexec: the same file on the mount its path reaches, nsinspect._visible)
        exe = (pdata["exe_visible"][1], pdata["exe_visible"][0])
    if not exe:
        return None
    if exe[1] in mounts_by_id:
        return _place_exe(pid, *exe, maps, mounts_by_id)
    # On a detached mount (lazily unmounted since the exec, or a gone namespace's that no path here
    # reaches): where its mapping keeps that mount (_place_maps).
    loc = next((m for m in maps if m.get("detached") and (m["path"], m["mnt"]) == tuple(exe)), None)
    return None if loc is None else dict(loc)


def _place_exe(pid: int, path: str, mnt: int, maps: list[dict], mounts_by_id: dict) -> dict:
    """Where process `pid`'s executable lies. One deleted since the exec (a binary an upgrade
    replaced) is mapped too: it is the ghost `_place_maps` kept for that mapping."""
    target, deleted = kernel.undeleted(path)
    if not deleted:
        return place({"abs": path, "mnt": mnt}, mounts_by_id, pid, "exe")
    want = place({"abs": target, "mnt": mnt}, mounts_by_id, pid, "exe")
    for loc in maps:
        if loc.get("ghost") and loc["mnt"] == want["mnt"] and loc["path"] == want["path"]:
            return dict(loc)
    raise DumpError(errno.EOPNOTSUPP, f"process {pid} executable ({path}): deleted and not mapped: "
                                      "restore has no copy of it to run: not supported")


def _place_dir(pid: int, key: str, loc: dict, mounts_by_id: dict, ghost_ctx) -> dict:
    """Where a process's root or cwd lies: mount and path, and its ghost if it was removed."""
    ghost = None
    if deadpid.gone_pid_dir(loc["abs"], mounts_by_id.get(loc["mnt"])):
        # /proc/N of a process gone (CRIU's unhashed_proc): entered again while N is restore's
        target = kernel.undeleted(loc["abs"])[0]
        placed = place({"abs": target, "mnt": loc["mnt"]}, mounts_by_id, pid, key)
        placed["dead_pid"] = int(target.rsplit("/", 1)[1])
        return placed
    target, deleted = kernel.undeleted(loc["abs"])
    if deleted:
        m = mounts_by_id.get(loc["mnt"])
        if m is None or target != m.mountpoint or not ghosts.split_root(m.root)[1]:
            # A directory removed while it was the cwd (or root): always empty.
            ghost = _fd_ghost(pid, key, target, m, *ghost_ctx)
        loc = {"abs": target, "mnt": loc["mnt"]}
    placed = place(loc, mounts_by_id, pid, key)
    if ghost is not None:
        placed["ghost"] = ghost
    return placed


def _place_fd(pid: int, f: dict, mounts_by_id: dict, ghost_ctx) -> dict:
    """Where an fd on a file (of a placed kind) lies: mount and path, ghost or outside when so."""
    target, deleted = kernel.undeleted(f["target"])
    ghost = None
    if deleted:
        m = mounts_by_id.get(f["mnt_id"])
        if m is None or target != m.mountpoint or not ghosts.split_root(m.root)[1]:
            # Not the (deleted) root of its mount: a file unlinked while open.
            ghost = _fd_ghost(pid, f"fd/{f['fd']}", target, m, *ghost_ctx)
    # Opened through a mount outside the dumped namespaces, but reachable at the same path
    # here: restored on that visible mount (the outside mount itself cannot be recreated).
    outside = "visible_mnt" in f and f["mnt_id"] not in mounts_by_id
    loc = place({"abs": target, "mnt": f["visible_mnt"] if outside else f["mnt_id"]},
                 mounts_by_id, pid, f"fd {f['fd']}")
    if outside:
        loc["outside"] = True
        visible = mounts_by_id[f["visible_mnt"]]
        hook(mountrules.device_outside, f"process {pid} fd {f['fd']} ({target})", f["mode"],
             "nodev" in visible.mount_opts)   # (also asked before the stop)
    if ghost is not None:
        loc["ghost"] = ghost
    return loc


def want_linked(ns_data, mounts_by_id, mntns_doc, superblocks, plan) -> dict[str, str]:
    """For each file a process holds open or maps under a deleted name while it still has another
    name on a filesystem whose files are archived, ask the archiving step for that other name;
    returns the dict it fills: "dev:ino" -> the name's path in its superblock (see _fd_ghost)."""
    found: dict[str, str] = {}
    for data in ns_data.values():
        for pid, pdata in data["procs"].items():
            held = [(f.get("mnt_id"), f["target"], f"fd/{f['fd']}", f"fd {f['fd']}") for f in pdata["fds"]
                    if stat.S_ISREG(f["mode"])]
            held += [(mnt, path, link, "mapping") for path, mnt, link, _visible in pdata["maps"]]
            for mnt, target, link, what in held:
                m = mounts_by_id.get(mnt)
                if m is None or not target.endswith(kernel.DELETED):
                    continue
                try:
                    st = os.stat(f"/proc/{pid}/{link}")
                except OSError:
                    continue
                sid = mntns_sb(mntns_doc, m.mnt_id)
                handler = fs.lookup(superblocks[sid]["fstype"])
                if (not st.st_nlink or not stat.S_ISREG(st.st_mode) or superblocks[sid]["external"]
                        or handler is None or not handler.content):
                    continue
                key = f"{st.st_dev}:{st.st_ino}"
                if key not in found:
                    found[key] = ""
                    plan.want_file(sid, st.st_ino, lambda path, key=key: found.__setitem__(key, path),
                                   f"process {pid} {what} ({target}): a deleted name of a file "
                                   f"that has {st.st_nlink} other name(s), none of them on a mount of the tree "
                                   "whose files are dumped")
    return found


def _fd_ghost(pid, link, path, m, mntns_doc, superblocks, ghosts_doc, writer, files, linked_names=None) -> str:
    """The ghost (archived once per inode) of a file that process `pid` holds open after unlinking it
    (`link`: "fd/N"), or of a directory removed while it was its cwd or root ("cwd", "root").

    Like CRIU's link-remap: a file open under several deleted names keeps them all (restore links
    it there again while it reopens the fds, `links`); a deleted name of a file that still has
    another name archives nothing of its own (`linked`: restore links that name there again)."""
    where = f"process {pid} {link.replace('fd/', 'fd ')} ({path} (deleted))"
    sid = None if m is None else mntns_sb(mntns_doc, m.mnt_id)
    sb = None if m is None else superblocks[sid]
    st = None if m is None else os.stat(f"/proc/{pid}/{link}")
    hook(mountrules.deleted_file, where, sb, st and st.st_mode)   # (also asked before the stop)
    key = f"{st.st_dev}:{st.st_ino}"
    # A type that makes ghosts through its mounts shows another inode's link count (overlay: the
    # layer's, which still has its name beneath the whiteout): the "(deleted)" name is what counts.
    nlink = 0 if not fs.lookup(sb["fstype"]).content else st.st_nlink
    linked = (linked_names or {}).get(key) if nlink else None
    if nlink and not linked:
        raise DumpError(errno.EOPNOTSUPP, f"{where}: the file has {st.st_nlink} other name(s) (a hard link) that "
                                          "no mount of the tree whose files are dumped reaches")
    sb_path = ghosts.sb_path(m.root, m.mountpoint, path)
    how = None
    if stat.S_ISDIR(st.st_mode):
        how = hook(fs.lookup(sb["fstype"]).deleted_dir, where, sb, pid, link, sb_path)   # (also asked before the stop)
        if how and how.get("uncover"):
            hook(mountrules.uncover_layer, where,
                 next((s for s in superblocks.values() if s.get("dev") == how["layer_dev"]), None))
    for gid, g in ghosts_doc.items():
        if g.get("inode") == key:
            links = g.setdefault("links", [])
            if g["path"] != sb_path and sb_path not in links:
                # Restore reopens every fd through its own name on its own mount: another unlinked
                # name of the same file is linked there too (CRIU's mntns_link_remap).
                if stat.S_ISDIR(st.st_mode) or len(links) >= imageformat.MAX_GHOST_LINKS:
                    raise DumpError(errno.EOPNOTSUPP, f"{where}: the same deleted file is also open as "
                                                      f"{g['path']} of its filesystem (too many names)")
                links.append(sb_path)
            if not links:
                del g["links"]
            return gid  # another fd on it, or the (deleted) root of a mount: one inode at restore too
    gid = f"g-{len(ghosts_doc)}"
    if how and how.get("uncover"):
        # (a lower layer's directory: restore uncovers it again, engine/ghosts.py Uncovered)
        ghosts_doc[gid] = {"sb": sid, "path": sb_path, "uncover": True, "inode": key}
        return gid
    if linked:
        ghosts_doc[gid] = {"sb": sid, "path": sb_path, "linked": linked, "inode": key}
        return gid
    try:
        attrs = kernel.statx_attributes(f"/proc/{pid}/{link}")[0]
    except OSError as e:
        raise DumpError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None
    hook(mountrules.ghost_attrs, where, attrs)   # (asked before the stop too)
    name, out = writer.new_archive()
    try:
        d, _, entry = f"/proc/{pid}/{link}".rpartition("/")
        files[name] = ghosts.archive_link(d, entry, sb_path, out)
    except OSError as e:
        raise DumpError(e.errno or errno.EIO, f"{where}: {e.strerror or e}") from None
    ghosts_doc[gid] = {"sb": sid, "path": sb_path, "file": name, "member": "sb-0",
                       "only": sb_path.rsplit("/", 1)[1], "inode": key}
    return gid


def mntns_sb(mntns_doc: dict, mid: int) -> str:
    """The superblock id of mount `mid`."""
    for ns in mntns_doc.values():
        for e in ns["mounts"]:
            if e["id"] == mid:
                return e["sb"]
    raise KeyError(mid)


def place(loc: dict, mounts_by_id: dict, pid: int, what: str) -> dict:
    """{abs path, mnt id} -> {mnt, path relative to the mount's root}."""
    path, mnt = loc["abs"], loc["mnt"]
    if path.endswith(kernel.DELETED):
        raise DumpError(errno.EOPNOTSUPP, f"process {pid} {what}: {path}: deleted files are not supported yet")
    m = mounts_by_id.get(mnt)
    if m is None:
        # In no dumped namespace: a lazily unmounted (detached) mount, resolved later.
        return {"mnt": mnt, "path": path, "detached": True}
    if not is_beneath(path, m.mountpoint):
        raise DumpError(errno.EIO, f"process {pid} {what}: {path} is not beneath its mount's {m.mountpoint}")
    return {"mnt": mnt, "path": "/" + rel_to(path, m.mountpoint)}
