"""GPU speed: gptserve's engine against Hugging Face transformers' ``generate``, same device,
same model file, greedy, fixed lengths (EOS ignored).

    .venv/bin/python scripts/bench_gpu.py                          # CUDA: batch 1 and 256, 256 tokens
    .venv/bin/python scripts/bench_gpu.py --device cpu --batch-sizes 1,4 --output-tokens 16

For each batch size B: B distinct prompts of --prompt-tokens tokens (seeded English-word text,
tokenized and cut to length; new prompts on every repeat, so the prefix cache is never hit),
--output-tokens greedy tokens each.

- gptserve: ``LLMEngine`` (``add_request`` for all B, then ``step`` until done: what
  ``LLMEngine.generate`` does, timed per step), ``ignore_eos``. B = 1 is batch-1 decode;
  B = 256 is 256 sequences in flight at once (concurrency 256).
- transformers: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` (transformers
  dequantizes the GGUF) in the same dtype, ``generate(do_sample=False, min_new_tokens =
  max_new_tokens)``, batch B as one tensor with left padding (a no-op here: the prompts have
  equal lengths) and its default dynamic KV cache (``--hf-cache-implementation static`` for the
  static one).

Reported per (implementation, B), the median of --repeat runs after one warm-up run:
``output_tok_s`` = B x output tokens / wall time (prefill included), ``ttft_s`` = time until every
sequence has its first token (prefill), ``decode_tok_s`` = tokens after the first / time after
TTFT (what a decode step rate gives), ``per_seq_decode_tok_s`` = decode_tok_s / B. transformers'
TTFT comes from a separate ``max_new_tokens=1`` call. Greedy agreement: leading tokens where
gptserve and transformers chose the same ids, per sequence (bf16 makes them part ways sooner or
later; fp32 on CPU should agree for a good while). Prints a table; writes JSON (--json-out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clients.bench import synthetic_prompt  # noqa: E402
from engine import EngineConfig, LLMEngine, SamplingParams, default_model_path  # noqa: E402

GOAL_BATCH1_DECODE_TOK_S = 2000  # targets on an H100-class GPU: batch-1 decode, 256 streams
GOAL_CONC256_OUTPUT_TOK_S = 50000


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default=None,
                   help="a .gguf file (both implementations) or a Hugging Face folder "
                        "(default: the built-in SmolLM2-135M-Instruct Q4_1 GGUF)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="auto = bfloat16 on CUDA, float32 on CPU (both implementations)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 256], help="default 1,256")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per point; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads")
    p.add_argument("--kv-cache-memory-gb", type=float, default=None,
                   help="gptserve's KV pool (default: enough for the largest batch, at least 2)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="gptserve (default: the engine's)")
    p.add_argument("--quantization", default=None, help="gptserve: e.g. int8 (CPU)")
    p.add_argument("--skip-gptserve", action="store_true")
    p.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    p.add_argument("--hf-cache-implementation", default=None, help="transformers: e.g. static")
    p.add_argument("--json-out", default=None)
    return p


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def make_prompts(tokenizer, count: int, length: int, seed: int, tag: str) -> list[list[int]]:
    """``count`` distinct prompts of exactly ``length`` token ids (seeded English-word text)."""
    prompts = []
    for i in range(count):
        ids: list[int] = []
        part = 0
        while len(ids) < length:
            ids += tokenizer.encode(synthetic_prompt(seed, f"gpu-{tag}-{i}-{part}", max(length, 8)),
                                    add_special_tokens=False)
            part += 1
        prompts.append(ids[:length])
    return prompts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_gptserve(engine: LLMEngine, prompts: list[list[int]], output_tokens: int, device: torch.device) -> dict:
    """What LLMEngine.generate does (add every request, step until done), with step times."""
    params = SamplingParams(temperature=0.0, max_tokens=output_tokens, ignore_eos=True)
    ids = [f"bench-{time.perf_counter_ns()}-{i}" for i in range(len(prompts))]
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    sync(device)
    t0 = time.perf_counter()
    for rid, prompt in zip(ids, prompts):
        engine.add_request(rid, prompt, params)
    t_first = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:
                tokens[out.request_id] += c.token_ids
        if t_first is None and all(tokens.values()):
            t_first = time.perf_counter()
    sync(device)
    t1 = time.perf_counter()
    return _timing([tokens[rid] for rid in ids], t0, t_first, t1)


def _timing(seqs: list[list[int]], t0: float, t_first: float | None, t1: float) -> dict:
    total = sum(len(s) for s in seqs)
    wall = t1 - t0
    ttft = (t_first - t0) if t_first is not None else None
    decode_time = (t1 - t_first) if t_first is not None else None
    decode_tokens = total - len(seqs)
    return {
        "output_tokens": total, "wall_s": wall, "ttft_s": ttft,
        "output_tok_s": total / wall if wall > 0 else None,
        "decode_tok_s": decode_tokens / decode_time if decode_time and decode_tokens > 0 else None,
        "token_ids": seqs,
    }


def load_hf(model_path: str, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM

    path = Path(model_path)
    if path.is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()  # older transformers call the keyword torch_dtype


def run_hf(model, prompts: list[list[int]], output_tokens: int, device: torch.device, pad_id: int,
           cache_implementation: str | None) -> dict:
    """One batched greedy ``generate`` (left padding), EOS kept out by min_new_tokens; TTFT when
    generate hands its streamer the first new tokens, in the same call (a separate 1-token call
    timed apart could take longer than the whole run on a tiny model: a negative decode time)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=pad_id, temperature=None, top_p=None,
                  top_k=None)
    if cache_implementation:
        kwargs["cache_implementation"] = cache_implementation
    class FirstTokenClock:  # generate's streamer: put(prompt ids), then put(new tokens) once a step
        def __init__(self) -> None:
            self.puts, self.t_first = 0, None

        def put(self, value) -> None:
            self.puts += 1
            if self.puts == 2:
                sync(device)
                self.t_first = time.perf_counter()

        def end(self) -> None:
            pass

    clock = FirstTokenClock()
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(input_ids, max_new_tokens=output_tokens, min_new_tokens=output_tokens,
                             streamer=clock, **kwargs)
        sync(device)
        t1 = time.perf_counter()
    seqs = out[:, width:].tolist()
    return _timing(seqs, t0, clock.t_first, t1)


def median_of(runs: list[dict]) -> dict:
    out = {"runs": len(runs)}
    for key in ("output_tokens", "wall_s", "ttft_s", "output_tok_s", "decode_tok_s"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["wall_s_all"] = [r["wall_s"] for r in runs]
    out["output_tok_s_all"] = [r["output_tok_s"] for r in runs]
    return out


def agreement(a: list[list[int]], b: list[list[int]]) -> list[int]:
    """Per sequence: how many leading token ids are the same."""
    result = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        result.append(n)
    return result


def format_table(rows: list[dict]) -> str:
    head = ["impl", "batch", "out tok", "wall s", "TTFT ms", "out tok/s", "decode tok/s", "decode tok/s/seq"]
    lines = [head]
    f = (lambda v, nd=1: "-" if v is None else f"{v:.{nd}f}")
    for r in rows:
        dec = r["decode_tok_s"]
        lines.append([r["impl"], str(r["batch"]), str(int(r["output_tokens"] or 0)), f(r["wall_s"], 2),
                      f(r["ttft_s"] * 1000 if r["ttft_s"] is not None else None), f(r["output_tok_s"]), f(dec),
                      f(dec / r["batch"] if dec else None)])
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(x, widths))) for x in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.prompt_tokens < 1 or args.output_tokens < 2 or args.repeat < 1:
        print("bench_gpu: --prompt-tokens >= 1, --output-tokens >= 2, --repeat >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (use --device cpu for a small CPU run)", file=sys.stderr)
        return 2
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, device)
    model_path = args.model or str(default_model_path())
    max_batch = max(args.batch_sizes)
    max_len = args.prompt_tokens + args.output_tokens + 16
    report: dict = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "device_arg": str(device), "dtype": str(dtype).removeprefix("torch."), "model": model_path,
        "torch": torch.__version__, "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "config": {k: getattr(args, k) for k in ("batch_sizes", "prompt_tokens", "output_tokens", "repeat", "seed",
                                                  "quantization", "max_num_batched_tokens",
                                                  "hf_cache_implementation")},
        "results": [],
    }
    engine = None
    if not args.skip_gptserve:
        engine_kwargs: dict = {}
        if args.max_num_batched_tokens:
            engine_kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
        if args.kv_cache_memory_gb:
            engine_kwargs["kv_cache_memory_gb"] = args.kv_cache_memory_gb
        else:  # room for every sequence of the largest batch at full length: no preemption
            block_size = EngineConfig.block_size
            engine_kwargs["num_kv_blocks"] = max_batch * -(-max_len // block_size) + 16
        engine = LLMEngine(EngineConfig(
            model=model_path, device=str(device), dtype=args.dtype, max_num_seqs=max_batch, max_model_len=max_len,
            quantization=args.quantization, num_threads=args.threads, **engine_kwargs))
        report["gptserve_kv_blocks"] = engine.block_manager.num_blocks
        tokenizer = engine.tokenizer
    else:
        from engine import Tokenizer
        tokenizer = Tokenizer.load(model_path)
    report["gptserve_commit"] = _git_head()

    hf_model = None
    if not args.skip_hf:
        import transformers
        report["transformers"] = transformers.__version__
        hf_model = load_hf(model_path, dtype, device)
        pad_id = hf_model.config.pad_token_id
        if pad_id is None:
            pad_id = hf_model.config.eos_token_id if isinstance(hf_model.config.eos_token_id, int) else 0

    token_ids: dict[tuple[str, int], list[list[int]]] = {}
    for batch in args.batch_sizes:
        for impl in ("gptserve", "transformers"):
            if (impl == "gptserve" and engine is None) or (impl == "transformers" and hf_model is None):
                continue
            runs = []
            for rep in range(args.repeat + 1):  # run 0 warms up (kernels, CUDA graphs, caches)
                prompts = make_prompts(tokenizer, batch, args.prompt_tokens, args.seed, f"{batch}-{rep}")
                if impl == "gptserve":
                    r = run_gptserve(engine, prompts, args.output_tokens, device)
                else:
                    r = run_hf(hf_model, prompts, args.output_tokens, device, pad_id, args.hf_cache_implementation)
                if rep == 0:
                    token_ids[(impl, batch)] = r["token_ids"]  # warm-up prompts: the same for both impls
                    continue
                runs.append(r)
            row = {"impl": impl, "batch": batch, **median_of(runs)}
            row["per_seq_decode_tok_s"] = row["decode_tok_s"] / batch if row["decode_tok_s"] else None
            lengths = {len(s) for r in runs for s in r["token_ids"]}
            row["tokens_per_sequence"] = sorted(lengths)
            report["results"].append(row)
            print(f"{impl} batch {batch}: {row['output_tok_s']:.1f} output tok/s", file=sys.stderr, flush=True)

    report["greedy_agreement"] = {}
    for batch in args.batch_sizes:
        a, b = token_ids.get(("gptserve", batch)), token_ids.get(("transformers", batch))
        if a and b:
            agree = agreement(a, b)
            report["greedy_agreement"][str(batch)] = {
                "leading_tokens_equal_min": min(agree), "leading_tokens_equal_median": statistics.median(agree),
                "sequences_fully_equal": sum(1 for n in agree if n == args.output_tokens), "sequences": len(agree)}

    if device.type == "cuda":
        by = {(r["impl"], r["batch"]): r for r in report["results"]}
        goals = {}
        if ("gptserve", 1) in by and by[("gptserve", 1)]["decode_tok_s"]:
            goals["batch1_decode_tok_s"] = by[("gptserve", 1)]["decode_tok_s"]
            goals["batch1_decode_goal_met"] = goals["batch1_decode_tok_s"] >= GOAL_BATCH1_DECODE_TOK_S
        if ("gptserve", 256) in by:
            goals["conc256_output_tok_s"] = by[("gptserve", 256)]["output_tok_s"]
            goals["conc256_goal_met"] = goals["conc256_output_tok_s"] >= GOAL_CONC256_OUTPUT_TOK_S
        report["targets"] = goals

    print(f"device: {report['device']} ({report['device_arg']}), dtype {report['dtype']}, model {model_path}")
    print(f"prompt {args.prompt_tokens} tokens, output {args.output_tokens} tokens (EOS ignored), greedy; "
          f"median of {args.repeat} run(s) after a warm-up")
    print(format_table(report["results"]))
    for batch, agree in report["greedy_agreement"].items():
        print(f"greedy agreement, batch {batch}: {agree['sequences_fully_equal']}/{agree['sequences']} sequences "
              f"identical; leading equal tokens min {agree['leading_tokens_equal_min']}, "
              f"median {agree['leading_tokens_equal_median']}")
    if report.get("targets"):
        print("targets: " + json.dumps(report["targets"]))
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


def _git_head() -> str | None:
    try:
        import subprocess
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
