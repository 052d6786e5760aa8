"""GGUF file → ModelConfig + tensors named in Hugging Face Llama style: float32, or with
``keep_quantized`` the 2-D weights in a format the C++ kernels compute on left as the file's
blocks (engine/layers/blocks.py ``BlockTensor``, memory-mapped: never unpacked to float32).

GGUF stores shapes innermost-first (ne0 = in_features); :func:`read_gguf` reverses them to numpy
order (rows, bytes-per-row), so a dequantized 2-D weight comes out (out, in), which
is torch Linear's layout. llama.cpp's converter permutes the rows of Q and K for interleaved
rotary (pairs (0,1),(2,3)… per head); we undo that so the model can use rotate_half.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from engine.loader.gguf_families import (
    GEMMA_ARCHITECTURES,
    GEMMA_LAYER_NAMES,
    GPT2_GLOBAL_NAMES,
    GPT2_LAYER_NAMES,
    HIDDEN_ACTS,
    PHI3_LAYER_NAMES,
    ROPE_FACTOR_TENSORS,
    gemma_fields,
    phi3_fields,
)
from engine.layers.blocks import NATIVE_TYPES, BlockTensor
from engine.loader.progress import progress
from engine.models.config import ModelConfig

# Types whose dequantization we have checked (tests/engine/test_loader.py); anything else in a
# file is refused by name instead of being run through an untested path.
SUPPORTED_TENSOR_TYPES = frozenset(
    {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q5_0,
        GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q5_K,
        GGMLQuantizationType.Q6_K,
    }
)

# GGUF "general.architecture" → our architecture name. llama.cpp writes Mistral as "llama".
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2",
                      "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3"}

# Architectures whose Q/K rows llama.cpp's convert_hf_to_gguf.py permutes (LlamaModel.modify_tensors;
# Qwen2Model inherits from TextModel and writes them unchanged).
PERMUTED_ARCHITECTURES = frozenset({"llama"})

# GGUF per-layer tensor name suffix → Hugging Face suffix.
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Present in some files but derivable or unused by our models (precomputed rotary tables).
_IGNORED = frozenset({"rope_freqs.weight"})


def hf_tensor_name(gguf_name: str, arch: str = "llama") -> str:
    """``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight`` (GPT-2: ``transformer.h.3.…``)."""
    global_names, layer_names, prefix = _GLOBAL_NAMES, _LAYER_NAMES, "model.layers"
    if arch == "gpt2":
        global_names, layer_names, prefix = GPT2_GLOBAL_NAMES, GPT2_LAYER_NAMES, "transformer.h"
    elif arch in GEMMA_ARCHITECTURES:
        layer_names = {**_LAYER_NAMES, **GEMMA_LAYER_NAMES}
    elif arch == "phi3":
        layer_names = {**_LAYER_NAMES, **PHI3_LAYER_NAMES}
    if gguf_name in global_names:
        return global_names[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in layer_names:
        return f"{prefix}.{parts[1]}.{layer_names[parts[2]]}"
    raise ValueError(f"unexpected tensor {gguf_name!r} in GGUF file")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation: HF (rotate_half) rows → interleaved rows. w: (out, ...)."""
    dim = w.shape[0]
    return w.reshape(n_head, 2, dim // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`: interleaved rows → HF (rotate_half) rows."""
    dim = w.shape[0]
    return w.reshape(n_head, dim // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# GGUFValueType → struct format of one little-endian scalar.
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), i.e. GGUF's dims reversed
    tensor_type: GGMLQuantizationType
    data: np.ndarray  # uint8 (..., bytes per row), a view of the memory-mapped file


@dataclass
class GGUFFile:
    metadata: dict  # key → int | float | bool | str | list
    tensors: list[GGUFTensor]


def read_gguf(path: str, *, with_tensors: bool = True) -> GGUFFile:
    """Parse a GGUF header (v2/v3, little-endian) and map its tensors without copying.

    gguf.GGUFReader builds a numpy view per array element, which takes ~6 s for SmolLM2's
    49k tokens + 49k merges; this reads the same bytes with struct in ~0.1 s. The test suite
    checks it against GGUFReader.
    """
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    mv = memoryview(buf)
    if bytes(mv[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    version, num_tensors, num_kv = struct.unpack_from("<IQQ", mv, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old (need 2 or later)")
    pos = 24

    def read_string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", mv, pos)
        text = bytes(mv[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace")
        pos += 8 + n
        return text

    def read_value(vtype: int):
        nonlocal pos
        if vtype == GGUFValueType.STRING:
            return read_string()
        if vtype == GGUFValueType.ARRAY:
            etype, count = struct.unpack_from("<IQ", mv, pos)
            pos += 12
            if etype in _SCALAR_FORMATS:  # one vectorised read for numeric arrays
                dtype = np.dtype(_SCALAR_FORMATS[etype].replace("?", "u1"))
                values = np.frombuffer(mv, dtype=dtype, count=count, offset=pos)
                pos += dtype.itemsize * count
                return [bool(v) for v in values] if etype == GGUFValueType.BOOL else values.tolist()
            return [read_value(etype) for _ in range(count)]
        fmt = _SCALAR_FORMATS[GGUFValueType(vtype)]
        (value,) = struct.unpack_from(fmt, mv, pos)
        pos += struct.calcsize(fmt)
        return value

    metadata = {}
    for _ in range(num_kv):
        key = read_string()
        (vtype,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        metadata[key] = read_value(vtype)
    infos = []
    for _ in range(num_tensors):
        name = read_string()
        (n_dims,) = struct.unpack_from("<I", mv, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", mv, pos + 4)
        qtype, offset = struct.unpack_from("<IQ", mv, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, tuple(reversed(dims)), qtype, offset))
    alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-pos // alignment) * alignment
    tensors = []
    for name, shape, qtype, offset in infos if with_tensors else ():
        try:
            tensor_type = GGMLQuantizationType(qtype)
        except ValueError:
            raise ValueError(f"unsupported GGUF tensor type id {qtype} for {name}") from None
        block_size, type_size = GGML_QUANT_SIZES[tensor_type]
        row_bytes = shape[-1] // block_size * type_size
        num_rows = int(np.prod(shape[:-1], dtype=np.int64))
        start = data_start + offset
        data = buf[start : start + num_rows * row_bytes].reshape(*shape[:-1], row_bytes)
        tensors.append(GGUFTensor(name, shape, tensor_type, data))
    return GGUFFile(metadata, tensors)


def architecture_of(metadata: dict) -> str:
    """The file's ``general.architecture`` if we support it, else ValueError naming it."""
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}"
        )
    return arch


def read_config(gguf_file: GGUFFile) -> ModelConfig:
    """ModelConfig from the ``{arch}.*`` and ``tokenizer.ggml.*`` metadata."""
    md = gguf_file.metadata
    arch = architecture_of(md)

    def meta(key: str, default=None):
        return md.get(f"{arch}.{key}", default)

    hidden = int(meta("embedding_length"))
    num_heads = int(meta("attention.head_count"))
    head_dim = meta("attention.key_length") or meta("rope.dimension_count") or hidden // num_heads
    if arch == "phi3":  # its rope.dimension_count is the rotated part only (Phi-4-mini: 3/4)
        head_dim = meta("attention.key_length") or hidden // num_heads
    vocab_size = len(md["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in md else meta("vocab_size")
    names = {t.name: t for t in gguf_file.tensors}
    if "token_embd.weight" in names:
        vocab_size = names["token_embd.weight"].shape[0]  # the model's shape wins over the tokenizer's count
    eos_ids = [md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in md]
    rope_scaling = None
    scaling_type = meta("rope.scaling.type")
    if scaling_type and scaling_type != "none":
        rope_scaling = {"rope_type": scaling_type, "factor": float(meta("rope.scaling.factor", 1.0))}
        if meta("rope.scaling.original_context_length") is not None:
            rope_scaling["original_max_position_embeddings"] = int(meta("rope.scaling.original_context_length"))
    bos = md.get("tokenizer.ggml.bos_token_id")
    rope_factors = {ROPE_FACTOR_TENSORS[t.name]: dequantize_tensor(t).tolist()
                    for t in gguf_file.tensors if t.name in ROPE_FACTOR_TENSORS}
    family_fields = {**gemma_fields(md, arch, int(meta("block_count")), hidden, num_heads),
                     **phi3_fields(md, arch, int(head_dim), rope_factors)}
    if "rope_scaling" in family_fields:
        rope_scaling = family_fields.pop("rope_scaling")
    return ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(meta("attention.head_count_kv", num_heads)),
        head_dim=int(head_dim),
        max_position_embeddings=int(meta("context_length", 2048)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon") or meta("attention.layer_norm_epsilon", 1e-5)),
        hidden_act=HIDDEN_ACTS.get(arch, "silu"),  # llama.cpp's GELUs are the tanh one
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in names,
        attention_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "gemma3"),
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=list(dict.fromkeys(int(i) for i in eos_ids)),
        name=md.get("general.name") or md.get("general.basename") or "model",
        **family_fields,
    )


def dequantize_tensor(tensor: GGUFTensor) -> np.ndarray:
    """A mapped tensor → float32 numpy array of ``tensor.shape`` (a fresh, writable copy)."""
    qtype = tensor.tensor_type
    if qtype not in SUPPORTED_TENSOR_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TENSOR_TYPES))
        raise ValueError(f"unsupported GGUF tensor type {qtype.name} for {tensor.name}; supported: {supported}")
    if qtype == GGMLQuantizationType.F32:
        return np.array(tensor.data.view(np.float32).reshape(tensor.shape))
    return np.asarray(dequantize(tensor.data, qtype), dtype=np.float32).reshape(tensor.shape)


def load_gguf(path: str, keep_quantized: bool = False) -> tuple[ModelConfig, dict[str, torch.Tensor | BlockTensor]]:
    """Read a GGUF file: its ModelConfig and tensors with Hugging Face names, float32 or (with
    ``keep_quantized``) BlockTensors for the 2-D weights whose format has a native kernel."""
    gguf_file = read_gguf(path)
    architecture_of(gguf_file.metadata)
    # Check every type first so an unsupported file fails before seconds of dequantizing.
    for tensor in gguf_file.tensors:
        if tensor.tensor_type not in SUPPORTED_TENSOR_TYPES and tensor.name not in _IGNORED:
            dequantize_tensor(tensor)  # raises the ValueError naming the type
    config = read_config(gguf_file)
    file_arch = gguf_file.metadata["general.architecture"]
    is_permuted = file_arch in PERMUTED_ARCHITECTURES
    tensors: dict[str, torch.Tensor] = {}
    for tensor in progress(gguf_file.tensors, len(gguf_file.tensors)):
        if tensor.name in _IGNORED or tensor.name in ROPE_FACTOR_TENSORS:
            continue
        name = hf_tensor_name(tensor.name, file_arch)
        if keep_quantized and tensor.tensor_type in NATIVE_TYPES and len(tensor.shape) == 2:
            tensors[name] = _block_tensor(tensor, name, config, is_permuted)
            continue
        array = dequantize_tensor(tensor)
        if is_permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = unpermute_qk(array, config.num_attention_heads)
        elif is_permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = unpermute_qk(array, config.num_key_value_heads)
        elif file_arch in GEMMA_ARCHITECTURES and name.endswith("norm.weight"):
            array = array - 1.0  # stored as 1 + w
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    return config, tensors


def _block_tensor(tensor: GGUFTensor, name: str, config: ModelConfig, is_permuted: bool) -> BlockTensor:
    """The weight's block rows as mapped; Q/K's rotary permutation moves whole rows, so it is
    undone on the raw rows (a copy of those two matrices only)."""
    raw = tensor.data
    if is_permuted and name.endswith("q_proj.weight"):
        raw = np.ascontiguousarray(unpermute_qk(raw, config.num_attention_heads))
    elif is_permuted and name.endswith("k_proj.weight"):
        raw = np.ascontiguousarray(unpermute_qk(raw, config.num_key_value_heads))
    return BlockTensor.from_numpy(raw, tensor.tensor_type, tensor.shape, mapped=raw is tensor.data)
