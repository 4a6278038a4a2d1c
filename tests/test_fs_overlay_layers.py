"""Which mount an overlay layer lay on, without unique mount ids (engine/fs/overlay.py): the stack
of mounts a layer path crosses, and the choice look_beneath's findings make among them."""

from engine import mountinfo
from engine.fs import overlay

# root; /o a tmpfs; a decoy over the layer /o/l; /o itself covered by another tmpfs afterwards
TEXT = """\
1 0 0:10 / / rw - tmpfs root rw
20 1 0:20 / /o rw - tmpfs lay rw
30 20 0:30 / /o/l rw - tmpfs decoy rw
40 20 0:40 / /o rw - tmpfs hide rw
"""


def test_stack_beneath_peels_each_mount_with_what_sits_on_it():
    """Topmost first: the cover of /o, then the decoy at the layer path, then /o's tmpfs, then the root."""
    mounts = mountinfo.parse(TEXT)
    assert [m.mnt_id for m in overlay.stack_beneath("/o/l", mounts)] == [40, 30, 20, 1]
    assert [m.mnt_id for m in overlay.stack_beneath("/o/x", mounts)] == [40, 20, 1]
    assert [m.mnt_id for m in overlay.stack_beneath("/p", mounts)] == [1]


def _seen(*stages):
    return [{"found": f, "pos": p, "ident": i} for f, p, i in stages]


def test_files_the_overlay_shows_choose_the_mount():
    """The topmost directory whose files the overlay shows, also beneath a directory that has none."""
    assert overlay.told_by_files(_seen((True, 0, (1, 2)), (True, 3, (2, 5)), (False, 0, None))) == 1
    # the same directory seen through two mounts (a bind of it over itself): the topmost
    assert overlay.told_by_files(_seen((True, 1, (2, 5)), (True, 2, (2, 5)))) == 0


def test_only_directory_of_that_name_chooses_the_mount():
    """No file tells, but only one mount of the stack has the layer directory at all."""
    assert overlay.told_by_files(_seen((False, 0, None), (True, 0, (2, 5)), (False, 0, None))) == 1


def test_nothing_tells_or_two_directories_tell():
    """Two different directories with the overlay's files, or two without any and none else: no choice."""
    assert overlay.told_by_files(_seen((True, 1, (1, 2)), (True, 1, (2, 5)))) is None
    assert overlay.told_by_files(_seen((True, 0, (1, 2)), (True, 0, (2, 5)))) is None
    assert overlay.told_by_files(None) is None
    assert overlay.told_by_files([]) is None


class _Plan:
    """What OverlayType.made_outside reads of a dump's plan (engine/dump.py's _Plan)."""

    def __init__(self, texts: dict[str, str]):
        self.ns_mounts = {n: mountinfo.parse(t) for n, t in texts.items()}
        self.sb_of_dev = {}
        self.mntns_doc = {}
        for n, ms in self.ns_mounts.items():
            for m in ms:
                self.sb_of_dev.setdefault(m.dev, f"sb-{len(self.sb_of_dev)}")
            self.mntns_doc[n] = {"mounts": [{"id": m.mnt_id, "sb": self.sb_of_dev[m.dev], "root": m.root,
                                             "mountpoint": m.mountpoint, "uid": None} for m in ms]}


OPTS = ["rw", "lowerdir=/run/d/l", "upperdir=/run/d/u", "workdir=/run/d/w"]


def test_overlay_made_inside_whatever_the_legacy_id_order():
    """Without unique ids a container that pivoted into the overlay (its root, lowest legacy id after
    a restore) does not make the overlay 'made outside': the outer namespace sees its layers."""
    ovl = "0:50 / {mp} rw - overlay ovl " + ",".join(OPTS)
    plan = _Plan({"outer": "100 0 0:10 / / rw - tmpfs root rw\n101 100 0:20 / /run/d rw - tmpfs d rw\n"
                           "102 101 " + ovl.format(mp="/run/d/m") + "\n",
                  "ctr": "50 0 " + ovl.format(mp="/") + "\n"})
    sid = plan.sb_of_dev["0:50"]
    sb = {"super_opts": OPTS}
    assert [n for n, _ in overlay._makers(sid, sb, plan)] == ["outer"]
    assert overlay.TYPE.made_outside(sid, sb, plan) is False
    del plan.mntns_doc["outer"], plan.ns_mounts["outer"]   # only the container: made outside the dump
    assert overlay.TYPE.made_outside(sid, sb, plan) is True
