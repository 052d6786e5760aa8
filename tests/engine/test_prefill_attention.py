"""Prefill attention over the paged KV pool (engine/csrc/attention_prefill.h).

The kernel against SDPA with a causal-over-prefix mask on gathered keys, for a batch of chunks of
different lengths, some starting past cached positions (prefix-cache hits, later chunks), GQA,
float32 and float16 caches; then long prompts through the engine, chunked, against the Python
path's logits and the same prompt unchunked.
"""
import pytest
import torch
import torch.nn.functional as F

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers import cpu_kernels
from engine.layers.attention_backend import CpuStackBackend, TorchBackend
from tests.engine.test_quant import prompt_logprobs

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason="the C++ kernels could not be built here")

# (num_new, num_context): whole prompts, chunks after a cached prefix, one-row and tile-edge cases
CHUNKS = [(5, 5), (70, 70), (33, 100), (64, 192), (2, 37), (130, 200), (97, 97)]


def _batch(num_heads, num_kv_heads, head_dim, block_size, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-ctx // block_size) for _, ctx in CHUNKS) + 3
    pool = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    order = torch.randperm(num_blocks, generator=gen).tolist()  # scattered blocks, as in a busy pool
    prefills, tables, start = [], [], 3  # three leading rows stand for decodes and stay untouched
    for num_new, ctx in CHUNKS:
        count = -(-ctx // block_size)
        tables.append(torch.tensor(order[:count]))
        order = order[count:]
        prefills.append([start, num_new, ctx])
        start += num_new
    q = torch.randn(start, num_heads, head_dim, generator=gen)
    return q, pool, prefills, tables


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size",
                         [(9, 3, 64, 16), (8, 2, 128, 16), (4, 4, 24, 16), (6, 2, 16, 16), (4, 1, 20, 8)])
def test_prefill_attention_matches_sdpa(num_heads, num_kv_heads, head_dim, block_size, dtype):
    q, pool, prefills, tables = _batch(num_heads, num_kv_heads, head_dim, block_size, dtype)
    stack = kernels.LlamaStack(num_heads, num_kv_heads, head_dim, 32, 64, 1e-5,
                               torch.zeros(8, head_dim), torch.zeros(8, head_dim))
    got = stack.prefill_attention(q, pool, prefills, tables)
    assert torch.equal(got[:3], torch.zeros_like(got[:3]))
    for (start, num_new, ctx), table in zip(prefills, tables):
        keys = pool[0][table].reshape(-1, num_kv_heads, head_dim)[:ctx].float().transpose(0, 1)
        values = pool[1][table].reshape(-1, num_kv_heads, head_dim)[:ctx].float().transpose(0, 1)
        q_pos = torch.arange(ctx - num_new, ctx)
        mask = torch.arange(ctx)[None, :] <= q_pos[:, None]  # causal within the chunk, all of the prefix
        query = q[start : start + num_new].transpose(0, 1)
        want = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True).transpose(0, 1)
        torch.testing.assert_close(got[start : start + num_new], want, atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def long_context_llama(tmp_path_factory):
    from tests.tiny_models import write_tiny_hf_model

    # head_dim 32 (the vector path) and 4 query heads on 2 KV heads; room for a 1,300-token prompt
    return write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-llama-long")), arch="llama", seed=3,
                               hidden_size=128, num_heads=4, num_kv_heads=2, max_position_embeddings=2048)


def _prompt(n, seed=0):
    return torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _engine(model, **kw):
    return LLMEngine(EngineConfig(model=model, num_threads=1, seed=0, max_model_len=2048, block_size=16,
                                  kv_cache_memory_gb=0.05, **kw))


def test_long_prompt_chunked_logits_match_python_path(long_context_llama):
    ids = _prompt(1300)
    python = _engine(long_context_llama, cpu_kernels=False, max_num_batched_tokens=2048)
    native = _engine(long_context_llama, cpu_kernels=True, max_num_batched_tokens=256)  # six chunks
    assert isinstance(python.runner.attention, TorchBackend) and isinstance(native.runner.attention, CpuStackBackend)
    want, got = prompt_logprobs(python, ids), prompt_logprobs(native, ids)
    assert len(got) == len(ids) - 1
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "float16"])
def test_long_prompt_chunked_greedy_equals_unchunked(long_context_llama, kv_cache_dtype):
    ids = _prompt(1100, seed=1)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outputs = []
    for budget in (2048, 200):  # one step for the whole prompt, then six chunks
        engine = _engine(long_context_llama, max_num_batched_tokens=budget, kv_cache_dtype=kv_cache_dtype)
        engine.add_request("r", ids, params)
        tokens = []
        while engine.has_unfinished_requests():
            for o in engine.step():
                tokens += o.outputs[0].token_ids
        outputs.append(tokens)
    assert len(outputs[0]) == 12 and outputs[1] == outputs[0]
