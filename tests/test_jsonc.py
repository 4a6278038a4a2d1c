"""engine/jsonc.py decodes as json.loads does: the same objects, the same errors."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from engine import jsonc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _both(text, **kw):
    def one(fn):
        try:
            return ("ok", repr(fn(text, **kw)))
        except Exception as e:  # noqa: BLE001 - compared, type and text
            return (type(e).__name__, str(e), getattr(e, "pos", None))
    return one(json.loads), one(jsonc.loads)


CASES = ['{"a": [1, 2.5, -3e2, true, false, null, "x\\u00e9\\n"]}', "  [] \n", "\t{}\r", "", "   ", "[1,]",
         '{"a": 1} x', '{"a": 1} {"b": 2}', "\ufeff{}", "NaN", "[Infinity, -Infinity]", '"\\ud800"',
         '"a\x01b"', "[1", '{"a" 1}', "1" * 5000, "01", "[1e400]", '{"a": {"b": {"c": []}}}', "tru",
         '{"a": 1, "a": 2}']


@pytest.mark.parametrize("text", CASES, ids=range(len(CASES)))
def test_same_as_json_loads(text):
    a, b = _both(text)
    assert a == b


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_hooks_as_json_loads():
    seen_a, seen_b = [], []
    text = '{"x": {"y": NaN}, "z": [ {"w": 1} ]}'
    assert _both(text, parse_constant=_no_constant) == _both(text, parse_constant=_no_constant)
    a, b = _both(text, parse_constant=_no_constant)
    assert a[0] == "ValueError" and a == b
    text = '{"x": {"y": 2}, "z": [ {"w": 1} ]}'
    assert json.loads(text, object_hook=lambda o: seen_a.append(o) or dict(o, hooked=1)) == \
        jsonc.loads(text, object_hook=lambda o: seen_b.append(o) or dict(o, hooked=1))
    assert seen_a == seen_b and len(seen_a) == 3


def test_not_str_refused():
    with pytest.raises(TypeError):
        jsonc.loads(b"{}")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json_values, st.sampled_from(["", " ", "\n\t", "x", ",", "]"]), st.integers(0, 40))
def test_documents_and_damaged_ones(value, tail, cut):
    text = json.dumps(value, indent=None if cut % 2 else 1) + tail
    for t in (text, text[:cut], text[cut:]):
        a, b = _both(t)
        assert a == b


def test_a_restore_loads_no_json_package():
    code = ("import sys; from engine import cli; "
            "rc = cli._main(['restore', '-D', '/nonexistent/mntcr-img']); "
            "print(rc, 'json' in sys.modules, 'json.decoder' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr


class _Odd:
    pass


@settings(max_examples=300, deadline=None)
@given(_json_values | st.dictionaries(st.integers() | st.booleans() | st.none() | st.floats(), st.integers(), max_size=4)
       | st.floats() | st.sampled_from([_Odd(), {"a": {1, 2}}, [b"x"], {(1, 2): 3}, {"k": [float("nan")]}]))
def test_dumps_as_json_dumps(value):
    def one(fn):
        try:
            return ("ok", fn(value))
        except Exception as e:  # noqa: BLE001 - compared, type and text
            return (type(e).__name__, str(e))
    assert one(lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"))) == one(jsonc.dumps)


def test_dumps_refuses_a_cycle_as_json_does():
    a = []
    a.append(a)
    with pytest.raises(ValueError, match="Circular reference detected"):
        jsonc.dumps(a)


_BAD = ['[1,', '{"a" 1}', '{"a": "x', '[1 2]', '{"a": 1,}', '"\\x"', '[tru]', '{1: 2}', '"a\x01"', '[1', ' NaN x']


@pytest.mark.parametrize("text", _BAD)
def test_errors_without_the_json_package_loaded(text):
    # (a fresh interpreter each: the C scanner finds json.decoder's error class only once it is loaded)
    code = ("import sys; from engine import jsonc\n"
            "try:\n"
            "    jsonc.loads(sys.argv[1]); print('ok')\n"
            "except ValueError as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-S", "-c", code, text], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True)
    try:
        json.loads(text)
        want = "ok"
    except ValueError as e:
        want = f"{type(e).__name__} {e}"
    assert out.stdout.strip() == want, out.stderr
