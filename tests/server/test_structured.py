"""Grammars → guides (server/structured.py) over a tiny real tokenizer: what they allow, errors, cache."""
import json

import pytest
import torch

from engine import Tokenizer
from engine.guided import Guide, bitmask_words
from server.structured import GrammarError, GrammarSpec, StructuredOutput, close_objects
from server.tools import ToolSettings
from tests.tiny_models import TOKENIZER_VOCAB_SIZE, make_tiny_tokenizer_files

VOCAB = TOKENIZER_VOCAB_SIZE + 8  # a model may have more logit rows than the tokenizer has tokens


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    tokenizer = Tokenizer.load(make_tiny_tokenizer_files(str(tmp_path_factory.mktemp("tok"))))
    return StructuredOutput(tokenizer, VOCAB)


def allowed(guide) -> set[int]:
    bitmask = torch.zeros(2, bitmask_words(VOCAB), dtype=torch.int32)
    guide.fill_bitmask(bitmask, 1)
    bits = (bitmask[1].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return set(bits.flatten().nonzero().flatten().tolist())


def run(structured, guide, text: str) -> bool:
    """Feed text token by token, each checked against the mask first; True if all accepted."""
    for t in structured.tokenizer.encode(text, add_special_tokens=False):
        if t not in allowed(guide) or not guide.accept(t):
            return False
    return True


def test_json_schema_guide_walks_a_valid_answer_and_ends(structured):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    guide = structured.guide(GrammarSpec("json", schema, "response_format"))
    assert isinstance(guide, Guide)
    assert run(structured, guide, '{"name": "Paris", "age": 10}')
    eos = structured.tokenizer.eos_token_ids[0]
    assert allowed(guide) == {eos}  # complete: only the end of the turn is left
    assert guide.accept(eos) and guide.is_terminated()


def test_json_schema_guide_refuses_what_the_schema_does_not_allow(structured):
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    spec = GrammarSpec("json", close_objects(schema), "response_format")
    assert not run(structured, structured.guide(spec), '{"age": "ten"}')
    assert not run(structured, structured.guide(spec), '{"age": 1, "x": 2}')
    assert not run(structured, structured.guide(spec), '{"age":1}')  # fixed separators


def test_choice_and_regex(structured):
    spec = GrammarSpec("choice", ["yes", "no (maybe)"], "structured_outputs")
    assert run(structured, structured.guide(spec), "no (maybe)")
    assert not run(structured, structured.guide(spec), "nope")
    guide = structured.guide(GrammarSpec("regex", r"[0-9]{3}-[a-z]+", "structured_outputs"))
    assert run(structured, guide, "123-abc")
    assert not run(structured, structured.guide(GrammarSpec("regex", r"[0-9]{3}", "x")), "12a")


def test_clones_and_cached_grammars_are_independent(structured):
    spec = GrammarSpec("choice", ["aa", "bb"], "structured_outputs")
    first = structured.guide(spec)
    twin = first.clone()
    assert run(structured, first, "aa")
    assert run(structured, twin, "bb")  # the clone did not see "aa"
    assert run(structured, structured.guide(spec), "bb")  # the cache hands out fresh copies


@pytest.mark.parametrize("spec", [
    GrammarSpec("json", {"type": "objectx"}, "response_format"),
    GrammarSpec("json", "{not json", "structured_outputs"),
    GrammarSpec("json", [1, 2], "structured_outputs"),
    GrammarSpec("regex", "a(b", "structured_outputs"),
    GrammarSpec("lark", "start: undefined_rule", "structured_outputs"),
])
def test_bad_grammars_raise_grammar_error_naming_the_field(structured, spec):
    with pytest.raises(GrammarError) as info:
        structured.guide(spec)
    assert info.value.param == spec.param


def test_forced_tool_call_grammar(structured):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    guide = structured.guide(ToolSettings(tools=[tool], choice="required", parallel=False).grammar())
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert run(structured, guide, f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
    assert guide.is_terminated() or allowed(guide) == set(structured.tokenizer.eos_token_ids[:1])
    extra = {"name": "get_weather", "arguments": {"city": "Paris", "x": 1}}  # arguments are closed objects
    assert not run(structured, structured.guide(ToolSettings(tools=[tool], choice="required").grammar()),
                   f"<tool_call>\n{json.dumps(extra)}")


def test_many_rows_filled_at_once_equal_one_by_one(structured):
    from server.structured import LLGuide

    specs = [GrammarSpec("choice", ["aa", "bb"], "x"), GrammarSpec("regex", "[0-9]+", "x"),
             GrammarSpec("json", {"type": "object"}, "x")]
    guides = [structured.guide(s) for s in specs]
    one_by_one = torch.zeros(3, bitmask_words(VOCAB), dtype=torch.int32)
    for row, g in enumerate(guides):
        g.fill_bitmask(one_by_one, row)
    at_once = torch.zeros_like(one_by_one)
    LLGuide.fill_bitmasks([(g, row) for row, g in enumerate(guides)], at_once)
    assert torch.equal(at_once, one_by_one) and len(set(map(tuple, at_once.tolist()))) == 3


def test_forced_call_with_nested_pydantic_parameters(structured):
    """Parameters with $defs (pydantic's nested models) still resolve once under "arguments"."""
    import openai
    from pydantic import BaseModel

    class Place(BaseModel):
        city: str

    class Trip(BaseModel):
        start: Place
        end: Place

    tool = openai.pydantic_function_tool(Trip)
    assert "$defs" in tool["function"]["parameters"]
    guide = structured.guide(ToolSettings(tools=[tool], choice="required", parallel=False).grammar())
    call = {"name": "Trip", "arguments": {"start": {"city": "Paris"}, "end": {"city": "Oslo"}}}
    assert run(structured, guide, f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
    bad = {"name": "Trip", "arguments": {"start": {"town": "Paris"}}}
    guide = structured.guide(ToolSettings(tools=[tool], choice="required", parallel=False).grammar())
    assert not run(structured, guide, f"<tool_call>\n{json.dumps(bad)}")


def test_lark_grammar(structured):
    spec = GrammarSpec("lark", 'start: "go " DIR\nDIR: "north" | "south"', "structured_outputs")
    assert run(structured, structured.guide(spec), "go north")
    assert not run(structured, structured.guide(spec), "go west")


def test_the_grammar_cache_is_bounded_by_bytes(tmp_path):
    tokenizer = Tokenizer.load(make_tiny_tokenizer_files(str(tmp_path)))
    structured = StructuredOutput(tokenizer, VOCAB, max_bytes=2 * 2**20)
    specs = [GrammarSpec("choice", [f"{k}-{i:05d}" for i in range(2000)], "guided_choice") for k in range(12)]
    for spec in specs:  # ~25 KB of grammar text each: a dozen pass the budget's estimate
        structured.guide(spec)
        assert structured.num_cached_bytes <= structured.max_bytes
    assert 0 < len(structured._cache) < len(specs)  # the oldest went first …
    assert structured.grammar(specs[-1]) in structured._cache  # … the newest stays
    huge = GrammarSpec("choice", [f"h-{i:06d}" for i in range(50_000)], "guided_choice")
    assert run(structured, structured.guide(huge), "h-000123")  # served, but not kept: past a quarter
    assert structured.grammar(huge) not in structured._cache
    assert structured.num_cached_bytes <= structured.max_bytes


CITY = {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                                         "area": {"type": "number"}},
        "required": ["name", "population", "area"], "additionalProperties": False}


def accepts(structured, spec: GrammarSpec, text: str) -> bool:
    return run(structured, structured.guide(spec), text)


def test_unbounded_integers_stay_within_64_bits(structured):
    spec = GrammarSpec("json", CITY, "response_format")
    assert accepts(structured, spec, '{"name": "Paris", "population": 2148000, "area": 105.4}')
    assert accepts(structured, spec, '{"name": "P", "population": -9223372036854774784, "area": 1}')
    assert accepts(structured, spec, '{"name": "P", "population": 9223372036854775807, "area": 1}')
    assert not accepts(structured, spec, '{"name": "P", "population": 9223372036854775808')
    assert not accepts(structured, spec, '{"name": "P", "population": ' + "1" * 20)  # the runaway 1111…
    bounded = {**CITY, "properties": {**CITY["properties"], "population": {"type": "integer", "minimum": 5}}}
    assert not accepts(structured, GrammarSpec("json", bounded, "response_format"), '{"name": "P", "population": 4, ')


def test_numbers_stay_within_float64_digits(structured):
    spec = GrammarSpec("json", CITY, "response_format")
    head = '{"name": "P", "population": 1, "area": '
    for ok in ("0.5", "-12.25", "1234567.1234567891", "123456789012.12345", "1234567890123456.5"):
        assert accepts(structured, spec, head + ok + "}"), ok
    for runaway in ("0." + "3" * 11, "1" * 17, "12345678.123456"):
        assert not accepts(structured, spec, head + runaway), runaway


def test_json_object_and_free_values_bound_their_numbers(structured):
    spec = GrammarSpec("json", {"type": "object"}, "response_format")  # response_format json_object
    assert accepts(structured, spec, '{"a": [1, 2.5, {"b": null, "c": "x"}], "d": true, "e": -3}')
    assert not accepts(structured, spec, '{"a": ' + "1" * 20)
    assert not accepts(structured, spec, '{"a": [{"b": 0.' + "1" * 11)


def test_tool_arguments_bound_their_numbers(structured):
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}}, "required": ["n", "x"]}}}
    spec = ToolSettings(tools=[tool], choice="required").grammar()
    assert accepts(structured, spec, '<tool_call>\n{"name": "f", "arguments": {"n": 12, "x": 0.5}}\n</tool_call>')
    assert not accepts(structured, spec, '<tool_call>\n{"name": "f", "arguments": {"n": ' + "7" * 20)
