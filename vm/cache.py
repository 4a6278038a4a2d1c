"""Where vm/ keeps downloaded kernels, built initramfs images and boxes.

`$MNTCR_CACHE` when set, else `~/.cache/mntcr`; never inside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The root of the project's cache (created on first use)."""
    env = os.environ.get("MNTCR_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "mntcr"
    root.mkdir(parents=True, exist_ok=True)
    return root


def sub(*parts: str) -> Path:
    """A subdirectory of the cache, created on first use."""
    p = cache_dir().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
