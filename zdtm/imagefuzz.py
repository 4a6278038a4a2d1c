"""A seeded fuzzer of mntcr images: real images mutated systematically, restored in a throwaway namespace.

`mntcr restore -D DIR` runs as root on an image that may be corrupt, truncated, hand-edited or
hostile (IMAGE.md). This tool takes real images (`build` dumps a few trees with tests/enginecase.py)
and mutates copies of them: every field of every record to the wrong type, null, negative, huge;
ids and references dangling, swapped for another record's, made their own (cycles) or duplicated;
paths with `..`, NUL, newlines, absolute host paths, very long; a newer version, unknown fields;
archives with absolute or `..` members, a symlink and then a file through it, hard links to
outside, device nodes, setuid files, a FIFO, truncated or of the wrong size or sha256; the
manifest or an archive a symlink to outside. Each mutation is first validated in this process
(engine/image.load: anything but ImageError is a finding); those the validator accepts, and one in
`--restore-every` of the refused ones, are restored by `mntcr restore`, and then:

- exit status 0 (the tree is killed) or 2 with one line on stderr, never a traceback nor an
  "internal error";
- the mount namespace's mounts back to what they were (the campaign runs in its own, made by
  `unshare -m --propagation private`: `run` re-executes itself there);
- no process left (the fuzzer is a child subreaper: whatever restore leaves is reparented to it);
- nothing changed in a canary tree beside the image (which mutations aim at), in /etc/shadow, nor
  in the image directory itself.

    python3 -m zdtm.imagefuzz build WORKDIR            # dump the trees, one image each under WORKDIR
    python3 -m zdtm.imagefuzz run --seed 1 --count 2000 WORKDIR/basic WORKDIR/userns ...

Findings are printed one a line (`FINDING seed=S n=N image=I mutation=M: what`) and make the exit
status 1; `--keep DIR` keeps each finding's mutated image there to replay.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESTORE_TIMEOUT = 120
PR_SET_CHILD_SUBREAPER = 36

# --- values ---------------------------------------------------------------------------------

HUGE = (2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64, 10 ** 30, -2 ** 63)
ODD = (None, True, False, 0, -1, 1.5, "", "1", [], {}, [None], {"x": 1})


def hostile_paths(canary: str) -> list[str]:
    """Paths an attacker would write: escapes, host files, the canary, malformed ones."""
    return ["/..", "/../../..", "/a/../../..", "..", "a/b", "/x/./y", "//x", "/x/", "/a\0b", "/a\nb",
            "/" + "a" * 5000, "/a/" * 1500, "/etc/shadow", "/dev/sda", "/dev/vda", "/proc/1/root",
            "/proc/self/root/etc", "/sys/kernel", canary, canary + "/f", canary + "/../..",
            "/" + "\u00e9\udcff", "/run/../../" + canary.lstrip("/")]


def nodes(doc, path=()):
    """Every (path, value) in the document: each is a place a mutation may hit."""
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from nodes(v, path + (i,))


def _at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _ids(doc) -> dict[str, list]:
    """Values that are references somewhere: the string ids (sb-N, mnt-N...) and the mount ids,
    grouped by kind, to swap one for another."""
    out: dict[str, list] = {}
    for path, v in nodes(doc):
        if isinstance(v, str) and "-" in v and v.split("-", 1)[1].isdigit() and len(v) < 16:
            out.setdefault(v.split("-", 1)[0], []).append(v)
        elif path and path[-1] in ("id", "parent", "shared", "master", "propagate_from", "mnt", "pid", "ppid",
                                   "sid", "pgid", "fd") and type(v) is int:
            out.setdefault(str(path[-1]), []).append(v)
    return out


def _replacement(rnd: random.Random, v, ids: dict, canary: str):
    """A hostile value for a field that holds `v`."""
    if isinstance(v, str) and "-" in v and v.split("-", 1)[1].isdigit():
        kind = v.split("-", 1)[0]
        return rnd.choice([f"{kind}-999", f"{kind}-{10 ** 12}", f"{kind}--1", f"{kind}-01", kind,
                           rnd.choice(ids.get(kind) or [v]), rnd.choice([k for ks in ids.values() for k in ks])])
    if isinstance(v, str) and v.startswith("/"):
        return rnd.choice(hostile_paths(canary) + [v + "/..", v + "\0", v + "\n", "/"])
    if type(v) is int:
        pool = [rnd.choice(HUGE), -1, -v - 1, v + 1, v ^ 1, 0, 2 ** 31 - 1, str(v), float(v), bool(v)]
        for vals in ids.values():
            if v in vals:
                pool += [rnd.choice(vals), max((x for x in vals if type(x) is int), default=0) + 1000]
        return rnd.choice(pool)
    if isinstance(v, str):
        return rnd.choice(["", "\0", "x" * 70000, v + "\n", "..", "/", v.upper(), "\x1b[2J", rnd.choice(ODD)])
    if isinstance(v, list):
        return rnd.choice([[], None, v + v, v * 50 if len(v) < 20 else v, [v], list(reversed(v)), {}])
    if isinstance(v, dict):
        return rnd.choice([{}, None, [], dict(v, zz_unknown=1), {k: None for k in v}])
    return rnd.choice(ODD + HUGE)


# --- manifest mutations -----------------------------------------------------------------------

def mutate_field(doc: dict, rnd: random.Random, canary: str) -> str:
    """Set one field anywhere to a hostile value of its kind; returns what it did."""
    ids = _ids(doc)
    places = [p for p, _ in nodes(doc) if p and p[0] not in ("format",)]
    path = rnd.choice(places)
    parent = _at(doc, path[:-1])
    old = parent[path[-1]]
    new = _replacement(rnd, old, ids, canary)
    parent[path[-1]] = new
    return f"set {_short(path)} {_short(old)} -> {_short(new)}"


def delete_field(doc: dict, rnd: random.Random, canary: str) -> str:
    """Delete one field or list item."""
    path = rnd.choice([p for p, _ in nodes(doc) if len(p) > 1])
    del _at(doc, path[:-1])[path[-1]]
    return f"delete {_short(path)}"


def unknown_field(doc: dict, rnd: random.Random, canary: str) -> str:
    """Add an unknown field to a record."""
    path = rnd.choice([p for p, v in nodes(doc) if isinstance(v, dict)])
    _at(doc, path)[rnd.choice(["zz", "x-future", "__proto__", ""])] = rnd.choice([1, None, "x", {}])
    return f"unknown field in {_short(path)}"


def duplicate_item(doc: dict, rnd: random.Random, canary: str) -> str:
    """Duplicate a list item (duplicate ids, fds, mounts, processes) or a dict entry under a new key."""
    lists = [p for p, v in nodes(doc) if isinstance(v, list) and v and isinstance(v[0], (dict, list))]
    dicts = [p for p, v in nodes(doc) if isinstance(v, dict) and v and len(p) == 1]
    if lists and (not dicts or rnd.random() < 0.7):
        path = rnd.choice(lists)
        items = _at(doc, path)
        items.insert(rnd.randrange(len(items) + 1), copy.deepcopy(rnd.choice(items)))
        return f"duplicate an item of {_short(path)}"
    path = rnd.choice(dicts)
    d = _at(doc, path)
    key = rnd.choice(list(d))
    prefix = key.rsplit("-", 1)[0] if "-" in key else key
    d[f"{prefix}-{rnd.choice([99, 0, 7])}"] = copy.deepcopy(d[key])
    return f"duplicate {path[0]}[{key}]"


def cycle(doc: dict, rnd: random.Random, canary: str) -> str:
    """A record its own ancestor: a mount its own parent or its child's child, a process its own
    parent, a peer group or master of itself."""
    mounts = [m for ns in doc.get("mntns", {}).values() for m in ns.get("mounts", [])]
    procs = doc.get("processes") or []
    choice = rnd.randrange(4)
    if choice == 0 and mounts:
        m = rnd.choice(mounts)
        m["parent"] = m["id"]
        return f"mount {m['id']} its own parent"
    if choice == 1 and len(mounts) > 2:
        a, b = rnd.sample(mounts[1:], 2)
        a["parent"], b["parent"] = b["id"], a["id"]
        return f"mounts {a['id']} and {b['id']} each other's parent"
    if choice == 2 and procs:
        p = rnd.choice(procs)
        p["ppid"] = p.get("pid")
        return f"process {p.get('pid')} its own parent"
    if mounts:
        m = rnd.choice(mounts)
        m["master"] = m.get("shared") or rnd.choice([1, 999, m["id"]])
        m["propagate_from"] = m["master"]
        return f"mount {m['id']} a slave of its own group"
    return "no cycle"


def host_reach(doc: dict, rnd: random.Random, canary: str) -> str:
    """Aim a record at the host: a mount's source or root, an fd's path, a superblock's device."""
    mounts = [m for ns in doc.get("mntns", {}).values() for m in ns.get("mounts", [])]
    fds = [fd for p in doc.get("processes") or [] for fd in p.get("fds") or []]
    choice = rnd.randrange(5)
    if choice == 0 and mounts:
        m = rnd.choice(mounts)
        m["source"] = rnd.choice(["/dev/sda", "/dev/vda", canary, "/etc"])
        m["fstype"] = rnd.choice(["ext4", "xfs", "btrfs", m["fstype"]])
        doc["superblocks"][m["sb"]]["fstype"] = m["fstype"]
        return f"mount {m['id']} of {m['source']} ({m['fstype']})"
    if choice == 1 and fds:
        fd = rnd.choice(fds)
        ext = [m for m in mounts if m.get("external")]
        if ext:
            fd["mnt"] = rnd.choice(ext)["id"]
        fd["path"] = rnd.choice(["/etc/shadow", "/shadow", "/../shadow", canary + "/f", "/dev/sda"])
        fd["flags"] = rnd.choice([fd.get("flags", 0), 0o1102, 0o2, 0o1101])
        return f"fd {fd.get('fd')} at {fd['path']} on mount {fd.get('mnt')}"
    if choice == 2 and mounts:
        m = rnd.choice(mounts)
        m["root"] = rnd.choice(hostile_paths(canary))
        return f"mount {m['id']} root {_short(m['root'])}"
    if choice == 3:
        users = doc.get("userns") or {}
        if users:
            u = users[rnd.choice(list(users))]
            u["uid_map"] = rnd.choice([[[0, 0, 4294967295]], [[0, 0, 65536]], [[0, 100000, 10 ** 6]],
                                       [[0, 1000, 1], [0, 0, 1]]])
            u["owner"] = rnd.choice([u.get("owner"), 1000, 65534, 0])
            return f"userns maps {u['uid_map']} owner {u['owner']}"
    m = rnd.choice(mounts) if mounts else None
    if m is not None:
        m["external"] = rnd.choice(["etc/../..", "usr", "zz", "/", None])
        return f"mount {m['id']} external {m['external']!r}"
    return "nothing to aim"


def swap_ref(doc: dict, rnd: random.Random, canary: str) -> str:
    """A reference in form swapped for another record's of the same kind (a mount's parent, an
    fd's mount, a superblock, a namespace), or a mount id made another mount's: cross-record
    checks, not form, must catch what follows."""
    ids = _ids(doc)
    places = [(p, v) for p, v in nodes(doc) if p and (
        (isinstance(v, str) and "-" in v and v.split("-", 1)[1].isdigit() and len(ids.get(v.split("-", 1)[0], ())) > 1)
        or (type(v) is int and p[-1] in ("parent", "mnt", "master", "shared", "propagate_from", "id", "ppid",
                                          "pid", "sid", "pgid")))]
    if not places:
        return "no reference"
    path, v = rnd.choice(places)
    pool = ids.get(v.split("-", 1)[0]) if isinstance(v, str) else (ids.get(str(path[-1])) or ids.get("id"))
    others = [x for x in pool or () if x != v] or [v]
    new = rnd.choice(others)
    _at(doc, path[:-1])[path[-1]] = new
    return f"swap {_short(path)} {v!r} -> {new!r}"


def inform_path(doc: dict, rnd: random.Random, canary: str) -> str:
    """A path field set to a normalised absolute path the form check takes, aimed at the host's
    files or the canary (beneath the mount it names: restore must resolve it there or refuse)."""
    places = [p for p, v in nodes(doc) if p and isinstance(v, str) and v.startswith("/") and p[-1] != "source"]
    if not places:
        return "no path"
    path = rnd.choice(places)
    new = rnd.choice(["/etc/shadow", "/shadow", "/proc/1/environ", "/1/environ", "/dev/sda", "/sda", canary,
                      canary + "/f", "/root", "/sys/kernel/notes", "/mnt/a/p", "/run/l.sock", "/proc/self/fd/0",
                      "/" + "a" * 255, "/" + "/".join(["d"] * 1000)])
    _at(doc, path[:-1])[path[-1]] = new
    return f"path {_short(path)} -> {_short(new)}"


def version(doc: dict, rnd: random.Random, canary: str) -> str:
    """Another format version or format name."""
    key, val = rnd.choice([("version", 2), ("version", "1"), ("version", 1.0), ("version", True),
                           ("version", 0), ("version", 10 ** 30), ("format", "criu"), ("format", None)])
    doc[key] = val
    return f"{key} {val!r}"


MANIFEST_MUTATIONS = (mutate_field, mutate_field, mutate_field, delete_field, unknown_field, duplicate_item,
                      cycle, host_reach, version, swap_ref, swap_ref, inform_path, inform_path)


# --- archive mutations ------------------------------------------------------------------------

def _info(name: str, kind=tarfile.REGTYPE, size: int = 0, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.mtime = kind, size, kw.pop("mode", 0o644), 0
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _hostile_members(rnd: random.Random, top: str, canary: str) -> tuple[str, list]:
    """(what, [(TarInfo, data)]) of one hostile addition to an archive whose members are under `top`."""
    rel = os.path.relpath(canary, "/")
    choice = rnd.randrange(9)
    if choice == 0:
        return "absolute member", [(_info(canary + "/f", size=3), b"pwn")]
    if choice == 1:
        return "'..' member", [(_info(f"{top}/../../../../../../{rel}/f", size=3), b"pwn")]
    if choice == 2:
        return "symlink then a file through it", [(_info(f"{top}/esc", tarfile.SYMTYPE, linkname=canary), None),
                                                 (_info(f"{top}/esc/f", size=3), b"pwn")]
    if choice == 3:
        return "relative symlink then a file through it", [
            (_info(f"{top}/esc2", tarfile.SYMTYPE, linkname="../../../../../../" + rel), None),
            (_info(f"{top}/esc2/g", size=3), b"pwn")]
    if choice == 4:
        return "hard link to outside", [(_info(f"{top}/h", tarfile.LNKTYPE, linkname=rnd.choice(
            [canary + "/f", f"../{rel}/f", "/etc/shadow", f"{top}/../../{rel}/f"])), None)]
    if choice == 5:
        return "device node", [(_info(f"{top}/sda", rnd.choice([tarfile.BLKTYPE, tarfile.CHRTYPE]),
                                      devmajor=8, devminor=0, mode=0o666), None)]
    if choice == 6:
        return "setuid root file", [(_info(f"{top}/suid", size=2, mode=0o6755, uid=0, gid=0), b"#!")]
    if choice == 7:
        return "fifo and socket-like names", [(_info(f"{top}/ff", tarfile.FIFOTYPE), None),
                                              (_info(f"{top}/a\nb", size=1), b"x")]
    return "member of another superblock", [(_info(f"sb-{rnd.choice([1, 99])}/x", size=1), b"x")]


def _rewrite(path: str, add: list, drop_first: bool = False) -> None:
    with tarfile.open(path) as old:
        members = [(m, old.extractfile(m).read() if m.isreg() else None) for m in old.getmembers()]
    if drop_first:
        members = members[1:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as new:
        for ti, data in members + add:
            new.addfile(ti, io.BytesIO(data) if data is not None else None)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _rehash(doc: dict, img: str, name: str) -> None:
    with open(os.path.join(img, name), "rb") as f:
        data = f.read()
    doc["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def mutate_archive(doc: dict, img: str, rnd: random.Random, canary: str) -> str:
    """Change an archive: hostile members (then its size and sha256 made to match, or not),
    truncated, garbage appended, replaced by a symlink to outside or a FIFO."""
    names = sorted(doc.get("files") or {})
    if not names:
        return "no archive"
    name = rnd.choice(names)
    path = os.path.join(img, name)
    choice = rnd.randrange(7)
    if choice <= 2:
        with tarfile.open(path) as t:
            tops = sorted({m.name.split("/", 1)[0] for m in t.getmembers()}) or ["sb-0"]
        what, add = _hostile_members(rnd, rnd.choice(tops), canary)
        _rewrite(path, add, drop_first=rnd.random() < 0.2)
        if choice < 2:
            _rehash(doc, img, name)
        return f"{name}: {what}" + (" (size and sha256 match)" if choice < 2 else "")
    if choice == 3:
        size = os.path.getsize(path)
        os.truncate(path, rnd.choice([0, 1, 511, 512, size // 2, size - 1024]))
        if rnd.random() < 0.5:
            _rehash(doc, img, name)
        return f"{name}: truncated"
    if choice == 4:
        with open(path, "ab") as f:
            f.write(os.urandom(rnd.choice([1, 512, 10240])))
        if rnd.random() < 0.5:
            _rehash(doc, img, name)
        return f"{name}: garbage appended"
    os.unlink(path)
    if choice == 5:
        os.symlink(rnd.choice([canary + "/f", "/etc/shadow", "../" + name]), path)
        return f"{name}: a symlink to outside"
    os.mkfifo(path)
    return f"{name}: a FIFO"


def mutate_dir(doc: dict, img: str, rnd: random.Random, canary: str) -> str:
    """The manifest a symlink to a copy outside, or a hard link shared with the canary."""
    text = json.dumps(doc, sort_keys=True)
    outside = os.path.join(os.path.dirname(canary), "outside.json")
    with open(outside, "w") as f:
        f.write(text)
    os.unlink(os.path.join(img, "mntcr.json"))
    if rnd.random() < 0.5:
        os.symlink(outside, os.path.join(img, "mntcr.json"))
        return "manifest a symlink to outside"
    os.link(outside, os.path.join(img, "mntcr.json"))
    return "manifest a hard link of a file outside"


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:60] + f"...({len(text)} chars)"


# --- one case -------------------------------------------------------------------------------

def make_canary(path: str) -> None:
    """The tree mutations aim at: a file, a directory, a symlink, a setuid-less executable."""
    os.makedirs(os.path.join(path, "d"), exist_ok=True)
    for name, mode in (("f", 0o644), ("x", 0o755), ("d/g", 0o600)):
        with open(os.path.join(path, name), "w") as f:
            f.write(name)
        os.chmod(os.path.join(path, name), mode)
    if not os.path.lexists(os.path.join(path, "l")):
        os.symlink("f", os.path.join(path, "l"))


def tree_digest(*roots: str) -> str:
    """The names, types, modes, owners, sizes and contents of every file under `roots`."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for name in [""] + sorted(files + dirs):
                p = os.path.join(dirpath, name) if name else dirpath
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                h.update(f"{p}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_nlink}\n".encode())
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())
                elif os.path.islink(p):
                    h.update(os.readlink(p).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return sorted(line.split(" ", 4)[4] for line in f)


def _children() -> list[int]:
    """Our live children (as a subreaper, also whatever restore left behind); zombies are reaped."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == me and fields[0] != "Z":
                    out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _kill_tree(pid: int) -> None:
    from zdtm import snapshot
    snapshot.kill_tree(pid)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _reap(restored: int | None = None, timeout: float = 10) -> list[str]:
    """Kill (SIGKILL) and reap every child left but the restored tree (killed before) once those
    that die on their own had `timeout` seconds; returns the others (pid and command line)."""
    deadline = time.monotonic() + timeout
    while _children() and time.monotonic() < deadline:
        time.sleep(0.02)   # (the killed tree, reparented to us, and what restore killed: dying)
    left = [f"{p} ({_comm(p)})" for p in _children() if p != restored]
    for pid in _children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while _children() and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def validate_in_process(img: str) -> str | None:
    """None when engine/image.load accepts the image, "refused" on ImageError; anything else is
    a finding: "crash: ..." (restore would print an internal error)."""
    from engine import image
    try:
        image.load(img)
    except image.ImageError:
        return "refused"
    except Exception as e:  # noqa: BLE001 - the point: any other exception is a finding
        return f"crash: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def restore(img: str, rext: list[str], work: str, must_succeed: bool = False) -> list[str]:
    """Restore `img` with the hardening checks; returns the problems (none: all well)."""
    problems = []
    pidfile = os.path.join(work, "pid")
    before = _mounts()
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    env.pop("MNTCR_DEBUG", None)
    try:
        r = subprocess.run([sys.executable, "-m", "engine.cli", "restore", "-D", img, "--pidfile", pidfile, *rext],
                           capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=RESTORE_TIMEOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)
        code, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired:
        code, err = None, ""
        problems.append(f"restore hung for {RESTORE_TIMEOUT}s")
    if os.environ.get("MNTCR_IMAGEFUZZ_SAY"):
        print(f"  restore exit {code}: {err.strip()[:400]}", flush=True)
    if must_succeed and code != 0:
        problems.append(f"the unchanged image does not restore: {err.strip()[-300:]}")
    restored = None
    if code == 0:
        with open(pidfile) as f:
            restored = int(f.read())
        _kill_tree(restored)
    elif code is not None:
        lines = err.strip().splitlines()
        if code != 2:
            problems.append(f"exit {code}")
        if len(lines) != 1 or not lines[0].startswith("mntcr restore: "):
            problems.append(f"not one error line: {err.strip()[:300]!r}")
        if "Traceback" in err or "internal error" in err:
            problems.append(f"crash: {err.strip()[-300:]!r}")
        if os.path.exists(pidfile):
            problems.append("a refused restore wrote its pid file")
    left = _reap(restored)
    if left:
        problems.append(f"processes left: {left}")
    deadline = time.monotonic() + 10
    while _mounts() != before and time.monotonic() < deadline:
        time.sleep(0.1)   # (a killed tree's mounts go with its last process)
    after = _mounts()
    if after != before:
        problems.append(f"mounts changed: +{sorted(set(after) - set(before))[:3]} -{sorted(set(before) - set(after))[:3]}")
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    return problems


# --- the campaign ---------------------------------------------------------------------------

def load_externals(img: str) -> list[str]:
    """The restore --external arguments of an image `build` made (IMG.externals, a JSON list), or none."""
    try:
        with open(img.rstrip("/") + ".externals") as f:
            return json.load(f)
    except FileNotFoundError:
        return []


def make_case(src: str, dest: str, rnd: random.Random, canary: str) -> str:
    """Copy image `src` to `dest` and mutate the copy; returns what was done."""
    shutil.copytree(src, dest, symlinks=True)
    with open(os.path.join(dest, "mntcr.json")) as f:
        doc = json.load(f)
    roll = rnd.random()
    done = []
    if roll < 0.2:
        done.append(mutate_archive(doc, dest, rnd, canary))   # (on the unchanged manifest)
    if roll >= 0.1 or not done:
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            f = rnd.choice(MANIFEST_MUTATIONS)
            try:
                done.append(f(doc, rnd, canary))
            except (AttributeError, TypeError, KeyError, IndexError, ValueError):
                done.append(f"{f.__name__}: nothing to do (an earlier mutation broke its target)")
    try:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        text = '{"format": "mntcr-image", "version": 1, "x": NaN}'
    with open(os.path.join(dest, "mntcr.json"), "w") as f:
        f.write(text)
    if rnd.random() < 0.03:
        done.append(mutate_dir(doc, dest, rnd, canary))
    return "; ".join(done)


def run_case(seed: int, n: int, images: list[str], work: str, restore_every: int) -> tuple[str, str, list[str]]:
    """Mutation `n` of campaign `seed`: (image, what was done, problems)."""
    rnd = random.Random(f"{seed}-{n}")
    src = images[rnd.randrange(len(images))]
    case = os.path.join(work, "case")
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(case)
    canary = os.path.join(work, "canary")
    img = os.path.join(case, "img")
    what = make_case(src, img, rnd, canary)
    guarded = (canary, img)
    digest = tree_digest(*guarded) + _shadow()
    verdict = validate_in_process(img)
    problems = [verdict] if verdict and verdict.startswith("crash") else []
    restored = verdict is None or "member" in what or n % restore_every == 0
    if restored and not problems:
        problems += restore(img, load_externals(src), case)
    if tree_digest(*guarded) + _shadow() != digest:
        problems.append("the canary, /etc/shadow or the image directory changed")
    return os.path.basename(src), what + ("" if restored else " (validator only)"), problems


def _shadow() -> str:
    try:
        st = os.stat("/etc/shadow")
        with open("/etc/shadow", "rb") as f:
            return f"{st.st_mode:o}{st.st_uid}{st.st_size}" + hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def base_findings(images: list[str], work: str) -> list[str]:
    """Each image restored as it is: it must restore (else a refusal of its mutations says nothing)."""
    out = []
    for src in images:
        case = os.path.join(work, "case")
        shutil.rmtree(case, ignore_errors=True)
        os.makedirs(case)
        shutil.copytree(src, os.path.join(case, "img"), symlinks=True)
        problems = restore(os.path.join(case, "img"), load_externals(src), case, must_succeed=True)
        out += [f"BASE image={os.path.basename(src)}: {p}" for p in problems]
    for line in out:
        print(line, flush=True)
    return out


def campaign(seed: int, count: int, images: list[str], work: str, restore_every: int = 25,
             keep: str | None = None, only: list[int] | None = None, verbose: bool = False) -> list[str]:
    """Run mutations 0..count-1 (or `only` those) of `seed` on `images`; returns the finding lines."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.makedirs(work, exist_ok=True)
    make_canary(os.path.join(work, "canary"))
    findings, restores, done = base_findings(images, work), 0, 0
    started = time.monotonic()
    for n in (only if only is not None else range(count)):
        name, what, problems = run_case(seed, n, images, work, restore_every)
        restores += "(validator only)" not in what
        done += 1
        if done % 250 == 0:
            print(f"imagefuzz: seed {seed}: {done} mutations so far, {restores} restored, {len(findings)} findings, "
                  f"{time.monotonic() - started:.0f}s", flush=True)
        if verbose:
            print(f"n={n} {name}: {what}: {problems or 'ok'}", flush=True)
        for p in problems:
            line = f"FINDING seed={seed} n={n} image={name} mutation={what}: {p}"
            findings.append(line)
            print(line, flush=True)
        if problems and keep:
            shutil.copytree(os.path.join(work, "case", "img"), os.path.join(keep, f"{seed}-{n}"), symlinks=True,
                            dirs_exist_ok=True)
    print(f"imagefuzz: seed {seed}: {count if only is None else len(only)} mutations, {restores} restored, "
          f"{len(findings)} findings, {time.monotonic() - started:.0f}s", flush=True)
    return findings


# --- building images --------------------------------------------------------------------------

def build(out: str) -> list[str]:
    """Dump the trees of tests/imagefuzz_trees.py under OUT (one image each, IMAGE.externals beside
    it); returns the image paths."""
    sys.path.insert(0, os.path.join(PROJECT_ROOT, "tests"))
    import enginecase
    import imagefuzz_trees
    os.makedirs(out, exist_ok=True)
    c = enginecase.EngineCase(out)
    made = []
    try:
        for name, setup in imagefuzz_trees.TREES.items():
            img = os.path.join(out, name)
            try:
                pid = c.start(setup)
                c.dump(pid, img)
            except (enginecase.SetupError, enginecase.CRError) as e:
                print(f"imagefuzz: {name}: not dumped: {' '.join(str(e).split())[:300]}", file=sys.stderr)
                continue
            with open(img + ".externals", "w") as f:
                json.dump(list(enginecase.RESTORE_EXTERNALS), f)
            made.append(img)
    finally:
        c.close()
    return made


def _in_own_mount_namespace() -> bool:
    return os.environ.get("MNTCR_IMAGEFUZZ_NS") == str(os.getpid())


def main(argv: list[str] | None = None) -> int:
    """`build WORKDIR` or `run --seed S --count N IMAGE...` (in a mount namespace of its own)."""
    ap = argparse.ArgumentParser(prog="python3 -m zdtm.imagefuzz", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="dump the trees to fuzz")
    b.add_argument("workdir")
    r = sub.add_parser("run", help="mutate and restore")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--count", type=int, default=1000)
    r.add_argument("--only", type=int, action="append", help="run only mutation N (repeatable)")
    r.add_argument("--restore-every", type=int, default=25, help="restore one in N refused mutations too")
    r.add_argument("--work", default=None, help="scratch directory (default: a new one in /tmp)")
    r.add_argument("--keep", default=None, help="copy each finding's image here")
    r.add_argument("-v", "--verbose", action="store_true")
    r.add_argument("images", nargs="+")
    args = ap.parse_args(argv)
    if args.verb == "build":
        print("\n".join(build(os.path.abspath(args.workdir))))
        return 0
    if not _in_own_mount_namespace():
        # the campaign runs in a throwaway mount namespace: nothing it mounts reaches the host's
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               'MNTCR_IMAGEFUZZ_NS=$$ exec "$@"', "sh", sys.executable, "-m", "zdtm.imagefuzz",
               *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd, cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=PROJECT_ROOT)).returncode
    import tempfile
    work = args.work or tempfile.mkdtemp(prefix="mntcr-imagefuzz-")
    found = campaign(args.seed, args.count, [os.path.abspath(i) for i in args.images], work,
                     args.restore_every, args.keep, args.only, args.verbose)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
