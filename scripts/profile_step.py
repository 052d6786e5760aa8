"""Where one decode step's time goes: torch.profiler over steady-state decode steps.

    .venv/bin/python scripts/profile_step.py --batch 16 --context 128 [--quantization int8]

Builds an LLMEngine on the default model (or --model), starts --batch greedy sequences with
--context-token prompts, lets them reach decode, then times --steps decode steps (wall clock)
and profiles a few more, printing the ops by self CPU time, then a summary of where a step's time
goes: self CPU time grouped by kind of op (linear layers, attention, KV cache reads/writes,
element-wise and norms, sampling, copies and allocation, other), each as ms/step and as a share
of the wall time of a profiled step, and the rest of that wall time (Python, scheduling, anything
no op accounts for). ``--json-out FILE`` writes the summary and the top ops as JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from engine import EngineConfig, LLMEngine, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=128, help="prompt tokens per sequence")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=int, default=25, help="ops to list")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--python-layers", action="store_true", help="the Python decoder layers, not the C++ stack")
    ap.add_argument("--kv-cache-dtype", default="auto", help="auto | float16")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps under the profiler")
    ap.add_argument("--json-out", default=None, help="write the summary as JSON")
    args = ap.parse_args()

    engine = LLMEngine(EngineConfig(model=args.model, quantization=args.quantization, num_threads=args.threads,
                                    cpu_kernels=not args.python_layers, kv_cache_dtype=args.kv_cache_dtype,
                                    max_num_seqs=max(args.batch, 1), max_model_len=2048))
    params = SamplingParams(temperature=0, max_tokens=1024, ignore_eos=True)
    for i in range(args.batch):
        prompt = [(i * 7919 + j * 31) % 40000 + 100 for j in range(args.context)]
        engine.add_request(f"r{i}", prompt, params)
    while engine.scheduler.waiting or any(s.num_uncomputed_tokens > 1 for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):
        engine.step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    dt = (time.perf_counter() - t0) / args.steps
    print(f"batch {args.batch}, context ~{args.context}, quantization {args.quantization}, "
          f"threads {torch.get_num_threads()}: {dt * 1e3:.1f} ms/step, {args.batch / dt:.0f} tok/s")
    if args.no_profile:
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.profile_steps):
            engine.step()
        profiled_wall = (time.perf_counter() - t0) / args.profile_steps
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    summary = summarize(prof.key_averages(), args.profile_steps, profiled_wall)
    print(format_summary(summary))
    if args.json_out:
        summary.update(batch=args.batch, context=args.context, quantization=args.quantization,
                       threads=torch.get_num_threads(), unprofiled_ms_per_step=dt * 1e3)
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


# Kinds of op, first match wins (names as torch.profiler lists them; lower-case substrings).
CATEGORIES = [
    ("linear layers (matmul)", ("addmm", "aten::mm", "matmul", "linear", "bmm", "int8pack", "fbgemm",
                                "quantized::", "onednn", "mkldnn")),
    ("attention", ("scaled_dot_product", "attention", "softmax", "baddbmm")),
    ("KV cache read/write", ("index_put", "index_copy", "index_select", "gather", "scatter", "aten::index",
                             "masked_select", "take")),
    ("sampling", ("argmax", "topk", "sort", "multinomial", "cumsum", "exponential", "argsort", "max")),
    ("element-wise, norms, rotary", ("mul", "add", "sub", "div", "rsqrt", "pow", "mean", "silu", "sigmoid",
                                     "activate", "neg", "cat", "exp", "where", "sum", "masked_fill",
                                     "lt", "gt", "le", "ge", "eq", "ne", "embedding", "sin", "cos", "sqrt", "norm")),
    ("copies, views, allocation", ("copy", "to", "empty", "zeros", "ones", "full", "clone", "contiguous",
                                   "view", "reshape", "slice", "select", "transpose", "permute", "expand",
                                   "as_strided", "unsqueeze", "squeeze", "narrow", "split", "chunk", "stack",
                                   "fill", "arange", "tensor", "item", "local_scalar", "detach", "t")),
]


def categorize(name: str) -> str:
    low = name.lower()
    bare = low.split("::", 1)[-1]
    for category, keys in CATEGORIES:
        for key in keys:
            if ("::" in key or len(key) > 2) and key in low:
                return category
            if len(key) <= 2 and bare.strip("_") == key:  # "t", "to": whole names only
                return category
    return "other ops"


def summarize(events, steps: int, wall_s_per_step: float) -> dict:
    """Self CPU time by kind of op, per step, against the wall time of a profiled step."""
    per_cat: dict[str, float] = {}
    ops = []
    for e in events:
        self_ms = e.self_cpu_time_total / 1e3 / steps
        if self_ms <= 0:
            continue
        cat = categorize(e.key)
        per_cat[cat] = per_cat.get(cat, 0.0) + self_ms
        ops.append({"op": e.key, "category": cat, "self_ms_per_step": self_ms, "calls_per_step": e.count / steps})
    wall_ms = wall_s_per_step * 1e3
    op_ms = sum(per_cat.values())
    rows = sorted(per_cat.items(), key=lambda kv: -kv[1])
    rows.append(("not in any op (Python, scheduling, host work)", max(wall_ms - op_ms, 0.0)))
    return {
        "profiled_wall_ms_per_step": wall_ms, "op_self_ms_per_step": op_ms,
        "categories": [{"category": c, "ms_per_step": ms, "share_of_wall": ms / wall_ms if wall_ms else None}
                       for c, ms in rows],
        "top_ops": sorted(ops, key=lambda o: -o["self_ms_per_step"])[:25],
    }


def format_summary(summary: dict) -> str:
    lines = [f"where a decode step's time goes (profiled: {summary['profiled_wall_ms_per_step']:.1f} ms/step "
             f"wall, the profiler's own overhead included; ops' self CPU time {summary['op_self_ms_per_step']:.1f} ms):"]
    for row in summary["categories"]:
        share = row["share_of_wall"]
        lines.append(f"  {row['category']:<48} {row['ms_per_step']:8.2f} ms  {share * 100 if share else 0:5.1f} %")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
