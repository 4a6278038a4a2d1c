"""Pseudo-terminals on a devpts instance of the tree: master and slave fds, pairs and numbers.

A master is recorded with its pty number (TIOCGPTN) and where its ptmx was
opened (/dev/pts/ptmx, or a ptmx node that finds the devpts instance beside
it); a slave as a file on the devpts mount. Restore opens that ptmx on the
restored mount until the kernel hands out the same number (the numbers below
it stay taken until every process holds its fds), unlocks it and gives back
the terminal's termios and window size; slaves are then opened by path.

A slave whose master the tree does not hold (a terminal from outside, on an
external devpts) is reopened by path like any device node.

An fd on /dev/tty (kind `ctty`: a shell opens it for job control, as the
shell of a tmux pane does) is the process's controlling terminal under
another name: its stand-in starts a session of its own, makes the restored
slave its controlling terminal (TIOCSCTTY) and opens the /dev/tty node of
the restored mount. A member of the session (`member`) inherited the
terminal already (its stand-in is forked once its leader took it:
engine/ctty.py) and only opens the node. A session
leader holding the slave that is its controlling terminal (`ctty` on the
slave's entry: a shell on a container's console) takes it again the same way
without /dev/tty.

Bytes waiting in a pty whose master the tree holds (output not read from the
master, input not read on the slave) are kept exactly: read at dump and written
back at once (the tree keeps them, for --leave-running or a dump that fails),
written again into the restored pty once its termios is set (engine/fds/pty_data.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import termios

from engine.imageformat import BOOL, DICT, INT, LIST, MAX_UID, STR, F, Record, b64, list_of, record, rng
from engine.ctty import device
from engine.kernel import fd_stats, undeleted
from engine.fds import FdError, FdKind, RestoreFd, pty_data, register
from engine import procstat

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
O_LARGEFILE = 0o100000   # (fdinfo's on x86: open(2) adds it on 64-bit, TIOCGPTPEER not)
MAX_INDEX = 1 << 20


def _is_master(mode: int, rdev: int) -> bool:
    return stat.S_ISCHR(mode) and os.major(rdev) == 5 and os.minor(rdev) == 2


def _matches(target: str, mode: int) -> bool:
    return target.startswith("/") and stat.S_ISCHR(mode) and (target.endswith("ptmx") or "/pts/" in target
                                                              or target.startswith("/dev/pts"))


def index_of(master: int) -> int:
    """The number of the pty of master fd `master` (TIOCGPTN)."""
    return struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]


def _dump(d) -> dict:
    st = os.stat(f"/proc/{d.pid}/fd/{d.fd}")
    key = ("pty", _instance(d, st))
    if _is_master(st.st_mode, st.st_rdev):
        c = d.copy()
        index = index_of(c)
        _hold(d, key[1], index)
        obj = d.scratch.setdefault(key + (index,), f"pty-{len(d.objects)}")
        o = d.objects.setdefault(obj, {"kind": "pty", "index": index})
        o.setdefault("node", _node(peer_stat(c)))
        attrs = termios.tcgetattr(c)
        _refuse(_odd_speed(d, attrs, index))   # (set since the precheck)
        o["termios"] = attrs[:6] + [[x if isinstance(x, int) else ord(x) for x in attrs[6]]]
        o["winsize"] = list(struct.unpack("HHHH", fcntl.ioctl(c, termios.TIOCGWINSZ, b"\0" * 8)))
        read = d.scratch.setdefault("pty_read", set())
        if obj not in read:   # (once a pty: its masters are fds of one open file description)
            read.add(obj)
            o.update(_waiting(d, c, o["termios"], index))
        return {"obj": obj, "end": "master"}
    index = number_of(os.major(st.st_rdev), os.minor(st.st_rdev))
    obj = d.scratch.setdefault(key + (index,), f"pty-{len(d.objects)}")
    o = d.objects.setdefault(obj, {"kind": "pty", "index": index})
    target, deleted = undeleted(d.target)
    if not deleted:
        o.setdefault("node", _node(st))
    if deleted:
        # Its master was closed (CRIU's pty04): the kernel hung the slave up and removed its node.
        # Placed here (no ghost on devpts): restore opens it while a master of that number is open,
        # then closes the master (_finish names its ptmx, beside the node on that devpts mount).
        loc = d.place(target, d.mnt, f"fd {d.fd}")
        if loc.get("detached"):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a pty slave whose master is gone, on a detached mount: "
                                            "not supported")
        return {"obj": obj, "end": "slave", "orphan": True, "placed": False, "mnt": loc["mnt"], "path": loc["path"]}
    out = {"obj": obj, "end": "slave"}
    unread = _unread(d, "slave", index)
    if unread:
        out["unread"] = unread   # (refused by _finish when the tree holds its master: restore makes the pty)
    if leads_on(d.pid, st.st_rdev):
        out["ctty"] = True   # (its stand-in takes it again as its controlling terminal: _ctty_slave_in)
    return out


def number_of(major: int, minor: int) -> int | None:
    """The number of the Unix98 pty slave of device major:minor (majors 136..143), None for any other."""
    return minor + (major - 136) * 256 if 136 <= major < 144 else None


def leads_on(pid: int, rdev: int) -> bool:
    """Does process `pid` lead its session with the pty slave of device `rdev` as its controlling
    terminal (/proc/PID/stat: the terminal's number; a shell on a container's console, the process
    systemd-nspawn or `runc run -t` started, holds it as its stdio and no /dev/tty)?"""
    try:
        fields = procstat.fields(pid)
    except OSError:
        return False
    session, tty_nr = int(fields[procstat.SESSION]), int(fields[procstat.TTY_NR])
    major, minor = device(tty_nr)
    return bool(tty_nr) and session == pid and (major, minor) == (os.major(rdev), os.minor(rdev))


def char_rdevs(pid: int) -> set[int]:
    """The devices of the character-device fds process `pid` holds (none once it is gone)."""
    return {st.st_rdev for _, st in fd_stats(pid) if stat.S_ISCHR(st.st_mode)}


def holds_ctty_slave(pid: int, rdevs: set[int] | None = None) -> bool:
    """Does process `pid` lead its session and hold the pty slave that is its controlling terminal?
    (`rdevs`: its char_rdevs, when the caller read them already.)"""
    rdevs = char_rdevs(pid) if rdevs is None else rdevs
    return any(136 <= os.major(r) < 144 and leads_on(pid, r) for r in rdevs)


def _hold(d, dev: int, index: int) -> None:
    """Note that the tree holds master `index` of the devpts instance `dev`: a mount whose root is
    that pty can be made again (engine/mountrules.py held_roots)."""
    d.scratch.setdefault("held", set()).add((f"{os.major(dev)}:{os.minor(dev)}", f"/{index}"))


def _precheck(d) -> None:
    """Before the tree is stopped: the masters it holds (for mountrules.held_roots), a line speed
    an image does not keep (`_odd_speed`) and bytes waiting in a pty that could not be kept
    (`_unread`)."""
    st = os.stat(f"/proc/{d.pid}/fd/{d.fd}")
    if _is_master(st.st_mode, st.st_rdev):
        index = index_of(d.copy())
        _hold(d, _instance(d, st), index)
        _refuse(_odd_speed(d, termios.tcgetattr(d.copy()), index))
        _refuse(_unread(d, "master", index))
    elif 136 <= os.major(st.st_rdev) < 144 and not undeleted(d.target)[1]:
        index = number_of(os.major(st.st_rdev), os.minor(st.st_rdev))
        unread = _unread(d, "slave", index)
        if unread:
            key = (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", f"/{index}")
            d.scratch.setdefault("pty_unread", []).append((key, unread))


_CBAUD, _BOTHER, _IBSHIFT = 0o10017, 0o10000, 16


def _odd_speed(d, attrs: list, index: int) -> str | None:
    """Why the line speed of a pty whose termios is `attrs` (tcgetattr) cannot be kept, or None: an
    arbitrary one (BOTHER, set through termios2: its value is not in termios), or another that is
    no Bnnn (the validator takes those only, what tcsetattr takes)."""
    cflag = attrs[2]
    if (cflag & _CBAUD) != _BOTHER and (cflag >> _IBSHIFT) & _CBAUD != _BOTHER \
            and attrs[4] in _SPEEDS and attrs[5] in _SPEEDS:
        return None
    return (f"{d.where}: pty {index}: an arbitrary line speed (BOTHER, set with termios2): not supported; "
            "set a standard one (Bnnn, stty speed) and dump again; the tree keeps running")


def _prefinish(scratch: dict) -> None:
    """Input that could not be kept on a slave whose master the tree holds (restore makes that
    pty); on a terminal from outside the tree it stays where it is."""
    held = scratch.get("held", set())
    for key, unread in scratch.get("pty_unread", ()):
        if key in held:
            _refuse(unread)


def _unread(d, end: str, index: int) -> str | None:
    """Why the bytes waiting on fd `d` (a pty's `end`) cannot be kept (engine/fds/pty_data.py), or
    None: on a master in packet mode, output (its reads carry a status byte); on a slave, input
    that fills its line discipline (more may wait behind it, not processed yet)."""
    try:
        n = pty_data.inq(d.copy())
        packet = end == "master" and pty_data.packet_mode(d.copy())
    except OSError:
        return None   # (a hung-up terminal: nothing waits on it)
    if n <= 0 or (end == "master" and not packet) or (end == "slave" and n < pty_data.MAX_IN):
        return None
    what = ("output nobody read from the master, which is in packet mode (TIOCPKT): not supported"
            if end == "master" else "input the program on the slave has not read, which fill its line "
            "discipline (more may wait behind, not processed yet): not supported")
    return (f"{d.where}: pty {index}: {n} bytes of {what}; let them be read and dump again; the tree keeps running")


def _waiting(d, master: int, attrs: list, index: int) -> dict:
    """The pty object's fields for the bytes waiting in pty `index` (engine/fds/pty_data.py), read
    through `master` (a copy of the tree's) and a new fd on its slave, and written back at once.
    The slave is opened only when it was open before (closing the last fd on a slave marks the
    master's reads EIO): it is closed (the master polls POLLHUP), a process of the tree holds it,
    or output waits on the master (someone holds it); input written into a slave nobody opened
    yet is not read (not kept)."""
    if pty_data.inq(master) <= 0 and not _slave_open(d, master):
        return {}
    if pty_data.inq(master) > 0 and pty_data.packet_mode(master):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: pty {index}: output waits on a master in packet mode "
                                        "(TIOCPKT): not supported; let it be read and dump again")
    try:
        slave = pty_data.peer(master)
    except OSError as e:
        raise FdError(e.errno or errno.EIO, f"{d.where}: pty {index}: opening its slave to read the bytes "
                                            f"waiting in it: {e.strerror or e}") from None
    where = f"{d.where}: pty {index}"
    try:
        out = pty_data.read_out(master)
        chunks, typing = [], b""
        try:
            chunks, typing = pty_data.read_in(master, slave, attrs)
        finally:
            pty_data.put_back(master, slave, attrs, out, chunks, where, typing)
    finally:
        os.close(slave)
    why = pty_data.too_much(out, chunks)
    if why:
        raise FdError(errno.EOPNOTSUPP, f"{where}: {why}: not supported; let them be read and dump again")
    return pty_data.encode(out, chunks)


def _slave_open(d, master: int) -> bool:
    """Was the slave of `master` opened (and maybe closed since)? POLLHUP on the master (every fd
    on its slave closed), or a process of the tree holds it."""
    import select
    p = select.poll()
    p.register(master, select.POLLIN)
    if any(ev & select.POLLHUP for _, ev in p.poll(0)):
        return True
    peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(peer)
    finally:
        os.close(peer)
    for pid in d.scratch.get("pids", ()):
        if st.st_rdev not in char_rdevs(pid):
            continue
        if any((fst.st_dev, fst.st_rdev) == (st.st_dev, st.st_rdev) for _, fst in fd_stats(pid)):
            return True
    return False


def _refuse(why: str | None) -> None:
    if why:
        raise FdError(errno.EOPNOTSUPP, why)


def _instance(d, st) -> int:
    """The devpts instance (its superblock's device) the fd's pty lives on."""
    if not _is_master(st.st_mode, st.st_rdev):
        return st.st_dev
    return peer_dev(d.copy())


def peer_dev(master: int) -> int:
    """The device of the devpts instance the pty of master `master` lives on (its slave's)."""
    return peer_stat(master).st_dev


def peer_stat(master: int) -> os.stat_result:
    """The stat of the slave node of master `master`, through an O_PATH peer (nothing is opened)."""
    peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)
    try:
        return os.fstat(peer)
    finally:
        os.close(peer)


def _node(st: os.stat_result) -> dict:
    """A slave node's mode and owner (ids as the dumper sees them): whoever opened the ptmx owns
    it, and a login, getty or sshd chowns it to its user (mode 620, group tty)."""
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def _give_node(r: RestoreFd, master: int, node: dict) -> None:
    """The slave node of restored master `master` the mode and owner `node` it had at dump (the
    restorer opened the ptmx: the node is root's, with the instance's mode= option)."""
    peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)
    try:
        # (through the magic link: fchown takes no O_PATH fd; the host's /proc with a yard)
        link, at = (f"self/fd/{peer}", r.proc) if r.proc >= 0 else (f"/proc/self/fd/{peer}", None)
        st = os.fstat(peer)
        owned = (st.st_uid, st.st_gid) == (node["uid"], node["gid"])
        if not owned:
            os.chown(link, node["uid"], node["gid"], dir_fd=at)
        if not owned or stat.S_IMODE(st.st_mode) != node["mode"]:
            os.chmod(link, node["mode"], dir_fd=at)   # (after: chown clears set-id bits)
    except OSError as e:
        raise FdError(e.errno or errno.EIO, f"{r.where}: pty {index_of(master)}: giving its node owner "
                                            f"{node['uid']}:{node['gid']} and mode {node['mode']:o}: "
                                            f"{e.strerror or e}") from None
    finally:
        os.close(peer)


def _finish(objects: dict, entries: list[dict]) -> None:
    """Every slave entry learns where its master's ptmx is opened (restore may meet it first)."""
    masters = {e["obj"]: {k: e[k] for k in ("mnt", "path")} for e in entries
               if e.get("kind") == "pty" and e["end"] == "master" and not e.get("detached")}
    for e in entries:
        if e.get("kind") != "pty":
            continue
        unread = e.pop("unread", None)
        if unread and e["obj"] in masters:
            _refuse(unread)
        if e.get("orphan"):
            if e["obj"] in masters:
                raise FdError(errno.EOPNOTSUPP, f"fd {e['fd']} ({e['path']}): a hung-up pty slave whose number a "
                                                "master of the tree holds again: not supported")
            e["ptmx"] = {"mnt": e["mnt"], "path": (e["path"].rsplit("/", 1)[0] or "") + "/ptmx"}
            continue
        if e["obj"] not in masters:
            if e["end"] == "master":
                raise FdError(errno.EOPNOTSUPP, f"fd {e['fd']} ({e.get('path')}): pty master on a detached mount: "
                                                "not supported")
            # A terminal from outside the tree (the one dump was started from, on an external
            # devpts): reopened by path like any device node, as before ptys were a kind.
            # (its `ctty` goes too: a file takes no terminal; the leader takes it through its
            # /dev/tty, or was refused before the stop: engine/ctty.py)
            objects.pop(e.pop("obj"), None)
            del e["kind"], e["end"]
            e.pop("ctty", None)
            e["type"] = "file"
            continue
        e["ptmx"] = masters[e["obj"]]


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    if entry.get("end") not in ("master", "slave") or not isinstance(entry.get("obj"), str) \
            or not isinstance(entry.get("ptmx"), dict) or not isinstance(entry["ptmx"].get("mnt"), int):
        _fail(f"{what}: bad pty entry")
    check_abs_path(entry["ptmx"].get("path"), f"{what} ptmx")
    if entry.get("orphan") and entry["end"] != "slave":
        _fail(f"{what}: only a pty slave is hung up")
    if entry.get("ctty") and (entry["end"] != "slave" or entry.get("orphan")):
        _fail(f"{what}: only a pty slave that is not hung up is a controlling terminal")


PTY_NODE = Record("pty node", {
    "mode": F(INT, rule=rng(0, 0o7777)),
    "uid": F(INT, rule=rng(0, MAX_UID)),
    "gid": F(INT, rule=rng(0, MAX_UID)),
})

PTY_OBJECT = Record("pty object", {
    "kind": F(STR),
    "index": F(INT, rule=rng(0, MAX_INDEX - 1)),
    # its slave node's mode and owner (absent in images before session 21: the restorer's, root's)
    "node": F(DICT, required=False, rule=record(PTY_NODE)),
    "termios": F(LIST, required=False),
    "winsize": F(LIST, required=False),
    # bytes waiting at dump (engine/fds/pty_data.py): output on the master; input on the slave,
    # as its reads gave them (canonical mode: a line each)
    "out": F(STR, required=False, rule=b64(pty_data.MAX_OUT)),
    "in": F(LIST, required=False, rule=list_of(b64(pty_data.MAX_IN), pty_data.MAX_CHUNKS)),
})


# The line speeds tcsetattr takes (Bnnn: what tcgetattr gives at dump); another fails the restore
# with termios.error, naming no pty.
_SPEEDS = frozenset(getattr(termios, n) for n in dir(termios) if n[0] == "B" and n[1:].isdigit())


def _check_object(obj: dict, what: str) -> None:
    from engine.image import _fail
    from engine.imageformat import check_record
    check_record(PTY_OBJECT, obj, what)
    t = obj.get("termios")
    if t is not None and (len(t) != 7 or not all(type(x) is int and 0 <= x < 1 << 32 for x in t[:6])
                          or t[4] not in _SPEEDS or t[5] not in _SPEEDS
                          or not isinstance(t[6], list) or len(t[6]) != 32
                          or not all(type(x) is int and 0 <= x < 256 for x in t[6])
                          or not isinstance(obj.get("winsize"), list) or len(obj["winsize"]) != 4
                          or not all(type(x) is int and 0 <= x < 1 << 16 for x in obj["winsize"])):
        _fail(f"{what}: bad pty termios")
    if ("out" in obj or "in" in obj) and t is None:
        _fail(f"{what}: bytes waiting in a pty without its termios")
    if sum(len(c) for c in pty_data.decode(obj)[1]) > pty_data.MAX_IN:
        _fail(f"{what}: more input waiting in a pty than its line discipline holds")


# Masters restore may hold on a devpts it did not make (an external one: the host's, shared with its
# users, whose numbers are pty.max's, 4096, in all) to reach the number of one of the tree's ptys.
HOST_MOST = 64
HOST_MOUNTS = "host mounts"   # (RestoreFd.state's key of the ids of the external mounts, restore's)


def open_until(open_ptmx, index: int, host: bool = False) -> dict[int, int]:
    """Masters opened through `open_ptmx()` until the kernel hands out pty `index`: {number: fd},
    the numbers below it among them (they stay taken while their masters are open, and a new
    instance hands out the lowest free one). EBUSY when a higher number comes first, or past
    HOST_MOST masters on the host's devpts (`host`: an external mount's, where more free numbers
    below `index` would have restore hold that many of the host's ptys, the users' terminals)."""
    got: dict[int, int] = {}
    try:
        while True:
            fd = open_ptmx()
            try:
                n = index_of(fd)
            except OSError:
                os.close(fd)
                raise
            got[n] = fd
            if n == index:
                return got
            if n > index or len(got) > 4096:
                raise OSError(errno.EBUSY, f"pty {index} is taken on the restored devpts (got {n})")
            if host and len(got) >= HOST_MOST:
                raise OSError(errno.EBUSY, f"pty {index} of an external devpts (the host's): more than {HOST_MOST} "
                                           "of its free numbers lie below it, which restore would hold to reach it; "
                                           "restore where fewer are free, or dump the tree with a devpts of its own")
    except BaseException:
        for fd in got.values():
            os.close(fd)
        raise


def open_for_root(doc: dict, open_at, dev: int, index: int) -> dict[int, int]:
    """Pty `index` of the restored devpts instance whose device is `dev`, made before its fd stage
    (a mount's root: engine/fs/devpts.py): `open_until` through the ptmx where a master of that
    number in the image (`doc`) was opened (`open_at(mnt, path, flags)`), so that the master the
    tree gets shows that path and mount; one that reaches another instance is passed over."""
    objects = doc.get("objects") or {}
    places = {(f["ptmx"]["mnt"], f["ptmx"]["path"]) for p in doc["processes"] for f in p["fds"]
              if f.get("kind") == "pty" and f["end"] == "master" and objects[f["obj"]]["index"] == index}
    for mnt, path in sorted(places):
        def open_ptmx(mnt=mnt, path=path):
            return open_at(mnt, path, os.O_RDWR | os.O_NOCTTY)
        try:
            probe = open_ptmx()   # (its number is free again once it is closed)
        except (OSError, KeyError):
            continue   # (its mount is not made yet)
        try:
            if peer_dev(probe) != dev:
                continue
        finally:
            os.close(probe)
        return open_until(open_ptmx, index)
    raise OSError(errno.ENOENT, f"no master of pty {index} of the instance can be opened before the mount "
                                "(its ptmx lies on a mount made after it)")


def unlock(fd: int) -> None:
    """Unlock the slave of master `fd` (unlockpt), so that it can be opened."""
    fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 0))


def _made(r: RestoreFd, open_ptmx, index: int) -> int | None:
    """Master `index` if restore opened it already to make a mount root of its instance (a pty
    bound as /dev/console: engine/fs/devpts.py `make_root`), else None."""
    pools = {k[1]: v for k, v in r.state.items() if isinstance(k, tuple) and k[0] == "made"}
    if not pools:
        return None
    probe = open_ptmx()   # (a new pty of the instance, gone again once closed)
    try:
        dev = peer_dev(probe)
    finally:
        os.close(probe)
    return pools.get(dev, {}).pop(index, None)


def _master(r: RestoreFd, key: str) -> int:
    got = r.state.get(key)
    if got is not None:
        return got
    o = r.objects[key]
    m = r.entry["ptmx"]

    def open_ptmx():
        return r.open_at(m["mnt"], m["path"], os.O_RDWR | os.O_NOCTTY)

    fd = _made(r, open_ptmx, o["index"])   # (kept by restore already)
    if fd is None:
        opened = open_until(open_ptmx, o["index"], m["mnt"] in r.state.get(HOST_MOUNTS, ()))
        fd = opened.pop(o["index"])
        r.keep.extend(opened.values())   # freed only once every process holds its fds
        r.keep.append(fd)
    unlock(fd)
    if "node" in o:
        _give_node(r, fd, o["node"])
    if "termios" in o:
        t = o["termios"]
        termios.tcsetattr(fd, termios.TCSANOW, t[:6] + [[bytes([c]) if i not in (termios.VMIN, termios.VTIME) else c
                                                         for i, c in enumerate(t[6])]])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", *o["winsize"]))
    if "out" in o or "in" in o:
        _refill(r, fd, o)
    r.state[key] = fd
    return fd


def _refill(r: RestoreFd, master: int, o: dict) -> None:
    """The bytes that waited in the pty at dump, waiting again (engine/fds/pty_data.py)."""
    out, chunks = pty_data.decode(o)
    where = f"{r.where}: pty {o['index']}"
    try:
        slave = pty_data.peer(master)
    except OSError as e:
        raise FdError(e.errno or errno.EIO, f"{where}: opening its slave to give back the bytes waiting in it: "
                                            f"{e.strerror or e}") from None
    try:
        pty_data.put_back(master, slave, o["termios"], out, chunks, where)
    finally:
        os.close(slave)


def _open(r: RestoreFd) -> int:
    e = r.entry
    master = _master(r, e["obj"])
    if e["end"] == "master":
        fd = os.dup(master)
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (e["flags"] & os.O_NONBLOCK))
        return fd
    flags = (e["flags"] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)) | os.O_NOCTTY
    # How the slave was got, the kernel does not show (fdinfo and the link tell nothing of it): its
    # status flags choose the call that gives them back. With O_LARGEFILE: open(2)
    # of its path (which adds it, on 64-bit); a TIOCGPTPEER asked for it explicitly comes back so,
    # the same flags. Without: TIOCGPTPEER (as glibc's openpty does), which adds nothing, where
    # open(2) adds O_LARGEFILE and F_SETFL cannot take it off; a 32-bit program's open(2) of its
    # path (no O_LARGEFILE either) comes back so, the same flags. A hung-up slave (orphan) too: its
    # master is open here until restore closes it (tests/test_engine_pty_hungup_flags.py).
    if e["flags"] & O_LARGEFILE:
        fd = r.open_at(e["mnt"], e["path"], flags)
    else:
        # (Without O_CLOEXEC, which it would keep in the status flags: the fd's own flag is set after.)
        fd = fcntl.ioctl(master, TIOCGPTPEER, flags & ~os.O_CLOEXEC)
        os.set_inheritable(fd, False)
    if e.get("ctty"):
        try:
            r.standin("ctty_slave", {}, [fd])
        except BaseException:
            os.close(fd)
            raise
    return fd


def _ctty_slave_in(args, fds):
    """In the stand-in (its session's leader): the slave fds[0] its controlling terminal again."""
    fcntl.ioctl(fds[0], termios.TIOCSCTTY, 0)
    return None, []


def _foreground_in(args, fds):
    """In the stand-in (its session's leader, holding no fd on its terminal): the process group of
    process args["of"] (a pid of its pid namespace) the foreground one of its terminal, the slave fds[0]."""
    os.tcsetpgrp(fds[0], os.getpgid(args["of"]))
    return None, []


def check_node(node, what: str) -> None:
    """A process's `ctty_node` (engine/ctty.py): {mnt, path, obj, ptmx{mnt, path}}."""
    from engine.image import _fail, check_abs_path
    if not isinstance(node, dict) or set(node) != {"mnt", "path", "obj", "ptmx"} or type(node["mnt"]) is not int \
            or not isinstance(node["obj"], str) or not isinstance(node["ptmx"], dict) \
            or set(node["ptmx"]) != {"mnt", "path"} or type(node["ptmx"]["mnt"]) is not int:
        _fail(f"{what}: bad controlling terminal node")
    check_abs_path(node["path"], f"{what} controlling terminal")
    check_abs_path(node["ptmx"]["path"], f"{what} controlling terminal's ptmx")


register(FdKind(name="pty", matches=_matches, dump=_dump, open=_open, placed=True, check=_check, precheck=_precheck,
                prefinish=_prefinish,
                check_object=_check_object, finish=_finish, mounts=lambda e: [e["ptmx"]["mnt"]], order=30,
                standin={"ctty_slave": _ctty_slave_in, "foreground": _foreground_in},
                fields={"end": F(STR), "ptmx": F(DICT), "orphan": F(BOOL, required=False),
                        "ctty": F(BOOL, required=False)}))


# --- /dev/tty: the controlling terminal under another name -------------------------------------

def _is_dev_tty(target: str, mode: int) -> bool:
    return target.startswith("/") and target.rsplit("/", 1)[-1] == "tty" and stat.S_ISCHR(mode)


def _dump_ctty(d) -> dict:
    index = _ctty_index(d)
    if index is None:
        return {}   # a device node called tty that is not /dev/tty: reopened like any node
    out = ctty_node(d, index)
    if os.getsid(d.pid) != d.pid:
        out["member"] = True   # (its stand-in inherits the terminal: engine/ctty.py; it only opens the node)
    return out


def ctty_node(d, index: int) -> dict:
    """{"tty": {mnt, path}, "obj"}: the node of pty `index` (the controlling terminal of `d`'s
    process) on a devpts mount of its namespace that is placed, and the pty object; refused when
    there is none."""
    for m, path, pst in _ctty_nodes(d, index):
        loc = d.place(path, m.mnt_id, "controlling terminal")
        if loc.get("detached"):
            continue
        obj = d.scratch.setdefault(("pty", pst.st_dev, index), f"pty-{len(d.objects)}")
        d.objects.setdefault(obj, {"kind": "pty", "index": index})
        return {"tty": {"mnt": loc["mnt"], "path": loc["path"]}, "obj": obj}
    _refuse_no_devpts(d, index)


def _precheck_ctty(d) -> None:
    """Before the tree is stopped: `_dump_ctty`'s refusals (the process's terminal, read from
    /proc/PID/stat, and a devpts mount of its namespace that shows it)."""
    index = _ctty_index(d)
    if index is not None and next(_ctty_nodes(d, index), None) is None:
        _refuse_no_devpts(d, index)


def _ctty_index(d) -> int | None:
    """The pty number of the controlling terminal of fd `d`'s process, when `d` is /dev/tty (None:
    another node called tty); refused when it has none or is no pty. (A member of a session has its
    leader's: engine/ctty.py gives it back, or refuses before the stop.)"""
    st = os.stat(f"/proc/{d.pid}/fd/{d.fd}")
    if st.st_rdev != os.makedev(5, 0):
        return None
    tty_nr = int(procstat.fields(d.pid)[procstat.TTY_NR])
    major, minor = device(tty_nr)
    if not tty_nr:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: /dev/tty of a process that has no controlling terminal "
                                        "any more: not supported")
    index = number_of(major, minor)
    if index is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: /dev/tty of a process whose controlling terminal is "
                                        f"device {major}:{minor}, not a pty: not supported")
    return index


def _ctty_nodes(d, index: int):
    """(mount, path, stat) of each node of pty `index` on a devpts mount of the process's namespace
    that its path reaches."""
    from engine import kernel
    root = f"/proc/{d.pid}/root"
    rdev = os.makedev(136 + index // 256, index % 256)
    for m in d.mounts:
        if m.fstype != "devpts":
            continue
        path = f"{m.mountpoint.rstrip('/')}/{index}"
        try:
            pst = os.stat(root + path, follow_symlinks=False)
            visible = kernel.statx_mnt_id(root + path, flags=kernel.AT_SYMLINK_NOFOLLOW) == m.mnt_id
        except OSError:
            continue
        if visible and pst.st_rdev == rdev:
            yield m, path, pst


def _refuse_no_devpts(d, index: int) -> None:
    raise FdError(errno.EOPNOTSUPP, f"{d.where}: /dev/tty of a process whose controlling terminal (pty {index}) "
                                    "is on no devpts mount of its namespace: not supported")


def _finish_ctty(objects: dict, entries: list[dict]) -> None:
    """As for slaves: the ptmx of the terminal's master, or by path alone when the tree has none."""
    masters = {e["obj"]: {k: e[k] for k in ("mnt", "path")} for e in entries
               if e.get("kind") == "pty" and e["end"] == "master" and not e.get("detached")}
    for e in entries:
        if e.get("kind") == "ctty" and "obj" in e:
            if e["obj"] in masters:
                e["ptmx"] = masters[e["obj"]]
            else:
                if not any(x.get("obj") == e["obj"] for x in entries if x is not e):
                    objects.pop(e["obj"], None)
                del e["obj"]


def _check_ctty(entry: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    if "tty" not in entry:
        if "obj" in entry or "ptmx" in entry or "member" in entry:
            _fail(f"{what}: bad /dev/tty entry")
        return
    t = entry["tty"]
    if not isinstance(t, dict) or set(t) != {"mnt", "path"} or type(t["mnt"]) is not int:
        _fail(f"{what}: bad controlling terminal")
    check_abs_path(t["path"], f"{what} controlling terminal")
    if ("obj" in entry) != ("ptmx" in entry) or ("obj" in entry and not isinstance(entry["obj"], str)):
        _fail(f"{what}: bad pty of a controlling terminal")
    if "ptmx" in entry:
        if not isinstance(entry["ptmx"], dict) or type(entry["ptmx"].get("mnt")) is not int:
            _fail(f"{what}: bad ptmx of a controlling terminal")
        check_abs_path(entry["ptmx"].get("path"), f"{what} ptmx")


def _open_ctty(r: RestoreFd) -> int:
    from engine.fds import file
    e = r.entry
    if "tty" not in e:
        return file._open(r)
    if "obj" in e:
        if r.objects[e["obj"]].get("kind") != "pty":
            raise FdError(errno.EINVAL, f"{r.where}: its terminal {e['obj']} is no pty of the image")
        _master(r, e["obj"])   # (the pty exists before its slave is opened by path)
    fds = []
    try:
        fds.append(r.open_at(e["tty"]["mnt"], e["tty"]["path"], os.O_RDWR | os.O_NOCTTY))
        fds.append(r.open_at(e["mnt"], e["path"], os.O_PATH))
        fds.append(r.proc if r.proc >= 0 else os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        flags = e["flags"] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL | os.O_NOCTTY | os.O_CLOEXEC)
        return r.standin("ctty", {"flags": flags, "member": bool(e.get("member"))}, fds)[0]
    finally:
        for x in fds:
            if x != r.proc:
                os.close(x)


def _ctty_in(args, fds):
    """In the stand-in: a session of its own with the slave fds[0] as its controlling terminal (a
    member of a session has it already: its stand-in inherited it), then /dev/tty (the node fds[1])
    opened through a procfs (fds[2]: its self/fd/N is ours)."""
    slave, node, proc = fds
    if not args.get("member"):
        if os.getsid(0) != os.getpid():
            os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return None, [os.open(f"self/fd/{node}", args["flags"] | os.O_CLOEXEC, dir_fd=proc)]


register(FdKind(name="ctty", matches=_is_dev_tty, dump=_dump_ctty, open=_open_ctty, placed=True, check=_check_ctty,
                obj_kind="pty",
                finish=_finish_ctty, standin={"ctty": _ctty_in}, order=29, precheck=_precheck_ctty,
                mounts=lambda e: [e[k]["mnt"] for k in ("tty", "ptmx") if k in e],
                fields={"tty": F(DICT, required=False), "ptmx": F(DICT, required=False),
                        "member": F(BOOL, required=False)}))
