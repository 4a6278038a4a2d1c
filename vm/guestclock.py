"""The guest kernel's clock arguments: a TSC frequency the guest need not measure.

Under qemu's TCG the guest's TSC ticks at the host's TSC rate (qemu reads the host's counter). The
guest still calibrates it at boot against the HPET in a ~10 ms loop; on a loaded host that loop is
preempted and the early figure can be off by a factor of several (seen: a guest clock four times
too fast, so `sleep 5` lasted 1.2 s and every guest timeout was that short). The kernel's later
refinement against the HPET is only taken within 1% of the early figure, so it cannot mend it.
`tsc_early_khz=` gives the early figure instead of measuring it (Linux >= 5.4); the refinement then
confirms it. Only given when the host knows its own TSC rate exactly (cpuinfo flag tsc_known_freq:
its `cpu MHz` is then the TSC's, not a scaled core clock).
"""

from __future__ import annotations

CPUINFO = "/proc/cpuinfo"


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC frequency in kHz when the host states it exactly, else None."""
    if cpuinfo is None:
        try:
            with open(CPUINFO) as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags: list[str] = []
    mhz = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = value.split()
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                return None
    if "tsc_known_freq" not in flags or "constant_tsc" not in flags or not mhz or mhz <= 0:
        return None
    return round(mhz * 1000)


def cmdline(accel: str, cpuinfo: str | None = None) -> str:
    """The clock arguments for a guest run with `accel` (kvm guests use kvm-clock: nothing to add)."""
    args = "tsc=reliable"
    khz = host_tsc_khz(cpuinfo) if accel == "tcg" else None
    if khz:
        args += f" tsc_early_khz={khz}"
    return args
