"""The guest's item server: one interpreter that imports the item path once and forks a child per item.

Under TCG a fresh `python -m zdtm.item WORKDIR` costs 8-11 s before the item
begins (interpreter start-up with site-packages' .pth hooks, then importing
zdtm and jinja2 over 9p, all emulated): as much as the four phases of a small
scenario. The server pays that once per VM:

    agent job 1 (vm flavor, first item)   python -m zdtm.itemserver DIR &   imports, makes DIR/req, DIR/pid
    agent job N (each item)               sh: mkfifo DIR/done.$$; echo "$$ DIR/done.$$ WORKDIR" > DIR/req
                                              read STATUS < DIR/done.$$; exit STATUS
    server                                fork: the child is `python -m zdtm.item WORKDIR` (zdtm.item.main)
                                          with the job's stdout/stderr; "STATUS" into DIR/done.$$

Each item still runs in a process of its own that exits after it (a crash or
a leaked fd ends with the item), started from a process that ran nothing but
imports: the module state a child starts with is what importing makes.
`client_script` is the job's shell text; `main` is the server.
"""

from __future__ import annotations

import os
import shlex
import sys
import traceback

REQUESTS = "req"
PIDFILE = "pid"
# What `python -m zdtm.item` imports before and while running an item, and the engine verbs the
# item forks (zdtm/freshfork.py: each child starts with its verb loaded); the rest is imported on
# use, in the child, as before.
PRELOAD = ("zdtm.item", "zdtm.flavors.ns", "zdtm.cycle", "zdtm.scenario", "zdtm.backends", "engine.cli",
           "engine.dump", "engine.restore")


def start_script(python: str, rundir: str) -> str:
    """Shell text (an agent job) that starts the server in `rundir` and returns once it serves.

    Its log is rundir/log; exit 125 with the log's tail when the server dies or
    has not made its request fifo within `wait` seconds.
    """
    d, py = shlex.quote(rundir), shlex.quote(python)
    return (f"mkdir -p {d} && rm -f {d}/{REQUESTS} {d}/{PIDFILE} || exit 125\n"
            f"{py} -m zdtm.itemserver {d} </dev/null >{d}/log 2>&1 &\n"
            f"while [ ! -p {d}/{REQUESTS} ]; do\n"
            f"  kill -0 $! 2>/dev/null || {{ tail -n 5 {d}/log >&2; exit 125; }}\n"
            f"  sleep 0.1\n"
            f"done\n")


def client_script(rundir: str, workdir: str) -> str:
    """Shell text (an agent job) that has the server run the item in `workdir`; exits with its status.

    Exit 125 with one line on stderr when no server is running, or when it dies during the item.
    """
    d, wd = shlex.quote(rundir), shlex.quote(workdir)
    # shell builtins where they do (each exec costs ~0.1 s under TCG)
    # a killed server may stay a zombie for a while (kill -0 succeeds on one): read its state
    return (f"s=; {{ read p < {d}/{PIDFILE} && while read k s _; do [ \"$k\" = State: ] && break; done "
            f"< /proc/$p/status; }} 2>/dev/null\n"
            f"case \"$s\" in ''|Z) echo 'the item server in the VM is not running' >&2; exit 125 ;; esac\n"
            f"f={d}/done.$$; mkfifo \"$f\" || exit 125\n"
            f"echo \"$$ $f \"{wd} > {d}/{REQUESTS}\n"
            # EOF without a status: the server (which holds the writing end through the item) died
            f"read st < \"$f\"; rm -f \"$f\"\n"
            f"[ -n \"$st\" ] || {{ echo 'the item server in the VM died during the item' >&2; exit 125; }}\n"
            f"exit \"$st\"\n")


def _child(client_pid: str, workdir: str, keep_closed: list[int]) -> int:
    """In the forked child: take the client job's stdout/stderr, then run the item as zdtm.item.main."""
    for fd in keep_closed:
        os.close(fd)
    for n in (1, 2):
        fd = os.open(f"/proc/{client_pid}/fd/{n}", os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, n)
        os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    sys.argv = [sys.argv[0], workdir]
    from zdtm import item
    return item.main([workdir])


def serve_one(line: str, keep_closed: list[int]) -> None:
    """Run the request `line` ("CLIENT_PID DONE_FIFO WORKDIR") in a child; its exit status into DONE_FIFO."""
    client_pid, done, workdir = line.split(" ", 2)
    # Held through the item (the client opens its end right after its request): if this server
    # dies, the client's read sees EOF at once instead of waiting out the job's timeout.
    out = os.open(done, os.O_WRONLY)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(client_pid, workdir, [*keep_closed, out])
        except BaseException:  # noqa: BLE001 - the child must never return into the server's loop
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with os.fdopen(out, "w") as f:
        f.write(f"{128 - code if code < 0 else code}\n")


def main(argv: list[str]) -> int:
    """`python -m zdtm.itemserver RUNDIR`: import the item path, then serve RUNDIR/req until killed."""
    if len(argv) != 1:
        print("usage: python3 -m zdtm.itemserver RUNDIR", file=sys.stderr)
        return 2
    import importlib
    import signal
    # Started in the background by a non-interactive shell, which ignores SIGINT and SIGQUIT for it;
    # the children get what a foreground `python -m zdtm.item` has (ignored signals survive exec).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    for name in PRELOAD:
        importlib.import_module(name)
    # Every filesystem type module too (through engine.fs, which notes what each registers): an
    # item's snapshots, dump and restore import those they meet, ~0.1-0.2 s each under TCG.
    from engine import fs
    fs.load()
    rundir = argv[0]
    req = os.path.join(rundir, REQUESTS)
    os.mkfifo(req + ".new")
    # read-write: the server is always a writer too, so a client closing its end is no EOF
    fd = os.open(req + ".new", os.O_RDWR)
    with open(os.path.join(rundir, PIDFILE), "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(req + ".new", req)  # the starter waits for this name: it appears when the server reads
    print(f"item server {os.getpid()} ready", flush=True)
    with os.fdopen(fd, "r", buffering=1) as requests:
        for line in requests:
            if line.strip():
                serve_one(line.rstrip("\n"), [fd])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
