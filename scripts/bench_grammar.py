"""Compare xgrammar and llguidance on the default model's vocabulary (SmolLM2, 49152 tokens).

For a typical JSON schema (an object with strings, an integer, an enum, an array and a nested
object) it measures, per library: the one-time tokenizer set-up, compiling the schema (cold, no
cache), the first mask, and the per-token cost of computing the next-token bitmask and accepting
the sampled token along a real token sequence of a valid answer.

    .venv/bin/python scripts/bench_grammar.py            # both libraries must be importable
    PYTHONPATH=/tmp/xgr .venv/bin/python scripts/bench_grammar.py   # xgrammar installed aside
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from engine import Tokenizer, default_model_path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "status": {"enum": ["active", "inactive", "pending"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "email", "status", "tags", "address"],
    "additionalProperties": False,
}
ANSWER = {
    "name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "status": "active",
    "tags": ["mathematics", "poetry", "engines"],
    "address": {"street": "12 St James's Square", "city": "London", "zip": "12345"},
}
REPEATS = 5


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def walk(fill, accept, token_ids):
    """Per token: ms to fill the bitmask, ms to accept the token."""
    fills, accepts = [], []
    for t in token_ids:
        fills.append(timed(fill)[1])
        ok, ms = timed(lambda: accept(t))
        accepts.append(ms)
        assert ok, f"token {t} rejected"
    return fills, accepts


def bench_xgrammar(tok: Tokenizer, vocab: list[bytes], token_ids: list[int]) -> dict:
    import xgrammar as xgr

    info, setup_ms = timed(lambda: xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=len(vocab),
                                                     stop_token_ids=tok.eos_token_ids))
    compile_ms, first_ms, fills, accepts = [], [], [], []
    for _ in range(REPEATS):
        compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        compiled, ms = timed(lambda: compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=True))
        compile_ms.append(ms)
        matcher = xgr.GrammarMatcher(compiled)
        bitmask = xgr.allocate_token_bitmask(1, len(vocab))
        first_ms.append(timed(lambda: matcher.fill_next_token_bitmask(bitmask))[1])
        matcher.reset()
        f, a = walk(lambda: matcher.fill_next_token_bitmask(bitmask), matcher.accept_token, token_ids + tok.eos_token_ids[:1])
        fills += f
        accepts += a
        assert matcher.is_terminated()
    logits = torch.randn(1, len(vocab))
    apply_ms = [timed(lambda: xgr.apply_token_bitmask_inplace(logits, bitmask))[1] for _ in range(50)]
    return {"setup": setup_ms, "compile": compile_ms, "first": first_ms, "fill": fills, "accept": accepts,
            "apply": apply_ms, "apply_what": "xgr.apply_token_bitmask_inplace"}


def bench_llguidance(tok: Tokenizer, vocab: list[bytes], token_ids: list[int]) -> dict:
    import llguidance
    import llguidance.torch as llgt

    def make_tokenizer():
        return llguidance.LLTokenizer(tok._tok.to_str(), n_vocab=len(vocab), eos_token=tok.eos_token_ids)

    lltok, setup_ms = timed(make_tokenizer)
    compile_ms, first_ms, fills, accepts = [], [], [], []
    for _ in range(REPEATS):
        def build():
            grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": True})
            return llguidance.LLMatcher(lltok, grammar)

        matcher, ms = timed(build)
        assert not matcher.is_error(), matcher.get_error()
        compile_ms.append(ms)
        bitmask = llgt.allocate_token_bitmask(1, len(vocab))
        first_ms.append(timed(lambda: llgt.fill_next_token_bitmask(matcher, bitmask))[1])
        f, a = walk(lambda: llgt.fill_next_token_bitmask(matcher, bitmask), matcher.consume_token,
                    token_ids + tok.eos_token_ids[:1])
        fills += f
        accepts += a
        assert matcher.is_stopped() or matcher.is_accepting()
    # gptserve's own batched application (engine/guided.py), which fills and applies in one go
    from engine.guided import GuidedMasker
    from server.structured import LLGuide

    masker = GuidedMasker(len(vocab), torch.device("cpu"))
    guide = LLGuide(llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)))
    logits = torch.randn(1, len(vocab))
    apply_ms = [timed(lambda: masker.apply(logits, [guide]))[1] for _ in range(50)]
    return {"setup": setup_ms, "compile": compile_ms, "first": first_ms, "fill": fills, "accept": accepts,
            "apply": apply_ms, "apply_what": "fill + GuidedMasker.apply"}


def report(name: str, r: dict, num_tokens: int) -> None:
    med = statistics.median
    line = (f"{name:11s} tokenizer set-up {r['setup']:7.1f} ms | schema compile {med(r['compile']):7.2f} ms"
            f" | first mask {med(r['first']):6.2f} ms | per token: mask p50 {med(r['fill']) * 1000:6.0f} us"
            f" p99 {sorted(r['fill'])[int(len(r['fill']) * 0.99)] * 1000:6.0f} us,"
            f" accept p50 {med(r['accept']) * 1000:5.0f} us ({num_tokens} tokens x {REPEATS})")
    if "apply" in r:
        line += f" | {r['apply_what']} on (1, V) logits {med(r['apply']) * 1000:.0f} us"
    print(line)


def main() -> None:
    torch.set_num_threads(1)
    tok = Tokenizer.load(default_model_path())
    vocab = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    token_ids = tok.encode(json.dumps(ANSWER), add_special_tokens=False)
    print(f"vocab {len(vocab)} tokens; schema {len(json.dumps(SCHEMA))} chars; answer {len(token_ids)} tokens")
    for name, fn in (("xgrammar", bench_xgrammar), ("llguidance", bench_llguidance)):
        try:
            report(name, fn(tok, vocab, token_ids), len(token_ids))
        except ImportError as exc:
            print(f"{name:11s} not importable: {exc}")


if __name__ == "__main__":
    main()
