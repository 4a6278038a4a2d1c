"""The kernel matrix (vm/kernels.toml): short stable names -> Debian suite + package."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MATRIX = Path(__file__).with_name("kernels.toml")
HOST = "host"
_KEYS = {"suite", "package", "expect", "description", "nine_p"}


@dataclass(frozen=True)
class KernelSpec:
    """One row of the matrix. `suite`/`package` are None only for `host`."""

    name: str
    suite: str | None
    package: str | None
    expect: str = ""
    description: str = ""
    nine_p: bool = True

    @property
    def is_host(self) -> bool:
        """True for the running kernel (no VM, no download)."""
        return self.name == HOST


def parse(text: str, source: str = "<matrix>") -> dict[str, KernelSpec]:
    """Parse matrix TOML text into {name: KernelSpec}; errors name the row and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: {e}") from None
    unknown_top = set(data) - {"kernel"}
    if unknown_top:
        raise ValueError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown_top))}")
    rows = data.get("kernel", {})
    out: dict[str, KernelSpec] = {}
    for name, row in rows.items():
        if not isinstance(row, dict):
            raise ValueError(f"{source}: kernel.{name} must be a table")
        bad = set(row) - _KEYS
        if bad:
            raise ValueError(f"{source}: kernel.{name}: unknown key(s) {', '.join(sorted(bad))}")
        if name != HOST:
            for key in ("suite", "package"):
                if not isinstance(row.get(key), str) or not row[key]:
                    raise ValueError(f"{source}: kernel.{name}: missing {key}")
        if "nine_p" in row and not isinstance(row["nine_p"], bool):
            raise ValueError(f"{source}: kernel.{name}: nine_p must be true or false")
        out[name] = KernelSpec(name=name, suite=row.get("suite"), package=row.get("package"),
                               expect=str(row.get("expect", "")), description=str(row.get("description", "")),
                               nine_p=row.get("nine_p", True))
    return out


def load(path: Path | str | None = None) -> dict[str, KernelSpec]:
    """Load the matrix file (default vm/kernels.toml)."""
    p = Path(path) if path else DEFAULT_MATRIX
    return parse(p.read_text(), source=str(p))


def lookup(name: str, path: Path | str | None = None) -> KernelSpec:
    """The row called `name`, or a ValueError listing the known names."""
    rows = load(path)
    if name not in rows:
        raise ValueError(f"unknown kernel {name!r}; the matrix has: {', '.join(rows)}")
    return rows[name]
