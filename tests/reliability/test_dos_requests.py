"""Cheap denial of service by what one small request asks for, against the shared tiny-model
server (``dos_server``): sequences, logprob output, one request's fan-out against another's
latency, megabyte prompts on the event loop, /tokenize under admission."""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.reliability.conftest import DOS_MAX_IN_FLIGHT, DOS_MAX_LOGPROBS, DOS_MAX_NUM_SEQS
from tests.reliability.helpers import HealthProbe
from tests.spec_validator import validate_error


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return validate_error(response.json())["error"]


# ----- 2 and 3: what one request may ask for -------------------------------------------------

def test_more_sequences_than_the_scheduler_runs_is_a_400_naming_the_limit(dos_server):
    for body in ({"prompt": "Hi", "n": DOS_MAX_NUM_SEQS + 1},
                 {"prompt": ["a", "b", "c"], "n": 3},  # prompts × n
                 {"prompt": "Hi", "n": 1, "best_of": DOS_MAX_NUM_SEQS + 1}):
        r = httpx.post(f"{dos_server.url}/v1/completions", headers=dos_server.headers, json={"max_tokens": 2, **body})
        error = error_of(r, 400)
        assert error["code"] == "too_many_sequences" and error["param"] == "n", error
        assert str(DOS_MAX_NUM_SEQS) in error["message"] and "--max-sequences-per-request" in error["message"]
    chat = httpx.post(f"{dos_server.url}/v1/chat/completions", headers=dos_server.headers, json={
        "messages": [{"role": "user", "content": "hi"}], "n": DOS_MAX_NUM_SEQS + 1, "max_tokens": 2})
    assert error_of(chat, 400)["code"] == "too_many_sequences"


def test_echoed_logprobs_past_the_output_budget_are_a_400(dos_server):
    # the request, scaled: a short body asking for n × prompt × (logprobs + 1) entries
    body = {"prompt": [28] * 400, "n": DOS_MAX_NUM_SEQS, "echo": True, "logprobs": 5, "max_tokens": 0}
    with HealthProbe(dos_server.url) as probe:
        r = httpx.post(f"{dos_server.url}/v1/completions", headers=dos_server.headers, json=body, timeout=30)
    error = error_of(r, 400)
    assert error["code"] == "too_many_logprobs" and error["param"] == "logprobs", error
    assert str(DOS_MAX_LOGPROBS) in error["message"] and "--max-logprobs-per-request" in error["message"]
    assert probe.worst < 1.0 and not probe.failures
    chat = httpx.post(f"{dos_server.url}/v1/chat/completions", headers=dos_server.headers, json={
        "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 20, "max_tokens": 480})
    assert error_of(chat, 400)["code"] == "too_many_logprobs"


def test_echoed_logprobs_within_the_budget_are_the_same_in_every_choice(dos_server):
    body = {"prompt": [28, 29, 30] * 100, "n": 3, "echo": True, "logprobs": 2, "max_tokens": 0}
    r = httpx.post(f"{dos_server.url}/v1/completions", headers=dos_server.headers, json=body, timeout=30)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 3
    first = choices[0]["logprobs"]
    assert len(first["tokens"]) == 300 and first["token_logprobs"][0] is None
    assert first["text_offset"] == sorted(first["text_offset"])
    assert all(c["logprobs"] == first and c["text"] == choices[0]["text"] for c in choices)


def test_one_requests_fan_out_delays_another_request_by_a_bounded_amount(dos_server):
    async def main():
        async with httpx.AsyncClient(base_url=dos_server.url, headers=dos_server.headers, timeout=120) as client:
            big_done = asyncio.Event()

            async def big():
                body = {"prompt": "Hello", "n": DOS_MAX_NUM_SEQS, "max_tokens": 480, "ignore_eos": True,
                        "temperature": 1.0, "seed": 1, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    num_events, finished = 0, {}
                    async for line in response.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        num_events += 1
                        if num_events == 2 * DOS_MAX_NUM_SEQS:  # every choice is generating
                            started.set()
                        for choice in json.loads(line[6:])["choices"]:
                            if choice["finish_reason"]:
                                finished[choice["index"]] = choice["finish_reason"]
                big_done.set()
                return finished

            started = asyncio.Event()
            big_task = asyncio.create_task(big())
            await asyncio.wait_for(started.wait(), 60)
            start = time.perf_counter()
            short = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "ignore_eos": True,
                                                               "temperature": 0})
            latency = time.perf_counter() - start
            was_big_running = not big_done.is_set()
            finished = await big_task
            return short, latency, was_big_running, finished

    short, latency, was_big_running, finished = asyncio.run(main())
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 4, short.text
    # a slot is handed over within a step or two, not after the fan-out's 8 × 480 tokens
    assert was_big_running, "the short request waited for the whole fan-out"
    assert latency < 2.0, latency
    assert finished == {i: "length" for i in range(DOS_MAX_NUM_SEQS)}  # and the fan-out lost nothing


# ----- 5: tokenizing and templating off the event loop ----------------------------------------

def test_megabyte_prompts_do_not_stall_the_event_loop(dos_server):
    text = "hello world, what a day " * 20_000  # ~0.5 MB
    messages = [{"role": "user", "content": text}]

    async def main():
        async with httpx.AsyncClient(base_url=dos_server.url, headers=dos_server.headers, timeout=120) as client:
            return await asyncio.gather(
                client.post("/tokenize", json={"prompt": text}),
                client.post("/tokenize", json={"messages": messages}),
                client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}),
                client.post("/v1/completions", json={"prompt": text, "max_tokens": 1}))

    with HealthProbe(dos_server.url) as probe:
        responses = asyncio.run(main())
    for r in responses[:2]:
        assert r.status_code == 200 and r.json()["count"] > 50_000, r.text[:300]
    for r in responses[2:]:  # too long for the context: a 400 after tokenizing, not a stall
        assert error_of(r, 400)["code"] == "context_length_exceeded"
    assert len(probe.latencies) >= 3 and probe.worst < 1.0, probe.latencies
    assert not probe.failures


def test_tokenize_and_detokenize_are_under_admission(dos_server):
    async def main():
        async with httpx.AsyncClient(base_url=dos_server.url, headers=dos_server.headers, timeout=120) as client:
            started = [asyncio.Event() for _ in range(DOS_MAX_IN_FLIGHT)]

            async def hold(k: int):  # a stream that takes one admission slot until cancelled
                body = {"prompt": "Hello", "max_tokens": 480, "ignore_eos": True, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    started[k].set()
                    async for _ in response.aiter_bytes():
                        pass

            holders = [asyncio.create_task(hold(k)) for k in range(DOS_MAX_IN_FLIGHT)]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
                return (await client.post("/tokenize", json={"prompt": "hi"}),
                        await client.post("/detokenize", json={"tokens": [30, 31]}))
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)

    for r in asyncio.run(main()):
        assert error_of(r, 429)["code"] == "server_overloaded"
    assert httpx.post(f"{dos_server.url}/tokenize", headers=dos_server.headers, json={"prompt": "hi"}).status_code == 200
