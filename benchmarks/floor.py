"""The kernel floor: the mount syscalls a restore cannot avoid, from a precomputed op list.

`ops_from_image(doc)` turns a mntcr image (its root process's mount namespace)
into the op list benchmarks/floor.c executes: create each superblock once,
clone every mount from it, pivot into the root mount, move every other mount
into place (parents first, deeper siblings first, as the engine does), copy
peer groups with MOVE_MOUNT_SET_GROUP, set propagation. All planning happens
here, untimed; the C program only issues syscalls and times them.

    python benchmarks/floor.py IMAGE_DIR      # build the image's tree, print the floor time

No file contents are restored (the floor creates the directories mount points
need with mkdirat instead), no processes are created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import fs, kernel  # noqa: E402
from engine.image import is_beneath, rel_to  # noqa: E402
from engine.restore import attr_of  # noqa: E402

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")


class FloorError(Exception):
    """The image has something the floor program does not build (one line)."""


def _word(text: str, what: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise FloorError(f"floor: {what} {text!r} is empty or has whitespace")
    return text


def _rel(path: str) -> str:
    return path.lstrip("/") or "."


def ops_from_image(doc: dict, externals: dict[str, str]) -> list[str]:
    """The op lines (see floor.c) that build the root process's mount namespace of `doc`.

    `externals` maps an image's external key to the host path to clone for it.
    """
    ns_id = doc["processes"][0]["ns"]["mnt"]
    ns = doc["mntns"][ns_id]
    mounts = ns["mounts"]
    by_id = {m["id"]: m for m in mounts}
    slot = {m["id"]: i for i, m in enumerate(mounts)}
    sbs = doc["superblocks"]
    children: dict[int, list[dict]] = {}
    for m in mounts:
        if m.get("parent") is not None:
            children.setdefault(m["parent"], []).append(m)

    # Superblock creation ops (emitted lazily, just before the first clone of each).
    sb_ops: dict[str, list[str]] = {}
    sb_slot: dict[str, int] = {}
    ext_slot: dict[int, int] = {}      # external mount id -> superblock slot of its host clone
    for m in mounts:
        sb = sbs[m["sb"]]
        if m.get("external"):
            host = externals.get(m["external"])
            if host is None:
                raise FloorError(f"floor: no host path for external {m['external']!r}")
            ext_slot[m["id"]] = len(sb_slot) + len(ext_slot)
            sb_ops[f"ext-{m['id']}"] = [f"T {ext_slot[m['id']]} {_word(host, 'host path')}"]
        elif not sb.get("external") and m["sb"] not in sb_slot:
            handler = fs.lookup(sb["fstype"])
            if handler is None:
                raise FloorError(f"floor: filesystem {sb['fstype']} has no handler")
            params = handler.fsconfig_params(sb["super_opts"])
            if handler.keep_source and sb["source"]:
                params = [("source", sb["source"])] + params
            s = sb_slot[m["sb"]] = len(sb_slot) + len(ext_slot)
            kv = " ".join(f"{_word(k, 'option')} {_word(v, 'option value') if v is not None else '-'}"
                          for k, v in params)
            sb_ops[m["sb"]] = [f"F {s} {_word(sb['fstype'].split('.', 1)[0], 'fstype')} {len(params)} {kv}".rstrip()]

    def source_of(m: dict) -> tuple[str, int, str]:
        """(creation key, superblock slot, root inside it) to clone m from."""
        if not sbs[m["sb"]].get("external"):
            return m["sb"], sb_slot[m["sb"]], m["root"]
        best = None
        for e in mounts:
            if e["sb"] == m["sb"] and e.get("external") and is_beneath(m["root"], e["root"]):
                if best is None or len(e["root"]) > len(best["root"]):
                    best = e
        if best is None:
            raise FloorError(f"floor: mount {m['id']} ({m['mountpoint']}): no external mount covers it")
        return f"ext-{best['id']}", ext_slot[best["id"]], "/" + rel_to(m["root"], best["root"])

    # Directories the mount points and roots need, made right after their superblock is created.
    seen_dirs: set[tuple[int, str]] = set()
    last_clone: dict[str, int] = {}
    for m in mounts:
        key, s, root = source_of(m)
        if not sbs[m["sb"]].get("external") and root != "/" and (s, root) not in seen_dirs:
            seen_dirs.add((s, root))
            sb_ops[key].append(f"K {s} {_word(_rel(root), 'path')}")
        parent = by_id.get(m.get("parent"))
        if parent is not None and not sbs[parent["sb"]].get("external"):
            rel = rel_to(m["mountpoint"], parent["mountpoint"])
            if rel:
                pkey, ps, proot = source_of(parent)
                d = _rel(proot.rstrip("/") + "/" + rel)
                if (ps, d) not in seen_dirs:
                    seen_dirs.add((ps, d))
                    sb_ops[pkey].append(f"K {ps} {_word(d, 'path')}")

    # Order of creation: the root, then parents first, deeper siblings first (as the engine).
    order: list[tuple[int, int | None, str]] = [(ns["root"], None, "")]
    queue = [ns["root"]]
    while queue:
        pid = queue.pop()
        parent = by_id[pid]
        kids = sorted(children.get(pid, ()),
                      key=lambda c: -rel_to(c["mountpoint"], parent["mountpoint"]).count("/")
                      - (1 if rel_to(c["mountpoint"], parent["mountpoint"]) else 0))
        for c in kids:
            order.append((c["id"], pid, rel_to(c["mountpoint"], parent["mountpoint"])))
            queue.append(c["id"])

    # Mounts reachable by their path in the final tree are reopened by path for the sharing ops;
    # only covered ones keep their fd to the end.
    top: dict[tuple[int, str], int] = {(m["parent"], m["mountpoint"]): m["id"] for m in mounts
                                       if m.get("parent") is not None}

    def visible(m: dict) -> bool:
        cur = ns["root"]
        while (cur, "/") in top:
            cur = top[(cur, "/")]
        parts = [p for p in m["mountpoint"].split("/") if p]
        for k in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:k])
            while (cur, prefix) in top:
                cur = top[(cur, prefix)]
        return cur == m["id"]

    sharing = {m["id"] for m in mounts if m.get("shared") or m.get("master") or m.get("unbindable")}
    keep = {mid for mid in sharing if not visible(by_id[mid])}
    last_child: dict[int, int] = {}
    for mid, pid, _ in order:
        last_clone[source_of(by_id[mid])[0]] = mid
        if pid is not None:
            last_child[pid] = mid

    # Host paths must be opened before the pivot_root that hides them.
    ops: list[str] = [op for key, lst in sb_ops.items() if key.startswith("ext-") for op in lst]
    created: set[str] = {key for key in sb_ops if key.startswith("ext-")}
    for mid, pid, rel in order:
        m = by_id[mid]
        key, s, root = source_of(m)
        if key not in created:
            created.add(key)
            ops += sb_ops[key]
        ops.append(f"C {slot[mid]} {s} {_word(_rel(root), 'path')}")
        aset, aclr = attr_of(m["mount_opts"])
        ops.append(f"A {slot[mid]} {aset} {aclr}")
        if last_clone[key] == mid:
            ops.append(f"Y {s}")
        if pid is None:
            ops.append(f"R {slot[mid]}")
        else:
            ops.append(f"M {slot[mid]} {slot[pid]} {_word(_rel(rel), 'path')}")
            # The parent's fd is done once its last child is attached.
            if last_child.get(pid) == mid and pid not in keep:
                ops.append(f"X {slot[pid]}")
        if mid not in last_child and mid not in keep:
            ops.append(f"X {slot[mid]}")

    return ops + _sharing_ops(mounts, slot, {mid: by_id[mid]["mountpoint"] for mid in sharing - keep})


def _sharing_ops(mounts: list[dict], slot: dict[int, int], reopen: dict[int, str]) -> list[str]:
    """SET_GROUP / slave / shared ops, parent groups first; unbindable last.

    Mounts in `reopen` (id -> path) had their fd closed: each op opens them by path first.
    """
    groups: dict[tuple, list[dict]] = {}
    for m in mounts:
        if m.get("shared") or m.get("master"):
            groups.setdefault((m.get("shared"), m.get("master")), []).append(m)
    shared_groups = {k[0]: k for k in groups if k[0]}
    done: set[tuple] = set()
    ops: list[str] = []

    def widest(members, root):
        best = None
        for x in members:
            if is_beneath(root, x["root"]) and (best is None or len(x["root"]) < len(best["root"])):
                best = x
        return best

    def setup(key):
        if key in done:
            return
        done.add(key)
        shared, master = key
        members = sorted(groups[key], key=lambda x: (len(x["root"]), x["id"]))
        first = members[0]
        if master:
            pkey = shared_groups.get(master)
            if pkey is None:
                raise FloorError(f"floor: mount {first['id']}: external master {master} is not built by the floor")
            setup(pkey)
            src = widest(groups[pkey], first["root"])
            ops.append(f"G {slot[src['id']]} {slot[first['id']]}")
            ops.append(f"P {slot[first['id']]} {kernel.MS_SLAVE}")
        if shared:
            ops.append(f"P {slot[first['id']]} {kernel.MS_SHARED}")
        for i, m in enumerate(members[1:], 1):
            src = widest(members[:i], m["root"])
            ops.append(f"G {slot[src['id']]} {slot[m['id']]}")

    for key in sorted(groups, key=lambda k: (k[0] or 0, k[1] or 0)):
        setup(key)
    ops += [f"P {slot[m['id']]} {kernel.MS_UNBINDABLE}" for m in mounts if m.get("unbindable")]
    id_of = {v: k for k, v in slot.items()}
    out: list[str] = []
    for op in ops:
        used = [int(x) for x in (op.split()[1:3] if op[0] == "G" else op.split()[1:2])]
        opened = [u for u in dict.fromkeys(used) if id_of[u] in reopen]
        out += [f"O {u} {_word(reopen[id_of[u]], 'path')}" for u in opened]
        out.append(op)
        out += [f"X {u}" for u in opened]
    return out


def compile_floor(workdir: str) -> str:
    """Compile floor.c into `workdir` with gcc; return the binary's path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise FloorError("floor: no C compiler (install gcc)")
    out = os.path.join(workdir, "floor")
    proc = subprocess.run([gcc, "-O2", "-o", out, _SOURCE], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FloorError(f"floor: gcc failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


def run_floor(binary: str, ops: list[str], workdir: str) -> tuple[float, str]:
    """Run the floor program on `ops`; return (seconds spent in the ops, mountinfo of the built tree)."""
    ops_path = os.path.join(workdir, "floor.ops")
    mi_path = os.path.join(workdir, "floor.mountinfo")
    with open(ops_path, "w") as f:
        f.write("\n".join(ops) + "\n")
    proc = subprocess.run([binary, ops_path, mi_path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FloorError((proc.stderr.strip().splitlines() or [f"floor exited {proc.returncode}"])[-1])
    ns = int(proc.stdout.split()[1])
    with open(mi_path) as f:
        return ns / 1e9, f.read()


def main(argv: list[str]) -> int:
    """`floor.py IMAGE_DIR [--external KEY:HOSTPATH...]`: build the image's tree, print the time."""
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images_dir")
    p.add_argument("--external", action="append", default=[], metavar="KEY:HOSTPATH")
    args = p.parse_args(argv)
    ext = dict(spec.split(":", 1) for spec in args.external)
    with open(os.path.join(args.images_dir, "mntcr.json")) as f:
        doc = json.load(f)
    with tempfile.TemporaryDirectory(prefix="mntcr-floor-") as tmp:
        secs, text = run_floor(compile_floor(tmp), ops_from_image(doc, ext), tmp)
    print(f"floor_s: {secs:.4f} ({len(text.splitlines())} mounts built)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
