"""`gptserve bench`: load-test any OpenAI-compatible server (like vLLM's `bench serve`).

Sends streaming requests to /v1/completions (or /v1/chat/completions) with a fixed prompt length
(in words, from a seeded synthetic prompt set; every request gets a distinct prompt, so prefix
caches do not flatter anyone) and a fixed output length (``max_tokens`` with ``ignore_eos`` and
``min_tokens``, which gptserve, vLLM and llama.cpp's llama-server all honour), either as a
concurrency sweep (``--concurrency 1,4,16,64``) or at Poisson request rates (``--request-rate``).

Per request it measures TTFT (first chunk with text), inter-token latencies (gaps between chunks
with text) and TPOT = (e2e - TTFT) / (output tokens - 1); output tokens come from the stream's
``usage`` (``stream_options.include_usage``) where the server sends it, else from the chunk count.
Per level it reports output tokens/s, requests/s and the p50/p99 of TTFT, ITL, TPOT and e2e
latency as a table, and as JSON with ``--json-out``.

With ``--multi-turn N`` each simulated user holds an N-turn chat over /v1/chat/completions: every
turn sends the whole conversation so far (an optional shared system prompt of
``--system-prompt-words``, each earlier user message and the answer the server streamed back)
plus a new seeded user message of ``--prompt-words`` words; ``--concurrency`` is the number of
conversations in flight and ``--num-prompts`` the conversations per level. The table and the JSON
add TTFT (p50/p99), prompt tokens and cached prompt tokens (``usage.prompt_tokens_details``) per
turn index, which is what a prefix cache changes.

    python -m clients.bench --base-url http://127.0.0.1:8000/v1 --concurrency 1,4 --label gptserve
    python -m clients.bench --multi-turn 5 --system-prompt-words 200 --concurrency 1 --num-prompts 4
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlparse

# A plain vocabulary for synthetic prompts: common English words, so every tokenizer splits them
# into few tokens (one token a word, give or take, for SmolLM2's tokenizer: 48 words ~ 48 tokens).
WORDS = """
time person year way day thing man world life hand part child eye woman place work week case
point government company number group problem fact be have do say get make go know take see
come think look want give use find tell ask seem feel try leave call good new first last long
great little own other old right big high different small large next early young important few
public bad same able to of in for on with at by from up about into over after beneath under
above the and a that I it not he as you this but his they her she or an will my one all would
there their what so if about which when make can like time no just him know take people into
year your good some could them see other than then now look only come its over think also back
after use two how our work first well way even new want because any these give day most us river
mountain garden window kitchen library morning evening winter summer autumn spring ocean forest
city village market street bridge castle island valley desert harbor station museum school
teacher student doctor farmer painter writer singer driver pilot sailor baker gardener neighbor
friend family history science music story letter answer question reason example picture
language country animal flower weather journey dinner breakfast coffee bread apple orange
silver golden quiet bright gentle careful curious patient simple strange famous ancient modern
""".split()

PERCENTILES = (50, 99)


class BenchError(Exception):
    """The run cannot start (e.g. the server is unreachable)."""


def synthetic_prompt(seed: int, index: int | str, words: int) -> str:
    """The ``index``-th prompt of the set for ``seed``: ``words`` space-separated words."""
    rng = random.Random(f"{seed}:{index}")
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return body


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    prompt_words: int = 0
    prompt_tokens: int | None = None  # from usage, when the server sends it
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when sent
    output_tokens: int = 0  # from usage, else the number of chunks with text
    chunks: int = 0  # chunks that carried text
    usage_reported: bool = False
    ttft: float | None = None  # seconds
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    start: float = 0.0  # perf_counter at send, relative to the level's start
    conversation: int | None = None  # --multi-turn: which conversation, and which turn (from 1)
    turn: int | None = None
    text: str = ""  # the streamed text (the next turn sends it back as the assistant message)

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    # linear interpolation between closest ranks (numpy's default)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _stats_ms(values: list[float]) -> dict:
    out: dict = {"mean": (sum(values) / len(values) * 1000) if values else None}
    for q in PERCENTILES:
        p = _percentile(values, q)
        out[f"p{q}"] = p * 1000 if p is not None else None
    return out


def _text_of(chunk: dict, chat: bool) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if chat:
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""


async def one_request(client, url: str, headers: dict, body: dict, chat: bool, t_level: float) -> RequestResult:
    """Send one streaming request and time its chunks; never raises (errors go in the result)."""
    res = RequestResult()
    t0 = time.perf_counter()
    res.start = t0 - t_level
    last = None
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread())[:300].decode("utf-8", "replace")
                res.error = f"HTTP {resp.status_code}: {detail}"
                return res
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    res.error = f"bad SSE data: {data[:200]}"
                    return res
                if "error" in chunk and not chunk.get("choices"):
                    res.error = f"error in stream: {json.dumps(chunk['error'])[:300]}"
                    return res
                text = _text_of(chunk, chat)
                if text:
                    res.text += text
                    if last is None:
                        res.ttft = now - t0
                    else:
                        res.itl.append(now - last)
                    last = now
                    res.chunks += 1
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    res.usage_reported = True
                    res.output_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        res.prompt_tokens = int(usage["prompt_tokens"])
                    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                    if cached is not None:
                        res.cached_tokens = int(cached)
            res.e2e = time.perf_counter() - t0
            if not done:
                res.error = "stream ended without [DONE]"
                return res
    except Exception as exc:  # noqa: BLE001 - any failure is one failed request, not a crashed sweep
        res.error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        return res
    if not res.usage_reported:
        res.output_tokens = res.chunks
    if res.ttft is None:
        res.error = "no text in the stream"
        return res
    res.ok = True
    return res


def build_body(args, model: str, prompt: str | None, messages: list[dict] | None = None) -> dict:
    if messages is not None:
        body: dict = {"model": model, "messages": messages}
    elif args.endpoint == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    else:
        body = {"model": model, "prompt": prompt}
    body.update({
        "max_tokens": args.output_tokens,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    if not args.no_ignore_eos:
        # gptserve/vLLM: ignore_eos + min_tokens; llama-server: ignore_eos (+ max_tokens -> n_predict)
        body["ignore_eos"] = True
        body["min_tokens"] = args.output_tokens
    if args.extra_body:
        body.update(args.extra_body)
    return body


def summarize(results: list[RequestResult], duration: float, expected_tokens: int | None) -> dict:
    good = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    out_tokens = sum(r.output_tokens for r in good)
    in_tokens = sum(r.prompt_tokens or 0 for r in good)
    errors: dict[str, int] = {}
    for r in bad:
        errors[r.error or "?"] = errors.get(r.error or "?", 0) + 1
    itl = [x for r in good for x in r.itl]
    summary = {
        "requests": len(results),
        "completed": len(good),
        "failed": len(bad),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "duration_s": duration,
        "total_output_tokens": out_tokens,
        "total_input_tokens": in_tokens if all(r.prompt_tokens is not None for r in good) else None,
        "total_cached_tokens": (sum(r.cached_tokens for r in good)
                                if good and all(r.cached_tokens is not None for r in good) else None),
        "output_tokens_per_request": sorted({r.output_tokens for r in good}),
        "length_mismatches": sum(1 for r in good if expected_tokens and r.output_tokens != expected_tokens),
        "usage_reported": all(r.usage_reported for r in good) if good else False,
        "output_throughput_tok_s": out_tokens / duration if duration > 0 else None,
        "request_throughput_req_s": len(good) / duration if duration > 0 else None,
        "ttft_ms": _stats_ms([r.ttft for r in good if r.ttft is not None]),
        "tpot_ms": _stats_ms([r.tpot for r in good if r.tpot is not None]),
        "itl_ms": _stats_ms(itl),
        "e2e_ms": _stats_ms([r.e2e for r in good if r.e2e is not None]),
    }
    return summary


async def run_level(client, args, model: str, url: str, headers: dict, *, concurrency: int | None,
                    rate: float | None, num_requests: int, first_index: int, rng: random.Random) -> dict:
    chat = args.endpoint == "chat"
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    t_level = time.perf_counter()

    async def task(i: int) -> RequestResult:
        body = build_body(args, model, synthetic_prompt(args.seed, first_index + i, args.prompt_words))
        if sem is None:
            r = await one_request(client, url, headers, body, chat, t_level)
        else:
            async with sem:
                r = await one_request(client, url, headers, body, chat, t_level)
        r.prompt_words = args.prompt_words
        return r

    tasks = []
    for i in range(num_requests):
        if rate is not None and i > 0 and math.isfinite(rate):
            await asyncio.sleep(rng.expovariate(rate))
        tasks.append(asyncio.create_task(task(i)))
    results = await asyncio.gather(*tasks)
    duration = time.perf_counter() - t_level
    summary = summarize(list(results), duration, None if args.no_ignore_eos else args.output_tokens)
    summary.update({"concurrency": concurrency, "request_rate": rate})
    if args.save_requests:
        summary["per_request"] = _per_request(results)
    return summary


def _per_request(results: list[RequestResult]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "text"} | {"tpot": r.tpot, "output_chars": len(r.text)}
            for r in results]


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_turns(results: list[RequestResult], turns: int) -> list[dict]:
    """Per turn index (1..turns): counts, mean prompt/cached tokens, TTFT, TPOT and e2e stats."""
    out = []
    for turn in range(1, turns + 1):
        rs = [r for r in results if r.turn == turn]
        good = [r for r in rs if r.ok]
        prompt = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
        cached = [r.cached_tokens for r in good if r.cached_tokens is not None]
        out.append({
            "turn": turn, "requests": len(rs), "completed": len(good), "failed": len(rs) - len(good),
            "prompt_tokens_mean": _mean(prompt) if len(prompt) == len(good) else None,
            "cached_tokens_mean": _mean(cached) if len(cached) == len(good) else None,
            "ttft_ms": _stats_ms([r.ttft for r in good if r.ttft is not None]),
            "tpot_ms": _stats_ms([r.tpot for r in good if r.tpot is not None]),
            "e2e_ms": _stats_ms([r.e2e for r in good if r.e2e is not None]),
        })
    return out


def multi_turn_prompt(seed: int, conversation: int, turn: int, words: int) -> str:
    """The user message of ``turn`` (from 1) in ``conversation``: seeded, ``words`` words."""
    return synthetic_prompt(seed, f"chat{conversation}.{turn}", words)


def system_prompt(seed: int, words: int) -> str:
    """The system prompt every conversation of a run shares (``words`` words; seeded)."""
    return synthetic_prompt(seed, "system", words)


async def run_multi_turn_level(client, args, model: str, url: str, headers: dict, *, concurrency: int,
                               num_conversations: int, first_index: int) -> dict:
    """``num_conversations`` chats of ``args.multi_turn`` turns, ``concurrency`` of them at a time.

    A conversation's turns go one after the other; each sends the conversation so far (system
    prompt, earlier user messages and the answers streamed back) plus a new user message. A failed
    turn ends its conversation: its later turns are counted as failed, never sent.
    """
    sem = asyncio.Semaphore(concurrency)
    t_level = time.perf_counter()
    system = system_prompt(args.seed, args.system_prompt_words) if args.system_prompt_words else None

    async def conversation(c: int) -> list[RequestResult]:
        results: list[RequestResult] = []
        async with sem:
            messages = [{"role": "system", "content": system}] if system else []
            for turn in range(1, args.multi_turn + 1):
                messages.append({"role": "user",
                                 "content": multi_turn_prompt(args.seed, c, turn, args.prompt_words)})
                r = await one_request(client, url, headers, build_body(args, model, None, list(messages)),
                                      True, t_level)
                r.conversation, r.turn, r.prompt_words = c, turn, args.prompt_words
                results.append(r)
                if not r.ok:
                    for later in range(turn + 1, args.multi_turn + 1):
                        results.append(RequestResult(error=f"not sent: turn {turn} of the conversation failed",
                                                     conversation=c, turn=later, prompt_words=args.prompt_words))
                    break
                messages.append({"role": "assistant", "content": r.text})
        return results

    per_conv = await asyncio.gather(*(conversation(first_index + i) for i in range(num_conversations)))
    duration = time.perf_counter() - t_level
    results = [r for conv in per_conv for r in conv]
    summary = summarize(results, duration, None if args.no_ignore_eos else args.output_tokens)
    summary.update({"concurrency": concurrency, "request_rate": None, "conversations": num_conversations,
                    "turns": args.multi_turn, "per_turn": summarize_turns(results, args.multi_turn)})
    if args.save_requests:
        summary["per_request"] = _per_request(results)
    return summary


def _fmt(v, nd=1) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def format_table(label: str, levels: list[dict]) -> str:
    head = ["label", "conc", "rate", "ok", "fail", "dur s", "out tok/s", "req/s",
            "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50", "ITL p99", "tok/req"]
    rows = [head]
    for lv in levels:
        toks = lv["output_tokens_per_request"]
        tok = "-" if not toks else (str(toks[0]) if len(toks) == 1 else f"{toks[0]}-{toks[-1]}")
        rows.append([
            label, str(lv["concurrency"] or "-"), _fmt(lv["request_rate"], 2) if lv["request_rate"] else "-",
            str(lv["completed"]), str(lv["failed"]), _fmt(lv["duration_s"], 1),
            _fmt(lv["output_throughput_tok_s"], 1), _fmt(lv["request_throughput_req_s"], 2),
            _fmt(lv["ttft_ms"]["p50"]), _fmt(lv["ttft_ms"]["p99"]),
            _fmt(lv["tpot_ms"]["p50"]), _fmt(lv["tpot_ms"]["p99"]),
            _fmt(lv["itl_ms"]["p50"]), _fmt(lv["itl_ms"]["p99"]), tok])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(latencies in ms; tok/req = output tokens per request seen)"


def format_turn_table(label: str, levels: list[dict]) -> str:
    """--multi-turn: one row per (level, turn index)."""
    head = ["label", "conc", "turn", "ok", "fail", "prompt tok", "cached tok",
            "TTFT p50", "TTFT p99", "TPOT p50", "e2e p50"]
    rows = [head]
    for lv in levels:
        for t in lv.get("per_turn") or []:
            rows.append([
                label, str(lv["concurrency"]), str(t["turn"]), str(t["completed"]), str(t["failed"]),
                _fmt(t["prompt_tokens_mean"]), _fmt(t["cached_tokens_mean"]),
                _fmt(t["ttft_ms"]["p50"]), _fmt(t["ttft_ms"]["p99"]), _fmt(t["tpot_ms"]["p50"]),
                _fmt(t["e2e_ms"]["p50"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(per turn of the conversations; prompt/cached tok = means from usage; latencies in ms)"


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _rate_list(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive rates (inf = all at once)")
    return values


def _json_obj(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object")
    return value


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def machine_info() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu or platform.processor() or None,
            "platform": platform.platform(), "python": platform.python_version()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptserve bench", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 base URL")
    p.add_argument("--api-key", default=(os.environ.get("GPTSERVE_API_KEY", "").split(",")[0]
                                         or os.environ.get("OPENAI_API_KEY") or None),
                   help="bearer token (default: first of GPTSERVE_API_KEY, else OPENAI_API_KEY)")
    p.add_argument("--model", default=None, help="model name (default: the first id from /v1/models)")
    p.add_argument("--endpoint", choices=("completions", "chat"), default=None,
                   help="completions (default) or chat; --multi-turn is always chat")
    p.add_argument("--prompt-words", type=int, default=48,
                   help="words per synthetic prompt (with --multi-turn: per user message)")
    p.add_argument("--multi-turn", type=int, default=None, metavar="N",
                   help="simulate N-turn chats: each turn resends the conversation so far plus a new user "
                        "message; --num-prompts counts conversations; reports TTFT per turn")
    p.add_argument("--system-prompt-words", type=int, default=0,
                   help="with --multi-turn: a system prompt of this many words, shared by every conversation")
    p.add_argument("--output-tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt set and the arrival times")
    p.add_argument("--concurrency", type=_int_list, default=[1, 4, 16, 64],
                   help="comma-separated concurrency levels to sweep (default 1,4,16,64)")
    p.add_argument("--request-rate", type=_rate_list, default=None,
                   help="Poisson arrival rates in requests/s to sweep instead of concurrency "
                        "(inf = all at once); --max-concurrency caps requests in flight")
    p.add_argument("--max-concurrency", type=int, default=None, help="with --request-rate: cap in flight")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="requests per level (default: max(4*concurrency, 8); with --request-rate 32)")
    p.add_argument("--warmup-requests", type=int, default=1, help="unmeasured requests before the sweep")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="do not send ignore_eos/min_tokens (for servers that reject them)")
    p.add_argument("--extra-body", type=_json_obj, default=None, help="JSON object merged into every request")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--label", default=None, help="name of this run (e.g. gptserve, llama-server)")
    p.add_argument("--json-out", default=None, help="write the results as JSON to this file")
    p.add_argument("--save-requests", action="store_true", help="include per-request timings in the JSON")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a base URL that is not a loopback address (this tool generates load)")
    return p


async def _amain(args) -> dict:
    import httpx

    base = args.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    levels = args.request_rate if args.request_rate else args.concurrency
    max_inflight = max(args.concurrency) if not args.request_rate else (args.max_concurrency or 256)
    if args.request_rate and args.num_prompts is None:
        args.num_prompts = 32
    limits = httpx.Limits(max_connections=max_inflight + 4, max_keepalive_connections=max_inflight + 4)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    url = f"{base}/chat/completions" if args.endpoint == "chat" else f"{base}/completions"
    report: dict = {
        "label": args.label, "base_url": base, "endpoint": args.endpoint,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: getattr(args, k) for k in (
            "prompt_words", "output_tokens", "seed", "concurrency", "request_rate", "max_concurrency",
            "num_prompts", "warmup_requests", "temperature", "no_ignore_eos", "extra_body", "timeout",
            "multi_turn", "system_prompt_words")},
        "results": [],
    }
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        model = args.model
        if model is None:
            try:
                r = await client.get(f"{base}/models", headers=headers)
                r.raise_for_status()
                model = r.json()["data"][0]["id"]
            except Exception as exc:  # noqa: BLE001
                raise BenchError(f"gptserve bench: cannot list models at {base}/models: {exc}") from exc
        report["model"] = model
        rng = random.Random(args.seed)
        # Prompt indices: warmup first, then each level's requests; all distinct.
        index = 0
        if args.warmup_requests > 0:
            warm = await run_level(client, args, model, url, headers, concurrency=args.warmup_requests,
                                   rate=None, num_requests=args.warmup_requests, first_index=10**6, rng=rng)
            report["warmup"] = {"completed": warm["completed"], "failed": warm["failed"], "errors": warm["errors"]}
            if warm["failed"]:
                print(f"warning: {warm['failed']} warmup request(s) failed: {warm['errors']}", file=sys.stderr)
        for level in levels:
            if args.request_rate:
                conc, rate = args.max_concurrency, level
                n = args.num_prompts
            else:
                conc, rate = int(level), None
                n = args.num_prompts if args.num_prompts is not None else max(4 * conc, 8)
            what = f"{n} conversations of {args.multi_turn} turns" if args.multi_turn else f"{n} requests"
            print(f"[{args.label or base}] {'rate ' + str(rate) if rate else 'concurrency ' + str(conc)}: "
                  f"{what} ...", file=sys.stderr, flush=True)
            if args.multi_turn:
                summary = await run_multi_turn_level(client, args, model, url, headers, concurrency=conc,
                                                     num_conversations=n, first_index=index)
            else:
                summary = await run_level(client, args, model, url, headers, concurrency=conc, rate=rate,
                                          num_requests=n, first_index=index, rng=rng)
            index += n
            report["results"].append(summary)
            if summary["failed"]:
                print(f"  {summary['failed']} failed: {summary['errors']}", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.prompt_words < 1 or args.output_tokens < 1:
        print("gptserve bench: --prompt-words and --output-tokens must be positive", file=sys.stderr)
        return 2
    if args.multi_turn is not None:
        if args.multi_turn < 1 or args.system_prompt_words < 0:
            print("gptserve bench: --multi-turn must be positive and --system-prompt-words not negative",
                  file=sys.stderr)
            return 2
        if args.request_rate or args.endpoint == "completions":
            print("gptserve bench: --multi-turn runs chats at --concurrency levels (not with --request-rate "
                  "or --endpoint completions)", file=sys.stderr)
            return 2
        args.endpoint = "chat"
    elif args.system_prompt_words:
        print("gptserve bench: --system-prompt-words needs --multi-turn", file=sys.stderr)
        return 2
    args.endpoint = args.endpoint or "completions"
    host = urlparse(args.base_url).hostname
    if not args.allow_remote and not _is_loopback(host):
        print(f"gptserve bench: {host!r} is not a loopback address; pass --allow-remote to load it anyway",
              file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_amain(args))
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    label = args.label or report.get("model") or "server"
    print(f"model: {report['model']}  endpoint: /v1/{'chat/completions' if args.endpoint == 'chat' else 'completions'}"
          f"  prompt: {args.prompt_words} words  output: {args.output_tokens} tokens"
          f"{'' if args.no_ignore_eos else ' (ignore_eos)'}"
          + (f"  chats of {args.multi_turn} turns, system prompt {args.system_prompt_words} words"
             if args.multi_turn else ""))
    print(format_table(label, report["results"]))
    if args.multi_turn:
        print()
        print(format_turn_table(label, report["results"]))
    mismatched = sum(lv["length_mismatches"] for lv in report["results"])
    if mismatched:
        print(f"warning: {mismatched} request(s) did not produce exactly {args.output_tokens} tokens", file=sys.stderr)
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    failed = sum(lv["failed"] for lv in report["results"])
    completed = sum(lv["completed"] for lv in report["results"])
    return 1 if failed and not completed else 0


if __name__ == "__main__":
    sys.exit(main())
