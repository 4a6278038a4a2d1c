"""json.loads and the manifest's json.dumps through the json package's own C parts (_json),
without importing the package.

`import json` loads json.decoder, json.scanner and json.encoder and compiles their regular
expressions: ~4.4 M instructions (~1 ms) of every restore and dump. `loads` is json.loads's decode
path (JSONDecoder.decode, raw_decode) over the same _json.make_scanner, with the same defaults,
results and errors (json.JSONDecodeError, made by importing the json package only when there is
an error to report); `dumps` is JSONEncoder.encode's one-shot path over _json.make_encoder for
json.dumps(obj, sort_keys=True, separators=(",", ":")). tests/test_jsonc.py compares both ways.
"""

from __future__ import annotations

from _json import encode_basestring_ascii, make_encoder, make_scanner

_WS = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    # What the C scanner reads of a json.JSONDecoder (its defaults: strict, float, int).
    __slots__ = ("strict", "object_hook", "object_pairs_hook", "parse_float", "parse_int", "parse_constant")

    def __init__(self, object_hook, parse_constant):
        self.strict = True
        self.object_hook = object_hook
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = parse_constant or _CONSTANTS.__getitem__


def _error(msg: str, s: str, pos: int) -> ValueError:
    from json import JSONDecodeError
    return JSONDecodeError(msg, s, pos)


def loads(s: str, parse_constant=None, object_hook=None):
    """json.loads(s, parse_constant=..., object_hook=...) of a str: the same object, or the same
    json.JSONDecodeError (a ValueError)."""
    if not isinstance(s, str):
        raise TypeError(f"the JSON object must be str, not {s.__class__.__name__}")
    if s.startswith("\ufeff"):
        raise _error("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
    context = _Context(object_hook, parse_constant)
    start = len(s) - len(s.lstrip(_WS))
    try:
        obj, end = make_scanner(context)(s, start)
    except StopIteration as err:
        raise _error("Expecting value", s, err.value) from None
    except SystemError:
        # The C scanner reports a syntax error inside the document by json.decoder.JSONDecodeError,
        # which it looks up in sys.modules, never imports: not loaded, it fails without an exception
        # (SystemError). Loaded now, the same scan raises the same error json.loads would have.
        import json.decoder  # noqa: F401
        make_scanner(context)(s, start)
        raise   # (unreachable: the scan failed once, and fails the same way again)
    if end != len(s):
        end = len(s) - len(s[end:].lstrip(_WS))
        if end != len(s):
            raise _error("Extra data", s, end)
    return obj


def _default(o):
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj) -> str:
    """json.dumps(obj, sort_keys=True, separators=(",", ":")): the same text, or the same error."""
    if isinstance(obj, str):
        return encode_basestring_ascii(obj)
    # (markers: the circular-reference check; then default, ensure_ascii's encoder, no indent, the
    # separators, sort_keys, skipkeys=False, allow_nan=True)
    return "".join(make_encoder({}, _default, encode_basestring_ascii, None, ":", ",", True, False, True)(obj, 0))
