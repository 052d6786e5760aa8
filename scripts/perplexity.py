"""Perplexity of the engine on a fixed text (teacher-forced, through prompt logprobs), and how
much a quantization setting changes it.

    .venv/bin/python scripts/perplexity.py [--quantization int8|kv16|int8+kv16 ...] [--chunk 64] [--text FILE]

The text is prefilled in chunks of --chunk tokens, so that later chunks attend to earlier ones
through the KV cache (which is where a float16 cache rounds anything).

Prints the perplexity with the plain weights and with each setting given, and the mean
absolute difference of the per-token logprobs between them.

Side by side with llama.cpp's llama-perplexity on the same GGUF file and text:

    .venv/bin/python scripts/perplexity.py --model FILE.gguf --ctx 128 [--llama-perplexity BIN] [--dtype float32]

--ctx N scores the text as llama-perplexity does: the tokens (BOS first when the model adds one)
cut into windows of N, each window evaluated on its own with its first token replaced by BOS,
and only the predictions of its second half counted (positions N/2 .. N-2). With
--llama-perplexity it also runs that binary (`-c N -b N -t THREADS`) and prints both.
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
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
    return prompt_logprobs(engine, engine.tokenizer.encode(text, add_special_tokens=True)[: engine.max_model_len - 1])


def prompt_logprobs(engine: LLMEngine, ids: list[int]) -> list[float]:
    """Teacher-forced: entry i is the logprob of ids[i + 1] given ids[: i + 1]."""
    engine.add_request("ppl", ids, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    got = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            got = out.prompt_logprobs if out.prompt_logprobs is not None else got
    return [lp.logprob for lp in got[1:]]


def windowed_logprobs(model: str | None, dtype: str, text: str, ctx: int) -> list[float]:
    """Per-token logprobs scored exactly as llama-perplexity scores them (see the module doc)."""
    # a window of ctx tokens plus the one token a request must ask for
    engine = LLMEngine(EngineConfig(model=model, dtype=dtype, max_model_len=ctx + 1, max_num_batched_tokens=ctx))
    tok = engine.tokenizer
    ids = tok.encode(text, add_special_tokens=True)
    if len(ids) < 2 * ctx:
        raise SystemExit(f"the text has {len(ids)} tokens; llama-perplexity needs at least {2 * ctx} for --ctx {ctx}")
    first, scored = ctx // 2, []
    for start in range(0, len(ids) // ctx * ctx, ctx):
        window = ids[start:start + ctx]
        if tok.add_bos_token:
            window[0] = tok.bos_token_id
        scored += prompt_logprobs(engine, window)[first:ctx - 1]  # predictions at positions first .. ctx-2
    return scored


def llama_perplexity(binary: str, model: str, text_path: str, ctx: int, threads: int) -> float:
    res = subprocess.run([binary, "-m", model, "-f", text_path, "-c", str(ctx), "-b", str(ctx), "-t", str(threads)],
                         capture_output=True, text=True, check=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", res.stdout + res.stderr)
    if found is None:
        raise SystemExit(f"no final estimate in llama-perplexity's output:\n{res.stderr[-2000:]}")
    return float(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--quantization", action="append", default=[],
                    help="a setting to compare (repeatable): int8, kv16 (float16 KV cache) or int8+kv16")
    ap.add_argument("--chunk", type=int, default=64,
                    help="prefill chunk (tokens per step): later chunks read earlier ones from the KV cache")
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--ctx", type=int, default=None, help="score as llama-perplexity -c CTX does (module doc)")
    ap.add_argument("--dtype", default="auto", help="with --ctx: auto (the file's own blocks) or float32")
    ap.add_argument("--llama-perplexity", default=None, help="with --ctx: llama.cpp's binary, run on the same file")
    ap.add_argument("--threads", type=int, default=2, help="llama-perplexity -t")
    args = ap.parse_args()
    text = Path(args.text).read_text()
    if args.ctx:
        lps = windowed_logprobs(args.model, args.dtype, text, args.ctx)
        ours = math.exp(-sum(lps) / len(lps))
        print(f"gptserve ({args.dtype}): perplexity {ours:.4f} over {len(lps)} scored tokens, windows of {args.ctx}")
        if args.llama_perplexity:
            from engine.loader import default_model_path

            theirs = llama_perplexity(args.llama_perplexity, args.model or default_model_path(), args.text,
                                      args.ctx, args.threads)
            print(f"llama-perplexity: perplexity {theirs:.4f}; gptserve / llama-perplexity = {ours / theirs:.4f}")
        return
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
