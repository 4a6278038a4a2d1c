"""Boot-to-result time per provider and kernel (not part of the test run).

    python3 benchmarks/vm_boot.py [--kernels 6.1,7.2] [--providers qemu,vagrant] [--repeat 3] [--box-build]

For each kernel and provider: start a VM, run `uname -r`, destroy it; prints
boot (start -> ready for commands), command, total (start -> result) and
destroy seconds, and the median of the totals. For vagrant also `vagrant up`
alone and one bare ssh round trip over the ControlMaster connection; with
--box-build the box is built once from scratch (into a temporary file, the
cached box is left alone) and that time is printed first. libvirt's daemons
are started if needed and stopped again if this script started them.
Figures depend on the machine's load: print `uptime` along with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vm import matrix  # noqa: E402
from vm.errors import VMError  # noqa: E402
from vm.session import make_vm  # noqa: E402


def measure(kernel: str, provider: str) -> dict:
    """Phase times (seconds) and the guest's uname -r for one throwaway VM."""
    from vm import cache
    # under the cache: the vagrant provider copies results back there; qemu shares it over 9p
    with tempfile.TemporaryDirectory(prefix="bench-", dir=cache.sub("bench")) as res:
        vm = make_vm(kernel, provider, res)
        out = {}
        t0 = time.monotonic()
        try:
            vm.start()
            t1 = time.monotonic()
            r = vm.run(["uname", "-r"], cwd="/")
            t2 = time.monotonic()
            out.update(boot=t1 - t0, cmd=t2 - t1, total=t2 - t0, release=r.stdout.strip())
            if provider == "vagrant":
                out["up"] = vm.up_seconds
                t = time.monotonic()
                vm._ssh("true", timeout=60)
                out["ssh"] = time.monotonic() - t
        finally:
            t3 = time.monotonic()
            vm.close()
            out["destroy"] = time.monotonic() - t3
        return out


def box_build() -> float:
    """Seconds to build the Vagrant box from scratch (debootstrap included) into a temporary file."""
    from vm import cache, vagrant_box
    for base in cache.sub("vagrant").glob("base-*.tar"):
        base.rename(base.with_suffix(".bench-aside"))
    try:
        with tempfile.TemporaryDirectory(dir=cache.sub("vagrant")) as d:
            t0 = time.monotonic()
            vagrant_box.build(Path(d) / "bench.box")
            return time.monotonic() - t0
    finally:
        for aside in cache.sub("vagrant").glob("base-*.bench-aside"):
            if not aside.with_suffix(".tar").exists():
                aside.rename(aside.with_suffix(".tar"))
            else:
                aside.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rows = [n for n, s in matrix.load().items() if not s.is_host]
    ap.add_argument("--kernels", default="5.10,6.1,6.12,7.2", help=f"comma list from: {', '.join(rows)}")
    ap.add_argument("--providers", default="qemu", help="comma list of qemu, vagrant")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--box-build", action="store_true", help="also time one from-scratch box build (vagrant)")
    a = ap.parse_args()
    os.environ.setdefault("MNTCR_QUIET", "1")
    providers = a.providers.split(",")
    started: list[str] = []
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cpus")
    if "vagrant" in providers:
        from vm import libvirt_host, vagrant_box
        started = libvirt_host.ensure_running()
        if a.box_build:
            print(f"vagrant box build from scratch: {box_build():.1f}s", flush=True)
        t0 = time.monotonic()
        vagrant_box.ensure_box()
        print(f"vagrant box ready (cached or built): {time.monotonic() - t0:.1f}s", flush=True)
    try:
        print(f"{'provider':<8} {'kernel':<7} {'guest':<22} {'boot s':>7} {'cmd s':>6} {'total s':>8} "
              f"{'destroy s':>9} {'up s':>6} {'ssh s':>6}")
        for provider in providers:
            for kernel in a.kernels.split(","):
                totals = []
                for _ in range(a.repeat):
                    try:
                        m = measure(kernel, provider)
                    except VMError as e:
                        print(f"{provider:<8} {kernel:<7} error: {e}")
                        break
                    totals.append(m["total"])
                    extra = f"{m['up']:6.2f} {m['ssh']:6.2f}" if "up" in m else ""
                    print(f"{provider:<8} {kernel:<7} {m['release']:<22} {m['boot']:7.2f} {m['cmd']:6.2f} "
                          f"{m['total']:8.2f} {m['destroy']:9.2f} {extra}", flush=True)
                if totals:
                    print(f"{provider:<8} {kernel:<7} median total {statistics.median(totals):.2f}s over {len(totals)}")
    finally:
        if started:
            from vm import libvirt_host
            libvirt_host.stop(started)
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
