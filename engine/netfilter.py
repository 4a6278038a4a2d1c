"""The firewall tables of the tree's network namespaces (nftables, and iptables-nft's tables in it).

Dump lists, in a child joined to each network namespace of the tree, its nftables ruleset with
`nft -j list ruleset`. A table of iptables-nft's (families ip and ip6, named as iptables' own:
`XT_TABLES`) with a rule using one of the kernel's xtables extensions (REDIRECT, DNAT, comment...,
which nft lists without their options) is kept as `iptables-nft-save -t TABLE` text instead;
one with native rules only (iptables-nft's DROP of a port, or nft's own `table ip filter`) as
nft's JSON like the others.
Legacy iptables tables (/proc/net/ip_tables_names) are refused by engine/netdevs.py.

Restore makes them, in a child joined to the network namespace it made for the tree (never the
restorer's own: NetfilterError), once its sockets are made and its TCP connections settled in repair
mode (the segments of their peers restore sends again, which a rule may drop: CRIU's
socket-tcp-closed-last-ack), before any leaves repair mode (engine/restore.py): `nft -j -f /proc/self/fd/0`
then `iptables-nft-restore` / `ip6tables-nft-restore`, each fed on its stdin. An image is
untrusted and a ruleset is code-like input, so `check` (the validator's rule, which dump applies
too: a dump that succeeds restores) bounds it: nft's JSON only as objects `OBJECTS` (no command,
no flowtable, no ct helper or secmark object: a host module or LSM context), every key anywhere of
`_KEYS` (no "xt": an extension nft cannot make), a netdev chain's device only one restore makes in
that namespace; the iptables text only as its four line kinds with the options, matches and
targets of `_XT_OPTS`, `_XT_MATCHES`, `_XT_TARGETS` (no --modprobe, no bpf object path, no
extension library by another name); no host name where an address goes (nft, and iptables-nft-restore's
-s, -d, --ctorig*, --ctrepl*, would resolve it through this host's /etc/hosts, nsswitch or resolver;
dump lists addresses numeric: `nft -j list ruleset` resolves nothing without -N, iptables-save none),
and no name where a port, a socket's user or group goes (/etc/services, passwd, group: dump writes
numbers there too). JSON carries no include and names no file; the -restore tools read the text
from stdin only.

Not kept (lost): conntrack entries and the NAT bindings of connections made before the dump (a
restored TCP connection's next packet is picked up as a new flow, when net.netfilter's
nf_conntrack_tcp_loose allows it: its default; both ends are the tree's, and each sends a window
probe as restore ends its repair, so the flow is seen both ways and established again at once,
even through a filter that lets a new flow start only with a SYN: tests/test_engine_netfilter.py).
No network lock as CRIU's: the namespace is new and the tree's
own, and a socket in repair mode sends nothing until restore ends repair. Counters restart from the dumped values for nft,
from zero for the iptables-nft tables; sets' dynamic elements' timeouts restart; the order of
base chains of equal priority on one hook in different tables (the kernel runs them in the order
they were made: restore makes nft's JSON tables first, then iptables-nft's).

Image (manifest "netfilter"): {net-N: {"nft": [OBJECT...], "iptables": TEXT, "ip6tables": TEXT}}.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
from engine import rx

from engine import forkrun, kernel
from engine.netdevs import NetdevError

__all__ = ["NetfilterError", "collect", "read_fd", "write", "check", "check_one", "XT_TABLES"]

XT_TABLES = ("filter", "nat", "mangle", "raw", "security")
MAX_OBJECTS = 4096
MAX_DEPTH = 24
MAX_STR = 256
MAX_TEXT = 1 << 18
MAX_LINES = 4096
MAX_VALUES = 1 << 18
OBJECTS = {
    "table": {"family", "name", "flags", "comment"},
    "chain": {"family", "table", "name", "type", "hook", "prio", "policy", "dev", "comment"},
    "rule": {"family", "table", "chain", "expr", "comment"},
    "set": {"family", "table", "name", "type", "flags", "elem", "timeout", "gc-interval", "size", "policy", "auto-merge",
            "comment", "stmt"},
    "map": {"family", "table", "name", "type", "map", "flags", "elem", "timeout", "gc-interval", "size", "policy",
            "auto-merge", "comment", "stmt"},
    "counter": {"family", "table", "name", "packets", "bytes"},
    "quota": {"family", "table", "name", "bytes", "used", "inv"},
    "limit": {"family", "table", "name", "rate", "per", "burst", "unit", "inv"},
}
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_NESTED = ("expr", "elem", "type", "map", "flags", "stmt")   # (fields holding JSON values: `_keys`)
# The keys nft's JSON uses in expressions and statements that act in the namespace only (matches,
# verdicts, NAT, marks, sets, maps, counters, logging); an unknown one (xt, a helper, osf's host-wide
# fingerprints, synproxy, secmark, tproxy, queue to a host daemon...) is refused.
_KEYS = frozenset("""
match op left right payload protocol field base offset len meta key counter packets bytes accept drop continue return
jump goto target reject type expr redirect dnat snat masquerade addr port family flags ct dir set range prefix concat
elem map data vmap log level group snaplen queue-threshold limit rate per burst rate_unit burst_unit unit inv
notrack mangle value exthdr name fib result rt socket quota val val_unit used used_unit timeout expires comment numgen
mode mod symhash jhash seed stmt | & ^ << >> != == < > <= >= in
""".split()) | {"tcp option", "ip option", "sctp chunk", "counter name", "quota name", "limit name"}
# (the expressions and set types whose values are IP addresses: a name there is resolved by nft)
_ADDR_FIELDS = {("ip", "saddr"), ("ip", "daddr"), ("ip6", "saddr"), ("ip6", "daddr"), ("arp", "saddr ip"), ("arp", "daddr ip")}
_ADDR_TYPES = ("ipv4_addr", "ipv6_addr")
_SERVICES, _PROTOCOLS = "/etc/services", "/etc/protocols"
_NUMBER_TYPES = {"inet_service": _SERVICES, "uid": "passwd", "gid": "group", "inet_proto": _PROTOCOLS}   # (_looked_up)
# (the protocol names iptables' own table knows, which images of every version hold: `-p tcp`; any
# other name is a number in the image, dump writes it so: nft -p, `_xt_numbered`)
_KNOWN_PROTOCOLS = frozenset("tcp udp udplite icmp ipv6-icmp icmpv6 sctp esp ah mh all".split())
_NAME = rx.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
_TEXT = rx.compile(r"^[\x20-\x7e]*\Z")
# iptables-save text: the options, matches and targets of the rules it writes that act in the namespace
_XT_OPTS = frozenset("""
! -s -d -i -o -p -m -j -g -f --dport --sport --dports --sports --tcp-flags --syn --tcp-option --icmp-type
--icmpv6-type --state --ctstate --ctstatus --ctproto --ctorigsrc --ctorigdst --ctrepldst --ctreplsrc --ctdir --comment
--to-ports --to-destination --to-source --random --persistent --random-fully --reject-with --log-prefix --log-level
--log-uid --log-tcp-sequence --log-tcp-options --log-ip-options --mark --set-mark --set-xmark --and-mark --or-mark
--xor-mark --src-type --dst-type --limit-iface-in --limit-iface-out --limit --limit-burst --uid-owner --gid-owner
--socket-exists --src-range --dst-range --mac-source --pkt-type --length --ttl-eq --ttl-gt --ttl-lt --hl-eq --hl-gt
--hl-lt
""".split())
_XT_ADDR_OPTS = ("-s", "-d", "--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst")
# (options whose value the -restore tools look up by name in this host's databases: a port in
# /etc/services, a user or group through nsswitch; iptables-save writes numbers)
_XT_NUMBER_OPTS = {"--dport": _SERVICES, "--sport": _SERVICES, "--dports": _SERVICES,
                   "--sports": _SERVICES, "--uid-owner": "passwd", "--gid-owner": "group",
                   "--to-ports": _SERVICES, "-p": _PROTOCOLS, "--ctproto": _PROTOCOLS}
_XT_NAT_TO = ("--to-destination", "--to-source")   # ([ADDR[-ADDR]][:PORT[-PORT]]: its ports looked up too)
_XT_NUMBER = rx.compile(r"^!?[0-9]{1,10}(?:[:,-][0-9]{1,10}){0,15}\Z")
_XT_MATCHES = frozenset("tcp udp icmp icmp6 comment conntrack state multiport mark addrtype limit owner iprange mac "
                        "pkttype length ttl hl".split())
_XT_TARGETS = frozenset("ACCEPT DROP RETURN REJECT REDIRECT DNAT SNAT MASQUERADE LOG MARK".split())
_TOKEN = rx.compile(r'"[^"\\]*"|[^\s"\\]+')
# (a chain's name never starts with '-': the -restore tools' option parser would read it as an option)
_CHAIN_LINE = rx.compile(r"^:[A-Za-z0-9_][A-Za-z0-9_.-]{0,27} (ACCEPT|DROP|-) \[\d{1,20}:\d{1,20}\]\Z")
_WHAT_TO_DO = "keep the namespace's firewall to nftables' rules (nft) and iptables-nft's common matches and targets"


class NetfilterError(NetdevError):
    """A firewall ruleset that cannot be dumped or made again; the message is one line."""


def _run(argv: list[str], data: bytes = b"") -> bytes:
    """`argv`'s output, fed `data`, in a minimal environment (no XTABLES_LIBDIR of the caller's);
    NetfilterError, one line, when it fails or is missing."""
    import subprocess   # (only a tree with a firewall: not every dump's start-up)
    try:
        got = subprocess.run(argv, input=data, capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except FileNotFoundError:
        raise NetfilterError(errno.ENOENT, f"{argv[0]} is not installed (Debian: apt-get install nftables iptables)") from None
    if got.returncode:
        err = (got.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[0]
        raise NetfilterError(errno.EINVAL, f"{argv[0]} failed: {err[:200]}")
    return got.stdout


def _has_tables() -> bool:
    """Whether our namespace has an nftables table (NFT_MSG_GETTABLE: no program run for none)."""
    from engine.fds import inet_net
    try:
        return bool(inet_net.netlink_dump(12, (10 << 8) | 1, b"\0\0\0\0", "nftables"))
    except OSError:
        return False   # (no nf_tables in this kernel: no table anywhere)


def _read_here() -> dict:
    """Our namespace's ruleset as the image keeps it (`check`'s shape), {} when it has none."""
    if not _has_tables():
        return {}
    try:
        doc = json.loads(_run(["nft", "-j", "-p", "list", "ruleset"]) or b'{"nftables": []}')   # (-p: protocols
        # as numbers, which restore's nft looks up nowhere)
    except ValueError:   # (nft 1.0.6 lists a table's flags so: `flags dormant`)
        raise NetfilterError(errno.EOPNOTSUPP, "its network namespace's firewall is not listed as JSON by `nft -j "
                                               "list ruleset` (this nft's bug with a table's flags: dormant): not "
                                               f"supported; {_WHAT_TO_DO}") from None
    objs = [{k: {f: v for f, v in b.items() if f != "handle"} for k, b in o.items()}
            for o in doc.get("nftables") or () if "metainfo" not in o]
    # (a table of iptables-nft's names holding an xtables extension's rule: its text; others, nft's own
    # or iptables-nft's with native rules only, as nft's JSON)
    xt = {(fam, t) for o in objs for fam, t in [_table_of(o)]
          if fam in ("ip", "ip6") and t in XT_TABLES and "rule" in o and _has_xt(o["rule"].get("expr"))}
    out: dict = {}
    if any(_table_of(o) not in xt for o in objs):
        out["nft"] = [o for o in objs if _table_of(o) not in xt]
    for fam, tool in (("ip", "iptables"), ("ip6", "ip6tables")):
        text = "".join(_run([f"{tool}-nft-save", "-t", t]).decode(errors="replace") for f, t in sorted(xt) if f == fam)
        if "incompatible" in text:
            raise NetfilterError(errno.EOPNOTSUPP, f"its {fam} table {' '.join(t for f, t in sorted(xt) if f == fam)} "
                                                   f"mixes iptables-nft's rules with nft's own, which {tool}-nft cannot "
                                                   f"list: not supported; {_WHAT_TO_DO}")
        if text:
            out[tool] = _xt_numbered("".join(line + "\n" for line in text.splitlines()
                                             if line and not line.startswith("#")))
    return out


def _xt_numbered(text: str) -> str:
    """iptables-save `text` with each protocol name of -p and --ctproto but `_KNOWN_PROTOCOLS` given
    as its number here (iptables-save names them from this host's /etc/protocols: -p gre; restore's
    tool would look the name up in the restoring host's); one unknown here stays, for the check."""
    import socket
    out = []
    for line in text.splitlines():
        words, quoted = line.split(" "), False
        for i in range(1, len(words)):
            w = words[i]
            if not quoted and words[i - 1] in ("-p", "--ctproto") and w not in _KNOWN_PROTOCOLS and not w.isdigit():
                try:
                    words[i] = str(socket.getprotobyname(w))
                except OSError:
                    pass
            quoted = quoted != (w.count('"') % 2 == 1)   # (a comment's words)
        out.append(" ".join(words) + "\n")
    return "".join(out)


def _table_of(obj: dict) -> tuple:
    """(family, table) of one object of nft's JSON."""
    (kind, body), = obj.items()
    return body.get("family"), body.get("name") if kind == "table" else body.get("table")


def _has_xt(v) -> bool:
    """Whether JSON value `v` holds an "xt" key (an xtables extension's match or target)."""
    if type(v) is dict:
        return "xt" in v or any(_has_xt(x) for x in v.values())
    return type(v) is list and any(_has_xt(x) for x in v)


def _read_in(fd: int) -> dict:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return _read_here()


def read_fd(fd: int, links: set[str] | frozenset = frozenset()) -> dict:
    """The firewall ruleset of network namespace `fd` as the image keeps it ({} for none), checked
    as restore will (`links`: the devices the image makes in it); NetfilterError, one line, for
    one restore would not make."""
    kept = forkrun.run(_read_in, fd)

    def fail(msg: str) -> None:
        raise NetfilterError(errno.EOPNOTSUPP, f"its network namespace's firewall: {msg}: not supported; {_WHAT_TO_DO}")
    if kept:
        check_one(kept, "netfilter", set(links), fail)
    return kept


def collect(nets: dict[str, int], netdevs: dict) -> dict[str, dict]:
    """{ns id: its ruleset} (manifest "netfilter", those with one) of the tree's network namespaces
    `nets` ({ns id: a pid in it}, never the dumper's); `netdevs`: the devices the image keeps
    (engine/netlinks.py). NetfilterError "process PID: ..." for one restore would not make."""
    out = {}
    for nsid, pid in nets.items():
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            links = {lk["name"] for lk in (netdevs.get(nsid) or {}).get("links") or ()}
            kept = read_fd(fd, links)
        except NetfilterError as e:
            raise NetfilterError(e.errno, f"process {pid}: {e.strerror}") from None
        finally:
            os.close(fd)
        if kept:
            out[nsid] = kept
    return out


def _write_in(fd: int, kept: dict) -> None:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    if kept.get("nft"):
        # (`-f -` makes nft open /dev/stdin, a link a bare /dev lacks; its own fd 0 by /proc is there)
        _run(["nft", "-j", "-f", "/proc/self/fd/0"], json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}]
                                                  + kept["nft"]}).encode())
    for tool in ("iptables", "ip6tables"):
        if kept.get(tool):
            _run([f"{tool}-nft-restore"], kept[tool].encode())


def write(fd: int, kept: dict) -> None:
    """Make ruleset `kept` (one namespace's of manifest "netfilter") in network namespace `fd`,
    restore's (never the caller's own: NetfilterError)."""
    if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
        raise NetfilterError(errno.EINVAL, "firewall rules: the network namespace is the restorer's own")
    if kept:
        forkrun.run(_write_in, fd, kept)


def _keys(v, depth: int, fail, budget: list[int]) -> None:
    """Every key of nested JSON value `v` one of `_KEYS`, strings bounded, at most MAX_DEPTH deep;
    `budget`: [values left] of the whole ruleset (MAX_VALUES: a set of millions of elements)."""
    budget[0] -= 1
    if budget[0] < 0:
        fail(f"more than {MAX_VALUES} values in the ruleset")
    if depth > MAX_DEPTH:
        fail(f"an expression nested deeper than {MAX_DEPTH}")
    if type(v) is dict:
        for k, x in v.items():
            if k not in _KEYS:
                fail(f"expression key {str(k)[:40]!r} is not one restore makes")
            _keys(x, depth + 1, fail, budget)
    elif type(v) is list:
        for x in v:
            _keys(x, depth + 1, fail, budget)
    elif type(v) is str:
        if len(v) > MAX_STR or not _TEXT.match(v):
            fail(f"a string of more than {MAX_STR} printable characters")
    elif v is not None and type(v) not in (int, float, bool):
        fail("a value of an unknown type")


def _check_nft(objs, links: set[str], fail) -> None:
    if type(objs) is not list or len(objs) > MAX_OBJECTS:
        fail(f"nft: must be a list of at most {MAX_OBJECTS} objects")
    budget = [MAX_VALUES]
    for obj in objs:
        if type(obj) is not dict or len(obj) != 1:
            fail("nft: each object must be {KIND: {...}}")
        (kind, body), = obj.items()
        if kind not in OBJECTS:
            fail(f"nft: object {str(kind)[:40]!r} is not one restore makes (only {', '.join(OBJECTS)})")
        if type(body) is not dict or not set(body) <= OBJECTS[kind] or body.get("family") not in FAMILIES:
            fail(f"nft {kind}: only the fields {', '.join(sorted(OBJECTS[kind]))}, of a family of {', '.join(FAMILIES)}")
        for k in ("table", "name", "chain"):
            if k in body and (type(body[k]) is not str or not _NAME.match(body[k])):
                fail(f"nft {kind}: {k} must be a name of letters, digits and _.:-")
        flags = body.get("flags", []) if kind == "table" else []
        if not all(f == "dormant" for f in ([flags] if type(flags) is str else flags if type(flags) is list else [None])):
            # (an owner flag ties the table to its maker's netlink socket: nft's, gone once it made it)
            fail(f"nft table {body.get('name')!r}: flags other than dormant (owner: a process's own table)")
        devs = body.get("dev", [])
        for dev in [devs] if type(devs) is str else devs if type(devs) is list else [None]:
            if type(dev) is not str or dev not in links | {"lo"}:
                fail(f"nft chain {body.get('name')!r}: device {str(dev)[:20]!r} is not one restore makes in the namespace")
        _keys({k: v for k, v in body.items() if k in _NESTED}, 0,
              lambda m: fail(f"nft {kind} {body.get('name', body.get('chain'))!r}: {m}"), budget)
        for k, v in body.items():
            if k not in _NESTED and k != "dev" and type(v) not in (str, int, bool):
                fail(f"nft {kind}: {k} must be a string or number")
            if type(v) is str and (len(v) > MAX_STR or not _TEXT.match(v)):
                fail(f"nft {kind}: {k} must be printable text of at most {MAX_STR} characters")
    _check_addrs(objs, fail)


def _addr_typed(expr):
    """Whether expression `expr` (a match's left side, a map's key) gives an IP address: a bool, or
    one a part for a concatenation."""
    if type(expr) is not dict or len(expr) != 1:
        return False
    (k, v), = expr.items()
    if k == "concat" and type(v) is list:
        return [_addr_typed(x) is True for x in v]
    if k in ("&", "|", "^") and type(v) is list and v:
        return _addr_typed(v[0])
    if type(v) is not dict:
        return False
    if k == "payload":
        return (v.get("protocol"), v.get("field")) in _ADDR_FIELDS
    if k == "ct":
        return str(v.get("key")).split(" ")[-1] in ("saddr", "daddr")
    return k == "rt" and v.get("key") == "nexthop"


def _type_typed(t):
    """Whether a named set's or map's `type` (or a map's data type) is an IP address's: a bool, or a list."""
    return [x in _ADDR_TYPES for x in t] if type(t) is list else t in _ADDR_TYPES


def _type_db(t):
    """The host database nft looks a name up in for a named set's or map's `type` (or a map's data
    type): `_NUMBER_TYPES`', None, or a list (one a part of a concatenation)."""
    one = lambda x: _NUMBER_TYPES.get(x) if type(x) is str else None   # noqa: E731
    return [one(x) for x in t] if type(t) is list else one(t)


def _numeric(v: str) -> bool:
    """Whether string `v` is an IPv4/IPv6 literal, prefix (a/len) or range (a-b), or a set's reference (@name):
    what nft parses without the host's name service."""
    if v.startswith("@"):
        return bool(_NAME.match(v[1:]))
    try:
        for part in v.split("-", 1):
            ipaddress.ip_network(part, strict=False)
    except ValueError:
        return False
    return True


def _addr_check(fail):
    """The check of a string where an address goes: `_numeric`, else `fail`: nft resolves any other
    (a host name: localhost) through this host's /etc/hosts, nsswitch, a resolver."""
    def check(v: str, _typ) -> None:
        if not _numeric(v):
            fail(f"address {v[:40]!r} is not numeric (an IPv4/IPv6 address, prefix or range): nft would resolve it "
                 "through this host's name service")
    return check


def _number_check(fail):
    """The check of a string where a database (`_looked_up`'s, the walk's typ there) says nft would
    look a name up: a set's reference (@name) only; dump writes numbers there (`nft -j list
    ruleset`), a name would ask this host's databases (LDAP, sssd)."""
    def check(v: str, db) -> None:
        # (a bare string where a concatenation goes: nft refuses its type before it parses a name)
        if type(db) is not list and not v.startswith("@") and not (db == _PROTOCOLS and v in _KNOWN_PROTOCOLS):
            fail(f"{v[:40]!r} is not a number: nft would look it up in this host's {db}")
    return check


def _value_strings(v, typ, check, keyed=_addr_typed) -> None:
    """`check` every string of value `v` where `typ` (a bool, or one a part for a concatenation)
    says one is checked: through lists, concatenations, prefixes, elements, sets, ranges, bitwise
    operations and anonymous maps (their keys where `keyed` says so of the map's key expression)."""
    if not any(typ) if type(typ) is list else not typ:
        return
    if type(v) is str:
        check(v, typ)
    elif type(v) is list:
        for x in v:
            _value_strings(x, typ, check, keyed)
    elif type(v) is dict and len(v) == 1:
        (k, x), = v.items()
        if k == "concat" and type(x) is list:
            one = next((t for t in typ if t), False) if type(typ) is list else typ
            for part, t in zip(x, typ if type(typ) is list and len(typ) == len(x) else [one] * len(x)):
                _value_strings(part, t, check, keyed)
        elif k in ("prefix", "elem") and type(x) is dict:
            _value_strings(x.get("addr" if k == "prefix" else "val"), typ, check, keyed)
        elif k in ("set", "range", "&", "|", "^"):
            _value_strings(x, typ, check, keyed)
        elif k == "map" and type(x) is dict:
            _map_entries(x.get("data"), keyed(x.get("key")), typ, check, keyed)
        # (any other expression, payload, meta, numgen..., gives its value as the packet passes)


def _map_entries(entries, key, data, check, keyed=_addr_typed) -> None:
    """A map's elements ([key, data] each; `key`, `data`: `_value_strings`'s typ), `_value_strings`'s each."""
    if type(entries) is dict and set(entries) == {"set"}:
        entries = entries["set"]
    if type(entries) is not list:
        _value_strings(entries, data, check, keyed)
        return
    for e in entries:
        if type(e) is list and len(e) == 2:
            _value_strings(e[0], key, check, keyed)
            _value_strings(e[1], data, check, keyed)
        else:
            _value_strings(e, key, check, keyed)


def _checked(v, addr, db, fail) -> None:
    """Value `v` where `addr` (`_addr_typed`'s) says an address goes, `_addr_check`ed, and where
    `db` (`_looked_up`'s) says a port, user or group goes, `_number_check`ed."""
    _value_strings(v, addr, _addr_check(fail), _addr_typed)
    _value_strings(v, db, _number_check(fail), _looked_up)


def _map_checked(entries, key: tuple, data: tuple, fail) -> None:
    """A map's elements, `key` and `data` each (address typ, database typ): `_checked`'s."""
    _map_entries(entries, key[0], data[0], _addr_check(fail), _addr_typed)
    _map_entries(entries, key[1], data[1], _number_check(fail), _looked_up)


def _addr_walk(v, named: dict, where: tuple, fail) -> None:
    """The values of a rule's expressions `v` (a match's right side, a NAT's addr and port, a map's
    or a named set's elements), `_checked`'s each; `named`: {(family, table, name): (key, data)},
    each an (address typ, database typ)."""
    if type(v) is list:
        for x in v:
            _addr_walk(x, named, where, fail)
        return
    if type(v) is not dict:
        return
    for k, x in v.items():
        if type(x) is not dict:
            _addr_walk(x, named, where, fail)
            continue
        if k == "match":
            _checked(x.get("right"), _addr_typed(x.get("left")), _looked_up(x.get("left")), fail)
        elif k in ("dnat", "snat", "redirect", "masquerade"):
            _checked(x.get("addr"), k in ("dnat", "snat"), None, fail)
            _checked(x.get("port"), False, _SERVICES, fail)
        elif k in ("map", "vmap") and "key" in x:
            _map_checked(x.get("data"), (_addr_typed(x.get("key")), _looked_up(x.get("key"))), (False, None), fail)
        elif k in ("set", "map") and type(x.get(k)) is str:   # (a statement adding to a named one)
            key, data = named.get((*where, x[k].lstrip("@")), ((False, None), (False, None)))
            _checked(x.get("elem"), *key, fail)
            _checked(x.get("data"), *data, fail)
        _addr_walk(x, named, where, fail)


def _looked_up(expr) -> str | None:
    """The host database nft looks a name up in where match left side `expr` takes a number (a
    port: /etc/services; a socket's user or group: passwd, group through nsswitch), else None."""
    if type(expr) is not dict or len(expr) != 1:
        return None
    (k, v), = expr.items()
    if k == "concat" and type(v) is list:
        return [d if type(d) is str else None for d in map(_looked_up, v)]
    if k in ("&", "|", "^") and type(v) is list and v:
        return _looked_up(v[0])
    if type(v) is not dict:
        return None
    if k == "payload" and v.get("field") in ("sport", "dport") or \
            k == "ct" and str(v.get("key")).split(" ")[-1] in ("proto-src", "proto-dst"):
        return _SERVICES
    if k == "payload" and (v.get("protocol"), v.get("field")) in (("ip", "protocol"), ("ip6", "nexthdr")) or \
            k in ("meta", "ct") and v.get("key") in ("l4proto", "protocol") and (k, v["key"]) != ("meta", "protocol"):
        return _PROTOCOLS   # (a layer 4 protocol: getprotobyname)
    if k == "meta" and v.get("key") in ("skuid", "skgid"):
        return "passwd" if v["key"] == "skuid" else "group"
    return None


def _check_addrs(objs: list, fail) -> None:
    """No host name where nft expects an IP address, no name where it expects a port, user or group,
    in named sets and maps and in rules (dump lists them numeric: `nft -j list ruleset` resolves
    nothing without -N and writes numbers)."""
    named = {(b.get("family"), b.get("table"), b.get("name")): ((_type_typed(b.get("type")), _type_db(b.get("type"))),
                                                                (_type_typed(b.get("map")), _type_db(b.get("map"))))
             for o in objs for k, b in o.items() if k in ("set", "map")}
    for o in objs:
        (kind, body), = o.items()
        what = lambda m: fail(f"nft {kind} {body.get('name', body.get('chain'))!r}: {m}")   # noqa: E731
        if kind in ("set", "map"):
            key, data = named[(body.get("family"), body.get("table"), body.get("name"))]
            if kind == "map":
                _map_checked(body.get("elem"), key, data, what)
            else:
                _checked(body.get("elem"), *key, what)
        elif kind == "rule":
            _addr_walk(body.get("expr"), named, (body.get("family"), body.get("table")), what)


def _check_xt(text, tool: str, fail) -> None:
    """iptables-save text: `*TABLE`, `:CHAIN POLICY [n:n]`, `-A CHAIN OPTIONS...`, `COMMIT` lines only,
    the options, matches and targets of the allowlists, jumps to a chain of the table."""
    if type(text) is not str or len(text) > MAX_TEXT or text.count("\n") > MAX_LINES or not _TEXT.match(text.replace("\n", "")):
        fail(f"{tool}: must be printable text of at most {MAX_LINES} lines, {MAX_TEXT} bytes")
    chains: set[str] = set()
    table = None
    for line in text.splitlines():
        if line.startswith("*") and table is None and line[1:] in XT_TABLES:
            table, chains = line[1:], set()
        elif line == "COMMIT" and table:
            table = None
        elif line.startswith(":") and table and _CHAIN_LINE.match(line):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            _check_rule(_TOKEN.findall(line), line, chains, tool, fail)
        else:
            fail(f"{tool}: line {line[:60]!r} is not one of *TABLE, :CHAIN, -A CHAIN, COMMIT")
    if table:
        fail(f"{tool}: table {table} without COMMIT")


def _check_rule(words: list[str], line: str, chains: set[str], tool: str, fail) -> None:
    if _TOKEN.sub("", line).strip() or len(words) < 2 or words[1] not in chains:
        fail(f"{tool}: rule {line[:60]!r}: not a rule of a chain of its table")
    for prev, w in zip(words[1:], words[2:]):
        # (the -restore tools unquote a word: a quoted one is a comment's or a log prefix's text only)
        if w.startswith('"') and (prev not in ("--comment", "--log-prefix") or w[1:2] == "-"):
            fail(f"{tool}: a quoted word {w[:30]!r} other than a comment or log prefix")
        if w.startswith("-") and w not in _XT_OPTS:
            fail(f"{tool}: option {w[:30]!r} is not one restore makes")
        if prev == "-m" and w not in _XT_MATCHES:
            fail(f"{tool}: match {w[:30]!r} is not one restore makes")
        if prev in ("-j", "-g") and w not in _XT_TARGETS | chains:
            fail(f"{tool}: target {w[:30]!r} is neither one restore makes nor a chain of the table")
        if len(w) > MAX_STR:
            fail(f"{tool}: a word of more than {MAX_STR} characters")
        if prev in _XT_NUMBER_OPTS and not _XT_NUMBER.match(w) and not (prev in ("-p", "--ctproto")
                                                                         and w in _KNOWN_PROTOCOLS):
            fail(f"{tool}: {prev} {w[:40]!r} is not a number: the -restore tools would look it up in this "
                 f"host's {_XT_NUMBER_OPTS[prev]}")
        if prev in _XT_NAT_TO and not _xt_nat_to(w):
            fail(f"{tool}: {prev} {w[:40]!r} is not numeric ([ADDR[-ADDR]][:PORT[-PORT]]): the -restore tools "
                 "would look a port's name up in this host's /etc/services")
        if prev in _XT_ADDR_OPTS and (w.startswith("@") or not _numeric(w)):
            # (the -restore tools resolve a host name there through this host's name service)
            fail(f"{tool}: {prev} address {w[:40]!r} is not numeric (an IPv4/IPv6 address or prefix)")


def _xt_nat_to(w: str) -> bool:
    """Whether the value of a NAT target's --to-destination or --to-source is numeric: [ADDR[-ADDR]]
    (`_numeric`'s, IPv6 ones in brackets when ports follow), then [:PORT[-PORT[/PORT]]] in digits."""
    if w.startswith("["):
        addrs, _, ports = w.rpartition("]:") if "]:" in w else (w, "", "")
        addrs = addrs.replace("[", "").replace("]", "")
    elif w.count(":") > 1:
        addrs, ports = w, ""
    else:
        addrs, _, ports = w.partition(":")
    span, _, base = ports.partition("/")
    digits = [x for x in span.split("-", 1) + ([base] if base else []) if ports]
    return (not addrs or not addrs.startswith("@") and _numeric(addrs)) and \
        all(x.isdigit() and len(x) <= 5 for x in digits)


def check_one(kept, what: str, links: set[str], fail) -> None:
    """One namespace's ruleset: {"nft": [...], "iptables": TEXT, "ip6tables": TEXT}, each bounded."""
    if type(kept) is not dict or not set(kept) <= {"nft", "iptables", "ip6tables"}:
        fail(f"{what}: must be an object of nft, iptables, ip6tables")
    if "nft" in kept:
        _check_nft(kept["nft"], links, lambda m: fail(f"{what}: {m}"))
    for fam, tool in (("ip", "iptables"), ("ip6", "ip6tables")):
        if tool in kept:
            _check_xt(kept[tool], tool, lambda m: fail(f"{what}: {m}"))
            # (one table made twice: the text's -restore would replace nft's)
            both = {(fam, line[1:]) for line in kept[tool].splitlines() if line.startswith("*")} & \
                {_table_of(o) for o in kept.get("nft") or ()}
            if both:
                fail(f"{what}: table {' '.join(sorted(both)[0])} both in nft's objects and {tool}'s text")


def check(netfilter, made: set[str], netdevs: dict, fail) -> None:
    """The validator's rule for manifest "netfilter": only namespaces restore makes (`made`), each
    ruleset `check_one`'s (a netdev chain's device one of `netdevs`' links of that namespace, or lo)."""
    if type(netfilter) is not dict:
        fail("netfilter: must be an object {net ns: ruleset}")
    for nsid, kept in netfilter.items():
        if nsid not in made:
            fail(f"netfilter for {str(nsid)[:40]!r}: not a network namespace restore makes")
        links = {lk.get("name") for lk in ((netdevs or {}).get(nsid) or {}).get("links") or () if type(lk) is dict}
        check_one(kept, f"netfilter {nsid}", links, fail)
