"""Hostile images: an idmap on a mount of a host superblock (session 16's review, IMAGE.md trust section).

Restore idmaps a mount with the map its image says. On a superblock restore made from the image
(a tmpfs from its archive) that gives nothing of the host; on one the restoring user gave (an
--external mnt[KEY]:HOSTPATH bind, an --external dev[KEY]:PATH device, the --root directory) a map
0 -> U lets a process of host uid U act as the owner of the host's root-owned files there. Restore
refuses such an idmap unless the user allows it for that external (--allow-idmap mnt[KEY]); a map
of ids to themselves changes no owner and is restored as is.

The tree: a container whose /mnt/vol is an external bind of a root-owned directory of the test
(tmp_path/vol, on whatever /tmp is: only restore's own namespaces mount it), holding rootfile
(root's, mode 644). The hostile image is its real dump with an idmap added to /mnt/vol.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import enginecase
from enginecase import case, load_manifest, mntcr, save_manifest  # noqa: F401
from engine import features
from test_hardening_hostile import _mutated, refused

STRANGER = 1234          # a host uid the hostile map hands root's files to
DUMP_EXT = ("--external", "mnt[/mnt/vol]:vol")

# An idmapped bind of /mnt/vol at /mnt/idm (what systemd-nspawn --bind=...:idmap and podman's :idmap
# volumes make): a user namespace with MAP, gone once the mount holds it.
IDMAP_PY = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    libc.unshare(0x10000000)
    os.write(w, b"1")
    signal.pause()
os.read(r, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write(sys.argv[1] + "\n")
userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
tree = libc.syscall(428, -100, b"/mnt/vol", 1 | os.O_CLOEXEC)
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64),
                ("userns", ctypes.c_uint64)]
attr = Attr(0x100000, 0, 0, userns)
assert libc.syscall(442, tree, b"", 0x1000, ctypes.byref(attr), ctypes.c_size_t(32)) == 0, ctypes.get_errno()
assert libc.syscall(429, tree, b"", -100, b"/mnt/idm", 4) == 0, ctypes.get_errno()
os.kill(pid, 9)
os.waitpid(pid, 0)
"""


def _host_dir(tmp_path) -> str:
    """tmp_path/vol: root's directory (755) with root's rootfile (644)."""
    vol = os.path.join(str(tmp_path), "vol")
    os.makedirs(vol, exist_ok=True)
    os.chmod(vol, 0o755)
    path = os.path.join(vol, "rootfile")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("root's\n")
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)
    return vol


def _restore_ext(vol: str) -> tuple[str, ...]:
    return ("--external", f"mnt[vol]:{vol}")


def _with_idmap(uid_map, gid_map=None):
    def mutate(d):
        ns = d["mntns"][d["processes"][0]["ns"]["mnt"]]
        m = next(m for m in ns["mounts"] if m["mountpoint"] == "/mnt/vol")
        m["idmap"] = {"uid_map": uid_map, "gid_map": gid_map or uid_map}
        m["mount_opts"] = sorted({*m["mount_opts"], "idmapped"})
    return mutate


@pytest.fixture
def image(case, tmp_path):   # noqa: F811
    """A real dump of the tree (module docstring) and the host directory its /mnt/vol binds."""
    vol = _host_dir(tmp_path)
    pid = case.start("hold\n", binds=((vol, "/mnt/vol"),))
    images = case.new_images_dir()
    case.dump(pid, images, DUMP_EXT)
    return images, vol


def _as_stranger_in(pid: int, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "setpriv", f"--reuid={STRANGER}",
                           f"--regid={STRANGER}", "--clear-groups", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)


def test_idmap_handing_host_root_files_to_a_user_is_refused(image, tmp_path):
    """The hole itself: map 0 -> 1234 on the external bind. Were it restored, host uid 1234 in the
    restored tree would write root's file of the host directory; restore must refuse it instead."""
    images, vol = image
    img = _mutated(images, tmp_path / "hostile", _with_idmap([[0, STRANGER, 1]]))
    pidfile = os.path.join(str(tmp_path), "hole.pid")
    r = mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, *_restore_ext(vol), "--pidfile", pidfile)
    if r.returncode == 0:
        from zdtm.snapshot import kill_tree
        with open(pidfile) as f:
            pid = int(f.read())
        try:
            w = _as_stranger_in(pid, "echo written-by-1234 >> /mnt/vol/rootfile")
        finally:
            kill_tree(pid)
        with open(os.path.join(vol, "rootfile")) as f:
            now = f.read()
        st = os.stat(os.path.join(vol, "rootfile"))
        pytest.fail(f"restore took the image's idmap 0 -> {STRANGER} on the host directory {vol}: as uid "
                    f"{STRANGER}, writing root's rootfile (owner {st.st_uid}) through the restored mount "
                    f"{'worked' if w.returncode == 0 else 'failed: ' + w.stderr.strip()}; it now reads {now!r}")
    refused(img, rf"mount \d+ \(/mnt/vol\): its idmap \(uid 0->{STRANGER}, gid 0->{STRANGER}\) would make the "
                 rf"host's files of --external mnt\[vol\] \({vol}\) owned by other ids through it.* "
                 rf"--allow-idmap mnt\[vol\]", tmp_path, extra=_restore_ext(vol), victim=vol)


def test_any_id_moved_is_refused(image, tmp_path):
    """Not only root's: a map that moves any id (here 1000 -> 1001, 0 kept) hands one user's files to another."""
    images, vol = image
    img = _mutated(images, tmp_path / "hostile", _with_idmap([[0, 0, 1000], [1000, 1001, 1]]))
    refused(img, r"mount \d+ \(/mnt/vol\): its idmap \(uid 0->0 x1000, 1000->1001, .*--allow-idmap mnt\[vol\]",
            tmp_path, extra=_restore_ext(vol), victim=vol)


def test_allowing_another_key_does_not_allow_it(image, tmp_path):
    """--allow-idmap names one external: allowing /usr's does not allow /mnt/vol's."""
    images, vol = image
    img = _mutated(images, tmp_path / "hostile", _with_idmap([[0, STRANGER, 1]]))
    refused(img, r"mount \d+ \(/mnt/vol\): its idmap .*--allow-idmap mnt\[vol\]", tmp_path,
            extra=(*_restore_ext(vol), "--allow-idmap", "mnt[usr]"), victim=vol)


def test_a_malformed_allowance_is_refused(image, tmp_path):
    images, vol = image
    refused(images, r"--allow-idmap 'vol': expected mnt\[KEY\], dev\[KEY\], fuse\[KEY\] or root", tmp_path,
            extra=(*_restore_ext(vol), "--allow-idmap", "vol"), victim=vol)


def test_an_allowed_hostile_map_is_what_the_user_asked_for(case, image, tmp_path):  # noqa: F811
    """With --allow-idmap mnt[vol] the user takes the map: restored, and it does what it says."""
    images, vol = image
    img = _mutated(images, tmp_path / "allowed", _with_idmap([[0, STRANGER, 1]]))
    pid = case.restore(img, (*_restore_ext(vol), "--allow-idmap", "mnt[vol]"))
    r = _as_stranger_in(pid, "stat -c %u /mnt/vol/rootfile")
    assert r.returncode == 0 and r.stdout.strip() == str(STRANGER), r


def test_an_identity_map_is_restored_without_allowance(image, tmp_path, case):  # noqa: F811
    """Ids mapped to themselves move no owner (ids outside the map only lose access): no option needed."""
    images, vol = image
    img = _mutated(images, tmp_path / "identity", _with_idmap([[0, 0, 65536]]))
    pid = case.restore(img, _restore_ext(vol))
    assert "idmapped" in open(f"/proc/{pid}/mountinfo").read()
    r = _as_stranger_in(pid, "stat -c %u /mnt/vol/rootfile; echo x >> /mnt/vol/rootfile")
    assert r.stdout.strip() == "0" and r.returncode != 0, r   # still root's, still not 1234's to write


# --- real dumps of idmapped binds of an external --------------------------------------------------

def _need_idmap_dump():
    if not features.available()["statmount(idmap)"].present:
        pytest.skip("dumping an idmapped mount needs statmount's idmap fields (Linux 6.15)")


@pytest.mark.parametrize("kind", ["shifted", "identity"])
def test_real_idmapped_external_restores(case, tmp_path, kind):  # noqa: F811
    """An honest dump of an idmapped bind of an external (0..65535 -> 100000.., or onto themselves)
    restores the same tree; the shifted one only with --allow-idmap, refused (nothing left) without."""
    _need_idmap_dump()
    vol = _host_dir(tmp_path)
    text = "0 100000 65536" if kind == "shifted" else "0 0 65536"
    check = "stat -c '%u %n' /mnt/vol/rootfile /mnt/idm/rootfile; grep -c idmapped /proc/self/mountinfo"
    setup = f"mkdir -p /mnt/idm\npython3 - '{text}' <<'PY'\n{IDMAP_PY}PY\nhold\n"
    pid = case.start(setup, binds=((vol, "/mnt/vol"),))
    before = enginecase.take(pid, check)
    images = case.new_images_dir()
    case.dump(pid, images, DUMP_EXT)
    from zdtm import backends
    # (the runner restores its own dump with what its idmaps need)
    assert backends._idmap_allowances(images) == (["mnt[vol]"] if kind == "shifted" else [])
    allow = ()
    if kind == "shifted":
        refused(images, r"mount \d+ \(/mnt/idm\): its idmap \(uid 0->100000 x65536, gid 0->100000 x65536\) .*"
                        r"--allow-idmap mnt\[vol\]", tmp_path, extra=_restore_ext(vol), victim=vol)
        allow = ("--allow-idmap", "mnt[vol]")
    after = enginecase.take(case.restore(images, (*_restore_ext(vol), *allow)), check)
    enginecase.assert_same(before, after)
    assert f"{100000 if kind == 'shifted' else 0} /mnt/idm/rootfile" in after.snap.check_output, \
        after.snap.check_output
