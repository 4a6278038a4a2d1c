"""engine/rx.py: the engine's regular expressions from their kept _sre code (engine/rxtable.py),
without the re package (enum and re's compiler: ~21 M instructions of every verb's imports)."""

from __future__ import annotations

import re

import pytest

from engine import rx, rxtable


def test_the_table_holds_every_pattern_the_engine_compiles():
    """Every (pattern, flags) an engine module compiles as it is imported is in the table, and the
    table holds no other: a pattern changed without `python3 -m engine.rx > engine/rxtable.py`
    fails here (it would be compiled by re, which loads the package again)."""
    assert sorted(set(rx.engine_patterns())) == sorted(rxtable.CODE)


def test_each_kept_pattern_is_the_one_re_compiles():
    """Pattern objects compare equal when their pattern, flags and code are: the table's give the
    same matches as re.compile's, on this interpreter (whose _sre speaks the table's code)."""
    if not rx._CURRENT:
        import _sre
        pytest.skip(f"this interpreter's _sre code (MAGIC {_sre.MAGIC}) is not the table's ({rxtable.MAGIC}): "
                    "re.compile serves every pattern here")
    for pattern, flags in rxtable.CODE:
        assert rx.compile(pattern, flags) == re.compile(pattern, flags), pattern
        assert rx.compile(pattern, flags).groupindex == re.compile(pattern, flags).groupindex, pattern


def test_a_pattern_not_in_the_table_is_re_compiles():
    """One the table lacks (or any, on an interpreter whose _sre code differs) is re.compile's."""
    assert ("^x(?P<n>[0-9]+)y\\Z", rx.M) not in rxtable.CODE
    p = rx.compile("^x(?P<n>[0-9]+)y\\Z", rx.M)
    assert p == re.compile("^x(?P<n>[0-9]+)y\\Z", re.M) and p.match("x12y")["n"] == "12"


def test_the_flags_are_re_s():
    assert (rx.I, rx.L, rx.M, rx.S, rx.U, rx.X, rx.A) == (re.I, re.L, re.M, re.S, re.U, re.X, re.A)
