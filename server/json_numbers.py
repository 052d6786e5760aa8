"""Numbers a JSON schema leaves unbounded, bounded before llguidance compiles it.

A small model asked for ``{"population": integer}`` may write ``1111111…`` until max_tokens,
which no client can parse. So, in json_schema, json_object and tool arguments alike:

- an integer is generated within 64-bit range: at most 19 digits, what most JSON parsers hold;
- a number within float64's digits: at most 17 significant digits, as one of the shapes in
  ``NUMBER_SHAPES`` (up to 7 digits before the point and 10 after, 12 and 5, or 16 and 1);
- a value the schema leaves free (``{"type": "object"}``'s members, an array without
  ``items``, ``additionalProperties: true``, ``{}``) is any JSON value with such numbers.

Bounds the schema sets itself are kept where they are narrower. llguidance reads bounds as
float64, so the lowest integer is -2**63 + 1024 (-2**63 itself does not compile).
"""
from __future__ import annotations

from typing import Any

INT_MIN, INT_MAX = -(2**63) + 1024, 2**63 - 1
NUMBER_SHAPES = ((7, 10), (12, 5), (16, 1))  # (digits before the point, digits after)
VALUE_DEF = "gptserve.json_value"
_VALUE_REF = {"$ref": f"#/$defs/{VALUE_DEF}"}
# keywords whose values are data, not schemas: left alone
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "required", "x-guidance"})


def bound_numbers(schema: dict) -> dict:
    """A copy of ``schema`` with every unbounded integer, number and free value bounded."""
    uses_value: list[bool] = []
    out = _rewrite(schema, uses_value)
    if uses_value:
        out = {**out, "$defs": {**out.get("$defs", {}), VALUE_DEF: _value_schema()}}
    return out


def _rewrite(node: Any, uses_value: list[bool]) -> Any:
    if isinstance(node, list):
        return [_rewrite(n, uses_value) for n in node]
    if not isinstance(node, dict):
        return node
    if not node:  # {}: any value
        uses_value.append(True)
        return dict(_VALUE_REF)
    out = {k: (v if k in _DATA_KEYWORDS else _rewrite_schema_map(v, uses_value) if k in _SCHEMA_MAPS
               else _rewrite(v, uses_value)) for k, v in node.items()}
    kind = out.get("type")
    if isinstance(kind, list) and ("integer" in kind or "number" in kind):
        return {"anyOf": [_rewrite({**out, "type": t}, uses_value) for t in kind]}
    if kind == "integer":
        return _bounded_integer(out)
    if kind == "number":
        return _bounded_number(out)
    if kind == "object" or "properties" in out:
        if out.get("additionalProperties", True) is True and "patternProperties" not in out:
            uses_value.append(True)
            out["additionalProperties"] = dict(_VALUE_REF)
    if kind == "array" and "items" not in out and "prefixItems" not in out:
        uses_value.append(True)
        out["items"] = dict(_VALUE_REF)
    return out


_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _rewrite_schema_map(value: Any, uses_value: list[bool]) -> Any:
    """{name: schema}: each schema rewritten (a property named "type" is not a keyword here)."""
    if not isinstance(value, dict):
        return value
    return {name: _rewrite(schema, uses_value) for name, schema in value.items()}


def _bound(node: dict, key: str, exclusive: str) -> float | None:
    value = node.get(key)
    if isinstance(node.get(exclusive), (int, float)) and not isinstance(node.get(exclusive), bool):
        value = node[exclusive] if value is None else (max if key == "minimum" else min)(value, node[exclusive])
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bounded_integer(node: dict) -> dict:
    out = dict(node)
    low, high = _bound(node, "minimum", "exclusiveMinimum"), _bound(node, "maximum", "exclusiveMaximum")
    if low is None or low < INT_MIN:
        out["minimum"] = INT_MIN
        out.pop("exclusiveMinimum", None)
    if high is None or high > INT_MAX:
        out["maximum"] = INT_MAX
        out.pop("exclusiveMaximum", None)
    return out


def _bounded_number(node: dict) -> dict:
    low, high = _bound(node, "minimum", "exclusiveMinimum"), _bound(node, "maximum", "exclusiveMaximum")
    shapes = []
    for before, after in NUMBER_SHAPES:
        limit = 10**before
        shape = dict(node)
        if low is None or low < -limit:
            shape["minimum"] = -limit
            shape.pop("exclusiveMinimum", None)
        if high is None or high > limit:
            shape["maximum"] = limit
            shape.pop("exclusiveMaximum", None)
        if "multipleOf" not in node:
            shape["multipleOf"] = float(f"1e-{after}")
        if (low is None or low <= limit) and (high is None or high >= -limit):
            shapes.append(shape)
        if low is not None and high is not None and -limit <= low and high <= limit:
            break  # the schema's own range fits this shape: wider ones add only fewer decimals
    if not shapes:  # bounds past 1e16 the schema set itself: left as given
        return node
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}


def _value_schema() -> dict:
    """Any JSON value, its numbers bounded as above."""
    return {"anyOf": [{"type": "null"}, {"type": "boolean"}, {"type": "string"},
                      _bounded_integer({"type": "integer"}), _bounded_number({"type": "number"}),
                      {"type": "array", "items": dict(_VALUE_REF)},
                      {"type": "object", "additionalProperties": dict(_VALUE_REF)}]}
