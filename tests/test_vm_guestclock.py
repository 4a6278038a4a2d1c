"""vm/guestclock.py: a TCG guest is told the host's TSC rate instead of measuring it under load."""

from __future__ import annotations

from vm import guestclock

KNOWN = "processor\t: 0\ncpu MHz\t\t: 2596.130\nflags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq\n"
SCALED = "processor\t: 0\ncpu MHz\t\t: 1200.000\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"


def test_known_host_rate_is_given_to_a_tcg_guest():
    assert guestclock.host_tsc_khz(KNOWN) == 2596130
    assert guestclock.cmdline("tcg", KNOWN) == "tsc=reliable tsc_early_khz=2596130"


def test_a_scaled_core_clock_is_never_taken_for_the_tsc_rate():
    # without tsc_known_freq, `cpu MHz` is the core's current clock: telling the guest that would
    # make its clock wrong for good
    assert guestclock.host_tsc_khz(SCALED) is None
    assert guestclock.cmdline("tcg", SCALED) == "tsc=reliable"
    assert guestclock.host_tsc_khz("cpu MHz : x\nflags : tsc_known_freq constant_tsc\n") is None


def test_kvm_guest_gets_no_tsc_rate():
    assert guestclock.cmdline("kvm", KNOWN) == "tsc=reliable"
