"""Our logits against an independent implementation: Hugging Face transformers.

Both read the same checkpoint; we compare the top-20 log-probabilities at every generated
position (teacher-forced on our own greedy tokens).
"""
import hashlib
import os
from pathlib import Path

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams, default_model_path
from tests.real_models import cached_reference

transformers = pytest.importorskip("transformers")


def hf_logprobs(hf_model):
    """token ids -> transformers' log-probabilities at every position (positions, vocab)."""
    def run(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), -1)
    return run


def compare_with_transformers(engine: LLMEngine, reference, prompt_ids: list[int], atol: float) -> list[int]:
    """Our greedy tokens and top-20 logprobs against ``reference`` (token ids -> logprobs, as
    hf_logprobs) teacher-forced on our own tokens."""
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=20, ignore_eos=True)
    choice = engine.generate([prompt_ids], params)[0][0]
    ref = reference(prompt_ids + choice.token_ids)
    for step, lp in enumerate(choice.logprobs):
        row = ref[len(prompt_ids) - 1 + step]
        assert lp.token_id == int(row.argmax())
        ids = torch.tensor(list(lp.top_logprobs))
        ours = torch.tensor(list(lp.top_logprobs.values()))
        assert torch.allclose(ours, row[ids], atol=atol), (step, (ours - row[ids]).abs().max())
        assert set(lp.top_logprobs) == set(row.topk(20).indices.tolist()) or atol > 1e-4
    return choice.token_ids


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_tiny_random_checkpoint_matches_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = LLMEngine(EngineConfig(model=path, num_threads=1, block_size=4, max_num_batched_tokens=9, dtype="float32"))
    for prompt in ([5, 17, 33, 2, 99, 7, 150, 42, 8, 61, 300, 12, 4], [3, 4]):
        compare_with_transformers(engine, hf_logprobs(hf), prompt, atol=1e-4)


def smollm2_reference(path: str, vocab_size: int):
    """transformers' own GGUF loading of SmolLM2 (it dequantizes to float32), its top-64
    logprobs per position computed once per machine (tests/real_models.py): loading the file
    that way takes most of this test's time. Logprobs outside the top 64 read as -inf."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def reference(ids: list[int]) -> torch.Tensor:
        def compute() -> dict:
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
            top = hf_logprobs(hf)(ids).topk(64)
            return {"ids": top.indices.tolist(), "logprobs": top.values.tolist()}

        ref = cached_reference([digest, transformers.__version__, ids, 64], compute)
        rows = torch.full((len(ids), vocab_size), float("-inf"))
        return rows.scatter_(1, torch.tensor(ref["ids"]), torch.tensor(ref["logprobs"]))
    return reference


def test_smollm2_gguf_matches_transformers():
    path = default_model_path()
    # transformers dequantizes the file to float32: so does --dtype float32 (the default computes on the blocks)
    engine = LLMEngine(EngineConfig(model=path, max_model_len=512, dtype="float32"))
    prompt = engine.tokenizer.encode(
        engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    )
    reference = smollm2_reference(path, engine.model_config.vocab_size)
    tokens = compare_with_transformers(engine, reference, prompt, atol=2e-3)
    assert engine.tokenizer.decode(tokens).startswith("The capital of France is Paris")


def test_prompt_logprobs_match_transformers(tiny_llama):
    """Echo's prompt logprobs: every prompt token's logprob and top-5, computed in 4-token prefill
    chunks, with a warm prefix cache (which they must not use) and n = 2."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    engine = LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, block_size=4, max_num_batched_tokens=4))
    prompt = [5, 17, 33, 2, 99, 7, 150, 42, 8, 61, 300, 12, 4]
    engine.generate([prompt], SamplingParams(temperature=0, max_tokens=2))  # fills the prefix cache
    ref = hf_logprobs(hf)(prompt)
    engine.add_request("echo", prompt, SamplingParams(temperature=0, max_tokens=3, n=2, prompt_logprobs=5))
    firsts = []
    while engine.has_unfinished_requests():
        firsts += [out.prompt_logprobs for out in engine.step() if out.prompt_logprobs is not None]
    assert len(firsts) == 1, "prompt logprobs come once, in the request's first output"
    got = firsts[0]
    assert len(got) == len(prompt) and got[0] is None
    for q in range(1, len(prompt)):
        row = ref[q - 1]
        assert got[q].token_id == prompt[q]
        assert abs(got[q].logprob - float(row[prompt[q]])) < 1e-4
        assert set(got[q].top_logprobs) == set(row.topk(5).indices.tolist())
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    # a request that ends on its first token still reports them (its blocks are freed at once)
    engine.add_request("short", prompt, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    got = [out.prompt_logprobs for out in outs if out.prompt_logprobs is not None]
    assert len(got) == 1 and abs(got[0][-1].logprob - float(ref[len(prompt) - 2][prompt[-1]])) < 1e-4
