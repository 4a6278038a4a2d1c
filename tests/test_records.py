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


def _made(cls, args, kwargs):
    """What cls(*args, **kwargs) gives: the record's fields, or the TypeError's text."""
    try:
        obj = cls(*args, **kwargs)
    except TypeError as e:
        return ("TypeError", str(e).split("__init__() ", 1)[-1])
    return ("ok", {f.name: getattr(obj, f.name) for f in fields(cls)})


CALLS = [((), {}), (("x",), {}), (("x", True), {}), (("x",), {"items": frozenset({1})}),
         (("x", True, frozenset(), 5), {}), (("x", True, frozenset(), 5, 6), {}), (("x",), {"nope": 1}),
         (("x",), {"name": "y"}), ((), {"name": "y", "extra": 0}), ((), {"flag": False}),
         ((), {"extra": 1, "items": frozenset({2}), "flag": False, "name": "z"}),   # (every field by keyword)
         ((), {"name": "z", "flag": False, "items": frozenset(), "extra": 1, "nope": 2})]


def _fresh(name: str) -> type:
    """A new class with Child's fields (a record is made of it once: each test its own)."""
    return type(name, (), {"__annotations__": {"name": "str", "flag": "bool", "items": "frozenset", "extra": "int"},
                           "flag": True, "items": field(default_factory=frozenset), "extra": 3})


def test_the_first_instances_are_made_as_the_compiled_init_makes_them(monkeypatch):
    """A class's first instances come from a loop over its fields (no compile), the later ones and
    any refused call from its compiled __init__: the same fields, defaults, fresh factory values."""
    import engine.records as records
    for frozen in (True, False):
        monkeypatch.setattr(records, "_COMPILE_AFTER", 1000)
        loop = record(_fresh("L"), frozen=frozen)
        well = [CALLS[i] for i in (1, 2, 3, 4, 8, 10)]
        assert [_made(loop, a, k)[0] for a, k in well] == ["ok"] * 6
        assert loop.__init__.uses == 6, "the loop made the well-formed ones"
        generic = [_made(loop, a, k) for a, k in CALLS]   # (a refusal: compiled from there on, its message)
        monkeypatch.setattr(records, "_COMPILE_AFTER", 0)
        comp = record(_fresh("C"), frozen=frozen)
        compiled = [_made(comp, a, k) for a, k in CALLS]
        assert comp.__init__.__code__.co_filename.startswith("<record "), "compiled at the first"
        assert generic == compiled
        assert sum(r[0] == "ok" for r in generic) == 6 and len({r[1] for r in generic if r[0] != "ok"}) == 4
        a, b = loop("x"), loop("x")
        assert a == b and a.items is not None and a.extra == 3
        if frozen:
            with pytest.raises(AttributeError):
                a.name = "y"


def test_a_class_can_keep_the_generic_init_longer():
    """compile_after: a class's own count; a refused call still gets the compiled message."""
    many = record(_fresh("M"), frozen=True, compile_after=500)
    made = [many(str(i)) for i in range(100)]
    assert many.__init__.uses == 100 and not many.__init__.__code__.co_filename.startswith("<record ")
    assert made[7] == many("7") and made[7].extra == 3 and made[7].items == frozenset()
    with pytest.raises(TypeError):
        many("x", True, frozenset(), 3, 4)
    assert many.__init__.__code__.co_filename.startswith("<record ")


def test_a_class_may_keep_its_own_init():
    """record(init=False): the class body's __init__ stays (imageformat's F and Record, made 236 and
    31 times at import, set their fields themselves), and makes what the generated one makes of the
    same calls, refusals included; the other methods are the record's. Without an __init__ of its
    own such a class is refused."""
    from engine import imageformat
    rule = imageformat.rng(0, 1)
    for klass, defaults, calls in (
            (imageformat.F, {"required": True, "rule": None},
             [((), {}), ((int,), {}), ((int, False), {}), ((int,), {"rule": rule}), ((int, True, rule), {}),
              ((), {"types": (str,), "required": False}), ((int, True, rule, 4), {}), ((int,), {"nope": 1}),
              ((int,), {"types": str})]),
            (imageformat.Record, {},
             [((), {}), (("x",), {}), (("x", {}), {}), ((), {"name": "x", "fields": {"a": 1}}), (("x", {}, 3), {}),
              (("x",), {"fields": {}, "other": 1})])):
        names = [f.name for f in fields(klass)]
        assert list(klass.__init__.__code__.co_varnames[1:len(names) + 1]) == names, klass
        made = record(type("G", (), {"__annotations__": dict.fromkeys(names, "object"), **defaults}), frozen=True)
        assert [_made(klass, a, k) for a, k in calls] == [_made(made, a, k) for a, k in calls], klass
        a, b = klass(*[str] * len(names)), klass(*[str] * len(names))
        assert a == b and hash(a) == hash(b) and pickle.loads(pickle.dumps(a)) == a
        with pytest.raises(AttributeError):
            a.x = 1
    with pytest.raises(TypeError, match="init=False"):
        record(_fresh("N"), init=False)


Pair = __import__("engine.records", fromlist=["named_tuple"]).named_tuple("Pair", "left right", __name__, "Two values.")


def test_a_named_tuple_is_what_namedtuple_makes_for_the_engine_uses():
    """records.named_tuple (engine/ctty.py's and engine/sessions.py's Plan): built from its values,
    a tuple (index, slice, unpack, equality and hash), attributes by name, read-only, _fields,
    _replace, namedtuple's repr, pickled by value as its own class; a wrong count or field refused."""
    import collections
    ref = collections.namedtuple("Pair", "left right")
    p, r = Pair([1], {2: 3}), ref([1], {2: 3})
    assert p == r and p == ([1], {2: 3}) and p[:1] == r[:1] and list(p) == list(r) and repr(p) == repr(r)
    assert (p.left, p.right) == (r.left, r.right) and Pair._fields == ref._fields
    assert hash(Pair(1, 2)) == hash(ref(1, 2))
    q = p._replace(right=None)
    assert type(q) is Pair and q == r._replace(right=None) and p.right == {2: 3}
    back = pickle.loads(pickle.dumps(p))
    assert type(back) is Pair and back == p
    with pytest.raises(AttributeError):
        p.left = 2
    with pytest.raises(TypeError):
        Pair(1)
    with pytest.raises(ValueError):
        p._replace(nope=1)
