"""The server's CPU cost per streamed token, with the model's forward stubbed out.

    .venv/bin/python scripts/profile_server.py [--concurrency 16] [--requests 64] [--max-tokens 128]
                                               [--cprofile] [--model PATH]

Starts the real `gptserve serve` (server.__main__.serve, the same code as the CLI) in a child
process with ``ModelRunner.run`` replaced by a stub that "samples" the next token of a fixed
English text at once (no forward pass; the tokenizer, scheduler, detokenizer and everything
after them are real), then streams ``--requests`` requests, ``--concurrency`` at a time, half
/v1/completions and half /v1/chat/completions (stream, ignore_eos, max_tokens, include_usage),
from a separate client process. It reports the server's CPU seconds (per thread, from
/proc/<pid>/task/<tid>/schedstat, nanosecond resolution, so other load on the machine does not
count) over the streaming window, divided by the streamed output tokens.

``--cprofile`` also profiles both the event-loop thread and the engine thread (cProfile, only
during the measured window; it slows everything down, so read its split as shares, and the
plain run's numbers as the cost) and prints where the time goes by category.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "The quick brown fox jumps over the lazy dog. Streaming servers send text as it is generated, "
    "token by token, until a stop string appears or the length runs out. Models read tokens, compute "
    "attention over the keys and values, and predict the next token; the scheduler batches prefill and "
    "decode steps, and blocks of the cache are shared by prefixes. Café, naïve, résumé — and 12,345 "
    "numbers, symbols (#, $, %) and quotes: \"I'm sure they'll come; we're ready, aren't we?\" "
)

# ---------------------------------------------------------------------------------------------
# the server child


def serve_child(args: argparse.Namespace) -> int:
    """`gptserve serve` with the forward stubbed; cProfile toggled by SIGUSR1 when asked."""
    sys.path.insert(0, str(REPO))
    import engine.async_engine as ae
    import engine.llm_engine as le
    from server.__main__ import serve

    state = {"profile": False, "engine_prof": None, "main_prof": None}
    out_dir = Path(args.out_dir)

    original_init = le.LLMEngine.__init__

    def init(self, config):
        original_init(self, config)
        ids = self.tokenizer.encode(TEXT * 4, add_special_tokens=False)
        forward_s = args.forward_ms / 1000

        def run(sched):  # the next token of TEXT for every sampling sequence, no forward pass
            if forward_s:
                time.sleep(forward_s)
            return [ids[(s.num_tokens - s.num_prompt_tokens) % len(ids)] for s in sched.sample_seqs], None

        self.runner.run = run

    le.LLMEngine.__init__ = init

    original_step = le.LLMEngine.step

    def step(self):
        if state["profile"] and state["engine_prof"] is None:
            import cProfile
            state["engine_prof"] = cProfile.Profile(time.thread_time_ns, 1e-9)  # CPU, not wall
            state["engine_prof"].enable()
        return original_step(self)

    le.LLMEngine.step = step

    original_run = ae.AsyncEngine._run

    def run_loop(self):
        (out_dir / "engine_tid").write_text(str(threading.get_native_id()))
        try:
            original_run(self)
        finally:
            if state["engine_prof"] is not None:
                state["engine_prof"].disable()
                state["engine_prof"].dump_stats(out_dir / "engine.prof")

    ae.AsyncEngine._run = run_loop

    def start_profile(signum, frame):
        import cProfile
        state["profile"] = True
        state["main_prof"] = cProfile.Profile(time.thread_time_ns, 1e-9)
        state["main_prof"].enable()

    signal.signal(signal.SIGUSR1, start_profile)
    try:
        return serve(["--host", "127.0.0.1", "--port", str(args.port), "--max-num-seqs", str(args.concurrency),
                      "--kv-cache-memory-gb", "0.5", "--log-level", "warning",
                      *(["--model", args.model] if args.model else [])])
    finally:
        if state["main_prof"] is not None:
            state["main_prof"].disable()
            state["main_prof"].dump_stats(out_dir / "main.prof")


# ---------------------------------------------------------------------------------------------
# the client child


async def _one(client, url: str, i: int, max_tokens: int) -> dict:
    chat = i % 2 == 1
    body = {"max_tokens": max_tokens, "stream": True, "ignore_eos": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": f"Request {i}: tell me a long story about a fox."}]
    else:
        body["prompt"] = f"Request {i}: once upon a time, a fox"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    tokens = chunks = nbytes = 0
    async with client.stream("POST", url + path, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            nbytes += len(line)
            data = line[6:]
            if data == "[DONE]":
                break
            chunks += 1
            obj = json.loads(data)
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
    return {"tokens": tokens, "chunks": chunks, "bytes": nbytes}


async def _load(url: str, num_requests: int, concurrency: int, max_tokens: int) -> list[dict]:
    import httpx
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        async def guarded(i):
            async with sem:
                return await _one(client, url, i, max_tokens)
        return await asyncio.gather(*(guarded(i) for i in range(num_requests)))


def client_child(args: argparse.Namespace) -> int:
    results = asyncio.run(_load(args.url, args.requests, args.concurrency, args.max_tokens))
    print(json.dumps({"tokens": sum(r["tokens"] for r in results), "chunks": sum(r["chunks"] for r in results),
                      "bytes": sum(r["bytes"] for r in results), "requests": len(results)}))
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: start, measure, report


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of ``pid`` (schedstat: nanoseconds on a CPU)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return out


def run_client(url: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--client", "--url", url, "--requests", str(requests),
           "--concurrency", str(concurrency), "--max-tokens", str(max_tokens)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


CATEGORIES = [  # (category, substrings of a function's file name), first match wins
    ("forward stub (the profiler's script)", ("profile_server.py",)),
    ("engine: detokenizer", ("engine/detokenizer.py", "engine/tokenizer.py", "tokenizers")),
    ("engine: scheduler / blocks / sequence", ("engine/scheduler.py", "engine/block_manager.py",
                                               "engine/sequence.py")),
    ("engine: LLMEngine.step bookkeeping", ("engine/llm_engine.py", "engine/outputs.py", "dataclasses")),
    ("handoff (AsyncEngine, Generation, queues)", ("engine/async_engine.py", "server/generation.py",
                                                   "asyncio/queues.py", "queue.py", "threading.py",
                                                   "asyncio/locks.py", "asyncio/tasks.py", "anyio")),
    ("metrics (prometheus histograms per token)", ("server/metrics.py", "prometheus_client")),
    ("chunks (serving_*, protocol, pydantic, json)", ("server/serving", "server/protocol", "pydantic", "json/")),
    ("SSE / starlette / uvicorn / h11 / middleware", ("sse_starlette", "starlette", "uvicorn", "h11",
                                                      "fastapi", "server/", "httptools")),
    ("event loop / sockets", ("asyncio/", "selectors.py", "socket.py", "contextvars")),
]


def categorize(path: Path, total_cpu: float) -> list[tuple[str, float]]:
    """Each function's own time, by category; a builtin's goes to its heaviest caller's category."""
    import pstats
    stats = pstats.Stats(str(path)).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def category_of(func, depth=0) -> str:
        file = func[0]
        if file == "~" and depth < 8:  # builtin: inherit the caller's
            callers = stats[func][4]
            if callers:
                heaviest = max(callers.items(), key=lambda kv: kv[1][2])[0]
                return category_of(heaviest, depth + 1)
        for name, needles in CATEGORIES:
            if any(n in file for n in needles):
                return name
        return "other" if file != "~" else f"other builtin ({func[2]})"

    totals: dict[str, float] = {}
    for func, (_, _, tt, _, _) in stats.items():
        cat = category_of(func)
        totals[cat] = totals.get(cat, 0.0) + tt
    grand = sum(totals.values()) or 1.0
    return sorted(((c, t / grand) for c, t in totals.items()), key=lambda kv: -kv[1])


def top_functions(path: Path, n: int = 25) -> str:
    import io
    import pstats
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(n)
    return "\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent(args: argparse.Namespace) -> int:
    import httpx
    out_dir = Path(tempfile.mkdtemp(prefix="profile-server-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--out-dir", str(out_dir),
           "--concurrency", str(args.concurrency), "--forward-ms", str(args.forward_ms),
           *(["--model", args.model] if args.model else [])]
    log = open(out_dir / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                sys.exit(f"the server exited with {proc.returncode}:\n{(out_dir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the server did not get ready")
            time.sleep(0.3)
        run_client(url, 4, 2, 16)  # warm-up: imports, first-request paths
        engine_tid = int((out_dir / "engine_tid").read_text())
        if args.cprofile:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.2)
        before, t0, c0 = thread_cpu(proc.pid), time.perf_counter(), time.process_time()
        load = run_client(url, args.requests, args.concurrency, args.max_tokens)
        after, wall = thread_cpu(proc.pid), time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    delta = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    main, engine = delta.get(proc.pid, 0.0), delta.get(engine_tid, 0.0)
    total = sum(delta.values())
    tokens = load["tokens"]
    report = {
        "requests": load["requests"], "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "forward_ms": args.forward_ms, "cprofile": args.cprofile, "tokens": tokens, "chunks": load["chunks"],
        "sse_bytes": load["bytes"], "wall_s": round(wall, 3),
        "server_cpu_s": round(total, 3), "event_loop_thread_cpu_s": round(main, 3),
        "engine_thread_cpu_s": round(engine, 3), "other_threads_cpu_s": round(total - main - engine, 3),
        "us_per_token": {"total": round(total / tokens * 1e6, 1), "event_loop_thread": round(main / tokens * 1e6, 1),
                         "engine_thread": round(engine / tokens * 1e6, 1)},
    }
    print(json.dumps(report, indent=1))
    if args.cprofile:
        for name, label, cpu in (("main.prof", "event-loop thread", main), ("engine.prof", "engine thread", engine)):
            path = out_dir / name
            if not path.exists():
                print(f"(no {name})")
                continue
            print(f"\n== {label}: {cpu / tokens * 1e6:.1f} us/token (profiled run), by category (own time) ==")
            for cat, share in categorize(path, cpu):
                print(f"  {share * 100:5.1f} %  {cat}")
            if args.top:
                print(top_functions(path, args.top))
        print(f"\nprofiles: {out_dir}/main.prof, {out_dir}/engine.prof")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--forward-ms", type=float, default=0.0, help="sleep this long in the stubbed forward")
    ap.add_argument("--model", default=None, help="model path (default: the built-in default model)")
    ap.add_argument("--cprofile", action="store_true", help="also profile both threads and split by category")
    ap.add_argument("--top", type=int, default=0, help="with --cprofile: print the top N functions per thread")
    ap.add_argument("--json-out", default=None)
    # internal: the children
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve_child(args)
    if args.client:
        return client_child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
