"""A pty whose line speed is arbitrary (BOTHER, set with termios2: c_cflag & CBAUD == BOTHER and
the speed in c_ospeed, which termios does not carry): an image keeps Bnnn speeds only (the
validator refuses another), so dump refuses it before the stop, in one line (engine/fds/pty.py)."""

from __future__ import annotations

from enginecase import STOP_WATCH, case  # noqa: F401  (fixture)
from test_engine_ctty import _WAITING
from test_engine_prestop import _refused_unstopped

# (struct termios2: four flags, c_line, 19 c_cc, then c_ispeed and c_ospeed at 36)
_BOTHER = ("b = bytearray(fcntl.ioctl(s, 0x802c542a, bytes(44))); "
           "struct.pack_into(\"I\", b, 8, (struct.unpack_from(\"I\", b, 8)[0] & ~0o10017) | 0o10000); "
           "struct.pack_into(\"II\", b, 36, 12345, 12345); fcntl.ioctl(s, 0x402c542b, bytes(b))")


def test_arbitrary_line_speed_refused_unstopped(case):
    """The slave set to 12345 baud (BOTHER): refused before the stop, naming the fd, the pty and what
    to do; with a standard speed set through termios2 (B38400) the same tree dumps."""
    pid = case.start(STOP_WATCH + _WAITING.replace("SLAVE_OPS", _BOTHER).replace("MASTER_OPS", "pass"))
    _refused_unstopped(case, pid, r"process \d+ (\(mntcr-hold\) )?fd 20 \(/dev/pts/ptmx\): pty 0: an arbitrary line "
                                  r"speed \(BOTHER, set with termios2\): not supported; set a standard one "
                                  r"\(Bnnn, stty speed\) and dump again; the tree keeps running")


def test_standard_speed_through_termios2_dumps(case):
    """The same tree with B38400 set through termios2 (no BOTHER) dumps and restores."""
    std = _BOTHER.replace("| 0o10000", "| 0o17")
    case.roundtrip(STOP_WATCH + _WAITING.replace("SLAVE_OPS", std).replace("MASTER_OPS", "pass"))
