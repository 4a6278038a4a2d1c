"""The fake backends the runner's own tests load as a conftest (pytester or a job directory):
rerun restores by running the setup again, mutate does so with ZDTM_RESTORED=1 set (so a setup
can build a different tree), refuse refuses every dump (with a two-line message: only the first
line belongs in a summary), forget restores as rerun but leaves another tree running. `scenario_runner` writes scenario files and runs pytest on them."""

from __future__ import annotations

import os

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HEAD = '''
import dataclasses
from zdtm import backends, snapshot
from zdtm.backends import Backend, BackendError

pytest_plugins = ["zdtm.plugin"]


_RUN_IDS = {}   # images_dir -> the dumped tree's ZDTM_RUN_ID


class Rerun(Backend):
    """Restores by running the scenario's setup again in a fresh container, with the dumped tree's
    run tag: a restore keeps the processes' environment, which the snapshot compares."""
    name = "rerun"
    prefix = ""

    def dump(self, pid, images_dir, externals, ctx):
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\\0") if b"=" in v)
        _RUN_IDS[images_dir] = env[b"ZDTM_RUN_ID"].decode()
        snapshot.kill_tree(pid)

    def restore(self, images_dir, externals, ctx):
        sc = ctx.scenario
        prefix = "\\n".join(filter(None, (f"ZDTM_RUN_ID={_RUN_IDS[images_dir]}", self.prefix)))
        sc = dataclasses.replace(sc, setup=prefix + "\\n" + sc.setup)
        running = ctx.flavor.start(sc, f"{ctx.workdir}/rerun{ctx.iteration}")
        ctx.on_cleanup(lambda: ctx.flavor.stop(running))
        return running.pid


class Refuse(Backend):
    name = "refuse"

    def dump(self, pid, images_dir, externals, ctx):
        raise BackendError("dump", "refuse: this backend refuses every dump\\nsecond line")


backends.register("rerun", Rerun)
backends.register("refuse", Refuse)
'''

_MUTATE = '''

class Mutate(Rerun):
    name = "mutate"
    prefix = "ZDTM_RESTORED=1"


backends.register("mutate", Mutate)
'''

_FORGET = '''

class Forget(Rerun):
    """Restores as rerun, and starts the setup once more in a container it never stops (a runner
    that forgot a tree)."""
    name = "forget"

    def restore(self, images_dir, externals, ctx):
        ctx.flavor.start(ctx.scenario, f"{ctx.workdir}/forgotten{ctx.iteration}")
        return super().restore(images_dir, externals, ctx)


backends.register("forget", Forget)
'''

# rerun and refuse only (a `--backend all` table with exactly those columns).
RERUN_REFUSE = _HEAD
# rerun, refuse and mutate.
FAKES = _HEAD + _MUTATE
# and forget.
FORGETFUL = FAKES + _FORGET


def scenario_runner(pytester, monkeypatch, fakes: str = FAKES, timeout: int = 300, env: dict | None = None):
    """A function(scenarios: {relative path: YAML text}, *pytest args) that writes the scenarios
    under pytester's scenarios/ and runs pytest on them in a subprocess, with `fakes` as conftest."""
    monkeypatch.setenv("PYTHONPATH", PROJECT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    pytester.makeconftest(fakes)

    def go(scenarios: dict, *args):
        for name, text in scenarios.items():
            path = pytester.path / "scenarios" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "scenarios", *args, timeout=timeout)
    return go
