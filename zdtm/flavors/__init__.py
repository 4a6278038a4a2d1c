"""Flavors: where a scenario runs. `ns` (throwaway namespaces here), `vm` (a VM, zdtm/flavors/vm.py).

A flavor (the `Flavor` protocol) is a place plus a transport: `run(spec,
workdir)` runs one item through zdtm.item.run, in this process (ns) or in a
guest (vm). A place (the `Place` protocol, the ns flavor here and in the
guest) `start(scenario, workdir)`s a fresh container, runs the setup and
returns a `Running` once the holder is ready (or raises SetupError). The
backend dumps `Running.pid`; `externals` are the mounts the place put there
from the host, which the backend declares external.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol


class SetupError(Exception):
    """The scenario's setup (or the flavor building its place) failed: not a C/R failure."""


@dataclass(frozen=True)
class External:
    """A mount the flavor took from the host: `mountpoint` inside the container, `key` in the image."""

    key: str
    mountpoint: str
    host_path: str


@dataclass
class Running:
    """A started scenario: the root pid of its process tree and what the backend needs to know."""

    pid: int
    externals: list[External] = field(default_factory=list)
    setup_output: str = ""
    handle: object = None   # flavor-private (e.g. the keeper process)
    leaks: list[str] = field(default_factory=list)  # what `stop` could not release (the item fails)


class Place(Protocol):
    """Where a scenario's process tree lives on this machine (the ns flavor is one).

    Backends get the place as `Context.flavor` (a test backend may start a
    fresh container there); zdtm.item.run drives it.
    """

    name: str

    def unavailable(self, spec=None) -> str | None:
        """None when usable here, else the reason (the item is skipped with it)."""

    def start(self, scenario, workdir: str) -> Running:
        """Build the scenario's place, run its setup, wait until the holder is ready (SetupError else)."""

    def forget(self, running: Running) -> None:
        """The dumped tree is gone (the backend killed it): reap what the place started for it."""

    def stop(self, running: Running) -> None:
        """Kill the tree and release everything the place made for it."""

    def backend_for(self, running: Running, backend):
        """The backend to use on `running` (the place may adapt it, e.g. where restore runs)."""


class Flavor(Protocol):
    """What the plugin calls: a flavor = a place to run an item + a transport to reach it.

    `run` takes the item's resolved settings (zdtm.item.ItemSpec) and returns
    a zdtm.item.Outcome; it raises only for infrastructure errors (a VM that
    does not boot), never for a scenario's result.
    """

    name: str

    def unavailable(self, spec=None) -> str | None:
        """None when the item (zdtm.item.ItemSpec) can run in this flavor here, else the reason.

        Said before anything boots; `spec` None asks about the flavor's defaults.
        """

    def run(self, spec, workdir: str):
        """Run the item (zdtm.item.ItemSpec) with `workdir` for its files; a zdtm.item.Outcome."""

    def close(self) -> None:
        """Release what the flavor keeps between items (VMs); called once at session end."""


def get(name: str) -> Flavor:
    """The flavor called `name`; ValueError naming the available ones when unknown or not built yet."""
    try:
        module = importlib.import_module(f"zdtm.flavors.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"zdtm.flavors.{name}":
            raise ValueError(f"flavor {name!r} is not available (no zdtm/flavors/{name}.py)") from None
        raise
    return module.FLAVOR
