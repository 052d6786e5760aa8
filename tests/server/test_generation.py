"""Generation: one prompt iterates its engine stream directly, several go through pump tasks;
either way every output arrives in order and closing early aborts what has not finished."""
from __future__ import annotations

import asyncio

from engine import SamplingParams
from server.generation import Generation
from tests.server.fake_engine import FakeEngine


def collect(engine: FakeEngine, prompts: list[list[int]], params: SamplingParams, stop_after: int | None = None):
    async def main():
        generation = Generation(engine, prompts, params, "req")
        got = []
        try:
            async for k, out in generation:
                got.append((k, out))
                if stop_after is not None and len(got) >= stop_after:
                    break
        finally:
            await generation.close()
        return got, generation

    return asyncio.run(main())


def test_single_prompt_streams_to_the_end_without_aborting():
    engine = FakeEngine()
    got, generation = collect(engine, [[0, 70]], SamplingParams(temperature=0, max_tokens=64))
    assert {k for k, _ in got} == {0}
    assert "".join(c.text for _, out in got for c in out.outputs) == engine.script
    assert got[-1][1].is_finished and not generation.unfinished
    assert engine.aborted == [] and engine._num_running == 0


def test_single_prompt_closed_early_aborts_and_ends_the_engine_stream():
    engine = FakeEngine()
    got, generation = collect(engine, [[0, 70]], SamplingParams(temperature=0, max_tokens=50), stop_after=3)
    assert len(got) == 3
    assert engine.aborted == ["req-0"]
    assert engine._num_running == 0  # the engine's generator was closed, not left suspended


def test_several_prompts_merge_and_close_aborts_all():
    engine = FakeEngine()
    got, _ = collect(engine, [[0, 70], [0, 71, 72]], SamplingParams(temperature=0, max_tokens=64))
    assert {k for k, _ in got} == {0, 1}
    for k in (0, 1):
        assert "".join(c.text for kk, out in got if kk == k for c in out.outputs) == engine.script
    assert engine.aborted == []

    engine = FakeEngine()
    collect(engine, [[0, 70], [0, 71]], SamplingParams(temperature=0, max_tokens=50), stop_after=2)
    assert sorted(engine.aborted) == ["req-0", "req-1"]
