"""Kernel-compatibility strategy: which primitives dump and restore use on this kernel.

The engine runs one plan everywhere; what differs between kernels is the
primitive that carries out a step. Each such choice is an *axis* with a few
named values, chosen once from the probed features (engine.features):

  sharing  set-group    MOVE_MOUNT_SET_GROUP copies peer groups and masters (Linux >= 5.15)
           construct    no way to join a mount to a group after the fact: each mount is made in
                        its group while mounting, binds of a member, with propagation's copies
                        accounted for (engine/construct.py); dump refuses a tree no order builds
           refuse       (only when forced) dump and restore refuse shared or slave mounts
  flags    setattr      mount_setattr on the detached clones (Linux >= 5.12)
           remount      mount(2) MS_REMOUNT|MS_BIND and MS_PRIVATE etc. on attached mounts
  sources  detached     open_tree clones detached mounts (Linux >= 6.15)
           yard         new superblocks are attached in a yard of the service namespace
                        and cloned from there
  ids      statmount    dump reads each mount's 64-bit unique id (creation order) through
                        listmount/statmount (Linux >= 6.8); the records still come from
                        mountinfo, which Python parses faster than one statmount per mount
           mountinfo    mountinfo alone: no unique ids (mount ids are reused, say nothing
                        about age)
  layers   unique-ids   overlay layers resolved as they were when the overlay was made,
                        by 64-bit unique mount ids (STATX_MNT_ID_UNIQUE, Linux >= 6.8);
                        needs ids=statmount, which reads them
           refuse-ambiguous  legacy ids say nothing about age: dump tells the mount a
                        layer lay on by the layer's files the overlay shows (their inode
                        numbers and times, looked at beneath the covers), and refuses a
                        layer whose files tell nothing (engine/fs/overlay.py)

`mntcr check` prints the chosen strategy; a scenario names a choice in
`requires: {strategy: [sharing=set-group]}`.

The one override, for tests: MNTCR_STRATEGY="flags=remount,sources=yard" forces
the named axes (the others stay chosen from features). A forced value whose
kernel facility is missing is refused with one line. Nothing else in the
engine reads the environment to pick a path.
"""

from __future__ import annotations

import os
from engine.records import record, fields

ENV = "MNTCR_STRATEGY"
# Values an axis takes only when forced (tests of the paths that refuse).
EXTRA = {"sharing": ("refuse",)}

# axis -> (value when the facility is present, value without it, the feature that decides)
AXES = {
    "sharing": ("set-group", "construct", "MOVE_MOUNT_SET_GROUP"),
    "flags": ("setattr", "remount", "mount_setattr"),
    "sources": ("detached", "yard", "open_tree(detached)"),
    "ids": ("statmount", "mountinfo", "statmount/listmount"),
    "layers": ("unique-ids", "refuse-ambiguous", "STATX_MNT_ID_UNIQUE"),
}
# axis -> (axis, value) its fast value builds on: without it the axis takes its slow value too.
# (AXES lists an axis after the one it needs, so choose() has decided that one already.)
NEEDS = {"layers": ("ids", "statmount")}


class StrategyError(ValueError):
    """A bad MNTCR_STRATEGY (one line saying what to write instead)."""


@record(frozen=True)
class Strategy:
    """One value per axis (see the module docstring)."""

    sharing: str
    flags: str
    sources: str
    ids: str
    layers: str

    def names(self) -> list[str]:
        """`axis=value` for every axis, the spelling `requires.strategy` uses."""
        return [f"{f.name}={getattr(self, f.name)}" for f in fields(self)]

    def render(self, forced: frozenset = frozenset()) -> str:
        """Lines for `mntcr check`: each axis, its value, and whether it was forced."""
        lines = ["strategy:"]
        for f in fields(self):
            value = getattr(self, f.name)
            fast, _, feature = AXES[f.name]
            dep = NEEDS.get(f.name)
            if f.name in forced:
                why = f"forced by {ENV}"
            elif value == fast:
                why = f"{feature} present"
            elif dep and getattr(self, dep[0]) != dep[1]:
                why = f"needs {dep[0]}={dep[1]}"
            else:
                why = f"{feature} missing"
            lines.append(f"  {f.name:<8} {value:<17} ({why})")
        return "\n".join(lines) + "\n"


def parse_override(text: str) -> dict[str, str]:
    """MNTCR_STRATEGY's value -> {axis: value}; StrategyError on unknown axes or values."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        axis, sep, value = item.partition("=")
        if not sep or axis not in AXES or value not in AXES[axis][:2] + EXTRA.get(axis, ()):
            known = "; ".join(f"{a}={'|'.join(v[:2] + EXTRA.get(a, ()))}" for a, v in AXES.items())
            raise StrategyError(f"{ENV}: {item!r} is not axis=value (known: {known})")
        out[axis] = value
    return out


def choose(have: dict[str, bool], override: str = "") -> tuple[Strategy, frozenset]:
    """The strategy for a kernel whose facilities are `have` (feature name -> present),
    with `override` (MNTCR_STRATEGY syntax) applied; also the set of forced axes."""
    forced = parse_override(override)
    values = {}
    for axis, (fast, slow, feature) in AXES.items():
        dep = NEEDS.get(axis)
        usable = have.get(feature) and (dep is None or values[dep[0]] == dep[1])
        value = forced.get(axis, fast if usable else slow)
        if value == fast and not have.get(feature):
            raise StrategyError(f"{ENV}: {axis}={fast} needs {feature}, which this kernel lacks")
        if value == fast and not usable:
            raise StrategyError(f"{ENV}: {axis}={fast} needs {dep[0]}={dep[1]}")
        values[axis] = value
    return Strategy(**values), frozenset(forced)


def facilities() -> dict[str, bool]:
    """What the axes depend on, probed (engine.features) and cached for this process."""
    from engine import features
    return {name: f.present for name, f in features.available().items()}


_current: tuple[Strategy, frozenset] | None = None


def current_with_forced() -> tuple[Strategy, frozenset]:
    """This kernel's strategy (probed once per process) and the axes MNTCR_STRATEGY forced."""
    global _current
    if _current is None:
        _current = choose(facilities(), os.environ.get(ENV, ""))
    return _current


def current() -> Strategy:
    """This kernel's strategy (see current_with_forced)."""
    return current_with_forced()[0]


def reset() -> None:
    """Forget the cached choice (tests that change MNTCR_STRATEGY call this)."""
    global _current
    _current = None
