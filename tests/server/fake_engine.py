"""A tiny stand-in for engine.AsyncEngine with exactly its interface, for fast server tests.

Tokens are bytes (id = byte + 3; 0 = BOS, 1 = EOS). Greedy choices spell ``script``
(default "The capital of France is Paris."); sampled ones spell letters drawn from a
``random.Random(seed)``, so the same seed gives the same text. Every call is recorded
(``requests``, ``aborted``) so tests can check what the server asked for. Logprobs, when
asked, are made up but fixed: ``fake_logprob(token, position)``, alternatives ``ALTERNATIVES``.
"""
from __future__ import annotations

import asyncio
import codecs
import random
from dataclasses import dataclass

from engine import CompletionOutput, EngineDeadError, RequestOutput, SamplingParams, TokenLogprob

BOS, EOS, OFFSET = 0, 1, 3
ALTERNATIVES = [OFFSET + ord(c) for c in "etaoinshrdlucmfwypvbgkjqxz"]  # top_logprobs ids, best first


def fake_logprob(token_id: int, position: int) -> float:
    return -0.25 * ((token_id * 7 + position) % 9) - 0.05


def fake_token_logprob(token_id: int, position: int, k: int) -> TokenLogprob:
    top = {t: -0.1 * (rank + 1) for rank, t in enumerate(ALTERNATIVES[:k])}
    return TokenLogprob(token_id, fake_logprob(token_id, position), top)


class FakeTokenizer:
    eos_token_ids = [EOS]
    vocab_size = 256 + OFFSET

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [b + OFFSET for b in text.encode("utf-8")]
        return [BOS, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - OFFSET for i in ids if i >= OFFSET).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        return self.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id - OFFSET]) if token_id >= OFFSET else b""

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None, **kw) -> str:
        if not messages:
            raise ValueError("no messages")
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@dataclass
class FakeModelConfig:
    name: str = "SmolLM2-135M-Instruct"
    vocab_size: int | None = None  # None: the tokenizer's


class FakeEngine:
    def __init__(self, max_model_len: int = 256, step_delay: float = 0.0,
                 script: str = "The capital of France is Paris.") -> None:
        self.model_config = FakeModelConfig()
        self.max_model_len = max_model_len
        self.tokenizer = FakeTokenizer()
        self.step_delay = step_delay
        self.script = script
        self.requests: dict[str, tuple[list[int], SamplingParams]] = {}
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.fail_with: BaseException | None = None  # raised from generate() after fail_after tokens
        self.fail_after = 0
        self.num_cached_tokens = 0  # reported in every RequestOutput
        self.started = False
        self.is_shut_down = False
        self._num_running = 0

    @classmethod
    def from_config(cls, config) -> "FakeEngine":
        return cls(max_model_len=config.max_model_len or 256)

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.is_shut_down = True

    def stats(self) -> dict:
        return {"num_running": self._num_running, "num_waiting": 0, "num_free_blocks": 100,
                "num_total_blocks": 100, "max_batch_size_seen": 1, "num_preemptions": 0}

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def _choice_ids(self, index: int, params: SamplingParams) -> list[int]:
        if params.temperature == 0:
            return self.tokenizer.encode(self.script, add_special_tokens=False) + [EOS]
        rng = random.Random(f"{params.seed}-{index}" if params.seed is not None else None)
        return [OFFSET + ord(rng.choice("abcdefgh ")) for _ in range(64)] + [EOS]

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str):
        if isinstance(self.fail_with, EngineDeadError) and self.fail_after == 0:
            raise self.fail_with
        self.requests[request_id] = (list(prompt_ids), params)
        max_tokens = params.max_tokens or self.max_model_len - len(prompt_ids)
        plans = [self._choice_ids(i, params) for i in range(params.n)]
        texts = ["" for _ in plans]
        # like the real detokenizer: a character's text comes out once all its bytes have
        utf8 = [codecs.getincrementaldecoder("utf-8")("replace") for _ in plans]
        done = [False for _ in plans]
        self._num_running += 1
        try:
            for step in range(max_tokens):
                if self.fail_with is not None and step >= self.fail_after:
                    raise self.fail_with
                await asyncio.sleep(self.step_delay)
                outs = []
                for i, plan in enumerate(plans):
                    if done[i]:
                        continue
                    token = plan[step] if step < len(plan) else OFFSET + ord(".")
                    out = CompletionOutput(index=i, text="", token_ids=[token], num_tokens=step + 1)
                    if params.logprobs is not None:
                        out.logprobs = [fake_token_logprob(token, step, params.logprobs)]
                    if token == EOS and not params.ignore_eos:
                        out.finish_reason, out.stop_reason = "stop", None
                    else:
                        out.text = utf8[i].decode(self.tokenizer.token_bytes(token))
                        texts[i] += out.text
                        hit = next((s for s in params.stop if s in texts[i]), None)
                        if hit is not None:
                            cut = texts[i].index(hit)
                            out.text = out.text[: max(0, len(out.text) - (len(texts[i]) - cut))]
                            out.finish_reason, out.stop_reason = "stop", hit
                        elif step + 1 == max_tokens:
                            out.finish_reason = "length"
                    done[i] = out.finish_reason is not None
                    outs.append(out)
                prompt_logprobs = None
                if step == 0 and params.prompt_logprobs is not None:
                    prompt_logprobs = [None] + [fake_token_logprob(t, q, params.prompt_logprobs)
                                                for q, t in enumerate(prompt_ids[1:])]
                yield RequestOutput(request_id=request_id, outputs=outs, num_prompt_tokens=len(prompt_ids),
                                    num_cached_tokens=self.num_cached_tokens, is_finished=all(done),
                                    prompt_logprobs=prompt_logprobs)
                if all(done):
                    self.finished.append(request_id)
                    return
        finally:
            self._num_running -= 1
