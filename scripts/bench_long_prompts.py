"""Time to first token for long prompts, and a decode stream's inter-token latency beside one.

Runs the engine in process (no HTTP: at these lengths the server adds milliseconds to seconds),
default settings unless flags say otherwise, one request at a time:

    python scripts/bench_long_prompts.py --lengths 500,1000,2000,4000,8000
    python scripts/bench_long_prompts.py --lengths 8000 --beside      # a decode stream beside it
    python scripts/bench_long_prompts.py --step-times 256,512,1024 --contexts 0,4000,7000
    python scripts/bench_long_prompts.py --llama-server http://127.0.0.1:8080   # side by side

Prompts are exactly N tokens of clients/bench.py's seeded synthetic text (distinct per length,
so no prefix-cache hits). TTFT: add_request → the step that returns the first token. With
--beside, a 32-token-prompt request decodes alone for --decode-tokens steps (solo inter-token
latency), then the long prompt arrives and its chunks share steps with the decode stream: the
decode stream's inter-token gaps while the prefill runs are reported (p50, p99, max).
With --step-times, one engine step's forward pass is timed directly (the cache's contents do not
change its cost): a decode alone, and a decode beside a prefill chunk of each size starting at
each context position: the inter-token latency a stream sees beside that chunk.
With --llama-server URL, each length is also sent, as the same token ids, to a running llama.cpp
llama-server (/completion, one token, no prompt cache; started with -c above the longest prompt
and the same model file) right after gptserve's run: its TTFT is the request's wall time, and
its own prompt_ms is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import httpx
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after PYTHONPATH

from clients.bench import synthetic_prompt  # noqa: E402
from engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from engine.layers.attention import AttentionRow  # noqa: E402


def prompt_ids(engine: LLMEngine, num_tokens: int, seed: int) -> list[int]:
    ids: list[int] = []
    part = 0
    while len(ids) < num_tokens:
        ids += engine.tokenizer.encode(synthetic_prompt(seed, f"long{num_tokens}.{part}", 1000))
        part += 1
    return ids[:num_tokens]


def ttft(engine: LLMEngine, ids: list[int], request_id: str) -> float:
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    start = time.perf_counter()
    engine.add_request(request_id, ids, params)
    first = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if first is None and out.outputs and out.outputs[0].token_ids:
                first = time.perf_counter() - start
    return first


def beside(engine: LLMEngine, long_ids: list[int], decode_tokens: int) -> dict:
    """Inter-token gaps of a decode stream alone, then while a long prompt prefills."""
    stream = SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True)  # more than it will run
    engine.add_request("stream", prompt_ids(engine, 32, seed=7), stream)
    times: list[float] = []

    def step() -> bool:  # True when the long prompt got its first token
        done = False
        for out in engine.step():
            if out.request_id == "stream" and out.outputs[0].token_ids:
                times.append(time.perf_counter())
            elif out.request_id == "long" and out.outputs and out.outputs[0].token_ids:
                done = True
        return done

    while len(times) < decode_tokens + 1:
        step()
    solo = [b - a for a, b in zip(times, times[1:])]
    times.clear()
    start = time.perf_counter()
    engine.add_request("long", long_ids, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    while not step():
        pass
    long_ttft = time.perf_counter() - start
    engine.abort_request("stream")
    while engine.has_unfinished_requests():
        engine.step()
    during = [b - a for a, b in zip([start] + times, times)]

    def stats(gaps: list[float]) -> dict:
        gaps = sorted(gaps)
        return {"n": len(gaps), "p50_ms": 1e3 * statistics.median(gaps),
                "p99_ms": 1e3 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], "max_ms": 1e3 * gaps[-1]}

    return {"prompt_tokens": len(long_ids), "ttft_s": long_ttft, "solo": stats(solo), "beside_prefill": stats(during)}


def llama_server_ttft(url: str, ids: list[int]) -> dict:
    """One request's wall time (prefill and a token) and llama-server's own prompt_ms."""
    body = {"prompt": ids, "n_predict": 1, "cache_prompt": False, "temperature": 0}
    start = time.perf_counter()
    reply = httpx.post(f"{url.rstrip('/')}/completion", json=body, timeout=3600)
    wall = time.perf_counter() - start
    reply.raise_for_status()
    timings = reply.json()["timings"]
    if timings["prompt_n"] < len(ids):
        raise SystemExit(f"llama-server evaluated {timings['prompt_n']} of {len(ids)} prompt tokens (cached?)")
    return {"ttft_s": wall, "prompt_ms": timings["prompt_ms"]}


@torch.inference_mode()
def step_time(engine: LLMEngine, chunk: int, context: int, reps: int = 2) -> float:
    """Seconds for one forward pass: a decode at position 99 plus ``chunk`` prompt tokens at
    positions context .. context + chunk - 1 (chunk 0: the decode alone)."""
    bs, total = engine.config.block_size, context + chunk
    decode_len = 100
    rows = [AttentionRow(decode_len - 1, 1, list(range(8)))]
    if chunk:
        rows.append(AttentionRow(context, chunk, list(range(8, 8 + -(-total // bs)))))
    positions = [decode_len - 1] + list(range(context, total))
    runner = engine.runner
    best = float("inf")
    for _ in range(reps):
        meta = runner.attention.build_metadata(rows, bs)
        start = time.perf_counter()
        hidden = runner.attention.forward(torch.full((1 + chunk,), 5), torch.tensor(positions), runner.kv_cache, meta)
        runner.model.compute_logits(hidden[[0, -1]])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="500,1000,2000,4000,8000", help="prompt lengths in tokens")
    p.add_argument("--model", default=None, help="a .gguf file or Hugging Face folder (default: built-in SmolLM2)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="tokens per step (default: engine's)")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--max-decode-slowdown", type=float, default=None,
                   help="prefill pacing beside decodes (default: engine's; 0: off)")
    p.add_argument("--beside", action="store_true", help="measure a decode stream's latency beside each prompt")
    p.add_argument("--decode-tokens", type=int, default=20, help="solo decode steps measured first (--beside)")
    p.add_argument("--step-times", default=None, metavar="CHUNKS", help="time single steps with these chunk sizes")
    p.add_argument("--contexts", default="0,4000,7000", help="--step-times: positions the chunks start at")
    p.add_argument("--llama-server", default=None, metavar="URL",
                   help="also time each prompt on this llama-server (same model file), after gptserve")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    kw = {"max_num_batched_tokens": args.max_num_batched_tokens} if args.max_num_batched_tokens else {}
    if args.max_decode_slowdown is not None:
        kw["max_decode_slowdown"] = args.max_decode_slowdown
    longest = max(lengths + [int(c) + int(k) for c in (args.step_times or "0").split(",")
                             for k in args.contexts.split(",")])
    engine = LLMEngine(EngineConfig(model=args.model, max_model_len=max(longest, 1100) + 64,
                                    kv_cache_dtype=args.kv_cache_dtype, **kw))
    ttft(engine, prompt_ids(engine, 64, seed=99), "warmup")
    if args.step_times:
        results = {"decode_alone_ms": 1e3 * step_time(engine, 0, 0, reps=5), "chunks": []}
        print(f"decode alone: {results['decode_alone_ms']:.0f} ms", flush=True)
        for context in (int(x) for x in args.contexts.split(",")):
            for chunk in (int(x) for x in args.step_times.split(",")):
                ms = 1e3 * step_time(engine, chunk, context)
                results["chunks"].append({"chunk": chunk, "context": context, "step_ms": ms})
                print(f"decode + {chunk}-token chunk at position {context}: {ms:.0f} ms", flush=True)
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=2)
        return
    results = []
    for n in lengths:
        ids = prompt_ids(engine, n, seed=n)
        loadavg = open("/proc/loadavg").read().split()[:3]  # the machine may be shared: say how busy it was
        if args.beside:
            row = beside(engine, ids, args.decode_tokens)
            print(f"{n:>6} tokens: TTFT {row['ttft_s']:.2f} s; decode ITL solo p50 {row['solo']['p50_ms']:.0f} ms, "
                  f"beside the prefill p50 {row['beside_prefill']['p50_ms']:.0f} / p99 "
                  f"{row['beside_prefill']['p99_ms']:.0f} / max {row['beside_prefill']['max_ms']:.0f} ms", flush=True)
        else:
            row = {"prompt_tokens": n, "ttft_s": ttft(engine, ids, f"p{n}")}
            print(f"{n:>6} tokens: TTFT {row['ttft_s']:.2f} s", flush=True)
        row["loadavg"] = loadavg
        if args.llama_server:
            row["llama_server"] = llama_server_ttft(args.llama_server, ids)
            print(f"{n:>6} tokens: llama-server TTFT {row['llama_server']['ttft_s']:.2f} s "
                  f"(its prompt_ms {row['llama_server']['prompt_ms']:.0f}); load before both {' '.join(loadavg)}",
                  flush=True)
        results.append(row)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
