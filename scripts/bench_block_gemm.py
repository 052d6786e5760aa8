"""Multiply-adds per second of the block-format GEMM (engine/csrc/quant_cpu.h), format by format.

    python scripts/bench_block_gemm.py --formats Q4_0,Q4_K --shapes 2048x2048,8192x2048 --tokens 1,16,64 --threads 2

For each weight shape (out x in), format and number of activation rows T: the best of --repeat
timed calls of quant_matmul (the activations' quantization included, as in the model), as
G multiply-adds/s (T * out * in / seconds). The weights are random valid blocks: the speed does
not depend on the values. On a shared machine ``--clock cpu`` counts the process's CPU seconds (all
threads) instead of wall-clock ones, so a call that was preempted does not look slow.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.layers.cpu_kernels import load


def random_blocks(qtype: GGMLQuantizationType, rows: int, cols: int, rng: np.random.Generator) -> torch.Tensor:
    """(rows, row bytes) of random codes with small normal fp16 scales where the format keeps them."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
    scale = np.full(2, 1e-3, np.float16).view(np.uint8)
    if qtype == GGMLQuantizationType.Q6_K:
        raw[:, -2:] = scale[:2]  # d ends the block
    elif qtype in (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q4_K,
                   GGMLQuantizationType.Q5_K):
        raw[:, :4] = scale  # d, then m or dmin
    else:
        raw[:, :2] = scale[:2]
    return torch.from_numpy(raw.reshape(rows, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="Q4_0,Q4_K")
    parser.add_argument("--shapes", default="2048x2048,8192x2048")
    parser.add_argument("--tokens", default="1,16,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--isa", default="", help="avx512 | avx2 | scalar (default: the widest this CPU runs)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--layouts", default="file,interleaved",
                        help="file (rows as stored) and/or interleaved (8 rows at a time, as the engine holds the "
                             "32-value formats); formats without an interleaved kernel run as stored only")
    args = parser.parse_args()
    kernels = load()
    if kernels is None:
        raise SystemExit("the C++ kernels could not be built here")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"threads {args.threads}, isa {kernels.set_isa(args.isa or 'auto')}; G multiply-adds per {args.clock} "
          f"second, best of {args.repeat}")
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        for name in args.formats.split(","):
            qtype = GGMLQuantizationType[name]
            raw = random_blocks(qtype, n, k, rng)
            layouts = {"file": (raw, int(qtype))}
            if kernels.can_interleave(int(qtype)) and n % 8 == 0:
                layouts["interleaved"] = (kernels.quant_interleave(raw, int(qtype), k), int(qtype) | kernels.INTERLEAVED)
            for layout in args.layouts.split(","):
                if layout not in layouts:
                    continue
                w, type_code = layouts[layout]
                cells = []
                for tokens in (int(t) for t in args.tokens.split(",")):
                    x = torch.from_numpy(rng.standard_normal((tokens, k)).astype(np.float32))
                    kernels.quant_matmul(x, w, type_code, n, k)  # warm the caches and the thread pool
                    best = float("inf")
                    for _ in range(args.repeat):
                        start = clock()
                        kernels.quant_matmul(x, w, type_code, n, k)
                        best = min(best, clock() - start)
                    cells.append(f"T={tokens}: {tokens * n * k / best / 1e9:6.1f}")
                print(f"{shape:>10} {name:5} {layout:11} " + "  ".join(cells))


if __name__ == "__main__":
    main()
