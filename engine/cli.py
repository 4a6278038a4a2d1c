"""The `mntcr` command line: dump | restore | show | diff | check | vm | report.

Each verb parses its arguments here and calls one function of the module that
owns the concept; errors reach the user as one line on stderr and exit 2
(`diff` exits 1 when the trees differ).
"""

from __future__ import annotations

import gc
import os
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import sys

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2

# What command() runs: run() below, as an installed console script would (`-m engine.cli` goes
# through runpy, importlib.util and importlib.machinery first: ~4.4 M instructions, ~1 ms, a verb).
LAUNCH = "from engine.cli import run; run()"


def command(*args: str) -> list[str]:
    """argv that runs this CLI in a fresh interpreter, for callers that put the project on PYTHONPATH
    (the runner, benchmarks). The engine needs only the standard library, so `-S` skips site-packages'
    start-up hooks (.pth files: ~40 ms of CPU per run on the test machine)."""
    return [interpreter(), "-S", "-c", LAUNCH, *args]


# bin/mntcr's interpreter. The distribution's is built with profile-guided and link-time
# optimisation; a version manager's default build (pyenv: -O2, a shared libpython) runs ~25% more
# instructions for the same verb (callgrind: `python -S -c 'import engine.cli, engine.restore'`
# 139 M against 111 M), and the runner and the benchmarks run under such a build.
SYSTEM_PYTHON = "/usr/bin/python3"


def interpreter() -> str:
    """The interpreter command() starts: bin/mntcr's (SYSTEM_PYTHON) when it is this Python's
    version (the same byte code and standard library; the engine needs nothing else), else this one."""
    want = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.path.basename(os.path.realpath(SYSTEM_PYTHON)) == want and os.access(SYSTEM_PYTHON, os.X_OK):
        return SYSTEM_PYTHON
    return sys.executable


def run() -> None:
    """`mntcr` as a program (command(), `python -m engine.cli`): main() on sys.argv, then exit."""
    # Ctrl-C before main() takes over (while modules load): nothing was done yet; one line, no traceback.
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("mntcr: interrupted: nothing was done\n"),
                                             os._exit(130)))
    sys.exit(main())


class UsageError(Exception):
    """A problem the user can fix: printed as one line, exit 2."""


def _add_dump(sub) -> None:
    p = sub.add_parser(
        "dump", help="dump the mount namespaces of a process tree into an image directory",
        description="Dump every mount namespace of the process tree rooted at PID (mounts, peer groups, "
                    "masters, overmounts, tmpfs contents, overlay layers) and each process's root, cwd and "
                    "open files into DIR, then kill the tree unless --leave-running. The image is written "
                    "to a temporary directory and renamed into place, so a failed or killed dump never "
                    "leaves an image that restore accepts. Filesystems: tmpfs and ramfs (contents archived), "
                    "proc, sysfs, devpts, mqueue, cgroup2, cgroup (v1 hierarchies: mounted again, their cgroups' limits "
                    "and members not restored), devtmpfs (the host's, mounted again), binfmt_misc (a user namespace's "
                    "own instance with its registered formats), bpf, configfs, debugfs, tracefs, "
                    "securityfs, pstore, fusectl, hugetlbfs, nfsd, overlay (layers on dumped mounts), block "
                    "filesystems ext2, ext3, ext4, xfs, btrfs, squashfs, erofs, vfat, exfat, f2fs (a loop device over "
                    "a dumped image file is found automatically, any other device must be declared external), "
                    "nfs and nfs4 (external server), FUSE (its daemon is neither stopped nor dumped: restore "
                    "restarts it with --fuse-restart), nsfs (a namespace of the tree bound on a file, `ip netns add`, "
                    "`unshare --mount=PATH`, flatpak's /run/.userns: bound again to the restored one; a network namespace only the bind keeps is made afresh). "
                    "Also files and cwds on lazily unmounted mounts, deleted "
                    "files (ghosts), user namespaces (maps, owners, locked and idmapped mounts), System V IPC objects "
                    "of the tree's ipc namespaces (shared memory, semaphores, message queues) and its POSIX message "
                    "queues, and fds: "
                    "files, directories, O_PATH, pipes and FIFOs (with buffered data), unix sockets (with queued "
                    "data), netlink sockets (restored empty), inet sockets (TCP, UDP; unbound, bound, listening, "
                    "TCP connections between processes of the tree, established or half-closed, waiting to be accepted; "
                    "UDP with datagrams waiting; ICMP ping sockets with echo replies waiting; raw sockets of any protocol; classic BPF socket filters) and packet sockets (AF_PACKET: protocol, bound device by name, options, filter) of the tree's own network namespace, tun/tap fds (/dev/net/tun attached to a tun or tap device of the tree's network namespace, kept with it), /dev/tty, nsfs (fds on the tree's namespaces), "
                    "pidfd (of the tree's processes), eventfd, "
                    "signalfd, timerfd, epoll, inotify, fanotify, memfd, ptys, plus each process's executable, "
                    "file mappings and threads (by name: what they run is not restored). Refused with one line naming the cause, the tree left running: other "
                    "filesystems, TCP connections mid-handshake or to a closed socket, inet sockets of the host's network namespace, other network "
                    "sockets, the cases IMAGE.md "
                    "lists as refusals.")
    p.add_argument("-t", "--tree", dest="pid", type=int, required=True, metavar="PID",
                   help="root of the process tree to dump")
    p.add_argument("-D", "--images-dir", dest="images_dir", required=True, metavar="DIR",
                   help="image directory to create (must not exist, or be empty)")
    p.add_argument("--leave-running", action="store_true", help="do not kill the tree after dumping")
    p.add_argument("--shell-job", action="store_true",
                   help="accept processes whose controlling terminal is that of a session led outside the tree "
                        "(a tree started as a job from an interactive shell): the terminal is left behind and "
                        "they come back without one (dump notes each); without it such a tree is refused")
    p.add_argument("--external", action="append", default=[], metavar="SPEC",
                   help="mnt[MOUNTPOINT]:KEY declares the mount at MOUNTPOINT (in the root process's "
                        "namespace) external: it is recorded by KEY and not dumped; dev[MAJ:MIN]:KEY "
                        "declares a block device external; file[PATH]:KEY declares the file PATH (as "
                        "/proc/PID/fd shows it) that processes hold open external: recorded by KEY with its "
                        "flags and offset, reopened at restore from the host path given for KEY; pipe[INODE]:KEY "
                        "declares the pipe pipe:[INODE] whose other end a process outside the tree holds (a "
                        "harness reading the tree's output), recorded by KEY as such a file; veth[NAME]:KEY "
                        "declares the veth NAME of the tree whose peer is outside it (a container's eth0): "
                        "recorded by KEY, made again at restore with its outer end where veth[KEY] says. Repeatable.")


def _add_restore(sub) -> None:
    p = sub.add_parser(
        "restore", help="restore an image into fresh namespaces with stand-in processes",
        description="Recreate the dumped mount namespaces with the new mount API (open_tree, move_mount "
                    "with MOVE_MOUNT_SET_GROUP, fsopen/fsmount, mount_setattr) and one stand-in process per "
                    "dumped process, with the same root, cwd and fds. The stand-ins sleep until killed. "
                    "Nothing is built in a namespace that existed before: if restore dies, nothing is left "
                    "mounted.")
    p.add_argument("-D", "--images-dir", dest="images_dir", required=True, metavar="DIR")
    p.add_argument("--root", metavar="DIR",
                   help="host directory to use as the dumped root mount when that mount came from outside "
                        "the namespace (like criu's --root); not needed when the root was created inside")
    p.add_argument("--external", action="append", default=[], metavar="SPEC",
                   help="mnt[KEY]:HOSTPATH gives the host path for the external mount recorded as KEY; "
                        "dev[KEY]:PATH gives a block device (or an image file, attached to a loop device) "
                        "for the external device KEY; file[KEY]:HOSTPATH gives the file to open for the "
                        "external file KEY (for a pipe declared pipe[INODE]:KEY at dump: a file, a FIFO some "
                        "process reads or writes, or /proc/self/fd/N of a pipe restore inherits); "
                        "veth[KEY]:OUTER[@BRIDGE] makes the outer end of the external veth KEY "
                        "in restore's own network namespace, named OUTER, attached to the bridge BRIDGE when given "
                        "(the only device restore makes outside the tree's namespaces). Repeatable.")
    p.add_argument("--fuse-restart", action="append", default=[], metavar="SUBTYPE=COMMAND",
                   help="the command that serves FUSE superblocks of fstype fuse.SUBTYPE ('fuse' for none) "
                        "again: restore makes the superblock on a new /dev/fuse connection and runs COMMAND "
                        "(split like sh words, no shell) with {conn} replaced by /dev/fd/N of the connection "
                        "(its mount point: libfuse >= 3.3) and {source} by /proc/self/fd/M of the superblock's "
                        "source file restored from the image, e.g. squashfuse='squashfuse -f {source} {conn}'. "
                        "Never taken from the image. Repeatable.")
    p.add_argument("--allow-idmap", action="append", default=[], metavar="EXTERNAL",
                   help="mnt[KEY], dev[KEY], fuse[KEY] (a --fuse-restart daemon's) or root (--root): let the "
                        "image's idmapped mounts show the host files of that external with other owners (a map "
                        "0 -> U makes uid U their owner through the mount). Without it restore refuses such an "
                        "idmap, naming the mount, the host path and the map; one of ids onto themselves needs "
                        "none. Only for images you trust. Repeatable.")
    p.add_argument("--pidfile", metavar="FILE",
                   help="also write the root stand-in's pid here (must not exist; written only when the whole "
                        "tree runs, else nothing of the restore is left); the pid is printed either way")
    p.add_argument("--devices", choices=("container", "all", "none"), default="container",
                   help="device nodes archives may create: 'container' (default) the character devices "
                        "every container has (null, zero, full, random, urandom, tty, ptmx), "
                        "'all' whatever the image holds and the host's devtmpfs, debugfs, tracefs... "
                        "(only for images you trust), 'none' no device node")


def _add_show(sub) -> None:
    p = sub.add_parser(
        "show", help="print a mount tree with propagation annotated",
        description="Print a mount tree like findmnt, annotated with peer groups (shared:N), masters "
                    "(master:N), propagate_from and unbindable. SOURCE is pid:N, a mountinfo file, or "
                    "-D DIR for an image (tree, peer groups and each process's fds).")
    p.add_argument("source", nargs="?", metavar="SOURCE", help="pid:N or a mountinfo file")
    p.add_argument("-D", "--images-dir", dest="images_dir", metavar="DIR", help="show an image directory")


def _add_diff(sub) -> None:
    p = sub.add_parser(
        "diff", help="compare two mount trees up to renumbering",
        description="Compare two mount trees in canonical form (mount ids, peer-group ids and devices "
                    "renamed by first appearance, siblings sorted). Prints a tree marking each mount and "
                    "attribute that differs. Exit status: 0 equal, 1 different, 2 error.")
    p.add_argument("a", metavar="A", help="pid:N, a mountinfo file, or an image directory (its root process's mount namespace)")
    p.add_argument("b", metavar="B", help="the same kinds as A")


def _add_check(sub) -> None:
    sub.add_parser(
        "check", help="report the kernel features the engine needs",
        description="Probe, without changing anything on the host, each kernel feature the engine uses "
                    "(open_tree, move_mount, MOVE_MOUNT_SET_GROUP, fsopen/fsmount, mount_setattr, "
                    "statmount/listmount, STATX_MNT_ID_UNIQUE, open_tree of detached mounts) and print "
                    "present/missing for each, like `criu check`, then the strategy chosen from them (which "
                    "primitive carries out each kernel-dependent step; MNTCR_STRATEGY forces axes for tests). "
                    "Exit 0 when everything restore needs is present, 2 otherwise.")


def _formatter():
    """argparse's help formatter, told the terminal's width: left to find it, it imports shutil
    (and zlib, bz2, lzma with it) because argparse makes a formatter for every argument it adds.
    (A class made on first use: argparse is imported only when a command line needs it, engine/cliargs.py.)"""
    import argparse

    class _Formatter(argparse.HelpFormatter):
        def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
            if width is None:
                width = _columns() - 2   # as argparse does
            super().__init__(prog, indent_increment, max_help_position, width)

    return _Formatter


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it: $COLUMNS, stdout's tty, else 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


_ADDERS = {"dump": _add_dump, "restore": _add_restore, "show": _add_show, "diff": _add_diff, "check": _add_check}


def build_parser(extras: bool = True, only: str | None = None):
    """The full argument parser (also used by tests to check --help); without `extras`, only the
    engine's own verbs (the vm and report verbs import much of the runner: ~0.2 s of a dump);
    with `only` (an engine verb), that verb alone (each verb's parser and help text cost a few ms
    of every dump and restore)."""
    import argparse
    import functools
    formatter = _formatter()
    parser = argparse.ArgumentParser(
        prog="mntcr", formatter_class=formatter,
        description="Checkpoint/restore of Linux mount namespaces (the mounts-v2 way).")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=formatter))
    for verb, add in _ADDERS.items():
        if only is None or verb == only:
            add(sub)
    if not extras or only is not None:
        return parser
    try:
        from vm.cli import add_parser as add_vm
    except ImportError:
        add_vm = None
    if add_vm is not None:
        add_vm(sub)
    try:
        from zdtm.report_merge import add_parser as add_report
    except ImportError:
        add_report = None
    if add_report is not None:
        add_report(sub)
    return parser


def _settled() -> None:
    """The verb's modules are loaded: collect again from here on, sparing what they made.

    main() turns the cyclic garbage collector off while the modules load: the classes, functions
    and tables they make live until exit, and the collections the allocations would trigger
    re-examine them again and again (~5-10% of a small dump's or restore's CPU time). Frozen
    (moved out of the collector's sight), they cost later collections nothing, and the pages
    that hold them stay shared with the helpers dump and restore fork (a collection in a child
    would write to every object's header: a copy-on-write fault per page).
    """
    if _program:
        gc.freeze()
    gc.enable()


def _cmd_diff(args) -> int:
    from engine import topology
    _settled()
    a, b = _mounts_of(args.a), _mounts_of(args.b)
    equal, text = topology.diff_report(a, b, names=(args.a, args.b))
    sys.stdout.write(text)
    return EXIT_OK if equal else EXIT_DIFFERENT


def _mounts_of(spec: str) -> list:
    """The mounts `mntcr diff` compares: pid:N, a mountinfo file, or an image directory (the mount
    namespace of its root process, as restore makes it)."""
    import os
    from engine import mountinfo
    if not spec.startswith("pid:") and os.path.isdir(spec):
        from engine import image
        doc = image.load(spec)
        return image.to_mounts(doc, doc["processes"][0]["ns"]["mnt"])
    return mountinfo.read_source(spec)


def _cmd_show(args) -> int:
    if args.images_dir:
        if args.source:
            raise UsageError("show: give either SOURCE or -D DIR, not both")
        from engine import image
        _settled()
        sys.stdout.write(image.render(image.load(args.images_dir)))
        return EXIT_OK
    if not args.source:
        raise UsageError("show: give SOURCE (pid:N or a mountinfo file) or -D DIR")
    from engine import mountinfo, topology
    _settled()
    sys.stdout.write(topology.render_tree(mountinfo.read_source(args.source)))
    return EXIT_OK


def _cmd_check(args) -> int:
    import os
    from engine import features, strategy
    _settled()
    override = os.environ.get(strategy.ENV, "")
    strategy.parse_override(override)  # a bad override: one line, before any probing
    report = features.probe()
    sys.stdout.write(features.render(report))
    chosen, forced = strategy.choose({f.name: f.present for f in report}, override)
    sys.stdout.write(chosen.render(forced))
    return EXIT_OK if features.restore_ready(report) else EXIT_ERROR


def _cmd_dump(args) -> int:
    from engine import filelocks, kernel
    kernel.check_own_proc()
    kernel.check_host_root("dump")
    filelocks.read_early()   # (its kernel wait overlaps the imports: engine/filelocks.py)
    try:
        from engine import dump
        _settled()
        dump.dump(args.pid, args.images_dir, leave_running=args.leave_running, externals=args.external,
                  shell_job=args.shell_job)
    finally:
        filelocks.forget_early()
    return EXIT_OK


def _cmd_restore(args) -> int:
    # (imageformat: image.load validates every image with it; loaded here, its ~200 records are
    # frozen with the other modules' objects, never walked by a collection)
    from engine import imageformat, kernel, restore  # noqa: F401
    kernel.check_own_proc()
    kernel.check_host_root("restore")
    _settled()
    daemons = {}
    if args.fuse_restart:
        # (engine/fs/fuse.py splits the command in the restorer, where the standard library may be
        # out of reach: loaded here, only for a restore that restarts daemons; shlex imports re)
        import shlex  # noqa: F401
    for spec in args.fuse_restart:
        key, sep, cmd = spec.partition("=")
        if not sep or not key or not cmd.strip():
            raise ValueError(f"--fuse-restart {spec!r}: expected SUBTYPE=COMMAND")
        daemons[key] = cmd
    pid = restore.restore(args.images_dir, root=args.root, externals=args.external, pidfile=args.pidfile,
                          devices=args.devices, daemons=daemons, allow_idmap=args.allow_idmap)
    print(f"restored: root stand-in pid {pid}")
    return EXIT_OK


_COMMANDS = {"diff": _cmd_diff, "show": _cmd_show, "check": _cmd_check, "dump": _cmd_dump,
             "restore": _cmd_restore}


_program = False   # main() runs as the program (not called by a test): freezing is for good


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mntcr` console script."""
    global _program
    _program = argv is None
    args = sys.argv[1:] if argv is None else argv
    gc.disable()   # while the modules load; the verb turns it on again (_settled)
    try:
        code = _main(args)
    finally:
        gc.enable()
    if _program and args and args[0] in _COMMANDS:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End an engine verb without the interpreter's teardown, which frees every module and object
    one by one: after a restore each freed page is still shared copy-on-write with the stand-ins
    (forked from this process's copy), so that teardown copied them (~8 ms of a small restore's
    ~80 ms CPU). The engine leaves no buffered file open and registers no exit hook; the runner's
    verbs (vm, report) may, and exit normally."""
    try:
        for f in (sys.stdout, sys.stderr):
            if f is not None:   # (None: started with that fd closed)
                f.flush()
    except (OSError, ValueError):
        return   # (a closed pipe or file: the normal exit reports it)
    os._exit(code)


def _main(argv: list[str]) -> int:
    # An engine verb parses with its own parser only: dump and restore start fast.
    verb = argv[0] if argv and argv[0] in _COMMANDS else None
    from engine import cliargs
    args = cliargs.parse(argv)   # (a plain dump or restore line: without argparse's ~5 ms)
    if args is None:
        args = build_parser(extras=verb is None, only=verb).parse_args(argv)
    handler = _COMMANDS.get(args.verb) or getattr(args, "handler", None)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on: KeyboardInterrupt below
        return handler(args)
    except UsageError as e:
        print(f"mntcr {args.verb}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as e:
        # Every engine error is one line: it names the mount or file and the reason.
        text = e.strerror if isinstance(e, OSError) and e.strerror and not e.filename else str(e)
        from engine.image import printable   # (an image's names in it: no escape sequence reaches the terminal)
        print(f"mntcr {args.verb}: {printable(' '.join(str(text).split()))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        what = "nothing was restored" if args.verb == "restore" else "stopped"
        print(f"mntcr {args.verb}: interrupted: {what}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if os.environ.get("MNTCR_DEBUG"):
            raise
        from engine.image import printable
        text = printable(" ".join(str(e).split())) or type(e).__name__
        print(f"mntcr {args.verb}: internal error: {text} (MNTCR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover - `python -m engine.cli`
    run()
