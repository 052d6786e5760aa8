"""GGUF files with the layer shapes of real models and random weights, for speed and memory runs.

Speed and memory depend on a model's shapes and formats, not on its values, so a file with the
shapes of Llama-3.2-1B or Llama-3.1-8B measures what serving those models costs without
downloading them. The vocabulary, tokenizer and chat template are copied from SmolLM2's file
(49,152 tokens, against Llama-3's 128,256: the embedding and output layers are smaller than the
real models'). Weights are normal × 0.02 (norms 1), so activations stay finite through the
layers; the text they produce is noise.

    python scripts/make_shaped_gguf.py                      # both shapes -> ~/.cache/gptserve/shaped/
    python scripts/make_shaped_gguf.py --shape llama-3.2-1b --out-dir /tmp/shaped

Each file is written in F16 with gguf's writer, one tensor at a time (memory stays at about one
tensor), then `llama-quantize ... Q4_K_M` (built by scripts/build_llama_server.sh); the F16
file is deleted afterwards unless --keep-f16. Prints the Q4_K_M files' paths. Files that already
exist are kept.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after PYTHONPATH

from engine import default_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LLAMA_QUANTIZE = ROOT / "third_party/llama-cpp-python-0.3.16/vendor/llama.cpp/build/bin/llama-quantize"
ROWS_PER_DRAW = 4096  # random rows drawn at a time: float32 scratch of at most 4096 × 14336


@dataclass(frozen=True)
class Shape:
    hidden: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn: int
    tied_embeddings: bool
    rope_theta: float = 500000.0
    context_length: int = 131072
    rms_eps: float = 1e-5


SHAPES = {
    "llama-3.2-1b": Shape(hidden=2048, num_layers=16, num_heads=32, num_kv_heads=8, ffn=8192, tied_embeddings=True),
    "llama-3.1-8b": Shape(hidden=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn=14336, tied_embeddings=False),
}


def tensor_shapes(shape: Shape, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name → numpy shape (out_features, in_features), in llama.cpp's order."""
    head_dim = shape.hidden // shape.num_heads
    kv_width = shape.num_kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab_size, shape.hidden)}
    for i in range(shape.num_layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (shape.hidden,),
            f"blk.{i}.attn_q.weight": (shape.hidden, shape.hidden),
            f"blk.{i}.attn_k.weight": (kv_width, shape.hidden),
            f"blk.{i}.attn_v.weight": (kv_width, shape.hidden),
            f"blk.{i}.attn_output.weight": (shape.hidden, shape.hidden),
            f"blk.{i}.ffn_norm.weight": (shape.hidden,),
            f"blk.{i}.ffn_gate.weight": (shape.ffn, shape.hidden),
            f"blk.{i}.ffn_up.weight": (shape.ffn, shape.hidden),
            f"blk.{i}.ffn_down.weight": (shape.hidden, shape.ffn),
        })
    shapes["output_norm.weight"] = (shape.hidden,)
    if not shape.tied_embeddings:
        shapes["output.weight"] = (vocab_size, shape.hidden)
    return shapes


def random_f16(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    out = np.empty((rows, cols), dtype=np.float16)
    for start in range(0, rows, ROWS_PER_DRAW):
        block = rng.standard_normal((min(ROWS_PER_DRAW, rows - start), cols), dtype=np.float32)
        block *= 0.02
        out[start:start + len(block)] = block
    return out


def write_f16(path: Path, name: str, shape: Shape, vocab: gguf.GGUFReader, seed: int) -> None:
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name(f"{name} shaped, random weights")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_dimension_count(shape.hidden // shape.num_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    vocab_size = len(vocab.fields["tokenizer.ggml.tokens"].data)
    writer.add_vocab_size(vocab_size)
    for key, field in vocab.fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)

    shapes = tensor_shapes(shape, vocab_size)
    for tensor_name, dims in shapes.items():
        dtype = np.float32 if len(dims) == 1 else np.float16  # norms stay float32, as llama.cpp writes them
        writer.add_tensor_info(tensor_name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for dims in shapes.values():
        writer.write_tensor_data(np.ones(dims, np.float32) if len(dims) == 1 else random_f16(rng, *dims))
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES), help="repeatable (default: all)")
    ap.add_argument("--out-dir", default=os.path.expanduser("~/.cache/gptserve/shaped"))
    ap.add_argument("--vocab-from", default=None, help="GGUF whose tokenizer is copied (default: built-in SmolLM2)")
    ap.add_argument("--llama-quantize", default=str(LLAMA_QUANTIZE))
    ap.add_argument("--threads", type=int, default=2, help="llama-quantize threads")
    ap.add_argument("--keep-f16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not os.access(args.llama_quantize, os.X_OK):
        raise SystemExit(f"{args.llama_quantize} is missing: run scripts/build_llama_server.sh")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = gguf.GGUFReader(args.vocab_from or default_model_path())
    for name in args.shape or sorted(SHAPES):
        q4 = out_dir / f"{name}-shaped.Q4_K_M.gguf"
        if q4.exists():
            print(f"{q4} exists", file=sys.stderr)
        else:
            f16 = out_dir / f"{name}-shaped.F16.gguf"
            print(f"writing {f16}", file=sys.stderr, flush=True)
            write_f16(f16, name, SHAPES[name], vocab, args.seed)
            subprocess.run(["nice", "-n", "19", args.llama_quantize, str(f16), str(q4) + ".part", "Q4_K_M",
                            str(args.threads)], check=True, stdout=sys.stderr)
            os.replace(str(q4) + ".part", q4)
            if not args.keep_f16:
                f16.unlink()
        print(q4)


if __name__ == "__main__":
    main()
