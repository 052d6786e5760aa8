"""The weights' format as a file stores them ("Q4_1", "Q4_K", "F16", "BF16", "F32" …), for
/v1/models: what quantization a served model has."""
from __future__ import annotations

import json
import os
import struct
from collections import Counter

_SAFETENSORS_NAMES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64"}


def weights_format(path: str) -> str:
    """The most common format among the file's matrices (GGUF: a ggml type; a Hugging Face
    folder: the safetensors dtype); "unknown" if the file does not say."""
    try:
        if os.path.isdir(path):
            return _safetensors_format(path)
        from engine.loader.gguf import read_gguf

        types = Counter(t.tensor_type.name for t in read_gguf(path).tensors if len(t.shape) >= 2)
        return types.most_common(1)[0][0] if types else "unknown"
    except (OSError, ValueError, KeyError, IndexError, struct.error):
        return "unknown"


def _safetensors_format(folder: str) -> str:
    from engine.loader.safetensors import safetensors_files

    counts: Counter = Counter()
    for file in safetensors_files(folder):
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__" and len(info.get("shape", ())) >= 2:
                counts[_SAFETENSORS_NAMES.get(info["dtype"], info["dtype"])] += 1
    return counts.most_common(1)[0][0] if counts else "unknown"
