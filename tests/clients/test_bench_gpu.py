"""scripts/bench_gpu.py (GPU speed): gptserve's engine vs transformers' generate.

On CPU with a tiny random model (a few tokens) so it runs anywhere; the CUDA test skips without a GPU.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.tiny_models import write_tiny_gguf, write_tiny_hf_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench_gpu, tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "gpu.json"
    rc = bench_gpu.main([*args, "--json-out", str(out)])
    return rc, (json.loads(out.read_text()) if out.exists() else {})


@pytest.mark.parametrize("fmt", ["gguf", "hf-folder"])
def test_cpu_tiny_model_both_implementations(bench_gpu, tmp_path, capsys, fmt):
    pytest.importorskip("transformers")
    if fmt == "gguf":
        model = write_tiny_gguf(str(tmp_path / "tiny.gguf"), seed=4)
    else:
        model = write_tiny_hf_model(str(tmp_path / "tiny"), seed=4)
    rc, report = run(bench_gpu, tmp_path, "--model", model, "--device", "cpu", "--batch-sizes", "1,3",
                     "--prompt-tokens", "8", "--output-tokens", "5", "--repeat", "2", "--threads", "1")
    assert rc == 0
    assert report["device_arg"] == "cpu" and report["dtype"] == "float32" and report["model"] == model
    rows = {(r["impl"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {("gptserve", 1), ("transformers", 1), ("gptserve", 3), ("transformers", 3)}
    for (impl, batch), r in rows.items():
        assert r["runs"] == 2
        assert r["output_tokens"] == batch * 5 and r["tokens_per_sequence"] == [5]  # EOS ignored, exact length
        assert len(r["wall_s_all"]) == 2 and r["wall_s"] == pytest.approx(sum(r["wall_s_all"]) / 2)
        assert r["output_tok_s_all"] == pytest.approx([r["output_tokens"] / w for w in r["wall_s_all"]])
        assert r["output_tok_s"] == pytest.approx(sum(r["output_tok_s_all"]) / 2)  # the median of two
        assert 0 < r["ttft_s"] and r["decode_tok_s"] > 0
        assert r["per_seq_decode_tok_s"] == pytest.approx(r["decode_tok_s"] / batch)
    # float32 on CPU, same weights, greedy: gptserve's engine picks the same tokens as transformers
    agree = report["greedy_agreement"]
    assert agree["1"] == {"leading_tokens_equal_min": 5, "leading_tokens_equal_median": 5,
                          "sequences_fully_equal": 1, "sequences": 1}
    assert agree["3"]["sequences"] == 3 and agree["3"]["sequences_fully_equal"] == 3
    assert "targets" not in report  # the targets are CUDA numbers
    out = capsys.readouterr().out
    assert "decode tok/s" in out and "gptserve" in out and "transformers" in out
    assert "greedy agreement, batch 1: 1/1 sequences identical" in out


def test_cpu_gptserve_only(bench_gpu, tmp_path):
    model = write_tiny_gguf(str(tmp_path / "tiny.gguf"), seed=6)
    rc, report = run(bench_gpu, tmp_path, "--model", model, "--device", "cpu", "--batch-sizes", "2",
                     "--prompt-tokens", "4", "--output-tokens", "3", "--repeat", "1", "--skip-hf")
    assert rc == 0
    assert [(r["impl"], r["batch"], r["output_tokens"]) for r in report["results"]] == [("gptserve", 2, 6)]
    assert report["greedy_agreement"] == {} and "transformers" not in report
    # room for every sequence at full length, so nothing is preempted
    assert report["gptserve_kv_blocks"] >= 2 * 2  # 2 sequences x 2 blocks of 16 for 4 + 3 tokens (+16 room)


def test_prompts_are_exact_length_distinct_and_seeded(bench_gpu, tmp_path):
    from engine import Tokenizer

    tok = Tokenizer.load(write_tiny_gguf(str(tmp_path / "tiny.gguf")))
    a = bench_gpu.make_prompts(tok, 4, 9, seed=1, tag="x")
    assert all(len(p) == 9 for p in a) and len({tuple(p) for p in a}) == 4
    assert bench_gpu.make_prompts(tok, 4, 9, seed=1, tag="x") == a
    assert bench_gpu.make_prompts(tok, 4, 9, seed=1, tag="y") != a


def test_agreement_counts_leading_equal_tokens(bench_gpu):
    assert bench_gpu.agreement([[1, 2, 3], [1, 2, 3], [4]], [[1, 2, 3], [1, 9, 3], [5]]) == [3, 1, 0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_requested_without_gpu_says_so(bench_gpu, tmp_path, capsys):
    rc, _ = run(bench_gpu, tmp_path, "--device", "cuda", "--repeat", "1")
    assert rc == 2 and "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_built_in_model(bench_gpu, tmp_path):
    """The real goal-3 script on the built-in SmolLM2 GGUF, small sizes: both implementations run
    in bf16 on the GPU, every sequence gets exactly the asked tokens, goal-3 fields are reported."""
    pytest.importorskip("transformers")
    rc, report = run(bench_gpu, tmp_path, "--device", "cuda", "--batch-sizes", "1,8", "--prompt-tokens", "16",
                     "--output-tokens", "16", "--repeat", "1")
    assert rc == 0 and report["dtype"] == "bfloat16"
    rows = {(r["impl"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {("gptserve", 1), ("transformers", 1), ("gptserve", 8), ("transformers", 8)}
    assert all(r["tokens_per_sequence"] == [16] and r["decode_tok_s"] > 0 for r in rows.values())
    assert report["targets"]["batch1_decode_tok_s"] == rows[("gptserve", 1)]["decode_tok_s"]
    # bf16 on both sides: the first greedy token of a prompt agrees at least
    assert report["greedy_agreement"]["1"]["leading_tokens_equal_min"] >= 1
