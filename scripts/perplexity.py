"""Perplexity of the engine on a fixed text (teacher-forced, through prompt logprobs), and how
much a quantization setting changes it.

    .venv/bin/python scripts/perplexity.py [--quantization int8|kv16|int8+kv16 ...] [--chunk 64] [--text FILE]

The text is prefilled in chunks of --chunk tokens, so that later chunks attend to earlier ones
through the KV cache (which is where a float16 cache rounds anything).

Prints the perplexity with the plain weights and with each setting given, and the mean
absolute difference of the per-token logprobs between them.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from engine import EngineConfig, LLMEngine, SamplingParams

DEFAULT_TEXT = Path(__file__).parent / "data" / "perplexity.txt"


def token_logprobs(setting: str | None, model: str | None, text: str, chunk: int) -> list[float]:
    """setting: None (plain), or "+"-joined parts: "int8" (quantization), "kv16" (float16 KV cache)."""
    parts = set((setting or "").split("+")) - {"", "none"}
    unknown = parts - {"int8", "kv16"}
    if unknown:
        raise SystemExit(f"unknown setting {sorted(unknown)} (use int8, kv16, int8+kv16)")
    engine = LLMEngine(EngineConfig(model=model, quantization="int8" if "int8" in parts else None, max_model_len=2048,
                                    kv_cache_dtype="float16" if "kv16" in parts else "auto",
                                    max_num_batched_tokens=chunk))
    ids = engine.tokenizer.encode(text, add_special_tokens=True)[: engine.max_model_len - 1]
    engine.add_request("ppl", ids, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    got = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            got = out.prompt_logprobs if out.prompt_logprobs is not None else got
    return [lp.logprob for lp in got[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--quantization", action="append", default=[],
                    help="a setting to compare (repeatable): int8, kv16 (float16 KV cache) or int8+kv16")
    ap.add_argument("--chunk", type=int, default=64,
                    help="prefill chunk (tokens per step): later chunks read earlier ones from the KV cache")
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    args = ap.parse_args()
    text = Path(args.text).read_text()
    base = token_logprobs(None, args.model, text, args.chunk)
    print(f"{len(base) + 1} tokens of {args.text}")
    print(f"plain weights: perplexity {math.exp(-sum(base) / len(base)):.4f}")
    for quant in args.quantization:
        lps = token_logprobs(quant, args.model, text, args.chunk)
        ppl = math.exp(-sum(lps) / len(lps))
        diff = sum(abs(a - b) for a, b in zip(base, lps)) / len(lps)
        print(f"{quant}: perplexity {ppl:.4f}, mean |Δ logprob| {diff:.4f}")


if __name__ == "__main__":
    main()
