"""/v1/completions: prompts (text, token ids, batches) → engine requests → text_completion bodies.

Beyond plain generation: ``echo`` (the prompt, and its logprobs, before the completion),
``best_of`` (more candidates than returned; the best by summed logprob win), ``suffix``
(fill-in-the-middle, for models whose vocabulary has the FIM tokens).
"""
from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import TYPE_CHECKING


from engine import RequestOutput, TokenLogprob
from server import protocol_completions as pc
from server.errors import bad_request
from server.serving_chunks import Chunks, json_string
from server.serving_logprobs import CompletionLogprobsBuilder, TokenStrings, merge_completion_logprobs

if TYPE_CHECKING:
    from server.serving import OpenAIServing

# prefix, suffix, middle: StarCoder/SantaCoder spelling, then Qwen2.5-Coder/DeepSeek's
FIM_TOKENS = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))


class CompletionServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.tokenizer = serving.tokenizer
        self.strings = TokenStrings(self.tokenizer)

    def prompts(self, prompt: str | list) -> list[list[int]]:
        if isinstance(prompt, str):
            prompts = [self.tokenizer.encode(prompt, add_special_tokens=True)]
        elif isinstance(prompt[0], str):
            prompts = [self.tokenizer.encode(text, add_special_tokens=True) for text in prompt]
        elif isinstance(prompt[0], int):
            prompts = [list(prompt)]
        else:
            prompts = [list(ids) for ids in prompt]
        vocab_size = self.tokenizer.vocab_size
        for ids in prompts:
            if not ids:
                raise bad_request("The prompt is empty.", param="prompt")
            if max(ids) >= vocab_size:
                raise bad_request(f"Token id {max(ids)} is out of range (vocabulary size {vocab_size}).", param="prompt")
        return prompts

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def fill_in_the_middle(self, prompt: str | list, suffix: str) -> list[list[int]]:
        """Prefix-suffix-middle prompts, if the vocabulary has FIM tokens; else a 400."""
        for spelling in FIM_TOKENS:
            ids = [self._single_token(text) for text in spelling]
            if None not in ids:
                break
        else:
            raise bad_request("This model has no fill-in-the-middle tokens, so 'suffix' cannot be honoured; "
                              "leave it out.", param="suffix", code="unsupported_parameter")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not all(isinstance(t, str) for t in texts):
            raise bad_request("'suffix' needs the prompt as text, not token ids.", param="suffix")
        prefix_id, suffix_id, middle_id = ids
        encode = self.tokenizer.encode
        return [[prefix_id, *encode(text, add_special_tokens=False), suffix_id,
                 *encode(suffix, add_special_tokens=False), middle_id] for text in texts]

    def check(self, request: pc.CompletionRequest) -> None:
        if request.best_of is not None and request.best_of < request.num_choices:
            raise bad_request(f"best_of ({request.best_of}) must be at least n ({request.num_choices}).",
                              param="best_of", code="invalid_value")
        if request.stream and request.num_candidates > request.num_choices:
            raise bad_request("best_of cannot be used with stream: the best choices are known only at the end.",
                              param="best_of", code="invalid_value")

    def echo_texts(self, prompt: str | list, prompts: list[list[int]]) -> list[str]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt[0], str):
            return list(prompt)
        return [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]

    async def create(self, request: pc.CompletionRequest, model: str | None = None):
        serving = self.serving
        model_name = serving.resolve_model(model or request.model)
        self.check(request)
        # tokenizing (a prompt may be megabytes) runs on a worker thread, off the event loop
        if request.suffix:
            prompts = await asyncio.to_thread(self.fill_in_the_middle, request.prompt, request.suffix)
        else:
            prompts = await asyncio.to_thread(self.prompts, request.prompt)
        params = serving.check_request(request, prompts, "prompt")
        params.guide = await serving.structured.aguide_for(request)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        echo_texts = await asyncio.to_thread(self.echo_texts, request.prompt, prompts) if request.echo else None
        chunks = CompletionChunks(request_id, model_name, params.n, request.include_usage, self.strings,
                                  request.logprobs, num_choices=request.num_choices, prompts=prompts,
                                  echo_texts=echo_texts,
                                  is_echo_only=request.is_echo_only)
        if request.stream:
            return serving.sse(prompts, params, chunks)
        return await serving.respond(prompts, params, chunks)


class CompletionChunks(Chunks):
    def __init__(self, *args, num_choices: int, prompts: list[list[int]], echo_texts: list[str] | None,
                 is_echo_only: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.is_echo_only = is_echo_only  # max_tokens 0: the one token the engine made is dropped
        self.num_choices = num_choices  # n; self.n is the candidates per prompt (best_of)
        self.prompts = prompts
        self.echo_texts = echo_texts
        self.builders: dict[int, CompletionLogprobsBuilder] = {}
        self.pieces: dict[int, list[pc.CompletionLogprobs]] = {}

    def _chunk(self, choices: list[pc.CompletionChoice], usage=None) -> dict:
        return pc.CompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                     choices=choices, usage=usage).model_dump()

    def _piece(self, index: int, entries: list[TokenLogprob | None],
               token_ids: list[int] | None = None) -> pc.CompletionLogprobs | None:
        if self.num_logprobs is None:
            return None
        if index not in self.builders:
            self.builders[index] = CompletionLogprobsBuilder(self.strings, self.num_logprobs)
        piece = self.builders[index].piece(entries, token_ids)
        self.pieces.setdefault(index, []).append(piece)
        return piece

    def update(self, k: int, out: RequestOutput) -> list[dict]:
        if self.is_echo_only:
            out = dataclasses.replace(out, outputs=[dataclasses.replace(
                choice, text="", token_ids=[], logprobs=None, num_tokens=0, stop_reason=None,
                finish_reason=None if choice.finish_reason is None else
                "abort" if choice.finish_reason == "abort" else "length") for choice in out.outputs])
        return super().update(k, out)

    def prompt_started(self, k: int, out) -> list[dict]:
        if self.echo_texts is None:
            return []
        chunks = []
        prompt_ids = self.prompts[k]
        entries = out.prompt_logprobs or [None] * len(prompt_ids)
        piece = self._piece(k * self.n, entries, prompt_ids)  # built once; every choice echoes the same
        for i in range(self.n):
            index = k * self.n + i
            self.texts[index] = self.echo_texts[k]
            if i and piece is not None:
                self.builders[index] = self.builders[k * self.n].copy()
                self.pieces[index] = [piece]
            chunk = self._chunk([pc.CompletionChoice(index=index, text=self.echo_texts[k], logprobs=piece)])
            chunks.append(chunk)
        return chunks

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> dict | str:
        if self.num_logprobs is None:  # the hot path: the JSON text of the chunk below, built directly
            return (f'{self.chunk_head("text_completion")}{{"index": {index}, "text": {json_string(text)}, '
                    f'"logprobs": null, "finish_reason": null}}]}}')
        return self._chunk([pc.CompletionChoice(index=index, text=text, logprobs=self._piece(index, logprobs))])

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk([pc.CompletionChoice(index=index, text="", finish_reason=reason)])

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def chosen(self) -> list[tuple[int, int]]:
        """(returned index, candidate index): with best_of, the n best candidates of each prompt
        by summed logprob; otherwise every candidate as it is."""
        if self.n == self.num_choices:
            return [(i, i) for i in self.indices()]
        pairs = []
        for k in range(len(self.prompts)):
            candidates = [k * self.n + i for i in range(self.n) if k * self.n + i in self.texts]
            best = sorted(candidates, key=lambda i: -self.cumulative_logprobs.get(i, 0.0))[: self.num_choices]
            pairs += [(k * self.num_choices + j, i) for j, i in enumerate(best)]
        return pairs

    def full_response(self) -> dict:
        choices = [pc.CompletionChoice(
            index=out_index, text=self.texts[i], finish_reason=self.finish_reasons.get(i),
            logprobs=merge_completion_logprobs(self.pieces.get(i, [])) if self.num_logprobs is not None else None)
            for out_index, i in self.chosen()]
        return self._chunk(choices, self.usage())
