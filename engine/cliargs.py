"""The dump and restore command lines read without argparse, when they are plainly well-formed.

argparse, with the gettext it imports and the parser engine/cli.py builds with it, is ~20 M
instructions (~5 ms of CPU) of every dump and restore, a tenth of a small one's. A command line of
only the verb's exact options (`-D DIR`, `--images-dir DIR`, `--images-dir=DIR`, flags), each value
not starting with '-', every required option present, is read here into what argparse would make
of it; anything else (help, an abbreviation, a value argparse might read otherwise, an error)
returns None and goes to argparse, which says what is wrong as before. tests/test_cliargs.py holds
VERBS to engine/cli.py's parsers and compares both readings.
"""

from __future__ import annotations

from types import SimpleNamespace

# verb -> option string -> (dest, kind); kind: "int", "str", "append", "flag" or a tuple of choices.
VERBS: dict[str, dict[str, tuple[str, object]]] = {
    "dump": {"-t": ("pid", "int"), "--tree": ("pid", "int"),
             "-D": ("images_dir", "str"), "--images-dir": ("images_dir", "str"),
             "--leave-running": ("leave_running", "flag"), "--shell-job": ("shell_job", "flag"),
             "--external": ("external", "append")},
    "restore": {"-D": ("images_dir", "str"), "--images-dir": ("images_dir", "str"),
                "--root": ("root", "str"), "--external": ("external", "append"),
                "--fuse-restart": ("fuse_restart", "append"), "--allow-idmap": ("allow_idmap", "append"),
                "--pidfile": ("pidfile", "str"), "--devices": ("devices", ("container", "all", "none"))},
}
DEFAULTS = {"dump": {"pid": None, "images_dir": None, "leave_running": False, "shell_job": False, "external": []},
            "restore": {"images_dir": None, "root": None, "external": [], "fuse_restart": [], "allow_idmap": [],
                        "pidfile": None, "devices": "container"}}
REQUIRED = {"dump": ("pid", "images_dir"), "restore": ("images_dir",)}


def parse(argv: list[str]) -> SimpleNamespace | None:
    """argv (the verb first) read as argparse reads it, or None: let argparse read it."""
    if not argv or argv[0] not in VERBS:
        return None
    options = VERBS[argv[0]]
    got = {k: list(v) if isinstance(v, list) else v for k, v in DEFAULTS[argv[0]].items()}
    seen = set()
    i = 1
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        spec = options.get(name)
        if spec is None:
            return None
        dest, kind = spec
        if kind == "flag":
            if eq:
                return None
            got[dest] = True
            i += 1
            continue
        if not eq:
            i += 1
            if i == len(argv):
                return None
            value = argv[i]
        # (argparse reads a value starting with '-' by rules of its own, and refuses an empty one
        # after '=' nowhere: both left to it, as is anything it would refuse)
        if not value or value[0] == "-":
            return None
        if kind == "int":
            try:
                got[dest] = int(value)
            except ValueError:
                return None
        elif kind == "append":
            got[dest].append(value)
        elif isinstance(kind, tuple) and value not in kind:
            return None
        else:
            got[dest] = value
        seen.add(dest)
        i += 1
    if not all(d in seen for d in REQUIRED[argv[0]]):
        return None
    return SimpleNamespace(verb=argv[0], **got)
