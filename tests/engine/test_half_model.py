"""bfloat16 / float16 weights on the CPU by default: a Hugging Face checkpoint's and a GGUF file's
F16/BF16 matrices stay in their 2 bytes (engine/layers/blocks.py) and the linear layers compute on
them (engine/csrc/half_cpu.h) — the same model as ``dtype="float32"`` (the stored values widened),
up to float32 summation order, in half the memory."""
import os

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers.attention_backend import CpuStackBackend, TorchBackend
from engine.layers.blocks import BlockEmbedding, BlockLinear
from engine.layers.cpu_kernels import load
from tests.engine.test_quant import prompt_logprobs
from tests.tiny_models import write_tiny_gguf, write_tiny_hf_model

pytestmark = pytest.mark.skipif(load() is None, reason="the C++ kernels could not be built here")

PROMPTS = [[5, 17, 33, 2, 99], list(range(3, 40)), [7, 7, 300, 12]]
CONFIG = dict(num_threads=1, kv_cache_memory_gb=0.01)


@pytest.fixture(scope="module", params=["bfloat16", "float16", "gguf-BF16", "gguf-F16"])
def half_model(request, tmp_path_factory) -> tuple[str, Q]:
    folder = tmp_path_factory.mktemp("half")
    if request.param.startswith("gguf-"):
        qtype = request.param[5:]
        return write_tiny_gguf(str(folder / f"{qtype}.gguf"), qtype=qtype, seed=4), Q[qtype]
    dtype = getattr(torch, request.param)
    return write_tiny_hf_model(str(folder), seed=4, dtype=dtype), Q.BF16 if dtype == torch.bfloat16 else Q.F16


def _generate(engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    return [(c.token_ids, [lp.logprob for lp in c.logprobs]) for c, *_ in engine.generate(PROMPTS, params)]


def test_half_weights_stay_half_and_give_the_float32_models_output(half_model):
    path, qtype = half_model
    engine = LLMEngine(EngineConfig(model=path, **CONFIG))
    model = engine.runner.model
    assert engine.loaded.keeps_file_quantization and isinstance(engine.runner.attention, CpuStackBackend)
    assert isinstance(model.embed_tokens, BlockEmbedding) and model.embed_tokens.qtype == qtype
    for layer in model.layers:
        for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            assert isinstance(linear, BlockLinear) and {p.qtype for p in linear.parts} == {qtype}
    assert isinstance(model.lm_head, BlockLinear)
    # no float32 copy of any matrix: what is float32 is the norms
    assert all(p.dim() == 1 for p in model.parameters() if p.dtype == torch.float32)
    assert f"{qtype.name} x" in engine.loaded.weight_formats

    reference = LLMEngine(EngineConfig(model=path, dtype="float32", **CONFIG))
    assert not any(isinstance(m, (BlockLinear, BlockEmbedding)) for m in reference.runner.model.modules())
    python = LLMEngine(EngineConfig(model=path, cpu_kernels=False, **CONFIG))
    assert isinstance(python.runner.attention, TorchBackend) and isinstance(python.runner.model.lm_head, BlockLinear)
    want = _generate(reference)
    for got in (_generate(engine), _generate(python)):
        for (ids, lps), (ref_ids, ref_lps) in zip(got, want):
            assert ids == ref_ids
            np.testing.assert_allclose(lps, ref_lps, atol=1e-4)
    torch.testing.assert_close(prompt_logprobs(engine, PROMPTS[1]), prompt_logprobs(reference, PROMPTS[1]),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["phi3", "gpt2"])
def test_other_families_bfloat16_checkpoints(tmp_path, family):
    """Phi-3 ships q/k/v and gate/up fused (one BF16 matrix each, computed as stored); GPT-2 stores
    its matrices transposed (Conv1D), which the loader turns the right way round, still BF16.
    Both compute on BF16 and give the float32 model's tokens."""
    pytest.importorskip("transformers")
    from tests.tiny_families import write_family_hf

    folder = write_family_hf(str(tmp_path), family, dtype=torch.bfloat16)
    engine = LLMEngine(EngineConfig(model=folder, **CONFIG))
    has_blocks = any(isinstance(m, BlockLinear) for m in engine.runner.model.modules())
    assert has_blocks
    reference = LLMEngine(EngineConfig(model=folder, dtype="float32", **CONFIG))
    for (ids, lps), (ref_ids, ref_lps) in zip(_generate(engine), _generate(reference)):
        assert ids == ref_ids
        np.testing.assert_allclose(lps, ref_lps, atol=1e-4)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def test_loading_a_bfloat16_checkpoint_does_not_materialize_float32(tmp_path):
    """A generated bfloat16 folder (38 MB): loading it raises this process's peak resident set by
    a few MB, the weights staying in the file's pages until used (with dtype="float32": ~120 MB)."""
    big = write_tiny_hf_model(str(tmp_path), hidden_size=1024, num_heads=16, num_kv_heads=4, intermediate_size=2048,
                              num_layers=2, seed=5, dtype=torch.bfloat16)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    base = _status("VmRSS")
    engine = LLMEngine(EngineConfig(model=big, num_threads=1, num_kv_blocks=4))
    peak_growth = _status("VmHWM") - base
    assert "BF16 x" in engine.loaded.weight_formats
    assert peak_growth < 0.5 * os.path.getsize(os.path.join(big, "model.safetensors")), peak_growth
