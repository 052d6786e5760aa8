"""The C++ decoder stack (engine/csrc/llama_cpu.cpp) computes what the Python layers compute.

Every other engine and end-to-end test runs through it too (it is the default on the CPU);
these compare it with the Python path directly: the paged decode attention against SDPA over
gathered keys, whole steps mixing decodes, fresh prefills and prefills over cached blocks, greedy
generations token for token, int8 within the quantization's own noise, and the fallback.
"""
import logging

import pytest
import torch
import torch.nn.functional as F

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers import cpu_kernels
from engine.layers.attention import AttentionMetadata, paged_attention
from engine.layers.attention_backend import CpuStackBackend, TorchBackend
from tests.engine.test_quant import prompt_logprobs

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason="the C++ kernels could not be built here")


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size",
                         [(9, 3, 64, 16), (8, 2, 128, 16), (4, 4, 16, 4), (8, 2, 24, 8)])  # AVX2 path: 64, 128
def test_decode_attention_matches_sdpa(num_heads, num_kv_heads, head_dim, block_size):
    torch.manual_seed(0)
    lens = torch.tensor([1, 5, block_size, block_size + 1, 3 * block_size + 7, 100])
    max_blocks = -(-int(lens.max()) // block_size)
    num_blocks = len(lens) * max_blocks + 5
    pool = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim)
    tables = torch.randperm(num_blocks)[: len(lens) * max_blocks].view(len(lens), max_blocks)
    q = torch.randn(len(lens), num_heads, head_dim)
    stack = kernels.LlamaStack(num_heads, num_kv_heads, head_dim, 32, 64, 1e-5,
                               torch.zeros(8, head_dim), torch.zeros(8, head_dim))
    got = stack.decode_attention(q, pool, tables, lens)
    for b, n in enumerate(lens.tolist()):
        keys = pool[0][tables[b]].reshape(-1, num_kv_heads, head_dim)[:n].transpose(0, 1)
        values = pool[1][tables[b]].reshape(-1, num_kv_heads, head_dim)[:n].transpose(0, 1)
        want = F.scaled_dot_product_attention(q[b][:, None], keys, values, enable_gqa=True)[:, 0]
        torch.testing.assert_close(got[b], want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 24])  # the AVX2 decode path, the generic one
def test_windowed_softcapped_attention_matches_the_python_path(head_dim, dtype):
    """Gemma's attention: a sliding window (the blocks before it skipped, the first entered part
    way), soft-capped scores and a scale other than head_dim's, for decodes and for prefill chunks
    (one longer than a key tile), against the Python path's paged_attention."""
    gen = torch.Generator().manual_seed(0)
    num_heads, num_kv_heads, block_size, window = 4, 2, 4, 7
    decode_lens = [1, 5, 7, 8, 30, 61]
    chunks = [(5, 5), (3, 20), (70, 90)]  # (num_new, num_context)
    contexts = decode_lens + [ctx for _, ctx in chunks]
    num_blocks = sum(-(-ctx // block_size) for ctx in contexts)
    pool = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    order, tables = torch.randperm(num_blocks, generator=gen), []
    for ctx in contexts:
        tables.append(order[: -(-ctx // block_size)])
        order = order[len(tables[-1]):]

    def slot(table, pos):
        return int(table[pos // block_size]) * block_size + pos % block_size

    B = len(decode_lens)
    slots, prefills, start = [slot(tables[b], decode_lens[b] - 1) for b in range(B)], [], B
    for (num_new, ctx), table in zip(chunks, tables[B:]):
        prefills.append((start, num_new, ctx, table))
        slots += [slot(table, p) for p in range(ctx - num_new, ctx)]
        start += num_new
    slot_mapping = torch.tensor(slots)
    q = torch.randn(start, num_heads, head_dim, generator=gen) * 3  # scores large enough for the cap to bite
    k, v = (pool[i].view(-1, num_kv_heads, head_dim)[slot_mapping].float() for i in range(2))  # already in the pool
    max_blocks = max(len(t) for t in tables[:B])
    decode_tables = torch.stack([F.pad(t, (0, max_blocks - len(t))) for t in tables[:B]])
    lens = torch.tensor(decode_lens)
    meta = AttentionMetadata(slot_mapping=slot_mapping, num_decode_tokens=B, decode_block_tables=decode_tables,
                             decode_context_lens=lens, decode_max_context_len=max(decode_lens),
                             prefills=prefills).finalize(block_size, torch.device("cpu"))
    scale, cap = 24**-0.5, 3.0
    want = paged_attention(q, k, v, pool.clone(), meta, scale, window=window, softcap=cap)
    options = kernels.StackOptions()
    options.attn_scale, options.softcap = scale, cap
    stack = kernels.LlamaStack(num_heads, num_kv_heads, head_dim, 32, 64, 1e-6, torch.zeros(1, 0), torch.zeros(1, 0),
                               options)
    chunk_args = [[s, n, ctx] for s, n, ctx, _ in prefills], [t for *_, t in prefills]
    torch.testing.assert_close(stack.decode_attention(q[:B], pool, decode_tables, lens, window=window), want[:B],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stack.prefill_attention(q, pool, *chunk_args, window=window)[B:], want[B:],
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(stack.prefill_attention(q, pool, *chunk_args)[B:], want[B:], atol=1e-3)  # it matters


def _engines(model, **kw):
    python = LLMEngine(EngineConfig(model=model, cpu_kernels=False, num_threads=1, seed=0, **kw))
    native = LLMEngine(EngineConfig(model=model, cpu_kernels=True, num_threads=1, seed=0, **kw))
    assert isinstance(python.runner.attention, TorchBackend) and isinstance(native.runner.attention, CpuStackBackend)
    return python, native


def _run(engine, prompts, params):
    """Greedy generations, one request per prompt, all in flight together (so steps mix decodes
    with prefill chunks): per request, (token ids, logprobs)."""
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    ids = {f"r{i}": [] for i in range(len(prompts))}
    logprobs = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        for o in engine.step():
            for c in o.outputs:  # deltas since the last output
                ids[o.request_id] += c.token_ids
                logprobs[o.request_id] += c.logprobs or []
    return [(ids[f"r{i}"], logprobs[f"r{i}"]) for i in range(len(prompts))]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_greedy_generations_identical_to_python_layers(fixture, request):
    model = request.getfixturevalue(fixture)
    # a small token budget chunks the long prompt, so later chunks attend over cached blocks
    python, native = _engines(model, max_num_batched_tokens=24, block_size=4)
    prompts = [[5, 17, 33, 2, 99], list(range(3, 70)), [7] * 9, [1, 2, 3, 4, 5, 6, 7, 8]]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=5)
    want, got = _run(python, prompts, params), _run(native, prompts, params)
    for (w_ids, w_lps), (g_ids, g_lps) in zip(want, got):
        assert g_ids == w_ids and len(g_ids) == 24
        for lw, lg in zip(w_lps, g_lps):
            assert lg.token_id == lw.token_id
            assert abs(lg.logprob - lw.logprob) < 1e-4
    # prefix caching: the same prompts again hit cached blocks and still agree
    again = _run(native, prompts, params)
    assert [g[0] for g in again] == [w[0] for w in want]


def _smollm2_on_both_backends(**kw):
    """The real model loaded once (the costly part), with its C++ backend and a torch backend over
    the same weights; no prefix cache, so a second run computes every block again itself."""
    engine = LLMEngine(EngineConfig(num_threads=1, seed=0, enable_prefix_caching=False, max_model_len=512, **kw))
    native = engine.runner.attention
    assert isinstance(native, CpuStackBackend)
    return engine, native, TorchBackend(engine.runner.model, engine.runner.device)


def _on(engine, backend, run, *args):
    engine.runner.attention = backend
    return run(engine, *args)


def test_smollm2_greedy_identical_to_python_layers():
    """float32: the same function, so the same tokens (the default block-format path quantizes
    activations, where float order can tip a rounding step: tests/engine/test_quant_model.py)."""
    engine, native, python = _smollm2_on_both_backends(dtype="float32")
    texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [engine.tokenizer.encode(t) for t in texts]
    got, want = _on(engine, native, _run, prompts, params), _on(engine, python, _run, prompts, params)
    assert [o[0] for o in got] == [o[0] for o in want]


def test_smollm2_int8_close_to_python_int8():
    """int8 through C++ rounds the same activations a hair differently before quantizing them
    (its own RMSNorm and SiLU); one activation landing on the other side of a rounding step
    changes a layer's output by a step, and that cascades, so per-token logprobs part by about as
    much as int8 parts from the exact weights (mean 0.2 on this text). What must hold is the
    quality: the text's mean logprob (its perplexity) is the same within noise."""
    engine, native, python = _smollm2_on_both_backends(quantization="int8")
    ids = engine.tokenizer.encode("Photosynthesis is the process plants use to turn light, water and carbon "
                                  "dioxide into sugar and oxygen. Chlorophyll absorbs sunlight.")
    want, got = _on(engine, python, prompt_logprobs, ids), _on(engine, native, prompt_logprobs, ids)
    assert abs(want.mean() - got.mean()) < 0.1
    assert (want - got).abs().mean() < 0.5


def test_off_by_environment(monkeypatch, tiny_llama):
    monkeypatch.setenv("GPTSERVE_CPU_KERNELS", "0")
    engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1))
    assert isinstance(engine.runner.attention, TorchBackend)


def test_a_failed_build_falls_back_to_python(monkeypatch, tiny_llama, tmp_path, caplog):
    broken = tmp_path / "llama_cpu.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "_SOURCE", broken)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", None)
    monkeypatch.setenv("GPTSERVE_KERNEL_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="gptserve.engine"):
        engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1))
    assert isinstance(engine.runner.attention, TorchBackend)
    assert "C++ CPU kernels unavailable" in caplog.text
    out = _run(engine, [[5, 17, 33]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0][0]) == 4


def test_float16_cache_decode_attention_matches_sdpa_over_the_same_halves():
    torch.manual_seed(1)
    lens = torch.tensor([1, 17, 40, 64])
    pool = torch.randn(2, 20, 16, 3, 64).half()
    tables = torch.randperm(20)[:16].view(4, 4)
    q = torch.randn(4, 9, 64)
    stack = kernels.LlamaStack(9, 3, 64, 32, 64, 1e-5, torch.zeros(8, 64), torch.zeros(8, 64))
    got = stack.decode_attention(q, pool, tables, lens)
    for b, n in enumerate(lens.tolist()):
        keys = pool[0][tables[b]].reshape(-1, 3, 64)[:n].float().transpose(0, 1)
        values = pool[1][tables[b]].reshape(-1, 3, 64)[:n].float().transpose(0, 1)
        want = F.scaled_dot_product_attention(q[b][:, None], keys, values, enable_gqa=True)[:, 0]
        torch.testing.assert_close(got[b], want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("cpu_kernels_on", [False, True])
def test_float16_cache_stays_close_to_float32(tiny_llama, cpu_kernels_on):
    """Both paths store keys and values as float16 and attend in float32: the logprobs move by
    the rounding of the cache only, and the pool holds twice the tokens in the same memory."""
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
    prompts = [[5, 17, 33, 2, 99], list(range(3, 40))]
    exact = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, cpu_kernels=cpu_kernels_on,
                                   kv_cache_memory_gb=0.01))
    half = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, cpu_kernels=cpu_kernels_on,
                                  kv_cache_memory_gb=0.01, kv_cache_dtype="float16"))
    assert half.runner.kv_cache.dtype == torch.float16
    assert abs(half.block_manager.num_blocks - 2 * exact.block_manager.num_blocks) <= 1  # integer division
    for (w_ids, w_lps), (g_ids, g_lps) in zip(_run(exact, prompts, params), _run(half, prompts, params)):
        assert len(g_ids) == 16
        # compare while the two runs agree on the tokens (a near-tie may part them)
        for lw, lg, tw, tg in zip(w_lps, g_lps, w_ids, g_ids):
            if tw != tg:
                break
            assert abs(lg.logprob - lw.logprob) < 2e-2



def test_a_killed_builders_lock_does_not_hang_the_next_start(monkeypatch):
    """torch's build lock is a plain file; a builder killed mid-build leaves it behind, and torch
    would wait on it forever. The next load clears it (under a lock of ours) and loads."""
    if kernels is None:
        pytest.skip("the C++ kernels cannot be built here")
    _, path = cpu_kernels._build_dir()
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", None)
    (path / "lock").touch()
    assert cpu_kernels.load() is not None, cpu_kernels._failed
    assert not (path / "lock").exists()


def test_a_built_library_is_imported_without_torchs_builder(monkeypatch):
    """Another venv (the image-install test's, a second clone's) finds the library this one built
    and imports it: torch's builder, which would rebuild it for that venv's include paths under
    every process loading it, is not asked."""
    if kernels is None:
        pytest.skip("the C++ kernels cannot be built here")
    import torch.utils.cpp_extension

    def no_build(**kw):
        raise AssertionError("torch's builder was called although the library was built")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_build)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", None)
    module = cpu_kernels.load()
    assert module is not None, cpu_kernels._failed
    assert "scalar" in module.supported_isas()  # it runs
