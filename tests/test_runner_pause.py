"""The runner's --pause (MNTCR_ZDTM_PAUSE): zdtm/cycle.py sleeps between the snapshot before dump and
the dump, and between each restore and its snapshot, so a scenario whose state a timer or a periodic
wake changes (busybox crond reopening its log at every minute) differs every run, not once in N."""

from __future__ import annotations

import types

import pytest

from zdtm import cycle, plugin, snapshot, watchdog
from zdtm.backends import BackendError


class _Snap:
    check_output = ""

    def to_json(self):
        return {}

    def text(self):
        return ""


class _Backend:
    name = "fake"

    def __init__(self, events, refuse=False):
        self.events, self.refuse = events, refuse

    def expectation(self, scenario):
        return types.SimpleNamespace(outcome="crfail" if self.refuse else "pass", reason="fake")

    def dump(self, pid, images, externals, ctx):
        self.events.append("dump")
        if self.refuse:
            raise BackendError("dump", "refused")

    def restore(self, images, externals, ctx):
        self.events.append("restore")
        return 4242


def _run(monkeypatch, tmp_path, pause, iters=1, refuse=False):
    events = []
    monkeypatch.setattr(snapshot, "take", lambda *a, **kw: events.append("snapshot") or _Snap())
    monkeypatch.setattr(snapshot, "compare", lambda *a, **kw: (True, ""))
    monkeypatch.setattr(snapshot, "wait_gone", lambda pid: True)
    monkeypatch.setattr(snapshot, "kill_tree", lambda pid: None)
    monkeypatch.setattr(watchdog, "guard", lambda pid: None)
    monkeypatch.setattr(cycle.time, "sleep", lambda s: events.append(f"sleep {s:g}"))
    scen = types.SimpleNamespace(check=None, timeout=10)
    running = types.SimpleNamespace(pid=4141, externals=())
    flavor = types.SimpleNamespace(forget=lambda r: None)
    out = cycle.run(scen, _Backend(events, refuse), flavor, running, str(tmp_path), iters=iters, pause=pause)
    return out.kind, events


def test_pause_sleeps_before_each_dump_and_before_each_snapshot_after_restore(monkeypatch, tmp_path):
    kind, events = _run(monkeypatch, tmp_path, 7, iters=2)
    assert kind == "pass"
    assert events == ["snapshot", "sleep 7", "dump", "restore", "sleep 7", "snapshot",
                      "sleep 7", "dump", "restore", "sleep 7", "snapshot"]


def test_pause_also_before_a_dump_that_refuses(monkeypatch, tmp_path):
    kind, events = _run(monkeypatch, tmp_path, 3, refuse=True)
    assert kind == "crfail" and events == ["snapshot", "sleep 3", "dump"]


@pytest.mark.parametrize("option, env, want", [(None, None, 0.0), (None, "12", 12.0), (4.5, "12", 4.5),
                                               (None, " ", 0.0)])
def test_pause_comes_from_the_option_else_the_environment(monkeypatch, option, env, want):
    if env is None:
        monkeypatch.delenv(plugin.PAUSE_ENV, raising=False)
    else:
        monkeypatch.setenv(plugin.PAUSE_ENV, env)
    assert plugin._pause(option) == want


@pytest.mark.parametrize("option, env, message", [
    (None, "ten", r"MNTCR_ZDTM_PAUSE='ten': not a number of seconds; set it to e\.g\. 10"),
    (-1.0, None, r"--pause -1: give seconds between 0 and 3600"),
    (None, "7200", r"--pause 7200: give seconds between 0 and 3600"),
])
def test_a_bad_pause_is_a_usage_error(monkeypatch, option, env, message):
    if env is None:
        monkeypatch.delenv(plugin.PAUSE_ENV, raising=False)
    else:
        monkeypatch.setenv(plugin.PAUSE_ENV, env)
    with pytest.raises(pytest.UsageError, match=message):
        plugin._pause(option)
