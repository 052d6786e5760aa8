"""Soak test (not in CI): thousands of mixed requests against a running gptserve, 10% aborted;
the server's resident memory and the engine's request and block tables must return to baseline.

    python -m server serve --api-key KEY &          # or any running server
    python scripts/soak.py --url http://127.0.0.1:8000 --api-key KEY --requests 2000 --out soak.json

Mixed: /v1/completions and /v1/chat/completions, streamed or not, n 1–3, with and without a
seed, temperature 0 or not, stop strings, short max_tokens; a tenth are abandoned by the
client at a random point (before the answer, after a few stream events, or part-way through a
non-streamed wait). The server's RSS (``VmRSS`` of /proc/<pid>/status; ``--pid``, else the
process listening on the URL's port) and the engine's gauges from /metrics
(``gptserve:num_requests_running``, ``…_waiting``, ``…kv_cache_usage_perc``,
``…num_free_kv_blocks``) are sampled at baseline (after ``--warmup`` requests), during the run
and after it. Exit status 1 if, after the run, requests are still running or waiting, a KV
block is still held, RSS is more than ``--rss-tolerance-mib`` above the baseline, or any
request got a 5xx or a broken response; 0 otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "num_free_kv_blocks")
PROMPTS = ["The quick brown fox", "Write a haiku about the sea.", "What is the capital of France?",
           "List three colours:", "Once upon a time", "Explain paged attention in one sentence.",
           "def fibonacci(n):", "Translate 'good morning' into French."]
STOPS = [None, None, ["\n"], [".", "!"], ["the"]]


def read_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def find_listening_pid(port: int) -> int:
    """The pid whose socket listens on ``port`` (Linux: /proc/net/tcp* and /proc/*/fd)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise SystemExit(f"soak: no process of ours listens on port {port}; pass --pid")


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics", timeout=30)).text
    values = {}
    for line in text.splitlines():
        for name in GAUGES:
            if line.startswith(f"gptserve:{name} "):
                values[name] = float(line.split()[1])
    return values


def random_request(rng: random.Random, max_tokens: int) -> tuple[str, dict]:
    body: dict = {"max_tokens": rng.randint(1, max_tokens), "n": rng.choice([1, 1, 2, 3]),
                  "stream": rng.random() < 0.5, "temperature": rng.choice([0.0, 0.7, 1.0])}
    if rng.random() < 0.5:
        body["seed"] = rng.randrange(2**31)
    if (stop := rng.choice(STOPS)) is not None:
        body["stop"] = stop
    prompt = rng.choice(PROMPTS) + (f" ({rng.randrange(10**6)})" if rng.random() < 0.5 else "")
    if rng.random() < 0.5:
        return "/v1/completions", {"prompt": prompt, **body}
    return "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], **body}


def check_events(text: str, n: int) -> str | None:
    """None if the stream is whole: JSON events, one finish_reason per choice, then [DONE]."""
    datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    if not datas or datas[-1] != "[DONE]":
        return "no [DONE]"
    finished: dict[int, int] = {}
    for data in datas[:-1]:
        event = json.loads(data)
        if "error" in event:
            return f"error event: {event['error'].get('type')}"
        for choice in event["choices"]:
            if choice.get("finish_reason"):
                finished[choice["index"]] = finished.get(choice["index"], 0) + 1
    return None if finished == {i: 1 for i in range(n)} else f"finish reasons {finished}"


async def one(client: httpx.AsyncClient, rng: random.Random, max_tokens: int, abort_fraction: float) -> str:
    """Send one random request; its outcome: "ok", "aborted", "http <status>" or "broken: …"."""
    path, body = random_request(rng, max_tokens)
    is_abort = rng.random() < abort_fraction
    if is_abort and (not body["stream"] or rng.random() < 0.3):  # gone before (or while) the answer
        task = asyncio.create_task(client.post(path, json=body))
        await asyncio.sleep(rng.uniform(0, 0.3))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return "aborted"
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return f"http {response.status_code}"
        if is_abort:  # a streamed answer dropped after a few events
            num_events = rng.randint(0, 6)
            async for line in response.aiter_lines():
                if num_events <= 0:
                    break
                num_events -= line.startswith("data:")
            return "aborted"
        text = (await response.aread()).decode()
    if body["stream"]:
        problem = check_events(text, body["n"])
    else:
        choices = json.loads(text)["choices"]
        problem = None if len(choices) == body["n"] and all(c["finish_reason"] for c in choices) else "choices"
    return "ok" if problem is None else f"broken: {problem}"


async def wait_idle(client: httpx.AsyncClient, baseline: dict[str, float], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        gauges = await scrape(client)
        idle = (gauges["num_requests_running"] == 0 and gauges["num_requests_waiting"] == 0
                and gauges["kv_cache_usage_perc"] == 0
                and gauges["num_free_kv_blocks"] == baseline["num_free_kv_blocks"])
        if idle or time.monotonic() > deadline:
            return gauges
        await asyncio.sleep(0.5)


def redact(argv: list[str]) -> list[str]:
    """The command line without the API key's value."""
    return [("***" if prev == "--api-key" else arg.split("=", 1)[0] + "=***" if arg.startswith("--api-key=") else arg)
            for prev, arg in zip(["", *argv], argv)]


async def soak(args: argparse.Namespace, pid: int) -> dict:
    rng = random.Random(args.seed)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.request_timeout,
                                 limits=limits) as client:
        outcomes: dict[str, int] = {}
        samples: list[dict] = []
        started = time.monotonic()

        async def run(num_requests: int) -> None:
            todo = iter(range(num_requests))

            async def worker() -> None:
                for _ in todo:
                    try:
                        outcome = await one(client, rng, args.max_tokens, args.abort_fraction)
                    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
                        outcome = f"client error: {type(exc).__name__}"
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        async def sample(stop: asyncio.Event) -> None:
            while not stop.is_set():
                samples.append({"t": round(time.monotonic() - started, 1), "rss_mib": read_rss_bytes(pid) / 2**20,
                                "done": sum(outcomes.values()), **await scrape(client)})
                try:
                    await asyncio.wait_for(stop.wait(), args.sample_seconds)
                except asyncio.TimeoutError:
                    pass

        deadline = time.monotonic() + 600
        while (await client.get("/ready")).status_code != 200:  # the model may still be loading
            if time.monotonic() > deadline:
                raise SystemExit("soak: the server did not become ready in 600 s")
            await asyncio.sleep(1)
        print(f"soak: warm-up, {args.warmup} requests", file=sys.stderr)
        await run(args.warmup)
        warmup_outcomes = dict(outcomes)
        outcomes.clear()
        baseline_gauges = await wait_idle(client, await scrape(client), timeout=60)
        await asyncio.sleep(args.settle_seconds)
        baseline_rss = read_rss_bytes(pid)
        print(f"soak: baseline RSS {baseline_rss / 2**20:.1f} MiB, {baseline_gauges}; "
              f"{args.requests} requests, concurrency {args.concurrency}", file=sys.stderr)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        run_started = time.monotonic()
        await run(args.requests)
        run_seconds = time.monotonic() - run_started
        stop.set()
        await sampler
        after_gauges = await wait_idle(client, baseline_gauges, timeout=60)
        await asyncio.sleep(args.settle_seconds)
        after_rss = read_rss_bytes(pid)
        health = (await client.get("/health")).status_code

    peak_rss = max([baseline_rss, after_rss, *(s["rss_mib"] * 2**20 for s in samples)])
    failures = []
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        if after_gauges[name] != 0:
            failures.append(f"{name} is {after_gauges[name]} after the run")
    if after_gauges["num_free_kv_blocks"] != baseline_gauges["num_free_kv_blocks"]:
        failures.append(f"free KV blocks {after_gauges['num_free_kv_blocks']} after, "
                        f"{baseline_gauges['num_free_kv_blocks']} at baseline")
    if after_rss - baseline_rss > args.rss_tolerance_mib * 2**20:
        failures.append(f"RSS grew {(after_rss - baseline_rss) / 2**20:.1f} MiB (tolerance {args.rss_tolerance_mib} MiB)")
    bad = {k: v for k, v in outcomes.items() if k not in ("ok", "aborted") and not k.startswith("http 4")}
    if bad:
        failures.append(f"failed requests: {bad}")
    if health != 200:
        failures.append(f"/health {health} after the run")
    return {
        "command": " ".join([sys.executable, *redact(sys.argv)]), "url": args.url, "pid": pid,
        "requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens, "abort_fraction": args.abort_fraction, "seed": args.seed,
        "run_seconds": round(run_seconds, 1), "outcomes": outcomes, "warmup_outcomes": warmup_outcomes,
        "rss_mib": {"baseline": round(baseline_rss / 2**20, 1), "peak": round(peak_rss / 2**20, 1),
                    "after": round(after_rss / 2**20, 1), "tolerance": args.rss_tolerance_mib},
        "gauges": {"baseline": baseline_gauges, "after": after_gauges}, "health_after": health,
        "samples": samples, "failures": failures, "passed": not failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("GPTSERVE_API_KEY", "").split(",")[0] or None)
    parser.add_argument("--pid", type=int, help="the server's pid (default: the process listening on the port)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100, help="requests before the baseline is taken")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16, help="each request asks for 1..this many")
    parser.add_argument("--abort-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-tolerance-mib", type=float, default=64.0,
                        help="RSS after the run may exceed the baseline (after warm-up) by this much")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    parser.add_argument("--request-timeout", type=float, default=300.0, help="client timeout per request")
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    args = parser.parse_args(argv)
    pid = args.pid or find_listening_pid(urlparse(args.url).port or 80)
    result = asyncio.run(soak(args, pid))
    args.out.write_text(json.dumps(result, indent=1))
    rss = result["rss_mib"]
    print(f"soak: {args.requests} requests in {result['run_seconds']} s: {result['outcomes']}")
    print(f"soak: RSS baseline {rss['baseline']} MiB, peak {rss['peak']} MiB, after {rss['after']} MiB "
          f"(tolerance {rss['tolerance']} MiB)")
    print(f"soak: gauges baseline {result['gauges']['baseline']}, after {result['gauges']['after']}")
    print(f"soak: {'PASSED' if result['passed'] else 'FAILED: ' + '; '.join(result['failures'])} ({args.out})")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
