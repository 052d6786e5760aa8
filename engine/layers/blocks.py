"""Weights kept in a GGUF block format (the file's bytes) and the layers that compute on them.

A ``BlockTensor`` is a 2-D weight as the file stores it: uint8 rows of blocks (rows = output
features), memory-mapped from the file where it can be; fused projections stack them by rows
without copying (``StackedBlocks``). F16 and BF16 (a GGUF file's, or a Hugging Face
checkpoint's float16/bfloat16 weights) are held the same way, one 2-byte value per "block".
``BlockLinear`` multiplies with the C++ GEMM (engine/csrc/quant_cpu.h: activations quantized
per block of 32, or of 256 for the K formats, as ggml-cpu does, so the result is that file's
model; half_cpu.h for F16/BF16, float32 activations); ``BlockEmbedding`` dequantizes only the
rows a step looks up.
Both need the C++ kernels; the engine keeps a file quantized only when they load
(engine/model_loader.py), otherwise it dequantizes into the model's dtype (``dequantize_to``).

A ``BlockLinear`` holds the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and Q4_K
*interleaved*: the same bytes reordered once at load so that 8 rows' blocks sit together
(engine/csrc/quant_formats.h; Q4_K's 6-bit scales unpacked to a byte each), which the GEMM
multiplies 8 rows at a time: 2-3x faster than rows as stored for the 32-value formats. A file-mapped
weight's pages are released from the process once copied (they stay in the page cache), so
memory stays about the file's size. A tied embedding looks its rows up in the interleaved copy.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from torch import nn

# ggml types the C++ kernels compute on directly (engine/csrc/quant_formats.h); others are
# dequantized at load. A Q4_K_M file is Q4_K and Q6_K, with Q5_0 (or Q5_1, Q8_0) for the tensors
# whose rows are not whole K blocks of 256.
NATIVE_TYPES = frozenset({
    GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K,
    GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
})
# the formats BlockLinear holds interleaved 8 rows at a time (engine/csrc/quant_formats.h's
# can_interleave, kept equal by a test)
INTERLEAVED_TYPES = frozenset({
    GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_K,
})
DEQUANTIZE_VALUES_AT_ONCE = 1 << 20  # dequantize_to's pieces: 4 MB of float32
# the 16-bit float types, as torch names them: their rows are torch tensors of these viewed as bytes
HALF_DTYPES = {GGMLQuantizationType.F16: torch.float16, GGMLQuantizationType.BF16: torch.bfloat16}


@dataclass
class BlockTensor:
    """A (rows, cols) weight as raw GGUF blocks: ``raw`` uint8 (rows, bytes per row), or with
    ``interleaved`` (rows / 8, 8 x bytes per row), 8 rows' blocks together (see above).
    ``mapped``: ``raw`` is a view of a read-only file mapping (a GGUF file's tensor)."""

    raw: torch.Tensor
    qtype: GGMLQuantizationType
    shape: tuple[int, int]
    interleaved: bool = False
    mapped: bool = False

    @classmethod
    def from_numpy(cls, raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, int],
                   mapped: bool = False) -> BlockTensor:
        with warnings.catch_warnings():  # a read-only memory map: nothing ever writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(torch.from_numpy(raw), GGMLQuantizationType(qtype), (int(shape[0]), int(shape[1])),
                       mapped=mapped)

    @classmethod
    def from_half(cls, weight: torch.Tensor) -> BlockTensor:
        """A float16/bfloat16 (rows, cols) tensor as F16/BF16 rows, its bytes shared (no copy when contiguous)."""
        qtype = next(q for q, dtype in HALF_DTYPES.items() if dtype == weight.dtype)
        return cls(weight.contiguous().view(torch.uint8), qtype, (weight.shape[0], weight.shape[1]))

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    @property
    def kernel_type(self) -> int:
        """The type code the C++ GEMM takes: the ggml type, with INTERLEAVED set for interleaved rows."""
        return int(self.qtype) | (_kernels().INTERLEAVED if self.interleaved else 0)

    def file_rows(self) -> torch.Tensor:
        """uint8 (rows, bytes per row): the blocks in the file's layout (a copy when interleaved)."""
        if not self.interleaved:
            return self.raw
        return _kernels().quant_deinterleave(self.raw, int(self.qtype), self.shape[1])

    def interleave(self) -> BlockTensor:
        """This weight with its rows interleaved 8 at a time, or itself where the format has no
        interleaved kernel (K formats, F16/BF16) or the rows are no whole groups of 8. A mapped
        source's pages are released from the process once copied."""
        if self.interleaved or self.qtype not in INTERLEAVED_TYPES or self.shape[0] % 8:
            return self
        kernels = _kernels()
        out = BlockTensor(kernels.quant_interleave(self.raw, int(self.qtype), self.shape[1]), self.qtype, self.shape,
                          interleaved=True)
        if self.mapped:
            kernels.release_file_pages(self.raw)
        return out

    def dequantize(self) -> torch.Tensor:
        """float32 (rows, cols): the torch reference path and formats without a kernel."""
        if self.qtype in HALF_DTYPES:
            return self.raw.view(HALF_DTYPES[self.qtype]).float()
        return torch.from_numpy(np.asarray(dequantize(self.file_rows().numpy(), self.qtype), dtype=np.float32))

    def dequantize_to(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(rows, cols) in ``dtype`` on ``device``, dequantized a few rows at a time: the float32
        temporaries on the host stay a few MB however large the matrix (a 128k-row vocabulary)."""
        rows, cols = self.shape
        raw = self.file_rows()
        out = torch.empty(rows, cols, dtype=dtype, device=device)
        step = max(1, DEQUANTIZE_VALUES_AT_ONCE // cols)
        for start in range(0, rows, step):
            part = BlockTensor(raw[start : start + step], self.qtype, (min(step, rows - start), cols))
            out[start : start + step].copy_(part.dequantize())
        return out


class StackedBlocks(list):
    """A fused projection's weights (q/k/v, gate/up) stacked by rows without copying them: the
    file's tensors side by side, each in its own format; the GEMM quantizes the input once."""

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self), self[0].shape[1]


def stack_rows(parts: list) -> StackedBlocks | torch.Tensor:
    """Stack weights by rows: as block parts when every one is a BlockTensor, else float32."""
    if all(isinstance(p, BlockTensor) for p in parts):
        return StackedBlocks(parts)
    return torch.cat([p.dequantize() if isinstance(p, BlockTensor) else p for p in parts])


def _kernels():
    from engine.layers.cpu_kernels import load

    module = load()
    if module is None:
        raise RuntimeError("block-format weights need the C++ CPU kernels (engine/layers/cpu_kernels.py)")
    return module


class BlockLinear(nn.Module):
    """y = x W^T (+ b) with W one GGUF block-format weight or several stacked by rows."""

    def __init__(self, weight: BlockTensor | StackedBlocks, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.parts = [p.interleave() for p in (weight if isinstance(weight, StackedBlocks) else [weight])]
        self.out_features, self.in_features = sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]
        if any(p.shape[1] != self.in_features for p in self.parts):
            raise ValueError("stacked weights must have the same number of columns")
        # what the C++ GEMM takes, fixed from here on: built once, not on every call
        self._kernel_args = ([p.raw for p in self.parts], [p.kernel_type for p in self.parts],
                             [p.shape[0] for p in self.parts], self.in_features)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)

    def kernel_args(self) -> tuple[list[torch.Tensor], list[int], list[int], int]:
        """(raw parts, ggml types (| INTERLEAVED), rows per part, in_features): what the C++ GEMM takes."""
        return self._kernel_args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        raws, types, rows, k = self.kernel_args()
        y = _kernels().quant_matmul_parts(x.reshape(-1, k), raws, types, rows, k)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


class BlockEmbedding(nn.Module):
    """Token embeddings in a GGUF block format: each lookup dequantizes only its rows."""

    def __init__(self, weight: BlockTensor) -> None:
        super().__init__()
        self.qtype = int(weight.qtype)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("blocks", weight.raw, persistent=False)
        self.interleaved, self.mapped = weight.interleaved, weight.mapped

    def block_tensor(self) -> BlockTensor:
        return BlockTensor(self.blocks, GGMLQuantizationType(self.qtype), (self.num_embeddings, self.embedding_dim),
                           interleaved=self.interleaved, mapped=self.mapped)

    def share(self, weight: BlockTensor) -> None:
        """Look rows up in ``weight`` from now on: the same matrix, interleaved for the output layer."""
        self.blocks, self.interleaved, self.mapped = weight.raw, weight.interleaved, weight.mapped

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if self.interleaved:  # the 8-row groups holding the ids, back in the file's layout, then the rows
            groups = _kernels().quant_deinterleave(self.blocks.index_select(0, flat // 8), self.qtype,
                                                   self.embedding_dim)
            rows = groups.index_select(0, torch.arange(len(flat)) * 8 + flat % 8)
        else:
            rows = self.blocks.index_select(0, flat)
        if self.qtype in HALF_DTYPES:
            return rows.view(HALF_DTYPES[self.qtype]).float().view(*ids.shape, self.embedding_dim)
        return _kernels().quant_dequantize(rows, self.qtype, self.embedding_dim).view(*ids.shape, self.embedding_dim)
