"""Structured output: request fields → llguidance grammars → per-request guides for the engine.

llguidance (chosen by measurement over xgrammar, see BENCHMARKS.md) compiles JSON schemas,
regular expressions and Lark grammars against the model's vocabulary and computes each
step's allowed-token bitmask. The engine sees only ``engine.guided.Guide``: an ``LLGuide``
wraps one ``LLMatcher``.

Grammars are cached by their text (a compiled matcher at its start state, LRU), so a schema
sent again costs a copy, not a compile. The cache is bounded by bytes, not entries: a compiled
matcher takes about ``MATCHER_BYTES_PER_CHAR`` times its grammar text (measured: a 3 MB
``guided_choice`` list held ~22 MB), the cache keeps the estimate under its budget, and a
grammar larger than a quarter of the budget is compiled for its request but not kept. JSON is generated with fixed separators (``", "``,
``": "``) and no free whitespace, so a small model cannot wander into endless blank lines.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import anyio
import llguidance
import torch
from llguidance._tokenizer import TokenizerWrapper

from engine import Tokenizer
from server.errors import bad_request
from server.json_numbers import bound_numbers

JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
MAX_CACHED_GRAMMARS = 256
MATCHER_BYTES_PER_CHAR = 8  # a compiled matcher's memory per character of grammar text, roughly
DEFAULT_CACHE_BYTES = 256 * 2**20
_executor: llguidance.LLExecutor | None = None  # fills many rows' masks in parallel, made on first use
_REGEX_META = set("\\.+*?()|[]{}^$#&-~")


class GrammarError(ValueError):
    """The request's schema, regex or grammar is invalid; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class LLGuide:
    """engine.guided.Guide over one llguidance matcher."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        words = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)

    @classmethod
    def fill_bitmasks(cls, pairs: list[tuple[LLGuide, int]], bitmask: torch.Tensor) -> None:
        """Many rows at once on llguidance's thread pool (``bitmask`` contiguous, int32)."""
        global _executor
        if _executor is None:
            _executor = llguidance.LLExecutor()
        _executor.unsafe_compute_mask_ptr([(g.matcher, row) for g, row in pairs], bitmask.data_ptr(),
                                          bitmask.shape[1] * 4, bitmask.shape[0])

    def accept(self, token_id: int) -> bool:
        return self.matcher.consume_token(token_id)

    def is_terminated(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()

    def clone(self) -> LLGuide:
        return LLGuide(self.matcher.deep_copy())


@dataclass(frozen=True)
class GrammarSpec:
    """What to constrain the output to: ``kind`` is "json", "regex", "choice" or "lark"."""

    kind: str
    value: Any
    param: str  # the request field it came from, for error messages


def request_grammar(request, tool_grammar: GrammarSpec | None = None) -> GrammarSpec | None:
    """What a request constrains its output to: ``response_format`` (chat), vLLM's
    ``structured_outputs`` or ``guided_*`` (both endpoints), or a forced tool call's grammar."""
    specs = []
    so = getattr(request, "structured_outputs", None)
    if so is not None:
        for name, kind in (("json_", "json"), ("regex", "regex"), ("choice", "choice"), ("grammar", "lark")):
            if getattr(so, name) is not None:
                specs.append(GrammarSpec(kind, getattr(so, name), "structured_outputs"))
        if so.json_object:
            specs.append(GrammarSpec("json", {"type": "object"}, "structured_outputs"))
    for name, kind in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                       ("guided_grammar", "lark")):
        if getattr(request, name, None) is not None:
            specs.append(GrammarSpec(kind, getattr(request, name), name))
    fmt = getattr(request, "response_format", None)
    if fmt is not None and fmt.type == "json_object":
        specs.append(GrammarSpec("json", {"type": "object"}, "response_format"))
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_ or {"type": "object"}
        specs.append(GrammarSpec("json", close_objects(schema) if fmt.json_schema.strict else schema,
                                 "response_format"))
    if tool_grammar is not None:
        specs.append(tool_grammar)
    if len(specs) > 1:
        raise GrammarError(f"{specs[0].param} and {specs[1].param} cannot be combined: give one output "
                           f"constraint", specs[1].param)
    return specs[0] if specs else None


def regex_escape(text: str) -> str:
    """Escape for llguidance's (Rust) regex syntax, which rejects Python's escaped spaces."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def close_objects(schema: Any) -> Any:
    """A copy of ``schema`` whose objects with ``properties`` and no ``additionalProperties``
    allow no other keys (what OpenAI's strict mode requires; a small model needs the rail)."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: close_objects(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def lark_json(schema: dict) -> str:
    """A JSON schema embedded in a Lark grammar, with our separators."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def lark_string(text: str) -> str:
    return json.dumps(text)  # Lark's string escapes are JSON's for what we write


class StructuredOutput:
    """One per model: the llguidance tokenizer (built on first use) and the grammar cache."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_bytes = max_bytes  # the cache's budget, in estimated bytes
        self.num_cached_bytes = 0
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def lltokenizer(self) -> llguidance.LLTokenizer:
        """Built once (about 0.2 s for a 49k vocabulary) from the tokenizer's token bytes."""
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = llguidance.LLTokenizer(
                    TokenizerWrapper(_TokenTable(self.tokenizer, self.vocab_size)),
                    n_vocab=self.vocab_size, eos_token=list(self.tokenizer.eos_token_ids))
            return self._lltokenizer

    @classmethod
    def for_engine(cls, engine, max_bytes: int = DEFAULT_CACHE_BYTES) -> StructuredOutput:
        """Masks as wide as the model's logits, which may pass the tokenizer's vocabulary."""
        vocab_size = getattr(getattr(engine, "model_config", None), "vocab_size", None)
        return cls(engine.tokenizer, vocab_size or engine.tokenizer.vocab_size, max_bytes)

    def guide_for(self, request, tool_grammar: GrammarSpec | None = None,
                  thinking: str | None = None) -> LLGuide | None:
        """The request's guide, or None when its output is free; a 400 naming the field if invalid.
        ``thinking`` ("may_open" or "inside"): the grammar applies to the answer after the
        model's ``<think>…</think>`` (see ``with_thinking``)."""
        try:
            spec = request_grammar(request, tool_grammar)
            return None if spec is None else self.guide(spec, thinking)
        except GrammarError as exc:
            raise bad_request(f"Invalid {exc.param}: {exc}", param=exc.param) from None

    async def aguide_for(self, request, tool_grammar: GrammarSpec | None = None,
                         thinking: str | None = None) -> LLGuide | None:
        """``guide_for`` on a worker thread: the first call builds the vocabulary's tables
        (a second or so on a loaded CPU) and a large schema compiles for milliseconds."""
        try:
            if request_grammar(request, tool_grammar) is None:
                return None
        except GrammarError as exc:
            raise bad_request(f"Invalid {exc.param}: {exc}", param=exc.param) from None
        return await anyio.to_thread.run_sync(self.guide_for, request, tool_grammar, thinking)

    def grammar(self, spec: GrammarSpec) -> str:
        """The llguidance grammar text for ``spec``."""
        if spec.kind == "json":
            schema = spec.value
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError as exc:
                    raise GrammarError(f"the JSON schema is not valid JSON: {exc}", spec.param) from None
                except RecursionError:
                    raise GrammarError("the JSON schema is nested too deeply", spec.param) from None
            if not isinstance(schema, dict):
                raise GrammarError("the JSON schema must be an object", spec.param)
            try:
                schema = bound_numbers(schema)  # no runaway 1111… integers (server/json_numbers.py)
            except RecursionError:  # a schema sent as a string escapes the body's depth check
                raise GrammarError("the JSON schema is nested too deeply", spec.param) from None
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
            except (ValueError, TypeError) as exc:
                raise GrammarError(f"invalid JSON schema: {exc}", spec.param) from None
        if spec.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.value)
        if spec.kind == "choice":
            return llguidance.LLMatcher.grammar_from_regex("|".join(f"({regex_escape(c)})" for c in spec.value))
        if spec.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(spec.value)
        raise GrammarError(f"unknown grammar kind {spec.kind!r}", spec.param)

    def guide(self, spec: GrammarSpec, thinking: str | None = None) -> LLGuide:
        """A fresh guide at the grammar's start; GrammarError (a 400) if it does not compile."""
        grammar = self.grammar(spec)
        if thinking is not None and "think>" not in str(spec.value):  # else it spells the thinking itself
            grammar = with_thinking(grammar, thinking)
        with self._lock:
            matcher = self._cache.get(grammar)
            if matcher is not None:
                self._cache.move_to_end(grammar)
                return LLGuide(matcher.deep_copy())
        matcher = llguidance.LLMatcher(self.lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"invalid {_WHAT[spec.kind]}: {matcher.get_error()}", spec.param)
        self._keep(grammar, matcher)
        return LLGuide(matcher.deep_copy())

    def _keep(self, grammar: str, matcher: llguidance.LLMatcher) -> None:
        """Cache the matcher, evicting the least recently used past the count or the byte budget."""
        num_bytes = cached_bytes(grammar)
        if num_bytes > self.max_bytes // 4:
            return  # one such grammar would push out many: compiled per request instead
        with self._lock:
            if grammar in self._cache:
                return
            self._cache[grammar] = matcher
            self.num_cached_bytes += num_bytes
            while len(self._cache) > MAX_CACHED_GRAMMARS or self.num_cached_bytes > self.max_bytes:
                evicted, _ = self._cache.popitem(last=False)
                self.num_cached_bytes -= cached_bytes(evicted)


def cached_bytes(grammar: str) -> int:
    """The estimated memory of a cached grammar: its text and its compiled matcher."""
    return len(grammar) * (1 + MATCHER_BYTES_PER_CHAR)


# The thinking, one lazy lexeme: it ends at the first </think>.
_THINKING = {"may_open": "start: thinking? /[ \\t\\r\\n]*/ @answer\nthinking[lazy]: /<think>(?s:.*)<\\/think>/\n",
             "inside": "start: thinking /[ \\t\\r\\n]*/ @answer\nthinking[lazy]: /(?s:.*)<\\/think>/\n"}


def with_thinking(grammar: str, thinking: str) -> str:
    """``grammar`` (llguidance's text: a TopLevelGrammar's JSON, or Lark) after a reasoning
    model's thinking: "may_open" lets the output open ``<think>…</think>`` first, "inside" (the
    prompt left ``<think>`` open) makes it think until ``</think>``; white space, then the grammar."""
    try:
        parts = json.loads(grammar)["grammars"]
    except (ValueError, TypeError, KeyError):
        parts = [{"lark_grammar": grammar}]
    parts = [dict(p) for p in parts]
    parts[0]["name"] = "answer"
    return json.dumps({"grammars": [{"lark_grammar": _THINKING[thinking]}, *parts]})


_WHAT = {"json": "JSON schema", "regex": "regular expression", "choice": "choice list", "lark": "grammar"}


class _TokenTable:
    """What llguidance's TokenizerWrapper reads: each token's bytes, the specials marked."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        # special tokens (<|im_end|> …) decode to nothing; llguidance wants them prefixed with
        # 0xFF so that grammar text never matches them
        num = min(vocab_size, tokenizer.vocab_size)
        self.special_token_ids = [i for i in range(num) if tokenizer.decode([i]) == ""]
        special = set(self.special_token_ids)
        self.tokens = [b"\xff" + tokenizer.token_bytes(i) if i in special else tokenizer.token_bytes(i)
                       for i in range(num)]
        self.tokens += [b"\xff<pad>"] * (vocab_size - num)  # rows the model has past the tokenizer
        self.eos_token_id = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)
