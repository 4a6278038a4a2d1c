"""One line from a pipe, with a deadline, consuming nothing beyond it (the rest belongs to whoever
reads the pipe next: a keeper's later status lines, a server's log)."""

from __future__ import annotations

import os
import select
import time


def read_line(fd: int, deadline: float) -> tuple[bytes, bool | None]:
    """(line, True) once a whole line came, (what came, False) at EOF, (what came, None) when
    `deadline` (time.monotonic) passed first. Reads a byte at a time on purpose (see above)."""
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return line, None
        ch = os.read(fd, 1)
        if not ch:
            return line, False
        line += ch
    return line, True
