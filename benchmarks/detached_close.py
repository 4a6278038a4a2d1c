"""What letting go of a detached mount costs: a plain close against engine/parking.py's batches.

    python benchmarks/detached_close.py [--mounts N] [--rounds R]

In a throwaway private mount namespace, N times: a new tmpfs (fsmount), a clone of it attached
beneath a scratch tmpfs (as restore does), then the superblock's own detached mount let go of:
closed (each close unmounts it and waits for an RCU grace period), or dropped into a
parking.Parking chain (flushed at the end, inside the timing). Prints microseconds per mount
for each way, rounds interleaved; wall time of the let-go step alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import forkrun, kernel, parking  # noqa: E402


def _run(n: int, stack: bool | None) -> float:
    """Seconds spent letting go of n superblock mounts (None: plain close)."""
    base = kernel.scratch_tmpfs()
    park = parking.Parking(bool(stack))
    spent = 0.0
    for i in range(n):
        sb = kernel.scratch_tmpfs()
        clone = kernel.open_tree(sb, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
        os.mkdir(str(i), dir_fd=base)
        kernel.move_mount(clone, "", base, str(i), kernel.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(clone)  # attached: no unmount
        t = time.perf_counter()
        if stack is None:
            os.close(sb)
        else:
            park.drop(sb)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    park.flush()
    spent += time.perf_counter() - t
    os.close(base)
    return spent


def main(argv=None) -> int:
    """Print the cost per mount of each way, --rounds times."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mounts", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/detached_close.py: needs root (mount namespaces)", file=sys.stderr)
        return 2
    for r in range(args.rounds):
        close = forkrun.in_mount_ns(_run, args.mounts, None)
        batched = forkrun.in_mount_ns(_run, args.mounts, True)
        print(f"round {r + 1}: close {close / args.mounts * 1e6:.1f} us/mount, "
              f"parking {batched / args.mounts * 1e6:.1f} us/mount ({args.mounts} mounts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
