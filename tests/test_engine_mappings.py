"""engine/mappings.py: which regions of a stand-in map its executable (unmapped before it takes
the dumped process's executable as /proc/PID/exe)."""

from __future__ import annotations

from engine.mappings import exe_regions

# A VM guest whose root is an overlay over 9p: maps shows the layer's device (00:15), while a stat
# of /proc/self/exe gives the overlay's (00:19): the executable is found by start_code instead.
MAPS = """\
00400000-0041f000 r--p 00000000 00:15 521625    /usr/bin/python3.11
0041f000-006d2000 r-xp 0001f000 00:15 521625    /usr/bin/python3.11
006d2000-00919000 r--p 002d2000 00:15 521625    /usr/bin/python3.11
00b8a000-00bd9000 rw-p 0058a000 00:15 521625    /usr/bin/python3.11
00bd9000-00c1a000 rw-p 00000000 00:00 0
7f0000000000-7f0000028000 r--p 00000000 00:15 700001    /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0         [stack]
"""


def test_the_executable_is_the_file_mapped_at_start_code():
    assert exe_regions(MAPS, 0x41f000 + 16) == [(0x400000, 0x1f000), (0x41f000, 0x2b3000), (0x6d2000, 0x247000),
                                                (0xb8a000, 0x4f000)]


def test_no_file_at_start_code_gives_no_regions():
    assert exe_regions(MAPS, 0xbd9000 + 8) == []     # anonymous
    assert exe_regions(MAPS, 0x100) == []            # nothing mapped there
