"""CRIU's own zdtm test programs: fetched from Debian's source package and built, cached by version.

Nothing of CRIU is part of this repository. The upstream tarball of Debian's
``criu`` source package (the suite zdtm/criu_env.py takes criu from) is
fetched with ``apt-get source --download-only`` under a private apt
configuration that lists only ``deb-src`` for that suite (the machine's own
apt sources are never changed; only its archive URL and Acquire:: settings
are read), checked against the SHA-256 of the signed Sources index, and
unpacked into ``$MNTCR_CACHE/criu-tests/<version>/``. Only the upstream
tarball is used: it holds test/zdtm whole (some mirrors serve no .dsc, and
Debian patches nothing under test/).

`build(names)` builds ``test/zdtm/lib`` and the named static tests there,
linked statically (the test's root then needs no libraries), and records for
each the command line its Makefile starts it with (``make -n NAME.pid``:
``--dirname=NAME.test`` for a directory test and so on).
"""

from __future__ import annotations

import ast
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass

from zdtm import criu_env

__all__ = ["SourceError", "TestProgram", "source_tree", "build", "read_desc"]

SUITE = criu_env.SUITES[0]   # the suite the criu userland comes from
PACKAGE = "criu"
READY = ".mntcr-ready"
EXT_DEV = "ZDTM_MNT_EXT_DEV"   # (the block device zdtm.py's mnt_ext_dev mounts: its .desc is code)


class SourceError(RuntimeError):
    """The test sources cannot be fetched or a test cannot be built; the message is one line."""


@dataclass(frozen=True)
class TestProgram:
    """One built static zdtm test: its binary, its start arguments and its .desc."""

    name: str
    binary: str
    args: tuple[str, ...]     # what its Makefile's NAME.pid rule passes after the binary
    desc: dict                # the NAME.desc dictionary ({} when the test has none)


def _root() -> str:
    return os.path.join(criu_env.cache_dir(), "criu-tests")


@contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _apt_config(base: str) -> str:
    """A private apt configuration under ``base`` whose only source is deb-src SUITE main."""
    for d in ("lists/partial", "archives/partial", "parts", "prefs"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    keyring = criu_env.KEYRING
    with open(os.path.join(base, "sources.list"), "w") as f:
        f.write(f"deb-src [signed-by={keyring}] {criu_env.debian_mirror()} {SUITE} main\n")
    status = os.path.join(base, "status")
    if not os.path.exists(status):
        open(status, "w").close()
    try:  # the machine's proxy and date-check settings, as vm/aptfetch.py keeps them
        acquire = subprocess.run(["apt-config", "dump", "Acquire"], capture_output=True, text=True).stdout
    except OSError:
        acquire = ""
    acquire_lines = [ln for ln in acquire.splitlines()
                     if ln.startswith("Acquire::") and "IndexTargets" not in ln and not ln.endswith(' "";')]
    conf = os.path.join(base, "apt.conf")
    with open(conf, "w") as f:
        f.write(f'Dir::Etc::SourceList "{base}/sources.list";\n'
                f'Dir::Etc::SourceParts "{base}/parts";\n'
                f'Dir::Etc::Parts "{base}/parts";\n'
                f'Dir::Etc::Preferences "{base}/prefs/none";\n'
                f'Dir::Etc::PreferencesParts "{base}/prefs";\n'
                f'Dir::State::Lists "{base}/lists";\n'
                f'Dir::State::status "{status}";\n'
                f'Dir::Cache "{base}";\n'
                f'Dir::Cache::archives "{base}/archives";\n'
                # root downloads into a directory the _apt user cannot write: say so, no warning
                'APT::Sandbox::User "root";\n'
                'Acquire::Languages "none";\n'
                + "".join(ln + "\n" for ln in acquire_lines))
    return conf


def _apt(conf: str, args: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, APT_CONFIG=conf, LC_ALL="C")
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise SourceError(f"{args[0]} could not run: {e}") from None


def _orig_tarball(showsrc: str) -> tuple[str, str, str]:
    """(version, file name, sha256) of the upstream tarball in ``apt-cache showsrc`` output (newest version)."""
    best = None
    for stanza in re.split(r"\n\s*\n", showsrc):
        version = re.search(r"^Version:\s*(\S+)", stanza, re.M)
        sums = re.search(r"^Checksums-Sha256:\s*\n((?:[ \t].*\n?)+)", stanza, re.M)
        if not version or not sums:
            continue
        for line in sums.group(1).splitlines():
            parts = line.split()
            if len(parts) == 3 and ".orig.tar." in parts[2]:
                cand = (version.group(1), parts[2], parts[0])
                if best is None or _vercmp_gt(cand[0], best[0]):
                    best = cand
    if best is None:
        raise SourceError(f"apt-cache showsrc {PACKAGE} lists no upstream tarball for {SUITE}")
    return best


def _vercmp_gt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_trees() -> list[str]:
    return sorted(glob.glob(os.path.join(_root(), "*", READY)))


def source_tree(refresh: bool = False) -> str:
    """The unpacked criu source tree (its top directory), fetching it on first use.

    A tree already in the cache is used as is (no network) unless ``refresh``.
    Raises SourceError with a one-line reason when it cannot be had.
    """
    if not refresh:
        trees = _cached_trees()
        if trees:
            return open(trees[-1]).read().strip()
    base = _root()
    with _locked(os.path.join(base, "fetch.lock")):
        if not refresh and _cached_trees():
            return open(_cached_trees()[-1]).read().strip()
        conf = _apt_config(os.path.join(base, "apt"))
        up = _apt(conf, ["apt-get", "-q", "update"])
        if up.returncode != 0:
            raise SourceError(f"apt-get update (private deb-src {SUITE} list) failed: "
                              f"{(up.stderr.strip().splitlines() or ['no output'])[-1]}")
        show = _apt(conf, ["apt-cache", "showsrc", PACKAGE])
        if show.returncode != 0:
            raise SourceError(f"apt-cache showsrc {PACKAGE} failed: {(show.stderr.strip().splitlines() or ['?'])[-1]}")
        version, fname, sha = _orig_tarball(show.stdout)
        vdir = os.path.join(base, version)
        dl = os.path.join(vdir, "download")
        os.makedirs(dl, exist_ok=True)
        tarball = os.path.join(dl, fname)
        if not os.path.exists(tarball) or _sha256(tarball) != sha:
            got = _apt(conf, ["apt-get", "-q", "source", "--download-only", f"{PACKAGE}={version}"], cwd=dl)
            # A mirror that lacks the .dsc makes apt-get fail although the tarball arrived:
            # the tarball alone is needed, and its checksum comes from the signed index.
            if not os.path.exists(tarball):
                raise SourceError(f"apt-get source {PACKAGE}={version} fetched no {fname}: "
                                  f"{(got.stderr.strip().splitlines() or ['no output'])[-1]}")
        if _sha256(tarball) != sha:
            raise SourceError(f"{tarball}: SHA-256 differs from the {SUITE} Sources index; delete it and retry")
        for stale in glob.glob(os.path.join(vdir, "src.tmp-*")):  # a killed fetch's (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = os.path.join(vdir, f"src.tmp-{os.getpid()}")
        os.makedirs(tmp)
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter=_test_tree_only)
        tops = os.listdir(tmp)
        if len(tops) != 1 or not os.path.isdir(os.path.join(tmp, tops[0], "test", "zdtm", "static")):
            raise SourceError(f"{fname} holds no single criu-*/test/zdtm/static tree")
        dest = os.path.join(vdir, "src")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        top = os.path.join(dest, tops[0])
        with open(os.path.join(vdir, READY), "w") as f:
            f.write(top + "\n")
        return top


def _test_tree_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile filter: the members under criu-*/test/ that pass the "data" filter; nothing else."""
    parts = member.name.split("/")
    if len(parts) < 2 or parts[1] != "test":
        return None
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None   # a link out of the tree: no test needs it


def read_desc(static_dir: str, name: str) -> dict:
    """The test's NAME.desc (a Python dict literal, as CRIU's zdtm.py reads it), {} when none."""
    path = os.path.join(static_dir, name + ".desc")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        text = f.read()
    try:
        desc = ast.literal_eval(text.strip() or "{}")
    except (ValueError, SyntaxError):
        # zdtm.py eval()s it; a desc that computes its options from the block device zdtm.py is
        # given (mnt_ext_dev) is evaluated by the driver once it made one (zdtm/criu_tests.py)
        if EXT_DEV in text:
            return {"code": text}
        raise SourceError(f"{name}.desc is code, not a dict literal: not run by this driver") from None
    return desc if isinstance(desc, dict) else {}


# Tests whose Makefile rule links a library by its name alone (bpf_hash: -lbpf), which a static link
# needs with its own dependencies (pkg-config --static): those, in a link group opened before the
# objects (ld closes it at the end of the line, after the Makefile's -lbpf), so each finds the others.
STATIC_DEPS = {"bpf_hash": "libbpf", "bpf_array": "libbpf"}


def _static_ldflags(args: list[str]) -> str:
    """LDFLAGS for `make ARGS`: -static, and the link group of STATIC_DEPS' library of the test built."""
    lib = next((STATIC_DEPS[a] for a in args if a in STATIC_DEPS), None)
    if lib is None:
        return "-static"
    try:
        p = subprocess.run(["pkg-config", "--static", "--libs-only-l", lib], capture_output=True, text=True)
    except OSError:
        return "-static"
    return f"-static -Wl,--start-group {p.stdout.strip()}" if p.returncode == 0 else "-static"


def _make(args: list[str], cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # Static: the test's root (zdtm/criu_tests.py) then holds the binary and no library.
    env = dict(os.environ, LDFLAGS=_static_ldflags(args), MAKEFLAGS="", LC_ALL="C")
    try:
        return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                              env=env, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise SourceError(f"make could not run: {e}") from None


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return (errs or lines or ["no output"])[0][:300]


def _lib_options() -> str:
    """The optional libraries test/zdtm/lib's Makefile builds helpers for when pkg-config finds them
    (libbpf: bpfmap_zdtm.c, which bpf_hash and bpf_array link with), as "NAME=y|n" words."""
    def found(name: str) -> str:
        try:
            return "y" if subprocess.run(["pkg-config", "--exists", name], capture_output=True).returncode == 0 else "n"
        except OSError:
            return "n"
    return " ".join(f"{name}={found(name)}" for name in ("libbpf",))


def _build_lib(zdtm_dir: str) -> None:
    """test/zdtm/lib's libzdtmtst.a, built again when the optional libraries found differ from those
    it was built with (a -dev package installed since: its helpers were left out)."""
    lib = os.path.join(zdtm_dir, "lib", "libzdtmtst.a")
    stamp = os.path.join(zdtm_dir, "lib", ".mntcr-lib-options")
    want = _lib_options()
    try:
        with open(stamp) as f:
            had = f.read().strip()
    except OSError:
        had = None
    if os.path.exists(lib) and had == want:
        return
    if os.path.exists(lib):
        os.unlink(lib)
    p = _make(["-C", "lib", "libzdtmtst.a"], zdtm_dir)
    if p.returncode != 0:
        raise SourceError(f"building test/zdtm/lib failed: {_last_error(p.stderr + p.stdout)}")
    with open(stamp, "w") as f:
        f.write(want + "\n")


def build(names, top: str | None = None) -> dict[str, TestProgram | SourceError]:
    """Build the named static tests (cached); name -> TestProgram, or the SourceError saying why not."""
    top = top or source_tree()
    zdtm_dir = os.path.join(top, "test", "zdtm")
    static = os.path.join(zdtm_dir, "static")
    out: dict[str, TestProgram | SourceError] = {}
    with _locked(os.path.join(top, ".mntcr-build.lock")):
        _build_lib(zdtm_dir)
        for name in names:
            binary = os.path.join(static, name)
            if not os.path.exists(os.path.join(static, name + ".c")):
                out[name] = SourceError(f"{name}: no such static test in {os.path.basename(top)}")
                continue
            if not os.access(binary, os.X_OK):
                p = _make([name], static)
                if p.returncode != 0 or not os.access(binary, os.X_OK):
                    out[name] = SourceError(f"{name}: build failed: {_last_error(p.stderr + p.stdout)}")
                    continue
            p = _make(["-n", name + ".pid"], static)
            start = [ln.split() for ln in p.stdout.splitlines() if ln.startswith(f"./{name} ")]
            if p.returncode != 0 or len(start) != 1:
                out[name] = SourceError(f"{name}: its Makefile has no {name}.pid rule to start it")
                continue
            try:
                desc = read_desc(static, name)
            except SourceError as e:
                out[name] = e
                continue
            out[name] = TestProgram(name, binary, tuple(start[0][1:]), desc)
    return out
