"""engine.records: the record classes the engine uses instead of dataclasses (issue 18)."""

from __future__ import annotations

import pickle

import pytest

from engine.records import field, fields, record, replace


@record(frozen=True)
class Base:
    name: str
    flag: bool = False
    items: frozenset = field(default_factory=frozenset)


@record(frozen=True)
class Child(Base):
    flag: bool = True          # a redeclared field keeps its place, with a new default
    extra: int = 3


@record(frozen=True, slots=True)
class Slotted:
    a: int
    b: tuple = ()
    note: str | None = field(default=None, compare=False)


@record
class Mutable:
    a: int
    seen: list = field(default_factory=list, repr=False)


def test_fields_defaults_and_inheritance():
    assert [f.name for f in fields(Child)] == ["name", "flag", "items", "extra"]
    c = Child("x")
    assert (c.name, c.flag, c.items, c.extra) == ("x", True, frozenset(), 3)
    assert Base("x").flag is False
    assert repr(Child("x", extra=4)) == "Child(name='x', flag=True, items=frozenset(), extra=4)"


def test_eq_hash_and_frozen():
    assert Base("x") == Base("x") and hash(Base("x")) == hash(Base("x"))
    assert Base("x") != Child("x", False)           # another class is never equal
    assert Slotted(1, note="a") == Slotted(1, note="b")   # compare=False
    with pytest.raises(AttributeError):
        Base("x").name = "y"
    with pytest.raises(TypeError):
        hash(Mutable(1))
    m = Mutable(1)
    m.a = 2
    assert m == Mutable(2) and m.seen is not Mutable(2).seen and "seen" not in repr(m)


def test_slots_replace_and_pickle():
    s = Slotted(1, (2,), "n")
    assert not hasattr(s, "__dict__") and Slotted.__slots__ == ("a", "b", "note")
    r = replace(s, b=(3,))
    assert (r.a, r.b, r.note) == (1, (3,), "n")
    with pytest.raises(TypeError):
        replace(s, nope=1)
    for obj in (s, Child("y", items=frozenset({1})), Mutable(5, [1])):
        back = pickle.loads(pickle.dumps(obj))
        assert back == obj and type(back) is type(obj)


def test_field_without_default_after_default_is_refused():
    with pytest.raises(TypeError):
        @record
        class Bad:
            a: int = 1
            b: int



@record(frozen=True)
class One:
    a: int
    note: str = field(default="", compare=False)


@record(frozen=True)
class Nothing:
    pass


def test_one_and_no_compared_field():
    assert One(1, "x") == One(1, "y") and hash(One(1)) == hash(One(1, "z")) and One(1) != One(2)
    assert pickle.loads(pickle.dumps(One(1, "x"))).note == "x"
    assert Nothing() == Nothing() and repr(Nothing()) == "Nothing()"
