"""The fake backends the runner's own tests load as a conftest (pytester or a job directory):
rerun restores by running the setup again, mutate does so with ZDTM_RESTORED=1 set (so a setup
can build a different tree), refuse refuses every dump."""

FAKES = '''
import dataclasses
from zdtm import backends, snapshot
from zdtm.backends import Backend, BackendError

pytest_plugins = ["zdtm.plugin"]


class Rerun(Backend):
    """Restores by running the scenario's setup again in a fresh container."""
    name = "rerun"
    prefix = ""

    def dump(self, pid, images_dir, externals, ctx):
        snapshot.kill_tree(pid)

    def restore(self, images_dir, externals, ctx):
        sc = ctx.scenario
        if self.prefix:
            sc = dataclasses.replace(sc, setup=self.prefix + "\\n" + sc.setup)
        running = ctx.flavor.start(sc, f"{ctx.workdir}/rerun{ctx.iteration}")
        ctx.on_cleanup(lambda: ctx.flavor.stop(running))
        return running.pid


class Mutate(Rerun):
    name = "mutate"
    prefix = "ZDTM_RESTORED=1"


class Refuse(Backend):
    name = "refuse"

    def dump(self, pid, images_dir, externals, ctx):
        raise BackendError("dump", "refuse: this backend refuses every dump")


backends.register("rerun", Rerun)
backends.register("mutate", Mutate)
backends.register("refuse", Refuse)
'''
