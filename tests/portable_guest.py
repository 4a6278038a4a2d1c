"""Both ends of a C/R across kernels: run as a program inside a throwaway VM (`dump` or `restore`
there, into or from a directory the host shares), imported by tests/test_portable_kernels.py for
the host's end. The snapshot of the dumped tree travels as a pickle beside the image.

    python tests/portable_guest.py dump DIR CAPBND     # DIR/setup.sh, DIR/check.sh -> DIR/img, DIR/state.pkl
    python tests/portable_guest.py restore DIR         # DIR/img, DIR/state.pkl: restore and compare

What two machines may rightly show differently is left out of the comparison (`comparable`):
the external mounts' superblocks (each machine gives its own /usr and /etc) and a CPU affinity
that was every CPU of the dumper's (restored as every CPU of the restorer's: engine/schedattrs.py).
"""

from __future__ import annotations

import copy
import ctypes
import os
import pickle
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from enginecase import EngineCase, assert_same, take  # noqa: E402  (after the path)

EXTERNAL_MOUNTS = ("/usr", "/etc")   # enginecase's externals: the host's own binds
_AFFINITY = re.compile(r"cpus_allowed_list=\S+ ?")
# Superblock options whose default or display differs between kernels (zdtm/holder.py zdtm_kopts: overlay's
# uuid=on that 6.18 shows for the default 6.1 shows nothing for, tmpfs's inode64 of some configurations).
_KERNEL_OPTS = re.compile(r"^((uuid|redirect_dir|index|xino|metacopy|nfs_export|errors)=[a-z]*|inode(64|32))\Z")
PR_CAPBSET_DROP = 24


def comparable(state, externals: tuple[str, ...] = EXTERNAL_MOUNTS):
    """A copy of an enginecase State without what differs between machines by design: the
    superblock and root of the external mounts at `externals` (the host's own, given by the user),
    superblock options kernels show differently for their defaults, and a CPU affinity of every CPU."""
    from engine import topology
    from engine.records import replace
    state = copy.deepcopy(state)
    for p in state.snap.procs:
        p.bits = _AFFINITY.sub("", p.bits)
        # each external its own made-up superblock: which device, type, options and directory it has is the machine's
        p.mounts = [replace(m, fstype="external", source=m.mountpoint, super_opts=(), major=0, root="/",
                            minor=1 + externals.index(m.mountpoint))
                    if m.mountpoint in externals else
                    replace(m, super_opts=tuple(o for o in m.super_opts if not _KERNEL_OPTS.match(o)))
                    for m in p.mounts]
        p.tree_text = topology.canonical(p.mounts).text
    return state


def drop_bounding_caps(keep: int) -> None:
    """Drop from this process's bounding set every capability not in `keep` (the restoring host's
    CapBnd): the dumped tree then holds no capability the restorer cannot give (a real limit,
    refused by restore: tests/test_portable_hosts.py)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if not keep >> cap & 1 and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")   # (EINVAL: past the last capability)


def dump_into(case: EngineCase, d: str) -> None:
    """Start d/setup.sh, snapshot it (d/state.pkl, with d/check.sh) and dump it into d/img."""
    with open(os.path.join(d, "setup.sh")) as f:
        setup = f.read()
    with open(os.path.join(d, "check.sh")) as f:
        check = f.read()
    pid = case.start(setup, timeout=300)
    state = take(pid, check)
    with open(os.path.join(d, "state.pkl"), "wb") as f:
        pickle.dump(state, f)
    case.dump(pid, os.path.join(d, "img"))


def restore_from(case: EngineCase, d: str) -> int:
    """Restore d/img and assert it equals the snapshot in d/state.pkl (up to `comparable`); the root pid."""
    with open(os.path.join(d, "state.pkl"), "rb") as f:
        before = pickle.load(f)
    with open(os.path.join(d, "check.sh")) as f:
        check = f.read()
    pid = case.restore(os.path.join(d, "img"))
    assert_same(comparable(before), comparable(take(pid, check)))
    return pid


def main(argv: list[str]) -> int:
    verb, d = argv[0], argv[1]
    work = os.path.join(d, f"work-{verb}")
    os.makedirs(work, exist_ok=True)
    if verb == "dump":
        drop_bounding_caps(int(argv[2], 16))
    case = EngineCase(work)
    try:
        (dump_into if verb == "dump" else restore_from)(case, d)
    finally:
        case.close()
    print(f"{verb} done on Linux {os.uname().release}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
