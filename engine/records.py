"""Typed record classes without `dataclasses` (issue 18: a small dump or restore is mostly start-up).

`import dataclasses` loads inspect, ast, dis, tokenize and linecache (about 17 ms of CPU on this
machine, more than the whole engine's own code), and generating each class costs it ~0.5-1 ms
more. The engine's records need only a small part of it: fields declared by annotations with
optional defaults, inheritance of fields, an `__init__` taking them in order, `__repr__`,
`__eq__`, `__hash__` for frozen records, `__slots__` on request, `fields()` and `replace()`.
`record` generates exactly that, one short compiled function per method.

    @record(frozen=True)
    class Point:
        x: int
        y: int = 0
        tags: list = field(default_factory=list, compare=False)

Semantics follow the standard dataclass where the engine relies on them: fields in declaration
order, a subclass that redeclares a field keeps its place and changes its default, `eq`
compares the compared fields as a tuple and only between instances of the same class, a frozen
record refuses attribute assignment (AttributeError) and hashes its compared fields, a mutable
one is unhashable. Records pickle (they cross process boundaries through channel): by value,
through `__reduce__`, so frozen and slotted ones load too.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import attrgetter, itemgetter

_MISSING = object()
_NAME, _COMPARE, _REPR = attrgetter("name"), attrgetter("compare"), attrgetter("repr")   # (of a Field)


class FrozenError(AttributeError):
    """An assignment to a field of a frozen record."""


class Field:
    """One declared field: name, default (or default_factory), whether eq/hash and repr use it."""

    __slots__ = ("name", "default", "default_factory", "compare", "repr")

    def __init__(self, default=_MISSING, default_factory=_MISSING, compare: bool = True, repr: bool = True):
        self.name = ""
        self.default, self.default_factory = default, default_factory
        self.compare, self.repr = compare, repr

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def field(*, default=_MISSING, default_factory=_MISSING, compare: bool = True, repr: bool = True) -> Field:
    """A field with a default factory (a fresh list/dict per instance) or left out of eq or repr."""
    return Field(default, default_factory, compare, repr)


def fields(obj_or_cls) -> tuple[Field, ...]:
    """The record's fields in order (of an instance or of the class)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return cls.__record_fields__


def replace(obj, **changes):
    """A new record like `obj` with `changes` (field name -> value)."""
    cls = type(obj)
    for k in changes:
        if k not in cls.__record_names__:
            raise TypeError(f"{cls.__name__} has no field {k!r}")
    return cls(*[changes[n] if n in changes else getattr(obj, n) for n in cls.__record_names__])


def _own_fields(cls) -> dict[str, Field]:
    out = {}
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name = name
        out[name] = f
    return out


def _all_fields(cls) -> list[Field]:
    merged: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__record_fields__", ()):
            merged[f.name] = f
    merged.update(_own_fields(cls))   # a redeclared field keeps its place (dict order), new default
    seen_default = False
    for f in merged.values():
        has = f.default is not _MISSING or f.default_factory is not _MISSING
        if seen_default and not has:
            raise TypeError(f"{cls.__name__}: field {f.name!r} without a default follows one with a default")
        seen_default = seen_default or has
    return list(merged.values())


def _getter(names: tuple[str, ...]):
    """obj -> tuple of those attributes (attrgetter, in C: eq and hash of 90,000 mounts stay cheap)."""
    if not names:
        return lambda obj: ()
    get = attrgetter(*names)
    return get if len(names) > 1 else (lambda obj: (get(obj),))


def _init_source(flds: list[Field], frozen: bool) -> tuple[str, dict]:
    """The text of the record's __init__ (the fields as parameters, defaults bound) and its globals."""
    env = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, body = [], []
    for i, f in enumerate(flds):
        if f.default_factory is not _MISSING:
            env[f"_f{i}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            value = f"_f{i}() if {f.name} is _MISSING else {f.name}"
        elif f.default is not _MISSING:
            env[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
            value = f.name
        else:
            params.append(f.name)
            value = f.name
        body.append(f"    _set(self, {f.name!r}, {value})" if frozen else f"    self.{f.name} = {value}")
    return f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass"), env


_COMPILE_AFTER = 16   # instances of a class made by the generic __init__ before its own is compiled


def _generic_init(flds: list[Field], frozen: bool):
    """An __init__ for any field list, by a loop (no compile), for well-formed calls: it returns
    False, having set nothing, on a call the compiled one refuses (which then says why, in
    Python's words). A small dump or restore makes a few instances of each of its record classes,
    where a compile per class (~0.3 ms, ~9 classes) cost more than all their instances."""
    names = tuple(map(_NAME, flds))
    every, by_name = dict.fromkeys(names).keys(), _item_getter(names)   # (values in field order, in C)
    plain = {f.name: f.default for f in flds if f.default is not _MISSING and f.default_factory is _MISSING}
    factories = tuple((f.name, f.default_factory) for f in flds if f.default_factory is not _MISSING)
    put = object.__setattr__ if frozen else setattr

    def init(self, args, kwargs) -> bool:
        if len(args) > len(names):
            return False
        if not args and kwargs.keys() == every:   # (mountinfo's Mount)
            vals = by_name(kwargs)
        elif len(args) == len(names) and not kwargs:
            vals = args
        else:   # by dict operations (in C) rather than a loop over the fields
            given = dict(zip(names, args))
            if kwargs:
                if not kwargs.keys() <= every or not given.keys().isdisjoint(kwargs):
                    return False   # (an unknown keyword, or one for a field given by position)
                given.update(kwargs)
            if len(given) < len(names):
                given = {**plain, **given}
                for name, factory in factories:   # (a fresh value each, in field order)
                    if name not in given:
                        given[name] = factory()
                if len(given) < len(names):
                    return False   # (a field without a default not given)
            vals = by_name(given)
        any(map(put, repeat(self), names, vals))   # (each put answers None: every field set, in C)
        return True
    return init


def _item_getter(names: tuple[str, ...]):
    """dict -> tuple of those keys' values (itemgetter, in C)."""
    if not names:
        return lambda d: ()
    get = itemgetter(*names)
    return get if len(names) > 1 else (lambda d: (get(d),))


def _lazy_init(qualname: str, flds: list[Field], frozen: bool, after: int | None = None):
    """An __init__ that makes the first _COMPILE_AFTER instances by the generic loop, then compiles
    the real one and puts it in its own place: a compile is ~0.3 ms, and most record classes a
    command imports (fs types, fd kinds, plans) get no or a few instances in a small dump or restore.
    `after`: the class's own count instead of _COMPILE_AFTER (read at each call: tests change it)."""
    made = []
    generic = _generic_init(flds, frozen)

    def __init__(self, *args, **kwargs):
        if not made:
            if __init__.uses < (_COMPILE_AFTER if after is None else after) and generic(self, args, kwargs):
                __init__.uses += 1
                return
            src, env = _init_source(flds, frozen)
            ns: dict = {}
            exec(compile(src, f"<record {qualname}>", "exec"), env, ns)   # noqa: S102 (our own text)
            made.append(ns["__init__"])
            for klass in type(self).__mro__:   # the class (or its slotted copy) that holds this stub
                if klass.__dict__.get("__init__") is __init__:
                    type.__setattr__(klass, "__init__", made[0])
        made[0](self, *args, **kwargs)
    __init__.uses = 0
    return __init__


def _methods(cls, flds: list[Field], frozen: bool, compile_after: int | None = None) -> dict:
    """__init__ is generated (one compile per class, on its first instance); the other methods are
    shared, reading the fields through attrgetters."""
    names = tuple(map(_NAME, flds))   # (map, compress: in C, for each record class made at import)
    out = {"__init__": _lazy_init(cls.__qualname__, flds, frozen, compile_after), "__repr__": _repr, "__eq__": _eq,
           "__reduce__": _reduce,
           "__record_fields__": tuple(flds), "__record_names__": names,
           "_record_all": staticmethod(_getter(names)),
           "_record_key": staticmethod(_getter(tuple(compress(names, map(_COMPARE, flds))))),
           "_record_shown": tuple(compress(names, map(_REPR, flds)))}
    if frozen:
        out["__hash__"] = _hash
        out["__setattr__"] = _frozen_setattr
        out["__delattr__"] = _frozen_delattr
    else:
        out["__hash__"] = None
    return out


def _repr(self) -> str:
    return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._record_shown)})"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return self._record_key(self) == self._record_key(other)


def _hash(self) -> int:
    return hash(self._record_key(self))


def _reduce(self):
    return (type(self), self._record_all(self))


def _frozen_setattr(self, name, value):
    raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_delattr(self, name):
    raise FrozenError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def record(cls=None, *, frozen: bool = False, slots: bool = False, compile_after: int | None = None,
           init: bool = True):
    """Class decorator: make `cls` a record of its annotated fields (see the module text).
    `compile_after`: instances made by the generic __init__ before its own is compiled (_lazy_init).
    `init=False` (as dataclasses has it): the class body's own __init__ stays, and sets the fields
    itself (object.__setattr__ for a frozen record): for a class of many instances made while the
    modules load (engine/imageformat.py's ~270 field entries), where the generic __init__ is ~100
    interpreter steps an instance and a compiled one costs a compile."""
    def wrap(cls):
        flds = _all_fields(cls)
        methods = _methods(cls, flds, frozen, compile_after)
        if not init:
            if "__init__" not in cls.__dict__:
                raise TypeError(f"{cls.__name__}: record(init=False) needs an __init__ of its own")
            del methods["__init__"]
        for f in flds:   # methods and properties of the class stay; the field defaults live in __init__
            if f.name in cls.__dict__ and isinstance(cls.__dict__[f.name], Field):
                delattr(cls, f.name)
        own = cls.__dict__
        for k, v in methods.items():   # a method the class body defines itself stays (as with dataclasses)
            if k not in own or k in ("__init__", "__record_fields__", "__record_names__") or k.startswith("_record_") \
                    or (k == "__hash__" and own[k] is None and "__eq__" not in own):
                setattr(cls, k, v)
        if not slots:
            return cls
        body = {k: v for k, v in cls.__dict__.items()
                if k not in ("__dict__", "__weakref__") and k not in methods["__record_names__"]}
        body["__slots__"] = tuple(f.name for f in _own_fields_after(cls, flds))
        return type(cls)(cls.__name__, cls.__bases__, body)
    return wrap if cls is None else wrap(cls)


def _own_fields_after(cls, flds: list[Field]) -> list[Field]:
    """The fields a slotted class must add slots for: those no base class already has."""
    inherited = set()
    for base in cls.__mro__[1:]:
        inherited.update(base.__dict__.get("__slots__", ()))
    return [f for f in flds if f.name not in inherited]


def named_tuple(name: str, names: str, module: str, doc: str) -> type:
    """A tuple class with named fields, as collections.namedtuple makes one for these uses: built
    from its values in order, indexed, unpacked and compared as a tuple, each field an attribute,
    `_fields`, `_replace(**changes)`, repr `Name(a=1, b=2)`, pickled by value; without namedtuple's
    compile of a `__new__` (~1,900 interpreter steps and ~0.4 M instructions a class at import).
    `module`: the defining module's __name__ (pickle finds the class there); `doc`: its docstring."""
    fields_ = tuple(names.split())

    def __new__(cls, *values):
        if len(values) != len(fields_):
            raise TypeError(f"{name}() takes {len(fields_)} values ({len(values)} given)")
        return tuple.__new__(cls, values)

    def _replace(self, **changes):
        unknown = changes.keys() - fields_
        if unknown:
            raise ValueError(f"{name} has no field {min(unknown)!r}")
        return tuple.__new__(type(self), [changes.get(f, v) for f, v in zip(fields_, self)])

    def __repr__(self) -> str:
        return f"{name}({', '.join(f'{f}={v!r}' for f, v in zip(fields_, self))})"

    def __getnewargs__(self) -> tuple:
        return tuple(self)

    body = {"__slots__": (), "__module__": module, "__qualname__": name, "__doc__": doc, "__new__": __new__, "_fields": fields_,
            "_replace": _replace, "__repr__": __repr__, "__getnewargs__": __getnewargs__,
            **{f: property(itemgetter(i)) for i, f in enumerate(fields_)}}
    return type(name, (tuple,), body)
