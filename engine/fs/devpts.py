"""devpts: each fsmount is a new instance, and a new instance has no pty yet."""

from engine.fs import FsType, register

IDS = (("uid", "uid"), ("gid", "gid"))   # devpts_show_options prints them in the initial namespace's ids

TYPE = register(FsType("devpts", fresh_roots=frozenset({"/", "/ptmx"}), requires=("devpts",), id_opts=IDS))
