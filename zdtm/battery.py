"""The --fstype battery: generic scenarios run against a fresh superblock of each filesystem type.

A scenario file with `battery: true` (scenarios/battery/) gains a `fstype` parameter: one
combination per selected battery entry (engine.fs.battery(): every type module with a
`Recipe`, named by its module). Its templates see `fs`:

- `fs.name`: the entry (engine/fs/NAME.py), `fs.type`: the filesystem type;
- `fs.setup`: sh that mounts a fresh superblock of the type at /mnt/fs (the recipe, with
  loop device nodes when it needs them), holding the battery's files f and d/sub/g when
  `fs.tree`;
- `fs.tree`: whether those files are there (a pseudo filesystem has only its root).

The type's `requires` (/proc/filesystems) and the recipe's commands join the scenario's
requirements, so a type this kernel lacks skips naming it.
"""

from __future__ import annotations

# Files the battery puts in a fresh superblock (when the type can hold them).
_SRC = """mkdir -p "$SRC/d/sub"
echo battery > "$SRC/f"
echo inner > "$SRC/d/sub/g"
"""

# The container has a private /dev: the loop control node and loop device nodes (zdtm/holder.py).
_LOOP = "zdtm_loop_nodes\n"


def entries() -> dict:
    """Battery name -> engine.fs.FsType with a recipe."""
    from engine import fs
    return fs.battery()


def select(value: str | None) -> list[str]:
    """The entries `--fstype` names (comma-separated; None or "all": every one). Unknown: ValueError."""
    known = entries()
    if value in (None, "", "all"):
        return sorted(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        if name not in known:
            raise ValueError(f"--fstype {name}: no type module engine/fs/{name}.py with a battery recipe; "
                             f"known: {', '.join(sorted(known))}, all")
    return names


def context(name: str) -> dict:
    """The `fs` template variable for battery entry `name`."""
    t = entries()[name]
    r = t.recipe
    setup = (f"# a fresh {t.name} superblock at /mnt/fs: recipe of engine/fs/{name}.py\n"
             + (_LOOP if r.loop else "")
             + "mkdir -p /run/fs /mnt/fs\nmount -t tmpfs -o size=512m fswork /run/fs\n"
             + "FS=/mnt/fs SRC=/run/fs/src WORK=/run/fs\n" + _SRC + r.make.rstrip() + "\n"
             + 'rm -rf "$SRC"\n')
    return {"name": name, "type": t.name, "setup": setup, "tree": r.tree}


def known_failure(name: str, scenario: str) -> str | None:
    """Why mntcr is known to fail battery `scenario` on entry `name` (the recipe says), or None."""
    return dict(entries()[name].recipe.known_failures).get(scenario)


def unfinished(name: str) -> str | None:
    """Why entry `name`'s recipe cannot run yet (its items skip), or None."""
    return entries()[name].recipe.unfinished


def server(name: str) -> dict | None:
    """{start, stop} of the external server entry `name`'s recipe needs (zdtm/fsserver.py), or None."""
    r = entries()[name].recipe
    return {"start": r.server, "stop": r.server_stop} if r.server else None


def restart(name: str) -> tuple[tuple[str, str], ...]:
    """The (key, command) pairs restore takes as --fuse-restart for entry `name` (a daemon type's recipe)."""
    return entries()[name].recipe.restart


def requires(name: str) -> tuple[list[str], list[str]]:
    """(filesystems, commands) battery entry `name` needs."""
    t = entries()[name]
    return list(t.requires or (t.name,)), list(t.recipe.commands)
