"""A tree that forks while dump looks at it (engine/freeze.py `settle`): a shell loop starts its
next command between dump's look at the tree and its stop. Until session 24 dump refused such a
tree now and then ("has exited while the dump began: dump again"), and a command forked in that
window was neither stopped nor dumped; now the tree is looked at again once stopped, the new
process stopped and dumped, the one that exited dumped as the zombie it is."""

from __future__ import annotations

import json
import os

from enginecase import case  # noqa: F401  (fixture)
from enginecase import DUMP_EXTERNALS, mntcr

LOOP = "exec sh -c 'while :; do sleep 0.02; done' </dev/null >/dev/null 2>&1\n"


def test_shell_loop_dumped_every_time(case):
    """`while :; do sleep 0.02; done`: a dump's look at the tree takes longer than a sleep lives, so
    the child it saw has exited by the stop and another runs: every dump succeeds, and the image
    holds the loop and only its own children (live or zombie), each once."""
    pid = case.start(LOOP, daemons=("sh", "sleep"))
    for n in range(8):
        images = case.new_images_dir()
        r = mntcr("dump", "-t", str(pid), "-D", images, "--leave-running", *DUMP_EXTERNALS)
        assert r.returncode == 0, f"dump {n}: {r.stderr}"
        with open(os.path.join(images, "mntcr.json")) as f:
            doc = json.load(f)
        procs = [p["pid"] for p in doc["processes"]]
        zombies = [(z["pid"], z["ppid"]) for z in doc.get("zombies") or ()]
        assert procs[0] == pid and len(procs) <= 2, procs
        assert len(procs) + len(zombies) == len(set(procs) | {z for z, _ in zombies}), (procs, zombies)
        assert all(ppid == pid for _, ppid in zombies), zombies
    restored = case.cr(pid)
    with open(f"/proc/{restored}/comm") as f:
        assert f.read().strip() == "sh"


def test_dump_from_inside_the_tree_refused(tmp_path):
    """`mntcr dump -t $$` run by a shell of the tree: dump would stop itself and hang (it did until
    session 24); it refuses in one line instead, the tree left running."""
    import subprocess
    import sys
    from enginecase import ENGINE_ROOT
    images = str(tmp_path / "images")
    script = (f'sleep 1000 & echo $! > {tmp_path}/sleep; '
              f'PYTHONPATH={ENGINE_ROOT} {sys.executable} -S -m engine.cli dump -t $$ -D {images} --leave-running; '
              f'echo "rc=$?"; kill $!')
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=ENGINE_ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "rc=2", (r.stdout, r.stderr)
    assert r.stderr.strip().endswith("it dumps (as one of its descendants): run mntcr dump from outside that tree"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(images)
