"""The default CPU path keeps a GGUF file's block formats and computes on them (engine/layers/blocks.py,
engine/csrc/quant_cpu.h): what it loads, what it computes, what it costs in memory.

The yardstick for "the file's model" is a numpy copy of ggml-cpu's arithmetic
(tests/engine/test_quant_kernels.py ``reference_matmul``) swapped into the Python layers.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers import blocks as blocks_module
from engine.layers.attention_backend import CpuStackBackend, TorchBackend
from engine.layers.blocks import INTERLEAVED_TYPES, BlockEmbedding, BlockLinear, BlockTensor
from engine.layers.cpu_kernels import load
from engine.loader.gguf import hf_tensor_name, load_gguf, read_gguf
from tests.engine.test_quant import prompt_logprobs
from tests.engine.test_quant_kernels import reference_matmul
from tests.tiny_families import write_family_gguf, write_family_hf
from tests.tiny_models import write_tiny_gguf

pytestmark = pytest.mark.skipif(load() is None, reason="the C++ kernels could not be built here")

PROMPTS = [[5, 17, 33, 2, 99], list(range(3, 40)), [7, 7, 300, 12]]


# file name → how tests/tiny_models.py writes it: token embeddings tied to the output, like
# SmolLM2's file (one format in the layers, Q8_0 token embeddings) or a Llama Q4_K_M file (Q4_K,
# Q6_K for v, down and the token embeddings; K blocks hold 256 values, hence the wider layers).
FILES = {
    "Q4_1": dict(qtype="Q4_1", embed_qtype="Q8_0"),
    "Q4_0": dict(qtype="Q4_0", embed_qtype="Q8_0"),
    "Q8_0": dict(qtype="Q8_0", embed_qtype="Q8_0"),
    "Q5_0": dict(qtype="Q5_0", embed_qtype="Q8_0"),
    "Q4_K_M": dict(qtype="Q4_K", embed_qtype="Q6_K", qtype_overrides={"v_proj": "Q6_K", "down_proj": "Q6_K"},
                   hidden_size=256, intermediate_size=512),
}


@pytest.fixture(scope="module", params=list(FILES))
def quantized_gguf(request, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("q") / f"tiny-{request.param}.gguf")
    return write_tiny_gguf(path, tie_word_embeddings=True, seed=3, **FILES[request.param])


def _generate(engine, params):
    return [(c.token_ids, [lp.logprob for lp in c.logprobs]) for c, *_ in engine.generate(PROMPTS, params)]


def assert_equal_but_for_rounding_crossings(got, want, atol: float) -> None:
    """Two computations of the same quantized model that add floats in different orders: equal
    within ``atol``, except where a tiny difference moved an activation across a rounding boundary
    of the next layer's 8-bit quantization (one value a step off): that shows as a few logprobs
    off by up to a few hundredths, from that position on. A wrong kernel or wiring is off from the
    first position, by far more."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert diff[0] <= atol and diff.max() < 0.05, diff


def test_loader_keeps_blocks_and_undoes_the_qk_permutation_on_rows(quantized_gguf):
    _, blocks = load_gguf(quantized_gguf, keep_quantized=True)
    _, floats = load_gguf(quantized_gguf)
    file_types = {hf_tensor_name(t.name): t.tensor_type for t in read_gguf(quantized_gguf).tensors}
    for name, value in blocks.items():
        if floats[name].dim() == 1:
            assert isinstance(value, torch.Tensor) and value.dtype == torch.float32  # norms
            continue
        assert isinstance(value, BlockTensor), name
        assert value.raw.dtype == torch.uint8
        assert value.qtype == file_types[name]
        # q/k rows moved as whole block rows: the same matrix as dequantize-then-unpermute
        np.testing.assert_array_equal(value.dequantize().numpy(), floats[name].numpy())


def test_default_engine_computes_on_the_blocks(quantized_gguf):
    engine = LLMEngine(EngineConfig(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01))
    model = engine.runner.model
    assert engine.loaded.keeps_file_quantization and isinstance(engine.runner.attention, CpuStackBackend)
    assert isinstance(model.embed_tokens, BlockEmbedding)
    [head] = model.lm_head.parts
    assert isinstance(model.lm_head, BlockLinear) and head.qtype == model.embed_tokens.qtype
    assert head.raw.data_ptr() == model.embed_tokens.blocks.data_ptr()  # tied: one copy
    for layer in model.layers:
        for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            assert isinstance(linear, BlockLinear)
            # the formats the GEMM runs fastest interleaved are held 8 rows at a time (every part here
            # is whole groups of 8); Q6_K as stored
            for p in linear.parts:
                assert p.interleaved == (p.qtype in INTERLEAVED_TYPES)
                assert p.kernel_type == int(p.qtype) | (load().INTERLEAVED if p.interleaved else 0)
            assert any(p.interleaved for p in linear.parts) or {p.qtype for p in linear.parts} == {Q.Q6_K}
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.dtype == torch.float32)
    assert float_bytes < 0.05 * os.path.getsize(quantized_gguf)  # norms only
    reference = LLMEngine(EngineConfig(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01, dtype="float32"))
    assert not reference.loaded.keeps_file_quantization
    assert not any(isinstance(m, (BlockLinear, BlockEmbedding)) for m in reference.runner.model.modules())


def test_greedy_output_equals_the_reference_arithmetic(quantized_gguf, monkeypatch):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    engine = LLMEngine(EngineConfig(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01))
    native, native_prompt = _generate(engine, params), prompt_logprobs(engine, PROMPTS[1])

    def reference_linear(self, x):
        rows = x.reshape(-1, self.in_features).numpy()
        y = np.concatenate([reference_matmul(rows, p.file_rows().numpy(), p.qtype)[0] for p in self.parts], axis=1)
        y = torch.from_numpy(y.astype(np.float32))
        return (y + self.bias if self.bias is not None else y).view(*x.shape[:-1], self.out_features)

    def reference_embedding(self, ids):
        rows = self.block_tensor().file_rows()[ids]
        return torch.from_numpy(dequantize(rows.numpy(), Q(self.qtype)).astype(np.float32))

    monkeypatch.setattr(blocks_module.BlockLinear, "forward", reference_linear)
    monkeypatch.setattr(blocks_module.BlockEmbedding, "forward", reference_embedding)
    python = LLMEngine(EngineConfig(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01, cpu_kernels=False))
    assert isinstance(python.runner.attention, TorchBackend) and python.loaded.keeps_file_quantization
    reference, reference_prompt = _generate(python, params), prompt_logprobs(python, PROMPTS[1])
    # Equal up to the order floats are added in (and rounding crossings: see the helper)
    for (ids, lps), (ref_ids, ref_lps) in zip(native, reference):
        assert ids == ref_ids
        assert_equal_but_for_rounding_crossings(lps, ref_lps, atol=2e-3)
    assert_equal_but_for_rounding_crossings(native_prompt.numpy(), reference_prompt.numpy(), atol=2e-3)


def test_quantized_path_stays_close_to_the_float32_reference(quantized_gguf):
    """Same weights, activations rounded to 8 bits per block: prompt logprobs move a little."""
    quant = LLMEngine(EngineConfig(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01))
    exact = LLMEngine(EngineConfig(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01, dtype="float32"))
    want, got = prompt_logprobs(exact, PROMPTS[1]), prompt_logprobs(quant, PROMPTS[1])
    assert (want - got).abs().max() < 0.1


_RSS_SCRIPT = textwrap.dedent("""
    import sys
    from engine import EngineConfig, LLMEngine
    # a small file first: imports, the built kernels and the code's own first-use costs are not
    # what is measured
    LLMEngine(EngineConfig(model=sys.argv[2], num_threads=1, num_kv_blocks=4, dtype=sys.argv[3]))

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    engine = LLMEngine(EngineConfig(model=sys.argv[1], num_threads=1, num_kv_blocks=4, dtype=sys.argv[3]))
    print(status("VmHWM") - base, engine.loaded.weight_formats)
""")
# the generated file's layers (4 of hidden 1024, 16/4 heads, ffn 2048; 512 tokens) as float32
FLOAT32_BYTES = (4 * (1024 * 1024 * 2.5 + 3 * 1024 * 2048) + 2 * 512 * 1024) * 4


def _load_peak(tmp_path, qtype: str, dtype: str) -> tuple[str, int, str]:
    """(the generated file, the peak resident set's growth while an engine loads it, its weight formats)."""
    path = write_tiny_gguf(str(tmp_path / "big.gguf"), qtype=qtype, hidden_size=1024, num_heads=16, num_kv_heads=4,
                           intermediate_size=2048, num_layers=4, seed=5)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    small = write_tiny_gguf(str(tmp_path / "small.gguf"), qtype="Q8_0", seed=5)
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path, small, dtype], capture_output=True, text=True,
                         env=env, check=True, timeout=300).stdout.split()
    return path, int(out[0]), " ".join(out[1:])


def test_loading_a_quantized_file_does_not_materialize_float32(tmp_path):
    """A generated Q8_0 file (39 MB; 147 MB as float32): loading it raises the peak resident set
    by about the file's size: each matrix copied once, interleaved (engine/layers/blocks.py), its
    mapped pages released after (measured: ~47 MB; before interleaving, with the weights mapped and
    untouched until used, ~12 MB; with dtype=float32, ~234 MB)."""
    path, peak_growth, formats = _load_peak(tmp_path, "Q8_0", "auto")
    assert "Q8_0 x" in formats
    size = os.path.getsize(path)
    assert peak_growth < 1.3 * size < 0.4 * FLOAT32_BYTES, (peak_growth, size)


def test_a_bfloat16_load_never_holds_the_model_in_float32(tmp_path):
    """dtype bfloat16 (what CUDA runs; here on the CPU) from a quantized file: each matrix is
    dequantized into bfloat16 a few rows at a time, so the peak stays under the model's float32
    size (measured: ~120 MB for 73 MB of bfloat16; dequantizing all of it to float32 first and
    casting after, as the loader once did, ~245 MB)."""
    _, peak_growth, formats = _load_peak(tmp_path, "Q4_0", "bfloat16")
    assert "Q4_0" not in formats  # dequantized, not kept as the file's blocks
    assert peak_growth < FLOAT32_BYTES, peak_growth


def test_a_requests_tokens_do_not_depend_on_the_batch(quantized_gguf):
    """Activations are quantized per row and block, and each output is one row's dot products:
    a prompt decoded alone or beside others gives the same tokens and logprobs."""
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
    config = dict(model=quantized_gguf, num_threads=1, kv_cache_memory_gb=0.01)
    together = _generate(LLMEngine(EngineConfig(**config)), params)
    for prompt, (ids, lps) in zip(PROMPTS, together):
        [[solo]] = LLMEngine(EngineConfig(**config)).generate([prompt], params)
        assert solo.token_ids == ids
        assert [lp.logprob for lp in solo.logprobs] == lps


@pytest.fixture(scope="module", params=["gemma3", "gemma2", "gpt2"])
def quantized_family(request, tmp_path_factory) -> tuple[str, str]:
    """(family, GGUF path): tests/tiny_families.py's tiny model, every 2-D weight in Q4_1."""
    pytest.importorskip("transformers")
    hf_dir = write_family_hf(str(tmp_path_factory.mktemp(f"hf-{request.param}")), request.param)
    path = str(tmp_path_factory.mktemp("q") / f"tiny-{request.param}-Q4_1.gguf")
    return request.param, write_family_gguf(path, hf_dir, request.param, qtype="Q4_1")


def test_other_families_compute_on_the_blocks(quantized_family):
    """Gemma 2/3 (tied output over the embedding's blocks, the embedding scaled after the lookup)
    and GPT-2 (fused q/k/v with a bias, learned positions): every weight stays blocks, the C++
    stack computes what the Python layers compute on them, close to the float32 reference."""
    family, path = quantized_family
    config = dict(model=path, num_threads=1, kv_cache_memory_gb=0.01)
    engine = LLMEngine(EngineConfig(**config))
    model = engine.runner.model
    assert engine.loaded.keeps_file_quantization and isinstance(engine.runner.attention, CpuStackBackend)
    assert "Q4_1 x" in engine.loaded.weight_formats
    if family == "gpt2":
        embeddings = (model.wte, model.wpe)
        linears = [m for block in model.h for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc,
                                                      block.mlp.c_proj)]
        assert all(linear.bias is not None for linear in linears)
    else:
        embeddings = (model.embed_tokens,)
        linears = [m for layer in model.layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                         layer.mlp.gate_up_proj, layer.mlp.down_proj)]
        [head] = model.lm_head.parts
        assert head.raw.data_ptr() == model.embed_tokens.blocks.data_ptr()  # tied: one copy
    assert all(isinstance(e, BlockEmbedding) for e in embeddings)
    assert all(isinstance(m, BlockLinear) for m in [*linears, model.lm_head])
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    python = LLMEngine(EngineConfig(**config, cpu_kernels=False))
    assert isinstance(python.runner.attention, TorchBackend) and python.loaded.keeps_file_quantization
    for (ids, lps), (ref_ids, ref_lps) in zip(_generate(engine, params), _generate(python, params)):
        assert ids == ref_ids
        assert_equal_but_for_rounding_crossings(lps, ref_lps, atol=1e-4)
    got = prompt_logprobs(engine, PROMPTS[1])
    assert_equal_but_for_rounding_crossings(got.numpy(), prompt_logprobs(python, PROMPTS[1]).numpy(), atol=1e-4)
    exact = LLMEngine(EngineConfig(**config, dtype="float32"))
    assert (prompt_logprobs(exact, PROMPTS[1]) - got).abs().max() < 0.1  # activations rounded to 8 bits a block
