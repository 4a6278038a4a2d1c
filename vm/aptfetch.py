"""Fetch Debian packages of any suite with a private apt configuration.

The machine's apt sources are never touched: vm/ keeps its own sources list,
lists, package cache and apt.conf under the cache dir, one tree per suite, and
only reads the machine's configuration to learn the archive's URL, the keyring
that signs it, and its Acquire:: settings (proxies, date checks).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

from vm import cache
from vm.errors import VMError
from vm.progress import say

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_ETC = Path("/etc/apt")


def _host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _source_entries(etc: Path = APT_ETC) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled `deb` entry in the machine's sources (both formats)."""
    entries: list[tuple[str, list[str]]] = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                entries.append((m.group(1), [m.group(2)]))
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = f.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    return entries


def archive_url(etc: Path = APT_ETC) -> str:
    """The Debian archive URL the machine's own sources use (read at run time).

    The entry that carries the machine's release codename itself (not -security
    or -updates) is the main archive; it serves every other suite as well.
    """
    codename = _host_codename()
    entries = _source_entries(etc)
    for uri, suites in entries:
        if codename and codename in suites:
            return uri.rstrip("/")
    for uri, suites in entries:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise VMError(f"no Debian archive entry found in {etc}/sources.list*; cannot fetch kernels")


def _host_acquire_settings() -> str:
    """The machine's Acquire:: settings (proxy, Check-Valid-Until...) as apt.conf lines."""
    try:
        out = subprocess.run(["apt-config", "dump", "Acquire"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    keep = [ln for ln in out.splitlines()
            if ln.startswith("Acquire::") and "IndexTargets" not in ln and not ln.endswith(' "";')]
    return "\n".join(keep) + "\n"


class PrivateApt:
    """apt-get/apt-cache bound to a private configuration for one suite."""

    def __init__(self, suite: str, components: str = "main"):
        self.suite = suite
        self.root = cache.sub("apt", suite)
        for d in ("lists/partial", "archives/partial", "parts", "prefs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        url = archive_url()
        (self.root / "sources.list").write_text(
            f"deb [signed-by={KEYRING}] {url} {suite} {components}\n")
        status = self.root / "status"
        if not status.exists():
            status.write_text("")
        # APT_CONFIG replaces /etc/apt/apt.conf; Dir::Etc::Parts pointing at an empty
        # directory keeps the machine's apt.conf.d hooks (packagekit, appstream) out.
        conf = (
            f'Dir::Etc::SourceList "{self.root}/sources.list";\n'
            f'Dir::Etc::SourceParts "{self.root}/parts";\n'
            f'Dir::Etc::Parts "{self.root}/parts";\n'
            f'Dir::Etc::Preferences "{self.root}/prefs/none";\n'
            f'Dir::Etc::PreferencesParts "{self.root}/prefs";\n'
            f'Dir::State::Lists "{self.root}/lists";\n'
            f'Dir::State::status "{status}";\n'
            f'Dir::Cache "{self.root}";\n'
            f'Dir::Cache::archives "{self.root}/archives";\n'
            'APT::Architecture "amd64";\n'
            'APT::Architectures { "amd64"; };\n'
            'Acquire::Languages "none";\n'
            + _host_acquire_settings()
        )
        self.conf = self.root / "apt.conf"
        self.conf.write_text(conf)

    def _run(self, argv: list[str], cwd: Path | None = None) -> str:
        env = dict(os.environ, APT_CONFIG=str(self.conf), LC_ALL="C")
        p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise VMError(f"{' '.join(argv[:2])} for suite {self.suite} failed: {last}")
        return p.stdout

    def update(self, max_age: float = 24 * 3600) -> None:
        """Refresh the suite's package lists when missing or older than max_age seconds."""
        import time
        stamp = self.root / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < max_age:
            return
        say(f"apt update for {self.suite} (private lists under {self.root})")
        self._run(["apt-get", "-q", "update"])
        stamp.write_text("")

    def depends(self, package: str) -> list[str]:
        """First alternative of each Depends entry of the candidate version of `package`."""
        out = self._run(["apt-cache", "show", "--no-all-versions", package])
        deps: list[str] = []
        for line in out.splitlines():
            if line.startswith("Depends:"):
                for entry in line.split(":", 1)[1].split(","):
                    first = entry.split("|")[0].strip()
                    if first:
                        deps.append(first.split()[0].split(":")[0])
        return deps

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        """apt-get download `packages` into dest; the .deb paths."""
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        self._run(["apt-get", "-q", "download", *packages], cwd=dest)
        debs = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob("*.deb"))
        return debs


@contextmanager
def locked(path: Path):
    """An exclusive flock on path (several xdist workers may fetch the same kernel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
