"""Fairness between requests: one request's n choices never hold every slot while another waits."""
from tests.engine.test_llm_engine import engine_for, prompts

from engine import SamplingParams


def run_until_finished(engine, request_id: str, max_steps: int = 500) -> int:
    """Steps until ``request_id`` finishes (the other requests keep running)."""
    for step in range(1, max_steps + 1):
        for out in engine.step():
            if out.request_id == request_id and out.is_finished:
                return step
    raise AssertionError(f"{request_id} did not finish in {max_steps} steps")


def test_a_short_request_is_not_held_behind_another_requests_fan_out(tiny_llama):
    engine = engine_for(tiny_llama, max_num_seqs=4, block_size=4)
    big, short = prompts(2, seed=5, lo=10, hi=20)
    engine.add_request("big", big, SamplingParams(n=4, temperature=1.0, seed=1, max_tokens=60, ignore_eos=True))
    for _ in range(3):  # the big request's prompt is in and its four choices run
        engine.step()
    assert engine.stats().num_running == 4
    engine.add_request("short", short, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    # a slot is handed over at once: prefill plus four tokens, not the big request's 60
    assert run_until_finished(engine, "short") <= 8
    assert engine.stats().num_running <= 4
    assert engine.has_unfinished_requests()  # the big one still runs, all of its choices come back
    got = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:
                got[c.index] = c.num_tokens
    assert got == {i: 60 for i in range(4)}
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_more_choices_than_slots_run_in_turns_and_lose_nothing(tiny_llama):
    engine = engine_for(tiny_llama, max_num_seqs=3, block_size=4)
    p = prompts(1, seed=6, lo=12, hi=13)[0]
    greedy = SamplingParams(n=7, temperature=0, max_tokens=6, ignore_eos=True)
    choices = engine.generate([p], greedy)[0]
    assert [c.index for c in choices] == list(range(7))
    assert len({tuple(c.token_ids) for c in choices}) == 1  # every choice continues the same prompt
    assert engine.stats().max_batch_size_seen <= 3
    expected = engine.generate([p], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert choices[0].token_ids == expected[0][0].token_ids
