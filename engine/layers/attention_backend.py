"""Attention backends: what computes a model's decoder layers over the paged KV cache, and the
per-step metadata those layers read.

A backend is chosen once per model (``select_backend``). The model runner hands it each step's
rows (``AttentionRow``: where a sequence starts, how many tokens, its block table) laid out
``decodes_first``; ``build_metadata`` turns them into what its layers need, and ``forward`` runs
the model with them: token ids in, hidden states after the final norm out.

- ``TorchBackend``: the model's own Python layers, attention by ``paged_attention``
  (engine/layers/attention.py, with the masks built once per step). Any device, any dtype: the
  reference every other path is tested against.
- ``CpuStackBackend``: the C++ decoder stack (engine/layers/cpu_stack.py) for a float32 CPU model
  when the kernels load. Its attention is fused into the layer loop (norm, projections, rotary,
  cache write, attention, MLP in one call), so it takes the whole decoder, not the attention
  alone; it masks by position itself and needs no mask tensors.

A GPU backend slots in beside them: its own metadata from the same rows (a flash-attention
kernel's cumulative lengths, say) and its own forward.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.attention import AttentionMetadata, AttentionRow
from engine.layers.cpu_stack import CpuStack, build_cpu_stack


class AttentionBackend:
    """The interface: ``description`` names the decoder layers in the load log."""

    description: str

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device

    def build_metadata(self, rows: list[AttentionRow], block_size: int) -> AttentionMetadata:
        """A step's rows, decodes first → what this backend's layers read."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions (T,); kv_caches (L, 2, num_blocks, block_size, Hkv, D) -> hidden (T, hidden)."""
        raise NotImplementedError


class TorchBackend(AttentionBackend):
    description = "Python"

    def build_metadata(self, rows: list[AttentionRow], block_size: int) -> AttentionMetadata:
        return AttentionMetadata.build(rows, block_size, self.device).finalize(block_size, self.device)

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)


class CpuStackBackend(AttentionBackend):
    description = "C++ (engine/csrc/llama_cpu.cpp)"

    def __init__(self, model: nn.Module, stack: CpuStack) -> None:
        super().__init__(model, torch.device("cpu"))
        self.stack = stack

    def build_metadata(self, rows: list[AttentionRow], block_size: int) -> AttentionMetadata:
        return AttentionMetadata.build(rows, block_size, self.device)

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.stack(input_ids, positions, kv_caches, meta)


def select_backend(model: nn.Module, device: torch.device, use_cpu_kernels: bool) -> AttentionBackend:
    """The C++ stack for a float32 CPU model whose family describes its layers, when the kernels
    are wanted and load; else the torch reference."""
    if use_cpu_kernels and device.type == "cpu":
        stack = build_cpu_stack(model)
        if stack is not None:
            return CpuStackBackend(model, stack)
    return TorchBackend(model, device)
