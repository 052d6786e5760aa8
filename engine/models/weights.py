"""Putting a checkpoint's named tensors into a model's parameters, strictly.

Each parameter is replaced by the loaded tensor itself, so the model may be built on the meta
device (no float32 allocation before the load); a model that ties parameters ties them again
after the load.

Every parameter must receive a tensor of its exact shape, and every tensor of the checkpoint
must be used: a mismatch means the family or the file is not what we think, and the model would
compute something else without a word.
"""
from __future__ import annotations

import torch
from torch import nn


class WeightCopier:
    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.params = dict(model.named_parameters())
        self.weights = weights
        self.taken: set[str] = set()

    def take(self, name: str) -> torch.Tensor:
        if name not in self.weights:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        self.taken.add(name)
        return self.weights[name]

    def put(self, param_name: str, value: torch.Tensor) -> None:
        param = self.params[param_name]
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"tensor for {param_name!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        path, _, attr = param_name.rpartition(".")
        setattr(self.model.get_submodule(path) if path else self.model, attr,
                nn.Parameter(value.detach(), requires_grad=False))

    def copy(self, param_name: str, tensor_name: str) -> None:
        self.put(param_name, self.take(tensor_name))

    def check_all_used(self, optional: tuple[str, ...] = ("lm_head.weight",)) -> None:
        unused = sorted(set(self.weights) - self.taken - set(optional))
        if unused:
            raise ValueError(f"checkpoint has tensors this model does not use: {', '.join(unused[:5])}")
