"""Batched sampling on the device for the whole batch at once.

Greedy rows take the argmax. Sampled rows go through logit bias, penalties, temperature,
top-k, top-p and min-p, then the exponential-race trick (argmax of p / Exp(1) noise), which
draws from p with one tensor op; rows with a seed draw their noise from their own generator so
the same seed gives the same output whatever else is in the batch.
"""
from __future__ import annotations

import torch

from engine.guided import GuidedMasker
from engine.outputs import TokenLogprob
from engine.sequence import Sequence


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.guided = GuidedMasker(vocab_size, device)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[TokenLogprob] | None]:
        # logits (B, V) float32, one row per sequence in seqs
        params = [s.params for s in seqs]
        logits = self._apply_processors(logits, seqs)
        want_logprobs = any(p.logprobs is not None for p in params)
        logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        # grammar masks after the logprobs: they report the model's own distribution, and a
        # masked alternative never shows as -inf
        self.guided.apply(logits, [s.guide for s in seqs])

        if all(p.temperature == 0 for p in params):
            next_ids = logits.argmax(dim=-1)
        else:
            next_ids = self._sample(logits, seqs)

        if logprobs is None:
            return next_ids.tolist(), None
        k = max(p.logprobs or 0 for p in params)
        chosen = logprobs.gather(1, next_ids[:, None]).squeeze(1)
        top_vals, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], next_ids[:, None][:, :0])
        ids_list, chosen_list = next_ids.tolist(), chosen.tolist()
        top_vals_list, top_ids_list = top_vals.tolist(), top_ids.tolist()
        out = []
        for i, p in enumerate(params):
            n = p.logprobs or 0
            top = dict(zip(top_ids_list[i][:n], top_vals_list[i][:n]))
            out.append(TokenLogprob(ids_list[i], chosen_list[i], top))
        return ids_list, out

    def _apply_processors(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Logit bias, penalties and min_tokens; only rows that ask pay for it."""
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias.keys()), device=logits.device)
                vals = torch.tensor(list(p.logit_bias.values()), device=logits.device, dtype=logits.dtype)
                logits[i].index_add_(0, ids, vals)
            if p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0:
                self._penalize(logits[i], seq)
            if seq.num_completion_tokens < p.min_tokens and seq.stop_token_set:
                logits[i, list(seq.stop_token_set)] = -float("inf")
        return logits

    def _penalize(self, row: torch.Tensor, seq: Sequence) -> None:
        p = seq.params
        output = torch.tensor(seq.completion_token_ids, dtype=torch.long, device=row.device)
        counts = torch.bincount(output, minlength=self.vocab_size)[: self.vocab_size].to(row.dtype)
        if p.repetition_penalty != 1.0:  # on prompt and output tokens, as vLLM and HF do
            seen = torch.zeros_like(row, dtype=torch.bool)
            seen[torch.tensor(seq.token_ids, dtype=torch.long, device=row.device)] = True
            penalized = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            row.copy_(torch.where(seen, penalized, row))
        row.sub_(p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype))

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [s.params for s in seqs]
        dev = logits.device
        greedy = torch.tensor([p.temperature == 0 for p in params], device=dev)
        argmax = logits.argmax(dim=-1)
        temps = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev)
        logits = logits / temps[:, None]

        if any(p.top_k is not None for p in params):
            k = torch.tensor([p.top_k or self.vocab_size for p in params], device=dev).clamp(max=logits.shape[-1])
            kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
            logits = logits.masked_fill(logits < kth, -float("inf"))
        probs = torch.softmax(logits, dim=-1)
        if any(p.top_p < 1.0 for p in params):
            top_p = torch.tensor([p.top_p for p in params], device=dev)
            sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
            exclusive = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass before each token
            drop_sorted = exclusive > top_p[:, None]
            drop = torch.zeros_like(drop_sorted).scatter(1, sorted_ids, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=dev)
            probs = probs.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)

        noise = torch.empty_like(probs)
        unseeded = [i for i, s in enumerate(seqs) if s.generator is None]
        if len(unseeded) == len(seqs):
            noise.exponential_()
        else:
            if unseeded:
                noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=dev).exponential_()
            for i, seq in enumerate(seqs):
                if seq.generator is not None:
                    noise[i].exponential_(generator=seq.generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, argmax, sampled)
