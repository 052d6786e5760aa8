"""The synchronous engine: add_request / step / abort_request (tests, offline use).

Its step loop is the nano-vllm shape: schedule, run, postprocess. Building the model (device,
dtype, weights, quantization, attention backend) is engine/model_loader.py's; the KV pool is the
model runner's.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.model_loader import build_model
from engine.model_runner import ModelRunner
from engine.outputs import CompletionOutput, RequestOutput
from engine.pacing import context_scale
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence

logger = logging.getLogger("gptserve.engine")


class PromptTooLongError(ValueError):
    """The prompt (plus the tokens asked for) does not fit the model's context."""


@dataclass
class _RequestState:
    request_id: str
    num_prompt_tokens: int
    seqs: list[Sequence] = field(default_factory=list)


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_requests: int
    num_steps: int
    max_batch_size_seen: int
    num_preemptions: int
    num_prefix_queries: int
    num_prefix_hits: int
    num_prompt_tokens: int
    num_generation_tokens: int


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        t0 = time.perf_counter()
        self.loaded = loaded = build_model(config)  # engine/model_loader.py: the model and its backend
        mc = self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.max_model_len = loaded.max_model_len
        self.device, self.dtype = loaded.device, loaded.dtype
        self.quantization = loaded.quantization  # /v1/models'
        self.runner = ModelRunner(loaded, config)  # it sizes the KV pool
        num_blocks = self.runner.num_kv_blocks
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager, context_scale(
            mc.hidden_size, mc.intermediate_size, mc.num_attention_heads * mc.head_dim,
            mc.num_key_value_heads * mc.head_dim, gated=mc.mlp_gated))
        if config.fault_injection_step is not None:
            self.runner.fault_hook = self._inject_fault
        self.eos_token_ids = set(self.tokenizer.eos_token_ids) | set(mc.eos_token_ids)
        self._requests: dict[str, _RequestState] = {}
        self._seq_counter = itertools.count()
        self.num_steps = 0
        self.max_batch_size_seen = 0
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.load_seconds = time.perf_counter() - t0
        logger.info(
            "loaded %s in %.1fs: %s, %s, %d KV blocks of %d tokens (%d tokens)",
            mc.name, self.load_seconds, self.device, str(self.dtype).removeprefix("torch."),
            num_blocks, config.block_size, num_blocks * config.block_size,
        )

    def _inject_fault(self) -> None:
        if self.num_steps + 1 == self.config.fault_injection_step:
            raise RuntimeError(f"injected fault at step {self.num_steps + 1}")

    @property
    def num_kv_tokens(self) -> int:
        return self.block_manager.num_blocks * self.block_manager.block_size

    # -- requests ---------------------------------------------------------------------------

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Validate a request against the context; return its resolved max_tokens."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        bad = [t for t in prompt_ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of the vocabulary (0..{self.model_config.vocab_size - 1})")
        # the sampler indexes the logits (the model's vocabulary, not the tokenizer's) with these
        bad = [t for t in [*(params.logit_bias or {}), *params.stop_token_ids] if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} in logit_bias or stop_token_ids is out of the model's vocabulary "
                             f"(0..{self.model_config.vocab_size - 1})")
        room = self.max_model_len - len(prompt_ids)
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            asked = params.max_tokens or 1
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + asked} tokens ({len(prompt_ids)} in the messages, {asked} in the completion). "
                f"Please reduce the length of the messages or completion."
            )
        blocks_needed = -(-(len(prompt_ids) + (params.max_tokens or room)) // self.block_manager.block_size)
        if blocks_needed > self.block_manager.num_blocks:
            raise PromptTooLongError(
                f"the request needs {blocks_needed} KV blocks but the cache holds {self.block_manager.num_blocks}"
            )
        return params.max_tokens if params.max_tokens is not None else room

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        max_tokens = self.check_request(prompt_ids, params)
        state = _RequestState(request_id, len(prompt_ids))
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
        for index in range(params.n):
            seq = Sequence(next(self._seq_counter), request_id, index, prompt_ids, params, max_tokens)
            seq.stop_token_set = stop_ids
            seq.guide = params.guide.clone() if params.guide is not None else None
            if params.seed is not None:
                seq.generator = torch.Generator(device=self.device)
                seq.generator.manual_seed(params.seed + index * 7919)
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, prompt_ids, stop=params.stop,
                include_stop_str_in_output=params.include_stop_str_in_output,
            )
            state.seqs.append(seq)
        state.seqs[0].children = state.seqs[1:]
        self._requests[request_id] = state
        self.scheduler.add(state.seqs[0])
        self.num_prompt_tokens += len(prompt_ids)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks now; returns its final (abort) output."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return None
        self.scheduler.abort(request_id)
        outputs = []
        for seq in state.seqs:
            if seq.finish_reason in (None, "abort"):
                seq.finish_reason = "abort"
                outputs.append(CompletionOutput(seq.index, "", [], seq.num_completion_tokens, "abort"))
        return RequestOutput(request_id, outputs, state.num_prompt_tokens, state.seqs[0].num_cached_tokens, True)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    # -- the step -----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        self.runner.copy_blocks(self.block_manager.pending_copies)
        self.block_manager.pending_copies = []
        started = time.perf_counter()
        token_ids, logprobs = self.runner.run(sched)
        self.scheduler.pacer.observe(sched.num_decodes, sched.prefill_cost, time.perf_counter() - started)
        self.scheduler.postprocess(sched)
        self.num_steps += 1
        self.max_batch_size_seen = max(self.max_batch_size_seen, len(sched.seqs))
        changed: dict[str, list[Sequence]] = {}
        append_token = self._append_token
        if logprobs:
            for seq, token_id, logprob in zip(sched.sample_seqs, token_ids, logprobs):
                append_token(seq, token_id, logprob)
                changed.setdefault(seq.request_id, []).append(seq)
        else:
            for seq, token_id in zip(sched.sample_seqs, token_ids):
                append_token(seq, token_id, None)
                if seq.request_id in changed:
                    changed[seq.request_id].append(seq)
                else:
                    changed[seq.request_id] = [seq]
        self.num_generation_tokens += len(token_ids)
        self.scheduler.remove_finished()
        make_output = self._make_output
        return [make_output(rid, seqs) for rid, seqs in changed.items()]

    def _append_token(self, seq: Sequence, token_id: int, logprob) -> None:
        token_ids = seq.token_ids
        token_ids.append(token_id)
        if logprob is not None:
            seq.pending_logprobs.append(logprob)
        guide = seq.guide
        if guide is not None:
            guide.accept(token_id)
        # EOS and stop_token_ids end the choice without adding their text (the sampler keeps
        # them out until min_tokens is reached).
        if token_id in seq.stop_token_set:
            seq.stop_reason = token_id if token_id in seq.params.stop_token_ids else None
            seq.pending_text += seq.detokenizer.flush()
            self.scheduler.finish(seq, "stop")
            return
        delta, stop = seq.detokenizer.step((token_id,))
        if delta:
            seq.pending_text += delta
        if stop is not None:
            seq.stop_reason = stop
            self.scheduler.finish(seq, "stop")
        elif guide is not None and guide.is_terminated():  # the grammar is complete
            seq.pending_text += seq.detokenizer.flush()
            self.scheduler.finish(seq, "stop")
        elif len(token_ids) - seq.num_prompt_tokens >= seq.max_tokens or len(token_ids) >= self.max_model_len:
            seq.pending_text += seq.detokenizer.flush()
            self.scheduler.finish(seq, "length")

    def _make_output(self, request_id: str, seqs: list[Sequence]) -> RequestOutput:
        state = self._requests[request_id]
        outputs = []
        for seq in seqs:
            token_ids = seq.token_ids
            num_completion = len(token_ids) - seq.num_prompt_tokens
            new_ids = token_ids[seq.num_prompt_tokens + seq.num_emitted_tokens :]
            seq.num_emitted_tokens = num_completion
            text, seq.pending_text = seq.pending_text, ""
            lps = seq.pending_logprobs
            if lps:
                seq.pending_logprobs = []
            else:
                lps = None
            outputs.append(CompletionOutput(
                seq.index, text, new_ids, num_completion, seq.finish_reason, lps, seq.stop_reason,
            ))
        all_seqs = state.seqs
        is_finished = all_seqs[0].is_finished if len(all_seqs) == 1 else all(s.is_finished for s in all_seqs)
        if is_finished:
            del self._requests[request_id]
        first = all_seqs[0]
        prompt_logprobs = None
        if first.prompt_logprobs is not None and len(first.prompt_logprobs) >= first.num_prompt_tokens - 1:
            prompt_logprobs = [None] + [first.prompt_logprobs[q] for q in range(first.num_prompt_tokens - 1)]
            first.prompt_logprobs = None  # reported once; a later preemption may use the prefix cache
        return RequestOutput(request_id, outputs, state.num_prompt_tokens, first.num_cached_tokens, is_finished,
                             prompt_logprobs)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_free_blocks=bm.num_free_blocks, num_total_blocks=bm.num_blocks,
            num_requests=len(self._requests), num_steps=self.num_steps,
            max_batch_size_seen=self.max_batch_size_seen, num_preemptions=self.scheduler.num_preemptions,
            num_prefix_queries=bm.num_prefix_queries, num_prefix_hits=bm.num_prefix_hits,
            num_prompt_tokens=self.num_prompt_tokens, num_generation_tokens=self.num_generation_tokens,
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[CompletionOutput]]:
        """Run prompts to completion (offline use, tests): per prompt, the final choices."""
        ids = [f"offline-{next(self._seq_counter)}" for _ in prompts]
        results: dict[str, dict[int, CompletionOutput]] = {rid: {} for rid in ids}
        for rid, prompt in zip(ids, prompts):
            self.add_request(rid, prompt, params)
        while self.has_unfinished_requests():
            for out in self.step():
                for c in out.outputs:
                    acc = results[out.request_id].setdefault(c.index, CompletionOutput(c.index, "", [], 0))
                    acc.text += c.text
                    acc.token_ids += c.token_ids
                    acc.num_tokens = c.num_tokens
                    acc.finish_reason = c.finish_reason
                    acc.stop_reason = c.stop_reason
                    if c.logprobs:
                        acc.logprobs = (acc.logprobs or []) + c.logprobs
        return [[results[rid][i] for i in sorted(results[rid])] for rid in ids]
