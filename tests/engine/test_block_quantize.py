"""``quantization="q8_0"|"q4_0"``: float weights quantized at load (engine/layers/block_quantize.py)
byte for byte as llama.cpp would write them, then run by the native path."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize as gguf_quantize

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers import block_quantize
from engine.layers.attention_backend import CpuStackBackend
from engine.layers.block_quantize import quantize
from engine.layers.blocks import BlockEmbedding, BlockLinear, BlockTensor
from engine.layers.cpu_kernels import load
from engine.loader.gguf import load_gguf
from tests.engine.test_quant import prompt_logprobs
from tests.tiny_models import write_tiny_gguf, write_tiny_hf_model

PROMPTS = [[5, 17, 33, 2, 99], list(range(3, 40))]


def awkward_weights(rows: int = 24, cols: int = 96) -> np.ndarray:
    """Random rows plus the cases a quantizer can get wrong: an all-zero block, a block whose
    largest magnitudes tie with opposite signs (Q4_0 keeps the first one's sign), and values
    that land on .5 and just below it after scaling (C's roundf, not floor(x + 0.5))."""
    w = np.random.default_rng(7).standard_normal((rows, cols)).astype(np.float32)
    w[0, :32] = 0.0
    w[1, :32] = 0.1
    w[1, 3], w[1, 9] = -2.0, 2.0
    w[2, :32] = np.float32(127.0)
    w[2, 1:6] = [0.5, 1.5, 2.5, np.nextafter(np.float32(0.5), np.float32(0)), -0.5]
    return w


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0], ids=lambda t: t.name)
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_quantize_writes_ggml_reference_bytes(qtype, stored, monkeypatch):
    monkeypatch.setattr(block_quantize, "VALUES_AT_ONCE", 5 * 96)  # tasks of 5 rows: a short last one
    w = torch.from_numpy(awkward_weights()).to(stored)
    source = w if stored == torch.float32 else BlockTensor.from_half(w)
    got = quantize(source, qtype)
    assert got.qtype == qtype and got.shape == tuple(w.shape)
    np.testing.assert_array_equal(got.raw.numpy(), gguf_quantize(w.float().numpy(), qtype))


needs_kernels = pytest.mark.skipif(load() is None, reason="the C++ kernels could not be built here")


@needs_kernels
@pytest.mark.parametrize("quantization", ["q8_0", "q4_0"])
def test_quantized_folder_is_the_gguf_file_llama_quantize_would_write(tmp_path, quantization):
    """A float checkpoint quantized at load and a GGUF file of the same weights quantized by ggml's
    reference (decoder layers in the format, Q8_0 token embeddings tied to the output): the same
    bytes, so the same tokens and logprobs."""
    folder = write_tiny_hf_model(str(tmp_path / "hf"), tie_word_embeddings=True, seed=3)
    gguf_path = write_tiny_gguf(str(tmp_path / "m.gguf"), qtype=quantization.upper(), embed_qtype="Q8_0",
                                tie_word_embeddings=True, seed=3)
    config = dict(num_threads=1, kv_cache_memory_gb=0.01)
    engine = LLMEngine(EngineConfig(model=folder, quantization=quantization, **config))
    model = engine.runner.model
    assert engine.quantization == quantization.upper() and isinstance(engine.runner.attention, CpuStackBackend)
    assert isinstance(model.embed_tokens, BlockEmbedding) and model.embed_tokens.qtype == Q.Q8_0
    _, from_file = load_gguf(gguf_path, keep_quantized=True)
    assert torch.equal(model.embed_tokens.block_tensor().file_rows(), from_file["model.embed_tokens.weight"].raw)
    for i, layer in enumerate(model.layers):
        for linear, names in ((layer.self_attn.qkv_proj, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                              (layer.mlp.down_proj, ("mlp.down_proj",))):
            assert isinstance(linear, BlockLinear)
            for part, name in zip(linear.parts, names):
                want = from_file[f"model.layers.{i}.{name}.weight"]
                assert part.qtype == want.qtype == Q[quantization.upper()]
                assert part.interleaved  # (held 8 rows at a time for the GEMM: the same bytes reordered)
                assert torch.equal(part.file_rows(), want.raw), name
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
    [[ours], _] = engine.generate(PROMPTS, params)
    file_engine = LLMEngine(EngineConfig(model=gguf_path, **config))
    [[theirs], _] = file_engine.generate(PROMPTS, params)
    assert ours.token_ids == theirs.token_ids
    assert [lp.logprob for lp in ours.logprobs] == [lp.logprob for lp in theirs.logprobs]
    # and near the float32 product of the same quantized weights (only the activations' 8 bits differ)
    dequantized = LLMEngine(EngineConfig(model=gguf_path, dtype="float32", **config))
    [[reference], _] = dequantized.generate(PROMPTS, params)
    assert ours.token_ids == reference.token_ids
    assert (prompt_logprobs(engine, PROMPTS[1]) - prompt_logprobs(dequantized, PROMPTS[1])).abs().max() < 0.1


@needs_kernels
def test_a_bfloat16_checkpoint_quantizes_from_its_stored_values(tmp_path):
    folder = write_tiny_hf_model(str(tmp_path / "hf"), seed=2, dtype=torch.bfloat16)
    engine = LLMEngine(EngineConfig(model=folder, quantization="q4_0", num_threads=1, kv_cache_memory_gb=0.01))
    model = engine.runner.model
    assert {p.qtype for p in model.layers[0].mlp.gate_up_proj.parts} == {Q.Q4_0}
    [head] = model.lm_head.parts
    assert head.qtype == Q.Q8_0  # the output layer keeps more bits
    assert model.embed_tokens.qtype == Q.BF16  # untied embeddings stay as stored
    assert "Q4_0 x" in engine.loaded.weight_formats


def test_bad_quantization_settings_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="supported: int8, q8_0, q4_0"):
        EngineConfig(quantization="q5_0")
    with pytest.raises(ValueError, match="dtype auto"):
        LLMEngine(EngineConfig(model=tiny_llama, quantization="q8_0", dtype="float32"))


@needs_kernels
def test_an_already_quantized_file_is_not_quantized_again(tmp_path):
    path = write_tiny_gguf(str(tmp_path / "m.gguf"), qtype="Q4_1")
    with pytest.raises(ValueError, match="already Q4_1"):
        LLMEngine(EngineConfig(model=path, quantization="q8_0"))
