"""The leak guard: leaked and vanished mounts, per session and per test, and leftover processes.

Nothing here mounts on the host: the comparisons run on made-up mountinfo
text, in a forked child's private mount namespace, or in a pytest session
started inside `unshare -m --propagation private`.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from engine import forkrun, kernel
from zdtm import leakguard

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

START = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
"""


def test_engine_tests_fail_for_their_own_leaks_only(tmp_path):
    """own_leaks: a mount in the test's directory (or the engine's names) is the test's; perf's
    tracefs on /sys/kernel/tracing, which once failed an engine test, is a warning."""
    table = tmp_path / "mountinfo"
    table.write_text(START)
    guard = leakguard.Guard(str(table))
    table.write_text(START
                     + "172 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs none rw\n"
                     + f"173 22 0:60 / {tmp_path}/work/m rw - tmpfs t rw\n"
                     + "174 22 0:61 / /srv/x rw - tmpfs mntcr-scratch rw\n")
    with pytest.warns(UserWarning, match="/sys/kernel/tracing"):
        own = guard.own_leaks(str(tmp_path / "work"))
    assert sorted(m.mnt_id for m in own) == [173, 174]


def test_leaked_on_made_up_tables():
    end = START + "99 22 0:50 / /mnt/leak rw shared:7 - tmpfs zdtm-leak rw\n"
    leaks = leakguard.leaked(START, end)
    assert [m.mountpoint for m in leaks] == ["/mnt/leak"]
    assert "leaked mount: /mnt/leak (tmpfs zdtm-leak" in leakguard.describe(leaks)
    assert leakguard.leaked(START, START) == []
    # An unmount is not a leak; a reused id on another mountpoint is.
    assert leakguard.leaked(START, START.splitlines(True)[0]) == []
    reused = START.replace("/proc rw", "/elsewhere rw")
    assert [m.mountpoint for m in leakguard.leaked(START, reused)] == ["/elsewhere"]


def _guard_in_private_ns():
    guard = leakguard.Guard()
    before = guard.check()
    kernel.mount("zdtm-leak", "/mnt", "tmpfs", 0)  # private namespace of a forked child
    return before, [(m.mountpoint, m.source) for m in guard.check()]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a mount namespace")
def test_guard_catches_a_mount_in_its_namespace():
    before, after = forkrun.in_mount_ns(_guard_in_private_ns)
    assert before == []
    assert after == [("/mnt", "zdtm-leak")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to run a session in a private mount namespace")
def test_session_with_a_leaking_fixture_fails_and_names_the_mount(pytester):
    pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
    pytester.makepyfile(test_leaky='''
import subprocess, pytest

@pytest.fixture
def leaky():
    # Runs inside the session's private mount namespace (see the caller); never unmounted.
    subprocess.run(["mount", "-t", "tmpfs", "zdtm-deliberate-leak", "/mnt"], check=True)
    yield

def test_uses_leaky(leaky):
    assert True
''')
    env_path = PROJECT + os.pathsep + os.environ.get("PYTHONPATH", "")
    result = pytester.run("env", f"PYTHONPATH={env_path}", "unshare", "-m", "--propagation", "private",
                          sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", timeout=120)
    out = result.stdout.str()
    assert "1 passed, 1 error" in out  # the per-test check fails the leaking test's teardown
    assert "leak guard: test_leaky.py::test_uses_leaky changed the host's mounts" in out
    assert "LEAKED MOUNTS" in out
    assert "leaked mount: /mnt (tmpfs zdtm-deliberate-leak" in out
    assert result.ret == 1


# --- (2) host mounts that disappeared ------------------------------------------------

def test_gone_on_made_up_tables():
    end = START.splitlines(True)[0]
    vanished = leakguard.gone(START, end)
    assert [m.mountpoint for m in vanished] == ["/proc"]
    assert "host mount disappeared: /proc (proc proc" in leakguard.describe_gone(vanished)
    assert leakguard.gone(START, START) == []
    # a new mount is a leak, not a disappearance
    assert leakguard.gone(START, START + "99 22 0:50 / /mnt rw - tmpfs t rw\n") == []


def _guard_sees_unmount():
    kernel.mount("zdtm-present", "/mnt", "tmpfs", 0)  # forked child's private namespace
    guard = leakguard.Guard()
    before = guard.gone()
    kernel.umount2("/mnt", 0)
    return before, [(m.mountpoint, m.source) for m in guard.gone()], guard.check()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a mount namespace")
def test_guard_sees_a_mount_disappear_in_its_namespace():
    before, vanished, leaked = forkrun.in_mount_ns(_guard_sees_unmount)
    assert before == []
    assert vanished == [("/mnt", "zdtm-present")]
    assert leaked == []


# --- (5) per-test attribution --------------------------------------------------------

def test_tracker_reports_each_change_once(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(START)
    tracker = leakguard.Tracker(str(table))
    assert tracker.step() == ([], [], [])
    table.write_text(START + "99 22 0:50 / /mnt/a rw - tmpfs a rw\n")
    new, vanished, changed = tracker.step()
    assert [m.mountpoint for m in new] == ["/mnt/a"] and vanished == [] and changed == []
    assert tracker.step() == ([], [], [])  # reported once, by the step that saw it first
    table.write_text(START.splitlines(True)[0] + "99 22 0:50 / /mnt/a rw - tmpfs a rw\n")
    new, vanished, changed = tracker.step()
    assert new == [] and [m.mountpoint for m in vanished] == ["/proc"] and changed == []


def _run_inner_session(pytester, *, private_ns: bool):
    env_path = PROJECT + os.pathsep + os.environ.get("PYTHONPATH", "")
    wrap = ["unshare", "-m", "--propagation", "private"] if private_ns else []
    return pytester.run("env", f"PYTHONPATH={env_path}", *wrap, sys.executable, "-m", "pytest",
                        "-p", "no:cacheprovider", "-q", "-rA", timeout=120)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to run a session in a private mount namespace")
def test_per_test_check_names_the_test_that_leaked(pytester):
    pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
    pytester.makepyfile(test_attr='''
import subprocess

def test_clean_before():
    pass

def test_leaks():
    # inside the session's private mount namespace (see the caller); never unmounted
    subprocess.run(["mount", "-t", "tmpfs", "zdtm-attributed-leak", "/mnt"], check=True)

def test_clean_after():
    pass
''')
    result = _run_inner_session(pytester, private_ns=True)
    out = result.stdout.str()
    assert "3 passed, 1 error" in out, out
    assert "ERROR at teardown of test_leaks" in out
    assert "leak guard: test_attr.py::test_leaks changed the host's mounts" in out
    assert "leaked mount: /mnt (tmpfs zdtm-attributed-leak" in out
    # the clean tests around it are not blamed
    assert "teardown of test_clean" not in out
    assert result.ret == 1


# --- (4) leftover holders, keepers, stand-ins ----------------------------------------

def _spawn(argv, session, argv0=None, out=subprocess.DEVNULL):
    env = dict(os.environ, **{leakguard.SESSION_ENV: session})
    if argv0:
        argv = ["bash", "-c", f'exec -a {argv0} "$@"', "bash", *argv]
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out)


def _reap(*procs):
    for p in procs:
        p.kill()
        p.wait()


def test_leftover_processes_of_the_session_are_named():
    session, other = leakguard.new_session_id(), leakguard.new_session_id()
    holder = _spawn(["sleep", "60"], session, argv0=leakguard.HOLDER_ARGV0)
    standin = _spawn([sys.executable, "-c", "import time; time.sleep(60)", "-m", "engine.cli", "restore"], session)
    plain = _spawn(["sleep", "60"], session)                                  # not ours to judge
    foreign = _spawn(["sleep", "60"], other, argv0=leakguard.HOLDER_ARGV0)    # another session's holder
    try:
        deadline = time.monotonic() + 60
        while True:  # until bash has exec'd and the environ/cmdline are the final ones
            found = leakguard.leftover_processes(session)
            if len(found) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [(p.pid, p.what) for p in found] == sorted(
            [(holder.pid, "holder"), (standin.pid, "stand-in or engine process")])
        text = leakguard.describe_processes(found)
        assert f"leftover holder: pid {holder.pid} ({leakguard.HOLDER_ARGV0} 60); end it with: kill -9 {holder.pid}" \
            in text
    finally:
        _reap(holder, standin, plain, foreign)
    assert leakguard.wait_leftovers(session, grace=2) == []


@pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="/dev/fuse cannot be opened here")
def test_a_fuse_daemon_of_the_session_is_a_leftover():
    """A daemon restore restarted (--fuse-restart) lives while its superblock is mounted anywhere: one
    left after the session (it held the restorer's detached mounts, its own among them) is named."""
    session = leakguard.new_session_id()
    daemon = _spawn([sys.executable, "-c", "import os, sys, time; os.open('/dev/fuse', os.O_RDWR); "
                     "sys.stdout.write('x'); sys.stdout.flush(); time.sleep(60)"], session, out=subprocess.PIPE)
    try:
        assert daemon.stdout.read(1) == b"x"     # (its connection is open)
        assert [(p.pid, p.what) for p in leakguard.leftover_processes(session)] == [(daemon.pid, "FUSE daemon")]
    finally:
        _reap(daemon)


@pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root")
def test_ns_flavor_holders_carry_the_session_marker(tmp_path, monkeypatch):
    from zdtm import scenario as sc
    from zdtm.flavors.ns import FLAVOR as NS
    session = leakguard.new_session_id()
    monkeypatch.setenv(leakguard.SESSION_ENV, session)
    path = tmp_path / "hold.yaml"
    path.write_text("description: holder only\nsetup: exec zdtm-hold\n")
    s = sc.load(str(path)).render_all()[0]
    running = NS.start(s, str(tmp_path / "work"))
    try:
        found = leakguard.leftover_processes(session)
        assert [(p.pid, p.what) for p in found if p.what == "holder"] == [(running.pid, "holder")]
        assert any(p.what == "keeper" for p in found)
    finally:
        NS.stop(running)
    assert leakguard.wait_leftovers(session, grace=5) == []


def test_session_with_a_leftover_holder_fails_and_names_it(pytester, tmp_path):
    pidfile = tmp_path / "pid"
    pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
    pytester.makepyfile(test_leftover=f'''
import subprocess

def test_leaves_a_holder():
    # inherits the session's marker from os.environ, like a holder the ns flavor starts
    p = subprocess.Popen(["bash", "-c", 'exec -a {leakguard.HOLDER_ARGV0} sleep 120'],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    open({str(pidfile)!r}, "w").write(str(p.pid))
    # a holder is a holder once bash has exec'd it (else the session may end first and see only bash)
    import time
    deadline = time.monotonic() + 60
    while not open(f"/proc/{{p.pid}}/cmdline", "rb").read().startswith({leakguard.HOLDER_ARGV0.encode()!r}):
        assert time.monotonic() < deadline, "bash did not exec the holder"
        time.sleep(0.01)
''')
    try:
        result = _run_inner_session(pytester, private_ns=False)
        out = result.stdout.str()
        pid = int(pidfile.read_text())
        assert "1 passed" in out
        assert "LEFTOVER PROCESSES" in out
        assert f"leftover holder: pid {pid} ({leakguard.HOLDER_ARGV0} 120)" in out
        assert result.ret == 1
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 9)
            except ProcessLookupError:
                pass


# --- (6) attribution on a busy machine: foreign changes warn, leaks are named at their test -------
#
# The inner session watches a throwaway mount namespace (ZDTM_LEAKGUARD_MOUNTINFO), held by a
# process outside the session, as "the host": nothing here mounts in the real host's namespace.
# A foreign program (started before the session, so without its marker) mounts and unmounts there
# while the tests run, and leaves one mount behind, like a container runtime would.

FOREIGN = '''
while [ ! -e {flags}/go ]; do sleep 0.05; done
mkdir -p {work}/containers/a {work}/containers/b
mount -t tmpfs foreign-runtime {work}/containers/a
mount -t tmpfs foreign-runtime {work}/containers/b
umount {work}/containers/b
touch {flags}/done
'''

BUSY_TESTS = {
    "test_a": '''
import os, subprocess, time

def _wait(path):
    for _ in range(1200):  # the other worker's test, at most a minute
        if os.path.exists(path):
            return
        time.sleep(0.05)

def test_leaks_under_its_tmp_path(tmp_path):
    _wait({flags!r} + "/b-started")
    (tmp_path / "m").mkdir()
    subprocess.run(["nsenter", "-t", "{holder}", "-m", "mount", "-t", "tmpfs", "zdtm-real-leak",
                    str(tmp_path / "m")], check=True)
    open({flags!r} + "/a-leaked", "w").close()
''',
    "test_b": '''
import os, time

def _wait(path):
    for _ in range(1200):
        if os.path.exists(path):
            return
        time.sleep(0.05)

def test_runs_meanwhile():
    open({flags!r} + "/b-started", "w").close()
    open({flags!r} + "/go", "w").close()
    _wait({flags!r} + "/done")
    _wait({flags!r} + "/a-leaked")
''',
}


@contextlib.contextmanager
def _foreign_program(tmp_path):
    """(flags dir, work dir, holder, foreign): a throwaway mount namespace held by `holder`, in
    which `foreign` (FOREIGN, without the session's marker) mounts and unmounts like another
    program on the host; both are killed on exit."""
    flags, work = tmp_path / "flags", tmp_path / "work"
    flags.mkdir()
    work.mkdir()
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"],
                              stdin=subprocess.DEVNULL)
    foreign = None
    try:
        deadline = time.monotonic() + 60   # until unshare has exec'd sleep in the new namespace
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare -m did not make its namespace"
            time.sleep(0.05)
        foreign = subprocess.Popen(["nsenter", "-t", str(holder.pid), "-m", "sh", "-ec",
                                    FOREIGN.format(flags=flags, work=work)],
                                   env={k: v for k, v in os.environ.items() if k != leakguard.SESSION_ENV},
                                   stdin=subprocess.DEVNULL)
        yield flags, work, holder, foreign
    finally:
        for p in (foreign, holder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
                    reason="needs root, unshare and nsenter for a throwaway mount namespace")
def test_foreign_mounts_warn_and_a_leak_is_named_at_its_own_test(pytester, tmp_path):
    pytest.importorskip("xdist")
    with _foreign_program(tmp_path) as (flags, work, holder, foreign):
        pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
        for name, text in BUSY_TESTS.items():
            pytester.makepyfile(**{name: text.format(flags=str(flags), holder=holder.pid)})
        env_path = PROJECT + os.pathsep + os.environ.get("PYTHONPATH", "")
        result = pytester.run("env", f"PYTHONPATH={env_path}",
                              f"{leakguard.MOUNTINFO_ENV}=/proc/{holder.pid}/mountinfo",
                              sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                              "-n", "2", "--dist", "loadscope", timeout=300)
        out = result.stdout.str()
        assert foreign.wait(timeout=60) == 0
        # the leak: named at its own test's teardown, and at the session's end
        assert "ERROR at teardown of test_leaks_under_its_tmp_path" in out, out
        assert "leak guard: test_a.py::test_leaks_under_its_tmp_path changed the host's mounts" in out
        assert "LEAKED MOUNTS" in out and "(tmpfs zdtm-real-leak" in out
        # the other test, running meanwhile, is not blamed for either
        assert "teardown of test_runs_meanwhile" not in out
        outcomes = result.parseoutcomes()
        assert (outcomes.get("passed"), outcomes.get("errors", outcomes.get("error"))) == (2, 1), out
        # the foreign program's mounts: a warning, not a failure
        assert "HOST MOUNT CHANGES BY OTHER PROGRAMS" in out
        assert f"leaked mount: {work}/containers/a (tmpfs foreign-runtime" in out.split(
            "HOST MOUNT CHANGES BY OTHER PROGRAMS")[1]
        assert "foreign-runtime" not in out.split("LEAKED MOUNTS")[1].split("HOST MOUNT CHANGES")[0]
        assert result.ret == 1


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
                    reason="needs root, unshare and nsenter for a throwaway mount namespace")
def test_a_run_with_only_foreign_mount_changes_is_green(pytester, tmp_path):
    with _foreign_program(tmp_path) as (flags, work, holder, foreign):
        pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
        pytester.makepyfile(test_b=BUSY_TESTS["test_b"].format(flags=str(flags)).replace(
            '    _wait({flags!r} + "/a-leaked")\n'.format(flags=str(flags)), ""))
        env_path = PROJECT + os.pathsep + os.environ.get("PYTHONPATH", "")
        result = pytester.run("env", f"PYTHONPATH={env_path}",
                              f"{leakguard.MOUNTINFO_ENV}=/proc/{holder.pid}/mountinfo",
                              sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", timeout=300)
        out = result.stdout.str()
        assert foreign.wait(timeout=60) == 0
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed") == 1 and not outcomes.get("errors", outcomes.get("error")), out
        assert "ForeignMountChange: leak guard: during test_b.py::test_runs_meanwhile other programs" in out
        assert "HOST MOUNT CHANGES BY OTHER PROGRAMS" in out
        assert "LEAKED MOUNTS" not in out and "DISAPPEARED" not in out
        assert result.ret == 0
