"""Progress lines for long vm/ steps (kernel fetch, box build, boot), on stderr."""

from __future__ import annotations

import os
import sys
import time

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Print one progress line on stderr unless MNTCR_QUIET is set."""
    if os.environ.get("MNTCR_QUIET"):
        return
    print(f"mntcr vm [{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)
