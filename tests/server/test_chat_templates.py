"""Chat templates from the model's files render in our Jinja2 sandbox as transformers renders
them: Qwen3's (tools, thinking in history, multi-step tool turns, enable_thinking), and the
constructs other families' templates use (loop.previtem, {% generation %}, namespace …)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine import Tokenizer
from server import protocol_chat as pc
from server.serving_chat import chat_text
from tests.tiny_models import make_tiny_tokenizer_files

QWEN3_TEMPLATE = (Path(__file__).resolve().parent.parent / "fixtures" / "qwen3_chat_template.jinja").read_text()
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return make_tiny_tokenizer_files(str(tmp_path_factory.mktemp("tok")))


def render(tokenizer_dir: str, template: str, **request) -> str:
    tokenizer = Tokenizer.load(tokenizer_dir, chat_template=template)
    return chat_text(tokenizer, pc.ChatCompletionRequest.model_validate(request))


def hf_render(tokenizer_dir: str, template: str, messages: list[dict], **kwargs) -> str:
    """transformers' own apply_chat_template: the reference rendering."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=f"{tokenizer_dir}/tokenizer.json")
    return hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True,
                                  **kwargs)


def test_qwen3_tool_turns_and_thinking_in_history(tokenizer_dir):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "I need the tool.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    text = render(tokenizer_dir, QWEN3_TEMPLATE, messages=messages, tools=TOOLS)
    # transformers gets what a Python client hands it: content "" and the arguments as an object
    hf_messages = [*messages[:2], {**messages[2], "content": "", "tool_calls": [
        {**call, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, messages[3]]
    assert text == hf_render(tokenizer_dir, QWEN3_TEMPLATE, hf_messages, tools=TOOLS)
    assert "<think>\nI need the tool.\n</think>\n\n<tool_call>" in text


def test_qwen3_drops_old_thinking_and_switches_it_off(tokenizer_dir):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
                {"role": "user", "content": "Bye"}]
    text = render(tokenizer_dir, QWEN3_TEMPLATE, messages=messages)
    assert text == hf_render(tokenizer_dir, QWEN3_TEMPLATE, messages)
    assert "A greeting." not in text  # thinking before the last user message is not shown again
    off = render(tokenizer_dir, QWEN3_TEMPLATE, messages=messages, chat_template_kwargs={"enable_thinking": False})
    assert off == hf_render(tokenizer_dir, QWEN3_TEMPLATE, messages, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render(tokenizer_dir, QWEN3_TEMPLATE, messages=messages, reasoning_effort="none") == off
    assert render(tokenizer_dir, QWEN3_TEMPLATE, messages=messages, reasoning_effort="high") == text


@pytest.mark.parametrize("template,expected", [
    ("{% for m in messages %}{% if loop.previtem is defined %}<{{ loop.previtem.role }}>{% endif %}"
     "{{ m.content }}{% endfor %}", "a<user>b"),
    ("{% for m in messages %}{{ m.role }}:{% generation %}{{ m.content }}{% endgeneration %};{% endfor %}",
     "user:a;assistant:b;"),
    ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", "2"),
    ("{{ messages | map(attribute='role') | list | tojson }}{{ messages[0].get('name', '-') }}",
     '["user", "assistant"]-'),
    ("{% for m in messages %}{% if m.content is string %}{{ m.content | upper }}{% endif %}{% endfor %}", "AB"),
])
def test_constructs_of_other_families_templates(tokenizer_dir, template, expected):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    tokenizer = Tokenizer.load(tokenizer_dir, chat_template=template)
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == expected


def test_template_errors_stay_errors(tokenizer_dir):
    tokenizer = Tokenizer.load(tokenizer_dir, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="roles must alternate"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}])
