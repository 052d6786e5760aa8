"""The block-format GEMM (engine/csrc/quant_cpu.h) on every kernel variant this CPU can run.

Two yardsticks per format: gguf's own numpy dequantize + a float64 matmul (the product within
the error that quantizing the activations to 8 bits per block allows), and a numpy copy of
ggml-cpu's integer arithmetic (activations quantized per block, exact integer block sums, one
scale multiply per block), which the kernel must match up to float summation order.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import Q4_K, dequantize, quantize

from engine.layers import cpu_kernels
from engine.layers.blocks import INTERLEAVED_TYPES, NATIVE_TYPES, BlockEmbedding, BlockTensor
from tests.tiny_models import random_kquant_blocks

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason="the C++ kernels could not be built here")

ISAS = kernels.supported_isas() if kernels is not None else []
FORMATS = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
K_FORMATS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]  # super-blocks of 256, against Q8_K activations
INTERLEAVABLE = FORMATS + [Q.Q4_K]  # held 8 rows at a time by the engine (engine/layers/blocks.py)
_BLOCKS = {
    Q.Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
    Q.Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    Q.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    Q.Q5_0: np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    Q.Q5_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    Q.Q4_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)]),
    Q.Q5_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)]),
    Q.Q6_K: np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")]),
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


def quantize_activations_k(x: np.ndarray):
    """ggml's quantize_row_q8_K_ref: per block of 256, the value of largest magnitude (the first)
    maps to -127: iscale = -127/max, q = min(127, rint(x*iscale)), d = 1/iscale.
    Returns q (T, nb, 256) int64 and d (T, nb) float32."""
    xb = x.reshape(x.shape[0], -1, 256).astype(np.float32)
    top = np.take_along_axis(xb, np.abs(xb).argmax(-1)[..., None], -1)[..., 0]
    with np.errstate(divide="ignore"):
        iscale = np.where(top != 0, np.float32(-127) / top, np.float32(0)).astype(np.float32)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(127, np.rint(xb * iscale[..., None])).astype(np.int64)
    return q, d


def _unpack(raw: np.ndarray, qtype):
    """Weight blocks as integers: value = (d sc) q - (dmin mn), sc and mn per group of values.
    Returns q (N, nb, n) int64, sc and mn (N, nb, groups) int64, d and dmin (N, nb) float32."""
    b = raw.view(_BLOCKS[qtype]).reshape(raw.shape[0], -1)  # (N, nb)
    shape = b.shape
    ones, no_min = np.ones((*shape, 1), np.int64), np.zeros(shape, np.float32)
    if qtype == Q.Q8_0:
        return b["qs"].astype(np.int64), ones, 0 * ones, b["d"].astype(np.float32), no_min
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
        nib = b["qs"].astype(np.int64)
        q = np.concatenate([nib & 15, nib >> 4], axis=-1)  # values 0..15, the file's order
        if qtype in (Q.Q5_0, Q.Q5_1):  # bit i of qh: value i's fifth bit
            q = q | (((b["qh"].astype(np.int64)[..., None] >> np.arange(32)) & 1) << 4)
        q = q - {Q.Q4_0: 8, Q.Q5_0: 16}.get(qtype, 0)
        if qtype in (Q.Q4_1, Q.Q5_1):  # + m: a min of 1 times -m
            return q, ones, ones, b["d"].astype(np.float32), -b["m"].astype(np.float32)
        return q, ones, 0 * ones, b["d"].astype(np.float32), no_min
    if qtype == Q.Q6_K:
        ql, qh = b["ql"].astype(np.int64).reshape(*shape, 2, 64), b["qh"].astype(np.int64).reshape(*shape, 2, 32)
        lo = np.concatenate([ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-1)
        hi = (qh[..., None, :] >> np.array([0, 2, 4, 6])[:, None]) & 3  # (.., 2, 4, 32)
        q = (lo | (hi.reshape(*shape, 2, 128) << 4)).reshape(*shape, 256) - 32
        sc = b["scales"].astype(np.int64)
        return q, sc, 0 * sc, b["d"].astype(np.float32), no_min
    sc, mn = Q4_K.get_scale_min(b["scales"].reshape(-1, 12))  # gguf's reading of the 6-bit scales
    nib = b["qs"].astype(np.int64).reshape(*shape, 4, 1, 32)
    q = np.concatenate([nib & 15, nib >> 4], axis=-2).reshape(*shape, 256)  # sub-block 2c low, 2c+1 high
    if qtype == Q.Q5_K:  # bit j of qh[l]: the fifth bit of sub-block j's value l
        q = q | ((((b["qh"].astype(np.int64)[..., None, :] >> np.arange(8)[:, None]) & 1) << 4).reshape(*shape, 256))
    return (q, sc.reshape(*shape, 8).astype(np.int64), mn.reshape(*shape, 8).astype(np.int64),
            b["d"].astype(np.float32), b["dmin"].astype(np.float32))


def reference_matmul(x: np.ndarray, raw: np.ndarray, qtype) -> np.ndarray:
    """ggml's block dot products in numpy: exact integer sums, float32 scale products.
    Returns the product (T, N) and the sum of the magnitudes of its terms."""
    wq, sc, mn, wd, wdmin = _unpack(raw, qtype)
    size = wq.shape[-1] // sc.shape[-1]  # values per scale
    if qtype in K_FORMATS:
        q, d = quantize_activations_k(x)
        xsum = q.reshape(*q.shape[:2], -1, size).sum(-1)  # what ggml reads from the 16-sums
        mins = np.einsum("tbg,nbg->tnb", xsum, mn).astype(np.float32)
    else:
        q, d, s = quantize_activations(x)
        mins = s[:, None]  # Q8_1's s = fp16(d sum(q)), which meets the min
    prods = np.einsum("tbgj,nbgj->tnbg", q.reshape(*q.shape[:2], -1, size), wq.reshape(*wq.shape[:2], -1, size))
    sumi = np.einsum("tnbg,nbg->tnb", prods, sc).astype(np.float32)  # exact before: |sums| < 2^31
    dmin = wdmin[None] * d[:, None] if qtype in K_FORMATS else wdmin[None]  # Q8_1's s holds d already
    terms = (wd[None] * d[:, None]) * sumi - dmin * mins
    return terms.astype(np.float64).sum(-1), np.abs(terms).astype(np.float64).sum(-1)


def random_weights(qtype, n, k, rng):
    if qtype in K_FORMATS:
        return random_kquant_blocks(n * k, qtype, rng).reshape(n, -1)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[:, :32] += 0.02  # a block with a non-zero mean (Q4_1's min term)
    return np.ascontiguousarray(quantize(w, qtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", FORMATS + K_FORMATS, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens", [1, 3, 16, 33])
def test_block_matmul(isa, qtype, num_tokens):
    rng = np.random.default_rng(int(qtype) * 100 + num_tokens)
    n, k = 37, 512  # 37 rows: whole 4-row tiles and a remainder; two K super-blocks
    block = 256 if qtype in K_FORMATS else 32
    raw = random_weights(qtype, n, k, rng)
    x = rng.standard_normal((num_tokens, k)).astype(np.float32)
    x[0, 5] = 30.0  # an outlier: its block's other values get few levels
    if num_tokens > 1:
        x[1, 256:512] = 0.0  # an all-zero block (scale 0)
    got = kernels.quant_matmul(torch.from_numpy(x), torch.from_numpy(raw), int(qtype), n, k, isa).numpy()
    # the same integer arithmetic as ggml: equal up to the order the block terms are added in
    want, magnitude = reference_matmul(x, raw, qtype)
    np.testing.assert_array_less(np.abs(got - want), 1e-5 * magnitude + 1e-6)
    # and the float product of gguf's dequantized weights, within the activations' rounding:
    # each value moves by at most half a step (amax/254) plus fp16 rounding of the scale
    w = dequantize(raw, qtype).astype(np.float64)
    exact = x.astype(np.float64) @ w.T
    step = np.abs(x).reshape(num_tokens, -1, block).max(-1) / 254
    bound = (np.repeat(step, block, axis=1) + 1e-3 * np.abs(x)) @ np.abs(w).T + 1e-5
    np.testing.assert_array_less(np.abs(got - exact), bound)
    # (256 values share the outlier's scale in a K block: coarser steps for the rest)
    assert np.abs(got - exact).max() < (0.05 if block == 32 else 0.1) * np.abs(exact).max()


def interleaved(raw: np.ndarray, qtype, k: int) -> torch.Tensor:
    return kernels.quant_interleave(torch.from_numpy(raw), int(qtype), k)


@pytest.mark.parametrize("qtype", INTERLEAVABLE, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens", [1, 3, 4, 7, 33])
def test_interleaved_matmul(qtype, num_tokens):
    """The 32-value formats and Q4_K as the engine holds them (rows interleaved 8 at a time,
    engine/csrc/quant_formats.h): the same bytes reordered (back again: the file's rows), the same
    integer arithmetic as ggml (up to the order the block terms are added in), and one result in
    bits on every variant, the portable one included, and for any number of activation rows
    (tiles of 4 and the remainders)."""
    rng = np.random.default_rng(int(qtype) * 10 + num_tokens)
    n, k = 40, 512  # five groups of 8 rows
    raw = random_weights(qtype, n, k, rng)
    w = interleaved(raw, qtype, k)
    # the same bytes (Q4_K: its 6-bit scales and mins a byte each), reordered
    assert w.shape == (n // 8, 8 * raw.shape[1] + (32 * 2 if qtype == Q.Q4_K else 0))
    assert not torch.equal(w[:, :8 * raw.shape[1]].reshape(n, -1), torch.from_numpy(raw))
    assert torch.equal(kernels.quant_deinterleave(w, int(qtype), k), torch.from_numpy(raw))
    x = rng.standard_normal((num_tokens, k)).astype(np.float32)
    x[0, 5] = 30.0
    if num_tokens > 1:
        x[1, 256:512] = 0.0
    code = int(qtype) | kernels.INTERLEAVED
    outs = [kernels.quant_matmul(torch.from_numpy(x), w, code, n, k, isa) for isa in ISAS]
    want, magnitude = reference_matmul(x, raw, qtype)
    np.testing.assert_array_less(np.abs(outs[0].numpy() - want), 1e-5 * magnitude + 1e-6)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    # and close to the rows as stored (the other kernel: its float sums go in another order)
    torch.testing.assert_close(outs[0], kernels.quant_matmul(torch.from_numpy(x), torch.from_numpy(raw), int(qtype),
                                                             n, k), rtol=1e-5, atol=1e-5)


def test_interleaving_covers_what_the_engine_interleaves_and_refuses_the_rest():
    rng = np.random.default_rng(3)
    assert {t for t in Q if kernels.can_interleave(int(t))} == INTERLEAVED_TYPES == set(INTERLEAVABLE)
    with pytest.raises(RuntimeError, match="whole groups of 8"):
        kernels.quant_interleave(torch.from_numpy(random_weights(Q.Q4_0, 12, 64, rng)), int(Q.Q4_0), 64)
    with pytest.raises(RuntimeError, match="no interleaved kernel"):
        kernels.quant_interleave(torch.from_numpy(random_weights(Q.Q6_K, 8, 256, rng)), int(Q.Q6_K), 256)
    w = interleaved(random_weights(Q.Q4_1, 16, 64, rng), Q.Q4_1, 64)
    x = torch.zeros(2, 64)
    with pytest.raises(RuntimeError, match="whole groups of 8"):
        kernels.quant_matmul(x, w, int(Q.Q4_1) | kernels.INTERLEAVED, 12, 64)
    with pytest.raises(RuntimeError, match="expected"):
        kernels.quant_matmul(x, w[:, :-1], int(Q.Q4_1) | kernels.INTERLEAVED, 16, 64)
    with pytest.raises(RuntimeError, match="no interleaved kernel"):
        kernels.quant_matmul(torch.zeros(2, 256), torch.zeros(1, 8 * 210, dtype=torch.uint8),
                             int(Q.Q6_K) | kernels.INTERLEAVED, 8, 256)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=lambda t: t.name)
def test_an_embedding_looks_rows_up_in_its_interleaved_copy(qtype):
    """A tied embedding shares the output layer's interleaved blocks: a lookup gives the file's rows."""
    rng = np.random.default_rng(5)
    raw = random_weights(qtype, 48, 64, rng)
    tensor = BlockTensor(torch.from_numpy(raw), qtype, (48, 64))
    copy = tensor.interleave()
    assert copy.interleaved and torch.equal(copy.file_rows(), tensor.raw)
    ids = torch.tensor([[0, 7, 8, 47], [13, 13, 40, 1]])
    plain, shared = BlockEmbedding(tensor), BlockEmbedding(tensor)
    shared.share(copy)
    assert torch.equal(shared(ids), plain(ids))
    np.testing.assert_array_equal(plain(ids).numpy(), dequantize(raw, qtype)[ids.numpy()])


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q4_K], ids=lambda t: t.name)
def test_rows_split_across_threads_give_the_same_bits(qtype):
    """`make test` runs with one thread (OMP_NUM_THREADS=1); a served model uses every core, its
    rows' tiles split between threads: each output is still computed whole by one thread, in
    the same order, so the result does not depend on the thread count."""
    rng = np.random.default_rng(7)
    n, k = 101, 512
    raw = torch.from_numpy(random_weights(qtype, n, k, rng))
    x = torch.from_numpy(rng.standard_normal((16, k)).astype(np.float32))
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(kernels.quant_matmul(x, raw, int(qtype), n, k, "auto"))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype, layout", [(t, "file") for t in FORMATS + K_FORMATS] +
                         [(t, "interleaved") for t in INTERLEAVABLE], ids=lambda v: getattr(v, "name", v))
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(isa, qtype, layout):
    """The kernels tile several activation rows together (a batch's tokens, a prompt's chunk) and
    a lone row another way; each row's outputs must be the same bits in any batch, or a request's
    tokens would depend on who else is being served."""
    rng = np.random.default_rng(int(qtype) + 50)
    n, k = (37 if layout == "file" else 40), 512
    raw = random_weights(qtype, n, k, rng)
    w, code = ((torch.from_numpy(raw), int(qtype)) if layout == "file" else
               (interleaved(raw, qtype, k), int(qtype) | kernels.INTERLEAVED))
    x = torch.from_numpy(rng.standard_normal((11, k)).astype(np.float32))
    together = kernels.quant_matmul(x, w, code, n, k, isa)
    for i in range(len(x)):
        alone = kernels.quant_matmul(x[i:i + 1], w, code, n, k, isa)
        assert torch.equal(alone[0], together[i]), f"row {i}"
    assert torch.equal(kernels.quant_matmul(x[3:10], w, code, n, k, isa), together[3:10])


def test_calls_from_several_threads_at_once():
    """The kernels' thread pool (engine/csrc/thread_pool.h) runs one job at a time; a call made
    while another thread's job runs (the engine's step beside an embedding model, say: both
    release the GIL) computes on its own thread, and both get their whole, right result."""
    rng = np.random.default_rng(8)
    n, k = 256, 512
    raw = torch.from_numpy(random_weights(Q.Q4_0, n, k, rng))
    xs = [torch.from_numpy(rng.standard_normal((4, k)).astype(np.float32)) for _ in range(4)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = [kernels.quant_matmul(x, raw, int(Q.Q4_0), n, k, "auto") for x in xs]
        with ThreadPoolExecutor(len(xs)) as pool:
            together = [f.result() for f in [pool.submit(lambda x=x: [kernels.quant_matmul(x, raw, int(Q.Q4_0), n, k,
                                                                                          "auto") for _ in range(50)])
                                            for x in xs]]
    finally:
        torch.set_num_threads(before)
    for want, got in zip(alone, together):
        assert all(torch.equal(want, g) for g in got)


@pytest.mark.parametrize("isa", ISAS)
def test_one_call_mixes_formats(isa):
    """A Q4_K_M file's fused q/k/v: Q4_K beside Q6_K, and Q8_0 / Q5_0 parts that need the other
    activations (Q8_0 per 32, Q8_K per 256), some interleaved: each part as if it were alone."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((5, 256)).astype(np.float32))
    parts = [(Q.Q4_K, 8), (Q.Q6_K, 5), (Q.Q8_0, 4), (Q.Q4_K, 3), (Q.Q5_0, 16), (Q.Q4_K, 16)]
    raws = [torch.from_numpy(random_weights(t, n, 256, rng)) for t, n in parts]
    codes = [int(t) for t, _ in parts]
    for i in (4, 5):  # and two parts interleaved, as the engine holds them
        raws[i] = kernels.quant_interleave(raws[i], codes[i], 256)
        codes[i] |= kernels.INTERLEAVED
    try:
        kernels.set_isa(isa)
        got = kernels.quant_matmul_parts(x, raws, codes, [n for _, n in parts], 256)
    finally:
        kernels.set_isa("auto")
    alone = [kernels.quant_matmul(x, raw, code, n, 256, isa) for raw, code, (_, n) in zip(raws, codes, parts)]
    torch.testing.assert_close(got, torch.cat(alone, dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("qtype", FORMATS + K_FORMATS, ids=lambda t: t.name)
def test_dequantize_rows_matches_gguf(qtype):
    rng = np.random.default_rng(1)
    k = 512 if qtype in K_FORMATS else 96
    raw = random_weights(qtype, 9, k, rng)
    got = kernels.quant_dequantize(torch.from_numpy(raw), int(qtype), k).numpy()
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
        kernels.quant_matmul(x, raw, int(Q.Q3_K), 8, 64)
    # K formats hold 256 values a block: a row of 640 (Gemma 3 270M's hidden size) is no whole number of them
    with pytest.raises(RuntimeError, match="not a multiple of 256"):
        kernels.quant_matmul(torch.zeros(1, 640), torch.zeros(8, 360, dtype=torch.uint8), int(Q.Q4_K), 8, 640)
    with pytest.raises(RuntimeError, match="unknown CPU ISA"):
        kernels.quant_matmul(x, raw, int(Q.Q4_1), 8, 64, "sse9")


def test_the_engine_keeps_as_blocks_what_the_kernels_compute_on():
    # the block formats here, F16/BF16 in tests/engine/test_half_kernels.py
    assert {Q(t) for t in kernels.native_types()} == NATIVE_TYPES == set(FORMATS + K_FORMATS) | {Q.F16, Q.BF16}


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
