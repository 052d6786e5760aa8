"""The synchronous engine on a tiny random model: batching, chunking, caching, preemption, n > 1."""
import random

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams


def prompts(num, seed=0, lo=3, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(3, 500) for _ in range(rng.randrange(lo, hi))] for _ in range(num)]


def engine_for(path, **kw):
    kw.setdefault("num_threads", 1)
    return LLMEngine(EngineConfig(model=path, **kw))


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def solo_outputs(engine, ps, params=GREEDY):
    return [engine.generate([p], params)[0][0].token_ids for p in ps]


def test_batched_greedy_equals_solo_and_batches(tiny_llama):
    engine = engine_for(tiny_llama)
    ps = prompts(16)
    solo = solo_outputs(engine, ps)
    batched = [choices[0].token_ids for choices in engine.generate(ps, GREEDY)]
    assert batched == solo
    assert engine.stats().max_batch_size_seen >= 16
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


def test_chunked_prefill_and_prefix_cache_change_nothing(tiny_llama):
    ps = prompts(6, seed=1, lo=30, hi=60)
    ps += [ps[0][:25] + p for p in prompts(3, seed=2)]  # shared prefixes
    plain = engine_for(tiny_llama, enable_prefix_caching=False, max_num_batched_tokens=4096)
    chunked = engine_for(tiny_llama, enable_prefix_caching=True, max_num_batched_tokens=7, block_size=4)
    expected = solo_outputs(plain, ps)
    assert solo_outputs(chunked, ps) == expected
    assert chunked.stats().num_prefix_hits > 0
    assert [c[0].token_ids for c in chunked.generate(ps, GREEDY)] == expected


def test_preemption_when_the_pool_is_small_loses_nothing(tiny_llama):
    ps = prompts(8, seed=3, lo=20, hi=30)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    expected = solo_outputs(engine_for(tiny_llama), ps, params)
    small = engine_for(tiny_llama, num_kv_blocks=14, block_size=4, enable_prefix_caching=False)
    got = [c[0].token_ids for c in small.generate(ps, params)]
    assert got == expected
    stats = small.stats()
    assert stats.num_preemptions > 0
    assert stats.num_free_blocks == stats.num_total_blocks


def test_n_choices_share_the_prompt_and_seeds_repeat(tiny_llama):
    engine = engine_for(tiny_llama, block_size=4)
    p = prompts(1, seed=4, lo=10, hi=11)[0]
    greedy = engine.generate([p], SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert [c.index for c in greedy] == [0, 1, 2]
    assert greedy[0].token_ids == greedy[1].token_ids == greedy[2].token_ids
    params = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=123, ignore_eos=True)
    first = [c.token_ids for c in engine.generate([p], params)[0]]
    again = [c.token_ids for c in engine.generate([p], params)[0]]
    assert first == again
    assert len({tuple(t) for t in first}) > 1  # choices are drawn independently
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_stop_strings_max_tokens_and_context(tiny_llama):
    engine = engine_for(tiny_llama)
    p = prompts(1, seed=5)[0]
    free = engine.generate([p], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0][0]
    assert free.finish_reason == "length" and free.num_tokens == 20
    text = free.text
    assert len(text) > 4
    stop = text[2:4]
    stopped = engine.generate([p], SamplingParams(temperature=0, max_tokens=20, stop=[stop], ignore_eos=True))[0][0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == text[: text.index(stop)]
    with pytest.raises(ValueError, match="maximum context length"):
        engine.check_request(p, SamplingParams(max_tokens=engine.max_model_len))
    # An omitted max_tokens means the rest of the context.
    assert engine.check_request(p, SamplingParams(max_tokens=None)) == engine.max_model_len - len(p)


def test_abort_frees_blocks_at_once(tiny_llama):
    engine = engine_for(tiny_llama)
    for i, p in enumerate(prompts(4, seed=6)):
        engine.add_request(f"r{i}", p, SamplingParams(n=2, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    out = engine.abort_request("r1")
    assert out.is_finished and {c.finish_reason for c in out.outputs} == {"abort"}
    for i in (0, 2, 3):
        engine.abort_request(f"r{i}")
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks and stats.num_running == 0


def test_int8_quantization_is_a_setting_that_still_generates(tiny_llama):
    engine = engine_for(tiny_llama, quantization="int8")
    out = engine.generate(prompts(2, seed=7), GREEDY)
    assert [c[0].num_tokens for c in out] == [12, 12]
    with pytest.raises(ValueError, match="unsupported quantization"):
        EngineConfig(quantization="int3")
