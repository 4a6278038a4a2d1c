"""Scenario files: load, expand the params matrix, render with jinja2, validate.

A scenario file is YAML. Rendering is per field, after YAML parsing: the file
must be valid YAML as written, ``params`` (and ``exclude``) are taken as they
are, and every other string in the file is a jinja2 template rendered with
one combination of the matrix (undefined names are errors). So templates live
in strings (block scalars ``|`` for scripts), never around YAML structure:

    params:
      parent: [private, shared]
    setup: |
      mount --make-{{ parent }} /mnt
    expect:
      criu: "{% if parent == 'shared' %}crfail: criu bug 123{% else %}pass{% endif %}"

Rendered strings of non-script fields that must have a structure (``expect``,
``iters``, ``timeout``) are parsed after rendering, so a template may choose a
value per combination.

Every problem is a `ScenarioError` naming the file, the line when known, the
key, and what is allowed (zdtm/schema.py holds the allowed keys and values).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field

import jinja2
import yaml

from zdtm import golden, schema

__all__ = ["ScenarioError", "Expectation", "Requires", "Container", "Scenario", "ScenarioFile", "load", "render"]


class ScenarioError(ValueError):
    """A scenario file that cannot be used: names file, line, key and what is allowed."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path = path
        self.message = message
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        return (type(self), (self.path, self.message, self.line), self.__dict__)


@dataclass(frozen=True)
class Expectation:
    """What one backend is expected to do with one scenario instance."""

    outcome: str  # "pass" | "crfail" | "differs" (restores, but a different state: a known bug) | "skip"
    reason: str = ""

    def __str__(self) -> str:
        return self.outcome + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Requires:
    """What the machine must offer; a missing item skips the scenario with the reason."""

    kernel: str = ""            # version range, e.g. ">=5.15,<6.13"
    kernel_feature: str = ""    # what the range stands for (the skip line names it)
    filesystems: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    strategy: tuple[str, ...] = ()   # "axis=value" choices of engine.strategy
    idmappable: tuple[str, ...] = ()  # paths whose mounts must take an idmap on this machine


@dataclass(frozen=True)
class Container:
    """How the flavor builds the container (schema key `container`).

    `root` "slave": the container root is a slave of a peer group that lives
    outside the dumped tree (in a mount namespace the runner made, never the
    host's), like an LXC container on a host whose / is shared. The host dirs in
    `slave_host_dirs` are bound in as slaves of such outside groups too.
    `outside` runs in that namespace first and mounts what `binds` then binds
    into the container; `externals` are the container's mounts declared
    external to the backend (CRIU's --external mnt[MOUNTPOINT]:KEY), each
    restored from its outside path (mnt[KEY]:PATH).

    `users`: (name, uid, gid, supplementary gids, subordinate range or None) of users the machine
    knows for the item: dump and restore run where private copies of /etc/passwd, /etc/group,
    /etc/subuid and /etc/subgid list them (a rootless namespace's owner, its groups and the ids it
    may map: engine/ownergroups.py, engine/subids.py), never the host's files.
    """

    root: str = "private"                    # "private" | "slave"
    slave_host_dirs: tuple[str, ...] = ()
    outside: str = ""                        # sh making mounts outside the container ($OUT)
    binds: tuple[tuple[str, str], ...] = ()       # (mount point in the container, path under $OUT)
    externals: tuple[tuple[str, str], ...] = ()   # (mount point declared external, path under $OUT)
    users: tuple[tuple[str, int, int, tuple[int, ...], tuple[int, int] | None], ...] = ()

    @property
    def external_slavery(self) -> bool:
        """Whether some container mount has a master outside the tree."""
        return self.root == "slave" or bool(self.slave_host_dirs)

    @property
    def outer(self) -> bool:
        """Whether the backend runs in a mount namespace the runner made (external slavery, users; CRIU's
        zdtm tests with mounts made outside the test's namespace: mnt_ext_*)."""
        return self.external_slavery or bool(self.outside.strip()) or bool(self.users)


@dataclass(frozen=True)
class Scenario:
    """One rendered combination of a scenario file: everything a cycle needs."""

    path: str                     # file path as given to load()
    name: str                     # file stem
    params: dict                  # this combination (ordered like the file)
    description: str
    setup: str
    check: str | None
    requires: Requires
    expect: dict                  # backend name -> Expectation; "*" -> default
    flavors: tuple[str, ...]
    timeout: float
    iters: int
    container: Container = Container()
    fuse_restart: tuple[tuple[str, str], ...] = ()   # (subtype, command): restore's --fuse-restart
    server: tuple[str, str] | None = None   # (start, stop) sh of an external server (zdtm/fsserver.py)
    veths: tuple[tuple[str, str], ...] = ()  # (name, OUTER[@BRIDGE]): external veths (mntcr's --external veth)
    golden_path: str | None = None   # NAME.out beside the file, when there is one (zdtm/golden.py)
    golden: str | None = None        # its expected check output for this combination (None: none for it)

    @property
    def param_id(self) -> str:
        """``key=value-key=value`` (empty without params): the matrix part of the test id."""
        return param_id(self.params)

    def expectation(self, backend: str) -> Expectation:
        """The expectation for `backend` (the file's default when it names no such backend)."""
        return self.expect.get(backend) or self.expect.get("*") or Expectation("pass")


def param_id(params: dict) -> str:
    """The matrix part of a test id for one combination (see Scenario.param_id)."""
    return "-".join(f"{k}={_id_value(v)}" for k, v in params.items())


def _id_value(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^\w.+:]", "_", text)


@dataclass
class ScenarioFile:
    """A parsed (not yet rendered) scenario file and its matrix."""

    path: str
    raw: dict
    lines: dict = field(default_factory=dict)   # dotted key -> line number
    golden: dict | None = None                  # param_id -> expected check output (NAME.out), or None
    fstypes: list | None = None                 # a battery file: the --fstype entries it runs for (None: all)

    def combinations(self) -> list[dict]:
        """Every parameter combination (a list with one empty dict without params), minus `exclude`;
        a battery file's first parameter is `fstype` (the selected entries, zdtm/battery.py)."""
        params = self.raw.get("params") or {}
        if self.raw.get("battery"):
            from zdtm import battery
            params = {"fstype": battery.select(None) if self.fstypes is None else self.fstypes, **params}
        names = list(params)
        combos = [dict(zip(names, values)) for values in itertools.product(*(params[n] for n in names))]
        excludes = self.raw.get("exclude") or []
        return [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items()) for ex in excludes)]

    def render_all(self) -> list[Scenario]:
        """One Scenario per combination."""
        return [render(self, combo) for combo in self.combinations()]


# --- loading ---------------------------------------------------------------

def _to_python(node, path: str, lines: dict, prefix: str = ""):
    """Turn a composed YAML node into Python data, recording the line of every mapping key."""
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ScenarioError(path, "mapping keys must be plain strings", key_node.start_mark.line + 1)
            key = key_node.value
            dotted = f"{prefix}.{key}" if prefix else key
            if key in out:
                raise ScenarioError(path, f"duplicate key {dotted!r}", key_node.start_mark.line + 1)
            lines[dotted] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, path, lines, dotted)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path, lines, f"{prefix}[{i}]") for i, v in enumerate(node.value)]
    # Scalars: let the safe constructor resolve ints, bools, null, strings.
    return yaml.SafeLoader(yaml.dump(None)).construct_object(node, deep=True)


def load(path: str) -> ScenarioFile:
    """Read and validate the structure of a scenario file (before rendering)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError(path, f"cannot read: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise ScenarioError(path, f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    if node is None:
        raise ScenarioError(path, "empty file; a scenario needs at least " + ", ".join(schema.REQUIRED))
    if not isinstance(node, yaml.MappingNode):
        raise ScenarioError(path, "the top level must be a mapping of keys: " + ", ".join(schema.TOP_KEYS), 1)
    lines: dict = {}
    raw = _to_python(node, path, lines)
    sf = ScenarioFile(path=path, raw=raw, lines=lines)
    schema.validate_raw(sf, ScenarioError)
    try:
        # a battery file is sectioned by its fstype param even when it lists no params of its own
        sf.golden = golden.load(path, sectioned=bool(raw.get("params") or raw.get("battery")))
    except (golden.GoldenError, OSError) as e:
        raise ScenarioError(golden.path_for(path), f"golden output: {e}") from None
    return sf


# --- rendering -------------------------------------------------------------

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          autoescape=False)


def _render_str(sf: ScenarioFile, key: str, text: str, params: dict) -> str:
    try:
        return _ENV.from_string(text).render(**params)
    except jinja2.TemplateError as e:
        raise ScenarioError(sf.path, f"key {key!r}: template error: {e}", sf.lines.get(key.split("[")[0])) from None


def _render_value(sf: ScenarioFile, key: str, value, params: dict):
    if isinstance(value, str):
        return _render_str(sf, key, value, params)
    if isinstance(value, list):
        return [_render_value(sf, f"{key}[{i}]", v, params) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _render_value(sf, f"{key}.{k}", v, params) for k, v in value.items()}
    return value


def render(sf: ScenarioFile, params: dict) -> Scenario:
    """Render every templated field of `sf` with `params` and build the validated Scenario."""
    variables = dict(params)
    if sf.raw.get("battery"):
        # The --fstype battery: the type under test's recipe and requirements (zdtm/battery.py).
        from zdtm import battery
        variables["fs"] = battery.context(params["fstype"])
    raw = {k: (v if k in ("params", "exclude") else _render_value(sf, k, v, variables))
           for k, v in sf.raw.items()}
    if sf.raw.get("battery"):
        filesystems, commands = battery.requires(params["fstype"])
        req = dict(raw.get("requires") or {})
        req["filesystems"] = list(req.get("filesystems") or []) + filesystems
        req["commands"] = list(req.get("commands") or []) + commands
        raw["requires"] = req
        server = battery.server(params["fstype"])
        if server:
            raw["server"] = server
        restart = battery.restart(params["fstype"])
        if restart:
            raw["fuse_restart"] = {**dict(restart), **(raw.get("fuse_restart") or {})}
        why = battery.known_failure(params["fstype"], scenario_name(sf.path))
        if battery.unfinished(params["fstype"]):
            raw["expect"] = {"skip": battery.unfinished(params["fstype"])}
        elif why:
            exp = raw.get("expect") or "pass"
            if isinstance(exp, dict) and not (len(exp) == 1 and next(iter(exp)) in schema.OUTCOMES):
                raw["expect"] = {**exp, "mntcr": {"crfail": why}}
            else:
                raw["expect"] = {"default": exp, "mntcr": {"crfail": why}}
    sc = schema.build(sf, raw, params, ScenarioError)
    if sf.golden is None:
        return sc
    pinned = sf.golden.get(sc.param_id)
    if pinned is None and sf.raw.get("battery"):
        # A type module added since the battery's golden files were written runs unpinned (a new
        # type is one module, nothing else) until `--update-golden --fstype NAME` writes its section.
        return sc
    return dataclasses.replace(sc, golden_path=golden.path_for(sf.path), golden=pinned)


def scenario_name(path: str) -> str:
    """The scenario's short name: the file name without .yaml."""
    return os.path.splitext(os.path.basename(path))[0]


# --- requirements ------------------------------------------------------------

def _filesystems() -> set[str]:
    try:
        with open("/proc/filesystems") as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return set()


def load_filesystem_modules(req: Requires) -> list[str]:
    """Load the kernel modules of the filesystems `req` names that /proc/filesystems lacks; what failed.

    Used in a VM guest, whose kernel's modules ship with it (modprobe sees them
    under /lib/modules): a module that is merely not loaded yet must not skip a
    scenario. Block filesystems on loop devices (`losetup` among the commands)
    get the loop driver too. Never called on the host: the runner does not load
    modules into the machine's own kernel.
    """
    import subprocess
    have = _filesystems()
    wanted = [fs for fs in req.filesystems if fs not in have]
    if "losetup" in req.commands and not os.path.exists("/sys/module/loop"):
        wanted.append("loop")
    failed = []
    for name in wanted:
        # the fs-NAME alias (MODULE_ALIAS_FS) finds the module of a filesystem whose module is named otherwise
        if not any(subprocess.run(["modprobe", "-q", alias], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0
                   for alias in (name, f"fs-{name}")):
            failed.append(name)
    return failed


def missing_requirement(req: Requires, features: dict | None = None) -> str | None:
    """None when this machine meets `req`, else the first unmet requirement as a skip reason.

    `features` maps `mntcr check` names to Feature (engine.features.available());
    None probes them when the scenario asks for any.
    """
    import shutil
    if req.kernel:
        release = os.uname().release
        if not schema.kernel_in_range(release, req.kernel):
            what = f" ({req.kernel_feature})" if req.kernel_feature else ""
            return f"needs kernel {req.kernel}{what}, this is {release}"
    if req.filesystems:
        have = _filesystems()
        for fs in req.filesystems:
            if fs not in have:
                return f"filesystem {fs} is not in /proc/filesystems (module not loaded or not built)"
    for cmd in req.commands:
        if shutil.which(cmd) is None:
            return f"command {cmd} is not installed"
    if req.features:
        if features is None:
            from engine import features as engine_features
            features = engine_features.available()
        for name in req.features:
            if name not in features:
                return f"unknown kernel feature {name!r} (mntcr check knows: {', '.join(features)})"
            f = features[name]
            if not f.present:
                since = f" (kernel >= {f.since})" if getattr(f, "since", None) else ""
                return f"kernel feature {name}{since} is missing: {f.detail}"
    if req.strategy:
        from engine import features as engine_features, strategy
        if features is None:
            features = engine_features.available()
        chosen, forced = strategy.choose({n: f.present for n, f in features.items()}, os.environ.get(strategy.ENV, ""))
        for item in req.strategy:
            if item not in chosen.names():
                axis, value = item.split("=", 1)
                fast, _, feature = strategy.AXES[axis]
                since = engine_features.FEATURES.get(feature, (None, "?"))[1]
                why = (f"{strategy.ENV} forces it" if axis in forced
                       else f"kernel feature {feature} (kernel >= {since}) is missing" if value == fast
                       else f"kernel feature {feature} is present")
                return f"needs strategy {item}, this kernel uses {axis}={getattr(chosen, axis)}: {why}"
    for path in req.idmappable:
        why = idmap_refusal(path)
        if why:
            return why
    return None


def idmap_refusal(path: str) -> str | None:
    """None when a clone of the mount at `path` takes an idmap here, else why not (a skip reason).

    Whether a filesystem allows idmapped mounts is its own (FS_ALLOW_IDMAP), not a kernel
    feature: a qemu guest's root over 9p refuses them on a kernel that has them. Tried on a
    detached clone in a forked child's private mount namespace, so nothing here changes.
    """
    from engine import forkrun, kernel, mountinfo, userns

    def attempt() -> str | None:
        ufd = userns.make(userns.Maps(((0, 100000, 1),), ((0, 100000, 1),), "deny"))
        try:
            fd = kernel.open_tree(kernel.AT_FDCWD, path, kernel.OPEN_TREE_CLONE)
            try:
                userns.set_idmap(fd, ufd)
            except OSError as e:
                mounts = [m for m in mountinfo.read_pid("self")
                          if path == m.mountpoint or path.startswith(m.mountpoint.rstrip("/") + "/")]
                fstype = max(mounts, key=lambda m: len(m.mountpoint)).fstype if mounts else "?"
                return f"{path} cannot be idmapped here: its filesystem ({fstype}) takes no idmapped mounts ({e})"
            finally:
                os.close(fd)
        finally:
            os.close(ufd)
        return None

    try:
        return forkrun.in_mount_ns(attempt)
    except OSError as e:
        return f"{path} cannot be idmapped here: {e}"
