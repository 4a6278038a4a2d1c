"""The scenario schema: which keys exist, which values they take, and the checks.

Two passes: `validate_raw` checks the file as written (keys, types, the params
matrix) so a typo fails at collection even before rendering; `build` checks
the rendered values of one combination and makes the Scenario.
"""

from __future__ import annotations

import re

TOP_KEYS = {
    "description": "what real setup or bug this reproduces (string, required)",
    "requires": "mapping with kernel, filesystems, commands, features, strategy",
    "params": "mapping NAME: [values...]; each combination is one test id",
    "exclude": "list of {NAME: value, ...} combinations to leave out of the matrix",
    "setup": "sh script run as root inside the scenario, ending in `exec zdtm-hold` (required); "
             "$ZDTM_RUN_ID names the cgroups it makes (removed at teardown, zdtm/cgroups.py)",
    "check": "sh script; exits 0 and prints NAME.out (when there is one) before dump, the same after every restore",
    "expect": "pass | crfail: REASON | {BACKEND: pass | crfail: REASON | differs: REASON | skip: REASON, ...}",
    "flavors": "list of flavors this scenario runs in: ns, vm",
    "timeout": "seconds for the whole scenario (number, default 60)",
    "iters": "minimum number of dump/restore iterations (integer, default 1)",
    "container": "mapping with root, host_dirs, outside, binds, externals, users: how the flavor builds the "
                 "container (default: all private)",
    "fuse_restart": "mapping SUBTYPE: COMMAND the mntcr backend's restore gives as --fuse-restart (engine/fs/fuse.py)",
    "server": "mapping with start, stop: sh of a server outside the tree, run in a network and mount namespace of "
              "its own that the container, dump and restore share (zdtm/fsserver.py)",
    "veths": "mapping NAME: OUTER[@BRIDGE]: veths of the tree whose peer is outside it (in the `server`'s network "
             "namespace), declared to the mntcr backend's dump (--external veth[NAME]:NAME) and made again at restore "
             "with the outer end OUTER, on BRIDGE (--external veth[NAME]:OUTER@BRIDGE)",
    "battery": "true: a generic scenario of the --fstype battery (param fstype, template variable fs: zdtm/battery.py)",
}
REQUIRED = ("description", "setup")
REQUIRES_KEYS = {
    "kernel": "version range like '>=5.15' or '>=5.15,<6.13' (with kernel_feature)",
    "kernel_feature": "what the kernel range stands for, named in the skip line: the facility an older (or newer) "
                      "kernel lacks (required with kernel)",
    "filesystems": "list of names from /proc/filesystems",
    "commands": "list of commands that must be on PATH",
    "features": "list of `mntcr check` feature names",
    "strategy": "list of axis=value choices of the engine's kernel strategy (`mntcr check`, engine/strategy.py)",
    "idmappable": "list of absolute paths whose mounts must take an idmap here (their filesystem's FS_ALLOW_IDMAP; "
                  "a qemu guest's 9p root has none)",
}
CONTAINER_KEYS = {
    "root": "private (default) | slave: the container root is a slave of a peer group outside the tree",
    "host_dirs": "private (default) | slave | list of host dirs (usr, etc...) bound in as slaves of outside groups",
    "outside": "sh run before the container is built, in the runner's mount namespace outside it (its own, never "
               "the host's), with $OUT an empty directory there: mounts the tree will see from outside",
    "binds": "mapping MOUNTPOINT: PATH (relative to $OUT): bound into the container root before setup runs",
    "externals": "mapping MOUNTPOINT: PATH (relative to $OUT): the container's mount at MOUNTPOINT (a bind, or "
                 "one setup made) declared external to the backend, restored from $OUT/PATH "
                 "(criu --external mnt[MOUNTPOINT]:KEY at dump, mnt[KEY]:PATH at restore)",
    "users": "list of NAME:UID:GID:GID,GID...: users (primary and supplementary groups) dump and restore know",
}
HOST_DIRS = ("usr", "bin", "lib", "lib64", "sbin", "etc")
PROPAGATIONS = ("private", "slave")
FLAVORS = ("ns", "vm")
OUTCOMES = ("pass", "crfail", "differs", "skip")
DEFAULT_TIMEOUT = 60.0
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VERSION_TERM = re.compile(r"^(>=|<=|==|!=|<|>)\s*(\d+(?:\.\d+){0,2})$")


def _allowed(keys) -> str:
    return ", ".join(keys)


def validate_raw(sf, error) -> None:
    """Check the unrendered file: known keys, required keys, params/exclude shapes."""
    raw, path, lines = sf.raw, sf.path, sf.lines
    for key in raw:
        if key not in TOP_KEYS:
            raise error(path, f"unknown key {key!r}; allowed: {_allowed(TOP_KEYS)}", lines.get(key))
    for key in REQUIRED:
        if key not in raw:
            raise error(path, f"missing required key {key!r} ({TOP_KEYS[key]})")
    for key in ("description", "setup", "check"):
        if key in raw and not isinstance(raw[key], str):
            raise error(path, f"key {key!r} must be a string ({TOP_KEYS[key]})", lines.get(key))
    if "battery" in raw and not isinstance(raw["battery"], bool):
        raise error(path, f"key 'battery' must be true or false ({TOP_KEYS['battery']})", lines.get("battery"))
    params = raw.get("params")
    if raw.get("battery") and "fstype" in (params or {}):
        raise error(path, "a battery file gets its 'fstype' param from --fstype; do not list it", lines.get("params"))
    if params is not None:
        if not isinstance(params, dict) or not params:
            raise error(path, f"key 'params' must be a non-empty mapping ({TOP_KEYS['params']})", lines.get("params"))
        for name, values in params.items():
            if not _PARAM_NAME.match(name):
                raise error(path, f"params name {name!r} must be an identifier (letters, digits, _)",
                            lines.get(f"params.{name}"))
            if name in TOP_KEYS:
                raise error(path, f"params name {name!r} clashes with a scenario key", lines.get(f"params.{name}"))
            if not isinstance(values, list) or not values:
                raise error(path, f"key 'params.{name}' must be a non-empty list of values",
                            lines.get(f"params.{name}"))
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise error(path, f"key 'params.{name}': values must be scalars, got {v!r}",
                                lines.get(f"params.{name}"))
            if len(set(map(str, values))) != len(values):
                raise error(path, f"key 'params.{name}' has duplicate values", lines.get(f"params.{name}"))
    exclude = raw.get("exclude")
    if exclude is not None:
        if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
            raise error(path, f"key 'exclude' must be {TOP_KEYS['exclude']}", lines.get("exclude"))
        for e in exclude:
            for name, value in e.items():
                if name not in (params or {}):
                    raise error(path, f"key 'exclude' names unknown param {name!r}; params: "
                                      f"{_allowed(params or {}) or '(none)'}", lines.get("exclude"))
                if value not in params[name]:
                    raise error(path, f"key 'exclude': {value!r} is not a value of param {name!r}",
                                lines.get("exclude"))
    for name, allowed in (("requires", REQUIRES_KEYS), ("container", CONTAINER_KEYS)):
        section = raw.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise error(path, f"key {name!r} must be a mapping with keys {_allowed(allowed)}", lines.get(name))
        for key in section:
            if key not in allowed:
                raise error(path, f"unknown key '{name}.{key}'; allowed: {_allowed(allowed)}",
                            lines.get(f"{name}.{key}"))
    flavors = raw.get("flavors")
    if flavors is not None:
        if not isinstance(flavors, list) or not flavors:
            raise error(path, f"key 'flavors' must be a non-empty list of: {_allowed(FLAVORS)}", lines.get("flavors"))
        for fl in flavors:
            if fl not in FLAVORS:
                raise error(path, f"key 'flavors': unknown flavor {fl!r}; allowed: {_allowed(FLAVORS)}",
                            lines.get("flavors"))


def parse_version(text: str) -> tuple[int, ...]:
    """'6.1.12-foo' -> (6, 1, 12); missing parts are 0."""
    m = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        raise ValueError(f"not a kernel version: {text!r}")
    return tuple(int(g or 0) for g in m.groups())


def check_kernel_range(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parse '>=5.15,<6.13' into [('>=', (5,15,0)), ('<', (6,13,0))]; ValueError when malformed."""
    terms = []
    for part in spec.split(","):
        m = _VERSION_TERM.match(part.strip())
        if not m:
            raise ValueError(f"bad version term {part.strip()!r} (use >=X.Y, <X.Y, ==X.Y...)")
        terms.append((m.group(1), parse_version(m.group(2))))
    return terms


def kernel_in_range(release: str, spec: str) -> bool:
    """Whether kernel `release` (uname -r) satisfies range `spec`."""
    v = parse_version(release)
    ops = {">=": v.__ge__, "<=": v.__le__, "==": v.__eq__, "!=": v.__ne__, "<": v.__lt__, ">": v.__gt__}
    return all(ops[op](ver) for op, ver in check_kernel_range(spec))


def _str_list(path, lines, error, key, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise error(path, f"key {key!r} must be a list of names", lines.get(key))
    return tuple(value)


def _strategy(path, lines, error, value) -> tuple[str, ...]:
    from engine import strategy
    items = _str_list(path, lines, error, "requires.strategy", value)
    try:
        strategy.parse_override(",".join(items))
    except strategy.StrategyError as e:
        raise error(path, f"key 'requires.strategy': {str(e).split(': ', 1)[1]}",
                    lines.get("requires.strategy")) from None
    return items


def _container(path, lines, error, value):
    """`container: {root: private|slave, host_dirs: private|slave|[names], outside: SH,
    binds: {MOUNTPOINT: PATH}, externals: {MOUNTPOINT: PATH}, users: [NAME:UID:GID:GIDS[:START:COUNT]]}`
    -> Container."""
    from zdtm.scenario import Container
    value = value or {}
    root = value.get("root", "private")
    if root not in PROPAGATIONS:
        raise error(path, f"key 'container.root': bad value {root!r}; allowed: {_allowed(PROPAGATIONS)}",
                    lines.get("container.root"))
    dirs = value.get("host_dirs", "private")
    if dirs == "slave":
        slave_dirs = HOST_DIRS
    elif dirs == "private":
        slave_dirs = ()
    elif isinstance(dirs, list) and dirs and all(d in HOST_DIRS for d in dirs):
        slave_dirs = tuple(dirs)
    else:
        raise error(path, f"key 'container.host_dirs': bad value {dirs!r}; allowed: {_allowed(PROPAGATIONS)} "
                          f"or a list of: {_allowed(HOST_DIRS)}", lines.get("container.host_dirs"))
    outside = value.get("outside", "")
    if not isinstance(outside, str):
        raise error(path, "key 'container.outside' must be an sh script", lines.get("container.outside"))
    maps = {}
    for key in ("binds", "externals"):
        m = value.get(key) or {}
        if not isinstance(m, dict) or not all(
                isinstance(k, str) and k.startswith("/") and k != "/" and ".." not in k.split("/")
                and isinstance(v, str) and v
                and not v.startswith("/") and ".." not in v.split("/") for k, v in m.items()):
            raise error(path, f"key 'container.{key}': expected a mapping MOUNTPOINT: PATH (an absolute mount "
                              "point in the container, a path relative to $OUT)", lines.get(f"container.{key}"))
        if m and not outside.strip():
            raise error(path, f"key 'container.{key}' needs 'container.outside' (which makes what it names)",
                        lines.get(f"container.{key}"))
        maps[key] = tuple(m.items())
    keys = [mp.replace("/", "-") for mp, _ in maps["externals"]]   # (the backend key: zdtm/flavors/ns.py)
    if len(set(keys)) < len(keys):
        raise error(path, "key 'container.externals': two mount points give one external key "
                          "(outside-A-B names both /A-B and /A/B)", lines.get("container.externals"))
    users = value.get("users") or []
    if not isinstance(users, list):
        raise error(path, "key 'container.users' must be a list of NAME:UID:GID:GID,GID...[:START:COUNT]",
                    lines.get("container.users"))
    return Container(root=root, slave_host_dirs=slave_dirs, outside=outside, binds=maps["binds"],
                     externals=maps["externals"], users=tuple(_user(path, lines, error, u) for u in users))


_USER = re.compile(r"([a-z_][a-z0-9_-]{0,30}):(\d{1,10}):(\d{1,10}):((?:\d{1,10}(?:,\d{1,10})*)?)"
                   r"(?::(\d{1,10}):(\d{1,10}))?")


def _user(path, lines, error, text):
    """`NAME:UID:GID:GID,GID...[:START:COUNT]` of `container.users` -> (name, uid, gid, supplementary
    gids, subordinate range (start, count) or None)."""
    m = _USER.fullmatch(text) if isinstance(text, str) else None
    if m is None or (m[5] and not (int(m[6]) > 0 and int(m[5]) + int(m[6]) <= 1 << 32)):
        raise error(path, f"key 'container.users': bad entry {text!r}; want NAME:UID:GID:GID,GID... or "
                          "NAME:UID:GID:GID,GID...:START:COUNT (COUNT > 0, START + COUNT <= 2^32)",
                    lines.get("container.users"))
    return (m[1], int(m[2]), int(m[3]), tuple(int(g) for g in m[4].split(",") if g),
            (int(m[5]), int(m[6])) if m[5] else None)


def _expectation(path, lines, error, key, value):
    from zdtm.scenario import Expectation
    if isinstance(value, str):
        text = value.strip()
        outcome, sep, reason = text.partition(":")
        outcome = outcome.strip()
        value = {outcome: reason.strip()} if sep else outcome
    if value == "pass":
        return Expectation("pass")
    if isinstance(value, dict) and len(value) == 1:
        (outcome, reason), = value.items()
        if outcome in ("crfail", "differs", "skip"):
            if not isinstance(reason, str) or not reason.strip():
                raise error(path, f"key {key!r}: {outcome} needs a reason (a non-empty string)", lines.get(key))
            return Expectation(outcome, reason.strip())
        if outcome == "pass":
            return Expectation("pass")
    raise error(path, f"key {key!r}: bad value {value!r}; allowed: pass, crfail: REASON, differs: REASON, "
                      "skip: REASON", lines.get(key))


def _expect(path, lines, error, value) -> dict:
    """Normalise `expect` into {backend or '*': Expectation}."""
    if value is None:
        return {"*": _expectation(path, lines, error, "expect", "pass")}
    if isinstance(value, str):
        return {"*": _expectation(path, lines, error, "expect", value)}
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in OUTCOMES:
            return {"*": _expectation(path, lines, error, "expect", value)}
        out = {}
        for backend, v in value.items():
            if not re.match(r"^[a-z][a-z0-9_]*$", backend):
                raise error(path, f"key 'expect': {backend!r} is not a backend name "
                                  "(use a lower-case name like mntcr, criu, or 'default')", lines.get("expect"))
            out["*" if backend == "default" else backend] = _expectation(
                path, lines, error, f"expect.{backend}", v)
        return out
    raise error(path, f"key 'expect': bad value {value!r}; allowed: {TOP_KEYS['expect']}", lines.get("expect"))


def _number(path, lines, error, key, value, kind, default):
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
            kind is int and value != int(value)):
        raise error(path, f"key {key!r} must be a positive {kind.__name__}, got {value!r}", lines.get(key))
    return kind(value)


def build(sf, raw: dict, params: dict, error):
    """Validate the rendered values of one combination and return the Scenario."""
    from zdtm.scenario import Requires, Scenario, scenario_name
    path, lines = sf.path, sf.lines
    req = raw.get("requires") or {}
    kernel = req.get("kernel", "")
    if kernel:
        if not isinstance(kernel, str):
            kernel = str(kernel)
        try:
            check_kernel_range(kernel)
        except ValueError as e:
            raise error(path, f"key 'requires.kernel': {e}", lines.get("requires.kernel")) from None
    feature = req.get("kernel_feature", "")
    if not isinstance(feature, str) or (kernel and not feature.strip()):
        raise error(path, "key 'requires.kernel' needs 'requires.kernel_feature': the facility the range stands for "
                          "(the skip line names it)", lines.get("requires.kernel")) from None
    requires = Requires(
        kernel=kernel,
        kernel_feature=" ".join(feature.split()) if kernel else "",
        filesystems=_str_list(path, lines, error, "requires.filesystems", req.get("filesystems", [])),
        commands=_str_list(path, lines, error, "requires.commands", req.get("commands", [])),
        features=_str_list(path, lines, error, "requires.features", req.get("features", [])),
        strategy=_strategy(path, lines, error, req.get("strategy", [])),
        idmappable=_str_list(path, lines, error, "requires.idmappable", req.get("idmappable", [])),
    )
    check = raw.get("check")
    return Scenario(
        path=path,
        name=scenario_name(path),
        params=dict(params),
        description=raw["description"].strip(),
        setup=raw["setup"],
        check=check if check and check.strip() else None,
        requires=requires,
        expect=_expect(path, lines, error, raw.get("expect")),
        flavors=tuple(raw.get("flavors") or FLAVORS),
        timeout=_number(path, lines, error, "timeout", raw.get("timeout"), float, DEFAULT_TIMEOUT),
        iters=_number(path, lines, error, "iters", raw.get("iters"), int, 1),
        container=_container(path, lines, error, raw.get("container")),
        fuse_restart=_fuse_restart(path, lines, error, raw.get("fuse_restart")),
        server=_server(path, lines, error, raw.get("server")),
        veths=_veths(path, lines, error, raw.get("veths")),
    )


def _veths(path, lines, error, value) -> tuple[tuple[str, str], ...]:
    """`veths: {NAME: OUTER[@BRIDGE]}` -> ((name, spec), ...)."""
    if value is None:
        return ()
    name = re.compile(r"^[A-Za-z0-9_.:+-]{1,15}$")
    if not isinstance(value, dict) or not all(isinstance(k, str) and name.match(k) and isinstance(v, str)
                                              and all(name.match(x) for x in v.split("@", 1)) for k, v in value.items()):
        raise error(path, "key 'veths': expected a mapping NAME: OUTER[@BRIDGE] (interface names)", lines.get("veths"))
    return tuple(value.items())


def _server(path, lines, error, value) -> tuple[str, str] | None:
    """`server: {start: SH, stop: SH}` -> (start, stop)."""
    if value is None:
        return None
    if (not isinstance(value, dict) or set(value) != {"start", "stop"}
            or not all(isinstance(v, str) and v.strip() for v in value.values())):
        raise error(path, "key 'server': expected a mapping with start and stop (sh scripts)", lines.get("server"))
    return (value["start"], value["stop"])


def _fuse_restart(path, lines, error, value) -> tuple[tuple[str, str], ...]:
    """`fuse_restart: {SUBTYPE: COMMAND}` -> ((subtype, command), ...)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                              for k, v in value.items()):
        raise error(path, "key 'fuse_restart': expected a mapping SUBTYPE: COMMAND", lines.get("fuse_restart"))
    return tuple(value.items())
