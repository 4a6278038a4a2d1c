"""engine/schedattrs.py: what dump refuses before the stop, and the image's SCHED record."""

import os

import pytest

from engine import imageformat, schedattrs


def _attrs(**over):
    return {"policy": 0, "rt_priority": 0, "nice": 0, "ioprio": 0, "oom_score_adj": 0,
            "timerslack_ns": 50000, "personality": 0, **over}


def test_deadline_refused():
    assert "SCHED_DEADLINE" in schedattrs._refusal(7, _attrs(policy=schedattrs.SCHED_DEADLINE))


@pytest.mark.parametrize("have", [True, False])
def test_negative_oom_needs_cap_sys_resource(monkeypatch, have):
    # (a restorer without CAP_SYS_RESOURCE cannot lower oom_score_adj: dump refuses, not restore)
    monkeypatch.setattr(schedattrs, "_have_cap", lambda cap: have)
    why = schedattrs._refusal(7, _attrs(oom_score_adj=-500))
    assert (why is None) == have
    assert have or "CAP_SYS_RESOURCE" in why
    assert schedattrs._refusal(7, _attrs(oom_score_adj=500)) is None


def test_read_self_matches_the_record():
    got = schedattrs.values(os.getpid())
    imageformat.check_record(imageformat.SCHED, got, "sched")
    assert got["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert set(got) == imageformat.SCHED.required   # ("cpus" only where it differs from ours: `read`)


@pytest.mark.parametrize("bad", [{"policy": 6}, {"nice": -21}, {"oom_score_adj": 1001}, {"rt_priority": 100}])
def test_record_rejects(bad):
    imageformat.check_record(imageformat.SCHED, _attrs(), "sched")
    with pytest.raises(imageformat.ImageError):
        imageformat.check_record(imageformat.SCHED, _attrs(**bad), "sched")


@pytest.mark.parametrize("attrs", [{"nice": -5}, {"policy": 1, "rt_priority": 10}, {"ioprio": (1 << 13) | 4}])
def test_privileged_priorities_need_cap_sys_nice(monkeypatch, attrs):
    monkeypatch.setattr(schedattrs, "_have_cap", lambda cap: cap != schedattrs._CAP_SYS_NICE)
    assert "CAP_SYS_NICE" in schedattrs._refusal(7, _attrs(**attrs))
    monkeypatch.setattr(schedattrs, "_have_cap", lambda cap: True)
    assert schedattrs._refusal(7, _attrs(**attrs)) is None


def test_affinity_on_some_cpus_this_machine_lacks_refused():
    """An affinity of CPUs that exist and one that does not ([0, 1, 63] on a 2-CPU machine), which
    the kernel would narrow to those that exist: refused in one line naming the lacking CPU and
    what to do; one of CPUs that exist only passes."""
    online = schedattrs._online()
    if online is None:
        pytest.skip("no /sys/devices/system/cpu/online here")
    missing = max(online) + 1
    cpus = sorted(online)[:2] + [missing]
    with pytest.raises(schedattrs.SchedError, match=rf"process 7: its CPU affinity \[.*{missing}\]: CPU {missing} of "
                                                    r"it is not one this machine lets restore use \(.*\): restore where "
                                                    r"those CPUs exist, or give the process another affinity"):
        schedattrs.check_cpus([{"pid": 7}, {"pid": 7, "sched": {"cpus": cpus}}])
    schedattrs.check_cpus([{"pid": 8, "sched": {"cpus": sorted(online)}}])
