"""engine/restore.py `bind_order`: the order restore makes mount namespaces in when a mount binds one
(`unshare --mount=PATH`). The kernel binds a mount namespace only in an older one (mnt_ns_loop:
ELOOP otherwise); without unique mount ids (before Linux 6.8) the roots' legacy ids may put the
bound namespace first: basic/mntns_bound failed so in a 6.1 VM (`move_mount: Too many levels of
symbolic links`) and on the host with MNTCR_STRATEGY=ids=mountinfo."""

from __future__ import annotations

from engine.restore import bind_order


def _doc(binds: dict[str, list[str]]) -> dict:
    return {"mntns": {ns: {"mounts": [{"id": i, "bound_ns": b} for i, b in enumerate(bs)]}
                      for ns, bs in binds.items()}}


def test_a_bound_namespace_comes_after_its_binder():
    doc = _doc({"mnt-0": ["mnt-1"], "mnt-1": []})
    assert bind_order(doc, ["mnt-1", "mnt-0"]) == ["mnt-0", "mnt-1"]


def test_a_chain_of_binds_is_ordered_binder_first():
    # (who=nested: the bound namespace binds a third one of its own)
    doc = _doc({"mnt-0": ["mnt-1"], "mnt-1": ["mnt-2"], "mnt-2": []})
    assert bind_order(doc, ["mnt-2", "mnt-1", "mnt-0"]) == ["mnt-0", "mnt-1", "mnt-2"]


def test_the_order_is_kept_where_no_bind_asks_otherwise():
    doc = _doc({"mnt-0": ["net-0", "mnt-2"], "mnt-1": [], "mnt-2": [], "mnt-3": []})
    assert bind_order(doc, ["mnt-3", "mnt-1", "mnt-0", "mnt-2"]) == ["mnt-3", "mnt-1", "mnt-0", "mnt-2"]
    assert bind_order(doc, ["mnt-2", "mnt-3", "mnt-0", "mnt-1"]) == ["mnt-3", "mnt-0", "mnt-2", "mnt-1"]


def test_a_cycle_keeps_the_given_order():
    doc = _doc({"mnt-0": ["mnt-1"], "mnt-1": ["mnt-0"]})
    assert bind_order(doc, ["mnt-1", "mnt-0"]) == ["mnt-1", "mnt-0"]
