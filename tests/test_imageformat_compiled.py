"""The compiled record checks of engine/imageformat.py say exactly what the table says.

The validator turns each record table into straight-line code (fast enough for 10,000 mounts
at a few percent of a restore, issue 12), after the first records of each table, which a loop
over the table checks (a small image costs no compiling). These tests hold both to the table: every
mutation of a valid record is accepted or refused the same way a plain field-by-field reading
of the table decides, and a refusal names the field, nested ones with their path.
No mounts, no processes: pure data.
"""
from __future__ import annotations

import copy
import random

import pytest

from engine import imageformat as f
from engine.image import ImageError


def _superblock() -> dict:
    return {"fstype": "tmpfs", "source": "t", "super_opts": ["rw", "size=1024k"], "dev": "0:42",
            "external": False, "pidns": None,
            "archives": [{"file": "files-0.tar", "member": "sb-1", "root": "/"},
                         {"file": "files-1.tar", "member": "sb-1", "root": "/a", "only": "f"}],
            "empty_root": {"root": "/", "mode": 0o1777, "uid": 0, "gid": 0}}


def _mount() -> dict:
    return {"id": 7, "parent": 1, "mountpoint": "/mnt/x", "root": "/", "sb": "sb-1",
            "mount_opts": ["rw", "relatime"], "shared": 3, "master": None, "propagate_from": None,
            "unbindable": False, "external": None, "uid": 12345, "dir": True, "fstype": "tmpfs",
            "source": "t", "super_opts": ["rw"], "dev": "0:42"}


def _reference(rec: f.Record, obj) -> bool:
    """The table read field by field, no compiled code: True when `obj` passes."""
    if type(obj) is not dict or set(obj) - set(rec.fields) or rec.required - set(obj):
        return False
    for key, field in rec.fields.items():
        if key not in obj:
            continue
        v = obj[key]
        if type(v) not in field.types:
            return False
        if field.rule is None:
            continue
        inline = getattr(field.rule, "inline", ("",))
        if inline[0] in ("record", "records") and v is not None:
            items = [v] if inline[0] == "record" else v
            if inline[0] == "records" and len(v) > inline[2]:
                return False
            if not all(_reference(inline[1], x) for x in items):
                return False
            continue
        try:
            if field.rule(v):
                return False
        except f.Bad:
            return False
    return True


def _passes(rec: f.Record, obj) -> bool:
    try:
        f.check_record(rec, obj, "the record")
    except ImageError:
        return False
    return True


_ODD_VALUES = [None, 0, -1, 1 << 70, True, "", "/", "/a/../b", "x\0y", "sb-1", "rw", [], ["rw"], [1], {},
               {"root": "/"}, 3.5, "files-0.tar", "0:1", "a" * 5000]


def _mutations(base: dict, rng: random.Random, count: int):
    """Random one- and two-step changes: a value swapped for an odd one, a key dropped or added,
    a nested record or list item changed the same way."""
    keys = sorted(base)
    for _ in range(count):
        obj = copy.deepcopy(base)
        for _ in range(rng.choice((1, 1, 2))):
            key = rng.choice(keys)
            action = rng.randrange(5)
            if action == 0:
                obj.pop(key, None)
            elif action == 1:
                obj[rng.choice(("colour", "exec", key + "_"))] = rng.choice(_ODD_VALUES)
            elif action == 2 and isinstance(obj.get(key), dict) and obj[key]:
                obj[key][rng.choice(sorted(obj[key]))] = rng.choice(_ODD_VALUES)
            elif action == 3 and isinstance(obj.get(key), list) and obj[key]:
                i = rng.randrange(len(obj[key]))
                if isinstance(obj[key][i], dict):
                    obj[key][i][rng.choice(sorted(obj[key][i]) + ["colour"])] = rng.choice(_ODD_VALUES)
                else:
                    obj[key][i] = rng.choice(_ODD_VALUES)
            else:
                obj[key] = rng.choice(_ODD_VALUES)
        yield obj


@pytest.fixture(params=["compiled", "shapes", "table", "interpreted"])
def check_path(request, monkeypatch):
    """Each table checked by its compiled code from the first record (as it runs: a check made for
    each of the first 64 key lists, the whole table's check for others; "shapes": one for every key
    list; "table": the whole table's only), or only by the loop that checks a small image's first
    records (engine.imageformat._interpret)."""
    monkeypatch.setattr(f, "_compiled", {})
    monkeypatch.setattr(f, "_interpreted", {})
    monkeypatch.setattr(f, "_COMPILE_AFTER", 1 << 30 if request.param == "interpreted" else 0)
    monkeypatch.setattr(f, "_MAX_SHAPES", {"shapes": 1 << 30, "table": 0}.get(request.param, f._MAX_SHAPES))
    yield request.param
    assert bool(f._compiled) == (request.param != "interpreted"), "the check must have taken that path"


@pytest.mark.parametrize("rec,make", [(f.SUPERBLOCK, _superblock), (f.MOUNT, _mount)],
                         ids=["superblock", "mount"])
def test_compiled_check_decides_as_the_table(rec, make, check_path):
    base = make()
    assert _reference(rec, base) and _passes(rec, base), "the valid record must pass both"
    rng = random.Random(12)
    refused = 0
    for obj in _mutations(base, rng, 1500):
        want = _reference(rec, obj)
        assert _passes(rec, obj) == want, f"compiled check and table disagree on {obj!r}"
        refused += not want
    assert refused > 500, "the mutations must mostly produce records the table refuses"


@pytest.mark.parametrize("change,named", [
    (lambda sb: sb["archives"][1].update(member="../x"), "'archives[1].member'"),
    (lambda sb: sb["archives"][0].pop("root"), "'archives[0].root' is missing"),
    (lambda sb: sb["archives"].append("files-2.tar"), "'archives[2]' must be an object"),
    (lambda sb: sb["empty_root"].update(mode=0o17777), "'empty_root.mode' out of range"),
    (lambda sb: sb["empty_root"].update(colour="red"), "unknown field 'colour'"),
    (lambda sb: sb.pop("super_opts"), "'super_opts' is missing"),
    (lambda sb: sb.update(colour="red"), "unknown field 'colour' in superblock"),
])
def test_refusal_names_the_field_and_its_path(change, named, check_path):
    sb = _superblock()
    change(sb)
    with pytest.raises(ImageError) as e:
        f.check_record(f.SUPERBLOCK, sb, "superblock sb-1")
    msg = str(e.value)
    assert msg.startswith("bad image: superblock sb-1: ") and named in msg, msg
    assert "\n" not in msg
