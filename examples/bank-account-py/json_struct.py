"""JSON read the way the Rust examples' serde_json reads it, so that a Python module folds
the same events into the same state and faults on the same payloads. `json.loads` alone
would not: it keeps the last of two fields of the same name, where serde faults; it reads
`-0` as an integer, where serde_json reads a float; and it parses every field, where serde
skips the ones it does not need (however deep or long they are).

Every function takes JSON text the host has already checked (it refuses an append whose data
is not valid JSON) and raises `Invalid` when the value does not fit.
"""

import json
import re

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U64_MAX = 2**64 - 1

_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SCALAR = re.compile(r"[^,:\]} \t\n\r]*")


class Invalid(Exception):
    """A value that does not fit: the module faults with this message."""


def struct(text: str, **readers) -> list:
    """The JSON value `text` read as serde reads a Rust struct with the fields named by
    `readers`, each of which reads one field's value (`struct(text, owner=string)`). The
    struct may be an object (fields in any order, others ignored, none missing, none twice)
    or an array of exactly those fields, in order. Returns the values in `readers`' order."""
    names = list(readers)
    raws = _fields(text, names)
    return [readers[name](_value(raw)) for name, raw in zip(names, raws)]


def _fields(text: str, names: list[str]) -> list[str]:
    """The JSON text of the fields `names` of the struct `text`, in the order of `names`."""
    i = _SPACE.match(text).end()
    opening = text[i]
    if opening not in "{[":
        raise Invalid(f"invalid type: {text.strip()}, expected an object with {', '.join(names)}")
    items = []
    i = _SPACE.match(text, i + 1).end()
    while text[i] not in "}]":
        key = None
        if opening == "{":
            end = _STRING.match(text, i).end()
            key = json.loads(text[i:end])
            i = _SPACE.match(text, _SPACE.match(text, end).end() + 1).end()  # past the `:`
        end = _skip_value(text, i)
        items.append((key, text[i:end]))
        i = _SPACE.match(text, end).end()
        if text[i] == ",":
            i = _SPACE.match(text, i + 1).end()
    if opening == "[":
        if len(items) != len(names):
            raise Invalid(f"invalid length {len(items)}, expected an array of {len(names)}")
        return [raw for _, raw in items]
    found = {}
    for key, raw in items:
        if key in names:
            if key in found:
                raise Invalid(f"duplicate field `{key}`")
            found[key] = raw
    for name in names:
        if name not in found:
            raise Invalid(f"missing field `{name}`")
    return [found[name] for name in names]


def _skip_value(text: str, i: int) -> int:
    """The index just past the JSON value that starts at `i`."""
    if text[i] == '"':
        return _STRING.match(text, i).end()
    if text[i] not in "{[":
        return _SCALAR.match(text, i).end()
    depth = 0
    while True:
        c = text[i]
        if c == '"':
            i = _STRING.match(text, i).end()
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def _integer(text: str):
    # serde_json reads `-0` as the float -0.0.
    return -0.0 if text == "-0" else int(text)


def _value(raw: str):
    try:
        return json.loads(raw, parse_int=_integer)
    except (ValueError, RecursionError) as error:  # say, an integer too long to read
        raise Invalid(f"invalid value: {error}") from None


def string(value) -> str:
    if not isinstance(value, str):
        raise Invalid(f"invalid type: {value!r}, expected a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise Invalid(f"lone surrogate in {value!r}") from None
    return value


def optional_string(value) -> str | None:
    return None if value is None else string(value)


def _integer_in(value, low: int, high: int, kind: str) -> int:
    # `bool` is an `int` in Python, but `true` is no number in JSON.
    if type(value) is not int or not low <= value <= high:
        raise Invalid(f"invalid value: {value!r}, expected {kind}")
    return value


def i64(value) -> int:
    return _integer_in(value, I64_MIN, I64_MAX, "i64")


def u64(value) -> int:
    return _integer_in(value, 0, U64_MAX, "u64")
