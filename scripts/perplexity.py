"""Perplexity of the engine on a fixed text (teacher-forced, through prompt logprobs), and how
much a quantization setting changes it.

    .venv/bin/python scripts/perplexity.py [--quantization int8] [--text scripts/data/perplexity.txt]

Prints the perplexity with the plain weights and with each setting given, and the mean
absolute difference of the per-token logprobs between them.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from engine import EngineConfig, LLMEngine, SamplingParams

DEFAULT_TEXT = Path(__file__).parent / "data" / "perplexity.txt"


def token_logprobs(quantization: str | None, model: str | None, text: str) -> list[float]:
    engine = LLMEngine(EngineConfig(model=model, quantization=quantization, max_model_len=2048))
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
    ap.add_argument("--quantization", action="append", default=[], help="a setting to compare (repeatable)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    args = ap.parse_args()
    text = Path(args.text).read_text()
    base = token_logprobs(None, args.model, text)
    print(f"{len(base) + 1} tokens of {args.text}")
    print(f"plain weights: perplexity {math.exp(-sum(base) / len(base)):.4f}")
    for quant in args.quantization:
        lps = token_logprobs(quant, args.model, text)
        ppl = math.exp(-sum(lps) / len(lps))
        diff = sum(abs(a - b) for a, b in zip(base, lps)) / len(lps)
        print(f"{quant}: perplexity {ppl:.4f}, mean |Δ logprob| {diff:.4f}")


if __name__ == "__main__":
    main()
