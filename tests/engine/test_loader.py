"""Loader: GGUF (every supported tensor type) and Hugging Face folders → the same HF-named tensors."""
import os

import gguf
import numpy as np
import pytest
import torch

from engine.loader import default_model_path, load_checkpoint
from engine.loader.gguf import read_gguf, unpermute_qk
from tests.tiny_models import gguf_name, gguf_tensors_from, hf_weights_from, write_tiny_gguf, write_tiny_hf_model

QUANT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
K_QUANT_TYPES = ["Q4_K", "Q5_K", "Q6_K"]
# K-quant blocks hold 256 values, so every weight row must be a multiple of 256.
K_DIMS = dict(num_layers=1, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=256)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("tied", [False, True])
def test_gguf_f32_equals_hf_folder(tmp_path, arch, tied):
    """Same seed in both formats → identical tensors: proves the Q/K permutation is undone."""
    hf_config, hf = load_checkpoint(write_tiny_hf_model(str(tmp_path / "hf"), arch=arch, tie_word_embeddings=tied))
    gg_config, gg = load_checkpoint(write_tiny_gguf(str(tmp_path / "m.gguf"), arch=arch, tie_word_embeddings=tied))
    assert sorted(hf) == sorted(gg)
    assert ("lm_head.weight" in gg) == (not tied)
    for name in hf:
        assert gg[name].dtype == torch.float32 and gg[name].shape == hf[name].shape, name
        torch.testing.assert_close(gg[name], hf[name], rtol=0, atol=0, msg=name)
    assert gg_config.tie_word_embeddings == hf_config.tie_word_embeddings == tied
    assert gg_config.attention_bias == hf_config.attention_bias == (arch == "qwen2")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "eos_token_ids"):
        assert getattr(gg_config, field) == getattr(hf_config, field), field
    # llama.cpp writes Mistral as llama; the model code is the same.
    assert gg_config.architecture == ("llama" if arch == "mistral" else arch)
    assert hf_config.architecture == arch


@pytest.mark.parametrize("qtype", QUANT_TYPES + K_QUANT_TYPES)
def test_gguf_dequantizes_every_supported_type(tmp_path, qtype):
    """Loaded values equal gguf's reference dequantization of the bytes written (then unpermuted)."""
    dims = K_DIMS if qtype in K_QUANT_TYPES else dict(num_layers=1)
    path = write_tiny_gguf(str(tmp_path / f"{qtype}.gguf"), qtype=qtype, seed=1, **dims)
    config, loaded = load_checkpoint(path)
    weights = hf_weights_from(seed=1, **dims)
    written = gguf_tensors_from(weights, arch="llama", qtype=qtype, num_heads=config.num_attention_heads,
                                num_kv_heads=config.num_key_value_heads, seed=1)
    num_quantized = 0
    for name, tensor in loaded.items():
        data, tensor_type = written[gguf_name(name)]
        expected = gguf.quants.dequantize(data, tensor_type).reshape(weights[name].shape)
        if "q_proj" in name:
            expected = unpermute_qk(expected, config.num_attention_heads)
        elif "k_proj" in name:
            expected = unpermute_qk(expected, config.num_key_value_heads)
        np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=name)
        num_quantized += tensor_type.name == qtype
        if qtype in QUANT_TYPES:  # real quantization of the weights: close to them
            tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.02}.get(qtype, 0.2)
            assert (tensor - weights[name]).abs().max() <= tol * max(1.0, weights[name].abs().max().item()), name
    assert num_quantized >= 7  # every 2-D weight really used qtype


def test_fast_reader_matches_gguf_reader(tmp_path):
    """Our struct-based header reader agrees with gguf.GGUFReader on metadata and tensor bytes."""
    path = write_tiny_gguf(str(tmp_path / "m.gguf"), qtype="Q4_1")
    ours = read_gguf(path)
    ref = gguf.GGUFReader(path)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        assert ours.metadata[key] == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors):
        assert mine.tensor_type == theirs.tensor_type
        assert mine.shape == tuple(reversed(theirs.shape.tolist()))
        np.testing.assert_array_equal(mine.data.reshape(-1).view(np.uint8), theirs.data.reshape(-1).view(np.uint8))


def test_unsupported_tensor_type_is_named(tmp_path):
    path = str(tmp_path / "iq.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    # 66 bytes = one IQ2_XXS block of 256 values; the type is real but we don't support it.
    writer.add_tensor("token_embd.weight", np.zeros((1, 66), np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        step()
    with pytest.raises(ValueError, match="IQ2_XXS"):
        load_checkpoint(path)


def test_unsupported_architecture_is_named(tmp_path):
    path = str(tmp_path / "falcon.gguf")
    writer = gguf.GGUFWriter(path, "falcon")
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        step()
    with pytest.raises(ValueError, match="falcon"):
        load_checkpoint(path)
    folder = tmp_path / "hf"
    write_tiny_hf_model(str(folder))
    (folder / "config.json").write_text('{"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}')
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM"):
        load_checkpoint(str(folder))


def test_sharded_hf_folder_and_generation_config(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf"
    write_tiny_hf_model(str(folder), arch="qwen2")
    _, whole = load_checkpoint(str(folder))
    tensors = load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in halves.items():
        save_file({n: tensors[n].to(torch.bfloat16) for n in shard_names}, str(folder / shard))
    index = {"weight_map": {n: shard for shard, ns in halves.items() for n in ns}}
    (folder / "model.safetensors.index.json").write_text(__import__("json").dumps(index))
    (folder / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
    config, sharded = load_checkpoint(str(folder))
    assert sorted(sharded) == sorted(whole)
    assert all(t.dtype == torch.float32 for t in sharded.values())
    torch.testing.assert_close(sharded["model.norm.weight"], whole["model.norm.weight"], rtol=1e-2, atol=1e-2)
    assert config.eos_token_ids == [2, 0]
    assert "model.layers.0.self_attn.q_proj.bias" in sharded


def test_smollm2_default_model():
    path = default_model_path()
    assert os.path.isfile(path) and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    config, tensors = load_checkpoint(path)
    assert (config.architecture, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.rope_theta, config.tie_word_embeddings) == (49152, 100000.0, True)
    assert config.intermediate_size == 1536 and config.max_position_embeddings == 8192
    assert config.bos_token_id == 1 and config.eos_token_ids == [2]
    assert "lm_head.weight" not in tensors and len(tensors) == 2 + 30 * 9
    assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
