"""A fast check that arguments satisfy a tool's schema, compiled once per tool.

jsonschema's ``iter_errors`` walks the schema anew on every call (an observe spent about 7 % of
its CPU there). ``compile_acceptor`` turns the subset of JSON Schema the registry's helpers write
(type, properties, required, min/maxLength, pattern, enum of strings, minimum/maximum, items,
min/maxItems) into plain Python checks. It only ever *accepts*: when it answers False, or meets a
keyword it does not know, the registry asks jsonschema, whose errors (and so the 400 naming the
field) are the only ones a client sees. So it must never accept what jsonschema refuses, and
may, at worst, send a valid call the slow way (an integer sent as 3.0, a number that is not an
int or a float).

Both run a schema's ``pattern`` the way JSON Schema means it (``ecma_pattern``): an ECMA-262
regex, whose ``$`` matches only at the very end of the string. Python's ``$`` also matches
before a final newline, so with ``re.search`` an id pattern ``^[^\\x00-\\x1f\\x7f]+$`` let
``"abc\\n"`` through as a project, session id or key. The schemas keep the ECMA spelling (the
OpenAPI document publishes them, and ``\\Z`` is no ECMA syntax); ``SchemaValidator`` is
jsonschema's Draft 2020-12 validator with its ``pattern`` keyword run through ``ecma_pattern``.
"""

from __future__ import annotations

import functools
import numbers
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
from jsonschema import validators

Acceptor = Callable[[Any], bool]


@functools.cache
def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` (an ECMA-262 regex, as JSON Schema's ``pattern`` is) compiled for Python with
    ECMA's meaning of ``$``: every ``$`` that is an assertion (not escaped, not inside a character
    class) becomes ``\\Z``, the very end of the string. The rest of the syntax the schemas use
    means the same in both."""
    out: list[str] = []
    in_class = escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = "\\Z"
        out.append(char)
    return re.compile("".join(out))


def _pattern_keyword(validator: Any, pattern: str, instance: Any, _schema: Any) -> Iterator[jsonschema.ValidationError]:
    """jsonschema's ``pattern`` keyword (its own error message), with ``ecma_pattern``'s ``$``."""
    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# The validator of tool arguments (registry.py) and of a model's structured answers (llm.py).
SchemaValidator: Any = validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern_keyword})

# Keywords that only annotate: they never make a value invalid.
_ANNOTATIONS = frozenset({"description", "default", "title", "examples"})
_KNOWN = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
}


def _never(_value: Any) -> bool:
    return False


def _always(_value: Any) -> bool:
    return True


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool; a float is left to jsonschema


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_int,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def compile_acceptor(schema: Any) -> Acceptor:
    """A function answering True only for values ``schema`` accepts (False: ask jsonschema)."""
    if not isinstance(schema, dict) or not set(schema) <= _KNOWN:
        return _never
    checks: list[Callable[[Any], bool]] = []
    kind = schema.get("type")
    if kind is not None:
        if not isinstance(kind, str) or kind not in _TYPES:
            return _never
        checks.append(_TYPES[kind])
    checks += _string_checks(schema) + _number_checks(schema) + _array_checks(schema)
    checks += _object_checks(schema)
    if any(check is _never for check in checks):
        return _never
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _string_checks(schema: dict) -> list[Callable[[Any], bool]]:
    checks: list[Callable[[Any], bool]] = []
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None or high is not None:
        if not all(b is None or _is_int(b) for b in (low, high)):
            return [_never]
        lo, hi = low or 0, high
        checks.append(lambda v: not isinstance(v, str) or (lo <= len(v) and (hi is None or len(v) <= hi)))
    if "pattern" in schema:
        search = ecma_pattern(schema["pattern"]).search
        checks.append(lambda v: not isinstance(v, str) or search(v) is not None)
    if "enum" in schema:
        allowed = schema["enum"]
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            return [_never]
        names = frozenset(allowed)
        checks.append(lambda v: isinstance(v, str) and v in names)
    return checks


def _number_checks(schema: dict) -> list[Callable[[Any], bool]]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None and high is None:
        return []
    if not all(b is None or _is_number(b) for b in (low, high)):
        return [_never]

    def within(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return not _is_number_like(v)  # bounds apply to numbers only; anything odd goes the slow way
        return (low is None or v >= low) and (high is None or v <= high)

    return [within]


def _is_number_like(value: Any) -> bool:
    """Whether jsonschema might count ``value`` as a number (any numbers.Number but bool)."""
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _array_checks(schema: dict) -> list[Callable[[Any], bool]]:
    checks: list[Callable[[Any], bool]] = []
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None or high is not None:
        if not all(b is None or _is_int(b) for b in (low, high)):
            return [_never]
        lo, hi = low or 0, high
        checks.append(lambda v: not isinstance(v, list) or (lo <= len(v) and (hi is None or len(v) <= hi)))
    if "items" in schema:
        item = compile_acceptor(schema["items"])
        if item is _never:
            return [_never]
        checks.append(lambda v: not isinstance(v, list) or all(item(x) for x in v))
    return checks


def _object_checks(schema: dict) -> list[Callable[[Any], bool]]:
    checks: list[Callable[[Any], bool]] = []
    required = schema.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            return [_never]
        names = tuple(required)
        checks.append(lambda v: not isinstance(v, dict) or all(n in v for n in names))
    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            return [_never]
        compiled = {name: compile_acceptor(sub) for name, sub in properties.items()}
        if any(check is _never for check in compiled.values()):
            return [_never]
        pairs = tuple((name, check) for name, check in compiled.items() if check is not _always)
        checks.append(lambda v: not isinstance(v, dict) or all(n not in v or c(v[n]) for n, c in pairs))
    return checks
