"""The families beyond Llama against Hugging Face transformers, on tiny random checkpoints that
transformers itself wrote (tests/tiny_families.py), as safetensors folders and as GGUF files.

Three requests run together through the paged cache in 4-token blocks with at most 9 tokens a
step, so prompts are prefilled in chunks beside other requests' decodes. Every prompt position
(prompt logprobs) and every decoded position (teacher-forced on our greedy tokens) must match
transformers' log-probabilities within 1e-4, top 20 included.
"""
from collections import defaultdict

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.layers import cpu_kernels
from engine.layers.attention_backend import CpuStackBackend
from tests.tiny_families import write_family_gguf, write_family_hf

transformers = pytest.importorskip("transformers")

PROMPTS = ([5, 17, 33, 2, 99, 7, 150, 42, 8, 61, 300, 12, 4], [3, 4], [200, 201, 202, 203, 204, 205, 206])
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    """family → (HF folder, GGUF path or None), each written once per module."""
    made = {}

    def get(family: str, fmt: str) -> str:
        if family not in made:
            made[family] = write_family_hf(str(tmp_path_factory.mktemp(f"tiny-{family}")), family)
        if fmt == "hf":
            return made[family]
        path = str(tmp_path_factory.mktemp(f"tiny-{family}-gguf") / f"{family}.gguf")
        return write_family_gguf(path, made[family], family)

    return get


def _assert_close(ours, row: torch.Tensor, where) -> None:
    assert abs(ours.logprob - float(row[ours.token_id])) < ATOL, where
    ids = torch.tensor(list(ours.top_logprobs))
    values = torch.tensor(list(ours.top_logprobs.values()))
    assert set(ours.top_logprobs) == set(row.topk(len(ids)).indices.tolist()), where
    assert torch.allclose(values, row[ids], atol=ATOL), (where, (values - row[ids]).abs().max())


def test_longrope_turns_to_the_long_factors_at_the_original_context(tiny_family):
    """Positions below original_max_position_embeddings rotate with the short factors, those from
    it with the long ones (transformers' choice for a sequence that long), both times the attention factor."""
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    from engine.layers.rotary import RotaryEmbedding
    from engine.loader import load_checkpoint

    path = tiny_family("phi4mini", "hf")
    cfg, _ = load_checkpoint(path)
    rotary_dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    ours = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, rotary_dim)
    theirs = Phi3RotaryEmbedding(transformers.AutoConfig.from_pretrained(path))
    for positions in (torch.arange(0, 256), torch.arange(256, 300)):
        cos, sin = theirs(torch.zeros(1), positions[None])
        assert torch.allclose(ours.cos[positions], cos[0], atol=1e-5)
        assert torch.allclose(ours.sin[positions], sin[0], atol=1e-5)


def check_against_transformers(model_path: str, hf_model, *, cpu_kernels: bool) -> LLMEngine:
    engine = LLMEngine(EngineConfig(model=model_path, num_threads=1, block_size=4, max_num_batched_tokens=9,
                                    cpu_kernels=cpu_kernels, kv_cache_memory_gb=0.01))
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=20, prompt_logprobs=20, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params)
    prompt_logprobs, tokens, logprobs = {}, defaultdict(list), defaultdict(list)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.prompt_logprobs is not None:
                prompt_logprobs[out.request_id] = out.prompt_logprobs
            for choice in out.outputs:
                tokens[out.request_id] += choice.token_ids
                logprobs[out.request_id] += choice.logprobs or []
    for i, prompt in enumerate(PROMPTS):
        rid = str(i)
        assert len(tokens[rid]) == len(logprobs[rid]) == 8
        with torch.no_grad():
            ref = torch.log_softmax(hf_model(torch.tensor([prompt + tokens[rid]])).logits[0].float(), -1)
        for q in range(1, len(prompt)):  # prefill: position q - 1 predicts prompt token q
            assert prompt_logprobs[rid][q].token_id == prompt[q]
            _assert_close(prompt_logprobs[rid][q], ref[q - 1], ("prompt", rid, q))
        for step, lp in enumerate(logprobs[rid]):  # decode, one token a step
            row = ref[len(prompt) - 1 + step]
            assert lp.token_id == int(row.argmax()), ("decode", rid, step)
            _assert_close(lp, row, ("decode", rid, step))
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    return engine


# Every family on the Python path (cpu_kernels False) and on the C++ CPU stack (True, where the
# kernels build), the GGUF file on the C++ stack (and Qwen3's on both).
CASES = [
    (family, fmt, use_cpu_kernels)
    for family in ("qwen3", "gpt2", "gemma3", "gemma2", "phi3", "phi4mini")
    for fmt, use_cpu_kernels in (("hf", False), ("hf", True), ("gguf", True))
] + [("qwen3", "gguf", False)]


def forbid_python_attention(monkeypatch) -> None:
    """Make the Python layers' attention fail, so a run that passes went through the C++ stack."""
    def python_attention(*args, **kwargs):
        raise AssertionError("the Python layers ran")

    for module in ("engine.models.llama", "engine.models.gemma3", "engine.models.gpt2"):
        monkeypatch.setattr(f"{module}.paged_attention", python_attention)


@pytest.mark.parametrize("family, fmt, use_cpu_kernels", CASES)
def test_family_matches_transformers(family, fmt, use_cpu_kernels, tiny_family, monkeypatch):
    hf_folder = tiny_family(family, "hf")
    # eager: transformers' SDPA path leaves out Gemma's attention soft-capping
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32,
                                                                 attn_implementation="eager").eval()
    runs_in_cpp = use_cpu_kernels and cpu_kernels.load() is not None
    if runs_in_cpp:
        forbid_python_attention(monkeypatch)
    engine = check_against_transformers(tiny_family(family, fmt), hf_model, cpu_kernels=use_cpu_kernels)
    assert engine.model_config.architecture == {"phi4mini": "phi3"}.get(family, family)
    assert isinstance(engine.runner.attention, CpuStackBackend) == runs_in_cpp


def test_int8_is_refused_for_families_it_does_not_cover(tiny_family):
    with pytest.raises(ValueError, match="int8"):
        LLMEngine(EngineConfig(model=tiny_family("gpt2", "hf"), quantization="int8", kv_cache_memory_gb=0.01))


def test_cpp_stack_attends_within_a_sliding_window(tmp_path, monkeypatch):
    """Mistral v0.1's window, shorter than the prompts: the C++ stack leaves out the keys older
    than it, block by block, in prefill chunks and in decodes, as transformers does."""
    import json

    from tests.tiny_models import write_tiny_hf_model

    if cpu_kernels.load() is None:
        pytest.skip("the C++ CPU kernels do not build here")
    folder = write_tiny_hf_model(str(tmp_path / "mistral"), arch="mistral")
    config = json.loads((tmp_path / "mistral" / "config.json").read_text())
    (tmp_path / "mistral" / "config.json").write_text(json.dumps({**config, "sliding_window": 6}))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                 attn_implementation="eager").eval()
    forbid_python_attention(monkeypatch)
    engine = check_against_transformers(folder, hf_model, cpu_kernels=True)
    assert engine.model_config.sliding_window == 6 and isinstance(engine.runner.attention, CpuStackBackend)
