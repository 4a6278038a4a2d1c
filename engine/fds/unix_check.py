"""The image validator's part for unix socket fd entries and socket pair objects: every field
restore reads (names, mounts, queues, pending connections, ghosts, senders) is checked here.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import os

from engine.imageformat import _DESC_ID as DESC_ID
from engine.imageformat import BOOL, DICT, INT, LIST, LOC, STR, F, path_rule, record, rng
from engine.fds import unix_backlog, unix_bind, unix_diag, unix_ghost, unix_opts, unix_queue


def name_rule(v) -> str | None:
    """imageformat rule of a socket's path name: see check_name."""
    return path_rule("/" + v if isinstance(v, str) and v and not v.startswith("/") else v)


def check_name(name, what: str) -> None:
    """A socket's path name as bind() got it: a normalised absolute path, or a relative one
    (sockname shows it as given: CRIU's sk-unix-rel) without '.', '..' or empty components."""
    from engine.image import _fail, check_abs_path
    if isinstance(name, str) and name and not name.startswith("/"):
        check_abs_path("/" + name, what)
    else:
        check_abs_path(name, what)


def check(entry: dict, what: str) -> None:
    """The image validator for a unix socket fd entry (FdKind.check): every field restore reads."""
    from engine.image import _fail, check_abs_path
    if entry.get("type") not in unix_diag.TYPES.values():
        _fail(f"{what}: bad unix socket type")
    if "opts" in entry:
        unix_opts.check(entry["opts"], what)
    if "path" in entry:
        check_name(entry["path"], what)
        if len(entry["path"]) > 107:
            _fail(f"{what}: socket path too long")
        if not isinstance(entry.get("bound"), dict):
            _fail(f"{what}: a path-bound socket needs the mount of its file ('bound')")
    if "unlinked" in entry and (not isinstance(entry["unlinked"], str)
                                or not unix_ghost.GHOST_ID.match(entry["unlinked"])
                                or "path" not in entry or unix_bind.MAGIC.match(entry["path"]) or "dangling" in entry):
        _fail(f"{what}: bad ghost socket id, or a ghost that is not a path-bound socket")
    if "listen" in entry and (not isinstance(entry["listen"], int) or not 0 < entry["listen"] < 1 << 20):
        _fail(f"{what}: bad backlog")
    if "cred" in entry and "listen" not in entry:
        _fail(f"{what}: only a listener keeps the credentials it listened with")
    if ("cred_groups" in entry or "cred_gone" in entry) and "cred" not in entry:
        _fail(f"{what}: 'cred_groups' or 'cred_gone' without 'cred'")
    if "listened_by" in entry and ("cred" not in entry or "cred_gone" in entry or "obj" in entry
                                   or type(entry["listened_by"]) is not int or not 0 < entry["listened_by"] < 1 << 32):
        _fail(f"{what}: 'listened_by' names a live process of the tree that listened on a lone listener")
    c = entry.get("connect")
    if c is not None:
        if "obj" in entry or "listen" in entry or (entry.get("type") == "dgram") == ("order" in c):
            _fail(f"{what}: only a lone datagram socket, or a pending connection (with its 'order'), is connected "
                  "to a named socket")
        if "order" in c:
            if type(c["order"]) is not int or not 0 <= c["order"] < 1 << 20:
                _fail(f"{what}: bad order of a pending connection")
            c = {k: v for k, v in c.items() if k != "order"}
        if set(c) == {"abstract"}:
            if not isinstance(c["abstract"], str) or len(c["abstract"]) > 148:
                _fail(f"{what}: bad abstract name to connect to")
        elif set(c) == {"path", "to"}:
            check_name(c["path"], what)
            if len(c["path"]) > 107 or not isinstance(c["to"], str) or not unix_ghost.GHOST_ID.match(c["to"]):
                _fail(f"{what}: bad ghost socket to connect to")
        elif set(c) == {"path", "mnt", "at"}:
            check_name(c["path"], what)
            check_abs_path(c["at"], what)
            if len(c["path"]) > 107 or unix_bind.MAGIC.match(c["path"]) or type(c["mnt"]) is not int:
                _fail(f"{what}: bad socket path to connect to")
        else:
            _fail(f"{what}: 'connect' needs an abstract name, or a path with the mount and path of its socket file")
    if entry.get("reached") and (entry.get("type") != "dgram" or ("path" not in entry and "abstract" not in entry)
                                 or {"obj", "dangling", "listen"} & set(entry)):
        _fail(f"{what}: only a named datagram socket is marked reached")
    sent = entry.get("sent")
    if sent is not None and ("order" not in (entry.get("connect") or {}) or not _sent_ok(entry, sent)):
        _fail(f"{what}: bad data sent on a connection not yet accepted")
    if "oob" in entry and ("order" not in (entry.get("connect") or {}) or not _oob_ok(entry, entry["oob"], sent)):
        _fail(f"{what}: bad urgent byte sent on a connection not yet accepted")
    gone = entry.get("gone")
    if gone is not None and ("listen" not in entry or entry.get("type") == "dgram" or not isinstance(gone, list)
                             or len(gone) > 1 << 20 or not all(_gone_ok(entry, g) for g in gone)):
        _fail(f"{what}: bad pending connections whose client is gone")
    if "obj" in entry and entry.get("end") not in (0, 1):
        _fail(f"{what}: bad socket pair end")
    if "data" in entry and (not entry.get("dangling") or entry.get("type") != "stream"
                            or len(entry["data"]) > unix_queue.MAX_DATA * 4 // 3 + 4):
        _fail(f"{what}: stream data queued only on a stream socket whose peer is gone")
    if "obj" in entry and ("path" in entry or "abstract" in entry) and entry.get("type") != "dgram":
        _fail(f"{what}: only a datagram pair end is bound to a name of its own")
    if "msgs" in entry:
        named = ("path" in entry or "abstract" in entry) and entry.get("type") == "dgram" \
            and not {"dangling", "listen", "connect", "obj"} & set(entry)
        if not named and (not entry.get("dangling") or entry.get("type") == "stream"):
            _fail(f"{what}: queued messages on a socket that is neither the survivor of a pair nor a named "
                  "datagram socket")
        _check_msgs(entry["msgs"], what, stream=entry.get("type") == "stream")
        senders = entry.get("senders")
        if senders is not None and (not named or not isinstance(senders, list)
                                    or len(senders) != len(entry["msgs"])
                                    or not all(x is None or (isinstance(x, str) and unix_backlog.SENDER_ID.match(x))
                                               or _gone_sender(x, entry) for x in senders)):
            _fail(f"{what}: bad senders of queued datagrams")
    elif "senders" in entry:
        _fail(f"{what}: senders without queued datagrams")
    sid = entry.get("sender_id")
    if sid is not None and (entry.get("type") != "dgram" or not isinstance(sid, str)
                            or not unix_backlog.SENDER_ID.match(sid)):
        _fail(f"{what}: bad sender id")
    if "mnts" in entry and (not all(type(x) is int for x in entry["mnts"]) or len(entry["mnts"]) > 253 * unix_queue.MAX_MSGS):
        _fail(f"{what}: bad mounts of fds in flight")


def _sent_ok(entry: dict, sent) -> bool:
    """Is `sent` what a pending connection's client of socket type entry["type"] had sent: stream
    bytes (base64), or seqpacket messages (a list of base64)?"""
    stream = entry.get("type") == "stream"
    if (stream and not isinstance(sent, str)) or (not stream and (not isinstance(sent, list)
                                                                  or len(sent) > unix_queue.MAX_MSGS)):
        return False
    # (an empty message of a seqpacket connection is one; a stream's bytes are none when empty)
    return all(isinstance(m, str) and (0 < len(m) or not stream) and len(m) <= unix_queue.MAX_DATA * 4 // 3 + 4
               for m in ([sent] if stream else sent))


def _gone_ok(entry: dict, g) -> bool:
    """Is `g` a pending connection whose client is gone: {order[, sent][, oob]}?"""
    return isinstance(g, dict) and set(g) <= {"order", "sent", "oob"} and type(g.get("order")) is int \
        and 0 <= g["order"] < 1 << 20 and ("sent" not in g or _sent_ok(entry, g["sent"])) \
        and ("oob" not in g or _oob_ok(entry, g["oob"], g.get("sent")))


def _oob_ok(entry: dict, oob, sent) -> bool:
    """Is `oob` a stream's urgent byte, {at, byte}: one byte (base64) whose mark lies `at` bytes into
    `sent` (that stream's bytes, base64, or None: none)?"""
    if entry.get("type") != "stream" or not isinstance(oob, dict) or set(oob) != {"at", "byte"} \
            or type(oob["at"]) is not int or not isinstance(oob["byte"], str) or len(oob["byte"]) > 8:
        return False
    try:
        byte = binascii.a2b_base64(oob["byte"], strict_mode=True)
        size = len(binascii.a2b_base64(sent, strict_mode=True)) if isinstance(sent, str) else 0
    except ValueError:
        return False
    return len(byte) == 1 and 0 <= oob["at"] <= size


def _gone_sender(x, entry: dict) -> bool:
    """Whether `x` is {"abstract": NAME} (base64, a name no socket holds), on a receiver whose name
    is abstract too (its datagrams are sent again in its network namespace, from the stand-in)."""
    if not isinstance(x, dict) or set(x) != {"abstract"} or "abstract" not in entry:
        return False
    name = x["abstract"]
    try:
        return isinstance(name, str) and len(name) <= 148 and 0 < len(binascii.a2b_base64(name, strict_mode=True)) <= 107
    except ValueError:
        return False


def _check_msgs(queue, what: str, pair: bool = False, stream: bool = True) -> None:
    """A queue of messages: base64 data each, or {data, fds: [fd entries of a file, FIFO, pipe,
    memfd, eventfd, signalfd, timerfd or epoll (its targets only on a pair's queue), or, on a
    pair's queue (`pair`), {kind: pair_end, end: 0|1}: an end of that pair]}. Empty data without
    fds: an empty message, of a datagram or seqpacket socket only (not `stream`)."""
    from engine.image import _fail, check_abs_path
    if not isinstance(queue, list) or len(queue) > unix_queue.MAX_MSGS:
        _fail(f"{what}: bad queued messages")
    for m in queue:
        data, fds = (m.get("data"), m.get("fds")) if isinstance(m, dict) else (m, None)
        if not isinstance(data, str) or len(data) > (1 << 17) * 4 // 3 + 4 or (not data and not fds and stream):
            _fail(f"{what}: bad queued message")
        if isinstance(m, dict):
            if set(m) != {"data", "fds"} or not isinstance(fds, list) or not 0 < len(fds) <= 253:
                _fail(f"{what}: bad fds of a queued message")
            for f in fds:
                if isinstance(f, dict) and "desc" in f and (f.get("kind") == unix_queue.PAIR_END
                                                            or not isinstance(f["desc"], str)
                                                            or not DESC_ID.match(f["desc"])):
                    _fail(f"{what}: bad description id of an fd in flight")
                if isinstance(f, dict) and f.get("kind") == unix_queue.PAIR_END:
                    if not pair or set(f) != {"kind", "end"} or f["end"] not in (0, 1) or type(f["end"]) is not int:
                        _fail(f"{what}: bad pair end in flight")
                    continue
                if isinstance(f, dict) and f.get("kind") == "epoll":
                    _check_epoll(f, what, pair)
                    continue
                if isinstance(f, dict) and f.get("kind") in unix_queue.STATE_KINDS:
                    _check_state(f, what)
                    continue
                if not isinstance(f, dict) or f.get("kind") not in unix_queue.INFLIGHT_KINDS \
                        or not set(f) <= {"kind", "flags", "pos", "mnt", "path", "type", "obj", "desc"} \
                        or ("obj" in f and (f["kind"] == "file" or not isinstance(f["obj"], str))) \
                        or type(f.get("flags")) is not int or not 0 <= f["flags"] < 1 << 22 \
                        or type(f.get("pos")) is not int or not 0 <= f["pos"] < 1 << 63 \
                        or f.get("type", "file") not in ("file", "dir", "sock") \
                        or f.get("type") == "sock" and not f["flags"] & os.O_PATH:   # (engine/fds/file.py)
                    _fail(f"{what}: bad fd in flight")
                if f["kind"] in ("pipe", "memfd"):
                    # (no file: its pipe or memfd object, nothing on a mount)
                    if "obj" not in f or {"mnt", "path", "type"} & set(f):
                        _fail(f"{what}: bad {f['kind']} in flight")
                    continue
                if type(f.get("mnt")) is not int:
                    _fail(f"{what}: bad fd in flight")
                check_abs_path(f.get("path"), what)


def _check_state(f: dict, what: str) -> None:
    """An eventfd, signalfd or timerfd in flight: its kind's own fields, checked as an fd's of that kind."""
    from engine import fds, imageformat
    from engine.image import _fail
    kind = fds.lookup(f["kind"])
    if set(f) - {"kind", "flags", "pos", "desc"} - set(kind.fields):
        _fail(f"{what}: bad {f['kind']} in flight")
    imageformat.check_record(imageformat._kind_record(kind), {**f, "fd": 0}, f"{what}: {f['kind']} in flight")
    kind.check(f, f"{what}: {f['kind']} in flight")


def _check_epoll(f: dict, what: str, pair: bool) -> None:
    """An epoll in flight: its flags and targets, ends of the pair whose queue it waits on (`pair`)."""
    from engine.fds import epoll
    from engine.image import _fail
    if set(f) - {"desc", "quiet"} != {"kind", "flags", "pos", "targets"} or type(f["flags"]) is not int \
            or not 0 <= f["flags"] < 1 << 22 or f["pos"] != 0 or (f["targets"] and not pair) \
            or f.get("quiet", True) is not True or ("quiet" in f and not f["targets"]):
        _fail(f"{what}: bad epoll in flight")
    epoll.check_inflight_targets(f["targets"], what)


def check_inflight_descs(doc: dict) -> None:
    """Across the image: an fd in flight naming a description ("desc", FdTable.mark_shared) names one
    that another fd holds (a process's, or another in flight), all of its kind; of an epoll's, only
    one registers its targets, and none when a process's fd on it does (its kind's `after`).
    Restore sends that very description (FdMaker.share); a forged id would have been a new one."""
    from engine.image import _fail
    held: dict[str, list[str]] = {}
    for p in doc["processes"]:
        for e in p["fds"]:
            if "desc" in e:
                held.setdefault(e["desc"], []).append(e.get("kind", "file"))
    flying: dict[str, list[dict]] = {}
    for f in unix_queue.queued_fds(doc["processes"], doc.get("objects") or {}):
        if "desc" in f:
            flying.setdefault(f["desc"], []).append(f)
    for desc, fs in flying.items():
        kinds = held.get(desc, []) + [f["kind"] for f in fs]
        if len(kinds) < 2:
            _fail(f"an fd in flight names description {desc}, which no other fd holds")
        if len(set(kinds)) > 1:
            _fail(f"an fd in flight names description {desc}, held by fds of other kinds ({', '.join(sorted(set(kinds)))})")
        if sum(1 for f in fs if f.get("targets")) > (0 if desc in held else 1):
            _fail(f"an epoll in flight of description {desc} registers targets its other fds register")


def check_object(obj: dict, what: str) -> None:
    """The image validator for a socket pair object (FdKind.check_object): its data, queues and listener name."""
    from engine.image import _fail, check_abs_path
    if obj.get("type") not in unix_diag.TYPES.values() or not isinstance(obj.get("data"), list) or len(obj["data"]) != 2 \
            or not all(isinstance(x, str) and len(x) <= unix_queue.MAX_DATA * 4 // 3 + 4 for x in obj["data"]):
        _fail(f"{what}: bad unix socket pair")
    msgs = obj.get("msgs")
    if msgs is not None:
        # (a stream pair's queue in segments only when fds were in flight on it: then no bytes besides)
        if not isinstance(msgs, list) or len(msgs) != 2 or (obj["type"] == "stream" and (
                any(obj["data"]) or not any(isinstance(m, dict) for q in msgs
                                                            if isinstance(q, list) for m in q))):
            _fail(f"{what}: bad queued messages of a socket pair")
        for q in msgs:
            _check_msgs(q, what, pair=True, stream=obj["type"] == "stream")
    shut = obj.get("shut")
    if shut is not None and (not isinstance(shut, list) or len(shut) != 2
                             or not all(type(x) is int and 0 <= x <= 3 for x in shut)):
        _fail(f"{what}: bad shutdown of a socket pair")
    via = obj.get("via")
    if via is not None:
        if not isinstance(via, dict) or via.get("end") not in (0, 1) or ("path" in via) == ("abstract" in via) \
                or via.get("maker", via["end"]) not in (0, 1) or ("maker" in via and "path" not in via):
            _fail(f"{what}: bad listener name of a socket pair")
        if "path" in via:
            check_name(via["path"], what)
            if len(via["path"]) > 107 or unix_bind.MAGIC.match(via["path"]):
                _fail(f"{what}: bad listener path of a socket pair")
        elif not isinstance(via["abstract"], str) or len(via["abstract"]) > 148:
            _fail(f"{what}: bad abstract listener name of a socket pair")


def listener_ids(entry: dict) -> dict:
    """The ids (the dumper's) a listener listens with again (FdKind.ids): `cred` and `cred_groups`
    (None without them, an older image's: the stand-in's own)."""
    cred = entry.get("cred")
    if not cred:
        return {}
    return {"uid": [cred[0]], "gid": [cred[1]], "groups": entry.get("cred_groups")}


def mode_rule(v) -> str | None:
    """imageformat rule of a socket file's mode."""
    return None if 0 <= v <= 0o7777 else "must be a permission mode (0..0o7777)"


def owner_rule(v) -> str | None:
    """imageformat rule of a socket file's owner ([uid, gid])."""
    if len(v) != 2 or any(type(x) is not int or not 0 <= x < 2**32 - 1 for x in v):
        return "must be [uid, gid]"
    return None


def groups_rule(v) -> str | None:
    """imageformat rule of a listener's supplementary groups (at most NGROUPS_MAX gids)."""
    if len(v) > 65536 or any(type(x) is not int or not 0 <= x < 2**32 - 1 for x in v):
        return "must be at most 65536 gids"
    return None


# The fields of a unix fd entry (engine.imageformat types; `check` does the rest).
FIELDS = {
    "connect": F(DICT, required=False),
    "type": F(STR),
    "abstract": F(STR, required=False),
    "path": F(STR, required=False, rule=name_rule),
    "listen": F(INT, required=False),
    "end": F(INT, required=False),
    "bound": F(DICT, required=False, rule=record(LOC)),
    "dangling": F(BOOL, required=False),
    "data": F(STR, required=False),
    "unlinked": F(STR, required=False),
    "owner": F(LIST, required=False, rule=owner_rule),
    "cred": F(LIST, required=False, rule=owner_rule),
    # The supplementary groups the listener listened with (SO_PEERGROUPS), in the dumper's ids.
    "cred_groups": F(LIST, required=False, rule=groups_rule),
    # It listened in a process that is no live process of the tree (exited since: a daemon's parent).
    "cred_gone": F(BOOL, required=False),
    # It listened in this other live process of the tree (image pid), which restore listens in.
    "listened_by": F(INT, required=False),
    "mode": F(INT, required=False, rule=mode_rule),
    "msgs": F(LIST, required=False),
    "mnts": F(LIST, required=False),
    "senders": F(LIST, required=False),
    "sender_id": F(STR, required=False),
    "sent": F(STR + LIST, required=False),
    # A stream's urgent byte (MSG_OOB) its pending connection's client had sent: {at, byte}.
    "oob": F(DICT, required=False),
    "reached": F(BOOL, required=False),
    "gone": F(LIST, required=False),
    "opts": F(DICT, required=False),   # (engine/fds/unix_opts.py)
    # The directions a socket that is not a pair's end was shut down in (sk_shutdown: RCV 1, SEND 2).
    "shut": F(INT, required=False, rule=rng(1, 3)),
}
