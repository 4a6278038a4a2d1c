"""Boot-to-result time per provider and kernel (not part of the test run).

    python3 benchmarks/vm_boot.py [--kernels 6.1,7.2] [--providers qemu] [--repeat 3]

For each kernel and provider: start a VM, run `uname -r`, destroy it; prints
boot (start -> agent ready), command, and total (start -> result) seconds, and
the median of the totals.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vm import matrix  # noqa: E402
from vm.errors import VMError  # noqa: E402
from vm.session import make_vm  # noqa: E402


def measure(kernel: str, provider: str) -> tuple[float, float, float, str]:
    """(boot, command, total) seconds and the guest's uname -r for one throwaway VM."""
    with tempfile.TemporaryDirectory(prefix="mntcr-bench-") as res:
        vm = make_vm(kernel, provider, res)
        t0 = time.monotonic()
        try:
            vm.start()
            t1 = time.monotonic()
            r = vm.run(["uname", "-r"], cwd="/")
            t2 = time.monotonic()
        finally:
            vm.close()
        return t1 - t0, t2 - t1, t2 - t0, r.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rows = [n for n, s in matrix.load().items() if not s.is_host and s.nine_p]
    ap.add_argument("--kernels", default="5.10,6.1,6.12,7.2", help=f"comma list from: {', '.join(rows)}")
    ap.add_argument("--providers", default="qemu", help="comma list of qemu, vagrant")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("MNTCR_QUIET", "1")
    print(f"{'provider':<8} {'kernel':<7} {'guest':<22} {'boot s':>7} {'cmd s':>6} {'total s':>8}  (median total)")
    for provider in a.providers.split(","):
        for kernel in a.kernels.split(","):
            totals = []
            for _ in range(a.repeat):
                try:
                    boot, cmd, total, rel = measure(kernel, provider)
                except VMError as e:
                    print(f"{provider:<8} {kernel:<7} error: {e}")
                    break
                totals.append(total)
                print(f"{provider:<8} {kernel:<7} {rel:<22} {boot:7.2f} {cmd:6.2f} {total:8.2f}", flush=True)
            if totals:
                print(f"{provider:<8} {kernel:<7} median total {statistics.median(totals):.2f}s over {len(totals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
