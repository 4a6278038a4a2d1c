"""The one exception type of vm/: its message is the one-line error shown to users."""


class VMError(Exception):
    """A VM step failed (fetch, build, boot, timeout, panic); str() is one line."""
