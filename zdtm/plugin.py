"""pytest plugin: scenario files become tests; options, summary table, report, leak guard.

- Collects ``scenarios/**/*.yaml`` (YAML files with a directory called
  ``scenarios`` in their path). One item per parameter combination x backend
  x flavor; its id is ``path::name[params-backend-flavor]``.
- A bad scenario file is a collection error naming file, line, key and what
  is allowed.
- Setup runs in the item's setup phase: a failing setup is a pytest *error*
  ("SETUP ERROR"), not a test failure. The C/R cycle is the call phase.
- The controller (also under xdist) collects every report into the summary
  table (scenario x backend x flavor) and, with --report DIR, writes
  report.html, summary.md and results.json there (zdtm/report*.py); every
  item keeps its snapshot before dump under DIR/<test id>/, failed items
  their images and logs too. Items carry kernel, engine, flavor and phase
  times as user properties (JUnit XML <property>, zdtm/report_record.py).
- Leak guard (zdtm/leakguard.py): the host's mounts at session start vs at
  session end (new, disappeared and changed mounts), and the holders, keepers and
  stand-ins of this session still alive at its end, fail the session and are
  named; after every test, the process that ran it compares its mountinfo
  with the table before the test and fails that test's teardown naming the
  mounts it leaked, removed or changed. Only the test's own changes count
  (leakguard.attribute); other programs' changes are a warning. Loop devices
  bound during the session that the kernel keeps where no namespace or process
  shows them fail the session too (zdtm/loopguard.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings

import pytest

from zdtm import backends, cycle, item as item_mod, leakguard, loopguard, report_record, scenario as scenario_mod
from zdtm.flavors import get as get_flavor

_PROP = report_record.PROP


def pytest_addoption(parser):
    group = parser.getgroup("zdtm", "zdtm-style mount C/R scenarios")
    group.addoption("--backend", default="mntcr", metavar="NAME",
                    help="C/R backend: mntcr (default), criu, or all (every registered backend)")
    group.addoption("--flavor", default="ns", metavar="NAME",
                    help="where scenarios run: ns (throwaway namespaces here, default) or vm")
    group.addoption("--kernel", default=None, metavar="NAME",
                    help="kernel(s) for the vm flavor: NAME, NAME,NAME or all (see vm/kernels.toml; default 6.1)")
    group.addoption("--vm-provider", default="qemu", choices=("qemu", "vagrant"),
                    help="VM provider for the vm flavor: qemu (fast path, default) or vagrant")
    group.addoption("--vm-accel", default=None, choices=("kvm", "tcg"),
                    help="force the vm flavor's accelerator (default: MNTCR_VM_ACCEL, else KVM when a probe "
                         "boot works, else TCG)")
    group.addoption("--fstype", default=None, metavar="NAME[,NAME...]|all",
                    help="run only the filesystem battery (scenarios/battery/) for these type modules "
                         "(engine/fs/NAME.py); without it the battery runs for every type beside the rest")
    group.addoption("--iters", type=int, default=1, metavar="N",
                    help="dump/restore iterations per scenario, each on the tree the previous one restored")
    group.addoption("--pause", type=float, default=None, metavar="SECONDS",
                    help="sleep SECONDS between the snapshot before dump and the dump, and between each "
                         "restore and its snapshot, to widen the windows where a scenario's time-dependent "
                         "state (timers, periodic wakes) changes (default: $MNTCR_ZDTM_PAUSE, else 0)")
    group.addoption("--report", default=None, metavar="DIR",
                    help="keep images and logs of failures in DIR and write DIR/report.html and DIR/summary.md")
    group.addoption("--update-golden", action="store_true", default=False,
                    help="write each scenario's check output before dump to NAME.out beside it "
                         "(instead of comparing with it)")
    group.addoption("--criu", default="auto", metavar="PATH|trixie|sid|system|auto",
                    help="which criu the criu backend runs (see zdtm/criu_env.py)")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class _State:
    """Per-session state of the plugin (on config)."""

    def __init__(self, config):
        self.config = config
        value = config.getoption("backend")
        if value == "all":
            self.backend_names = backends.names()
        else:
            self.backend_names = [b.strip() for b in value.split(",") if b.strip()]
            for name in self.backend_names:
                if name not in backends.names():
                    raise pytest.UsageError(f"--backend {name}: unknown backend; available: "
                                            f"{', '.join(backends.names())}, all")
        self.flavor_names = [f.strip() for f in config.getoption("flavor").split(",") if f.strip()]
        self.kernel_names = _vm_kernels(config.getoption("kernel")) if "vm" in self.flavor_names else [None]
        self.update_golden = config.getoption("update_golden")
        if self.update_golden and self.flavor_names != ["ns"]:
            raise pytest.UsageError("--update-golden runs in the ns flavor only (--flavor ns)")
        from zdtm import battery
        self.fstype_only = config.getoption("fstype") is not None
        try:
            self.fstypes = battery.select(config.getoption("fstype"))
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        self.iters = config.getoption("iters")
        if self.iters < 1:
            raise pytest.UsageError("--iters must be at least 1")
        self.pause = _pause(config.getoption("pause"))
        report = config.getoption("report")
        self.report_dir = os.path.abspath(report) if report else None
        self.results: dict[str, dict] = {}   # nodeid -> summary row (controller only)
        self.guard = None
        self.leaks = []
        self.gone = []          # host mounts that disappeared during the session
        self.changed = []       # host mounts whose flags or propagation changed
        self.foreign = leakguard.Changes()  # host mount changes by other programs (a warning)
        self.leftovers = []     # processes of this session alive at its end
        self.loopguard = None   # loop devices bound at session start (zdtm/loopguard.py)
        self.loop_leaks = []    # loop devices the kernel keeps bound after the session
        self.unexpected = []    # vm flavor: results that differ from vm/expected.toml (zdtm.expected)
        self.tracker = None     # per-test mountinfo comparison (every process that runs tests)
        self.tmp_base = None

    def workdir(self, nodeid: str) -> str:
        if self.tmp_base is None:
            parent = None
            if "vm" in self.flavor_names:
                # A VM sees the host only through its results share, never the host's /tmp.
                from vm import cache
                parent = cache.sub("zdtm-work")
            # the session id in the name: a mount beneath is recognisably this session's (leak guard)
            session = os.environ.get(leakguard.SESSION_ENV, "")
            self.tmp_base = tempfile.mkdtemp(prefix=f"zdtm-{session}-" if session else "zdtm-", dir=parent)
        return tempfile.mkdtemp(prefix=safe_name(nodeid)[-60:] + ".", dir=self.tmp_base)


PAUSE_ENV = "MNTCR_ZDTM_PAUSE"


def _pause(option: float | None) -> float:
    """--pause, else $MNTCR_ZDTM_PAUSE, else 0: seconds the cycle sleeps around its snapshots."""
    value = option
    if value is None:
        raw = os.environ.get(PAUSE_ENV, "").strip() or "0"
        try:
            value = float(raw)
        except ValueError:
            raise pytest.UsageError(f"{PAUSE_ENV}={raw!r}: not a number of seconds; set it to e.g. 10") from None
    if not 0 <= value <= 3600:
        raise pytest.UsageError(f"--pause {value:g}: give seconds between 0 and 3600 (--pause or {PAUSE_ENV})")
    return value


def _vm_kernels(value: str | None) -> list[str]:
    """--kernel NAME | NAME,NAME | all -> matrix names for the vm flavor (none given: the default kernel).

    `all` is every row of vm/kernels.toml but `host` (that one is the ns flavor);
    a row a provider cannot boot (no 9p for qemu) is then skipped with its reason.
    """
    from vm import matrix, session
    if not value:
        return [session.DEFAULT_KERNEL]
    rows = matrix.load()
    if value == "all":
        return [n for n, spec in rows.items() if not spec.is_host]
    names = [k.strip() for k in value.split(",") if k.strip()]
    for n in names:
        if n not in rows:
            raise pytest.UsageError(f"--kernel {n}: unknown kernel; the matrix has: {', '.join(rows)}, all")
    return names


def safe_name(nodeid: str) -> str:
    """A file name for a test id."""
    return re.sub(r"[^\w.=+-]+", "_", nodeid).strip("_")


def _state(config) -> _State:
    return config.stash[_STATE_KEY]


_STATE_KEY = pytest.StashKey[_State]()


def pytest_configure(config):
    config.stash[_STATE_KEY] = _State(config)
    config.addinivalue_line("markers", "zdtm: a zdtm scenario (collected from scenarios/**/*.yaml)")
    if not _is_worker(config):
        if leakguard.SESSION_ENV not in os.environ:
            # Outermost session only: a session run inside another's test (pytester) would see
            # the loop devices of the outer session's other workers come and go.
            _state(config).loopguard = loopguard.Guard()
        # Marks every process this session starts (workers, keepers, containers, stand-ins
        # inherit it), so leftovers are found without blaming other sessions on the machine.
        os.environ[leakguard.SESSION_ENV] = leakguard.new_session_id()
        # Workers inherit whether every change of the host's table is this session's.
        os.environ[leakguard.EXCLUSIVE_ENV] = "1" if leakguard.namespace_exclusive(
            os.environ[leakguard.SESSION_ENV]) else "0"
        _state(config).guard = leakguard.Guard()
        config.pluginmanager.register(Controller(config), "zdtm-controller")


def pytest_unconfigure(config):
    state = config.stash.get(_STATE_KEY, None)
    if state is not None:
        for name in state.flavor_names:
            try:
                get_flavor(name).close()
            except ValueError:
                pass
    if state is not None and state.tmp_base:
        shutil.rmtree(state.tmp_base, ignore_errors=True)


def pytest_collect_file(file_path, parent):
    if file_path.suffix in (".yaml", ".yml") and "scenarios" in file_path.parent.parts:
        return ScenarioFileNode.from_parent(parent, path=file_path)
    return None


class ScenarioFileNode(pytest.File):
    """One scenario file: an item per combination x backend x flavor."""

    def collect(self):
        state = _state(self.config)
        sf = scenario_mod.load(str(self.path))
        if sf.raw.get("battery"):
            sf.fstypes = state.fstypes
        elif state.fstype_only:
            return  # --fstype: the battery alone
        for sc in sf.render_all():
            for bname in state.backend_names:
                for fname in state.flavor_names:
                    kernels = state.kernel_names if fname == "vm" else [None]
                    for kname in kernels:
                        # the kernel joins the id only when several run (ids stay stable for one)
                        fid = f"{fname}-{kname}" if kname and len(kernels) > 1 else fname
                        parts = [p for p in (sc.param_id, bname, fid) if p]
                        yield ScenarioItem.from_parent(self, name=f"{sc.name}[{'-'.join(parts)}]", scenario=sc,
                                                       backend_name=bname, flavor_name=fname, kernel_name=kname)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, scenario_mod.ScenarioError):
            return f"scenario error: {excinfo.value}"
        return super().repr_failure(excinfo)


class ScenarioItem(pytest.Item):
    """One scenario instance run through one backend in one flavor.

    Its settings are resolved once, here, into `self.spec` (zdtm.item.ItemSpec);
    the flavor runs it (`flavor.run(spec, workdir)`: in this process for ns, in a
    guest for vm) in the setup phase, and the Outcome becomes the report: skip,
    setup error (pytest ERROR), or, in the call phase, pass / crfail / failure.
    """

    def __init__(self, *, scenario, backend_name, flavor_name, kernel_name=None, **kwargs):
        super().__init__(**kwargs)
        self.scenario = scenario
        self.backend_name = backend_name
        self.flavor_name = flavor_name
        self.kernel_name = kernel_name  # vm flavor: the matrix kernel of this item (None: the default)
        if kernel_name:
            # with --dist loadgroup a kernel's items share one worker, hence one VM
            self.add_marker(pytest.mark.xdist_group(f"vm-{kernel_name}"))
        state = _state(self.config)
        vm = flavor_name == "vm"
        self.spec = item_mod.ItemSpec(
            scenario=scenario, backend=backend_name, flavor=flavor_name,
            iters=max(state.iters, scenario.iters), criu=self.config.getoption("criu") or "auto",
            kernel=kernel_name if vm else None, provider=self.config.getoption("vm_provider") if vm else None,
            accel=self.config.getoption("vm_accel") if vm else None, update_golden=state.update_golden,
            pause=state.pause)
        self.flavor = None
        self.outcome = None
        self.workdir = None
        self.failed = False
        self.timings: dict[str, float] = {}   # phase -> seconds (zdtm.report_record.PHASES)
        self.add_marker("zdtm")
        self.user_properties += report_record.properties(report_record.facts(
            scenario, os.path.relpath(scenario.path, str(self.config.rootpath)), backend_name, flavor_name,
            kernel_name))

    def setup(self):
        state = _state(self.config)
        reason = item_mod.static_skip(self.spec)
        if reason:
            pytest.skip(reason)
        try:
            self.flavor = get_flavor(self.flavor_name)
        except ValueError as e:
            pytest.skip(str(e))
        reason = self.flavor.unavailable(self.spec)
        if reason:
            pytest.skip(f"flavor {self.flavor_name}: {reason}")
        self.workdir = state.workdir(self.nodeid)
        self.outcome = out = self.flavor.run(self.spec, self.workdir)
        self.timings.update(out.timings)
        if out.kernel:
            self.user_properties.append(("kernel_release", out.kernel))
        if out.outcome == "skip":
            pytest.skip(out.message)
        if out.outcome == "setup-error":
            self.failed = True
            where = f" (kernel {out.kernel})" if self.flavor_name == "vm" else ""
            # In the setup phase pytest reports an ERROR; pytrace=False keeps it to the message.
            pytest.fail(f"SETUP ERROR (not a C/R failure) in {self.scenario.path}{where}: {out.message}",
                        pytrace=False)

    def runtest(self):
        out = self.outcome
        if out.outcome == "fail":
            self.failed = True
            where = f"[kernel {out.kernel}] " if self.flavor_name == "vm" else ""
            raise cycle.CycleFailure(where + out.message, kind=out.kind)
        if out.outcome == "crfail":
            self.user_properties.append(("zdtm_crfail", out.message))

    def teardown(self):
        state = _state(self.config)
        self.user_properties += report_record.timing_properties(self.timings)
        if self.workdir:
            if state.report_dir:
                report_record.keep(self.workdir, os.path.join(state.report_dir, safe_name(self.nodeid)), self.failed,
                                   golden=getattr(self.scenario, "golden", None))
            shutil.rmtree(self.workdir, ignore_errors=True)

    def repr_failure(self, excinfo, style=None):
        exc = excinfo.value
        if isinstance(exc, cycle.CycleFailure):
            state = _state(self.config)
            if self.workdir and state.report_dir:
                # teardown copies the workdir there and deletes it: name the copy's logs.
                return str(exc).replace(self.workdir, os.path.join(state.report_dir, safe_name(self.nodeid)))
            return str(exc)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.name


# --- per-test leak check (every process that runs tests) ---------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    state = _state(item.config)
    if state.tracker is None:
        state.tracker = leakguard.Tracker()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the test's own teardown: the mounts it left on (or took off) this process's namespace."""
    state = _state(item.config)
    test_marks = _test_marks(item)  # before the fixtures go (tmp_path)
    error = None
    try:
        result = yield
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the check
        error = e
    if state.tracker is None:
        if error is not None:
            raise error
        return None
    own, foreign = leakguard.attribute(state.tracker.changes(), test_marks, _session_marks(item.config),
                                       sole=_sole_runner(item.config))
    if foreign:
        warnings.warn(leakguard.ForeignMountChange(
            f"leak guard: during {item.nodeid} other programs changed the host's mounts "
            f"(not this test's, not a failure):\n{foreign.describe()}"))
    text = own.describe()
    if text:
        text = f"leak guard: {item.nodeid} changed the host's mounts:\n{text}"
        if error is not None:
            item.add_report_section("teardown", "leak guard", text)
        else:
            pytest.fail(text, pytrace=False)
    if error is not None:
        raise error
    return result


def _test_marks(item) -> list[str]:
    """What a mount of this test carries (leak guard): its workdir, its tmp_path."""
    marks = [getattr(item, "workdir", None)]
    funcargs = getattr(item, "funcargs", None) or {}
    marks += [str(funcargs[name]) for name in ("tmp_path", "tmpdir") if name in funcargs]
    return [os.path.abspath(m) for m in marks if m]


def _session_marks(config) -> list[str]:
    """What a mount of this session carries: the session id (in the runner's work directories'
    names) and the session's pytest basetemp (the workers' are beneath the controller's)."""
    marks = [os.environ.get(leakguard.SESSION_ENV, "")]
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        base = factory.getbasetemp()
        marks.append(str(base.parent if base.name.startswith("popen-gw") else base))
    return [m for m in marks if m]


def _sole_runner(config) -> bool:
    """Whether every change of the host's table during a test is that test's: the session owns
    the namespace and runs one test at a time."""
    if os.environ.get(leakguard.EXCLUSIVE_ENV) != "1":
        return False
    return not _is_worker(config) or int(config.workerinput.get("workercount", 1)) <= 1


# --- summary, report, leak guard (controller only) ---------------------------------

_XDIST_HEADER = re.compile(r"^\[gw\d+\] \S+ -- Python ")
_MESSAGE_LIMIT = 20000  # characters of a failure's full text kept for the report


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        text = longrepr[2]
        return text[len("Skipped: "):] if text.startswith("Skipped: ") else text
    text = report.longreprtext if longrepr is not None else ""
    # xdist prefixes a worker header ("[gw1] linux -- Python 3.11 ...") to the text.
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _XDIST_HEADER.match(line)]
    return lines[0] if lines else ""


class Controller:
    """Hooks that run only in the controlling process (also under xdist): summary, report, leak guard."""

    def __init__(self, config):
        self.config = config
        self.state = _state(config)

    def pytest_runtest_logreport(self, report):
        props = dict(report.user_properties)
        if _PROP not in props:
            return
        row = self.state.results.setdefault(report.nodeid,
                                            dict(json.loads(props[_PROP]), outcome="pass", reason="",
                                                 artifacts=safe_name(report.nodeid)))
        row["timings"] = report_record.timings_from(props)
        if "kernel_release" in props:
            row["kernel_release"] = props["kernel_release"]
        if report.when == "setup" and report.skipped:
            row.update(outcome="skip", reason=_reason(report))
        elif report.failed:
            if row["outcome"] in ("pass", "skip"):  # the first failure is the reason
                row.update(outcome="error" if report.when != "call" else "fail", reason=_reason(report),
                           message=report.longreprtext[:_MESSAGE_LIMIT])
        elif report.when == "call" and report.passed and "zdtm_crfail" in props:
            row.update(reason="crfail as expected: " + props["zdtm_crfail"])

    def pytest_sessionfinish(self, session, exitstatus):
        state = self.state
        if state.guard is not None:
            changes = state.guard.changes()
            if os.environ.get(leakguard.EXCLUSIVE_ENV) == "1":
                own, state.foreign = changes, leakguard.Changes()
            else:
                own, state.foreign = changes.split(_session_marks(self.config))
            state.leaks, state.gone, state.changed = own.new, own.gone, own.changed
            session_id = os.environ.get(leakguard.SESSION_ENV)
            state.leftovers = leakguard.wait_leftovers(session_id, exclude={os.getpid()}) if session_id else []
            if state.loopguard is not None:
                state.loop_leaks = state.loopguard.leaked()
            if state.leaks or state.gone or state.changed or state.leftovers or state.loop_leaks:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if "vm" in state.flavor_names and state.results:
            from zdtm import expected
            state.unexpected = expected.check(state.results, str(self.config.rootpath))
            if state.unexpected:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if state.report_dir and state.results:
            from zdtm import report
            report.write(state.report_dir, state.results)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        state = self.state
        if state.results:
            from zdtm import report
            terminalreporter.write_sep("=", "zdtm summary")
            terminalreporter.write_line(report.table(state.results))
            if state.report_dir:
                terminalreporter.write_line(f"report: {os.path.join(state.report_dir, 'report.html')}")
        for title, found, describe in (
                ("LEAKED MOUNTS", state.leaks, leakguard.describe),
                ("HOST MOUNTS THAT DISAPPEARED", state.gone, leakguard.describe_gone),
                ("HOST MOUNTS THAT CHANGED", state.changed, leakguard.describe_changed),
                ("LEFTOVER PROCESSES", state.leftovers, leakguard.describe_processes),
                ("LEAKED LOOP DEVICES", state.loop_leaks, loopguard.describe),
                ("KERNEL MATRIX: RESULTS THAT DIFFER FROM vm/expected.toml", state.unexpected,
                 lambda found: "\n".join(map(str, found)))):
            if found:
                terminalreporter.write_sep("=", title, red=True)
                terminalreporter.write_line(describe(found))
        if state.foreign:
            terminalreporter.write_sep("=", "HOST MOUNT CHANGES BY OTHER PROGRAMS (a warning, not a failure)",
                                       yellow=True)
            terminalreporter.write_line(state.foreign.describe())
