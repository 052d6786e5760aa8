"""Continuous batching: which sequences run this step, and how many tokens each.

Every running sequence gets its next token(s) first (decodes, or the rest of a chunked
prefill); waiting sequences then take what is left of the token budget, their prompts cut into
chunks so a long prompt never stalls the others. When the KV pool runs out, the newest running
sequence is preempted (its blocks freed, recomputed later) rather than any request failing.

Fair between requests: never more than ``max_num_seqs`` sequences run; a waiting sequence of the
request with the fewest running sequences goes first (oldest first among equals), and when every
slot is taken while a request waits with none, the request holding the most slots gives one
back (preempted, recomputed later from the prefix cache). So one request's ``n`` choices delay
another request by about a step, not by the whole fan-out.

Paced beside decodes (engine/pacing.py): when sequences are decoding, prompts prefill only as
much per step as keeps that step within ``max_decode_slowdown`` times a decode-only step, so a
long prompt does not freeze the streams; with nobody decoding a prompt takes the whole budget.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.pacing import StepPacer
from engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)  # in batch order
    num_new_tokens: list[int] = field(default_factory=list)  # tokens each computes this step
    sample_seqs: list[Sequence] = field(default_factory=list)  # sequences that sample a token
    sample_rows: list[int] = field(default_factory=list)  # index into seqs of the logits to use
    num_decodes: int = 0  # sequences computing one token (their next)
    prefill_cost: float = 0.0  # the prompt chunks' work (engine/pacing.py's units)

    @property
    def is_empty(self) -> bool:
        return not self.seqs


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, context_scale: float = 3000.0) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.pacer = StepPacer(config.max_decode_slowdown, context_scale, min_chunk=block_manager.block_size)
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # the step being scheduled (reset by schedule(), spent by _paced())
        self._allowance: float | None = None
        self._is_first_chunk = True

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> list[Sequence]:
        """Remove every sequence of ``request_id`` and free its blocks at once."""
        removed = [s for s in self.waiting if s.request_id == request_id]
        removed += [s for s in self.running if s.request_id == request_id]
        for seq in removed:
            removed += [c for c in seq.children if c not in removed]
        self.waiting = deque(s for s in self.waiting if s.request_id != request_id)
        self.running = [s for s in self.running if s.request_id != request_id]
        for seq in removed:
            self.finish(seq, "abort")
        return removed

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.is_finished:
            return
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free(seq)

    def remove_finished(self) -> None:
        self.running = [s for s in self.running if not s.is_finished]

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _num_running_by_request(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seq in self.running:
            counts[seq.request_id] = counts.get(seq.request_id, 0) + 1
        return counts

    def _next_waiting(self, counts: dict[str, int]) -> int:
        """Index in ``waiting`` of the sequence to admit next: of the request with the fewest
        running sequences, the oldest (the queue's order among equals)."""
        best, best_count = 0, None
        for i, seq in enumerate(self.waiting):
            count = counts.get(seq.request_id, 0)
            if best_count is None or count < best_count:
                best, best_count = i, count
                if count == 0:
                    break
        return best

    def _make_room_for_waiting(self, counts: dict[str, int]) -> bool:
        """All slots taken while the next waiting sequence's request runs at least two fewer than
        the request holding the most: that one gives its newest sequence back (one a step, so the
        slots even out without thrashing). True if one was preempted."""
        if len(self.running) < self.max_num_seqs or not self.waiting:
            return False
        waiting_count = counts.get(self.waiting[self._next_waiting(counts)].request_id, 0)
        greedy = max(counts, key=counts.get)
        if counts[greedy] <= waiting_count + 1:
            return False  # already as even as it can be: nobody gives way
        for i in range(len(self.running) - 1, -1, -1):
            if self.running[i].request_id == greedy:
                victim = self.running.pop(i)
                break
        self.block_manager.free(victim)
        victim.status = SequenceStatus.WAITING
        self.waiting.append(victim)  # behind the requests it gave way to
        self.num_preemptions += 1
        counts[greedy] -= 1
        return True

    def _paced(self, start: int, num_new: int) -> int:
        """num_new cut to what is left of this step's pacing allowance (a prompt chunk beside
        decodes); a decode passes as it is."""
        if num_new <= 1:
            return num_new
        if self._allowance is not None:
            fit = self.pacer.chunk_tokens(start, self._allowance)
            if self._is_first_chunk:  # the prompts always advance, if slowly
                fit = max(fit, self.pacer.min_chunk)
            num_new = min(num_new, fit)
            self._allowance = max(0.0, self._allowance - self.pacer.chunk_cost(start, num_new))
        self._is_first_chunk = False
        return num_new

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        preempted = False
        counts = self._num_running_by_request()
        self._make_room_for_waiting(counts)

        # prefill work allowed beside this step's decodes (None: no limit but the token budget)
        self._allowance = self.pacer.allowance() if any(s.num_uncomputed_tokens == 1 for s in self.running) else None
        self._is_first_chunk = True

        scheduled: list[Sequence] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = self._paced(seq.num_computed_tokens, min(seq.num_uncomputed_tokens, budget))
            if num_new == 0:
                i += 1
                continue
            while not bm.can_allocate(seq, [], num_new):
                victim = self.running.pop()  # the newest running sequence gives way
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            bm.allocate(seq, [], num_new)
            scheduled.append(seq)
            out.num_new_tokens.append(num_new)
            budget -= num_new
            i += 1

        while self.waiting and budget > 0 and not preempted:
            if len(self.running) >= self.max_num_seqs:
                break
            index = self._next_waiting(counts)
            seq = self.waiting[index]
            hits = [] if seq.needs_prompt_logprobs else bm.lookup_prefix(seq)
            start = len(hits) * bm.block_size
            num_new = self._paced(start, min(seq.num_tokens - start, budget))
            if num_new == 0 or not bm.can_allocate(seq, hits, num_new):
                break
            bm.allocate(seq, hits, num_new)
            del self.waiting[index]
            counts[seq.request_id] = counts.get(seq.request_id, 0) + 1
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(seq)
            out.num_new_tokens.append(num_new)
            budget -= num_new

        out.seqs = scheduled
        for seq, num_new in zip(scheduled, out.num_new_tokens):
            if num_new == 1 and seq.num_computed_tokens + 1 == seq.num_tokens:
                out.num_decodes += 1
            else:
                out.prefill_cost += self.pacer.chunk_cost(seq.num_computed_tokens, num_new)
        for row, (seq, num_new) in enumerate(zip(scheduled, out.num_new_tokens)):
            if seq.num_computed_tokens + num_new < seq.num_tokens:
                continue  # a prefill chunk that does not reach the end: nothing to sample yet
            out.sample_seqs.append(seq)
            out.sample_rows.append(row)
            room = max(0, self.max_num_seqs - len(self.running))
            for child in seq.children[room:]:  # no slot now: queued on their own, their prompt
                self.waiting.append(child)       # comes from the prefix cache when they start
            for child in seq.children[:room]:  # n > 1: siblings share the prompt's blocks from here on
                bm.fork(seq, child)
                child.num_computed_tokens = seq.num_computed_tokens + num_new
                child.status = SequenceStatus.RUNNING
                self.running.append(child)
                out.sample_seqs.append(child)
                out.sample_rows.append(row)
            seq.children = []
        return out

    def postprocess(self, out: SchedulerOutput) -> None:
        """Advance computed-token counters after the step's forward pass."""
        for seq, num_new in zip(out.seqs, out.num_new_tokens):
            seq.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(seq)
