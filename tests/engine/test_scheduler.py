"""Chunked prefill beside running decodes (engine/scheduler.py), paced by measured step times
(engine/pacing.py)."""
import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.pacing import StepPacer, context_scale


def test_a_decoding_stream_gets_a_token_every_step_while_a_long_prompt_prefills(tiny_llama):
    engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, max_num_batched_tokens=32,
                                    kv_cache_memory_gb=0.01, max_decode_slowdown=0))  # the budget alone
    engine.add_request("stream", [5, 17, 33], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    for _ in range(3):
        engine.step()
    engine.add_request("long", list(range(3, 303)), SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    steps, long_done = 0, False
    while not long_done:
        outputs = {o.request_id: o for o in engine.step()}
        steps += 1
        assert len(outputs["stream"].outputs[0].token_ids) == 1  # never skipped for the prefill
        long_done = "long" in outputs and bool(outputs["long"].outputs[0].token_ids)
        assert engine.stats().num_running == 2 or long_done
    assert steps == -(-300 // 31)  # 300 prompt tokens in chunks of the budget less the decode


def test_the_pacer_sizes_chunks_to_the_measured_step_times():
    pacer = StepPacer(max_decode_slowdown=3.0, context_scale=1000.0, min_chunk=16)
    assert pacer.allowance() is None  # nothing measured yet: the whole budget
    pacer.observe(num_decodes=1, prefill_cost=0, seconds=0.02)  # a decode-only step: 20 ms
    pacer.observe(num_decodes=0, prefill_cost=400.0, seconds=0.4)  # prefill alone: 1 ms a unit
    assert pacer.allowance() == pytest.approx(40.0)  # two more decode steps' time: 40 ms of prefill
    assert pacer.chunk_tokens(0, 40.0) == 39  # 39 tokens from 0 cost 39 * (1 + 19 / 1000) < 40
    assert pacer.chunk_cost(0, 39) <= 40.0 < pacer.chunk_cost(0, 40)
    deep = pacer.chunk_tokens(3000, 40.0)  # deep in a long prompt a token costs 4x: a shorter chunk
    assert pacer.chunk_cost(3000, deep) <= 40.0 < pacer.chunk_cost(3000, deep + 1)
    assert deep == 9
    # a slower decode step (a bigger batch) leaves room for more prefill; the averages move
    for _ in range(20):
        pacer.observe(num_decodes=16, prefill_cost=0, seconds=0.08)
    assert pacer.allowance() == pytest.approx(160.0, rel=0.01)
    assert StepPacer(0, 1000.0, 16).allowance() is None  # 0: pacing off


def test_context_scale_is_linear_work_over_attention_work_per_key():
    # SmolLM2-135M: a token at position ~3,070 does as much attention as linear work
    assert context_scale(hidden=576, intermediate=1536, q_dim=576, kv_dim=192) == pytest.approx(3072.0)


def test_a_long_prompt_beside_a_stream_prefills_in_paced_chunks_and_computes_the_same(tiny_llama, monkeypatch):
    """With the pacer's averages fixed (a decode step 10 ms, a unit of prefill 1 ms, slowdown 2:
    10 units per step), the long prompt advances in small chunks while the stream gets its token
    every step, and both produce what they produce unpaced."""
    def run(slowdown):
        engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, kv_cache_memory_gb=0.01,
                                        max_decode_slowdown=slowdown))
        pacer = engine.scheduler.pacer
        monkeypatch.setattr(pacer, "observe", lambda *args: None)  # no clock: fixed averages
        pacer.decode_seconds, pacer.seconds_per_unit = 0.010, 0.001
        stream = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
        engine.add_request("stream", [5, 17, 33], stream)
        tokens = {"stream": engine.step()[0].outputs[0].token_ids, "long": []}  # its prompt, its first token
        engine.add_request("long", list(range(3, 203)), SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
        chunks = []
        schedule = engine.scheduler.schedule

        def recording_schedule():
            out = schedule()
            chunks.extend(n for seq, n in zip(out.seqs, out.num_new_tokens) if seq.request_id == "long" and n > 1)
            return out

        monkeypatch.setattr(engine.scheduler, "schedule", recording_schedule)
        while engine.has_unfinished_requests():
            for o in engine.step():
                tokens[o.request_id] += o.outputs[0].token_ids  # each output carries the new tokens
        return chunks, tokens

    paced_chunks, paced_tokens = run(slowdown=2.0)
    whole_chunks, whole_tokens = run(slowdown=0)
    assert whole_chunks == [200]  # unpaced: the whole prompt in one step beside the decode
    # paced: the first chunk is at least a block (16 tokens; 10 units fit fewer), so the prompt
    # still advances; 200 tokens that way
    assert paced_chunks == [16] * 12 + [8]
    assert len(paced_tokens["stream"]) == 60 and len(paced_tokens["long"]) == 5
    assert paced_tokens == whole_tokens  # chunking computes the same function
