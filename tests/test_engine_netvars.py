"""The own sysctls of the tree's network namespace (engine/netvars.py): what differs from a fresh
namespace comes back in the restored one (devices' settings after `all`'s and `default`'s, which
change them), the snapshot compares them; the validator's rule."""

from __future__ import annotations

import pytest

from tests.enginecase import case, py_hold  # noqa: F401  (fixture)

_SET = """
for name, v in (("unix/max_dgram_qlen", "77"), ("ipv4/ping_group_range", "40000\\t50000"),
                ("ipv4/ip_unprivileged_port_start", "80"), ("ipv4/conf/lo/forwarding", "1"),
                ("ipv6/conf/all/disable_ipv6", "1"), ("ipv6/conf/default/disable_ipv6", "0"),
                ("ipv6/conf/lo/disable_ipv6", "0"),
                ("ipv4/conf/default/rp_filter", "2"), ("ipv6/conf/lo/stable_secret", "2001:db8::4"),
                ("ipv6/conf/lo/addr_gen_mode", "2")):
    with open("/proc/sys/net/" + name, "w") as f:
        f.write(v)
"""

_NAMES = ("unix/max_dgram_qlen ipv4/ping_group_range ipv4/ip_unprivileged_port_start ipv4/conf/lo/forwarding "
          "ipv6/conf/all/disable_ipv6 ipv6/conf/default/disable_ipv6 ipv6/conf/lo/disable_ipv6 "
          "ipv4/conf/default/rp_filter ipv6/conf/lo/stable_secret ipv6/conf/lo/addr_gen_mode")
# (the check runs in the tree's mount and pid namespaces, not its network namespace: pid 1's)
_SHOW = f"nsenter -t 1 -n sh -c 'for v in {_NAMES}; do echo $v=$(cat /proc/sys/net/$v); done'"


def _in_netns(body: str) -> str:
    hold = py_hold(body)
    assert hold.startswith("exec python3 -c ")
    return "exec unshare -n " + hold[len("exec "):]


def test_sysctls_restored(case):
    """Unix, ipv4 and device sysctls of the tree's own network namespace come back as they were;
    all/disable_ipv6 (writing it sets default's and lo's too) does not leave them set; a stable
    secret is written before the address mode that needs it. Without engine/netvars.py they came
    back as a fresh namespace's."""
    before, after = case.roundtrip(_in_netns(_SET), _SHOW)
    out = before.snap.check_output
    for line in ("unix/max_dgram_qlen=77", "ipv4/ping_group_range=40000 50000", "ipv4/ip_unprivileged_port_start=80",
                 "ipv4/conf/lo/forwarding=1", "ipv6/conf/all/disable_ipv6=1", "ipv6/conf/default/disable_ipv6=0",
                 "ipv6/conf/lo/disable_ipv6=0", "ipv4/conf/default/rp_filter=2",
                 "ipv6/conf/lo/stable_secret=2001:0db8:0000:0000:0000:0000:0000:0004", "ipv6/conf/lo/addr_gen_mode=2"):
        assert line in out, out
    assert after.snap.check_output == out


@pytest.mark.parametrize("kept, pattern", [
    ({"../kernel/core_pattern": "x"}, r"not a network sysctl"),
    ({"ipv4/../../kernel/core_pattern": "x"}, r"not a network sysctl"),
    ({"bridge/bridge-nf-call-iptables": "1"}, r"not a network sysctl"),
    ({"ipv4": "1"}, r"not a network sysctl"),
    ({"ipv4/ip_forward": 1}, r"printable text"),
    ({"ipv4/ip_forward": "1\x00"}, r"printable text"),
    ({"ipv4/ip_forward": "1" * 2000}, r"printable text"),
    ([], r"must be an object"),
    # per-device names (a device's conf and neigh directories): a device part that leaves the table
    ({"ipv4/conf/../../kernel/core_pattern": "|/x"}, r"not a network sysctl"),
    ({"ipv6/conf/./../../kernel/modprobe": "/x"}, r"not a network sysctl"),
    ({"ipv4/neigh/../../../vm/drop_caches": "3"}, r"not a network sysctl"),
    ({"ipv4/conf/eth0/../forwarding": "1"}, r"not a network sysctl"),
    ({"ipv4/conf/a/b/c/forwarding": "1"}, r"not a network sysctl"),
    ({"ipv4/conf//forwarding": "1"}, r"not a network sysctl"),
    ({"ipv4/conf/eth 0/forwarding": "1"}, r"not a network sysctl"),
    ({"ipv4/conf/eth0\n/forwarding": "1"}, r"not a network sysctl"),
    ({"ipv4/conf/" + "e" * 65 + "/forwarding": "1"}, r"not a network sysctl"),
    ({"/proc/sys/net/ipv4/conf/all/forwarding": "1"}, r"not a network sysctl"),
    ({"ipv4/conf/all/forwarding": "1\x1b"}, r"printable text"),
])
def test_validator(kept, pattern):
    """Names under the per-namespace tables only, no '..'; printable texts."""
    from engine import netvars

    def fail(msg):
        raise ValueError(msg)
    with pytest.raises(ValueError, match=pattern):
        netvars.check(kept, "netvars net-0", fail)
    netvars.check({"ipv4/conf/lo/forwarding": "1\n", "unix/max_dgram_qlen": "77\n"}, "netvars net-0", fail)
    # (the namespace's own all and default, devices named as the kernel allows: '.', '@', '+', '-')
    netvars.check({"ipv4/conf/all/forwarding": "1\n", "ipv6/conf/default/disable_ipv6": "1\n",
                   "ipv6/conf/eth0.100/disable_ipv6": "1\n", "ipv4/neigh/d@2/ucast_solicit": "5\n",
                   "ipv4/conf/d+1/arp_ignore": "2\n", "ipv4/conf/..x/arp_ignore": "2\n"}, "netvars net-0", fail)


def test_image_only_for_a_namespace_restore_makes():
    """netvars naming the host's network namespace (a process's host_ns) is refused by the image check."""
    from engine import imageformat
    doc = {"processes": [{"ns": {"net": "net-0"}, "host_ns": ["net"]}], "netvars": {"net-0": {"unix/max_dgram_qlen": "5"}}}
    with pytest.raises(Exception, match=r"not a network namespace restore makes"):
        imageformat._check_netvars(doc)


def test_lo_up_kept_without_a_socket(case):
    """A network namespace with lo up and no inet socket: lo comes back up (it came back down)."""
    show = "nsenter -t 1 -n ip -brief link show lo"
    before, after = case.roundtrip(py_hold("").replace("exec python3 -c ", "exec unshare -n sh -c 'ip link set lo up; "
                                                       "exec \"$0\" \"$@\"' python3 -c ", 1), show)
    assert "LOOPBACK,UP" in before.snap.check_output, before.snap.check_output
    assert after.snap.check_output == before.snap.check_output


def test_devices_refused_before_the_stop(case):
    """A macvlan device (on a bridge): restore makes only veth, bridge and dummy devices, so dump
    refuses, before the stop, in one line saying what to do (an address added to lo is kept now:
    tests/test_engine_netdev.py)."""
    import os

    from tests.enginecase import STOP_WATCH, CRError, was_stopped
    setup = STOP_WATCH + py_hold("").replace(
        "exec python3 -c ", "exec unshare -n sh -c 'ip link set lo up; ip link add br0 type bridge; "
        "ip link add mv0 link br0 type macvlan; exec \"$0\" \"$@\"' python3 -c ", 1)
    pid = case.start(setup)
    with pytest.raises(CRError, match=r"interface mv0 is of kind macvlan, which restore does not make .*only lo and "
                                      r"veth, bridge or dummy devices") as e:
        case.dump(pid, case.new_images_dir())
    assert "\n" not in str(e.value).strip().splitlines()[-1]
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("ups, pattern", [
    (["net-1"], r"net_lo_up: network namespaces restore makes"),     # the host's
    (["net-0", "net-0"], r"net_lo_up: network namespaces restore makes, each once"),
    ([{"x": 1}], r"net_lo_up: network namespaces restore makes"),
])
def test_lo_up_list_validated(ups, pattern):
    """net_lo_up names namespaces restore makes, each once (never the host's: restore would bring
    the restorer's lo up)."""
    from engine import imageformat
    doc = {"processes": [{"ns": {"net": "net-0"}}, {"ns": {"net": "net-1"}, "host_ns": ["net"]}], "net_lo_up": ups}
    with pytest.raises(Exception, match=pattern):
        imageformat._check_netvars(doc)
    imageformat._check_netvars({**doc, "net_lo_up": ["net-0"]})


def test_lone_namespace_state_validated():
    """A network namespace no process is in (an nsfs superblock's `lone_ns`) is one restore makes: its
    sysctls and lo go through netvars/net_lo_up like a process's namespace's; a lone id that is the
    host's is not."""
    from engine import imageformat
    procs = [{"ns": {"net": "net-0"}, "host_ns": ["net"]}]
    doc = {"processes": procs, "superblocks": {"sb-1": {"lone_ns": ["net-1"]}},
           "netvars": {"net-1": {"ipv6/conf/all/disable_ipv6": "1\n"}}, "net_lo_up": ["net-1"]}
    imageformat._check_netvars(doc)
    with pytest.raises(Exception, match=r"netvars for 'net-0': not a network namespace restore makes"):
        imageformat._check_netvars({**doc, "superblocks": {"sb-1": {"lone_ns": ["net-1", "net-0"]}},
                                    "netvars": {"net-0": {"ipv6/conf/all/disable_ipv6": "1\n"}}})
