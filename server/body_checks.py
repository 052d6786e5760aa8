"""Checks over a whole request body before its fields are validated: every string is valid
Unicode, and nothing is nested deeper than ``MAX_JSON_DEPTH``.

JSON can spell a lone surrogate (``"\\ud800"``), which Python keeps in a ``str`` that no
tokenizer takes and no response can encode; and a deeply nested value (a JSON schema 440
levels deep) would exhaust the recursion of whatever walks it later (schema rewriting,
llguidance). Both are a 400 here, naming where in the body the problem is.
"""
from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

# a body's own wrapping takes a few levels (response_format.json_schema.schema) and each level
# of a JSON schema two more (properties.<name>): this allows schemas about 30 levels deep
MAX_JSON_DEPTH = 64


def _where(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


def check_body(data: Any) -> None:
    """PydanticCustomError (a 400) for a lone surrogate anywhere, or nesting past MAX_JSON_DEPTH."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise PydanticCustomError(
                "json_too_deep", "{where} is nested more than {limit} levels deep (at {start}…)",
                {"where": _where(path[:1]), "start": _where(path[:6]), "limit": MAX_JSON_DEPTH})
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and not _is_valid_unicode(key):
                    raise _surrogate(path)
                if value.__class__ is not int:
                    stack.append((value, (*path, key)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if value.__class__ is not int:  # token-id lists: skipped cheaply
                    stack.append((value, (*path, i)))
        elif isinstance(node, str) and not _is_valid_unicode(node):
            raise _surrogate(path)


def _is_valid_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # only lone surrogates fail
        return False


def _surrogate(path: tuple) -> PydanticCustomError:
    return PydanticCustomError(
        "invalid_unicode", "{where} is not valid Unicode text: it holds a lone UTF-16 surrogate (such as \\ud800)",
        {"where": _where(path)})
