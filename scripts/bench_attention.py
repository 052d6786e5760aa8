"""Decode and prefill attention of the C++ stack alone, on a paged KV pool of random values.

    python scripts/bench_attention.py                       # SmolLM2's heads (9 / 3 KV, head_dim 64)
    python scripts/bench_attention.py --decode 16x128,64x128 --prefill 512x3072 --kv-cache-dtype float16

--decode BxC: B sequences of C cached tokens, one query each (a decode step), timed over a pool
of --layers layers' worth of cache, one layer after the other, so each call reads its keys and
values from memory as a served model's step does (a single layer's would sit in the cache).
Reports ms per layer, multiply-adds per second and the KV bytes read per second.
--prefill NxC: one chunk of N new queries at the end of C cached tokens (flash-attention tiles
over the pool), timed on one layer. The block tables are shuffled, as a pool's are.
"""
from __future__ import annotations

import argparse
import time

import torch

from engine.layers.cpu_kernels import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode", default="16x128,64x128,16x1024")
    parser.add_argument("--prefill", default="512x3072")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-cache-dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    kernels = load()
    if kernels is None:
        raise SystemExit("the C++ kernels could not be built here")
    torch.set_num_threads(args.threads)
    H, Hkv, D, bs = args.heads, args.kv_heads, args.head_dim, args.block_size
    dtype = getattr(torch, args.kv_cache_dtype)
    stack = kernels.LlamaStack(H, Hkv, D, H * D, 4 * H * D, 1e-5, torch.zeros(1, 0), torch.zeros(1, 0))
    print(f"heads {H} / {Hkv} KV, head_dim {D}, {args.kv_cache_dtype} pool, {args.threads} threads; best of "
          f"{args.repeat}")
    for spec in filter(None, args.decode.split(",")):
        B, ctx = (int(v) for v in spec.split("x"))
        per_seq = -(-ctx // bs)
        blocks = B * per_seq + 8
        cache = torch.randn(args.layers, 2, blocks, bs, Hkv, D).to(dtype)
        tables = torch.randperm(blocks)[: B * per_seq].view(B, per_seq).contiguous()
        lens = torch.full((B,), ctx, dtype=torch.int64)
        q = torch.randn(B, H, D)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            for layer in range(args.layers):
                stack.decode_attention(q, cache[layer], tables, lens)
            best = min(best, (time.perf_counter() - start) / args.layers)
        macs = B * H * ctx * D * 2
        kv_bytes = B * ctx * Hkv * D * 2 * cache.element_size()
        print(f"decode  B={B:<4} context {ctx:<6} {best * 1e3:8.3f} ms/layer  {macs / best / 1e9:6.1f} G mul-add/s  "
              f"{kv_bytes / best / 1e9:5.1f} GB/s of KV")
    for spec in filter(None, args.prefill.split(",")):
        n, ctx = (int(v) for v in spec.split("x"))
        per_seq = -(-ctx // bs)
        cache = torch.randn(2, per_seq + 8, bs, Hkv, D).to(dtype)
        table = torch.randperm(per_seq + 8)[:per_seq].contiguous()
        q = torch.randn(n, H, D)
        stack.prefill_attention(q, cache, [[0, n, ctx]], [table])  # warm the pool and the threads
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            stack.prefill_attention(q, cache, [[0, n, ctx]], [table])
            best = min(best, time.perf_counter() - start)
        macs = n * H * (ctx - (n - 1) / 2) * D * 2  # causal: query i of the chunk sees ctx - n + i + 1 keys
        print(f"prefill {n} queries over {ctx} keys: {best * 1e3:8.1f} ms  {macs / best / 1e9:6.1f} G mul-add/s")


if __name__ == "__main__":
    main()
