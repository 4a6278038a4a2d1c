"""Random mount trees: one generator for the random-tree tests of mntcr and the differential
runs against criu (tests/test_hardening_random_trees.py, tests/test_differential_criu.py,
benchmarks/differential.py).

A tree is a list of ops ``(kind, i, j)``; an op names its targets by index into
the directories made so far, so hypothesis shrinks a failure to a short list
with small indices. `render_setup` turns the ops into the sh setup of a
scenario (each op runs as ``cmd || true``: the kernel may refuse some, e.g.
moving a mount under a shared parent; the tree is whatever results, and C/R
must reproduce exactly that).

Kinds: mounts (tmpfs, bind, rbind, overlay, a tmpfs in a nested mount
namespace held by a background process), propagation (shared, slave, private,
unbindable), overmounts (over), moves, per-mount flags (flag: ro, nosuid,
nodev, noexec, ...), a read-only superblock (sbro), lazy unmounts with an fd
kept open (lazy), tmpfs contents (file, dir), a mount root's mode and owner (mode), open files
(fd) and the cwd (cd). `in_userns` ends a tree in a user namespace of its own (unshare -Urm, or
one of the other USERNS_SHAPES: other maps, two user namespaces nested).
Flag ops pick among the container root and the mount points made so far
(index 0 is /, so a shrunk flag op on the root is ``("flag", 0, 0)``);
propagation, overmounts, moves and lazy unmounts pick among the mount points
beneath /mnt only (the runner's container keeps its own root).
"""

from __future__ import annotations

from zdtm.scenario import Expectation, Requires, Scenario

MAX_MOUNTS = 400          # beyond this a sequence is rejected (rbind + propagation can explode)
TOO_MANY = "hardening: too many mounts"

# Mount-making ops and propagation changes weigh more: sharing is where the engines' planning is.
BASE_KINDS = ["tmpfs", "tmpfs", "bind", "bind", "bind", "rbind", "shared", "shared", "slave", "slave", "private",
              "unbindable", "over", "move", "file", "fd", "cd"]
# Kinds added for the differential runs (per-mount flags, read-only superblocks, overlay,
# nested mount namespaces, directory trees with symlinks, a mount root's mode and owner).
MORE_KINDS = ["flag", "flag", "sbro", "overlay", "nested", "dir", "mode"]
DETACHED_KINDS = ["lazy"]
SHARING_OPS = {"shared", "slave"}

# Per-mount flag sets of the `flag` op, by j (j=0: read-only, the commonest runtime flag).
FLAG_SETS = ["ro", "nosuid", "nodev", "noexec", "ro,nosuid,nodev,noexec", "nosuid,nodev", "rw"]

# What the tree shows beyond mounts: names, modes, link targets and contents of what lies
# under /mnt (sorted: readdir order of a tmpfs differs after its archive is extracted).
CHECK = ("find /mnt 2>/dev/null | sort; "
         "find /mnt -type f 2>/dev/null | sort | xargs -r cat 2>/dev/null | md5sum; "
         "find /mnt -type l 2>/dev/null | sort | xargs -r readlink 2>/dev/null | md5sum")


def kinds(*, detached: bool = True, sharing: bool = True, more: bool = True) -> list[str]:
    """The op kinds to draw from: without `detached` no lazy unmounts, without `sharing`
    no shared/slave ops (a kernel whose engine strategy cannot restore peer groups)."""
    out = BASE_KINDS + (DETACHED_KINDS if detached else []) + (MORE_KINDS if more else [])
    return [k for k in out if sharing or k not in SHARING_OPS]


def ops_strategy(kind_list: list[str], max_ops: int):
    """The hypothesis strategy of op lists (hypothesis imported only here: optional)."""
    from hypothesis import strategies as st
    return st.lists(st.tuples(st.sampled_from(kind_list), st.integers(0, 15), st.integers(0, 15)),
                    min_size=1, max_size=max_ops)


def render_setup(ops) -> str:
    """The sh setup script for an op sequence [(kind, i, j), ...] (deterministic).

    `dirs` are the directories made so far, `mps` the mount points among them
    (/mnt is always a tmpfs first): propagation changes, overmounts, moves and
    lazy unmounts pick a mount point, binds pick any directory; flags pick
    among / and the mount points.
    """
    dirs = ["/mnt"]
    mps = ["/mnt"]
    lines = ["mount -t tmpfs base /mnt"]
    fd = 3
    for n, (kind, i, j) in enumerate(ops):
        d_i, d_j, mp = dirs[i % len(dirs)], dirs[j % len(dirs)], mps[i % len(mps)]
        flag_mp = (["/"] + mps)[i % (len(mps) + 1)]
        if kind == "tmpfs":
            new = f"{d_i}/t{n}"
            lines.append(f"mkdir -p {new} && mount -t tmpfs t{n} {new}")
        elif kind in ("bind", "rbind"):
            new = f"{d_j}/b{n}"
            lines.append(f"mkdir -p {new} && mount --{kind} {d_i} {new}")
        elif kind in ("shared", "slave", "private", "unbindable"):
            lines.append(f"mount --make-{kind} {mp}")
            continue
        elif kind == "over":
            lines.append(f"mount -t tmpfs o{n} {mp}")
            continue
        elif kind == "move":
            new = f"{d_j}/m{n}"
            lines.append(f"mkdir -p {new} && mount --move {mp} {new}")
        elif kind == "file":
            lines.append(f"echo {n} > {d_i}/f{n}")
            continue
        elif kind == "dir":
            lines.append(f"mkdir -p {d_i}/d{n}/s && echo {n} > {d_i}/d{n}/s/x && ln -s s/x {d_i}/d{n}/l "
                         f"&& chmod {('700', '755', '1777', '555')[j % 4]} {d_i}/d{n}/s")
            continue
        elif kind == "fd":
            if fd <= 9:  # dash takes one-digit fds in redirections
                lines.append(f"echo {n} > {d_i}/f{n} && exec {fd}<{d_i}/f{n}")
                fd += 1
            continue
        elif kind == "cd":
            lines.append(f"cd {d_i}")
            continue
        elif kind == "lazy":
            if fd <= 9:
                lines.append(f"echo {n} > {mp}/l{n} && exec {fd}<{mp}/l{n} && umount -l {mp}")
                fd += 1
            continue
        elif kind == "flag":
            flags = FLAG_SETS[j % len(FLAG_SETS)]
            if flag_mp == "/":  # the holder (/.zdtm/zdtm-hold) must stay executable
                flags = ",".join(f for f in flags.split(",") if f != "noexec") or "rw"
            lines.append(f"mount -o remount,bind,{flags} {flag_mp}")
            continue
        elif kind == "mode":
            # (a mount root's mode and owner: the snapshot compares them)
            lines.append(f"chmod {('700', '1777', '555', '2750')[j % 4]} {mp} && chown {j}:{i} {mp}")
            continue
        elif kind == "sbro":
            lines.append(f"mount -o remount,ro {mp}")
            continue
        elif kind == "overlay":
            o = f"{d_i}/ov{n}"
            new = f"{o}/m"
            lines.append(f"mkdir -p {o}/l {o}/u {o}/w {new} && echo {n} > {o}/l/x && "
                         f"mount -t overlay ov{n} -o lowerdir={o}/l,upperdir={o}/u,workdir={o}/w {new} "
                         f"&& echo {n} > {new}/y")
        elif kind == "nested":
            # A background process in a mount namespace of its own (a copy of this one, sharing
            # unchanged) mounts a tmpfs there and sleeps; setup waits until it does.
            lines.append(f"unshare -m --propagation unchanged sh -c 'mount -t tmpfs n{n} {d_i} ; "
                         f"echo {n} > {d_i}/n{n} ; exec sleep 1000000' </dev/null >/dev/null 2>&1 & "
                         f"p=$! ; k=0 ; while [ \"$(cat /proc/$p/comm)\" != sleep ] && [ $k -lt 400 ]; "
                         f"do sleep 0.05 ; k=$((k+1)) ; done")
            continue
        dirs.append(new)
        mps.append(new)
    body = "\n".join(f"{{ {line} ; }} 2>/dev/null || true" for line in lines)
    guard = (f'[ "$(wc -l < /proc/self/mountinfo)" -le {MAX_MOUNTS} ] || '
             f'{{ echo "{TOO_MANY}" >&2; exit 1; }}')
    return f"{body}\n{guard}\nexec zdtm-hold\n"


# The op kinds of trees whose holder ends in a user namespace of its own (`in_userns`): no fds or
# detached mounts (opened before the unshare, they would lie in the namespace left behind), no
# nested namespace (a process left behind there).
USERNS_KINDS = ["tmpfs", "tmpfs", "bind", "bind", "rbind", "shared", "slave", "private", "over", "over", "move",
                "file", "cd", "cd", "flag", "dir", "mode", "overlay"]
# More of them for wider trees (tests/test_random_trees_userns.py's shaped ones): unbindable mounts
# and read-only superblocks too, and more mounts.
USERNS_MORE_KINDS = USERNS_KINDS + ["unbindable", "sbro", "tmpfs", "rbind", "slave", "shared"]


# The user namespace shapes of `in_userns`: "root" (unshare -Urm: only root, mapped to root), or
# made by _MAKE_USERNS with a uid and gid map: "range" (0-65535 as themselves: the ids the ops
# chown to are mapped), "shifted" (0-65535 as 100000-165535, as rootless runtimes map a
# container: the host's root and the ops' ids unmapped), "nested" (shifted, then unshare -Urm
# inside it: two user namespaces, each mount namespace copy locking the last's mounts).
USERNS_SHAPES = ("root", "range", "shifted", "nested")
_MAPS = {"range": "0 0 65536", "shifted": "0 100000 65536", "nested": "0 100000 65536"}

# Python (python3 -c): unshare a user and a mount namespace (propagation unchanged) in this
# process, while a forked helper left outside writes its maps; then open stdio again on the copy's
# /dev/null (as the "root" shape's sh does: one opened before lies on a mount of the namespace
# left behind), become root there and exec argv[2:]. (unshare(1) maps other ranges only through
# newuidmap and /etc/subuid.)
_MAKE_USERNS = ";".join((
    "import ctypes, os, sys",
    "libc = ctypes.CDLL(None, use_errno=True)",
    "r, w = os.pipe()",
    "pid = os.fork()",
    "pid or (os.close(w), os.read(r, 1), "
    "[os.write(os.open(f'/proc/{os.getppid()}/{k}_map', os.O_WRONLY), sys.argv[1].encode()) for k in ('uid', 'gid')], os._exit(0))",
    "os.close(r)",
    "libc.unshare(0x10000000 | 0x00020000) == 0 or sys.exit('unshare: %d' % ctypes.get_errno())",
    "os.write(w, b'x')",
    "os.waitpid(pid, 0)[1] == 0 or sys.exit('writing the maps failed')",
    "[os.dup2(os.open('/dev/null', os.O_RDWR), n) for n in (0, 1, 2)]",
    "os.setresgid(0, 0, 0)",
    "os.setresuid(0, 0, 0)",
    "os.execv(sys.argv[2], sys.argv[2:])",
))


def in_userns(setup: str, hold: str, shape: str = "root") -> str:
    """`setup` (render_setup's) ending in a user namespace of `shape` (USERNS_SHAPES) with a mount
    namespace of its own (propagation unchanged) running `hold` (an absolute path): its mount
    namespace is copied into the user namespace, every mount locked there, covers and what they
    hide with them; the cwd is moved onto the copy."""
    run = f"sh -c 'exec </dev/null >/dev/null 2>&1; exec {hold} 1000000'"
    if shape == "root":
        made = f"unshare -U -r -m --propagation unchanged {run}"
    else:
        inner = (["/usr/bin/unshare", "-U", "-r", "-m", "--propagation", "unchanged"] if shape == "nested" else [])
        made = f"python3 -c \"{_MAKE_USERNS}\" '{_MAPS[shape]}' {' '.join([*inner, hold])} 1000000"
    return setup.replace("exec zdtm-hold\n", f"exec {made} </dev/null >/dev/null 2>&1\n")


def scenario(setup: str, timeout: float, name: str = "random_tree", expect: dict | None = None) -> Scenario:
    """A Scenario object for a rendered setup (ns flavor, the shared CHECK)."""
    return Scenario(path=f"<zdtm/randomtree.py:{name}>", name=name, params={},
                    description="random mount operations", setup=setup, check=CHECK, requires=Requires(),
                    expect=expect or {"*": Expectation("pass")}, flavors=("ns",), timeout=timeout, iters=1)
