"""Validate JSON bodies and stream chunks against the official OpenAI OpenAPI spec.

The spec is ~3 MB of YAML (about 2 s to parse), so it is parsed once per process and the
parsed form is cached as JSON in the temp folder, keyed by the file's size and mtime.

    from tests.spec_validator import validate
    validate(body, "CreateChatCompletionResponse")   # raises jsonschema.ValidationError
"""
from __future__ import annotations

import copy
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:openai-openapi"
REPO_ROOT = Path(__file__).resolve().parent.parent

# The spec says completion stream chunks share CreateCompletionResponse's shape, but the real
# API (and every client) sends ``finish_reason: null`` on chunks before a choice ends, which
# that schema forbids. This derived schema differs only in allowing that null.
COMPLETION_STREAM_SCHEMA = "CreateCompletionStreamResponse"
# With echo and logprobs the real API (and vLLM) send null as the first prompt token's logprob
# and top_logprobs (nothing comes before it to predict it), which the spec's number-only lists
# forbid. These two derived schemas differ from the above only in allowing that null.
COMPLETION_ECHO_SCHEMAS = {"CreateCompletionResponse": "CreateCompletionEchoResponse",
                           COMPLETION_STREAM_SCHEMA: "CreateCompletionEchoStreamResponse"}


def spec_path() -> Path:
    env = os.environ.get("GPTSERVE_SPEC")
    return Path(env) if env else REPO_ROOT / "tests" / "spec" / "openai-openapi.yaml"


def _nullable_to_31(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` (which this 3.1 file still uses) → anyOf [..., null]."""
    if isinstance(node, list):
        return [_nullable_to_31(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_31(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


def _load_spec_json(path: Path) -> dict:
    st = path.stat()
    cache = Path(tempfile.gettempdir()) / f"gptserve-spec-{st.st_size}-{int(st.st_mtime)}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass  # a torn write by a concurrent run: parse the YAML again
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        spec = _nullable_to_31(yaml.load(f, Loader=loader))
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(spec, default=str))  # YAML dates in examples → strings
    os.replace(tmp, cache)
    return spec


@functools.lru_cache(maxsize=1)
def _spec_and_registry() -> tuple[dict, Registry]:
    spec = _load_spec_json(spec_path())
    schemas = spec["components"]["schemas"]
    stream = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = stream["properties"]["choices"]["items"]["properties"]["finish_reason"]
    stream["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [finish, {"type": "null"}]
    }
    schemas[COMPLETION_STREAM_SCHEMA] = stream
    for base, derived in COMPLETION_ECHO_SCHEMAS.items():
        echo = copy.deepcopy(schemas[base])
        logprobs = echo["properties"]["choices"]["items"]["properties"]["logprobs"]["anyOf"][0]["properties"]
        for name in ("token_logprobs", "top_logprobs"):
            logprobs[name]["items"] = {"anyOf": [logprobs[name]["items"], {"type": "null"}]}
        schemas[derived] = echo
    registry = Registry().with_resource(SPEC_URI, Resource(contents=spec, specification=DRAFT202012))
    return spec, registry


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    spec, registry = _spec_and_registry()
    if schema_name not in spec["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {spec_path()}")
    ref = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(ref, registry=registry)


def validate(instance: Any, schema_name: str) -> Any:
    """Raise AssertionError (short: the path and the reason) unless ``instance`` matches."""
    error = jsonschema.exceptions.best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        where = "".join(f"[{p!r}]" for p in error.absolute_path)
        raise AssertionError(f"{schema_name}: instance{where}: {error.message}\n{json.dumps(instance)[:2000]}")
    return instance


def validate_error(body: Any) -> Any:
    """An error body: the spec's ErrorResponse, with ``type`` and ``message`` non-empty."""
    validate(body, "ErrorResponse")
    assert body["error"]["message"] and body["error"]["type"], body
    return body
