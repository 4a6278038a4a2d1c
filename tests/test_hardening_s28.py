"""Hostile images against session 27's surface, read by session 28's review: packet socket rings
(engine/fds/packet.py: their geometry is kernel memory restore asks for, charged to no memory
cgroup) and the names nft and the -restore tools look up in the restoring host's databases where a
port or a protocol goes (engine/netfilter.py: NAT ports, maps keyed by a port, named maps, meta l4proto).

The image is a real dump of a tree in a network namespace of its own with three packet sockets
(test_engine_packet.RINGS: rings, one mapped, a fanout group, memberships), changed the way an
attacker with write access to the image directory would. Each change is refused with exit
status 2 and one line, nothing left running or mounted, the image not modified
(test_hardening_hostile.refused).
"""

from __future__ import annotations

import pytest

import enginecase
from enginecase import case, load_manifest  # noqa: F401  (fixture)
from test_engine_inet_ping import _in_netns
from test_engine_packet import RINGS
from test_hardening_hostile import _mutated, refused


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The dumped tree of RINGS in its own network namespace."""
    yield from enginecase.dumped_image(tmp_path_factory, _in_netns(RINGS),
                                       "hostile image tests need root (they dump a real container and restore)")


def _packets(d) -> list[dict]:
    return [f for p in d["processes"] for f in p["fds"] if f.get("kind") == "packet"]


def _net(d) -> str:
    return next(p["ns"]["net"] for p in d["processes"] if any(f.get("kind") == "packet" for f in p["fds"]))


def test_image_has_what_the_tests_change(image_dir):
    d = load_manifest(image_dir)
    # (three sockets, each held twice: the program's own fd and the one dup2 gave; one description each)
    descs = {f["desc"]: "rings" in f for f in _packets(d)}
    assert len(descs) == 3 and sum(descs.values()) == 2, _packets(d)
    assert "net" not in (d["processes"][0].get("host_ns") or ()), d["processes"][0]


def _ring(f: dict, size: int, names=("rx",)) -> None:
    """Fd `f`'s rings `names` made `size` bytes each (blocks of 4 MiB), as a TPACKET_V2 geometry."""
    f["rings"] = {n: [1 << 22, size >> 22, 1 << 12, (size >> 22) << 10, 0, 0, 0] for n in names}
    f.pop("mapped", None)


def _nft(d, objs) -> None:
    d["netfilter"] = {_net(d): {"nft": [{"table": {"family": "ip", "name": "t"}},
                                        {"chain": {"family": "ip", "table": "t", "name": "c", "type": "nat",
                                                   "hook": "output", "prio": 0, "policy": "accept"}}, *objs]}}


def _rule(expr) -> dict:
    return {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": expr}}


_DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: _ring(_packets(d)[0], 1 << 40),
     r"fd \d+: a packet socket's rx ring of 1099511627776 bytes \(block_size x block_nr\): more than 1024 MiB, "
     r"not restored"),
    (lambda d: [_ring(f, 1 << 30, ("rx", "tx")) for f in _packets(d)],
     r"the image's packet sockets' rings take 6442450944 bytes: more than restore makes \(4096 MiB in all\)"),
    (lambda d: _nft(d, [_rule([{"dnat": {"addr": "10.0.0.1", "port": "ssh"}}])]),
     r"nft rule 'c': 'ssh' is not a number: nft would look it up in this host's /etc/services"),
    (lambda d: _nft(d, [_rule([{"vmap": {"key": _DPORT, "data": {"set": [["ssh", {"accept": None}]]}}}])]),
     r"'ssh' is not a number"),
    (lambda d: _nft(d, [{"map": {"family": "ip", "table": "t", "name": "m", "type": "inet_service",
                                 "map": "ipv4_addr", "elem": [["ftp", "10.0.0.1"]]}}]),
     r"nft map 'm': 'ftp' is not a number"),
    (lambda d: d.update(netfilter={_net(d): {"iptables": "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j DNAT "
                                                         "--to-destination 10.0.0.1:ssh\nCOMMIT\n"}}),
     r"iptables: --to-destination '10.0.0.1:ssh' is not numeric"),
    (lambda d: _nft(d, [_rule([{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "evil"}}])]),
     r"'evil' is not a number: nft would look it up in this host's /etc/protocols"),
    # (the fds of one socket disagree: the program's own fd with 2 GiB, its dup2 copy 8 MiB)
    (lambda d: [_ring(f, 1 << 30 if f["fd"] < 10 else 1 << 22, ("rx", "tx")) for f in _packets(d)],
     r"the image's packet sockets' rings take 6442450944 bytes"),
    # (a fanout mode past PACKET_FANOUT_EBPF, 7; a flag bit the kernel does not define: restore's
    # setsockopt failed them late)
    (lambda d: [f.update(fanout=13 | 8 << 16) for f in _packets(d)],
     r"fd \d+: bad packet socket fanout 524301 \(a mode of 0 to 5"),
    (lambda d: [f.update(fanout=13 | 0x0100 << 16) for f in _packets(d)],
     r"fd \d+: bad packet socket fanout 16777229 \(a mode of 0 to 5"),
], ids=["ring-1TiB", "rings-together", "nft-dnat-port", "nft-vmap-dport", "nft-map-inet_service",
        "iptables-dnat-port", "nft-l4proto-name", "rings-together-fds-disagree", "fanout-mode-8", "fanout-flag-0x100"])
def test_refused(image_dir, tmp_path, mutate, pattern):
    """Each hostile change is refused in one line, nothing left behind, the image unchanged."""
    refused(_mutated(image_dir, tmp_path, mutate), pattern, tmp_path)


@pytest.mark.parametrize("value", [13 | 8 << 16, 13 | 0x0100 << 16, 13 | 0x0200 << 16])
def test_dump_refuses_a_fanout_it_does_not_know(value):
    """Dump refuses a fanout group of a mode past PACKET_FANOUT_EBPF or a flag no kernel defines (a
    newer kernel's), before the stop, as the validator would refuse its image; this kernel makes
    neither, so the socket is a stand-in that answers getsockopt(PACKET_FANOUT) with `value`."""
    import types
    from engine.fds import FdError, packet
    s = types.SimpleNamespace(getsockopt=lambda level, opt: value if (level, opt) == (263, 18) else 0)
    with pytest.raises(FdError, match=r"fd 3: a packet socket in a fanout group of a mode or flags this mntcr "
                                      r"does not know \(0x0[0-9a-f]{3}\): not supported"):
        packet._fanout(s, "fd 3")
    assert packet._fanout(types.SimpleNamespace(getsockopt=lambda level, opt: 13 | 0x9003 << 16), "fd 3") \
        == 13 | 0x9003 << 16   # (rollover mode with the defrag and rollover flags: joined again)
