"""The asyncio bridge: concurrent streams batch together; aborts free everything."""
import asyncio
import random

from engine import AsyncEngine, EngineConfig, SamplingParams


def run(coro):
    return asyncio.run(coro)


async def collect(engine, prompt, params, request_id, stop_after=None):
    tokens: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    count = 0
    async for out in engine.generate(prompt, params, request_id):
        for c in out.outputs:
            tokens.setdefault(c.index, []).extend(c.token_ids)
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                assert c.index not in reasons, "a second finish_reason for one choice"
                reasons[c.index] = c.finish_reason
        count += 1
        if stop_after is not None and count >= stop_after:
            break  # closing the stream early must abort the request
    return tokens, texts, reasons


def test_sixteen_concurrent_streams_batch_and_match_solo(tiny_llama):
    async def main():
        engine = AsyncEngine.from_config(EngineConfig(model=tiny_llama, num_threads=1))
        await engine.start()
        rng = random.Random(0)
        prompts = [[rng.randrange(3, 500) for _ in range(rng.randrange(4, 30))] for _ in range(16)]
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        solo = [await collect(engine, p, params, f"solo{i}") for i, p in enumerate(prompts)]
        assert engine.stats()["max_batch_size_seen"] == 1
        together = await asyncio.gather(*(collect(engine, p, params, f"b{i}") for i, p in enumerate(prompts)))
        assert engine.stats()["max_batch_size_seen"] > 1
        assert [t[0] for t in together] == [s[0] for s in solo]
        assert all(t[2] == {0: "length"} for t in together)
        await engine.shutdown()

    run(main())


def test_hundred_mixed_requests_with_aborts_free_every_block(tiny_llama):
    async def main():
        engine = AsyncEngine.from_config(EngineConfig(model=tiny_llama, num_threads=1, num_kv_blocks=64, block_size=8))
        await engine.start()
        rng = random.Random(1)

        async def one(i):
            prompt = [rng.randrange(3, 500) for _ in range(rng.randrange(2, 60))]
            params = SamplingParams(
                n=rng.choice([1, 1, 2, 3]), temperature=rng.choice([0.0, 0.8]), max_tokens=rng.randrange(1, 40),
                seed=rng.choice([None, i]), ignore_eos=True,
            )
            mode = i % 4
            if mode == 0:  # dropped mid-stream
                return await collect(engine, prompt, params, f"r{i}", stop_after=rng.randrange(1, 4))
            if mode == 1:  # aborted from outside while queued or running
                task = asyncio.ensure_future(collect(engine, prompt, params, f"r{i}"))
                await asyncio.sleep(rng.random() * 0.05)
                await engine.abort(f"r{i}")
                return await task
            tokens, texts, reasons = await collect(engine, prompt, params, f"r{i}")
            assert set(reasons) == set(range(params.n))
            assert all(len(t) == params.max_tokens for t in tokens.values())
            return tokens, texts, reasons

        await asyncio.gather(*(one(i) for i in range(100)))
        for _ in range(100):  # aborts are applied by the engine thread at its next step
            stats = engine.stats()
            if stats["num_requests"] == 0:
                break
            await asyncio.sleep(0.02)
        assert stats["num_free_blocks"] == stats["num_total_blocks"]
        assert stats["num_requests"] == 0 and stats["num_running"] == 0 and stats["num_waiting"] == 0
        assert stats["num_preemptions"] > 0  # 64 blocks is tight for this load: preemption happened
        await engine.shutdown()

    run(main())
