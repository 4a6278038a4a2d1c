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
