"""int8 linear layers for the CPU, with SmoothQuant-style smoothing so quality survives.

torch's dynamic int8 linear (fbgemm/onednn) quantizes weights per output channel and the
activations per tensor, on the fly. The per-tensor activation scale is what hurts a Llama: a few
input channels carry values tens of times larger than the rest, so everything else is rounded
to a handful of levels. Smoothing (Xiao et al., SmoothQuant, 2022) moves that range from the
activations into the weights: for each input channel j, x_j / s_j and W[:, j] * s_j compute the
same product, and with s_j = sqrt(max|x_j| / max|W[:, j]|) both sides are easy to quantize.
The division by s is folded into whatever produced x, so it costs nothing at run time:

- q/k/v and gate/up read an RMSNorm's output: divide the norm's weight;
- down reads silu(gate) * up: divide up's output rows;
- the output layer reads the final norm: divide its weight (the output layer gets its own copy
  when it was tied to the embeddings);
- o reads the attention output, a mix of value rows shared across query heads: not smoothed.

The channel maxima come from one forward pass over a fixed calibration text at load time.

Smoothing handles outlier channels; outlier tokens remain: a few positions (the first token
above all) carry activations a hundred times larger than the rest, and one scale for a whole
batch would crush every other token. ``PerTokenInt8Linear`` gives each row its own scale.

Measured with scripts/perplexity.py on SmolLM2-135M (perplexity 17.42 with the plain weights):
torch's dynamic int8 as it comes, 57.9; smoothed, 29.7; smoothed with per-token scales, 18.2.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

CALIBRATION_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nCan you explain how photosynthesis works, and then write a short Python function "
    "that adds two numbers?<|im_end|>\n<|im_start|>assistant\nPhotosynthesis is the process plants use to "
    "turn light, water and carbon dioxide into sugar and oxygen. Chlorophyll in the leaves absorbs sunlight, "
    "which splits water molecules; the energy is stored and later used to build glucose.\n\n"
    "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```\n\nLet me know if you have other "
    "questions!<|im_end|>\n<|im_start|>user\nWhat were the main causes of the First World War? List 3.<|im_end|>\n"
    "<|im_start|>assistant\n1. Militarism: an arms race between the great powers.\n2. Alliances: Europe was "
    "split into two armed camps.\n3. Nationalism, and the assassination of Archduke Franz Ferdinand in 1914.\n"
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159. Le chat est sur la table. ¿Dónde está la estación?"
)


@torch.no_grad()
def channel_maxima(model: nn.Module, run_forward) -> dict[str, torch.Tensor]:
    """max |x_j| over the calibration tokens for the input of every Linear (by module name)."""
    maxima: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def hook(mod, args, _name=name):
                m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                maxima[_name] = torch.maximum(maxima[_name], m) if _name in maxima else m
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        run_forward()  # the model's Python layers; every position through the output layer too
    finally:
        for h in hooks:
            h.remove()
    return maxima


def _smooth(linear: nn.Linear, act_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scale the weight's input channels by s and return s (the caller divides the input by it)."""
    w_max = linear.weight.detach().abs().amax(0).float().clamp(min=1e-5)
    s = (act_max.clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-2, max=1e2)
    linear.weight.mul_(s.to(linear.weight.dtype))
    return s


@torch.no_grad()
def smooth_llama(model: nn.Module, maxima: dict[str, torch.Tensor], alpha: float = 0.5) -> None:
    """Fold SmoothQuant scales into a LlamaForCausalLM in place (the float output is unchanged)."""
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        s = _smooth(attn.qkv_proj, maxima[p + "self_attn.qkv_proj"], alpha)
        layer.input_layernorm.weight.div_(s.to(layer.input_layernorm.weight.dtype))
        s = _smooth(mlp.gate_up_proj, maxima[p + "mlp.gate_up_proj"], alpha)
        layer.post_attention_layernorm.weight.div_(s.to(layer.post_attention_layernorm.weight.dtype))
        s = _smooth(mlp.down_proj, maxima[p + "mlp.down_proj"], alpha)
        mlp.gate_up_proj.weight[mlp.intermediate_size:].div_(s.to(mlp.gate_up_proj.weight.dtype)[:, None])
    if "lm_head" in maxima:
        if model.lm_head.weight is model.embed_tokens.weight:  # untie: the embeddings stay as they are
            model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
        s = _smooth(model.lm_head, maxima["lm_head"], alpha)
        model.norm.weight.div_(s.to(model.norm.weight.dtype))


INPUT_SCALE, INPUT_ZERO_POINT = 2.0 / 127, 64  # [-1, 1] onto 0..127 (engine/csrc/llama_cpu.cpp too)


class PerTokenInt8Linear(nn.Module):
    """torch's dynamic int8 linear, but with one activation scale per row (token).

    The op itself takes one scale per call; dividing each row by its own absolute maximum first
    makes every row span [-1, 1], and the product is multiplied back afterwards (a linear map
    commutes with the row scaling). The bias is added last.

    The activations are then quantized with a fixed scale for [-1, 1] (7 bits, 0..127 with zero
    point 64: what torch's dynamic op picks for such a tensor, with its reduce_range that keeps
    AVX2's 16-bit pair sums from saturating), not one derived from the batch's own min and max:
    a row alone and the same row in any batch give the same bits, so a request's output does not
    depend on what else is running."""

    def __init__(self, qlinear: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.qlinear = qlinear
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().amax(-1, keepdim=True).clamp_(min=1e-6)
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x / scale, INPUT_SCALE, INPUT_ZERO_POINT, self.qlinear._packed_params._packed_params).mul_(scale)
        return y if self.bias is None else y.add_(self.bias)


def quantize_int8(model: nn.Module, device: torch.device, run_forward=None, alpha: float = 0.5) -> nn.Module:
    """Smooth (when ``run_forward`` runs the calibration pass), then swap every Linear for
    torch's dynamic int8 linear (weights int8 per output channel, activations per token)."""
    if device.type != "cpu":
        raise ValueError("quantization 'int8' is for the CPU; on CUDA use bfloat16")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if run_forward is not None:
        smooth_llama(model, channel_maxima(model, run_forward), alpha)
    biases = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            biases[name] = module.bias.detach().clone()
            module.bias = None
    with warnings.catch_warnings():  # torch.ao's notices that it is moving to torchao
        warnings.simplefilter("ignore")
        model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    for parent_name, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if type(child).__module__.startswith("torch.ao.nn.quantized.dynamic"):
                full = f"{parent_name}.{name}" if parent_name else name
                setattr(module, name, PerTokenInt8Linear(child, biases.get(full)))
    return model
