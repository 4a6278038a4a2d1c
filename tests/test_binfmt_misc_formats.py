"""binfmt_misc formats of a user namespace's own instance (CRIU's zdtm binfmt_misc): each entry
file read back into the line `register` takes, the F flag refused, and the image's payload checked
(scenarios/criu_zdtm/binfmt_misc.yaml dumps and restores a real one)."""

from __future__ import annotations

import os

import pytest

import enginecase
from enginecase import case, mntcr  # noqa: F401  (fixture)
from engine import imageformat
from engine.image import ImageError
from engine.fs import FsError
from engine.fs.binfmt_misc import register_line

MAGIC = "disabled\ninterpreter /bin/interpreter\nflags: POC\noffset 3\nmagic 7f5a0054\nmask ffff00ff\n"
EXTENSION = "enabled\ninterpreter /bin/bash\nflags: \nextension .zdtmext\n"


def test_magic_entry_becomes_its_register_line():
    assert register_line("m", MAGIC) == (r":m:M:3:\x7f\x5a\x00\x54:\xff\xff\x00\xff:/bin/interpreter:POC", False)


def test_extension_entry_becomes_its_register_line():
    assert register_line("e", EXTENSION) == (":e:E::zdtmext::/bin/bash:", True)


def test_magic_without_mask():
    entry = "enabled\ninterpreter /usr/bin/qemu\nflags: P\noffset 0\nmagic 7f454c46\n"
    assert register_line("q", entry) == (r":q:M:0:\x7f\x45\x4c\x46::/usr/bin/qemu:P", True)


def test_fix_binary_flag_is_refused():
    with pytest.raises(FsError, match="flag F"):
        register_line("f", "enabled\ninterpreter /usr/bin/qemu\nflags: F\noffset 0\nmagic 7f\n")


def test_unknown_entry_is_refused():
    with pytest.raises(FsError, match="not understood"):
        register_line("x", "something else\n")


def _sb(payload, owner="user-1"):
    sb = {"fstype": "binfmt_misc", "source": "none", "super_opts": ["rw"], "payload": payload}
    if owner:
        sb["owner"] = owner
    return sb


def _check(sb):
    imageformat._check_superblocks({"sb-1": sb}, {}, {}, {}, {})


GOOD = {"formats": [{"name": "m", "line": r":m:M:3:\x7f\x5a::/bin/i:OC", "enabled": False},
                    {"name": "e", "line": ":e:E::ext::/bin/bash:", "enabled": True}], "enabled": True}


def test_payload_of_an_owned_instance_validates():
    _check(_sb(GOOD))


@pytest.mark.parametrize("payload, owner, message", [
    (GOOD, None, "the host's are the host's"),
    ({"formats": [], "enabled": "yes"}, "user-1", "payload is not"),
    ({"formats": [{"name": "f", "line": ":f:M:0:\\x7f::/bin/i:F", "enabled": True}], "enabled": True},
     "user-1", "no format restore registers"),
    ({"formats": [{"name": "a", "line": ":b:E::x::/bin/i:", "enabled": True}], "enabled": True},
     "user-1", "no format restore registers"),
    ({"formats": [{"name": "r", "line": ":r:E::x::relative:", "enabled": True}], "enabled": True},
     "user-1", "no format restore registers"),
    ({"formats": [{"name": "status", "line": ":status:E::x::/bin/i:", "enabled": False}], "enabled": True},
     "user-1", "no format restore registers"),
    ({"formats": [{"name": "..", "line": ":..:E::x::/bin/i:", "enabled": False}], "enabled": True},
     "user-1", "no format restore registers"),
    ({"formats": [{"name": "n", "line": ":n:E::x::/bin/i:\n:o:E::y::/bin/i:", "enabled": True}],
      "enabled": True}, "user-1", "no format restore registers"),
    ({"formats": [{"name": "o", "line": ":o:M:99999999999999999999:\\x7f::/bin/i:", "enabled": True}],
      "enabled": True}, "user-1", "no format restore registers"),   # (past the bytes the kernel reads)
    ({"formats": [{"name": "o", "line": ":o:M:255:\\x7f\\x45::/bin/i:", "enabled": True}],
      "enabled": True}, "user-1", "no format restore registers"),
    ({"formats": [{"name": "e", "line": ":e:E:3:x::/bin/i:", "enabled": True}],
      "enabled": True}, "user-1", "no format restore registers"),   # (an extension has no offset)
    ({"formats": [{"name": "n", "line": ":n:E::x::/bin/i:", "enabled": True},
                  {"name": "n", "line": ":n:E::y::/bin/i:", "enabled": True}], "enabled": True},
     "user-1", "of one name twice"),
])
def test_hostile_payload_is_refused(payload, owner, message):
    with pytest.raises(ImageError, match=message):
        _check(_sb(payload, owner))


def test_payload_on_another_type_is_refused():
    sb = {"fstype": "proc", "source": "proc", "super_opts": ["rw"], "payload": GOOD, "pidns": "pid-1"}
    with pytest.raises(ImageError, match="carries no payload"):
        imageformat._check_superblocks({"sb-1": sb}, {}, {"pid-1": {}}, {}, {})


FIX_BINARY = enginecase.STOP_WATCH + """
mkdir -p /run/binfmt
unshare -Urm --propagation unchanged sh -ec '
    mount -t binfmt_misc none /run/binfmt
    printf "%s" ":zdtm_fix:E::zfix::/bin/sh:F" > /run/binfmt/register
    touch /run/ready; exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /run/ready
hold
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_fix_binary_format_refused_before_the_stop(case):
    """A user namespace's own binfmt_misc holding a format with flag F: refused by the probe that
    runs on the running tree (engine/prestop.py), one line naming the format; never stopped."""
    from zdtm.schema import kernel_in_range
    if "binfmt_misc" not in open("/proc/filesystems").read() or not kernel_in_range(os.uname().release, ">=6.7"):
        pytest.skip("no binfmt_misc instance of a user namespace's own here (Linux >= 6.7)")
    pid = case.start(FIX_BINARY)
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), "--external", "mnt[/usr]:usr",
              "--external", "mnt[/etc]:etc")
    assert r.returncode != 0, "dump accepted a format restore cannot register"
    assert "binfmt_misc format zdtm_fix: flag F" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"


@pytest.mark.parametrize("name, entry", [
    ("c", "enabled\ninterpreter /usr/bin/a:b\nflags: \nextension .x\n"),
    ("d", "enabled\ninterpreter /bin/i\nflags: \nextension .a:b\n"),
    ("e:f", "enabled\ninterpreter /bin/i\nflags: \nextension .x\n"),
    ("g", "enabled\ninterpreter /bin/i\nflags: \noffset 0\nmagic " + "7f" * 1000 + "\n"),
])
def test_entry_restore_would_refuse_is_refused_at_dump(name, entry):
    """A format registered with another delimiter (':' in its name, extension or interpreter), or
    one whose line is longer than a register write: dump refuses it (before the stop) rather than
    write an image the validator refuses."""
    with pytest.raises(FsError, match="no line restore registers"):
        register_line(name, entry)


def test_trailing_newline_in_a_line_is_refused():
    payload = {"formats": [{"name": "n", "line": ":n:E::x::/bin/i:\n", "enabled": True}], "enabled": True}
    with pytest.raises(ImageError, match="no format restore registers"):
        _check(_sb(payload))


def test_fill_refuses_the_hosts_instance(monkeypatch):
    """fill() writes no format into the host's own instance (whatever made the superblock)."""
    from engine.fs import binfmt_misc
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(binfmt_misc, "_host_instance", lambda: os.fstat(fd).st_dev)
        with pytest.raises(FsError, match="host's instance"):
            binfmt_misc.TYPE.fill(_sb(GOOD), fd, "superblock sb-1")
    finally:
        os.close(fd)
