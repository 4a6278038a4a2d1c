"""Flavors: where a scenario runs. `ns` (throwaway namespaces here), `vm` (a VM, zdtm/flavors/vm.py).

A flavor's `start(scenario, workdir)` builds a fresh place, runs the setup and
returns a `Running` once the holder is ready (or raises SetupError). The
backend dumps `Running.pid`; `externals` are the mounts the flavor put there
from the host, which the backend declares external.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


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


class Flavor:
    """Interface of a flavor."""

    name = "?"

    def unavailable(self) -> str | None:
        """None when usable here, else the reason (the scenario is skipped with it)."""
        return None

    def start(self, scenario, workdir: str) -> Running:
        """Build the scenario's place, run its setup, wait until the holder is ready."""
        raise NotImplementedError

    def forget(self, running: Running) -> None:
        """The dumped tree is gone (the backend killed it): reap what the flavor started for it."""

    def stop(self, running: Running) -> None:
        """Kill the tree and release everything the flavor made for it."""
        raise NotImplementedError


def get(name: str) -> Flavor:
    """The flavor called `name`; ValueError naming the available ones when unknown or not built yet."""
    try:
        module = importlib.import_module(f"zdtm.flavors.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"zdtm.flavors.{name}":
            raise ValueError(f"flavor {name!r} is not available (no zdtm/flavors/{name}.py)") from None
        raise
    return module.FLAVOR
