"""devpts: each fsmount is a new instance, and a new instance has no pty yet."""

from engine.fs import FsType, register

TYPE = register(FsType("devpts", fresh_roots=frozenset({"/", "/ptmx"}), requires=("devpts",)))
