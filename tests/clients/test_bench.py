"""clients/bench.py against a tiny fake OpenAI SSE server (FastAPI + uvicorn in a thread)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from clients import bench

API_KEY = "bench-test-key"
TOKEN_DELAY = 0.004  # seconds between streamed tokens


def _words(messages: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def fake_app(state: dict) -> FastAPI:
    """Streams one chunk per token; `usage` only when asked; fails prompts containing 'castle'
    when state['fail_castle'] is set; honours ignore_eos by always producing max_tokens.

    Chat usage counts words as tokens and plays a prefix cache: ``cached_tokens`` is the words of
    the longest proper prefix of the messages that an earlier request's messages (or those plus the
    answer the fake gave it) began with. state['fail_messages'] = k fails chats of k messages."""
    app = FastAPI()

    def check_auth(request: Request):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return None

    @app.get("/v1/models")
    async def models(request: Request):
        return check_auth(request) or {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    async def stream(body: dict, chat: bool, cached: int = 0):
        n = body["max_tokens"] if body.get("ignore_eos") else min(3, body["max_tokens"])
        usage = (body.get("stream_options") or {}).get("include_usage") and state["send_usage"]
        if chat:
            first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            yield f"data: {json.dumps(first)}\n\n"
        for i in range(n):
            await asyncio.sleep(TOKEN_DELAY)
            text = f" w{i}"
            choice = ({"index": 0, "delta": {"content": text}, "finish_reason": None} if chat
                      else {"index": 0, "text": text, "finish_reason": None})
            yield f"data: {json.dumps({'choices': [choice]})}\n\n"
        end = ({"index": 0, "delta": {}, "finish_reason": "length"} if chat
               else {"index": 0, "text": "", "finish_reason": "length"})
        yield f"data: {json.dumps({'choices': [end]})}\n\n"
        if usage:
            prompt_tokens = _words(body["messages"]) if chat else len(body["prompt"].split())
            u = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": n + prompt_tokens}
            if chat:
                u["prompt_tokens_details"] = {"cached_tokens": cached}
            yield f"data: {json.dumps({'choices': [], 'usage': u})}\n\n"
        yield "data: [DONE]\n\n"

    async def handle(request: Request, chat: bool):
        denied = check_auth(request)
        if denied:
            return denied
        body = await request.json()
        state["bodies"].append(body)
        text = body["messages"][0]["content"] if chat else body["prompt"]
        if state["fail_castle"] and "castle" in text.split():
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
        cached = 0
        if chat:
            messages = body["messages"]
            if state["fail_messages"] == len(messages):
                return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
            keys = [json.dumps(messages[:k]) for k in range(1, len(messages))]
            hits = [k + 1 for k, key in enumerate(keys) if key in state["seen"]]
            cached = _words(messages[:max(hits)]) if hits else 0
            n = body["max_tokens"] if body.get("ignore_eos") else min(3, body["max_tokens"])
            answer = {"role": "assistant", "content": "".join(f" w{i}" for i in range(n))}
            state["seen"].update(json.dumps(messages[:k]) for k in range(1, len(messages) + 1))
            state["seen"].add(json.dumps([*messages, answer]))
        return StreamingResponse(stream(body, chat, cached), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


@pytest.fixture(scope="module")
def fake_server():
    state = {"bodies": [], "send_usage": True, "fail_castle": False, "fail_messages": None, "seen": set()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", state
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def fake(fake_server):
    url, state = fake_server
    state.update(bodies=[], send_usage=True, fail_castle=False, fail_messages=None, seen=set())
    return url, state


def run_bench(tmp_path, url, *extra) -> dict:
    out = tmp_path / "bench.json"
    rc = bench.main(["--base-url", url, "--api-key", API_KEY, "--prompt-words", "12", "--output-tokens", "6",
                     "--concurrency", "1,3", "--num-prompts", "5", "--label", "fake",
                     "--json-out", str(out), *extra])
    report = json.loads(out.read_text())
    report["rc"] = rc
    return report


def test_completions_sweep_metrics(fake, tmp_path, capsys):
    url, state = fake
    report = run_bench(tmp_path, url)
    assert report["rc"] == 0
    assert report["label"] == "fake" and report["model"] == "fake-model"
    assert [lv["concurrency"] for lv in report["results"]] == [1, 3]
    for lv in report["results"]:
        assert lv["requests"] == 5 and lv["completed"] == 5 and lv["failed"] == 0
        assert lv["total_output_tokens"] == 30 and lv["output_tokens_per_request"] == [6]
        assert lv["length_mismatches"] == 0 and lv["usage_reported"] is True
        assert lv["total_input_tokens"] == 5 * 12  # the fake counts words as tokens
        assert lv["output_throughput_tok_s"] == pytest.approx(30 / lv["duration_s"])
        assert lv["request_throughput_req_s"] == pytest.approx(5 / lv["duration_s"])
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert set(lv[key]) == {"mean", "p50", "p99"}
            assert all(v is not None and v > 0 for v in lv[key].values())
        # 6 tokens, TOKEN_DELAY apart: TPOT and ITL near TOKEN_DELAY, TTFT at least one delay
        assert lv["ttft_ms"]["p50"] >= TOKEN_DELAY * 1000 * 0.9
        assert lv["tpot_ms"]["p50"] >= TOKEN_DELAY * 1000 * 0.9
        assert lv["itl_ms"]["p50"] >= TOKEN_DELAY * 1000 * 0.9
        assert lv["e2e_ms"]["p50"] >= lv["ttft_ms"]["p50"]
    # requests: streamed, usage asked, fixed length with ignore_eos, distinct 12-word prompts
    bodies = [b for b in state["bodies"]]
    assert len(bodies) == 1 + 10  # one warmup
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in bodies)
    assert all(b["max_tokens"] == 6 and b["min_tokens"] == 6 and b["ignore_eos"] is True for b in bodies)
    prompts = [b["prompt"] for b in bodies]
    assert all(len(p.split()) == 12 for p in prompts) and len(set(prompts)) == len(prompts)
    table = capsys.readouterr().out
    assert "out tok/s" in table and "TTFT p50" in table and "fake" in table


def test_same_seed_same_prompts(fake, tmp_path):
    url, state = fake
    run_bench(tmp_path, url, "--seed", "7")
    first = sorted(b["prompt"] for b in state["bodies"])  # concurrent requests arrive in any order
    state["bodies"].clear()
    run_bench(tmp_path, url, "--seed", "7")
    assert sorted(b["prompt"] for b in state["bodies"]) == first
    state["bodies"].clear()
    run_bench(tmp_path, url, "--seed", "8")
    assert not set(b["prompt"] for b in state["bodies"]) & set(first)


def test_chat_without_usage_counts_chunks(fake, tmp_path):
    url, state = fake
    state["send_usage"] = False
    report = run_bench(tmp_path, url, "--endpoint", "chat")
    for lv in report["results"]:
        assert lv["completed"] == 5 and lv["usage_reported"] is False
        assert lv["output_tokens_per_request"] == [6] and lv["total_input_tokens"] is None
    assert all(b["messages"][0]["role"] == "user" for b in state["bodies"])


def test_failures_are_counted_not_fatal(fake, tmp_path):
    url, state = fake
    state["fail_castle"] = True
    report = run_bench(tmp_path, url, "--num-prompts", "12", "--prompt-words", "40")
    assert report["rc"] == 0
    total_failed = sum(lv["failed"] for lv in report["results"])
    assert total_failed > 0  # 40 words from ~300: 'castle' appears in most prompts
    for lv in report["results"]:
        assert lv["completed"] + lv["failed"] == 12
        if lv["failed"]:
            assert any("HTTP 500" in e for e in lv["errors"])
        assert lv["total_output_tokens"] == 6 * lv["completed"]


def test_no_ignore_eos_reports_lengths(fake, tmp_path):
    url, state = fake
    report = run_bench(tmp_path, url, "--no-ignore-eos", "--concurrency", "2")
    assert all("ignore_eos" not in b and "min_tokens" not in b for b in state["bodies"])
    assert report["results"][0]["output_tokens_per_request"] == [3]


def test_request_rate_mode(fake, tmp_path):
    url, state = fake
    report = run_bench(tmp_path, url, "--request-rate", "50,inf", "--num-prompts", "4")
    assert [lv["request_rate"] for lv in report["results"]] == [50, float("inf")]
    assert all(lv["completed"] == 4 for lv in report["results"])


def test_unreachable_server_and_remote_guard(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert bench.main(["--base-url", f"http://127.0.0.1:{port}/v1", "--concurrency", "1"]) == 1
    assert bench.main(["--base-url", "http://example.com/v1"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_bad_key_fails_at_model_listing(fake, tmp_path):
    url, _ = fake
    assert bench.main(["--base-url", url, "--api-key", "wrong", "--concurrency", "1"]) == 1


def test_bad_key_with_model_counts_failures(fake, tmp_path):
    url, _ = fake
    out = tmp_path / "r.json"
    rc = bench.main(["--base-url", url, "--api-key", "wrong", "--model", "m", "--concurrency", "2",
                     "--num-prompts", "3", "--warmup-requests", "0", "--json-out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 1  # nothing completed
    assert report["results"][0]["failed"] == 3 and "HTTP 401" in next(iter(report["results"][0]["errors"]))


def test_gptserve_bench_command_dispatches(capsys):
    from server.__main__ import main as gptserve_main
    assert gptserve_main(["bench", "--base-url", "http://192.0.2.1/v1"]) == 2  # the loopback guard answered
    assert "loopback" in capsys.readouterr().err


def test_plot_bench(fake, tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "plot_bench", Path(__file__).resolve().parents[2] / "scripts" / "plot_bench.py")
    plot_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_bench)
    url, _ = fake
    files = []
    for label in ("a", "b"):
        out = tmp_path / f"{label}.json"
        assert bench.main(["--base-url", url, "--api-key", API_KEY, "--output-tokens", "4", "--concurrency", "1,2",
                           "--num-prompts", "2", "--label", label, "--json-out", str(out)]) == 0
        files.append(str(out))
    png = tmp_path / "plot.png"
    assert plot_bench.main([*files, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --multi-turn ---------------------------------------------------------------------------------

def run_multi_turn(tmp_path, url, *extra) -> dict:
    out = tmp_path / "mt.json"
    rc = bench.main(["--base-url", url, "--api-key", API_KEY, "--multi-turn", "4", "--prompt-words", "10",
                     "--output-tokens", "6", "--concurrency", "1,2", "--num-prompts", "3", "--label", "fake",
                     "--json-out", str(out), *extra])
    report = json.loads(out.read_text())
    report["rc"] = rc
    return report


def test_multi_turn_conversations_and_per_turn_report(fake, tmp_path, capsys):
    url, state = fake
    report = run_multi_turn(tmp_path, url, "--system-prompt-words", "30")
    assert report["rc"] == 0 and report["endpoint"] == "chat"
    assert report["config"]["multi_turn"] == 4 and report["config"]["system_prompt_words"] == 30
    chats = [b["messages"] for b in state["bodies"] if b["messages"][0]["role"] == "system"]
    assert len(state["bodies"]) == 1 + 2 * 3 * 4  # a warmup, then 2 levels x 3 conversations x 4 turns
    assert len(chats) == 2 * 3 * 4
    system = chats[0][0]["content"]
    assert len(system.split()) == 30 and all(m[0]["content"] == system for m in chats)  # shared
    assert system == bench.system_prompt(0, 30)
    answer = " w0 w1 w2 w3 w4 w5"  # what the fake streams for 6 tokens
    by_len: dict[int, list] = {}
    for m in chats:
        by_len.setdefault(len(m), []).append(m)
    # turn t: system + t user messages + (t-1) answers, the answers being exactly the streamed text
    assert sorted(by_len) == [2, 4, 6, 8] and all(len(v) == 6 for v in by_len.values())
    for m in chats:
        assert [x["role"] for x in m[1:]] == ["user", "assistant"] * ((len(m) - 2) // 2) + ["user"]
        assert all(x["content"] == answer for x in m[1:] if x["role"] == "assistant")
        assert all(len(x["content"].split()) == 10 for x in m[1:] if x["role"] == "user")
    # every turn-4 chat extends its own turn-3 chat (history resent unchanged) ...
    turn3 = {json.dumps(m) for m in by_len[6]}
    assert all(json.dumps(m[:6]) in turn3 for m in by_len[8])
    # ... and the user messages are seeded: conversation c's turn t is multi_turn_prompt(0, c, t, 10)
    users = {x["content"] for m in chats for x in m if x["role"] == "user"}
    assert users == {bench.multi_turn_prompt(0, c, t, 10) for c in range(6) for t in range(1, 5)}
    assert len(users) == 24  # distinct across conversations and turns
    for lv in report["results"]:
        assert lv["turns"] == 4 and lv["conversations"] == 3
        assert lv["requests"] == 12 and lv["completed"] == 12 and lv["failed"] == 0
        assert lv["total_output_tokens"] == 12 * 6 and lv["length_mismatches"] == 0
        assert [t["turn"] for t in lv["per_turn"]] == [1, 2, 3, 4]
        for t in lv["per_turn"]:
            assert t["requests"] == t["completed"] == 3 and t["failed"] == 0
            assert t["prompt_tokens_mean"] == 30 + 10 * t["turn"] + 6 * (t["turn"] - 1)
            assert set(t["ttft_ms"]) == {"mean", "p50", "p99"} and t["ttft_ms"]["p50"] > 0
            assert t["e2e_ms"]["p50"] >= t["ttft_ms"]["p50"]
            if t["turn"] > 1:  # the fake's cache holds the whole conversation before the new message
                assert t["cached_tokens_mean"] == 30 + 16 * (t["turn"] - 1)
            else:  # at most the shared system prompt
                assert 0 <= t["cached_tokens_mean"] <= 30
        assert lv["total_cached_tokens"] == sum(3 * t["cached_tokens_mean"] for t in lv["per_turn"])
    out = capsys.readouterr().out
    assert "chats of 4 turns" in out and "cached tok" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("fake ") and len(line.split()) == 11]
    assert [(r[1], r[2]) for r in rows] == [(c, t) for c in ("1", "2") for t in ("1", "2", "3", "4")]


def test_multi_turn_without_system_prompt_and_save_requests(fake, tmp_path):
    url, state = fake
    report = run_multi_turn(tmp_path, url, "--concurrency", "2", "--save-requests", "--seed", "3")
    chats = [b["messages"] for b in state["bodies"]][1:]
    assert all(m[0]["role"] == "user" for m in chats)
    assert {m[0]["content"] for m in chats} == {bench.multi_turn_prompt(3, c, 1, 10) for c in range(3)}
    lv = report["results"][0]
    per = lv["per_request"]
    assert len(per) == 12 and all("text" not in r and r["output_chars"] == 18 for r in per)
    assert sorted((r["conversation"], r["turn"]) for r in per) == [(c, t) for c in range(3) for t in range(1, 5)]
    assert [t["cached_tokens_mean"] for t in lv["per_turn"]] == [0, 16, 32, 48]


def test_multi_turn_failed_turn_ends_its_conversation(fake, tmp_path):
    url, state = fake
    state["fail_messages"] = 5  # turn 3 (user, assistant, user, assistant, user) fails
    report = run_multi_turn(tmp_path, url, "--concurrency", "2")
    assert report["rc"] == 0  # turns 1 and 2 completed
    lv = report["results"][0]
    assert [(t["completed"], t["failed"]) for t in lv["per_turn"]] == [(3, 0), (3, 0), (0, 3), (0, 3)]
    assert lv["failed"] == 6 and any("HTTP 500" in e for e in lv["errors"])
    assert any("not sent: turn 3" in e for e in lv["errors"])
    assert max(len(b["messages"]) for b in state["bodies"]) == 5  # turn 4 was never sent


def test_multi_turn_bad_combinations(capsys):
    base = ["--base-url", "http://127.0.0.1:9/v1"]
    assert bench.main([*base, "--multi-turn", "3", "--request-rate", "2"]) == 2
    assert bench.main([*base, "--multi-turn", "3", "--endpoint", "completions"]) == 2
    assert bench.main([*base, "--multi-turn", "0"]) == 2
    assert bench.main([*base, "--system-prompt-words", "10"]) == 2
    assert "--multi-turn" in capsys.readouterr().err


@pytest.mark.parametrize("no_cache", [False, True], ids=["prefix-cache-on", "prefix-cache-off"])
def test_multi_turn_against_gptserve_reports_cached_tokens(tmp_path, no_cache):
    """A real gptserve (tiny random model): later turns find the conversation in the prefix cache,
    and with --no-prefix-caching they find nothing; every turn gets exactly --output-tokens."""
    from tests.server_process import running_server
    from tests.tiny_models import write_tiny_hf_model

    folder = write_tiny_hf_model(str(tmp_path / "tiny"), seed=5)
    args = ["--model", folder, "--kv-cache-memory-gb", "0.05", "--log-level", "warning"]
    with running_server(args + (["--no-prefix-caching"] if no_cache else []), log_path=tmp_path / "server.log",
                        poll=0.3) as (url, _, _):
        out = tmp_path / "mt.json"
        rc = bench.main(["--base-url", f"{url}/v1", "--multi-turn", "3", "--system-prompt-words", "12",
                         "--prompt-words", "4", "--output-tokens", "3", "--concurrency", "1", "--num-prompts", "2",
                         "--json-out", str(out)])
    assert rc == 0
    lv = json.loads(out.read_text())["results"][0]
    assert lv["completed"] == 6 and lv["failed"] == 0 and lv["length_mismatches"] == 0
    turns = lv["per_turn"]
    assert turns[0]["prompt_tokens_mean"] < turns[1]["prompt_tokens_mean"] < turns[2]["prompt_tokens_mean"]
    if no_cache:
        assert lv["total_cached_tokens"] == 0
    else:
        # turn t+1 resends turn t's prompt: at least its full 16-token blocks are found again
        for prev, t in zip(turns, turns[1:]):
            assert t["cached_tokens_mean"] >= prev["prompt_tokens_mean"] // 16 * 16 > 0
