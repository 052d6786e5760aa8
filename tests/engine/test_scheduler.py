"""Chunked prefill beside running decodes (engine/scheduler.py)."""
from engine import EngineConfig, LLMEngine, SamplingParams


def test_a_decoding_stream_gets_a_token_every_step_while_a_long_prompt_prefills(tiny_llama):
    engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, max_num_batched_tokens=32,
                                    kv_cache_memory_gb=0.01))
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
