"""Request and response models for structured output and tools (pydantic only).

Used by protocol_chat.py (response_format, tools, tool_choice, tool calls in messages and
responses) and by both endpoints (the vLLM extras ``structured_outputs`` / ``guided_*``).
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.protocol import RequestModel, ResponseModel

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128
MAX_CHOICES = 1024


class LooseModel(BaseModel):
    """JSON schemas and descriptions are free-form; types inside stay strict."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class JSONSchemaFormat(LooseModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = False


class ResponseFormat(LooseModel):
    """``text``, ``json_object``, or ``json_schema`` with its ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        return self


class StructuredOutputs(RequestModel):
    """vLLM's ``structured_outputs`` (its guided_* fields since v0.12): exactly one of these."""
    is_request_body: ClassVar[bool] = False  # part of a body

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)] | None = None
    grammar: Annotated[str, Field(min_length=1, max_length=65536)] | None = None
    json_object: bool | None = None

    @model_validator(mode="after")
    def _one_constraint(self):
        given = [name for name in ("json_", "regex", "choice", "grammar") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) > 1:
            raise ValueError(f"give one constraint, not {', '.join(g.rstrip('_') for g in given)}")
        return self


class FunctionDefinition(LooseModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(LooseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(LooseModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]


class NamedToolChoice(LooseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class FunctionCallInMessage(LooseModel):
    name: str
    arguments: str


class ToolCallInMessage(LooseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallInMessage


# ----- responses -----

class FunctionCall(ResponseModel):
    name: str
    arguments: str


class ToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(ResponseModel):
    omit_if_none = frozenset({"name", "arguments"})
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(ResponseModel):
    omit_if_none = frozenset({"id", "type", "function"})
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class GuidedFields(RequestModel):
    """The vLLM structured-output extras, on both endpoints: ``structured_outputs`` (vLLM's
    current name) and the older ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
    ``guided_grammar`` that many clients still send."""

    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    guided_choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)] | None = None
    guided_grammar: Annotated[str, Field(min_length=1, max_length=65536)] | None = None

    @model_validator(mode="after")
    def _one_guide(self):
        given = [name for name in ("structured_outputs", "guided_json", "guided_regex", "guided_choice",
                                   "guided_grammar") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one structured-output constraint, not {' and '.join(given)}")
        return self
