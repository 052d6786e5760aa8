"""Weights kept in a GGUF block format (the file's bytes) and the layers that compute on them.

A ``BlockTensor`` is a 2-D weight as the file stores it: uint8 rows of blocks (rows = output
features), memory-mapped from the file where it can be. ``BlockLinear`` multiplies with the C++
block GEMM (engine/csrc/quant_cpu.h: activations quantized per block of 32 as ggml-cpu does, so
the result is that file's model); ``BlockEmbedding`` dequantizes only the rows a step looks up.
Both need the C++ kernels; the engine keeps a file quantized only when they load
(engine/llm_engine.py), otherwise it dequantizes to float32 as before.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from torch import nn

# ggml types the C++ kernels compute on directly; others are dequantized at load.
NATIVE_TYPES = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0})


@dataclass
class BlockTensor:
    """A (rows, cols) weight as raw GGUF blocks: ``raw`` uint8 (rows, bytes per row)."""

    raw: torch.Tensor
    qtype: GGMLQuantizationType
    shape: tuple[int, int]

    @classmethod
    def from_numpy(cls, raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, int]) -> BlockTensor:
        with warnings.catch_warnings():  # a read-only memory map: nothing ever writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(torch.from_numpy(raw), GGMLQuantizationType(qtype), (int(shape[0]), int(shape[1])))

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    def dequantize(self) -> torch.Tensor:
        """float32 (rows, cols): the torch reference path and formats without a kernel."""
        return torch.from_numpy(np.asarray(dequantize(self.raw.numpy(), self.qtype), dtype=np.float32))

    @staticmethod
    def cat(parts: list) -> BlockTensor | torch.Tensor:
        """Stack rows (fused q/k/v, gate/up): raw block rows when every part has one native type,
        else float32."""
        if all(isinstance(p, BlockTensor) for p in parts) and len({p.qtype for p in parts}) == 1 \
                and len({p.shape[1] for p in parts}) == 1:
            return BlockTensor(torch.cat([p.raw for p in parts]), parts[0].qtype,
                               (sum(p.shape[0] for p in parts), parts[0].shape[1]))
        return torch.cat([p.dequantize() if isinstance(p, BlockTensor) else p for p in parts])


def _kernels():
    from engine.layers.cpu_kernels import load

    module = load()
    if module is None:
        raise RuntimeError("block-format weights need the C++ CPU kernels (engine/layers/cpu_kernels.py)")
    return module


class BlockLinear(nn.Module):
    """y = x W^T (+ b) with W in a GGUF block format."""

    def __init__(self, weight: BlockTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.qtype = int(weight.qtype)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("blocks", weight.raw, persistent=False)  # (out, bytes per row) uint8
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)

    def block_tensor(self) -> BlockTensor:
        return BlockTensor(self.blocks, GGMLQuantizationType(self.qtype), (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = _kernels().quant_matmul(x.reshape(-1, self.in_features), self.blocks, self.qtype, self.out_features,
                                    self.in_features)
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

    def block_tensor(self) -> BlockTensor:
        return BlockTensor(self.blocks, GGMLQuantizationType(self.qtype), (self.num_embeddings, self.embedding_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.blocks.index_select(0, ids.reshape(-1))
        return _kernels().quant_dequantize(rows, self.qtype, self.embedding_dim).view(*ids.shape, self.embedding_dim)
