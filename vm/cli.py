"""`mntcr vm run|kernels`: registered on engine/cli.py's parser by add_parser()."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from vm import kernels, matrix, session
from vm.errors import VMError

EXIT_ERROR = 2


def add_parser(subparsers) -> None:
    """Register the `vm` verb with its sub-verbs `run` and `kernels`."""
    p = subparsers.add_parser(
        "vm", help="run commands in a throwaway VM with a chosen kernel",
        description="Throwaway VMs booting a kernel of the matrix (vm/kernels.toml). Kernels are fetched "
                    "from Debian's archive into the cache ($MNTCR_CACHE or ~/.cache/mntcr) on first use.")
    vsub = p.add_subparsers(dest="vm_verb", metavar="SUBVERB", required=True)
    r = vsub.add_parser(
        "run", help="run CMD as root in a throwaway VM, print its output, exit with its status",
        description="Boot kernel NAME, run CMD as root inside with the host's / visible read-only "
                    "(writes go to a RAM overlay) and the current directory as working directory, print "
                    "CMD's output and exit with its status. --results DIR is shared writable at the same "
                    "path; it is the only place the VM can write to on the host.")
    r.add_argument("--kernel", required=True, metavar="NAME", help="a name from `mntcr vm kernels`")
    r.add_argument("--provider", choices=session.PROVIDERS, default=session.DEFAULT_PROVIDER,
                   help="qemu: direct kernel boot (fast, default); vagrant: the libvirt box")
    r.add_argument("--accel", choices=("kvm", "tcg"), default=None,
                   help="force the accelerator (default: MNTCR_VM_ACCEL, else KVM when a probe boot works)")
    r.add_argument("--results", metavar="DIR", help="writable share (default: a temporary directory)")
    r.add_argument("--timeout", type=float, default=600.0, metavar="SEC", help="limit for CMD (default 600)")
    r.add_argument("--boot-timeout", type=float, default=120.0, metavar="SEC", help="limit for the boot")
    r.add_argument("--memory", type=int, default=1024, metavar="MB", help="guest memory (default 1024)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    r.set_defaults(handler=cmd_run)
    k = vsub.add_parser("kernels", help="the kernel matrix and what is cached",
                        description="List the kernels of vm/kernels.toml, their Debian suite and package, "
                                    "and the cached version (with --fetch NAME, download it now).")
    k.add_argument("--fetch", metavar="NAME", action="append", default=[],
                   help="fetch this kernel into the cache ('all' for every row); repeatable")
    k.set_defaults(handler=cmd_kernels)


def _error(msg: str) -> int:
    print(f"mntcr vm: {msg}", file=sys.stderr)
    return EXIT_ERROR


def cmd_kernels(args) -> int:
    """Print the matrix with the cached version of each kernel; fetch on request."""
    try:
        rows = matrix.load()
        names = list(rows) if "all" in args.fetch else args.fetch
        for n in names:
            if n not in rows:
                return _error(f"unknown kernel {n!r}; the matrix has: {', '.join(rows)}")
            if not rows[n].is_host:
                kernels.ensure(rows[n])
    except (VMError, ValueError, OSError) as e:
        return _error(str(e))
    print(f"{'NAME':<10} {'SUITE':<19} {'PACKAGE':<24} {'CACHED':<24} NOTES")
    for name, spec in rows.items():
        if spec.is_host:
            cached = os.uname().release + " (running)"
        else:
            k = kernels.cached(name)
            cached = k.version if k else "-"
        notes = spec.description + ("" if spec.nine_p else " [vagrant only]")
        print(f"{name:<10} {spec.suite or '-':<19} {spec.package or '-':<24} {cached:<24} {notes}")
    return 0


def cmd_run(args) -> int:
    """Run args.cmd in a throwaway VM; stream its output; return its exit status."""
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        return _error("run: give the command after --, e.g. mntcr vm run --kernel 6.1 -- uname -r")
    own_results = args.results is None
    results = args.results or tempfile.mkdtemp(prefix="mntcr-vm-results-")

    def show(stream: str, data: bytes) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data)
        out.flush()

    try:
        with session.open_vm(args.kernel, args.provider, results, memory_mb=args.memory,
                             boot_timeout=args.boot_timeout, accel=args.accel) as vm:
            r = vm.run(cmd, cwd=os.getcwd(), timeout=args.timeout, on_output=show)
        return r.status
    except (VMError, ValueError, OSError) as e:
        return _error(str(e))
    finally:
        if own_results:
            shutil.rmtree(results, ignore_errors=True)
