"""The kernel feature probe kept for the boot (engine/probecache.py): used only under the same key,
never from a file someone else could have written, never for a failure that may pass next time."""

from __future__ import annotations

import errno
import json
import os

import pytest

from engine import features, probecache

NAMES = sorted(features.FEATURES)
ALL = {name: (True, "ok") for name in NAMES}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(probecache, "DIR", str(tmp_path / "mntcr"))
    monkeypatch.setattr(features, "_cache", None)
    return tmp_path / "mntcr" / probecache.file_name(NAMES)


def test_round_trip_under_same_key_only(cache):
    """A stored answer comes back under its key; another boot, release or feature list probes again."""
    k = probecache.key(NAMES)
    assert k["boot_id"] and k["userns"]
    assert probecache.store(k, ALL, {})
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    assert probecache.load(k) == ALL
    for field, other in (("boot_id", "another-boot"), ("release", "1.0"), ("euid", 12345),
                         ("features", NAMES[:-1])):
        assert probecache.load(dict(k, **{field: other})) is None, field


def test_transient_failures_are_not_kept(cache):
    """A feature missing for EMFILE or ENOMEM may be there next time: nothing is stored; ENOSYS is."""
    k = probecache.key(NAMES)
    missing = dict(ALL, **{NAMES[0]: (False, "Too many open files")})
    assert not probecache.store(k, missing, {NAMES[0]: errno.EMFILE})
    assert not cache.exists()
    assert not probecache.store(k, missing, {})  # no errno at all (the namespace could not be made)
    assert probecache.store(k, missing, {NAMES[0]: errno.ENOSYS})
    assert probecache.load(k) == missing


@pytest.mark.parametrize("spoil", ["group-writable", "symlink", "garbage", "wrong-type", "missing-name"])
def test_untrusted_or_malformed_file_is_ignored(cache, tmp_path, spoil):
    """A file others could write, a symlink, or content that is not exactly our record: probe again."""
    k = probecache.key(NAMES)
    assert probecache.store(k, ALL, {})
    data = json.loads(cache.read_text())
    if spoil == "group-writable":
        cache.chmod(0o620)
    elif spoil == "symlink":
        real = tmp_path / "elsewhere.json"
        real.write_text(cache.read_text())
        cache.unlink()
        cache.symlink_to(real)
    elif spoil == "garbage":
        cache.write_text("{not json")
    elif spoil == "wrong-type":
        data["results"][NAMES[0]] = ["yes", "ok"]
        cache.write_text(json.dumps(data))
    else:
        del data["results"][NAMES[0]]
        cache.write_text(json.dumps(data))
    assert probecache.load(k) is None


def test_available_uses_and_fills_the_cache(cache, monkeypatch):
    """available() probes once and stores; a fresh process state then reads the file, not the kernel.
    A planted answer proves where it came from; `probe()` (mntcr check) always asks the kernel."""
    first = features.available()
    assert cache.exists()
    planted = dict(ALL, **{"statmount/listmount": (False, "planted")})
    assert probecache.store(probecache.key(NAMES), planted, {"statmount/listmount": errno.ENOSYS})
    monkeypatch.setattr(features, "_cache", None)
    again = features.available()
    assert again["statmount/listmount"].detail == "planted" and not again["statmount/listmount"].present
    fresh = {f.name: f for f in features.probe()}
    assert fresh["statmount/listmount"].present == first["statmount/listmount"].present
    assert fresh["statmount/listmount"].detail != "planted"


def test_unwritable_place_means_no_cache(tmp_path, monkeypatch):
    """A cache directory owned by someone else (or not a directory) is not used, and nothing fails."""
    place = tmp_path / "notadir"
    place.write_text("")
    monkeypatch.setattr(probecache, "DIR", str(place))
    assert not probecache.store(probecache.key(NAMES), ALL, {})
    assert probecache.load(probecache.key(NAMES)) is None
    other = tmp_path / "other"
    other.mkdir(mode=0o777)
    os.chmod(other, 0o777)
    monkeypatch.setattr(probecache, "DIR", str(other))
    assert not probecache.store(probecache.key(NAMES), ALL, {})


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp syscall number here is x86_64's")
def test_seccomp_filtered_caller_bypasses_the_cache(cache):
    """Under a seccomp filter (how tests fake an old kernel: ENOSYS) nothing is read or kept: a child
    installs a filter that allows everything and finds the cache closed to it."""
    import ctypes
    import pickle

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    k = probecache.key(NAMES)
    assert probecache.store(k, ALL, {})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: lets a non-privileged filter in
            insn = ctypes.create_string_buffer(bytes([0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]))  # RET ALLOW
            prog = Prog(1, ctypes.cast(insn, ctypes.c_void_p))
            rc = libc.syscall(317, 1, 0, ctypes.byref(prog))  # seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)
            inner = probecache.key(NAMES)
            os.write(w, pickle.dumps((rc, inner["seccomp"], probecache.load(inner),
                                      probecache.store(inner, ALL, {}))))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    rc, mode, loaded, stored = pickle.loads(data)
    assert rc == 0 and mode == "2"
    assert loaded is None and stored is False
    assert probecache.load(k) == ALL


def test_feature_lists_keep_files_of_their_own(cache):
    """Two engines with other feature lists on one machine (two versions, a checkout beside an
    installed one) do not overwrite each other's answer: each finds its own on the next run."""
    other = NAMES[:-1]
    k, k_other = probecache.key(NAMES), probecache.key(other)
    assert probecache.store(k, ALL, {})
    assert probecache.store(k_other, {n: ALL[n] for n in other}, {})
    assert probecache.file_name(NAMES) != probecache.file_name(other)
    assert probecache.load(k) == ALL and probecache.load(k_other) == {n: ALL[n] for n in other}


def test_the_key_reads_the_status_lines_as_a_parse_of_every_line(monkeypatch, tmp_path):
    """key() looks CapEff and Seccomp up where their lines start: the values a parse of every line
    gives (this process's own status, and a status whose asked lines are first, last and absent)."""
    lines = {}
    with open("/proc/self/status") as f:
        for line in f.read().strip().splitlines():
            name, _, value = line.partition(":")
            lines[name] = value.strip()
    k = probecache.key(NAMES)
    assert (k["capeff"], k["seccomp"]) == (lines["CapEff"], lines["Seccomp"]) and k["seccomp"] is not None
    fake = tmp_path / "status"
    real_open = open
    for text, want in (("CapEff:\t00ff\nSeccomp_filters:\t1\nSeccomp:\t2", ("00ff", "2")),
                       ("Name:\tx\nSeccomp_filters:\t1\n", (None, None))):
        fake.write_text(text)
        monkeypatch.setattr("builtins.open", lambda p, *a, **kw: real_open(fake if p == "/proc/self/status" else p, *a, **kw))
        got = probecache.key(NAMES)
        monkeypatch.undo()
        assert (got["capeff"], got["seccomp"]) == want, text
