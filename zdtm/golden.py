"""Golden `check` output (fstests' ``.out`` files): what a scenario's check must print before dump.

A scenario ``DIR/NAME.yaml`` may have ``DIR/NAME.out`` beside it. Without
``params`` the file is the expected output, verbatim. With ``params`` it holds
one section per combination, in the file's matrix order, each headed by a line
``=== PARAM_ID`` (the id's matrix part, as in ``NAME[PARAM_ID-backend-flavor]``):

    === parent=shared-bind=rbind
    /mnt/a tmpfs shared
    === parent=private-bind=rbind
    ...

The runner compares the check's output before the first dump with it (and
the check must exit 0); ``pytest scenarios/ --update-golden`` writes what
each check printed instead. Under xdist several workers write sections of one
file: a lock serializes them and each write replaces the file atomically.
"""

from __future__ import annotations

import difflib
import fcntl
import os
import re

SECTION = "=== "
_EXIT = re.compile(r"\[exit (\d+)\]\n\Z")


class GoldenError(ValueError):
    """A golden file that cannot be read or written; the message is one line."""


def path_for(scenario_path: str) -> str:
    """``NAME.out`` beside ``NAME.yaml``."""
    return os.path.splitext(scenario_path)[0] + ".out"


def parse(text: str, sectioned: bool) -> dict[str, str]:
    """{param_id: expected output}; the single key "" when not `sectioned`."""
    if not sectioned:
        return {"": text}
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(True):
        if line.startswith(SECTION):
            current = line[len(SECTION):].rstrip("\n")
            out[current] = []
        elif current is not None:
            out[current].append(line)
        elif line.strip():
            raise GoldenError(f"text before the first '{SECTION}PARAM_ID' line")
    return {k: "".join(v) for k, v in out.items()}


def load(scenario_path: str, sectioned: bool) -> dict[str, str] | None:
    """The golden outputs of a scenario file, or None when it has no NAME.out."""
    path = path_for(scenario_path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return parse(text, sectioned)


def exit_status(output: str) -> int:
    """The check's exit status as run_check appended it (0 when it did not)."""
    m = _EXIT.search(output)
    return int(m.group(1)) if m else 0


def verify(scenario, output: str) -> str | None:
    """None when the check's output before dump is acceptable, else the failure text.

    It must exit 0 and, when the scenario has a golden file, equal its section.
    """
    status = exit_status(output)
    if status:
        return (f"check failed before dump (exit {status}): a check must succeed on the state it "
                f"checks; its output:\n" + _indent(output))
    if scenario.golden_path is None:
        return None
    name = os.path.basename(scenario.golden_path)
    if scenario.golden is None:
        which = f"combination {scenario.param_id}" if scenario.param_id else "this scenario"
        return f"{name} has no golden output for {which}: write it with --update-golden"
    if output == scenario.golden:
        return None
    diff = difflib.unified_diff(scenario.golden.splitlines(True), output.splitlines(True),
                                f"{name} (golden)", "check before dump", n=2)
    return (f"check output before dump differs from the golden output in {name}:\n"
            + _indent("".join(diff)))


def _indent(text: str) -> str:
    return "".join("  " + line if line.strip() else line for line in text.splitlines(True)).rstrip("\n")


def render(sections: dict[str, str], order: list[str], sectioned: bool) -> str:
    """The text of a golden file holding `sections`, combinations in `order` first."""
    if not sectioned:
        return sections.get("", "")
    keys = [k for k in order if k in sections] + sorted(k for k in sections if k not in order)
    parts = []
    for k in keys:
        if any(line.startswith(SECTION) for line in sections[k].splitlines()):
            raise GoldenError(f"the check output of {k} has a line starting with {SECTION!r}: "
                              f"it cannot be kept in a sectioned golden file")
        text = sections[k]
        parts.append(f"{SECTION}{k}\n{text}" + ("" if not text or text.endswith("\n") else "\n"))
    return "".join(parts)


def update(scenario, output: str) -> str:
    """Write `output` as the golden output of `scenario`'s combination; return the file's path."""
    from zdtm import scenario as scenario_mod  # it loads golden files: imported here, not at the top
    path = path_for(scenario.path)
    sectioned = bool(scenario.params)
    # the file's matrix order, so that sections keep their place whichever worker writes first
    order = [scenario_mod.param_id(c) for c in scenario_mod.load(scenario.path).combinations()]
    # the scenario's directory is the lock (a flock on a directory fd): no lock file is left behind
    lock = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sections = load(scenario.path, sectioned) or {}
        sections[scenario.param_id if sectioned else ""] = output
        text = render(sections, order, sectioned)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        os.close(lock)  # releases the flock
    return path
