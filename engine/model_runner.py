"""A scheduled batch -> tensors -> model forward -> logits -> sampled token ids.

Owns the model, its attention backend, the KV cache pool (sized here) and the sampler. The
backend builds the step's attention metadata from the scheduled rows and runs the decoder
layers (engine/layers/attention_backend.py). One host sync per step: the sampled ids (and
logprobs when asked) come back together.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.config import EngineConfig
from engine.layers.attention import AttentionRow, decodes_first
from engine.model_loader import LoadedModel
from engine.models.config import ModelConfig
from engine.outputs import TokenLogprob
from engine.sampler import Sampler
from engine.scheduler import SchedulerOutput
from engine.sequence import Sequence


def zeroed_pool(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor for the KV pool. On the CPU its memory comes zeroed from the OS (numpy's
    calloc), page by page as blocks are first written, instead of torch.zeros writing every byte
    at start-up (about 1.3 s per GB here, paid by every engine start): resident memory grows with
    the cache in use, up to the pool's size. Zero bytes are 0.0 in every float format."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)


def kv_bytes_per_token(model_cfg: ModelConfig, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return model_cfg.num_hidden_layers * 2 * model_cfg.num_key_value_heads * model_cfg.head_dim * elem


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        cfg = loaded.config
        self.model = loaded.model
        self.attention = loaded.attention
        self.device = loaded.device
        self.block_size = config.block_size
        self.kv_dtype = torch.float16 if config.kv_cache_dtype == "float16" else loaded.dtype
        self.num_kv_blocks = config.num_kv_blocks or max(
            1, int(config.kv_cache_memory_gb * 2**30) // (kv_bytes_per_token(cfg, self.kv_dtype) * config.block_size)
        )
        # (layers, K/V, blocks, block_size, kv_heads, head_dim), one preallocated pool
        self.kv_cache = zeroed_pool(
            (cfg.num_hidden_layers, 2, self.num_kv_blocks, self.block_size, cfg.num_key_value_heads, cfg.head_dim),
            self.kv_dtype, self.device)
        self.sampler = Sampler(cfg.vocab_size, self.device)
        self.fault_hook = None  # tests: a callable run before each forward pass

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared partial blocks before they are written."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        self.kv_cache[:, :, dst] = self.kv_cache[:, :, src]

    def _prepare(self, sched: SchedulerOutput):
        input_ids: list[int] = []
        positions: list[int] = []
        rows: list[AttentionRow] = []
        last_index = [0] * len(sched.seqs)  # row -> index of its last token in the flat batch
        first_index = [0] * len(sched.seqs)  # row -> index of its first token in the flat batch
        for row in decodes_first(sched.num_new_tokens):
            seq, num_new = sched.seqs[row], sched.num_new_tokens[row]
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            first_index[row] = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            last_index[row] = len(input_ids) - 1
            rows.append(AttentionRow(start, num_new, seq.block_table))
        meta = self.attention.build_metadata(rows, self.block_size)
        dev = self.device
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        logit_index = torch.tensor([last_index[r] for r in sched.sample_rows], dtype=torch.long, device=dev)
        return ids, pos, meta, logit_index, first_index

    @torch.inference_mode()
    def run(self, sched: SchedulerOutput) -> tuple[list[int], list[TokenLogprob] | None]:
        """Compute the scheduled tokens; sample for ``sched.sample_seqs`` (in that order)."""
        if self.fault_hook is not None:
            self.fault_hook()
        ids, pos, meta, logit_index, first_index = self._prepare(sched)
        hidden = self.attention.forward(ids, pos, self.kv_cache, meta)
        for row, seq in enumerate(sched.seqs):
            if seq.needs_prompt_logprobs:
                self._prompt_logprobs(seq, hidden, first_index[row], sched.num_new_tokens[row])
        if not sched.sample_seqs:
            return [], None
        logits = self.model.compute_logits(hidden[logit_index])  # (N, vocab) float32
        return self.sampler(logits, sched.sample_seqs)

    def _prompt_logprobs(self, seq: Sequence, hidden: torch.Tensor, flat_start: int, num_new: int) -> None:
        """Logprobs of the prompt tokens this chunk predicts (position q predicts token q + 1),
        into ``seq.prompt_logprobs``; a few hundred rows of logits at a time."""
        start = seq.num_computed_tokens
        stop = min(start + num_new, seq.num_prompt_tokens - 1)  # the last position predicts the output
        k = seq.params.prompt_logprobs or 0
        for lo in range(start, stop, 256):
            hi = min(lo + 256, stop)
            rows = hidden[flat_start + lo - start : flat_start + hi - start]
            logprobs = torch.log_softmax(self.model.compute_logits(rows).float(), dim=-1)
            targets = torch.tensor(seq.token_ids[lo + 1 : hi + 1], dtype=torch.long, device=self.device)
            chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
            top_vals, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], targets[:, None][:, :0])
            for q, target, lp, ids_row, vals_row in zip(range(lo, hi), targets.tolist(), chosen,
                                                        top_ids.tolist(), top_vals.tolist()):
                seq.prompt_logprobs[q] = TokenLogprob(target, lp, dict(zip(ids_row, vals_row)))

