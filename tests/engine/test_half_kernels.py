"""The F16 / BF16 GEMM (engine/csrc/half_cpu.h) on every kernel variant this CPU can run, against
a float64 product of the exact weights: the activations stay float32, so the only error is float32
summation (no rounding of the activations to 16 bits, as ggml-cpu's x86 path does)."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

from engine.layers import cpu_kernels
from engine.layers.blocks import HALF_DTYPES, BlockEmbedding, BlockLinear, BlockTensor, StackedBlocks

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason="the C++ kernels could not be built here")

ISAS = kernels.supported_isas() if kernels is not None else []


def half_weights(qtype, n, k, seed) -> torch.Tensor:
    """(n, k) weights in ``qtype``'s torch dtype: what a checkpoint stores."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen) * 0.05).to(HALF_DTYPES[qtype])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16], ids=lambda t: t.name)
# 212: a tail shorter than a vector (4 values past AVX2's 8 lanes); 1100 and 70: more columns and
# tokens than the kernel takes in one block (65536 / 66 -> 992 columns, 66 tokens)
@pytest.mark.parametrize("num_tokens, k", [(1, 256), (3, 212), (16, 256), (33, 212), (1, 1100), (70, 1100)])
def test_half_matmul_equals_the_float64_product(isa, qtype, num_tokens, k):
    n = 37  # whole tiles of 4 rows and a remainder
    w = half_weights(qtype, n, k, seed=num_tokens)
    x = torch.randn(num_tokens, k, generator=torch.Generator().manual_seed(k))
    x[0, 5] = 30.0  # an outlier: rounding x to 16 bits would cost it most
    raw = BlockTensor.from_half(w).raw
    got = kernels.quant_matmul(x, raw, int(qtype), n, k, isa).numpy()
    exact = x.double().numpy() @ w.double().numpy().T
    magnitude = np.abs(x.double().numpy()) @ np.abs(w.double().numpy()).T
    # float32 summation alone; rounding x to F16 (or BF16) would be off by 5e-4 (4e-3) of the magnitude
    np.testing.assert_array_less(np.abs(got - exact), 1e-5 * magnitude + 1e-7)


def test_a_fused_projection_mixes_half_and_block_parts():
    """q/k/v as the file has them, each in its own format: one call equals the parts side by side."""
    rng = np.random.default_rng(4)
    k = 128
    x = torch.from_numpy(rng.standard_normal((5, k)).astype(np.float32))
    q8 = torch.from_numpy(quantize(rng.standard_normal((24, k)).astype(np.float32) * 0.05, Q.Q8_0))
    bf = BlockTensor.from_half(half_weights(Q.BF16, 16, k, seed=1)).raw
    f16 = BlockTensor.from_half(half_weights(Q.F16, 8, k, seed=2)).raw
    fused = kernels.quant_matmul_parts(x, [q8, bf, f16], [int(Q.Q8_0), int(Q.BF16), int(Q.F16)], [24, 16, 8], k)
    parts = [kernels.quant_matmul(x, w, int(t), n, k) for w, t, n in ((q8, Q.Q8_0, 24), (bf, Q.BF16, 16),
                                                                       (f16, Q.F16, 8))]
    torch.testing.assert_close(fused, torch.cat(parts, 1), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="expected"):
        kernels.quant_matmul(x, bf[:, :-2], int(Q.BF16), 16, k)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16], ids=lambda t: t.name)
def test_half_layers_compute_on_the_stored_values(qtype):
    weight = half_weights(qtype, 40, 64, seed=3)
    blocks = BlockTensor.from_half(weight)
    assert blocks.raw.data_ptr() == weight.data_ptr()  # the checkpoint's bytes, not a copy
    torch.testing.assert_close(blocks.dequantize(), weight.float(), rtol=0, atol=0)
    ids = torch.tensor([[3, 0], [39, 3]])
    torch.testing.assert_close(BlockEmbedding(blocks)(ids), weight.float()[ids], rtol=0, atol=0)
    x = torch.randn(2, 7, 64)
    linear = BlockLinear(StackedBlocks([blocks, blocks]))
    want = torch.nn.functional.linear(x.double(), torch.cat([weight, weight]).double()).float()
    torch.testing.assert_close(linear(x), want, rtol=1e-5, atol=1e-6)
