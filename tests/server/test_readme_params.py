"""README's "Request parameters" table covers every request field of the spec, and says why
for every field it refuses."""
from __future__ import annotations

import re

from tests.spec_validator import REPO_ROOT, _spec_and_registry


def spec_fields(name: str) -> set[str]:
    schemas = _spec_and_registry()[0]["components"]["schemas"]

    def props(schema: dict) -> set[str]:
        if "$ref" in schema:
            return props(schemas[schema["$ref"].rsplit("/", 1)[-1]])
        out = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):  # inherited: CreateModelResponseProperties …
            out |= props(part)
        return out

    return props(schemas[name])


def table_rows() -> list[list[str]]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Request parameters\n", 1)[1].split("\n## ", 1)[0]
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


def test_every_spec_field_has_a_row():
    rows = table_rows()
    assert all(len(row) == 4 for row in rows), [row for row in rows if len(row) != 4]
    by_endpoint = {"completions": set(), "chat": set()}
    for field, endpoint, _, _ in rows:
        for name in re.findall(r"`([a-z_]+)`", field):
            for which in by_endpoint:
                if endpoint.startswith(("both", which)):
                    by_endpoint[which].add(name)
    assert len(spec_fields("CreateCompletionRequest")) >= 18 and len(spec_fields("CreateChatCompletionRequest")) >= 37
    assert spec_fields("CreateCompletionRequest") - by_endpoint["completions"] == set()
    assert spec_fields("CreateChatCompletionRequest") - by_endpoint["chat"] == set()


def test_refusals_say_why():
    for field, _, supported, notes in table_rows():
        assert supported in ("yes", "no", "partly", "accepted", "in progress"), (field, supported)
        if supported in ("no", "partly", "accepted"):
            assert len(notes) > 20, f"{field}: say why"
