"""kernel.proc_status looks each asked key up where its line starts: the same values, in the file's
order, as a parse of every line of /proc/PID/status, for every key, absent ones and prefixes."""

from __future__ import annotations

import os
import subprocess
import sys

from engine import kernel


def _by_lines(pid, keys) -> dict[str, str]:
    with open(f"/proc/{pid}/status", "rb") as f:
        text = f.read().decode(errors="surrogateescape")
    return {k: v + "\n" for k, _, v in (line.partition(":") for line in text.split("\n")[:-1]) if k in keys}


# Lines whose values move while the process runs between the two reads (a running pytest, pid 1):
# compared by key and place only.
_MOVING = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches", "State", "SigQ", "Threads", "FDSize",
           "Vm", "Rss", "HugetlbPages")


def _steady(values: dict[str, str]) -> dict[str, str]:
    return {k: "(moves)" if k.startswith(_MOVING) else v for k, v in values.items()}


def test_the_values_are_a_parse_of_every_line():
    # (a Name: line that looks like other keys' lines; the kernel escapes its newline)
    odd = subprocess.Popen([sys.executable, "-S", "-c", "open('/proc/self/comm', 'w').write('a:b\\nUid: c'); "
                            "print(flush=True); import time; time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        odd.stdout.readline()
        every = [line.split(":")[0] for line in open("/proc/self/status")]
        for pid in ("self", odd.pid, 1):
            for keys in (("Uid", "Gid", "Groups"), {"Seccomp", "TracerPid"}, ("Name",), tuple(every),
                         ("Nope",), ("Cap", "Uid"), tuple(reversed(every))):
                got = _steady(kernel.proc_status(pid, keys))
                want = _steady(_by_lines(pid, keys))
                assert got == want and list(got) == list(want), (pid, keys)
        assert kernel.proc_status(odd.pid, ("Name",))["Name"].startswith("\ta:b")
    finally:
        odd.kill()
        odd.wait()
    assert os.path.exists("/proc/self/status")
