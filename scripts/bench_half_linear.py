"""One linear layer on the CPU: the F16/BF16 kernel (engine/csrc/half_cpu.h, weights as stored)
against torch's F.linear in float32 and in bfloat16, at a few token counts.

    python scripts/bench_half_linear.py --n 2048 --k 2048 --threads 2 --tokens 1 16 64

Prints the best of --repeats runs per case in milliseconds, the cases taking turns (the best, and
turns: the machine may be shared):
wall-clock time, or with --cpu-time the CPU time of all the process's threads (time.process_time),
which a busy shared machine disturbs less (time waiting for a core is not counted).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from engine.layers.blocks import BlockTensor
from engine.layers.cpu_kernels import load


def best_ms(calls: dict, repeats: int, clock) -> dict:
    """The best time of each call over ``repeats`` rounds, each round running every call once."""
    for fn in calls.values():  # warm up
        fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for key, fn in calls.items():
            t0 = clock()
            fn()
            best[key] = min(best[key], clock() - t0)
    return {key: t * 1e3 for key, t in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="output features")
    parser.add_argument("--k", type=int, default=2048, help="input features")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cpu-time", action="store_true", help="CPU time of all threads, not wall-clock time")
    parser.add_argument("--isa", default="", help="avx512 | avx2 | scalar (default: the widest this CPU runs)")
    args = parser.parse_args()
    kernels = load()
    if kernels is None:
        raise SystemExit("the C++ kernels did not build here")
    torch.set_num_threads(args.threads)
    w32 = torch.randn(args.n, args.k) * 0.02
    cases = {"torch float32": lambda x: F.linear(x, w32)}
    w16 = w32.bfloat16()
    cases["torch bfloat16"] = lambda x: F.linear(x.bfloat16(), w16)
    for dtype in (torch.bfloat16, torch.float16):
        blocks = BlockTensor.from_half(w32.to(dtype))
        cases[f"half_cpu.h {blocks.qtype.name}"] = (
            lambda x, b=blocks: kernels.quant_matmul(x, b.raw, int(b.qtype), args.n, args.k, args.isa))
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"{args.n}x{args.k}, {args.threads} threads, ISA {args.isa or kernels.supported_isas()[-1]}; "
          f"{'CPU' if args.cpu_time else 'wall'} ms (best of {args.repeats})")
    print(f"{'':>18}" + "".join(f"{f'T={t}':>10}" for t in args.tokens))
    inputs = {t: torch.randn(t, args.k) for t in args.tokens}
    ms = best_ms({(name, t): (lambda fn=fn, x=inputs[t]: fn(x)) for name, fn in cases.items() for t in args.tokens},
                 args.repeats, clock)
    for name in cases:
        print(f"{name:>18}" + "".join(f"{ms[name, t]:>10.3f}" for t in args.tokens))


if __name__ == "__main__":
    main()
