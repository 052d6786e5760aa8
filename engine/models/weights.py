"""Putting a checkpoint's named tensors into a model's parameters, strictly.

Each parameter is replaced by the loaded tensor itself, so the model may be built on the meta
device (no float32 allocation before the load); a model that ties parameters ties them again
after the load (``tie_output``). A GGUF weight kept in its block format (``BlockTensor``, or
several stacked by rows) replaces its whole Linear or Embedding with the block-format layer
(engine/layers/blocks.py).

Every parameter must receive a tensor of its exact shape, and every tensor of the checkpoint
must be used: a mismatch means the family or the file is not what we think, and the model would
compute something else without a word.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.blocks import BlockEmbedding, BlockLinear, BlockTensor, StackedBlocks


class WeightCopier:
    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor | BlockTensor]) -> None:
        self.model = model
        self.weights = weights
        self.taken: set[str] = set()

    def take(self, name: str) -> torch.Tensor | BlockTensor:
        """The tensor, out of the checkpoint's dict: once its layer holds it (a block-format layer
        holds an interleaved copy), the loaded one is freed, not kept until the whole model is in."""
        if name not in self.weights:
            raise ValueError(f"checkpoint is missing tensor {name!r}" +
                             (" (taken twice)" if name in self.taken else ""))
        self.taken.add(name)
        return self.weights.pop(name)

    def put(self, param_name: str, value: torch.Tensor | BlockTensor | StackedBlocks) -> None:
        path, _, attr = param_name.rpartition(".")
        module = self.model.get_submodule(path)
        expected = tuple(getattr(module, attr).shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"tensor for {param_name!r} has shape {tuple(value.shape)}, expected {expected}")
        if isinstance(value, (BlockTensor, StackedBlocks)):
            parent, _, child = path.rpartition(".")
            layer = BlockEmbedding(value) if isinstance(module, nn.Embedding) else BlockLinear(value, module.bias)
            setattr(self.model.get_submodule(parent), child, layer)
        else:
            setattr(module, attr, nn.Parameter(value.detach(), requires_grad=False))

    def copy(self, param_name: str, tensor_name: str) -> None:
        self.put(param_name, self.take(tensor_name))

    def check_all_used(self, optional: tuple[str, ...] = ("lm_head.weight",)) -> None:
        # rotary_emb.inv_freq, which some checkpoints carry, is recomputed from the config
        unused = sorted(n for n in set(self.weights) - set(optional) if "rotary_emb" not in n)  # take() popped the rest
        if unused:
            raise ValueError(f"checkpoint has tensors this model does not use: {', '.join(unused[:5])}")


def tie_output(embedding: nn.Module, lm_head: nn.Module) -> nn.Module:
    """The output layer on the token embedding's own weights: over its blocks when it is
    block-format (one copy of a 262k-row vocabulary, not two)."""
    if isinstance(embedding, BlockEmbedding):
        head = BlockLinear(embedding.block_tensor())
        embedding.share(head.parts[0])  # interleaved for the GEMM: the lookups read that copy too
        return head
    lm_head.weight = embedding.weight
    return lm_head
