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


def fake_app(state: dict) -> FastAPI:
    """Streams one chunk per token; `usage` only when asked; fails prompts containing 'castle'
    when state['fail_castle'] is set; honours ignore_eos by always producing max_tokens."""
    app = FastAPI()

    def check_auth(request: Request):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return None

    @app.get("/v1/models")
    async def models(request: Request):
        return check_auth(request) or {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    async def stream(body: dict, chat: bool):
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
            u = {"prompt_tokens": len(body.get("prompt", "x").split()) if not chat else 7,
                 "completion_tokens": n, "total_tokens": n + 7}
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
        return StreamingResponse(stream(body, chat), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


@pytest.fixture(scope="module")
def fake_server():
    state = {"bodies": [], "send_usage": True, "fail_castle": False}
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
    state.update(bodies=[], send_usage=True, fail_castle=False)
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
