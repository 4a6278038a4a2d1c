"""The error a dump refuses with, shared by dump.py and the modules of its steps (nsinspect,
nscopy, placement, detached): one line naming the mount or process and the reason. An OSError
with the default constructor, so that it survives pickling across the forked helpers."""

import errno


class DumpError(OSError):
    """Dump refuses: one line naming the mount/process and the reason."""


def hook(fn, *args):
    """Call a filesystem type's hook or a rule of engine/mountrules.py; its refusal (fs.FsError)
    becomes the dump's."""
    from engine import fs
    try:
        return fn(*args)
    except fs.FsError as e:
        raise DumpError(e.errno or errno.EOPNOTSUPP, e.strerror or str(e)) from None
