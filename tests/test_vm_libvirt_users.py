"""vm/libvirt_host.py's users: the daemons mntcr started are stopped by the last process using them.

Two xdist workers share libvirtd: the one whose module ends first must not stop it under the
other's machines. The daemons are fakes here (nothing is started or stopped).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from vm import libvirt_host


@pytest.fixture
def fake(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the users registry is kept for root only (only root starts the daemons)")
    monkeypatch.setattr(libvirt_host, "USERS_DIR", tmp_path / "users")
    monkeypatch.setattr(libvirt_host, "missing_tools", lambda: None)
    state = {"running": set(), "stopped": []}

    def ensure(timeout):
        new = [n for n in ("virtlogd", "libvirtd") if n not in state["running"]]
        state["running"].update(new)
        return new

    def stop(names):
        state["stopped"].extend(names)
        state["running"].difference_update(names)

    monkeypatch.setattr(libvirt_host, "_ensure_running", ensure)
    monkeypatch.setattr(libvirt_host, "_stop", stop)
    return state


def test_the_last_user_stops_what_mntcr_started(fake):
    other = subprocess.Popen(["sleep", "600"])  # another worker, registered as a user
    try:
        started = libvirt_host.ensure_running()
        assert started == ["virtlogd", "libvirtd"]
        (libvirt_host.USERS_DIR / f"user-{other.pid}").touch()
        libvirt_host.stop(started)
        assert fake["stopped"] == [], "stopped the daemons while another process used them"
    finally:
        other.kill()
        other.wait()
    # the other user is gone (died without stop()): the next one out stops the daemons
    assert libvirt_host.ensure_running() == []
    libvirt_host.stop([])
    assert sorted(fake["stopped"]) == ["libvirtd", "virtlogd"]
    assert not list(libvirt_host.USERS_DIR.glob("started-*")), "markers left after stopping"
