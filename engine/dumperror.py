"""The error a dump refuses with, shared by dump.py and the modules of its steps (nsinspect,
nscopy, placement, detached): one line naming the mount or process and the reason. An OSError
with the default constructor, so that it survives pickling across the forked helpers."""


class DumpError(OSError):
    """Dump refuses: one line naming the mount/process and the reason."""
