"""The block-format GEMM (engine/csrc/quant_cpu.h) on every kernel variant this CPU can run.

Two yardsticks per format: gguf's own numpy dequantize + a float64 matmul (the product within
the error that quantizing the activations to 8 bits per block allows), and a numpy copy of
ggml-cpu's integer arithmetic (activations quantized per block, exact integer block sums, one
scale multiply per block), which the kernel must match up to float summation order.
"""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from engine.layers import cpu_kernels

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason="the C++ kernels could not be built here")

ISAS = kernels.supported_isas() if kernels is not None else []
FORMATS = [Q.Q8_0, Q.Q4_0, Q.Q4_1]
_BLOCKS = {
    Q.Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
    Q.Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    Q.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
}


def quantize_activations(x: np.ndarray):
    """ggml-cpu's x86 quantize_row_q8_0/q8_1: per block of 32, d = amax/127 (fp16), q = rint(x*127/amax),
    s = fp16(d * sum(q)). Returns q (T, nb, 32) int64, d and s (T, nb) float32."""
    xb = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    amax = np.abs(xb).max(-1)
    d = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.rint(xb * inv[..., None]).astype(np.int64)
    s = (d * q.sum(-1).astype(np.float32)).astype(np.float16).astype(np.float32)
    return q, d.astype(np.float16).astype(np.float32), s


def reference_matmul(x: np.ndarray, raw: np.ndarray, qtype) -> np.ndarray:
    """ggml's block dot products in numpy: exact integer sums, float32 scale products."""
    q, d, s = quantize_activations(x)
    blocks = raw.view(_BLOCKS[qtype]).reshape(raw.shape[0], -1)  # (N, nb)
    wd = blocks["d"].astype(np.float32)
    if qtype == Q.Q8_0:
        wq = blocks["qs"].astype(np.int64)
    else:
        nib = blocks["qs"].astype(np.int64)
        wq = np.concatenate([nib & 15, nib >> 4], axis=-1)  # values 0..15, the file's order
        if qtype == Q.Q4_0:
            wq = wq - 8
    sumi = np.einsum("tbj,nbj->tnb", q, wq).astype(np.float32)  # exact: |values| < 2^24
    terms = (wd[None] * d[:, None]) * sumi
    if qtype == Q.Q4_1:
        terms = terms + blocks["m"].astype(np.float32)[None] * s[:, None]
    return terms.astype(np.float64).sum(-1), np.abs(terms).astype(np.float64).sum(-1)


def random_weights(qtype, n, k, rng):
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[:, :32] += 0.02  # a block with a non-zero mean (Q4_1's min term)
    return np.ascontiguousarray(quantize(w, qtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", FORMATS, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens", [1, 3, 16, 33])
def test_block_matmul(isa, qtype, num_tokens):
    rng = np.random.default_rng(int(qtype) * 100 + num_tokens)
    n, k = 37, 256  # 37 rows: whole 4-row tiles and a remainder
    raw = random_weights(qtype, n, k, rng)
    x = rng.standard_normal((num_tokens, k)).astype(np.float32)
    x[0, 5] = 30.0  # an outlier: its block's other values get few levels
    if num_tokens > 1:
        x[1, 64:96] = 0.0  # an all-zero block (scale 0)
    got = kernels.quant_matmul(torch.from_numpy(x), torch.from_numpy(raw), int(qtype), n, k, isa).numpy()
    # the same integer arithmetic as ggml: equal up to the order the block terms are added in
    want, magnitude = reference_matmul(x, raw, qtype)
    np.testing.assert_array_less(np.abs(got - want), 1e-5 * magnitude + 1e-6)
    # and the float product of gguf's dequantized weights, within the activations' rounding:
    # each value moves by at most half a step (amax/254) plus fp16 rounding of the scale
    w = dequantize(raw, qtype).astype(np.float64)
    exact = x.astype(np.float64) @ w.T
    step = np.abs(x).reshape(num_tokens, -1, 32).max(-1) / 254
    bound = (np.repeat(step, 32, axis=1) + 1e-3 * np.abs(x)) @ np.abs(w).T + 1e-5
    np.testing.assert_array_less(np.abs(got - exact), bound)
    assert np.abs(got - exact).max() < 0.05 * np.abs(exact).max()


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda t: t.name)
def test_dequantize_rows_matches_gguf(qtype):
    rng = np.random.default_rng(1)
    raw = random_weights(qtype, 9, 96, rng)
    got = kernels.quant_dequantize(torch.from_numpy(raw), int(qtype), 96).numpy()
    np.testing.assert_array_equal(got, dequantize(raw, qtype))


def test_variants_agree_and_bad_input_is_refused():
    rng = np.random.default_rng(2)
    raw = torch.from_numpy(random_weights(Q.Q4_1, 8, 64, rng))
    x = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32))
    outs = [kernels.quant_matmul(x, raw, int(Q.Q4_1), 8, 64, isa) for isa in ISAS]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="expected"):
        kernels.quant_matmul(x, raw[:, :-1], int(Q.Q4_1), 8, 64)
    with pytest.raises(RuntimeError, match="native kernel"):
        kernels.quant_matmul(x, raw, int(Q.Q6_K), 8, 64)
    with pytest.raises(RuntimeError, match="unknown CPU ISA"):
        kernels.quant_matmul(x, raw, int(Q.Q4_1), 8, 64, "sse9")


def test_set_isa_chooses_the_variant_later_calls_use():
    """What GPTSERVE_CPU_ISA does at load (engine/layers/cpu_kernels.py): every later call, the C++
    stack's included, runs that variant; one the CPU lacks is refused by name."""
    rng = np.random.default_rng(3)
    raw = torch.from_numpy(random_weights(Q.Q8_0, 12, 64, rng))
    x = torch.from_numpy(rng.standard_normal((3, 64)).astype(np.float32))
    try:
        for isa in ISAS:
            assert kernels.set_isa(isa) == isa
            torch.testing.assert_close(kernels.quant_matmul(x, raw, int(Q.Q8_0), 12, 64),
                                       kernels.quant_matmul(x, raw, int(Q.Q8_0), 12, 64, isa), rtol=0, atol=0)
        for isa in {"avx512", "avx2"} - set(ISAS):
            with pytest.raises(RuntimeError, match="cannot run"):
                kernels.set_isa(isa)
    finally:
        kernels.set_isa("auto")
    assert kernels.set_isa("auto") == ISAS[-1]  # the widest by default
