"""int8 on the CPU: smoothing leaves the float model's function unchanged, each token gets its
own activation scale, and the quantized model stays close to the plain one."""
import copy

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers.quant import PerTokenInt8Linear, channel_maxima, quantize_int8, smooth_llama
from engine.model_loader import calibration_forward


def prompt_logprobs(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    engine.add_request("p", ids, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    got = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            got = out.prompt_logprobs if out.prompt_logprobs is not None else got
    return torch.tensor([lp.logprob for lp in got[1:]])


PROMPT = [5, 17, 33, 2, 99, 7, 150, 42, 8, 61, 300, 12, 4, 77, 19, 250, 3, 88, 41, 9]


def test_smoothing_keeps_the_float_function(tiny_llama):
    engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1))
    before = prompt_logprobs(engine, PROMPT)
    weight_before = engine.runner.model.layers[0].mlp.down_proj.weight.clone()
    model = engine.runner.model
    maxima = channel_maxima(model, lambda: calibration_forward(model, engine.tokenizer, engine.max_model_len,
                                                               engine.device, engine.dtype))
    smooth_llama(model, maxima)
    assert not torch.equal(weight_before, engine.runner.model.layers[0].mlp.down_proj.weight), "nothing was smoothed"
    assert engine.runner.model.lm_head.weight is not engine.runner.model.embed_tokens.weight  # untied, embeddings intact
    assert torch.allclose(prompt_logprobs(engine, PROMPT), before, atol=1e-4)


def test_each_row_gets_its_own_scale():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    model = quantize_int8(torch.nn.Sequential(copy.deepcopy(linear)), torch.device("cpu"))
    layer = model[0]
    assert isinstance(layer, PerTokenInt8Linear)
    x = torch.randn(4, 64)
    batch = torch.cat([x[:1], 1000 * x[1:]])  # row 0 next to rows a thousand times larger
    exact = linear(x[:1])[0]
    err_alone = (layer(x[:1])[0] - exact).abs().max()
    err_with_neighbours = (layer(batch)[0] - exact).abs().max()
    err_one_scale = (layer.qlinear(batch)[0] + layer.bias - exact).abs().max()  # the op as it comes
    assert err_with_neighbours < 3 * err_alone + 1e-3
    assert err_one_scale > 10 * err_with_neighbours  # one scale for all would crush row 0
    assert torch.allclose(layer(x), linear(x), atol=0.05 * linear(x).abs().max().item())  # bias included


def test_int8_engine_stays_close_to_the_plain_one(tiny_llama):
    plain = prompt_logprobs(LLMEngine(EngineConfig(model=tiny_llama, num_threads=1)), PROMPT)
    int8 = prompt_logprobs(LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, quantization="int8")), PROMPT)
    assert (int8 - plain).abs().mean() < 0.05 * plain.abs().mean()


def test_int8_is_for_the_cpu():
    with pytest.raises(ValueError, match="for the CPU"):
        quantize_int8(torch.nn.Linear(4, 4), torch.device("meta"))


@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_int8_output_does_not_depend_on_the_batch(tiny_llama, cpu_kernels):
    """A request's greedy tokens are the same alone and batched with others (fixed activation
    quantization: torch's dynamic op would derive it from the whole batch's min and max)."""
    # one engine (calibrating int8 is its cost), no prefix cache: each solo run starts from nothing
    engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, quantization="int8", cpu_kernels=cpu_kernels,
                                    enable_prefix_caching=False))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [[5, 17, 33, 2, 99, 7], [300, 12, 4, 77], list(range(40, 90)), [9, 8, 7, 6, 5, 4, 3]]
    solo = [engine.generate([p], params)[0][0].token_ids for p in prompts]
    together = [out[0].token_ids for out in engine.generate(prompts, params)]
    assert together == solo
