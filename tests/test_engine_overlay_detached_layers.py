"""An overlay whose layers lie on a mount lazily unmounted after the overlay was made (a process
keeps the mount alive, detached, through a regular file on it), while the overlay stays visible
through a bind (found by tests/test_hardening_random_trees.py). The layer paths lead nowhere in the
namespace any more; with unique mount ids, resolving them as they were when the overlay was made
skips mounts made after it, so a later overmount of the directory beneath (`cover`) hid that: dump
recorded the layers on the mount beneath, which holds no such directory, and restore failed on it
(openat2('t0/ov2'): No such file or directory). Dump now finds the layers on the detached mount
through the handle the overlay gives of its real layer directory (engine/fs/_layers_detached.py),
records them `detached`, and archives that mount whole. Restore (and the variants, dumped twice):
scenarios/regressions/overlay_on_detached_layers.yaml."""

from __future__ import annotations

import pytest

from enginecase import (DUMP_EXTERNALS, STOP_WATCH, CRError, case, load_manifest, mntcr,  # noqa: F401  (fixture)
                        needs_seccomp, was_stopped)


def _setup(upper: bool, cover: bool, held: str = "t0") -> str:
    opts = "lowerdir=/mnt/t0/ov2/l,upperdir=/mnt/t0/ov2/u,workdir=/mnt/t0/ov2/w" if upper \
        else "lowerdir=/mnt/t0/ov2/l:/mnt/t0/ov2/u"
    hold = {"t0": "echo 4 > /mnt/t0/l4 && exec 3</mnt/t0/l4 && umount -l /mnt/t0",
            # a file of another lazily unmounted tmpfs: no handle of the layers opens there
            "other": "mkdir /mnt/t9 && mount -t tmpfs t9 /mnt/t9 && echo 4 > /mnt/t9/l4 && exec 3</mnt/t9/l4 "
                     "&& umount -l /mnt/t9 && umount -l /mnt/t0",
            "nothing": "umount -l /mnt/t0"}[held]
    return f"""
mount -t tmpfs base /mnt
mkdir -p /mnt/t0 && mount -t tmpfs t0 /mnt/t0
mkdir -p /mnt/t0/ov2/l /mnt/t0/ov2/u /mnt/t0/ov2/w /mnt/t0/ov2/m && echo 2 > /mnt/t0/ov2/l/x
mount -t overlay ov2 -o {opts} /mnt/t0/ov2/m
mkdir -p /mnt/b3 && mount --bind /mnt/t0/ov2/m /mnt/b3
{hold}
{"mount -t tmpfs o5 /mnt" if cover else ""}
hold
"""


def _needs_overlay():
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            pytest.skip("overlay is not in /proc/filesystems (kernel without CONFIG_OVERLAY_FS)")


def _needs_fid():
    from engine import features
    f = features.available()["overlay(AT_HANDLE_FID)"]
    if not f.present:
        pytest.skip(f"kernel feature overlay(AT_HANDLE_FID) (kernel >= {f.since}) is missing: {f.detail}")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("upper", [True, False], ids=["upper", "lower-only"])
@pytest.mark.parametrize("cover", [True, False], ids=["covered", "uncovered"])
def test_layers_on_a_detached_mount_recorded_there(case, upper, cover):
    _needs_overlay()
    _needs_fid()
    pid = case.start(_setup(upper, cover))
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = load_manifest(images)
    (sb,) = [s for s in doc["superblocks"].values() if s["fstype"] == "overlay"]
    (det,) = doc["detached"].values()
    want = [("/mnt/t0/ov2/l", "/ov2/l"), ("/mnt/t0/ov2/u", "/ov2/u")] + ([("/mnt/t0/ov2/w", "/ov2/w")] if upper else [])
    assert sorted((x["path"], x["rel"]) for x in sb["layers"]) == want, sb["layers"]
    assert all(x.get("detached") and x["mnt"] == det["id"] for x in sb["layers"]), (sb["layers"], det)
    assert det["root"] == "/" and doc["superblocks"][det["sb"]]["fstype"] == "tmpfs", det


@pytest.mark.parametrize("held", ["other", "nothing"])
def test_layers_on_a_detached_mount_nothing_holds_refused_unstopped(case, held):
    """The layers' mount lazily unmounted and held by no file of the tree (only the overlay keeps it),
    or the tree holds a file of another detached mount only: the layers are nowhere dump can reach,
    refused before the stop (covered: dump used to take them from the mount beneath)."""
    _needs_overlay()
    pid = case.start(STOP_WATCH + _setup(True, True, held))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert "on overlay: its layer lowerdir=/mnt/t0/ov2/l is no longer a directory at that path" in msg, msg
    assert "lazily unmounted, it may live on detached" in msg, msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"


@needs_seccomp
def test_layers_on_a_detached_mount_without_fid_refused_naming_the_kernel(case):
    """A kernel whose overlayfs gives no real layer handle (before 6.6; here name_to_handle_at fails
    with ENOSYS, so the probe and dump see what such a kernel gives): the layers held on the detached
    mount cannot be found, refused before the stop with the kernel named as the reason."""
    _needs_overlay()
    pid = case.start(STOP_WATCH + _setup(True, True))
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), *DUMP_EXTERNALS, without=("name_to_handle_at",))
    assert r.returncode != 0, r.stdout
    assert "its layer lowerdir=/mnt/t0/ov2/l is no longer a directory at that path" in r.stderr, r.stderr
    assert "AT_HANDLE_FID: this kernel gives none, Linux >= 6.6" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"


# Kernels without unique mount ids (before 6.8) resolve layers by their files (layers=refuse-ambiguous).
OLD_IDS = {"MNTCR_STRATEGY": "layers=refuse-ambiguous"}


@pytest.mark.parametrize("cover", [True, False], ids=["covered", "uncovered"])
def test_layers_on_a_detached_mount_found_without_unique_ids(case, cover):
    """Linux 6.6 and 6.7 (overlay handles, no unique mount ids; forced here): the layer path leads
    nowhere on any mount, and dump refused it at once without looking for the layers on the
    detached mount the tree holds a file of; now they are found there as with unique ids, and the
    tree restores with the overlay showing its files."""
    _needs_overlay()
    _needs_fid()
    pid = case.start(_setup(True, cover))
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *DUMP_EXTERNALS, env=OLD_IDS)
    assert r.returncode == 0, r.stderr
    (sb,) = [s for s in load_manifest(images)["superblocks"].values() if s["fstype"] == "overlay"]
    assert all(x.get("detached") for x in sb["layers"]), sb["layers"]
    new = case.restore(images)
    with open(f"/proc/{new}/mountinfo") as f:
        assert "lowerdir=/mnt/t0/ov2/l," in f.read()
    with open(f"/proc/{new}/fd/3") as f:
        assert f.read() == "4\n"
    if not cover:
        with open(f"/proc/{new}/root/mnt/b3/x") as f:
            assert f.read() == "2\n"


@needs_seccomp
def test_layers_on_a_detached_mount_without_fid_or_unique_ids_refused_naming_the_kernel(case):
    """Linux 5.10 and 6.1 (neither overlay handles nor unique mount ids; both simulated): the refusal
    named no kernel, only that the layer path leads nowhere (the 6.1 VM row's dump said so); it now
    names the facility and the kernel that has it, before the stop."""
    _needs_overlay()
    pid = case.start(STOP_WATCH + _setup(True, True))
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), *DUMP_EXTERNALS, env=OLD_IDS,
              without=("name_to_handle_at",))
    assert r.returncode != 0, r.stdout
    assert "its layer lowerdir=/mnt/t0/ov2/l is no longer a directory at that path" in r.stderr, r.stderr
    assert "AT_HANDLE_FID: this kernel gives none, Linux >= 6.6" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"
